"""RingHash: consistent hashing on a ring of virtual nodes, ketama-style.

Algorithm: Karger et al., "Consistent Hashing and Random Trees" (STOC 1997), as libketama (last.fm) and
Envoy's ring hash use it. Every endpoint places virtual nodes on a 64-bit ring in proportion to its
weight; a request key hashes to a point and goes to the first virtual node at or after it (wrapping).
Removing one of n endpoints moves only the keys its nodes held, about 1/n; adding one takes about 1/(n+1).
That holds exactly while the endpoints' weights are equal (each keeps its 160 nodes whatever n is); with
unequal weights a change of the average weight rescales every endpoint's node count, so a few keys also
move between endpoints that stay (as in Envoy's ring hash).

Ring size: 160 virtual nodes per endpoint of average weight (ketama's figure; no floor on the ring, which
would make every endpoint's node count depend on n), at most 131,072 in all (so 10,000 endpoints still
build in well under 100 ms; they get about 13 nodes each, which spreads keys within roughly +-30 % per
endpoint). Node positions come from blake2b of the endpoint id and
the node number (top 53 bits: a ring of 2^53 points), so an endpoint's nodes do not depend on the
other endpoints. The key is `context.hash_key` (the header, the cookie or the client address, per
`hashOn`); a request without it goes round robin (see `_keyed`). Key hash: CRC-32 spread to 64 bits
(see `_common.key_hash`), stable across processes.

Cost: one key hash and a bisect over the ring, O(log ring), for a key not seen since the last endpoint
change; a key seen before is one dict lookup (a memo of up to 16,384 keys, emptied when full).
set_endpoints O(R log R) for R nodes; an endpoint that keeps its node count and its place in the list
keeps its ring entries, so replacing one endpoint hashes only its nodes (10,000 endpoints: ~80 -> ~25
ms). Ring, entries and memo are immutable facts of one endpoint set, so `explain`'s copy shares them.
"""

from __future__ import annotations

import random
import time
from bisect import bisect_left
from collections.abc import Sequence

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import id_hashes, key_hash, usable
from steelyard.strategies._keyed import KeyedStrategy
from steelyard.strategies.base import Clock, Endpoint, register

NODES_PER_ENDPOINT = 160
MAX_RING = 1 << 17
POSITION_SHIFT = 11  # ring positions are the top 53 bits of a 64-bit hash


@register
class RingHash(KeyedStrategy):
    name = "RingHash"
    shared_on_copy = frozenset({"_ring", "_memo", "_nodes"})

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        # Sorted node positions; the low bits of each hold its endpoint's index, so the ring is one list
        # of numbers (fast to sort and to bisect) instead of pairs.
        self._ring: list[float] = []
        self._mask = 0
        # endpoint id -> (node count, index mask bits, index, its ring entries): hashing and formatting
        # the entries are most of a build, and an endpoint that stays with the same weight (and place)
        # keeps them. Only endpoints of the current set are kept.
        self._nodes: dict[str, tuple[int, int, int, list[float]]] = {}

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        new = usable(endpoints)
        self._endpoints = new
        self._memo = {}
        if not new:
            self._ring = []
            return
        total = sum(e.weight for e in new)
        size = min(NODES_PER_ENDPOINT * len(new), MAX_RING)
        bits = max(1, (len(new) - 1).bit_length())
        keep = ((1 << 53) - 1) & ~((1 << bits) - 1)
        ring: list[float] = []
        known = self._nodes
        kept: dict[str, tuple[int, int, int, list[float]]] = {}
        for index, e in enumerate(new):
            nodes = max(1, round(size * e.weight / total))
            cached = known.get(e.id)
            if cached is None or cached[:3] != (nodes, bits, index):
                # (top 53 bits of the hash, low `bits` replaced by the index) as a float: floats sort and
                # compare several times faster than 64-bit ints, and hold 53-bit integers exactly.
                hashes = id_hashes(e.id, nodes, b"steelyard-ring")
                positions = map(keep.__and__, map(POSITION_SHIFT.__rrshift__, hashes))
                cached = (nodes, bits, index, list(map(float, map(index.__or__, positions))))
            kept[e.id] = cached
            ring += cached[3]
        ring.sort()
        self._nodes = kept
        self._ring = ring
        self._mask = (1 << bits) - 1

    def _lookup(self, key: str) -> Endpoint:
        ring = self._ring
        at = bisect_left(ring, float(key_hash(key) >> POSITION_SHIFT))
        return self._endpoints[int(ring[at if at < len(ring) else 0]) & self._mask]

    def describe(self) -> dict[str, object]:
        return {"strategy": self.name, "endpoints": len(self._endpoints), "ring_nodes": len(self._ring)}
