"""Maglev: consistent hashing through a lookup table, as in Google's Maglev load balancer.

Algorithm: Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer" (NSDI 2016),
section 3.4. The table has M slots, M prime. Each endpoint has a preference order over all slots,
slot_j = (offset + j x skip) mod M, with offset and skip from two hashes of its id (skip in 1..M-1, so,
M being prime, every slot appears once). Endpoints take turns claiming their next preferred free slot
until the table is full. A pick is table[hash(key) mod M]. Every endpoint gets M/n slots (+-1), and
removing one of n endpoints moves its own 1/n of the keys plus a little more (the paper's disruption
figures; tested here at <= 2/n).

Weights: as in Envoy's weighted Maglev, turns are proportional to weight: each round every endpoint earns
weight / max weight of a turn and claims a slot for each whole turn earned. A weight that moved less than
10 % since the table was built keeps the table (slow start and dynamic weights move in small steps).

Table size: the smallest prime >= max(65,537, 100 x endpoints) (the paper keeps M >= 100 N so slot counts
stay within about 1 % of each other). 10,000 endpoints need M >= 1,000,000 (1,000,003).

Cost: a pick is one key hash and one list index, O(1); a key seen since the last endpoint change is one
dict lookup (a memo of up to 16,384 keys, as in RingHash). Building costs about M ln M probes in the paper's
loop, mostly spent finding the last free slots. Three builds give the same table, slot for slot:
- `_maglev_fill` (C, built by setup.py when a compiler is present): the loop over a bitmap of taken
  slots, and an endgame for the last ~sqrt(M) free slots (below); ~30 ms at 10,000 endpoints
  (M = 1,000,003), under 1 ms at the default 65,537 slots;
- without it, from 2,000 endpoints on, `_maglev_numpy.build_table_numpy` (NumPy, imported only then):
  ~0.5 s at 10,000 endpoints, over the 100 ms target;
- otherwise `build_table_reference`, the loop in pure Python until few slots are left, then each
  endpoint's remaining claims come from sorting its positions of the free slots: tens of ms for 65,537
  slots. It is the reference the other two are tested against.
Each endpoint's two preference hashes are kept by id across rebuilds (blake2b: ~2 us each).
The table is a list (a pick indexes it in ~100 ns), built once per endpoint set and shared by `explain`'s
copy.
"""

from __future__ import annotations

import random
import time
import types
from collections.abc import Sequence
from itertools import compress
from math import isqrt

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import id_hashes, key_hash, usable
from steelyard.strategies._keyed import KeyedStrategy
from steelyard.strategies.base import Clock, Endpoint, register

_maglev_fill: types.ModuleType | None
try:  # the C build (optional: setup.py builds it when a compiler is present)
    from steelyard.strategies import _maglev_fill
except ImportError:  # pragma: no cover - tests hide it with monkeypatch instead
    _maglev_fill = None

DEFAULT_TABLE_SIZE = 65537
NUMPY_MIN_ENDPOINTS = 2000  # from here on the NumPy build is the faster one (measured, see the docstring)
SLOTS_PER_ENDPOINT = 100
ENDGAME_FREE_SLOTS: int | None = None  # free slots left when the endgame starts; None: by size


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (bases: the first 13 primes)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def table_size(endpoints: int) -> int:
    m = max(DEFAULT_TABLE_SIZE, SLOTS_PER_ENDPOINT * endpoints)
    while not is_prime(m):
        m += 1
    return m


def preference_hashes(endpoint_id: str) -> tuple[int, int]:
    """The two 64-bit hashes behind an endpoint's offset and skip (the same in every process)."""
    a, b = id_hashes(endpoint_id, 2, b"steelyard-maglev")
    return a, b


def build_table(ids: Sequence[str], weights: Sequence[float], m: int,
                hashes: Sequence[tuple[int, int]] | None = None) -> list[int]:
    """The Maglev lookup table: slot -> index into `ids`. Deterministic in (ids, weights, m).

    The same table whichever build runs: C when built, else NumPy from NUMPY_MIN_ENDPOINTS endpoints on,
    else the paper's loop (`build_table_reference`). `hashes`: `preference_hashes` of each id, if known.
    """
    if _maglev_fill is not None and ids:
        if hashes is None:
            hashes = [preference_hashes(endpoint_id) for endpoint_id in ids]
        top = max(weights)
        shares = None if all(w == top for w in weights) else [w / top for w in weights]
        table: list[int] = _maglev_fill.fill([a % m for a, _ in hashes], [b % (m - 1) + 1 for _, b in hashes],
                                            shares, m)
        return table
    if len(ids) >= NUMPY_MIN_ENDPOINTS:
        # Imported here: NumPy costs ~0.1 s and ~20 MB per process, paid only by very large upstreams.
        from steelyard.strategies._maglev_numpy import build_table_numpy

        # One int object per endpoint, as in the reference's table: a million distinct ints from
        # tolist() alone would make each pick a cache miss slower (measured ~90 vs ~55 ns per index).
        shared = list(range(len(ids)))
        return list(map(shared.__getitem__, build_table_numpy(ids, weights, m).tolist()))
    return build_table_reference(ids, weights, m)


def build_table_reference(ids: Sequence[str], weights: Sequence[float], m: int) -> list[int]:
    """The paper's loop in pure Python (with the endgame below): the reference for the NumPy build."""
    n = len(ids)
    table = [-1] * m
    if n == 0:
        return table
    if n == 1:
        return [0] * m
    offsets, skips = [], []
    for endpoint_id in ids:
        a, b = preference_hashes(endpoint_id)
        offsets.append(a % m)
        skips.append(b % (m - 1) + 1)
    top = max(weights)
    shares = [w / top for w in weights]
    earned = [0.0] * n
    slot = offsets  # each endpoint's next candidate slot (its position j in the preference order)
    free = m
    order = range(n)
    equal = all(s == 1.0 for s in shares)
    # The paper's loop, while free slots are easy to find (expected probes per claim: m / free).
    # Walking costs about m / free probes per claim, the endgame about min(n, free) x free in all: switch
    # where the two meet (measured: 3, 100 and 1,000 endpoints all build fastest with this choice).
    switch = ENDGAME_FREE_SLOTS
    if switch is None:
        switch = min(m // 4, max(2 * isqrt(m), m // (4 * n)))
    while free > switch:
        for i in order:
            if not equal:
                earned[i] += shares[i]
                if earned[i] < 1.0:
                    continue
                earned[i] -= 1.0
            c, k = slot[i], skips[i]
            while table[c] >= 0:
                c += k
                if c >= m:
                    c -= m
            table[c] = i
            c += k
            slot[i] = c - m if c >= m else c
            free -= 1
            if free == 0:
                return table
    # The endgame, same result: endpoint i's next claim is the free slot that comes first in its
    # preference order, since every slot before its current position is taken. On its first claim here,
    # rank the slots still free by their position in its order, (slot - start) x skip^-1 mod M, computed
    # and sorted at C speed; later claims walk that ranking past slots others took meanwhile.
    free_slots = list(compress(range(m), map((-1).__eq__, table)))
    is_free = (-1).__eq__
    starts = [0] * n
    rankings: list[list[int] | None] = [None] * n
    cursor = [0] * n
    while True:
        for i in order:
            if not equal:
                earned[i] += shares[i]
                if earned[i] < 1.0:
                    continue
                earned[i] -= 1.0
            k = skips[i]
            ranking = rankings[i]
            if ranking is None:
                start = starts[i] = slot[i]
                still_free = compress(free_slots, map(is_free, map(table.__getitem__, free_slots)))
                ranking = rankings[i] = sorted(map(m.__rmod__, map(pow(k, -1, m).__mul__,
                                                                   map((-start).__add__, still_free))))
            start, at = starts[i], cursor[i]
            c = (start + ranking[at] * k) % m
            while table[c] >= 0:
                at += 1
                c = (start + ranking[at] * k) % m
            table[c] = i
            cursor[i] = at + 1
            free -= 1
            if free == 0:
                return table


@register
class Maglev(KeyedStrategy):
    name = "Maglev"
    shared_on_copy = frozenset({"_table", "_memo", "_hashes"})  # replaced on change, never mutated

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._table: list[int] = []
        self._size = 0
        self._built_for: tuple[tuple[str, float], ...] = ()
        self._hashes: dict[str, tuple[int, int]] = {}  # preference_hashes of the current ids

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        new = usable(endpoints)
        key = tuple((e.id, e.weight) for e in new)
        self._endpoints = new
        self._memo = {}
        if self._table and _close_enough(key, self._built_for):
            return
        self._built_for = key
        if not new:
            self._table, self._size = [], 0
            return
        self._size = table_size(len(new))
        known = self._hashes
        self._hashes = {e.id: known.get(e.id) or preference_hashes(e.id) for e in new}
        self._table = build_table([e.id for e in new], [e.weight for e in new], self._size,
                                  list(self._hashes.values()))

    def _lookup(self, key: str) -> Endpoint:
        return self._endpoints[self._table[key_hash(key) % self._size]]

    def describe(self) -> dict[str, object]:
        return {"strategy": self.name, "endpoints": len(self._endpoints), "table_size": self._size}


WEIGHT_TOLERANCE = 0.1


def _close_enough(wanted: tuple[tuple[str, float], ...], built: tuple[tuple[str, float], ...]) -> bool:
    """The same endpoints in the same order, each weight within 10 % of the one the table was built for.

    Effective weights move in small steps (slow start ramps, dynamic weights every 0.5 s); rebuilding a
    65,537-slot table for each step would block the event loop tens of ms each time for a share change
    the table cannot even show at that precision. A 10 % move or more, or any change of endpoints, rebuilds.
    """
    if len(wanted) != len(built):
        return False
    for (wanted_id, wanted_weight), (built_id, built_weight) in zip(wanted, built, strict=True):
        if wanted_id != built_id or abs(wanted_weight - built_weight) > WEIGHT_TOLERANCE * built_weight:
            return False
    return True
