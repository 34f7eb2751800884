"""Audit of health checking, outlier detection, slow start and dynamic weights, on real sockets (127.0.0.1).

Some tests were written as strict xfails for bugs this audit found and pass since their fixes; the others
pin behaviour that was checked and found right.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest

from proxy_support import Harness, Scripted, eventually, make_state, start_backends
from steelyard.model import BalancerPolicySpec
from steelyard.runtime.health_checks import HealthChecker
from steelyard.runtime.upstream import UpstreamRuntime

KEY = "default/web/http"


@contextlib.asynccontextmanager
async def checking(h: Harness) -> AsyncIterator[HealthChecker]:
    """Active health checks wired as `steelyard run` wires them: results to the upstream's runtime."""
    def on_result(upstream_key: str, endpoint_id: str, healthy: bool) -> None:
        runtime = h.registry.runtimes.get(upstream_key)
        if runtime is not None:
            runtime.on_health_check(endpoint_id, healthy)

    checker = HealthChecker(on_result)
    for key, upstream in h.state.upstreams.items():
        checker.update(key, upstream.policy, upstream.endpoints)
    try:
        yield checker
    finally:
        await checker.close()


TCP_CHECK = {"type": "TCP", "interval": "50ms", "timeout": "200ms", "unhealthyThreshold": 2,
             "healthyThreshold": 2}


async def test_a_nan_reported_weight_does_not_stop_health_checks_from_working() -> None:
    a, b = await start_backends("a", "b")
    policy = {"dynamicWeights": {"mode": "Header"}, "healthCheck": TCP_CHECK, "retries": {"attempts": 0}}
    async with Harness(make_state([a, b], policy=policy)) as h, checking(h):
        runtime = h.runtime()
        client = await h.connect()
        r = await client.request("GET", "/weight?w=nan")
        assert r.status == 200
        await asyncio.sleep(0.6)  # past the dynamic-weight recomputation interval
        b.kill()
        assert await eventually(lambda: [e.id for e in runtime._usable] == [a.endpoint.id], timeout=2)
        statuses = []
        for _ in range(4):
            c = await h.connect()
            statuses.append((await c.request("GET", "/")).status)
            c.close()
        assert statuses == [200] * 4
        client.close()
    await a.close()


OUTLIERS_3 = {"outlierDetection": {"consecutiveFailures": 3, "baseEjectionTime": "30s",
                                   "maxEjectionPercent": 100}}


async def get(h: Harness, path: str = "/"):  # noqa: ANN201 - a proxy_support.Response
    client = await h.connect()
    try:
        return await client.request("GET", path)
    finally:
        client.close()


@pytest.mark.parametrize("client_gives_up", [
    False,
    True,  # (fixed: the abandoned request was reported done(ok=True), which reset the run of failures)
])
async def test_consecutive_failures_eject_even_when_a_client_gives_up_between_them(
        client_gives_up: bool) -> None:
    """Envoy's consecutive-5xx detector hears nothing of a request the client abandoned: three 503s with an
    abandoned request between them still eject the endpoint (and the next request is the proxy's 503).
    (A client that leaves while the proxy waits for the response is seen only when the response comes, as
    reading is paused then; here it leaves mid-upload, which the proxy sees at once.)"""
    (a,) = await start_backends("a")
    async with Harness(make_state([a], policy=OUTLIERS_3)) as h:
        runtime = h.runtime()
        assert (await get(h, "/status/503")).status == 503
        assert (await get(h, "/status/503")).status == 503
        if client_gives_up:
            client = await h.connect()  # a client that gives up halfway through its upload
            await client.send(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            assert await eventually(lambda: runtime.stats[a.endpoint.id].in_flight == 1)
            client.writer.transport.abort()
            assert await eventually(lambda: runtime.stats[a.endpoint.id].in_flight == 0)
        assert (await get(h, "/status/503")).status == 503  # the endpoint's third failure
        r = await get(h)
        assert r.status == 503, r.text
        assert r.text == ("steelyard: load balancer default/web: no usable endpoint: 1 configured, "
                          "1 ejected by outlier detection\n")
    await a.close()


async def test_a_weight_only_change_does_not_restart_the_probe_loop() -> None:
    """The checker's contract: loops restart only when the endpoint's check itself changed. A reload that
    only re-weights an endpoint (an operator, a Kubernetes annotation) must not probe it again at once."""
    probes: list[float] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        probes.append(asyncio.get_running_loop().time())
        await reader.read(100)

    backend = await Scripted(handler).start()
    policy = BalancerPolicySpec.model_validate({"healthCheck": {"type": "TCP", "interval": "5s"}})
    checker = HealthChecker(lambda *result: None)
    try:
        checker.update(KEY, policy, [backend.endpoint])
        assert await eventually(lambda: len(probes) == 1)
        for weight in (2, 3, 4):
            checker.update(KEY, policy, [dataclasses.replace(backend.endpoint, weight=weight)])
            await asyncio.sleep(0.15)
        assert len(probes) == 1, f"{len(probes)} probes within 0.5 s of a 5 s interval"
    finally:
        await checker.close()
        await backend.close()


async def slow_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request, 40 ms late."""
    while True:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.04)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()


async def test_latency_mode_lowers_a_slow_endpoint_of_the_default_weight() -> None:
    """`dynamicWeights: {mode: Latency}` and nothing else, endpoints of the default weight: an endpoint 200
    times slower than its peer must lose part of its share (the tracker means to keep at least MIN_FACTOR
    of the weight, 0.05), not keep all of it."""
    (fast,) = await start_backends("fast")
    slow = await Scripted(slow_backend).start()
    policy = {"dynamicWeights": {"mode": "Latency"}, "strategy": {"type": "WeightedRoundRobin"}}
    async with Harness(make_state([fast, slow.endpoint], policy=policy)) as h:
        runtime = h.runtime()
        client = await h.connect()
        for _ in range(20):
            assert (await client.request()).status == 200
        await asyncio.sleep(0.55)  # past the recomputation interval
        assert (await client.request()).status == 200
        weights = {row["id"]: row["effective_weight"] for row in runtime.tracker.describe(runtime.clock())}
        client.close()
    await fast.close()
    await slow.close()
    assert weights[slow.endpoint.id] < weights[fast.endpoint.id], weights


def rows(runtime: UpstreamRuntime) -> dict[str, dict[str, object]]:
    return {str(row["name"]): row for row in runtime.tracker.describe(runtime.clock())}


async def test_ejection_time_grows_with_each_ejection_and_ends_on_time() -> None:
    """baseEjectionTime x times ejected: 200 ms, then 400 ms when it fails again right after returning;
    the endpoint is back (and picked) once its ejection is over, not before."""
    a, b = await start_backends("a", "b")
    policy = {"outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "200ms",
                                   "maxEjectionPercent": 50}, "retries": {"attempts": 0}}
    async with Harness(make_state([a, b], policy=policy)) as h:
        runtime = h.runtime()
        a.mode = 503
        for _ in range(4):  # round robin: a fails twice
            await get(h)
        row = rows(runtime)["a"]
        assert (row["state"], row["ejections"]) == ("ejected", 1)
        assert 0.15 < float(row["ejected_for_s"]) <= 0.2  # type: ignore[arg-type]
        assert {(await get(h)).text for _ in range(4)} == {"b"}
        await asyncio.sleep(0.25)
        texts = [(await get(h)).text for _ in range(4)]  # back: a fails twice more
        assert texts.count("a 503") == 2, texts
        row = rows(runtime)["a"]
        assert (row["state"], row["ejections"]) == ("ejected", 2)
        assert 0.35 < float(row["ejected_for_s"]) <= 0.4  # type: ignore[arg-type]
        a.mode = None
        await asyncio.sleep(0.2)
        assert {(await get(h)).text for _ in range(4)} == {"b"}  # still out at 200 ms of 400
        await asyncio.sleep(0.25)
        assert {(await get(h)).text for _ in range(4)} == {"a", "b"}
    await a.close()
    await b.close()


async def test_failing_health_checks_take_endpoints_out_and_the_503_says_why() -> None:
    """An HTTP check answered 500: down after unhealthyThreshold probes; every endpoint down gives the
    proxy's 503 naming the cause; back after healthyThreshold passes, ramping under slow start."""
    a, b = await start_backends("a", "b")
    policy = {"healthCheck": {"type": "HTTP", "path": "/", "interval": "40ms", "timeout": "200ms",
                              "unhealthyThreshold": 2, "healthyThreshold": 2},
              "slowStart": {"window": "10s", "minWeightPercent": 10},
              "strategy": {"type": "WeightedRoundRobin"}}
    async with Harness(make_state([a, b], policy=policy)) as h, checking(h):
        runtime = h.runtime()
        await asyncio.sleep(0.15)
        assert {(await get(h)).text for _ in range(4)} == {"a", "b"}
        a.mode = b.mode = 500
        assert await eventually(lambda: not runtime._usable, timeout=2)
        r = await get(h)
        assert (r.status, r.text) == (503, "steelyard: load balancer default/web: no usable endpoint: "
                                           "2 configured, 2 failing health checks\n")
        a.mode = None
        assert await eventually(lambda: bool(runtime._usable), timeout=2)
        assert a.requests[-2:] == [("GET", "/"), ("GET", "/")]  # the two passing probes
        row = rows(runtime)["a"]
        assert row["state"] == "slow-start" and 0.09 < float(row["effective_weight"]) < 0.2, row  # type: ignore[arg-type]
        assert rows(runtime)["b"]["state"] == "unhealthy"
        assert (await get(h)).text == "a"
    await a.close()
    await b.close()


async def test_the_503_does_not_call_endpoints_drained_by_their_reported_weight_healthy() -> None:
    a, b = await start_backends("a", "b")
    policy = {"dynamicWeights": {"mode": "Header", "min": 0}}
    async with Harness(make_state([a, b], policy=policy)) as h:
        client = await h.connect()
        assert (await client.request("GET", "/weight?w=0")).text == "a"
        assert (await client.request("GET", "/weight?w=0")).text == "b"
        await asyncio.sleep(0.55)  # the reported weights apply at the next recomputation
        r = await client.request("GET", "/weight?w=0")
        if r.status == 200:  # (the recomputation ran on this response)
            r = await client.request("GET", "/weight?w=0")
        assert r.status == 503, r.text
        assert r.text.startswith("steelyard: load balancer default/web: no usable endpoint: 2 configured, ")
        assert "healthy" not in r.text, r.text
        client.close()
    await a.close()
    await b.close()


async def test_a_drained_endpoint_finishes_its_request_in_flight_and_takes_no_new_one() -> None:
    """Weight 0 by reload while a slow request is on the endpoint: that request is answered, the next ones
    go to the other endpoint; weight back to 1 under slow start: it ramps from minWeightPercent."""
    a, b = await start_backends("a", "b")
    policy = {"slowStart": {"window": "10s", "minWeightPercent": 20},
              "strategy": {"type": "WeightedRoundRobin"}}
    async with Harness(make_state([a, b], policy=policy)) as h:
        runtime = h.runtime()
        slow = await h.connect()
        await slow.send(b"GET /slow?ms=400 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await eventually(lambda: ("GET", "/slow") in a.requests + b.requests)
        busy = a if ("GET", "/slow") in a.requests else b
        other = b if busy is a else a
        drained = dataclasses.replace(busy.endpoint, weight=0)
        h.apply(make_state([drained if e is busy else e for e in (a, b)], policy=policy))
        assert {(await get(h)).text for _ in range(4)} == {other.name}
        r = await slow.response(timeout=3)
        assert (r.status, r.text) == (200, busy.name)
        assert runtime.stats[busy.endpoint.id].in_flight == 0
        h.apply(make_state([a, b], policy=policy))
        row = rows(runtime)[busy.name]
        assert row["state"] == "slow-start" and 0.19 < float(row["effective_weight"]) < 0.25, row  # type: ignore[arg-type]
        slow.close()
    await a.close()
    await b.close()
