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

Cost: two draws (O(1), as PowerOfTwoChoices: one random number and a ticket table with integer weights,
else an alias table). Comparing two decayed loads needs no clock: the decay factor exp(-now / tau) is
common to both, so each endpoint keeps key = ln(estimate) + stamp / tau (set by `on_done`) and
load_b < load_a exactly when key_b - key_a < ln((in flight_a + 1) / (in flight_b + 1)): one subtraction
when the in-flight counts are equal, else one log, never an exp that could overflow. Only when one
candidate has no estimate yet (its load is 0 or the penalty) is the clock read and the other's load
decayed to now. `on_done` O(1), one exp and one log. With a ticket table the pick runs in C when
`_picks` is built (the same choice for the same random number, ~2.5x cheaper; this Python is the
reference and the fallback, and decides whenever the clock is needed).
State that survives `set_endpoints`: estimate, its timestamp and in-flight count per endpoint id.
"""

from __future__ import annotations

import math
import random
import time
import types
from collections.abc import Sequence
from math import exp, log

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import InFlight, TwoDraws, usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register

_picks: types.ModuleType | None
try:  # the C picks (optional: setup.py builds them when a compiler is present)
    from steelyard.strategies import _picks
except ImportError:  # pragma: no cover - tests switch them off with monkeypatch instead
    _picks = None
_peak_ewma_native = None if _picks is None else _picks.peak_ewma

DECAY_SECONDS = 10.0  # tau, Finagle's default decay time
FAILURE_FLOOR_SECONDS = 1.0
FAILURE_FACTOR = 4.0
PENDING_PENALTY = 1e6  # load of an endpoint with picks in flight and no estimate yet

# An estimate cell, per endpoint id: [estimate (s), time of the estimate]
COST, STAMP = 0, 1


@register
class PeakEWMA(BalancingStrategy):
    name = "PeakEWMA"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._draws = TwoDraws()
        self._random = self.rng.random
        # Flat lists aligned with the endpoints, so a pick reads four list items, not four nested cells:
        self._tracker = InFlight()
        self._pending: list[int] = []  # picks in flight (the tracker's counts)
        self._keys: list[float | None] = []  # ln(estimate) + stamp / tau; None while unmeasured
        self._cells: list[list[float]] = []  # estimate cells, read only when the clock is needed
        self._estimates: dict[str, list[float]] = {}  # cells by id (also departed ids with picks in flight)
        self._slots: list[int] = []  # the ticket table when weights allow (two draws, one random)
        self._bounds: list[int] = []

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = usable(endpoints)
        self._draws.set_weights([e.weight for e in self._endpoints])
        self._slots, self._bounds = self._draws.slots, self._draws.bounds
        self._pending = self._tracker.align(self._endpoints)
        old = self._estimates
        estimates = {e.id: old.get(e.id) or [0.0, self.clock()] for e in self._endpoints}
        for endpoint_id in self._tracker.gone:  # departed with picks in flight: their done still counts
            if endpoint_id in old:
                estimates.setdefault(endpoint_id, old[endpoint_id])
        self._estimates = estimates
        self._cells = [estimates[e.id] for e in self._endpoints]
        self._keys = [_key(cell) for cell in self._cells]

    @staticmethod
    def _estimate(cell: list[float], now: float) -> float:
        dt = now - cell[STAMP]
        return cell[COST] * math.exp(-dt / DECAY_SECONDS) if dt > 0.0 else cell[COST]

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        slots = self._slots
        if slots:  # integer weights: two ticket draws from one random number (see TwoDraws)
            u = self._random()
            if _peak_ewma_native is not None:  # the same choice in C, or -1: decide it here
                best: int = _peak_ewma_native(slots, self._bounds, self._pending, self._keys, u)
                if best >= 0:
                    return self._endpoints[best]
            first, second = self._draws.ticket_pair(u)
        else:
            n = self._draws.n
            if n <= 1:
                if not n:
                    return None
                self._pending[0] += 1
                return self._endpoints[0]
            first, second = self._draws.alias_pair(self._random)
        pending = self._pending
        keys = self._keys
        pending_a = pending[first]
        pending_b = pending[second]
        key_a = keys[first]
        key_b = keys[second]
        if key_a is not None and key_b is not None:  # both measured
            # estimate x exp((stamp - now) / tau) x (in flight + 1), compared without now: see the header
            d = key_b - key_a
            win = d < 0.0 if pending_a == pending_b else d < log((pending_a + 1) / (pending_b + 1))
        elif key_a is not None or key_b is not None:
            now = self.clock()
            cells = self._cells
            win = _load(cells[second], pending_b, now) < _load(cells[first], pending_a, now)
        else:  # neither measured: load 0, or the penalty + in flight, which orders as in flight does
            win = pending_b < pending_a
        if win:
            pending[second] = pending_b + 1
            return self._endpoints[second]
        pending[first] = pending_a + 1
        return self._endpoints[first]

    def note_pick(self, endpoint: Endpoint) -> bool:
        return self._tracker.add(endpoint.id) >= 0  # its latency, when done, is a real sample too

    def pick_among(self, candidates: Sequence[Endpoint]) -> Endpoint | None:
        """A retry: the lesser load of two candidates drawn at random, loads decayed to now."""
        drawn = self._tracker.two_of(candidates, self.rng)
        if not drawn:
            return None
        now = self.clock()
        cells, pending = self._cells, self._pending
        best = min(drawn, key=lambda i: _load(cells[i], pending[i], now))
        pending[best] += 1
        return self._endpoints[best]

    def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
        self._tracker.release(endpoint.id)
        cell = self._estimates.get(endpoint.id)
        if cell is None or (ok and latency <= 0.0):  # unknown, or released unused (Attempt.cancel)
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
        i = self._tracker.index.get(endpoint.id)
        if i is not None:
            self._keys[i] = _key(cell)

    def describe(self) -> dict[str, object]:
        state: dict[str, object] = {"strategy": self.name, "decay_seconds": DECAY_SECONDS}
        if len(self._endpoints) <= 100:
            now = self.clock()
            state["endpoints"] = {
                e.id: {"in_flight": self._pending[i], "latency_estimate": round(self._estimate(c, now), 6)}
                for i, (e, c) in enumerate(zip(self._endpoints, self._cells, strict=True))}
        return state


def _key(cell: list[float]) -> float | None:
    """ln(estimate) + stamp / tau: the load's logarithm without the decay common to all at any time."""
    cost = cell[COST]
    return log(cost) + cell[STAMP] / DECAY_SECONDS if cost > 0.0 else None


def _load(cell: list[float], pending: int, now: float) -> float:
    """Estimate decayed to now x (in flight + 1), or a penalty while in flight unmeasured."""
    cost = cell[COST]
    if cost > 0.0:
        return cost * exp((cell[STAMP] - now) / DECAY_SECONDS) * (pending + 1)
    return PENDING_PENALTY + pending if pending else 0.0
