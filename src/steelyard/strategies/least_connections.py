"""LeastConnections: the endpoint with the fewest picks in flight relative to its weight.

Algorithm: score = (in flight + 1) / weight, lowest wins (HAProxy's `balance leastconn`, nginx's
`least_conn`, Envoy's least request in its all-weights-equal form). In flight = picks not yet `on_done`.
Ties go to the endpoint that has waited longest since its count last changed, so equal endpoints take
turns instead of the first in order always winning.

Cost, O(1) in the usual case: endpoints of equal weight sit in buckets by in-flight count (HAProxy's
`lb_fwlc.c` keeps a tree for the same reason), each bucket an insertion-ordered queue. A pick takes the
head of the lowest non-empty bucket of each weight class, compares those (one per distinct weight) and
moves the winner to the tail of the next bucket; `on_done` moves it one bucket down. So a pick costs
O(m) for m distinct weights and no search over endpoints. With more than 8 distinct weights (many
endpoints in slow start) it switches to a heap of integer keys (score, then sequence) with lazy
updates: O(log n) per pick and per done, the heap rebuilt when stale entries outnumber live ones.

State that survives `set_endpoints`: in-flight counts by endpoint id, including those of endpoints that
left while picks were in flight (so their `on_done` lands and a quick return counts right).
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from heapq import heapify, heappop, heappush, heapreplace
from operator import attrgetter

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import Cells, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register

MAX_WEIGHT_CLASSES = 8
SCORE_SCALE = 1 << 24  # heap mode: scores as integers, (in flight + 1) x round(2^24 / weight)
SEQUENCE_BITS = 32


class WeightClass:
    """Endpoints of one weight, bucketed by in-flight count; `low` is the lowest non-empty bucket."""

    __slots__ = ("weight", "inverse", "buckets", "low", "score")

    def __init__(self, weight: float):
        self.weight = weight
        self.inverse = 1.0 / weight
        self.buckets: list[OrderedDict[int, None]] = []
        self.low = 0
        self.score = self.inverse  # (low + 1) / weight: what the class's best endpoint would score

    def add(self, index: int, count: int) -> None:
        while len(self.buckets) <= count + 1:
            self.buckets.append(OrderedDict())
        self.buckets[count][index] = None
        if count < self.low or not self.buckets[self.low]:
            self.set_low(count)

    def set_low(self, low: int) -> None:
        self.low = low
        self.score = (low + 1) * self.inverse


_score = attrgetter("score")


@register
class LeastConnections(BalancingStrategy):
    name = "LeastConnections"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._cells = Cells(lambda: [0, -1])
        self._in_flight: list[list[float]] = []  # aligned with _endpoints; [0] = picks in flight
        # Bucket mode: one WeightClass per distinct weight, and each endpoint's class.
        self._classes: list[WeightClass] = []
        self._class_of: list[WeightClass] = []
        # Heap mode: integer keys (score << (SEQUENCE_BITS + bits)) | (sequence << bits) | index.
        self._heap_mode = False
        self._heap: list[int] = []
        self._live: list[int] = []
        self._scale: list[int] = []
        self._bits = 1
        self._sequence = 0

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        new = usable(endpoints)
        self._endpoints = new
        self._in_flight = self._cells.align(new)
        for cell in self._cells.by_id.values():
            cell[1] = -1  # cell = [in flight, index in the current set or -1]
        for i, cell in enumerate(self._in_flight):
            cell[1] = i
        distinct = sorted({e.weight for e in new}, reverse=True)  # heavier class first on a tie
        self._heap_mode = len(distinct) > MAX_WEIGHT_CLASSES
        self._classes, self._class_of, self._heap, self._live = [], [], [], []
        if self._heap_mode:
            self._scale = [max(1, round(SCORE_SCALE / e.weight)) for e in new]
            self._bits = max(1, len(new).bit_length())
            self._rebuild_heap()
        else:
            by_weight = {w: WeightClass(w) for w in distinct}
            self._classes = list(by_weight.values())
            self._class_of = [by_weight[e.weight] for e in new]
            for i, cell in enumerate(self._in_flight):
                self._class_of[i].add(i, int(cell[0]))

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        classes = self._classes
        if len(classes) == 1:
            best = classes[0]
        elif classes:
            best = min(classes, key=_score)  # the first of equal scores: the heavier class
        else:
            return self._pick_heap() if self._heap_mode else None
        low = best.low
        buckets = best.buckets
        index, _ = buckets[low].popitem(last=False)
        if len(buckets) <= low + 2:
            buckets.append(OrderedDict())
        buckets[low + 1][index] = None
        if not buckets[low]:
            best.set_low(low + 1)
        self._in_flight[index][0] = low + 1
        return self._endpoints[index]

    def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        cell = self._cells.by_id.get(endpoint.id)
        if cell is None or cell[0] <= 0:
            return
        count = int(cell[0])
        cell[0] = count - 1
        index = int(cell[1])
        if index < 0:  # left the set while in flight
            return
        if self._heap_mode:
            self._push_heap(index)
            return
        c = self._class_of[index]
        del c.buckets[count][index]
        c.buckets[count - 1][index] = None
        if count - 1 < c.low:
            c.set_low(count - 1)

    # -- heap mode ---------------------------------------------------------------------------------

    def _key(self, index: int) -> int:
        self._sequence += 1
        score = int(self._in_flight[index][0] + 1) * self._scale[index]
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
        self._in_flight[index][0] += 1
        key = self._key(index)
        live[index] = key
        heapreplace(heap, key)
        return self._endpoints[index]

    def describe(self) -> dict[str, object]:
        state: dict[str, object] = {"strategy": self.name, "mode": "heap" if self._heap_mode else "buckets"}
        if len(self._endpoints) <= 100:
            state["in_flight"] = {e.id: int(self._in_flight[i][0]) for i, e in enumerate(self._endpoints)}
        else:
            state["in_flight_total"] = int(sum(c[0] for c in self._in_flight))
        return state
