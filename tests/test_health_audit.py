"""Audit of health checking, outlier detection, slow start and dynamic weights, on real sockets (127.0.0.1).

Tests marked xfail(strict=True) assert the correct behaviour of a bug found by this audit; the others pin
behaviour that was checked and found right.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from proxy_support import Harness, eventually, make_state, start_backends
from steelyard.runtime.health_checks import HealthChecker
from steelyard.runtime.upstream import UpstreamRuntime

KEY = "default/web/http"


def runtime_of(h: Harness) -> UpstreamRuntime:
    runtime = h.registry.get(KEY)
    assert runtime is not None
    return runtime


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


@pytest.mark.xfail(strict=True, reason="BUG: a backend reporting weight 'nan' (Header mode) makes every "
                                       "later refresh raise: health checks stop taking endpoints out")
async def test_a_nan_reported_weight_does_not_stop_health_checks_from_working() -> None:
    a, b = await start_backends("a", "b")
    policy = {"dynamicWeights": {"mode": "Header"}, "healthCheck": TCP_CHECK, "retries": {"attempts": 0}}
    async with Harness(make_state([a, b], policy=policy)) as h, checking(h):
        runtime = runtime_of(h)
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
    pytest.param(True, marks=pytest.mark.xfail(strict=True, reason=(
        "BUG: a client that disconnects is reported done(ok=True) (http.py _abandon), which resets the "
        "endpoint's consecutive failures: a failing or hanging endpoint escapes ejection"))),
])
async def test_consecutive_failures_eject_even_when_a_client_gives_up_between_them(
        client_gives_up: bool) -> None:
    """Envoy's consecutive-5xx detector hears nothing of a request the client abandoned: three 503s with an
    abandoned request between them still eject the endpoint (and the next request is the proxy's 503)."""
    (a,) = await start_backends("a")
    async with Harness(make_state([a], policy=OUTLIERS_3)) as h:
        runtime = runtime_of(h)
        assert (await get(h, "/status/503")).status == 503
        assert (await get(h, "/status/503")).status == 503
        if client_gives_up:
            client = await h.connect()  # a client that stops waiting for a slow answer
            await client.send(b"GET /slow?ms=600 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await eventually(lambda: runtime.stats[a.endpoint.id].in_flight == 1)
            client.writer.transport.abort()
            assert await eventually(lambda: runtime.stats[a.endpoint.id].in_flight == 0)
        assert (await get(h, "/status/503")).status == 503  # the endpoint's third failure
        r = await get(h)
        assert r.status == 503, r.text
        assert r.text == ("steelyard: load balancer default/web: no usable endpoint: 1 configured, "
                          "1 ejected by outlier detection\n")
    await a.close()
