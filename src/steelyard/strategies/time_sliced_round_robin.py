"""TimeSlicedRoundRobin: one endpoint takes every pick for a while, then the next one in turn.

Algorithm: the owner keeps all picks for `spec.time_slice` x its weight seconds, weight read as a
multiple of 1 (weight 1: one slice, weight 3: three slices, weight 0.5 during slow start: half a slice),
then ownership passes to the next endpoint in order. A slice starts at the first pick after the previous
one ended, so an idle period does not skip endpoints. This is the issue's `timeSlice` semantics (coarse
affinity for caches that warm per backend); there is no well-known system with this exact policy.

Cost: one clock read and a compare per pick, O(1); O(n) at a hand-over only when the owner left.

State that survives `set_endpoints`: the owner and when its slice started (its end follows its new
weight); if the owner left, the next endpoint in the old order that stays takes over at the next pick.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register


@register
class TimeSlicedRoundRobin(BalancingStrategy):
    name = "TimeSlicedRoundRobin"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._slice = max(float(spec.time_slice), 0.0)
        self._endpoints: list[Endpoint] = []
        self._owner = -1  # index in _endpoints; -1: none yet
        self._slice_start = -math.inf
        self._slice_end = -math.inf  # picks at or after this time move to the next endpoint
        self._pending: str | None = None  # the owner left: the id of the endpoint taking over next

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        old, owner, pending = self._endpoints, self._owner, self._pending
        new = usable(endpoints)
        self._endpoints = new
        position = {e.id: i for i, e in enumerate(new)}
        if pending is not None:
            # A hand-over is still due (the owner left at an earlier change): to that endpoint, or, if it
            # left too, to the next one after it in the old order that stays.
            start = next((i for i, e in enumerate(old) if e.id == pending), 0) - 1
        elif 0 <= owner < len(old):
            stays = position.get(old[owner].id)
            if stays is not None:
                self._owner = stays
                self._slice_end = self._slice_start + self._slice * new[stays].weight
                return
            start = owner  # the owner left: the next one after it (in the old order) that stays goes next
        else:
            self._owner = -1
            return
        self._owner, self._slice_end, self._pending = -1, -math.inf, None
        for step in range(1, len(old) + 1):
            successor = old[(start + step) % len(old)]
            after = position.get(successor.id)
            if after is not None:
                self._owner = after - 1  # the hand-over at the next pick advances to `after`
                self._pending = successor.id
                break

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        endpoints = self._endpoints
        if not endpoints:
            return None
        now = self.clock()
        if now >= self._slice_end or self._owner < 0:
            owner = (self._owner + 1) % len(endpoints)
            self._owner = owner
            self._pending = None
            self._slice_start = now
            self._slice_end = now + self._slice * endpoints[owner].weight
        return endpoints[self._owner]

    def describe(self) -> dict[str, object]:
        owner = self._endpoints[self._owner].id if 0 <= self._owner < len(self._endpoints) else None
        return {"strategy": self.name, "owner": owner, "time_slice": self._slice,
                "slice_ends_at": self._slice_end if math.isfinite(self._slice_end) else None}
