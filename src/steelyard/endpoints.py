"""Which endpoints of one upstream are usable, and at what effective weight.

Pure state, no I/O: the clock is passed in (`now`) on every call, so tests script time. The runtime
feeds it three kinds of facts and hands the result (`usable()`) to the strategy:

- **configuration**: endpoints with their configured weight (0 = drain), `terminating` flags, the policy;
- **active health checks**: one result per probe (`on_health_check`); the thresholds are applied here:
  `unhealthyThreshold` consecutive failures mark an endpoint down, `healthyThreshold` successes up;
- **outcomes** of real requests (`on_outcome`, exactly one per pick): passive outlier detection (Envoy's
  consecutive-failure detector: eject for baseEjectionTime x times ejected, capped by
  maxEjectionPercent), and the `Latency` / `Header` dynamic weights.

Effective weight = configured weight (or the admin override), then dynamic weights, then slow start:
weight x max(minWeightPercent/100, (t/window)^(1/aggression)), Envoy's formula.

Choices where the spec is silent (what Envoy and HAProxy do by default):
- a new endpoint is healthy until checks say otherwise (no traffic gap on scale-up; retries cover a
  backend that is not listening yet);
- slow start ramps endpoints added *after* the first configuration, and those returning from unhealthy
  or ejected; a process start does not ramp every endpoint at once;
- at least one endpoint may be ejected whenever maxEjectionPercent > 0 (Envoy does the same), and an
  ejection lasts at most max(300 s, baseEjectionTime);
- `terminating` endpoints serve only when no other endpoint is usable (kube-proxy, KEP-1669);
- dynamic weights are recomputed at most every `RECOMPUTE_INTERVAL`, never per request, so the strategy
  is not rebuilt on every response.

Transitions (down, up again, ejected, back from ejection, drained, weight override) are data for the
runtime's log: `generation` changes whenever one may have happened, `looks()` is the per-endpoint state they
are about, and `transitions(before, after)` names the differences with their reasons (no I/O here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from steelyard.config.desired import BackendEndpoint
from steelyard.model import BalancerPolicySpec, DynamicWeightMode, HealthCheckType
from steelyard.strategies import Endpoint

__all__ = ["EndpointTracker", "Look", "RECOMPUTE_INTERVAL", "SLOW_START_STEP", "Transition"]

RECOMPUTE_INTERVAL = 0.5  # seconds between dynamic-weight recomputations
SLOW_START_STEP = 20  # a ramp is re-evaluated this many times per window (at least every 50 ms)
MAX_EJECTION_TIME = 300.0
EWMA_ALPHA = 0.1  # per sample, for latency and error rate (Latency mode)
MIN_FACTOR = 0.05  # Latency mode never lowers an endpoint below this share of its weight


# What a logged transition is about, per endpoint: (healthy, ejected, drained by an operator, weight override)
Look = tuple[bool, bool, bool, int | None]


class Transition(NamedTuple):
    """One change of one endpoint. `old`/`new` name the states ("up"/"down", "not ejected"/"ejected",
    "not drained"/"drained", "weight N"); `reason` is the whole phrase for a log line, e.g.
    "is DOWN (3 failed health checks: Connection refused)"."""

    endpoint_id: str
    old: str
    new: str
    reason: str


class _State:
    """Everything known about one endpoint. Plain attributes: `on_outcome` runs once per request."""

    __slots__ = (
        "config", "healthy", "check_passes", "check_failures", "consecutive_failures", "ejected_until",
        "ejection_multiplier", "ejections", "returned_at", "ramp_from", "latency", "errors", "samples",
        "hint", "dynamic_weight", "override_weight", "drained", "check_detail", "ejected_after",
        "ejected_for", "hint_at",
    )

    def __init__(self, config: BackendEndpoint, ramp_from: float | None):
        self.config = config
        self.healthy = True
        self.check_passes = 0
        self.check_failures = 0
        self.consecutive_failures = 0
        self.ejected_until: float | None = None
        self.ejection_multiplier = 0
        self.ejections = 0  # total, for the admin API
        self.returned_at: float | None = None
        self.ramp_from = ramp_from  # slow start began here (None: not ramping)
        self.latency: float | None = None  # EWMA of successful attempts' latency
        self.errors = 0.0  # EWMA of failures (1) and successes (0)
        self.samples = 0
        self.hint: float | None = None  # last weight a backend reported (Header mode)
        self.hint_at = 0.0  # when it reported it
        self.dynamic_weight: float | None = None  # last recomputed dynamic weight
        self.override_weight: int | None = None
        self.drained = False
        self.check_detail: str | None = None  # what the last failed probe said ("Connection refused")
        self.ejected_after = 0  # consecutive failures that caused the last ejection
        self.ejected_for = 0.0  # and how long it was for

    def ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until


class EndpointTracker:
    """Health, ejection, drain and effective weights of one upstream's endpoints."""

    def __init__(self, policy: BalancerPolicySpec, now: float):
        self._states: dict[str, _State] = {}
        self._configured = False
        # Public: changes whenever a `looks()` may have changed (never per request): the runtime compares
        # looks only then.
        self.generation = 0
        self._next_recompute = now
        self.set_policy(policy, now)

    # -- configuration -----------------------------------------------------------------------------------

    def set_policy(self, policy: BalancerPolicySpec, now: float) -> None:
        self.policy = policy
        self.generation += 1
        self._checked = policy.health_check.type != HealthCheckType.NONE
        if not self._checked:
            for state in self._states.values():
                state.healthy = True
                state.check_passes = state.check_failures = 0
        self._outliers = policy.outlier_detection
        mode = policy.dynamic_weights.mode
        if mode != getattr(self, "_dynamic", mode):  # what one mode measured means nothing to another
            for state in self._states.values():
                _forget_measurements(state)
        self._dynamic = mode
        if self._outliers is None:
            for state in self._states.values():
                state.ejected_until = None
                state.consecutive_failures = 0
        # Public: whether outcomes can change anything (outlier detection, dynamic weights); when not,
        # on_outcome returns at once and UpstreamRuntime skips the call altogether.
        self.listens = self._outliers is not None or self._dynamic != DynamicWeightMode.OFF

    def set_endpoints(self, endpoints: Iterable[BackendEndpoint], now: float) -> None:
        """Replace the configured set; state of endpoint ids that stay is kept."""
        old = self._states
        new: dict[str, _State] = {}
        slow_start = self.policy.slow_start is not None and self._configured
        for config in endpoints:
            state = old.get(config.id)
            if state is None:
                state = _State(config, now if slow_start else None)
            else:
                if config.weight > 0 and state.config.weight == 0 and self.policy.slow_start is not None:
                    state.ramp_from = now  # undrained by configuration: ramp up like a new endpoint
                state.config = config
            new[config.id] = state
        self._states = new
        self._configured = True
        self.generation += 1

    def set_override(self, endpoint_id: str, *, weight: int | None = None,
                     drained: bool | None = None) -> bool:
        """An operator's weight or drain (admin API). `weight=None` removes the weight override."""
        state = self._states.get(endpoint_id)
        if state is None:
            return False
        state.override_weight = weight
        state.dynamic_weight = None  # Latency mode scales the new weight at its next recomputation
        if drained is not None:
            state.drained = drained
        self.generation += 1
        return True

    def endpoint(self, endpoint_id: str) -> BackendEndpoint | None:
        state = self._states.get(endpoint_id)
        return state.config if state is not None else None

    # -- facts ---------------------------------------------------------------------------------------------

    def on_health_check(self, endpoint_id: str, now: float, healthy: bool, detail: str | None = None) -> bool:
        """One probe's result (`detail`: what a failed one said, for the log). Returns True when the
        endpoint's usability changed."""
        state = self._states.get(endpoint_id)
        if state is None or not self._checked:
            return False
        check = self.policy.health_check
        if healthy:
            state.check_failures = 0
            state.check_passes += 1
            if not state.healthy and state.check_passes >= check.healthy_threshold:
                state.healthy = True
                self._returned(state, now)
                self.generation += 1
                return True
        else:
            state.check_passes = 0
            state.check_failures += 1
            state.check_detail = detail
            if state.healthy and state.check_failures >= check.unhealthy_threshold:
                state.healthy = False
                state.ramp_from = None
                self.generation += 1
                return True
        return False

    def on_outcome(self, endpoint_id: str, now: float, *, ok: bool, latency: float,
                   weight_hint: float | None = None) -> bool:
        """One attempt's result. Returns True when `usable()` may have changed (refresh the strategy)."""
        if not self.listens:
            return False
        state = self._states.get(endpoint_id)
        if state is None:
            return False
        changed = False
        if self._outliers is not None:
            if ok:
                state.consecutive_failures = 0
            else:
                state.consecutive_failures += 1
                if state.consecutive_failures >= self._outliers.consecutive_failures:
                    changed = self._eject(state, now)
        if self._dynamic != DynamicWeightMode.OFF:
            if self._dynamic == DynamicWeightMode.LATENCY:
                state.samples += 1
                state.errors += EWMA_ALPHA * ((0.0 if ok else 1.0) - state.errors)
                if ok:  # a fast failure must not look like a fast backend: only successes time it
                    state.latency = latency if state.latency is None else (
                        state.latency + EWMA_ALPHA * (latency - state.latency))
            elif weight_hint is not None and not math.isnan(weight_hint):  # ("nan" parses as a float)
                state.hint = weight_hint
                state.hint_at = now
            if now >= self._next_recompute:
                changed = self._recompute(now) or changed
        return changed

    def _eject(self, state: _State, now: float) -> bool:
        outliers = self._outliers
        assert outliers is not None
        if state.ejected(now):
            return False
        states = self._states.values()
        ejected = sum(1 for s in states if s.ejected(now))
        allowed = max(1, math.floor(len(self._states) * outliers.max_ejection_percent / 100))
        if outliers.max_ejection_percent == 0 or ejected >= allowed:
            return False
        base = outliers.base_ejection_time
        if state.returned_at is not None and state.ejection_multiplier and base > 0:
            # Envoy lowers the multiplier again for every base interval spent back in service.
            served = int((now - state.returned_at) // base)
            state.ejection_multiplier = max(0, state.ejection_multiplier - served)
        state.ejection_multiplier += 1
        state.ejections += 1
        state.ejected_for = min(base * state.ejection_multiplier, max(MAX_EJECTION_TIME, base))
        state.ejected_until = now + state.ejected_for
        state.ejected_after = state.consecutive_failures
        state.consecutive_failures = 0
        state.ramp_from = None
        state.returned_at = None
        self.generation += 1
        return True

    def _returned(self, state: _State, now: float) -> None:
        """Back in service after being unhealthy or ejected: slow start ramps it up again, and what was
        measured before (latency, failures) no longer describes it."""
        state.consecutive_failures = 0
        _forget_measurements(state)
        if self.policy.slow_start is not None:
            state.ramp_from = now

    def _recompute(self, now: float) -> bool:
        """Dynamic weights from the samples so far. Returns True when any weight changed."""
        self._next_recompute = now + RECOMPUTE_INTERVAL
        dyn = self.policy.dynamic_weights
        changed = False
        if self._dynamic == DynamicWeightMode.HEADER:
            expired_before = now - dyn.report_expiry
            for state in self._states.values():
                if state.hint is not None and state.hint_at <= expired_before:
                    state.hint = None  # no news for reportExpiry: back to the configured weight
                    if state.dynamic_weight is not None:
                        state.dynamic_weight = None
                        changed = True
                if state.hint is not None:
                    weight = _quantize(min(max(state.hint, dyn.min), dyn.max))
                    if weight != state.dynamic_weight:
                        state.dynamic_weight = weight
                        changed = True
            return changed
        timed = sorted(s.latency for s in self._states.values() if s.latency is not None)
        reference = timed[(len(timed) - 1) // 2] if timed else None  # the peers' (lower) median latency
        for state in self._states.values():
            if state.samples == 0:
                continue
            factor = 1.0
            if reference is not None and state.latency is not None and state.latency > reference > 0:
                factor = reference / state.latency  # twice as slow as the median: half the weight
            elif state.latency is None and state.errors > 0:
                factor = MIN_FACTOR  # nothing but failures so far
            factor *= (1.0 - state.errors) ** 2  # 30% failing: about half the weight
            factor = max(MIN_FACTOR, factor)
            base = state.override_weight if state.override_weight is not None else state.config.weight
            # (min and max bound reported weights, Header mode: here they would pin the usual weight 1)
            weight = _quantize(max(base * factor, 0.01))
            if weight != state.dynamic_weight:
                state.dynamic_weight = weight
                changed = True
        return changed

    # -- results ---------------------------------------------------------------------------------------------

    def _weight(self, state: _State, now: float) -> float:
        """Effective weight: configured or overridden, then dynamic weights, then slow start."""
        override = state.override_weight
        weight = float(override if override is not None else state.config.weight)
        if weight <= 0:
            return 0.0
        dynamic = state.dynamic_weight
        if dynamic is not None and (override is None or self._dynamic == DynamicWeightMode.LATENCY):
            weight = dynamic  # Latency scales the operator's weight; a reported weight never beats it
        slow = self.policy.slow_start
        if slow is not None and state.ramp_from is not None:
            elapsed = now - state.ramp_from
            if elapsed >= slow.window or slow.window <= 0:
                state.ramp_from = None
            else:
                progress = max(elapsed, 0.0) / slow.window
                share = max(slow.min_weight_percent / 100, progress ** (1.0 / slow.aggression))
                weight = _quantize(weight * share)
        return weight

    def _serving(self, state: _State, now: float) -> bool:
        return state.healthy and not state.drained and not state.ejected(now)

    def usable(self, now: float) -> tuple[Endpoint, ...]:
        """Endpoints a strategy may pick now, with effective weights, in configuration order.

        Terminating endpoints are only included when no other endpoint is usable."""
        if self._dynamic != DynamicWeightMode.OFF and now >= self._next_recompute:
            self._recompute(now)
        ready: list[Endpoint] = []
        terminating: list[Endpoint] = []
        for endpoint_id, state in self._states.items():
            if state.ejected_until is not None and now >= state.ejected_until:
                state.ejected_until = None
                state.returned_at = now
                self._returned(state, now)
                self.generation += 1
            if not self._serving(state, now):
                continue
            weight = self._weight(state, now)
            if weight <= 0:
                continue
            (terminating if state.config.terminating else ready).append(Endpoint(endpoint_id, weight))
        return tuple(ready or terminating)

    def next_change_at(self, now: float) -> float | None:
        """When time alone may change `usable()`: an ejection ends, a ramp steps, weights recompute."""
        due: float | None = None
        slow = self.policy.slow_start
        step = max(slow.window / SLOW_START_STEP, 0.05) if slow is not None else 0.0
        for state in self._states.values():
            if state.ejected_until is not None:
                due = state.ejected_until if due is None else min(due, state.ejected_until)
            if state.ramp_from is not None and slow is not None:
                if state.ramp_from + slow.window <= now:
                    state.ramp_from = None  # done ramping (usable() skips endpoints it cannot pick)
                    continue
                at = min(now + step, state.ramp_from + slow.window)
                due = at if due is None else min(due, at)
        if self._dynamic != DynamicWeightMode.OFF and any(s.samples or s.hint is not None
                                                          for s in self._states.values()):
            due = self._next_recompute if due is None else min(due, self._next_recompute)
        return due

    def unavailable_reason(self, now: float) -> str:
        """Why `usable()` is empty, in words for a 503 body and the admin API."""
        states = list(self._states.values())
        if not states:
            return "no endpoints configured"
        counts: dict[str, int] = {}
        for state in states:
            reason = self._state_name(state, now)
            counts[reason] = counts.get(reason, 0) + 1
        words = {"unhealthy": "failing health checks", "ejected": "ejected by outlier detection",
                 "draining": "draining (weight 0, drained, or reporting weight 0)",
                 "terminating": "terminating"}
        parts = [f"{n} {words.get(name, name)}" for name, n in sorted(counts.items())]
        return f"no usable endpoint: {len(states)} configured, " + ", ".join(parts)

    def _state_name(self, state: _State, now: float) -> str:
        if state.drained or (state.override_weight if state.override_weight is not None
                             else state.config.weight) <= 0 or state.dynamic_weight == 0:
            return "draining"  # (dynamic weight 0: the endpoint reported 0, Header mode with min 0)
        if not state.healthy:
            return "unhealthy"
        if state.ejected(now):
            return "ejected"
        if state.config.terminating:
            return "terminating"
        if state.ramp_from is not None:
            return "slow-start"
        return "healthy"

    def looks(self) -> dict[str, Look]:
        """Per endpoint, what `transitions()` compares. Take it right after `usable()`, which ends the
        ejections that are over."""
        return {endpoint_id: (s.healthy, s.ejected_until is not None, s.drained, s.override_weight)
                for endpoint_id, s in self._states.items()}

    def transitions(self, before: Mapping[str, Look], after: Mapping[str, Look]) -> list[Transition]:
        """What changed between two `looks()` of the same endpoints, with the reasons the state still holds
        (so `after` should be the current one). Endpoints added or removed by configuration are not
        transitions."""
        changes: list[Transition] = []
        for endpoint_id, now_look in after.items():
            was = before.get(endpoint_id)
            if was is None or was == now_look:
                continue
            state = self._states.get(endpoint_id)
            if state is None:
                continue
            (healthy, ejected, drained, override), (was_healthy, was_ejected, was_drained, was_override) = (
                now_look, was)
            if healthy != was_healthy:
                if not healthy:
                    why = _plural(state.check_failures, "failed health check")
                    if state.check_detail:
                        why += f": {state.check_detail}"
                    changes.append(Transition(endpoint_id, "up", "down", f"is DOWN ({why})"))
                else:
                    why = (_plural(state.check_passes, "passed health check") if self._checked
                           else "health checks turned off")
                    changes.append(Transition(endpoint_id, "down", "up", f"is UP again ({why})"))
            if ejected != was_ejected:
                if ejected:
                    why = (f"{_plural(state.ejected_after, 'consecutive failure')}, "
                           f"ejection {state.ejections}")
                    changes.append(Transition(endpoint_id, "not ejected", "ejected",
                                              f"ejected for {state.ejected_for:g}s ({why})"))
                else:
                    why = (f"after {state.ejected_for:g}s" if self._outliers is not None
                           else "outlier detection turned off")
                    changes.append(Transition(endpoint_id, "ejected", "not ejected",
                                              f"returned from ejection ({why})"))
            if drained != was_drained:
                changes.append(Transition(endpoint_id, "not drained", "drained", "drained by an operator")
                               if drained else
                               Transition(endpoint_id, "drained", "not drained", "undrained by an operator"))
            if override != was_override:
                configured = state.config.weight
                old = f"weight {configured if was_override is None else was_override}"
                new = f"weight {configured if override is None else override}"
                reason = (f"weight override removed (configured weight {configured})" if override is None
                          else f"weight set to {override} by an operator (configured {configured})")
                changes.append(Transition(endpoint_id, old, new, reason))
        return changes

    def describe(self, now: float) -> list[dict[str, object]]:
        """One row per configured endpoint for the admin API and `explain`."""
        rows: list[dict[str, object]] = []
        for endpoint_id, state in self._states.items():
            ramp = self.policy.slow_start
            row: dict[str, object] = {
                "id": endpoint_id,
                "name": state.config.name or endpoint_id,
                "state": self._state_name(state, now),
                "configured_weight": state.config.weight,
                "override_weight": state.override_weight,
                "drained": state.drained,
                "effective_weight": self._weight(state, now) if self._serving(state, now) else 0.0,
                "terminating": state.config.terminating,
                "ejections": state.ejections,
                "consecutive_failures": state.consecutive_failures,
            }
            if state.ejected(now):
                assert state.ejected_until is not None
                row["ejected_for_s"] = round(state.ejected_until - now, 3)
            if self._checked:
                row["check_passes"] = state.check_passes
                row["check_failures"] = state.check_failures
            if ramp is not None and state.ramp_from is not None:
                row["slow_start_progress"] = round(min(1.0, (now - state.ramp_from) / ramp.window), 3)
            if self._dynamic == DynamicWeightMode.LATENCY:
                row["latency_ewma_ms"] = None if state.latency is None else round(state.latency * 1000, 3)
                row["error_rate"] = round(state.errors, 3)
            elif self._dynamic == DynamicWeightMode.HEADER:
                row["reported_weight"] = state.hint
            rows.append(row)
        return rows


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _forget_measurements(state: _State) -> None:
    state.latency = None
    state.errors = 0.0
    state.samples = 0
    state.hint = None
    state.dynamic_weight = None


def _quantize(weight: float) -> float:
    """Two significant digits: small wobbles in a measured weight must not rebuild the strategy."""
    if weight <= 0:
        return 0.0
    digits = 1 - math.floor(math.log10(weight))
    return round(weight, max(digits, 0)) or weight
