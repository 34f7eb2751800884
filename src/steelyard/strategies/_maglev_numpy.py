"""The Maglev table built in NumPy: the same table as `maglev.build_table_reference`, slot for slot.

Used by `maglev.build_table` from `maglev.NUMPY_MIN_ENDPOINTS` endpoints on (imported only then: NumPy is
dear to import). Measured in docs/benchmarks.md: about 4x the pure-Python loop's speed at 2,000 endpoints,
6-8x at 10,000 (M = 1,000,003), where it still takes about 0.5-1 s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from steelyard.strategies._common import id_hashes

# The paper's loop is a serial dictatorship: a fixed sequence of M turns (which endpoint claims next
# depends on the weights alone), each turn claiming the first slot in its endpoint's preference order,
# after that endpoint's previous claim, that no earlier turn took. Equivalently: the slot of turn t is the
# first slot in its endpoint's order not held by a turn earlier than t. The NumPy build computes that
# fixpoint in batches of consecutive turns (a batch starts once every earlier turn is final):
# 1. candidates: for each endpoint with turns in the batch, the slots still free in its order after its
#    last claim (found by scanning its next positions, or, when few slots are left, by ranking every free
#    slot in its order, (slot - offset) x skip^-1 mod M, and sorting);
# 2. turn j of an endpoint in the batch starts at its candidate j (its j earlier turns take j candidates);
# 3. every turn proposes its candidate; a slot keeps the earliest proposer (a smaller turn key); each loser
#    moves to its next candidate, and that endpoint's later turns move up behind it (a running maximum),
#    until no turn loses. A turn only moves past a candidate that an earlier turn really holds in the
#    serial result, so it never passes its own slot, and with no loser left each turn holds the first
#    candidate no earlier turn holds: the serial result, turn for turn.
# The turn sequence reproduces the loop's float arithmetic exactly (one accumulation per distinct share).

BATCH_SHARE = 0.05  # a batch takes this share of the free slots' worth of turns
LOCKSTEP_SHARES = 32  # more distinct shares than this: accumulate them side by side in NumPy

IntArray = npt.NDArray[np.int64]


def _preferences(ids: Sequence[str], m: int) -> tuple[IntArray, IntArray]:
    offsets = np.empty(len(ids), np.int64)
    skips = np.empty(len(ids), np.int64)
    for i, endpoint_id in enumerate(ids):
        a, b = id_hashes(endpoint_id, 2, b"steelyard-maglev")
        offsets[i] = a % m
        skips[i] = b % (m - 1) + 1
    return offsets, skips


def _turn_rounds(weights: Sequence[float], m: int) -> tuple[list[tuple[IntArray, IntArray]], IntArray]:
    """The loop's turns, as [(rounds in which they take a turn, endpoints)] per distinct share, and the
    running total of turns at the end of each round (enough rounds for M turns).

    Each endpoint runs `earned += share; if earned >= 1: earned -= 1; take a turn` once per round, in
    Python floats exactly as the loop does; endpoints with the same share run it once together."""
    top = max(weights)
    by_share: dict[float, list[int]] = {}
    for i, w in enumerate(weights):
        by_share.setdefault(w / top, []).append(i)
    values = list(by_share)
    sizes = np.array([len(by_share[s]) for s in values], np.int64)
    rounds_needed = int(m / sum(len(by_share[s]) * s for s in values)) + 2
    done = 0
    if len(values) > LOCKSTEP_SHARES:
        earned = np.zeros(len(values))
        shares = np.array(values)
        blocks: list[npt.NDArray[np.bool_]] = []
        count = 0
        while True:
            hits = np.empty((rounds_needed - done, len(values)), bool)
            for r in range(rounds_needed - done):
                earned += shares
                np.greater_equal(earned, 1.0, out=hits[r])
                earned -= hits[r]
            blocks.append(hits)
            count += int(hits.sum(axis=0) @ sizes)
            if count >= m:
                break
            done, rounds_needed = rounds_needed, rounds_needed + max(2, rounds_needed // 2)
        every = np.concatenate(blocks)
        rounds = [np.flatnonzero(every[:, g]).astype(np.int64) for g in range(len(values))]
        per_round = every.astype(np.int64) @ sizes
    else:
        lists: list[list[int]] = [[] for _ in values]
        state = [0.0] * len(values)
        while True:
            for g, share in enumerate(values):
                out = lists[g]
                if share == 1.0:
                    out.extend(range(done, rounds_needed))
                    continue
                e = state[g]
                for r in range(done, rounds_needed):
                    e += share
                    if e >= 1.0:
                        e -= 1.0
                        out.append(r)
                state[g] = e
            if sum(len(lists[g]) * len(by_share[s]) for g, s in enumerate(values)) >= m:
                break
            done, rounds_needed = rounds_needed, rounds_needed + max(2, rounds_needed // 2)
        rounds = [np.array(x, np.int64) for x in lists]
        per_round = np.zeros(rounds_needed, np.int64)
        for g, rr in enumerate(rounds):
            per_round[rr] += sizes[g]
    groups = [(rr, np.array(by_share[s], np.int64)) for rr, s in zip(rounds, values, strict=True) if len(rr)]
    return groups, np.cumsum(per_round)


def _active(groups: list[tuple[IntArray, IntArray]], r: int) -> IntArray:
    """The endpoints taking a turn in round r, in index order (the order of their turns)."""
    parts = []
    for rounds, eps in groups:
        i = int(np.searchsorted(rounds, r))
        if i < len(rounds) and rounds[i] == r:
            parts.append(eps)
    if not parts:
        return np.empty(0, np.int64)
    return np.sort(np.concatenate(parts), kind="stable")


class _Candidates:
    """For each endpoint of a batch, its free slots in preference order (flat, endpoint by endpoint)."""

    def __init__(self, build: _NumpyBuild, eps: IntArray, wanted: IntArray):
        self.b, self.eps = build, eps
        self.seg: IntArray | None = None  # None: a ranking of every free slot
        left = build.left
        k = len(eps)
        self.length = np.minimum(np.ceil((wanted * 1.5 + 1.5) * build.m / left).astype(np.int64),
                                 build.m - build.base[eps])
        if k * left * 4 < int(self.length.sum()):  # few free slots: ranking them all is cheaper
            self._rank_all()
            return
        self.scanned = build.base[eps].copy()
        self.slot, self.pos, self.seg = self._scan(np.arange(k), self.scanned, self.length)
        self.scanned += self.length
        self.count = np.bincount(self.seg, minlength=k)
        self.start = np.cumsum(self.count) - self.count

    def _rank_all(self) -> None:
        b, eps = self.b, self.eps
        free_slots = np.flatnonzero(b.free)
        missing = eps[b.inverse[eps] == 0]
        b.inverse[missing] = [pow(int(s), -1, b.m) for s in b.skips[missing]]
        # Every slot before an endpoint's position is taken, so these ranks all lie beyond it.
        ranks = (free_slots[None, :] - b.offsets[eps][:, None]) % b.m * b.inverse[eps][:, None] % b.m
        order = np.argsort(ranks, axis=1)
        self.slot = free_slots[order].ravel()
        self.pos = np.take_along_axis(ranks, order, axis=1).ravel()
        self.count = np.full(len(eps), len(free_slots), np.int64)
        self.start = np.arange(len(eps), dtype=np.int64) * len(free_slots)

    def _scan(self, which: IntArray, start: IntArray,
              length: IntArray) -> tuple[IntArray, IntArray, IntArray]:
        b = self.b
        seg = np.repeat(which, length)
        pos = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(np.cumsum(length) - length - start,
                                                                        length)
        e = self.eps[seg]
        slot = (b.offsets[e] + pos * b.skips[e]) % b.m
        hit = np.flatnonzero(b.free[slot])
        return slot[hit], pos[hit], seg[hit]

    def extend(self, which: IntArray) -> None:
        """Scan further for the endpoints in `which` (a turn ran out of candidates)."""
        assert self.seg is not None  # a ranking holds every free slot: it never runs out
        more = np.minimum(self.length[which], self.b.m - self.scanned[which])
        self.length[which] += more
        slot, pos, seg = self._scan(which, self.scanned[which], more)
        self.scanned[which] += more
        added = np.bincount(seg, minlength=len(self.eps))
        count = self.count + added
        start = np.cumsum(count) - count
        total = int(count.sum())
        new_slot, new_pos, new_seg = (np.empty(total, np.int64) for _ in range(3))
        at = start[self.seg] + np.arange(len(self.seg)) - self.start[self.seg]
        new_slot[at], new_pos[at], new_seg[at] = self.slot, self.pos, self.seg
        first_added = np.cumsum(added) - added
        at = start[seg] + self.count[seg] + np.arange(len(seg)) - first_added[seg]
        new_slot[at], new_pos[at], new_seg[at] = slot, pos, seg
        self.slot, self.pos, self.seg, self.count, self.start = new_slot, new_pos, new_seg, count, start


class _NumpyBuild:
    def __init__(self, ids: Sequence[str], weights: Sequence[float], m: int):
        self.n, self.m = len(ids), m
        self.offsets, self.skips = _preferences(ids, m)
        self.inverse = np.zeros(self.n, np.int64)  # skip^-1 mod M, computed when first needed
        self.table = np.full(m, -1, np.int64)
        self.free = np.ones(m, bool)
        self.base = np.zeros(self.n, np.int64)  # each endpoint's position after its last claim
        self.left = m
        self.unclaimed = np.iinfo(np.int64).max
        self.claim = np.full(m, self.unclaimed, np.int64)  # scratch: earliest proposer per slot

    def run(self, weights: Sequence[float]) -> IntArray:
        n = self.n
        groups, cum = _turn_rounds(weights, self.m)
        r0, e0 = 0, 0  # the next turn: round r0, first endpoint >= e0
        while self.left > 0:
            target = min(self.left, max(64, int(BATCH_SHARE * self.left)))
            act = _active(groups, r0)
            act = act[np.searchsorted(act, e0):]
            if len(act) == 0:
                r0, e0 = r0 + 1, 0
                continue
            k0 = r0 * n + e0
            if len(act) >= target:  # part of this round
                e0 = int(act[target - 1]) + 1
                k1 = r0 * n + e0
            else:  # the rest of this round and whole rounds after it
                r0 = int(np.searchsorted(cum, cum[r0] + (target - len(act)), "right"))
                e0 = 0
                k1 = r0 * n
            self._batch(groups, k0, k1)
        return self.table

    def _batch(self, groups: list[tuple[IntArray, IntArray]], k0: int, k1: int) -> None:
        """Settle the turns with keys (round x n + endpoint, their order in time) in [k0, k1)."""
        n = self.n
        r_lo, r_hi = k0 // n, (k1 - 1) // n
        ep_parts, key_parts = [], []
        for rounds, eps in groups:
            lo, hi = np.searchsorted(rounds, (r_lo, r_hi + 1))
            if lo == hi:
                continue
            keys = (eps[:, None] + rounds[None, lo:hi] * n).ravel()  # endpoint by endpoint, in time
            keep = (keys >= k0) & (keys < k1)
            ep_parts.append(np.repeat(eps, hi - lo)[keep])
            key_parts.append(keys[keep])
        turn_ep = np.concatenate(ep_parts)
        key = np.concatenate(key_parts)
        count = len(turn_ep)
        first = np.concatenate(([0], np.flatnonzero(turn_ep[1:] != turn_ep[:-1]) + 1))
        turns = np.diff(np.append(first, count))
        eps = turn_ep[first]
        seg = np.repeat(np.arange(len(eps)), turns)
        j = np.arange(count) - first[seg]
        cand = _Candidates(self, eps, turns)
        at = j.copy()  # each turn's candidate index
        bias = seg * (self.m + 1)
        while True:
            short = at >= cand.count[seg]
            if short.any():
                cand.extend(np.unique(seg[short]))
                continue
            slots = cand.slot[cand.start[seg] + at]
            np.minimum.at(self.claim, slots, key)
            won = self.claim[slots] == key
            self.claim[slots] = self.unclaimed
            if won.all():
                break
            at += ~won
            at = np.maximum.accumulate(at - j + bias) - bias + j
        self.table[slots] = turn_ep
        self.free[slots] = False
        self.base[eps] = cand.pos[cand.start + at[first + turns - 1]] + 1
        self.left -= count


def build_table_numpy(ids: Sequence[str], weights: Sequence[float], m: int) -> IntArray:
    """`build_table_reference` in NumPy, the same table slot for slot (as an array)."""
    if len(ids) <= 1:  # no endpoint: every slot -1; one: every slot its
        return np.full(m, len(ids) - 1, np.int64)
    return _NumpyBuild(ids, weights, m).run(weights)
