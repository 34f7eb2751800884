"""UpstreamRuntime, Attempt, the routing snapshot and the registry: pure logic with a scripted clock."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import pytest

from steelyard.config.desired import BackendEndpoint, DesiredState, Listener, Route, Upstream
from steelyard.model import BalancerPolicySpec, Protocol
from steelyard.proxy.routing import Snapshot, UpstreamRegistry, normalize_host, prefix_matches
from steelyard.runtime.upstream import UpstreamRuntime
from steelyard.strategies import NO_CONTEXT, BalancingStrategy, Endpoint, PickContext


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def upstream(*ports: int, key: str = "ns/lb/http", policy: dict[str, object] | None = None,
             weights: Sequence[int] = ()) -> Upstream:
    endpoints = tuple(BackendEndpoint("127.0.0.1", p, weight=(weights[i] if weights else 1))
                      for i, p in enumerate(ports))
    return Upstream(key=key, load_balancer=key.rsplit("/", 1)[0], port_name="http", protocol=Protocol.HTTP,
                    policy=BalancerPolicySpec.model_validate(policy or {}), policy_name=None,
                    endpoints=endpoints)


def test_pick_reports_exactly_once_with_latency_from_the_clock() -> None:
    clock = Clock()
    runtime = UpstreamRuntime(upstream(1, 2), clock=clock)
    seen: list[tuple[str, float, bool]] = []

    class Spy(BalancingStrategy):
        name = "Spy"

        def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
            self.endpoints = list(endpoints)

        def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
            return self.endpoints[0]

        def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:
            seen.append((endpoint.id, latency, ok))

    spy = Spy(runtime.upstream.policy.strategy)
    runtime.strategy = spy
    runtime._usable = ()
    runtime.refresh()
    attempt = runtime.pick()
    assert attempt is not None and attempt.endpoint.port == 1 and attempt.endpoint_id == "127.0.0.1:1"
    assert runtime.stats["127.0.0.1:1"].in_flight == 1
    clock.now += 0.25
    attempt.done(ok=True, status=204)
    attempt.done(ok=False, status=500)  # ignored: exactly one report per pick
    assert seen == [("127.0.0.1:1", 0.25, True)]
    stats = runtime.stats["127.0.0.1:1"]
    assert (stats.requests, stats.in_flight, stats.failures, stats.by_class[2]) == (1, 0, 0, 1)


def test_round_robin_order_and_exclusion_for_retries() -> None:
    runtime = UpstreamRuntime(upstream(1, 2, 3), clock=Clock(), rng=random.Random(7))
    order = []
    for _ in range(6):
        attempt = runtime.pick()
        assert attempt is not None
        order.append(attempt.endpoint.port)
        attempt.done(ok=True, status=200)
    assert order == [1, 2, 3, 1, 2, 3]
    for _ in range(20):
        retry = runtime.pick(exclude=["127.0.0.1:1", "127.0.0.1:2"])
        assert retry is not None and retry.endpoint.port == 3
        retry.done(ok=True)
    assert runtime.pick(exclude=["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]) is None


def test_weight_zero_endpoints_are_not_picked_and_none_usable_gives_none() -> None:
    runtime = UpstreamRuntime(upstream(1, 2, weights=[0, 1]), clock=Clock())
    assert {runtime.pick().endpoint.port for _ in range(4)} == {2}  # type: ignore[union-attr]
    runtime.update(upstream(1, 2, weights=[0, 0]))
    assert runtime.pick() is None
    assert runtime.no_endpoint == 1
    assert runtime.unavailable_reason()


def test_update_keeps_strategy_state_and_derives_policy_values() -> None:
    runtime = UpstreamRuntime(upstream(1, 2), clock=Clock())
    strategy = runtime.strategy
    runtime.pick()
    runtime.update(upstream(1, 2, 3))
    assert runtime.strategy is strategy  # same policy: same strategy object, cursor kept
    assert runtime.pick().endpoint.port == 2  # type: ignore[union-attr]
    runtime.update(upstream(1, 2, 3, policy={"retries": {"attempts": 5, "on": ["503", "reset"]},
                                              "timeouts": {"connect": "250ms"}}))
    assert runtime.retry_attempts == 5 and runtime.retry_statuses == {503}
    assert runtime.retry_on_reset and not runtime.retry_on_connect
    assert runtime.connect_timeout == 0.25
    runtime.update(upstream(1, 2, 3, policy={"dynamicWeights": {"mode": "Header", "header": "X-W"},
                                              "strategy": {"type": "RoundRobin",
                                                           "hashOn": {"header": "X-User"}}}))
    assert runtime.weight_header == b"x-w" and runtime.hash_header == b"x-user" and runtime.needs_context


def test_a_request_picked_before_a_strategy_switch_reports_to_the_strategy_that_counted_it() -> None:
    """A reload switches LeastConnections to PowerOfTwoChoices while a request is in flight on :1. Its end
    must not reach the new strategy, whose count for :1 is its own request's; the old one counted it."""
    lc = {"strategy": {"type": "LeastConnections"}}
    runtime = UpstreamRuntime(upstream(1, 2, policy=lc), clock=Clock())
    old_request = runtime.pick()
    assert old_request is not None and old_request.endpoint.port == 1
    runtime.update(upstream(1, 2, policy={"strategy": {"type": "PowerOfTwoChoices"}}))
    new_requests = [runtime.pick() for _ in range(2)]  # P2C with nothing in flight: one on each
    assert {a.endpoint.port for a in new_requests if a} == {1, 2}
    old_request.done(ok=True, status=200)
    assert runtime.strategy.describe()["in_flight"] == {"127.0.0.1:1": 1, "127.0.0.1:2": 1}


def test_a_retry_counts_in_least_connections_until_it_ends() -> None:
    runtime = UpstreamRuntime(upstream(1, 2, 3, policy={"strategy": {"type": "LeastConnections"}}),
                              clock=Clock(), rng=random.Random(3))
    retry = runtime.pick(exclude=["127.0.0.1:1", "127.0.0.1:2"])
    assert retry is not None and retry.endpoint.port == 3
    assert runtime.strategy.describe()["in_flight"]["127.0.0.1:3"] == 1  # type: ignore[index]
    firsts = [runtime.pick() for _ in range(2)]
    assert [a.endpoint.port for a in firsts if a] == [1, 2]  # :3 is busy with the retry
    retry.cancel()  # prepared, then not needed: released, not counted as a request
    assert runtime.strategy.describe()["in_flight"]["127.0.0.1:3"] == 0  # type: ignore[index]
    assert runtime.stats["127.0.0.1:3"].requests == 0


@pytest.mark.parametrize("kind", ["LeastConnections", "PowerOfTwoChoices", "PeakEWMA"])
def test_a_retry_goes_to_the_least_loaded_endpoint_not_yet_tried(kind: str) -> None:
    """:1 failed; :2 is busy with three requests, :3 with none. The retry goes to :3 by the strategy's own
    rule (no random draw between :2 and :3), and is counted."""
    for seed in range(10):
        runtime = UpstreamRuntime(upstream(1, 2, 3, policy={"strategy": {"type": kind}}), clock=Clock(),
                                  rng=random.Random(seed))
        busy = Endpoint("127.0.0.1:2", 1.0)
        for _ in range(3):
            assert runtime.strategy.note_pick(busy)
        retry = runtime.pick(exclude=["127.0.0.1:1"])
        assert retry is not None and retry.endpoint.port == 3, (kind, seed)
        state: Any = runtime.strategy.describe()
        counted = (state["endpoints"]["127.0.0.1:3"]["in_flight"] if kind == "PeakEWMA"
                   else state["in_flight"]["127.0.0.1:3"])
        assert counted == 1


@pytest.mark.parametrize(("prefix", "path", "expected"), [
    ("/", "/", True), ("/", "/anything", True), ("/api", "/api", True), ("/api", "/api/v1", True),
    ("/api", "/apis", False), ("/api", "/ap", False), ("/api/", "/api/x", True), ("/api/", "/api", False),
])
def test_prefix_matches_by_segment(prefix: str, path: str, expected: bool) -> None:
    assert prefix_matches(prefix, path) is expected


@pytest.mark.parametrize(("host", "expected"), [
    ("Example.COM", "example.com"), ("example.com:8080", "example.com"), ("[::1]:80", "[::1]"),
    ("[::1]", "[::1]"), (" a.b ", "a.b"),
])
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


def _state(routes: Sequence[tuple[tuple[str, ...], str, Upstream]],
           tcp: Upstream | None = None) -> DesiredState:
    upstreams = {u.key: u for _, _, u in routes}
    listeners = [Listener("127.0.0.1", 80, Protocol.HTTP,
                          tuple(Route(hosts=h, path_prefix=p, upstream=u.key) for h, p, u in routes))]
    if tcp is not None:
        upstreams[tcp.key] = tcp
        listeners.append(Listener("127.0.0.1", 5432, Protocol.TCP, (Route((), "/", tcp.key),)))
    return DesiredState(upstreams=MappingProxyType(upstreams), listeners=tuple(listeners))


def test_snapshot_routes_by_host_then_longest_prefix() -> None:
    web, api, v2, anyhost = (upstream(i, key=f"ns/{n}/http") for i, n in
                             enumerate(["web", "api", "v2", "any"], 1))
    state = _state([(("shop.example",), "/", web), (("shop.example",), "/api", api),
                    (("shop.example", "alias.example"), "/api/v2", v2), ((), "/", anyhost)],
                   tcp=upstream(9, key="ns/db/pg"))
    snapshot = UpstreamRegistry(clock=Clock()).apply(state)
    key = ("127.0.0.1", 80)

    def route(host: str, path: str) -> str | None:
        runtime = snapshot.route_http(key, host, path)
        return runtime.key.split("/")[1] if runtime else None

    assert route("shop.example", "/") == "web"
    assert route("SHOP.example:443", "/api/x") == "api"
    assert route("shop.example", "/api/v2/users") == "v2"
    assert route("alias.example", "/api/v2") == "v2"
    assert route("alias.example", "/api") == "any"  # alias has only the /api/v2 route; falls to any-host
    assert route("other.example", "/x") == "any"
    assert snapshot.route_http(("127.0.0.1", 81), "shop.example", "/") is None
    assert snapshot.only_route(key) is None
    assert snapshot.tcp_upstream(("127.0.0.1", 5432)).key == "ns/db/pg"  # type: ignore[union-attr]
    assert snapshot.endpoint_ids == {f"127.0.0.1:{i}" for i in (1, 2, 3, 4, 9)}


def test_snapshot_without_catch_all_answers_none() -> None:
    snapshot = Snapshot(_state([(("a.example",), "/app", upstream(1))]), {})
    assert snapshot.route_http(("127.0.0.1", 80), "a.example", "/app") is None  # no runtime given


def test_registry_keeps_runtimes_by_key_and_retires_removed_ones() -> None:
    registry = UpstreamRegistry(clock=Clock())
    a, b = upstream(1, key="ns/a/http"), upstream(2, key="ns/b/http")
    first = registry.apply(_state([((), "/a", a), ((), "/b", b)]))
    runtime_a = registry.get("ns/a/http")
    second = registry.apply(_state([((), "/a", upstream(1, 3, key="ns/a/http"))]))
    assert registry.get("ns/a/http") is runtime_a
    assert runtime_a is not None and [e.port for e in runtime_a.upstream.endpoints] == [1, 3]
    assert [rt.key for rt in registry.retired] == ["ns/b/http"]
    assert registry.get("ns/b/http") is None
    assert first.route_http(("127.0.0.1", 80), "x", "/b") is not None  # old snapshots stay as they were
    assert second.route_http(("127.0.0.1", 80), "x", "/b") is None


def test_cancelled_attempt_reports_nothing_and_frees_its_slot() -> None:
    runtime = UpstreamRuntime(upstream(1, 2), clock=Clock())
    outcomes: list[str] = []
    runtime.tracker.on_outcome = lambda eid, now, **kw: outcomes.append(eid) or False  # type: ignore[method-assign]
    retry = runtime.pick(exclude=["127.0.0.1:1"])
    assert retry is not None and runtime.stats["127.0.0.1:2"].in_flight == 1
    retry.cancel()
    retry.done(ok=False)  # ignored after cancel
    stats = runtime.stats["127.0.0.1:2"]
    assert (stats.in_flight, stats.requests, stats.failures, runtime.requests) == (0, 0, 0, 0)
    assert outcomes == []


# -- transitions in the log (logger steelyard.upstream) ---------------------------------------------------

OUTLIERS = {"outlierDetection": {"consecutiveFailures": 5, "baseEjectionTime": "30s",
                                 "maxEjectionPercent": 100}}


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "steelyard.upstream" and text in r.getMessage()]


def serve(runtime: UpstreamRuntime, requests: int, failing: set[int]) -> None:
    """`requests` picks through the runtime; endpoints whose port is in `failing` fail every request."""
    for _ in range(requests):
        attempt = runtime.pick()
        if attempt is not None:
            attempt.done(ok=attempt.endpoint.port not in failing, status=200)


def test_ejection_and_return_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    runtime = UpstreamRuntime(upstream(1, 2, 3, key="default/web/http", policy=OUTLIERS), clock=clock)
    serve(runtime, 60, failing={2})
    ejected = lines(caplog, "ejected for")
    assert [r.getMessage() for r in ejected] == [
        "default/web/http: endpoint 127.0.0.1:2 ejected for 30s (5 consecutive failures, ejection 1); "
        "2 of 3 endpoints usable"]
    assert ejected[0].levelno == logging.WARNING
    clock.now += 30
    serve(runtime, 60, failing=set())
    returned = lines(caplog, "returned from ejection")
    assert [r.getMessage() for r in returned] == [
        "default/web/http: endpoint 127.0.0.1:2 returned from ejection (after 30s); 3 of 3 endpoints usable"]
    assert returned[0].levelno == logging.INFO
    clock.now += 1
    serve(runtime, 60, failing={2})
    assert len(lines(caplog, "ejected for")) == 2
    second = lines(caplog, "ejected for")[1].getMessage()
    assert "ejected for 60s (5 consecutive failures, ejection 2)" in second
    assert not lines(caplog, "no usable endpoint")


def test_no_usable_endpoint_is_logged_once_and_so_is_the_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    runtime = UpstreamRuntime(upstream(1, 2, 3, key="default/web/http", policy=OUTLIERS), clock=clock)
    serve(runtime, 200, failing={1, 2, 3})  # every endpoint ejected, then 503s: no line per request
    assert runtime.no_endpoint > 100
    assert len(lines(caplog, "ejected for")) == 3
    down = lines(caplog, "no usable endpoint")
    assert [r.getMessage() for r in down] == [
        "default/web/http: no usable endpoint: 3 configured, 3 ejected by outlier detection"]
    assert down[0].levelno == logging.ERROR
    assert "0 of 3 endpoints usable" in lines(caplog, "ejected for")[-1].getMessage()
    clock.now += 30
    serve(runtime, 50, failing=set())
    assert len(lines(caplog, "returned from ejection")) == 3
    assert [r.getMessage() for r in lines(caplog, "usable endpoints again")] == [
        "default/web/http: usable endpoints again (3 of 3)"]
    assert len(lines(caplog, "no usable endpoint")) == 1


def test_health_check_transitions_are_logged_once_with_the_probe_detail(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    runtime = UpstreamRuntime(upstream(1, 2, policy={"healthCheck": {"type": "TCP"}}), clock=Clock())
    for _ in range(10):
        runtime.on_health_check("127.0.0.1:2", False, "Connection refused")
    assert [r.getMessage() for r in lines(caplog, "endpoint")] == [
        "ns/lb/http: endpoint 127.0.0.1:2 is DOWN (3 failed health checks: Connection refused); "
        "1 of 2 endpoints usable"]
    for _ in range(10):
        runtime.on_health_check("127.0.0.1:2", True)
    assert [r.getMessage() for r in lines(caplog, "UP again")] == [
        "ns/lb/http: endpoint 127.0.0.1:2 is UP again (2 passed health checks); 2 of 2 endpoints usable"]


def test_operator_overrides_are_logged_and_configuration_changes_are_not(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    runtime = UpstreamRuntime(upstream(1, 2), clock=Clock())
    runtime.tracker.set_override("127.0.0.1:1", weight=None, drained=True)  # what the admin API does
    runtime.refresh()
    runtime.refresh()
    assert [r.getMessage() for r in lines(caplog, "endpoint")] == [
        "ns/lb/http: endpoint 127.0.0.1:1 drained by an operator; 1 of 2 endpoints usable"]
    runtime.update(upstream(1, 2, 3))
    runtime.update(upstream(2, 3))
    assert len(lines(caplog, "endpoint")) == 1


def test_outcomes_that_change_no_state_do_no_transition_work() -> None:
    runtime = UpstreamRuntime(upstream(1, 2, policy=OUTLIERS), clock=Clock())
    looked: list[int] = []
    looks = runtime.tracker.looks
    runtime.tracker.looks = lambda: looked.append(1) or looks()  # type: ignore[method-assign]
    serve(runtime, 100, failing=set())
    runtime.refresh()
    assert looked == []


def test_an_admin_read_after_an_ejection_expired_hands_the_return_to_the_strategy(
        caplog: pytest.LogCaptureFixture) -> None:
    """The tracker ends an expired ejection when asked for the usable set: a reader outside the hot path
    (the admin API, every second) must not end it behind the strategy's back (usable_now refreshes)."""
    caplog.set_level(logging.INFO)
    clock = Clock()
    runtime = UpstreamRuntime(upstream(1, 2, 3, key="default/web/http", policy=OUTLIERS), clock=clock)
    serve(runtime, 60, failing={2})
    assert "127.0.0.1:2" not in {e.id for e in runtime.usable_now()}
    clock.now += 30
    assert "127.0.0.1:2" in {e.id for e in runtime.usable_now()}  # the admin's read
    picked = {e.id for e in (runtime.strategy.pick() for _ in range(6)) if e is not None}
    assert picked == {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}  # the strategy has it back, no pick needed
    assert len(lines(caplog, "returned from ejection")) == 1
