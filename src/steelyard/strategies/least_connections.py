"""LeastConnections: the endpoint with the fewest picks in flight relative to its weight.

Algorithm: score = (in flight + 1) / weight, lowest wins (HAProxy's `balance leastconn`, nginx's
`least_conn`, Envoy's least request in its all-weights-equal form). In flight = picks not yet `on_done`.
Ties go to the endpoint whose score changed longest ago (a sequence number in the heap key), so equal
endpoints take turns instead of the first in order always winning.

Cost: a heap of scores with lazy updates (HAProxy's `lb_fwlc.c` keeps a tree for the same reason). A
pick bumps the top's score in place and sifts it down, O(log n) with no allocation; `on_done` pushes a
fresh entry and leaves the old one stale, to be dropped when it surfaces; the heap is rebuilt when stale
entries outnumber live ones, so its size stays O(n).

State that survives `set_endpoints`: in-flight counts by endpoint id, including those of endpoints that
left while picks were in flight (so their `on_done` lands and a quick return counts right).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from heapq import heapify, heappop, heappush, heapreplace

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import Cells, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register


@register
class LeastConnections(BalancingStrategy):
    name = "LeastConnections"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._index: dict[str, int] = {}
        self._cells = Cells(lambda: [0])
        self._in_flight: list[list[float]] = []  # aligned with _endpoints; [0] = picks in flight
        self._inverse: list[float] = []  # 1 / weight
        # Heap entries [score, sequence, index]; _live[i] is endpoint i's current entry, others are stale.
        self._heap: list[list[float]] = []
        self._live: list[list[float]] = []
        self._sequence = 0

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        new = usable(endpoints)
        self._endpoints = new
        self._index = {e.id: i for i, e in enumerate(new)}
        self._in_flight = self._cells.align(new)
        self._inverse = [1.0 / e.weight for e in new]
        self._rebuild()

    def _rebuild(self) -> None:
        live = []
        for i, cell in enumerate(self._in_flight):
            self._sequence += 1
            live.append([(cell[0] + 1) * self._inverse[i], self._sequence, i])
        self._live = live
        self._heap = list(live)
        heapify(self._heap)

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        heap = self._heap
        live = self._live
        while heap:
            top = heap[0]
            i = int(top[2])
            if top is live[i]:
                break
            heappop(heap)
        else:
            return None
        cell = self._in_flight[i]
        active = cell[0] + 1
        cell[0] = active
        self._sequence = sequence = self._sequence + 1
        top[0] = (active + 1) * self._inverse[i]
        top[1] = sequence
        heapreplace(heap, top)
        return self._endpoints[i]

    def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        cell = self._cells.by_id.get(endpoint.id)
        if cell is None or cell[0] <= 0:
            return
        active = cell[0] - 1
        cell[0] = active
        i = self._index.get(endpoint.id)
        if i is None:  # left the set while this pick was in flight
            return
        self._sequence += 1
        entry = [(active + 1) * self._inverse[i], self._sequence, i]
        self._live[i] = entry
        heap = self._heap
        heappush(heap, entry)
        if len(heap) > 2 * len(self._live) + 64:
            self._rebuild()

    def describe(self) -> dict[str, object]:
        state: dict[str, object] = {"strategy": self.name}
        if len(self._endpoints) <= 100:
            state["in_flight"] = {e.id: int(self._in_flight[i][0]) for i, e in enumerate(self._endpoints)}
        else:
            state["in_flight_total"] = int(sum(c[0] for c in self._in_flight))
        live = [entry for entry in self._heap if entry is self._live[int(entry[2])]]
        state["next"] = self._endpoints[int(min(live)[2])].id if live else None
        return state
