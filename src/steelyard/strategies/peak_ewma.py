"""PeakEWMA: two random candidates, the one with the lower latency estimate x (in flight + 1) wins.

Algorithm: Finagle's `p2cPeakEwma` (Twitter, "Peak EWMA"; also Linkerd's default). Each endpoint keeps an
exponentially weighted moving average of its latency that jumps straight up to a slower sample (the
*peak*) and decays towards faster ones with time constant tau = 10 s: after dt seconds an old value keeps
weight exp(-dt / tau). With no samples the estimate decays towards 0 as time passes (Finagle reads its
cost by observing 0), so a backend that was slow is tried again once things calmed down. The load of an
endpoint is estimate x (in flight + 1); an endpoint that has picks in flight but no estimate yet gets a
large penalty, so a new endpoint is probed but not flooded. The candidates are two weighted draws
without replacement (power of two choices).

Errors: a failed pick counts as a sample of max(its latency, 1 s, 4 x the endpoint's estimate), so a
backend that fails fast does not look fast. A pick released unused (`Attempt.cancel`: ok with latency 0)
only lowers the in-flight count; it is not a latency sample.

Cost: two draws from an alias table (O(1), as PowerOfTwoChoices), one clock read and two exp() per pick;
`on_done` O(1).
State that survives `set_endpoints`: estimate, its timestamp and in-flight count per endpoint id.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from math import exp

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import Cells, TwoDraws, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register

DECAY_SECONDS = 10.0  # tau, Finagle's default decay time
FAILURE_FLOOR_SECONDS = 1.0
FAILURE_FACTOR = 4.0
PENDING_PENALTY = 1e6  # load of an endpoint with picks in flight and no estimate yet

# A cell: [in flight, estimate (s), time of the estimate]
PENDING, COST, STAMP = 0, 1, 2


@register
class PeakEWMA(BalancingStrategy):
    name = "PeakEWMA"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._draws = TwoDraws()
        self._random = self.rng.random
        self._cells = Cells(lambda: [0, 0.0, self.clock()])
        self._state: list[list[float]] = []

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = usable(endpoints)
        self._draws.set_weights([e.weight for e in self._endpoints])
        self._state = self._cells.align(self._endpoints)

    @staticmethod
    def _estimate(cell: list[float], now: float) -> float:
        dt = now - cell[STAMP]
        return cell[COST] * math.exp(-dt / DECAY_SECONDS) if dt > 0.0 else cell[COST]

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        endpoints = self._endpoints
        n = len(endpoints)
        if n <= 1:
            if not n:
                return None
            best = 0
        else:
            draws = self._draws
            rand, keep, alias = self._random, draws.keep, draws.alias
            x = rand() * n
            first = int(x)
            if x - first >= keep[first]:
                first = alias[first]
            x = rand() * n
            second = int(x)
            if x - second >= keep[second]:
                second = alias[second]
            if second == first:
                second = draws.redraw(first, rand)
            now = self.clock()
            a, b = self._state[first], self._state[second]
            # load = estimate decayed to now x (in flight + 1), or a penalty while in flight unmeasured
            cost = a[COST]
            load_a = (cost * exp((a[STAMP] - now) / DECAY_SECONDS) * (a[PENDING] + 1) if cost > 0.0
                      else PENDING_PENALTY + a[PENDING] if a[PENDING] else 0.0)
            cost = b[COST]
            load_b = (cost * exp((b[STAMP] - now) / DECAY_SECONDS) * (b[PENDING] + 1) if cost > 0.0
                      else PENDING_PENALTY + b[PENDING] if b[PENDING] else 0.0)
            best = second if load_b < load_a else first
        self._state[best][PENDING] += 1
        return endpoints[best]

    def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        cell = self._cells.by_id.get(endpoint.id)
        if cell is None:
            return
        if cell[PENDING] > 0:
            cell[PENDING] -= 1
        if ok and latency <= 0.0:  # released unused (Attempt.cancel): no sample
            return
        now = self.clock()
        dt = now - cell[STAMP]
        keep = math.exp(-dt / DECAY_SECONDS) if dt > 0.0 else 1.0
        prior = cell[COST]
        sample = latency if ok else max(latency, FAILURE_FLOOR_SECONDS, FAILURE_FACTOR * prior * keep)
        # The peak: a sample above the (decayed) estimate is believed at once; a faster one is blended
        # in with the weight the elapsed time gives it.
        cell[COST] = sample if sample > prior * keep else prior * keep + sample * (1.0 - keep)
        cell[STAMP] = now

    def describe(self) -> dict[str, object]:
        state: dict[str, object] = {"strategy": self.name, "decay_seconds": DECAY_SECONDS}
        if len(self._endpoints) <= 100:
            now = self.clock()
            state["endpoints"] = {
                e.id: {"in_flight": int(c[PENDING]), "latency_estimate": round(self._estimate(c, now), 6)}
                for e, c in zip(self._endpoints, self._state, strict=True)}
        return state
