"""Pieces several strategies share: the usable filter, in-flight counts, weighted draws, stable hashes.

Nothing here is a strategy; the modules that register strategies import from here.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate

from steelyard.strategies.base import Endpoint

MASK64 = (1 << 64) - 1
TICKETS_LIMIT = 1 << 16  # largest ticket table (TwoDraws): two draws from one random number stay exact
_EIGHT_WORDS = struct.Struct("<8Q")


def usable(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    """The endpoints a strategy may pick: weight > 0 and finite (0 means drain; NaN fails `> 0`).

    A repeated id keeps its first occurrence, so per-id state stays unambiguous.
    """
    seen: set[str] = set()
    out = []
    for e in endpoints:
        if e.weight > 0 and e.weight != math.inf and e.id not in seen:
            seen.add(e.id)
            out.append(e)
    return out


class InFlight:
    """Picks in flight per endpoint as a flat list of ints aligned with the usable endpoints.

    A pick reads and bumps `counts[i]` (one subscript, no per-endpoint cell); `on_done` finds the
    position through `index`. `align()` carries counts over by id, and keeps the count of an endpoint
    that left with picks in flight in `gone`, so their `on_done` lands and a quick return counts right.
    """

    __slots__ = ("counts", "index", "gone")

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.index: dict[str, int] = {}
        self.gone: dict[str, int] = {}

    def align(self, endpoints: Sequence[Endpoint]) -> list[int]:
        """The new `counts` list (a new object: callers cache it until the next align)."""
        old = self.gone
        counts = self.counts
        for endpoint_id, i in self.index.items():
            old[endpoint_id] = counts[i]
        self.index = {e.id: i for i, e in enumerate(endpoints)}
        self.counts = [old.pop(e.id, 0) for e in endpoints]
        self.gone = {endpoint_id: c for endpoint_id, c in old.items() if c > 0}
        return self.counts

    def add(self, endpoint_id: str) -> int:
        """One more in flight on `endpoint_id`, picked elsewhere (a retry): its position, or -1 when it
        is not in the current set (then nothing is counted, and no `on_done` is due)."""
        i = self.index.get(endpoint_id)
        if i is None:
            return -1
        self.counts[i] += 1
        return i

    def two_of(self, candidates: Sequence[Endpoint], rng: random.Random) -> list[int]:
        """Positions of two of `candidates` drawn at random (a retry's choice of P2C and PeakEWMA), of
        the one when only one is in the current set, or none."""
        known = [i for i in (self.index.get(c.id) for c in candidates) if i is not None]
        return rng.sample(known, 2) if len(known) > 1 else known

    def release(self, endpoint_id: str) -> int:
        """One pick on `endpoint_id` is done: its position if it is in the current set and had a pick in
        flight (now one fewer), else -1 (departed, or a stray done: never below zero)."""
        i = self.index.get(endpoint_id)
        if i is not None:
            counts = self.counts
            if counts[i] > 0:
                counts[i] -= 1
                return i
            return -1
        c = self.gone.get(endpoint_id)
        if c is not None:
            if c > 1:
                self.gone[endpoint_id] = c - 1
            else:
                del self.gone[endpoint_id]
        return -1


def tickets(weights: Sequence[float], limit: int = TICKETS_LIMIT) -> list[int]:
    """Integer weights as a ticket table: index i appears weight_i / gcd times, so a uniform slot is an
    exact weighted draw. Empty when a weight is not an integer or the table would exceed `limit`."""
    if not weights or not all(w == int(w) for w in weights):
        return []
    ints = [int(w) for w in weights]
    unit = math.gcd(*ints)
    if sum(ints) // unit > limit:
        return []
    out: list[int] = []
    for i, w in enumerate(ints):
        out.extend([i] * (w // unit))
    return out


def cumulative(weights: Sequence[float]) -> list[float]:
    """Running sums: endpoint i owns [cum[i] - w[i], cum[i]) of [0, total)."""
    return list(accumulate(weights))


def draw(cum: list[float], total: float, u: float) -> int:
    """Index owning u * total (u in [0, 1)); O(log n)."""
    i = bisect_right(cum, u * total)
    last = len(cum) - 1
    return i if i < last else last


def draw_other(cum: list[float], weights: list[float], total: float, first: int, u: float) -> int:
    """A weighted draw among every index but `first`: draw in [0, total - w_first) and step over
    `first`'s interval, so no retry loop is needed (exact, O(log n))."""
    w = weights[first]
    r = u * (total - w)
    if r >= cum[first] - w:
        r += w
    last = len(cum) - 1
    i = bisect_right(cum, r)
    if i > last:
        i = last
    if i == first:  # only through float rounding at an interval's edge
        i = first + 1 if first < last else first - 1
    return i


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a request key, the same in every process and release.

    Python's `hash()` is salted per process, so workers would disagree. CRC-32 (zlib, C speed) spreads
    the key; SplitMix64's finalizer (Steele, Lea and Flood 2014) then spreads those 32 bits over 64, so
    ring and table positions are uniform. About 0.2 µs, a quarter of a blake2b call.
    """
    h = (zlib.crc32(key.encode()) + 0x9E3779B97F4A7C15) & MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK64
    return h ^ (h >> 31)


def id_hashes(endpoint_id: str, count: int, person: bytes) -> list[int]:
    """`count` stable 64-bit values for an endpoint id (build time only: blake2b, 8 values per call)."""
    data = endpoint_id.encode()
    out: list[int] = []
    block = 0
    while len(out) < count:
        salt = block.to_bytes(16, "little")
        digest = hashlib.blake2b(data, digest_size=64, person=person, salt=salt).digest()
        out.extend(_EIGHT_WORDS.unpack(digest))  # little-endian: the same on every machine
        block += 1
    del out[count:]
    return out


class AliasTable:
    """Walker's alias method (Vose's construction): a weighted draw in O(1) with one random number.

    Slot i of n keeps endpoint i with probability `keep[i]` and otherwise gives `alias[i]`; a draw picks
    a slot uniformly and then one of the two. Build O(n). (Walker 1977; Vose, IEEE TSE 1991.)
    """

    __slots__ = ("keep", "alias", "n")

    def __init__(self, weights: Sequence[float]):
        n = len(weights)
        self.n = n
        total = sum(weights)
        scaled = [w * n / total for w in weights] if n else []
        self.keep = [1.0] * n
        self.alias = list(range(n))
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            self.keep[s] = scaled[s]
            self.alias[s] = g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        # What is left has probability 1 up to rounding: keep[i] stays 1.0.

    def draw(self, u: float) -> int:
        """Index for u uniform in [0, 1) (callers on the hot path inline this)."""
        x = u * self.n
        i = int(x)
        return i if x - i < self.keep[i] else self.alias[i]


class TwoDraws:
    """Two weighted draws of distinct endpoints, shared by PowerOfTwoChoices and PeakEWMA.

    `set_weights` builds the alias table and running sums once per endpoint set; strategies take
    `ticket_pair` when there is a ticket table (their C picks, `_picks`, draw the same pair) and
    `alias_pair` otherwise, whose `redraw` runs when the second hit the first: up to 8 more alias draws,
    then an exact step over the first's share.
    The random source stays the strategy's (its deep copy for `explain` rebinds it).

    With integer weights whose ticket table (`tickets`) has at most 2^16 slots (configured weights
    usually), both draws come from one random number u and never collide (`ticket_pair`): x = u * size
    gives the first ticket (int(x)); the fraction of x picks the second among the tickets of the others,
    size - span(first) of them, stepping over the first's contiguous run (`bounds`: each endpoint's first
    ticket and ticket count). Each pair of tickets gets 2^53 / size^2 >= 2^21 of u's equally likely
    values (give or take one), so the pair is a weighted draw without replacement to within 1e-6 relative.
    """

    __slots__ = ("n", "weights", "cum", "total", "keep", "alias", "slots", "size", "bounds")

    def __init__(self) -> None:
        self.set_weights([])

    def set_weights(self, weights: list[float]) -> None:
        self.n = len(weights)
        self.weights = weights
        self.cum = cumulative(weights)
        self.total = self.cum[-1] if self.cum else 0.0
        table = AliasTable(weights)
        self.keep, self.alias = table.keep, table.alias
        self.slots = tickets(weights) if self.n > 1 else []
        self.size = len(self.slots)
        self.bounds: list[int] = []  # endpoint i's tickets: slots[bounds[2i]:bounds[2i] + bounds[2i + 1]]
        if self.slots:
            spans = [0] * self.n
            for i in self.slots:
                spans[i] += 1
            starts = [0, *accumulate(spans)][:-1]
            self.bounds = [v for pair in zip(starts, spans, strict=True) for v in pair]

    def ticket_pair(self, u: float) -> tuple[int, int]:
        """Two distinct weighted draws from one random number over the ticket table (`_picks` draws the
        same pair in C)."""
        slots, bounds, size = self.slots, self.bounds, self.size
        x = u * size
        t = int(x)
        first = slots[t]
        start = bounds[2 * first]
        span = bounds[2 * first + 1]
        j = int((x - t) * (size - span))
        if j >= start:
            j += span
        return first, slots[j]

    def alias_pair(self, rand: Callable[[], float]) -> tuple[int, int]:
        """Two distinct weighted draws from the alias table (any weights)."""
        keep, alias, n = self.keep, self.alias, self.n
        x = rand() * n
        first = int(x)
        if x - first >= keep[first]:
            first = alias[first]
        x = rand() * n
        second = int(x)
        if x - second >= keep[second]:
            second = alias[second]
        if second == first:
            second = self.redraw(first, rand)
        return first, second

    def redraw(self, first: int, rand: Callable[[], float]) -> int:
        keep, alias, n = self.keep, self.alias, self.n
        for _ in range(8):
            x = rand() * n
            second = int(x)
            if x - second >= keep[second]:
                second = alias[second]
            if second != first:
                return second
        return draw_other(self.cum, self.weights, self.total, first, rand())
