"""RoundRobin: each usable endpoint in turn, ignoring weights.

Pick: O(1). Source: the classic; HAProxy `balance roundrobin` without weights. Weight 0 (drain) is
never picked; other weights are ignored.
The cursor survives endpoint changes, so a reload does not send the next request back to the first one.
"""

from __future__ import annotations

from collections.abc import Sequence

from steelyard.strategies._common import usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Endpoint, PickContext, register


@register
class RoundRobin(BalancingStrategy):
    name = "RoundRobin"

    _endpoints: tuple[Endpoint, ...] = ()
    _next = 0

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = tuple(usable(endpoints))

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        endpoints = self._endpoints
        if not endpoints:
            return None
        index = self._next % len(endpoints)
        self._next = index + 1
        return endpoints[index]

    def describe(self) -> dict[str, object]:
        return {"strategy": self.name, "next": self._next % len(self._endpoints) if self._endpoints else None}
