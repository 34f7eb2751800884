"""EndpointTracker: health thresholds, outlier ejection, drain, terminating, slow start, dynamic weights.

Pure state with a scripted clock: every time below is a number we pass in.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.config.desired import BackendEndpoint
from steelyard.endpoints import RECOMPUTE_INTERVAL, EndpointTracker, Transition
from steelyard.model import BalancerPolicySpec


def policy(**spec: object) -> BalancerPolicySpec:
    return BalancerPolicySpec.model_validate(spec)


def eps(*weights: int, terminating: tuple[int, ...] = ()) -> list[BackendEndpoint]:
    return [BackendEndpoint("127.0.0.1", 9000 + i, w, name=f"e{i}", terminating=i in terminating)
            for i, w in enumerate(weights)]


def usable(tracker: EndpointTracker, now: float) -> dict[str, float]:
    return {e.id: e.weight for e in tracker.usable(now)}


A, B, C = "127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"


def test_configured_weights_and_drain_by_weight_zero() -> None:
    t = EndpointTracker(policy(), 0.0)
    t.set_endpoints(eps(5, 0, 1), 0.0)
    assert usable(t, 0.0) == {A: 5.0, C: 1.0}
    assert t.endpoint(B) is not None  # still known: its in-flight requests finish


def test_health_thresholds_mark_down_and_up() -> None:
    check = {"type": "HTTP", "unhealthyThreshold": 2, "healthyThreshold": 3}
    t = EndpointTracker(policy(healthCheck=check), 0)
    t.set_endpoints(eps(1, 1), 0)
    assert not t.on_health_check(A, 1, False)  # one failure is not enough
    assert t.on_health_check(A, 2, False)
    assert usable(t, 2) == {B: 1.0}
    assert not t.on_health_check(A, 3, True) and not t.on_health_check(A, 4, True)
    assert t.on_health_check(A, 5, True)
    assert usable(t, 5) == {A: 1.0, B: 1.0}


def test_a_success_between_failures_resets_the_count() -> None:
    t = EndpointTracker(policy(healthCheck={"type": "TCP", "unhealthyThreshold": 2}), 0)
    t.set_endpoints(eps(1), 0)
    t.on_health_check(A, 1, False)
    t.on_health_check(A, 2, True)
    assert not t.on_health_check(A, 3, False)
    assert A in usable(t, 3)


def test_health_results_are_ignored_without_health_checks() -> None:
    t = EndpointTracker(policy(), 0)
    t.set_endpoints(eps(1), 0)
    for i in range(10):
        assert not t.on_health_check(A, i, False)
    assert A in usable(t, 10)


def test_all_down_explains_why() -> None:
    t = EndpointTracker(policy(healthCheck={"type": "HTTP", "unhealthyThreshold": 1}), 0)
    t.set_endpoints(eps(1, 1, 0), 0)
    t.on_health_check(A, 1, False)
    t.on_health_check(B, 1, False)
    assert usable(t, 1) == {}
    reason = t.unavailable_reason(1)
    assert "3 configured" in reason and "2 failing health checks" in reason and "1 draining" in reason


def test_outlier_ejection_grows_with_each_ejection_and_expires() -> None:
    t = EndpointTracker(policy(outlierDetection={"consecutiveFailures": 3, "baseEjectionTime": "10s",
                                                 "maxEjectionPercent": 50}), 0)
    t.set_endpoints(eps(1, 1), 0)
    assert not t.on_outcome(A, 1, ok=False, latency=0.001)
    assert not t.on_outcome(A, 1, ok=False, latency=0.001)
    assert t.on_outcome(A, 1, ok=False, latency=0.001)
    assert usable(t, 1) == {B: 1.0}
    assert t.next_change_at(1) == 11
    assert usable(t, 11) == {A: 1.0, B: 1.0}
    for _ in range(3):
        t.on_outcome(A, 12, ok=False, latency=0.001)
    assert usable(t, 12 + 19.9) == {B: 1.0}  # second ejection: 2 x base
    assert A in usable(t, 32)
    assert t.describe(32)[0]["ejections"] == 2


def test_successes_reset_consecutive_failures() -> None:
    t = EndpointTracker(policy(outlierDetection={"consecutiveFailures": 2}), 0)
    t.set_endpoints(eps(1, 1), 0)
    for _ in range(10):
        t.on_outcome(A, 1, ok=False, latency=0.001)
        t.on_outcome(A, 1, ok=True, latency=0.001)
        if A not in usable(t, 1):
            break
    assert A in usable(t, 1)


def test_max_ejection_percent_caps_ejections() -> None:
    t = EndpointTracker(policy(outlierDetection={"consecutiveFailures": 1, "maxEjectionPercent": 50}), 0)
    t.set_endpoints(eps(1, 1, 1, 1), 0)
    for endpoint in (A, B, C):
        t.on_outcome(endpoint, 1, ok=False, latency=0.001)
    assert len(usable(t, 1)) == 2  # 50% of 4


def test_terminating_endpoints_serve_only_when_nothing_else_does() -> None:
    t = EndpointTracker(policy(healthCheck={"type": "TCP", "unhealthyThreshold": 1}), 0)
    t.set_endpoints(eps(1, 1, terminating=(1,)), 0)
    assert usable(t, 0) == {A: 1.0}
    t.on_health_check(A, 1, False)
    assert usable(t, 1) == {B: 1.0}


def test_state_survives_set_endpoints_for_endpoints_that_stay() -> None:
    t = EndpointTracker(policy(healthCheck={"type": "TCP", "unhealthyThreshold": 1}), 0)
    t.set_endpoints(eps(1, 1), 0)
    t.on_health_check(A, 1, False)
    t.set_endpoints(eps(3, 1, 1), 2)  # A's weight changes, C is added
    assert usable(t, 2) == {B: 1.0, C: 1.0}


def test_slow_start_ramps_added_and_recovered_endpoints_with_envoys_formula() -> None:
    check = {"type": "TCP", "unhealthyThreshold": 1, "healthyThreshold": 1}
    t = EndpointTracker(policy(slowStart={"window": "10s", "aggression": 2.0, "minWeightPercent": 10},
                               healthCheck=check), 0)
    t.set_endpoints(eps(100), 0)
    assert usable(t, 0) == {A: 100.0}  # present at start: no ramp
    t.set_endpoints(eps(100, 100), 5)
    assert usable(t, 5)[B] == 10.0  # min 10%
    assert usable(t, 7.5)[B] == pytest.approx(100 * (2.5 / 10) ** 0.5, rel=0.02)
    assert t.next_change_at(7.5) == pytest.approx(8.0)
    assert usable(t, 15)[B] == 100.0
    assert t.next_change_at(15) is None
    t.on_health_check(A, 20, False)
    t.on_health_check(A, 21, True)
    assert usable(t, 21)[A] == 10.0


def test_overrides_weight_and_drain() -> None:
    t = EndpointTracker(policy(), 0)
    t.set_endpoints(eps(1, 1), 0)
    assert t.set_override(A, weight=7)
    assert usable(t, 0) == {A: 7.0, B: 1.0}
    t.set_override(B, weight=None, drained=True)
    assert usable(t, 0) == {A: 7.0}
    assert t.describe(0)[1]["state"] == "draining"
    t.set_override(B, weight=None, drained=False)
    t.set_override(A, weight=None, drained=False)
    assert usable(t, 0) == {A: 1.0, B: 1.0}
    assert not t.set_override("127.0.0.1:1", weight=3)


def test_latency_mode_lowers_slow_and_failing_endpoints() -> None:
    t = EndpointTracker(policy(dynamicWeights={"mode": "Latency", "min": 1, "max": 1000}), 0)
    t.set_endpoints(eps(100, 100, 100), 0)
    now = 1.0
    for _ in range(200):
        t.on_outcome(A, now, ok=True, latency=0.010)
        t.on_outcome(B, now, ok=True, latency=0.040)  # four times slower than its peers
        t.on_outcome(C, now, ok=False, latency=0.001)  # fast failures
        now += 0.01
    t.on_outcome(A, now + RECOMPUTE_INTERVAL, ok=True, latency=0.010)
    weights = usable(t, now + RECOMPUTE_INTERVAL)
    assert weights[A] == 100.0
    assert weights[B] == pytest.approx(25, rel=0.2)
    assert weights[C] < 10  # a fast failure does not look like a fast backend


def test_header_mode_takes_the_reported_weight_within_bounds() -> None:
    t = EndpointTracker(policy(dynamicWeights={"mode": "Header", "min": 2, "max": 50}), 0)
    t.set_endpoints(eps(10, 10), 0)
    assert t.on_outcome(A, 0, ok=True, latency=0.01, weight_hint=40)
    assert usable(t, 0) == {A: 40.0, B: 10.0}
    t.on_outcome(B, 0.1, ok=True, latency=0.01, weight_hint=500)
    assert usable(t, 0.1) == {A: 40.0, B: 10.0}  # applied at the next recomputation, not per response
    t.on_outcome(A, 1, ok=True, latency=0.01, weight_hint=0)
    assert usable(t, 1) == {A: 2.0, B: 50.0}


def test_a_reported_weight_expires_so_an_endpoint_that_reported_zero_comes_back() -> None:
    """With min 0, a backend reporting 0 drains itself: it gets no request, so it cannot report again.
    After reportExpiry without a newer report it is back at its configured weight; a newer report within
    the expiry keeps the reported weight."""
    t = EndpointTracker(policy(dynamicWeights={"mode": "Header", "min": 0, "reportExpiry": "10s"}), 0)
    t.set_endpoints(eps(10, 10), 0)
    t.on_outcome(A, 0, ok=True, latency=0.01, weight_hint=0)
    t.on_outcome(B, 1, ok=True, latency=0.01, weight_hint=30)
    assert usable(t, 1) == {B: 30.0}
    t.on_outcome(B, 6, ok=True, latency=0.01, weight_hint=30)  # B reports again; A cannot
    assert usable(t, 9.9) == {B: 30.0}
    due = t.next_change_at(9.9)
    assert due is not None and due <= 10.0 + RECOMPUTE_INTERVAL  # looked at again with no request needed
    assert usable(t, due) == {A: 10.0, B: 30.0}
    assert usable(t, 16.0 + RECOMPUTE_INTERVAL) == {A: 10.0, B: 10.0}  # B's last report expired too
    assert t.next_change_at(16.0 + RECOMPUTE_INTERVAL) is None  # nothing left to expire: no more wake-ups


def test_outcomes_cost_nothing_when_the_policy_does_not_listen() -> None:
    t = EndpointTracker(policy(), 0)
    t.set_endpoints(eps(1), 0)
    for _ in range(100):
        assert not t.on_outcome(A, 0, ok=False, latency=0.1)
    assert t.next_change_at(0) is None


events = st.lists(st.tuples(
    st.sampled_from(["set", "check", "outcome", "override", "time"]),
    st.integers(0, 4), st.booleans(), st.floats(0, 5)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(events)
def test_any_sequence_keeps_usable_a_subset_of_configured(seq: list[tuple[str, int, bool, float]]) -> None:
    t = EndpointTracker(policy(healthCheck={"type": "TCP", "unhealthyThreshold": 1, "healthyThreshold": 1},
                               outlierDetection={"consecutiveFailures": 1, "baseEjectionTime": "1s"},
                               slowStart={"window": "2s"},
                               dynamicWeights={"mode": "Latency"}), 0)
    configured = eps(1, 2, 0, 3, 1, terminating=(4,))
    t.set_endpoints(configured[:3], 0)
    now = 0.0
    current = configured[:3]
    for kind, index, flag, value in seq:
        target = configured[index].id
        if kind == "set":
            current = configured[: index + 1]
            t.set_endpoints(current, now)
        elif kind == "check":
            t.on_health_check(target, now, flag)
        elif kind == "outcome":
            t.on_outcome(target, now, ok=flag, latency=value / 10)
        elif kind == "override":
            t.set_override(target, weight=index or None, drained=flag)
        else:
            now += value
        got = t.usable(now)
        ids = {e.id for e in current}
        assert all(e.id in ids and e.weight > 0 for e in got)
        if not got:
            assert t.unavailable_reason(now).startswith("no ")
        due = t.next_change_at(now)
        assert due is None or due >= now - 1e-9 or any(r["state"] == "ejected" for r in t.describe(now))


def test_an_operators_weight_beats_a_reported_one() -> None:
    t = EndpointTracker(policy(dynamicWeights={"mode": "Header"}), 0)
    t.set_endpoints(eps(10, 10), 0)
    t.on_outcome(A, 0, ok=True, latency=0.01, weight_hint=40)
    assert usable(t, 0)[A] == 40.0
    t.set_override(A, weight=3)
    t.on_outcome(A, 1, ok=True, latency=0.01, weight_hint=40)
    assert usable(t, 1)[A] == 3.0
    t.set_override(A, weight=None)
    t.on_outcome(A, 2, ok=True, latency=0.01, weight_hint=40)
    assert usable(t, 2)[A] == 40.0


def test_switching_dynamic_mode_forgets_what_the_old_one_measured() -> None:
    t = EndpointTracker(policy(dynamicWeights={"mode": "Latency"}), 0)
    t.set_endpoints(eps(100, 100), 0)
    for i in range(50):
        t.on_outcome(A, i / 100, ok=True, latency=0.010)
        t.on_outcome(B, i / 100, ok=True, latency=0.100)
    assert usable(t, 1)[B] < 20
    t.set_policy(policy(dynamicWeights={"mode": "Header"}), 1)
    assert usable(t, 1) == {A: 100.0, B: 100.0}


def test_an_endpoint_back_from_ejection_starts_with_a_clean_slate() -> None:
    t = EndpointTracker(policy(dynamicWeights={"mode": "Latency"},
                               outlierDetection={"consecutiveFailures": 3, "baseEjectionTime": "10s"}), 0)
    t.set_endpoints(eps(100, 100), 0)
    for i in range(3):
        t.on_outcome(A, 0.1 * i, ok=True, latency=0.010)
        t.on_outcome(B, 0.1 * i, ok=False, latency=0.001)
    assert usable(t, 1) == {A: 100.0}  # B ejected
    assert usable(t, 11) == {A: 100.0, B: 100.0}  # back, its failures forgotten: full weight
    row = next(r for r in t.describe(11) if r["id"] == B)
    assert row["error_rate"] == 0.0 and row["consecutive_failures"] == 0


# -- transitions (what the runtime logs) ------------------------------------------------------------------


def test_transitions_name_down_and_up_with_their_reasons() -> None:
    check = {"type": "TCP", "unhealthyThreshold": 3, "healthyThreshold": 2}
    t = EndpointTracker(policy(healthCheck=check), 0)
    t.set_endpoints(eps(1, 1), 0)
    before, generation = t.looks(), t.generation
    for i in range(2):
        t.on_health_check(A, i, False, "Connection refused")
    assert t.generation == generation  # no flip yet: nothing to compare
    assert t.on_health_check(A, 2, False, "Connection refused")
    assert t.generation != generation
    down = t.looks()
    assert t.transitions(before, down) == [
        Transition(A, "up", "down", "is DOWN (3 failed health checks: Connection refused)")]
    for i in range(5):  # further failures change nothing
        assert not t.on_health_check(A, 3 + i, False, "Connection refused")
    assert t.transitions(down, t.looks()) == []
    t.on_health_check(A, 9, True)
    t.on_health_check(A, 10, True)
    assert t.transitions(down, t.looks()) == [
        Transition(A, "down", "up", "is UP again (2 passed health checks)")]


def test_transitions_name_ejections_and_returns() -> None:
    t = EndpointTracker(policy(outlierDetection={"consecutiveFailures": 5, "baseEjectionTime": "30s"}), 0)
    t.set_endpoints(eps(1, 1), 0)
    before, generation = t.looks(), t.generation
    for _ in range(4):
        t.on_outcome(A, 1, ok=False, latency=0.01)
    assert t.generation == generation  # outcomes that eject nobody leave the generation alone
    assert t.on_outcome(A, 1, ok=False, latency=0.01)
    assert t.generation != generation
    usable(t, 1)
    ejected = t.looks()
    assert t.transitions(before, ejected) == [
        Transition(A, "not ejected", "ejected", "ejected for 30s (5 consecutive failures, ejection 1)")]
    usable(t, 31)  # the ejection ends in usable()
    back = t.looks()
    assert t.transitions(ejected, back) == [
        Transition(A, "ejected", "not ejected", "returned from ejection (after 30s)")]
    for _ in range(5):
        t.on_outcome(A, 32, ok=False, latency=0.01)
    assert t.transitions(back, t.looks())[0].reason == "ejected for 60s (5 consecutive failures, ejection 2)"


def test_transitions_name_operator_overrides_and_ignore_configuration_changes() -> None:
    t = EndpointTracker(policy(), 0)
    t.set_endpoints(eps(1, 1), 0)
    before = t.looks()
    t.set_override(A, drained=True)
    t.set_override(B, weight=5)
    after = t.looks()
    assert t.transitions(before, after) == [
        Transition(A, "not drained", "drained", "drained by an operator"),
        Transition(B, "weight 1", "weight 5", "weight set to 5 by an operator (configured 1)")]
    t.set_override(A, weight=None, drained=False)
    t.set_override(B, weight=None)
    assert [c.reason for c in t.transitions(after, t.looks())] == [
        "undrained by an operator", "weight override removed (configured weight 1)"]
    t.set_endpoints(eps(1, 1, 1), 1)  # an endpoint added by configuration is not a transition
    assert t.transitions(before, t.looks()) == []


def test_turning_checks_off_brings_endpoints_up_with_that_reason() -> None:
    t = EndpointTracker(policy(healthCheck={"type": "TCP", "unhealthyThreshold": 1}), 0)
    t.set_endpoints(eps(1), 0)
    t.on_health_check(A, 1, False, "HTTP 503")
    down = t.looks()
    t.set_policy(policy(), 2)
    assert t.transitions(down, t.looks()) == [
        Transition(A, "down", "up", "is UP again (health checks turned off)")]
