"""PowerOfTwoChoices: draw `spec.choices` endpoints at random, send to the one with the fewest in flight.

Algorithm: Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing" (2001): two random
candidates and the less loaded one cut the maximum load from log n / log log n to log log n. Draws are
weighted by endpoint weight and without replacement (the second draw is among the n - 1 others). Fewest
picks in flight wins, counted per unit of weight as (in flight + 1) / weight, the raw count when
weights are equal (otherwise, under load, equalising raw counts would erase the weights); a tie goes
to the heavier endpoint, then to the earlier draw. Envoy's least request (choice_count) and HAProxy's
`balance random(2)` work this way.

Cost: with integer weights, both draws from one random number and a ticket table, the second among
the other endpoints' tickets (`_common.TwoDraws.ticket_pair`, O(1), never a retry); otherwise from an
alias table (`_common.AliasTable`), O(1) each, the second redrawn while it hits the first (rarely more
than once; after 8 tries it steps over the first's share of the running weight sums, a bisect); with
more than 2 choices, draws without replacement by bisect,
O(choices x log n). In-flight counts are a flat list of ints (`_common.InFlight`). No allocation for the
default two choices. set_endpoints O(n). The ticket path runs in C when `_picks` is built (the same
choice for the same random number, ~2.5x cheaper; this Python is the reference and the fallback).

State that survives `set_endpoints`: in-flight counts by endpoint id (also for endpoints that left while
picks were in flight).
"""

from __future__ import annotations

import random
import time
import types
from bisect import bisect_right
from collections.abc import Sequence

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import InFlight, TwoDraws, draw, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register

_picks: types.ModuleType | None
try:  # the C picks (optional: setup.py builds them when a compiler is present)
    from steelyard.strategies import _picks
except ImportError:  # pragma: no cover - tests switch them off with monkeypatch instead
    _picks = None
_two_choices_native = None if _picks is None else _picks.two_choices


def draw_excluding(cum: list[float], weights: list[float], total: float, taken: list[int], u: float) -> int:
    """A weighted draw among indices not in `taken` (sorted ascending): O(len(taken) + log n)."""
    r = u * (total - sum(weights[i] for i in taken))
    for i in taken:  # ascending: stepping over one interval can only move r past later ones
        if r >= cum[i] - weights[i]:
            r += weights[i]
    last = len(cum) - 1
    i = min(bisect_right(cum, r), last)
    while i in taken:  # float rounding at an edge: take the nearest free index
        i = i + 1 if i < last else 0
    return i


@register
class PowerOfTwoChoices(BalancingStrategy):
    name = "PowerOfTwoChoices"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._choices = max(2, spec.choices)
        self._endpoints: list[Endpoint] = []
        self._weights: list[float] = []
        self._draws = TwoDraws()
        self._slots: list[int] = []  # the ticket table when weights allow (two draws, one random)
        self._bounds: list[int] = []
        self._random = self.rng.random
        self._tracker = InFlight()
        self._counts: list[int] = []

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = usable(endpoints)
        weights = [float(e.weight) for e in self._endpoints]  # floats: what the C pick takes
        self._weights = weights
        self._draws.set_weights(weights)
        self._slots, self._bounds = self._draws.slots, self._draws.bounds
        if self._choices != 2:
            self._slots = []
        self._counts = self._tracker.align(self._endpoints)

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        slots = self._slots
        if slots:  # two choices, integer weights: two ticket draws from one random number
            u = self._random()
            if _two_choices_native is not None:  # the same choice in C, or -1: decide it here
                best: int = _two_choices_native(slots, self._bounds, self._counts, self._weights, u)
                if best >= 0:
                    return self._endpoints[best]
            first, second = self._draws.ticket_pair(u)
        else:
            endpoints = self._endpoints
            n = len(endpoints)
            if n <= 1:
                if not n:
                    return None
                self._counts[0] += 1
                return endpoints[0]
            if self._choices != 2 and n != 2:
                best = self._pick_many(n)
                self._counts[best] += 1
                return endpoints[best]
            draws = self._draws
            first, second = draws.alias_pair(self._random)
        counts = self._counts
        weights = self._weights
        wa = weights[first]
        wb = weights[second]
        # (in flight + 1) / weight, compared cross-multiplied (exact for integer weights); a tie goes to
        # the heavier endpoint, then to the first drawn. Equal weights reduce it to the raw counts.
        sa = (counts[first] + 1) * wb
        sb = (counts[second] + 1) * wa
        best = second if sb < sa or (sb == sa and wb > wa) else first
        counts[best] += 1
        return self._endpoints[best]

    def _pick_many(self, n: int) -> int:
        draws = self._draws
        cum, weights, total, rand = draws.cum, draws.weights, draws.total, self._random
        taken = [draw(cum, total, rand())]
        for _ in range(min(self._choices, n) - 1):
            taken.append(draw_excluding(cum, weights, total, sorted(taken), rand()))
        counts, weights = self._counts, self._weights
        return min(taken, key=lambda i: ((counts[i] + 1) / weights[i], -weights[i]))  # earliest on a tie

    def note_pick(self, endpoint: Endpoint) -> bool:
        return self._tracker.add(endpoint.id) >= 0

    def pick_among(self, candidates: Sequence[Endpoint]) -> Endpoint | None:
        """A retry: the lesser (in flight + 1) / weight of two candidates drawn at random."""
        drawn = self._tracker.two_of(candidates, self.rng)
        if not drawn:
            return None
        counts, weights = self._counts, self._weights
        best = min(drawn, key=lambda i: ((counts[i] + 1) / weights[i], -weights[i]))
        counts[best] += 1
        return self._endpoints[best]

    def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        self._tracker.release(endpoint.id)

    def describe(self) -> dict[str, object]:
        state: dict[str, object] = {"strategy": self.name, "choices": self._choices}
        if len(self._endpoints) <= 100:
            state["in_flight"] = {e.id: self._counts[i] for i, e in enumerate(self._endpoints)}
        else:
            state["in_flight_total"] = sum(self._counts)
        return state
