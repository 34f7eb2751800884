"""Random: a weighted random endpoint per pick.

Algorithm: endpoint i is chosen with probability weight_i / total (the classic roulette wheel; HAProxy
`balance random(1)`, Envoy's random load balancer). Running sums of the weights are built once per
endpoint change; a pick draws u in [0, total) and bisects them.

Cost: one draw from the injected random source and a bisect, O(log n); set_endpoints O(n).
Stateless between picks, so nothing needs to survive `set_endpoints`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import cumulative, draw, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register


@register
class Random(BalancingStrategy):
    name = "Random"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._cum: list[float] = []
        self._total = 0.0
        self._random = self.rng.random

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = usable(endpoints)
        self._cum = cumulative([e.weight for e in self._endpoints])
        self._total = self._cum[-1] if self._cum else 0.0

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        endpoints = self._endpoints
        if not endpoints:
            return None
        return endpoints[draw(self._cum, self._total, self._random())]

    def describe(self) -> dict[str, object]:
        return {"strategy": self.name, "endpoints": len(self._endpoints), "total_weight": self._total}
