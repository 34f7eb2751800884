"""Random: a weighted random endpoint per pick.

Algorithm: endpoint i is chosen with probability weight_i / total (HAProxy `balance random(1)`, Envoy's
random load balancer). The draw uses Walker's alias method (`_common.AliasTable`), built once per
endpoint change: one random number picks a slot and, with the slot's odds, its endpoint or its alias.

Cost: one draw from the injected random source and two list reads, O(1); set_endpoints O(n).
Stateless between picks, so nothing needs to survive `set_endpoints`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import AliasTable, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register


@register
class Random(BalancingStrategy):
    name = "Random"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._total = 0.0
        self._n = 0
        self._keep: list[float] = []
        self._alias: list[int] = []
        self._random = self.rng.random

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = usable(endpoints)
        table = AliasTable([e.weight for e in self._endpoints])
        self._n, self._keep, self._alias = table.n, table.keep, table.alias
        self._total = sum(e.weight for e in self._endpoints)

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        n = self._n
        if not n:
            return None
        x = self._random() * n
        i = int(x)
        return self._endpoints[i if x - i < self._keep[i] else self._alias[i]]

    def describe(self) -> dict[str, object]:
        return {"strategy": self.name, "endpoints": len(self._endpoints), "total_weight": self._total}
