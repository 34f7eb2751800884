"""LeastConnections: the endpoint with the fewest picks in flight relative to its weight.

Algorithm: score = (in flight + 1) / weight, lowest wins (the formula the feature's issue specifies).
In flight = picks not yet `on_done`. Ties go to the endpoint that has waited longest since its count last
changed, so equal endpoints take turns instead of the first in order always winning.

With equal weights this is what nginx's `least_conn` and Envoy's least request do: fewest in flight,
ties in turn. With unequal weights it is not, and the difference shows at low load:
- Here the `+ 1` lets the heavier endpoint win when nothing is in flight ((0+1)/5 < (0+1)/1). Traffic
  that comes one request at a time (each done before the next) all goes to the heaviest endpoint; a
  lighter one gets requests only when concurrency lifts the heavier one's score above its own (weights 5
  and 1: the weight-1 endpoint gets its first request while the weight-5 one has 5 in flight).
- nginx's `least_conn` compares in flight / weight and picks among the endpoints tied on it by weighted
  round robin; with nothing in flight every endpoint ties at 0, so the same sequential traffic is split
  by weight (5:1).
- Envoy's least request with unequal weights schedules by weight / (active requests + 1)^bias
  (`active_request_bias`, default 1.0) on its weighted scheduler, so at zero load it is weighted round
  robin (5:1) as well.
For weight-proportional spreading at low load use WeightedRoundRobin.

Cost, O(1) in the usual case: endpoints of equal weight sit in buckets by in-flight count (HAProxy's
`lb_fwlc.c` keeps a tree for the same reason), each bucket a FIFO queue. A pick takes the head of the
lowest non-empty bucket of the best weight class and appends it to the next bucket; `on_done` appends
it to the bucket one down. Queues are deques of integer entries (sequence << bits | index) with lazy
deletion: an entry is live while it equals the endpoint's latest entry, a move leaves the old one
behind (skipped when it reaches a head; all buckets are compacted once stale entries outnumber
endpoints). A bucket is found empty when a pick reaches it, which advances the class to the next
bucket. The best class (lowest (low + 1) / weight, the heavier on a tie) is cached: a pick only
changes its own class, `on_done` only lowers a score, so it is recomputed over the m distinct weights
only when the best class's bucket runs out. With more than 8 distinct weights (many endpoints in slow
start) it switches to a heap of integer keys (score, then sequence) with lazy updates: O(log n) per
pick and per done, the heap rebuilt when stale entries outnumber live ones.

State that survives `set_endpoints`: in-flight counts by endpoint id, including those of endpoints that
left while picks were in flight (so their `on_done` lands and a quick return counts right).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Sequence
from heapq import heapify, heappop, heappush, heapreplace

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import InFlight, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register

MAX_WEIGHT_CLASSES = 8
SCORE_SCALE = 1 << 24  # heap mode: scores as integers, (in flight + 1) x round(2^24 / weight)
SEQUENCE_BITS = 32


class WeightClass:
    """Endpoints of one weight, bucketed by in-flight count. `low` is the lowest bucket that may hold a
    live entry (every endpoint of the class has a count >= low); `queue` and `above` are buckets low
    and low + 1; `rank` orders classes by weight, heaviest first, for ties of score."""

    __slots__ = ("weight", "inverse", "rank", "buckets", "low", "queue", "above", "score")

    def __init__(self, weight: float, rank: int):
        self.weight = weight
        self.inverse = 1.0 / weight
        self.rank = rank
        self.buckets: list[deque[int]] = [deque(), deque()]
        self.set_low(0)

    def bucket(self, count: int) -> deque[int]:
        buckets = self.buckets
        while len(buckets) <= count + 1:
            buckets.append(deque())
        return buckets[count]

    def set_low(self, low: int) -> None:
        self.low = low
        self.queue = self.bucket(low)
        self.above = self.buckets[low + 1]
        self.score = (low + 1) * self.inverse  # what the class's best endpoint would score

    def beats(self, other: WeightClass) -> bool:
        return self.score < other.score or (self.score == other.score and self.rank < other.rank)


@register
class LeastConnections(BalancingStrategy):
    name = "LeastConnections"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._tracker = InFlight()
        self._counts: list[int] = []  # aligned with _endpoints: picks in flight
        self._bits = 1  # entries (bucket queues) and heap keys end with the index in this many bits
        self._mask = 1
        # Bucket mode: one WeightClass per distinct weight, each endpoint's class, its live entry.
        self._classes: list[WeightClass] = []
        self._class_of: list[WeightClass] = []
        self._best: WeightClass | None = None
        self._live: list[int] = []
        self._next = 0  # the next entry's sequence, already shifted left by _bits
        self._step = 2
        self._stale = 0
        # Heap mode: integer keys (score << (SEQUENCE_BITS + bits)) | (sequence << bits) | index.
        self._heap_mode = False
        self._heap: list[int] = []
        self._scale: list[int] = []
        self._sequence = 0

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        new = usable(endpoints)
        self._endpoints = new
        self._counts = self._tracker.align(new)
        self._bits = max(1, len(new).bit_length())
        self._mask = (1 << self._bits) - 1
        distinct = sorted({e.weight for e in new}, reverse=True)  # heavier class first on a tie
        self._heap_mode = len(distinct) > MAX_WEIGHT_CLASSES
        self._classes, self._class_of, self._heap, self._live = [], [], [], []
        self._best = None
        if self._heap_mode:
            self._scale = [max(1, round(SCORE_SCALE / e.weight)) for e in new]
            self._rebuild_heap()
        else:
            by_weight = {w: WeightClass(w, rank) for rank, w in enumerate(distinct)}
            self._classes = list(by_weight.values())
            self._class_of = [by_weight[e.weight] for e in new]
            self._step = 1 << self._bits
            self._next = self._step
            self._stale = 0
            self._live = [0] * len(new)
            for i, count in enumerate(self._counts):
                self._append(self._class_of[i], i, count)
            for c in self._classes:
                c.set_low(min(low for low, bucket in enumerate(c.buckets) if bucket))
            self._best = self._find_best()

    def _append(self, c: WeightClass, index: int, count: int) -> None:
        entry = self._next | index
        self._next += self._step
        self._live[index] = entry
        c.bucket(count).append(entry)

    def _find_best(self) -> WeightClass | None:
        best = None
        for c in self._classes:
            if best is None or c.beats(best):
                best = c
        return best

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        best = self._best
        if best is None:
            return self._pick_heap() if self._heap_mode else None
        queue = best.queue
        live = self._live
        mask = self._mask
        while queue:
            entry = queue.popleft()
            index = entry & mask
            if live[index] == entry:
                entry = self._next
                self._next = entry + self._step
                entry |= index
                live[index] = entry
                best.above.append(entry)
                self._counts[index] = best.low + 1
                return self._endpoints[index]
        return self._pick_advancing(best)

    def _pick_advancing(self, best: WeightClass) -> Endpoint | None:
        """The best class's lowest bucket ran out: move it up one bucket, find the best class again."""
        best.set_low(best.low + 1)
        self._best = self._find_best()
        return self.pick()

    def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        index = self._tracker.release(endpoint.id)
        if index < 0:  # left the set while in flight, or nothing in flight
            return
        if self._heap_mode:
            self._push_heap(index)
            return
        count = self._counts[index]
        c = self._class_of[index]
        self._append(c, index, count)  # the entry in bucket count + 1 is now stale
        if count < c.low:
            c.set_low(count)
            best = self._best
            if best is not None and c is not best and c.beats(best):
                self._best = c
        self._left_stale()

    def note_pick(self, endpoint: Endpoint) -> bool:
        index = self._tracker.add(endpoint.id)
        if index < 0:
            return False
        if self._heap_mode:
            self._push_heap(index)  # the old key is stale now
            return True
        # Its entry moves up one bucket; `low` and the cached best class are lower bounds and stay so.
        self._append(self._class_of[index], index, self._counts[index])
        self._left_stale()
        return True

    def pick_among(self, candidates: Sequence[Endpoint]) -> Endpoint | None:
        """The rule of `pick` over `candidates` only (a retry's), by a scan: retries are rare."""
        index, counts, endpoints, live = self._tracker.index, self._counts, self._endpoints, self._live
        sequence_mask = (1 << SEQUENCE_BITS) - 1
        best: tuple[float, float, int] | None = None
        chosen = -1
        for candidate in candidates:
            i = index.get(candidate.id)
            if i is None:
                continue
            weight = endpoints[i].weight
            # (longest waiting: the oldest live entry, or in heap mode the oldest key's sequence)
            age = (live[i] >> self._bits) & sequence_mask if self._heap_mode else live[i]
            key = ((counts[i] + 1) / weight, -weight, age)
            if best is None or key < best:
                best, chosen = key, i
        if chosen < 0:
            return None
        self.note_pick(endpoints[chosen])
        return endpoints[chosen]

    def _left_stale(self) -> None:
        """An entry moved to another bucket and left its old one behind: compact all buckets once stale
        entries outnumber the endpoints."""
        self._stale += 1
        if self._stale > 2 * len(self._endpoints) + 64:
            self._compact()

    def _compact(self) -> None:
        live, mask = self._live, self._mask
        for c in self._classes:
            for bucket in c.buckets:
                if bucket:
                    kept = [entry for entry in bucket if live[entry & mask] == entry]
                    bucket.clear()
                    bucket.extend(kept)
        self._stale = 0

    # -- heap mode ---------------------------------------------------------------------------------

    def _key(self, index: int) -> int:
        self._sequence += 1
        score = (self._counts[index] + 1) * self._scale[index]
        return (((score << SEQUENCE_BITS) | self._sequence) << self._bits) | index

    def _rebuild_heap(self) -> None:
        order = sorted(range(len(self._endpoints)), key=lambda i: self._live[i] if self._live else i)
        self._live = [0] * len(self._endpoints)
        for i in order:
            self._live[i] = self._key(i)
        self._heap = list(self._live)
        heapify(self._heap)

    def _renumber_if_due(self) -> None:
        if self._sequence >> SEQUENCE_BITS:  # about to wrap: renumber in the current order
            self._sequence = 0
            self._rebuild_heap()

    def _push_heap(self, index: int) -> None:
        self._renumber_if_due()
        key = self._key(index)
        self._live[index] = key
        heap = self._heap
        heappush(heap, key)
        if len(heap) > 2 * len(self._live) + 64:
            self._rebuild_heap()

    def _pick_heap(self) -> Endpoint | None:
        self._renumber_if_due()
        heap, live = self._heap, self._live
        mask = (1 << self._bits) - 1
        while heap:
            top = heap[0]
            index = top & mask
            if live[index] == top:
                break
            heappop(heap)
        else:
            return None
        self._counts[index] += 1
        key = self._key(index)
        live[index] = key
        heapreplace(heap, key)
        return self._endpoints[index]

    def describe(self) -> dict[str, object]:
        state: dict[str, object] = {"strategy": self.name, "mode": "heap" if self._heap_mode else "buckets"}
        if len(self._endpoints) <= 100:
            state["in_flight"] = {e.id: self._counts[i] for i, e in enumerate(self._endpoints)}
        else:
            state["in_flight_total"] = sum(self._counts)
        return state
