"""The admin server on a real socket (127.0.0.1, ephemeral port) over a fake `AdminSource`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from admin_fake import Clock, FakeSource
from steelyard.admin.server import AdminServer, AdminSetupError, is_loopback, parse_address

UP = "default/web/http"


@pytest.fixture
def source() -> FakeSource:
    return FakeSource({UP: [("127.0.0.1:9001", 5), ("127.0.0.1:9002", 1)],
                       "default/other/tcp": [("127.0.0.1:9101", 1)]})


@pytest.fixture
async def admin(source: FakeSource) -> AsyncIterator[AdminServer]:
    server = AdminServer(source, "127.0.0.1", 0, tick=3600, clock=Clock(1000.0))  # ticks driven by the test
    await server.start()
    yield server
    await server.stop()


async def get(server: AdminServer, path: str, **kw: object) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s, s.get(server.url + path, **kw) as r:  # type: ignore[arg-type]
        body = await r.text()
        return r.status, (json.loads(body) if r.content_type == "application/json" else body)


async def post(server: AdminServer, path: str, body: object = None, **kw: object) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s, s.post(server.url + path, json=body or {}, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.json()


def test_addresses() -> None:
    assert parse_address("127.0.0.1:9901") == ("127.0.0.1", 9901)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address(":9901") == ("127.0.0.1", 9901)
    for bad in ("9901", "host:", "host:http", "h:70000"):
        with pytest.raises(AdminSetupError):
            parse_address(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")


def test_non_loopback_without_token_refuses_to_start(source: FakeSource) -> None:
    with pytest.raises(AdminSetupError, match="bearer token"):
        AdminServer(source, "0.0.0.0", 9901)
    AdminServer(source, "0.0.0.0", 9901, token="s3cret")  # constructing binds nothing


async def test_probes(admin: AdminServer, source: FakeSource) -> None:
    assert await get(admin, "/healthz") == (200, "ok\n")
    assert (await get(admin, "/readyz"))[0] == 200
    source.draining = True
    status, text = await get(admin, "/readyz")
    assert status == 503 and "draining" in str(text)
    source.draining, source.ready = False, False
    status, text = await get(admin, "/readyz")
    assert status == 503 and "no configuration" in str(text)


async def test_state_rates_and_latency_follow_the_traffic(admin: AdminServer, source: FakeSource) -> None:
    clock: Clock = admin.sampler.clock  # type: ignore[assignment]
    for _ in range(60):
        source.serve(UP, latency=0.004)
    clock.now += 2.0
    admin._sample()
    status, doc = await get(admin, "/api/v1/loadbalancers")
    assert status == 200
    lbs = {lb["name"]: lb for lb in doc["load_balancers"]}  # type: ignore[index]
    assert set(lbs) == {"default/web", "default/other"}
    up = lbs["default/web"]["upstreams"][0]
    assert up["strategy"] == "WeightedRoundRobin" and up["policy"]["strategy"]["type"] == "WeightedRoundRobin"
    eps = {e["id"]: e for e in up["endpoints"]}
    assert eps["127.0.0.1:9001"]["requests"] == 50 and eps["127.0.0.1:9002"]["requests"] == 10
    assert eps["127.0.0.1:9001"]["requests_per_second"] == 25.0  # 50 requests over 2 scripted seconds
    assert eps["127.0.0.1:9002"]["requests_per_second"] == 5.0
    assert 2.5 < eps["127.0.0.1:9001"]["p50_ms"] <= 5.0  # inside the 2.5..5 ms bucket
    assert up["requests_per_second"] == 30.0

    status, hist = await get(admin, "/api/v1/history")
    series = hist["upstreams"][UP]["endpoints"]  # type: ignore[index]
    assert series == {"127.0.0.1:9001": [50], "127.0.0.1:9002": [10]}


async def test_weight_drain_undrain(admin: AdminServer, source: FakeSource) -> None:
    status, doc = await post(admin, f"/api/v1/endpoints/{UP}/127.0.0.1:9002/weight", {"weight": 7})
    assert status == 200 and doc["endpoints"][0]["effective_weight"] == 7  # type: ignore[index]
    assert source.ups[UP].endpoints["127.0.0.1:9002"].override == 7
    # by load balancer name (all its ports) and by endpoint name
    status, doc = await post(admin, "/api/v1/endpoints/default/web/9001/drain")
    assert status == 200 and doc["endpoints"][0]["drained"] is True  # type: ignore[index]
    assert [source.serve(UP) for _ in range(3)] == ["127.0.0.1:9002"] * 3
    status, doc = await post(admin, "/api/v1/endpoints/web/127.0.0.1:9001/undrain")
    assert status == 200 and doc["endpoints"][0]["health"] == "healthy"  # type: ignore[index]
    status, doc = await post(admin, f"/api/v1/endpoints/{UP}/127.0.0.1:9002/weight", {"weight": None})
    assert status == 200 and source.ups[UP].endpoints["127.0.0.1:9002"].override is None


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    (f"/api/v1/endpoints/{UP}/127.0.0.1:9002/weight", {"weight": -1}, 400, "integer from 0"),
    (f"/api/v1/endpoints/{UP}/127.0.0.1:9002/weight", {"weight": "3"}, 400, "integer from 0"),
    (f"/api/v1/endpoints/{UP}/127.0.0.1:9002/weight", {}, 400, "weight needs"),
    (f"/api/v1/endpoints/{UP}/127.0.0.1:9999/drain", {}, 404, "no endpoint"),
    ("/api/v1/endpoints/nope/127.0.0.1:9001/drain", {}, 404, "no load balancer"),
])
async def test_bad_operations_get_clear_errors(admin: AdminServer, path: str, body: object, status: int,
                                               message: str) -> None:
    got, doc = await post(admin, path, body)
    assert got == status and message in doc["error"]  # type: ignore[index]


async def test_operations_need_json(admin: AdminServer) -> None:
    async with aiohttp.ClientSession() as s, s.post(
            admin.url + f"/api/v1/endpoints/{UP}/127.0.0.1:9001/drain", data="x=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 415


async def test_explain_predicts_the_next_pick_without_taking_it(admin: AdminServer,
                                                                source: FakeSource) -> None:
    for _ in range(3):
        source.serve(UP)
    before = [(e.id, e.current) for e in source.ups[UP].endpoints.values()]
    status, doc = await get(admin, "/api/v1/explain?lb=default/web")
    assert status == 200
    predicted = doc["upstreams"][0]["next_pick"]  # type: ignore[index]
    assert [(e.id, e.current) for e in source.ups[UP].endpoints.values()] == before  # state untouched
    assert source.serve(UP) == predicted
    assert (await get(admin, "/api/v1/explain"))[0] == 400
    assert (await get(admin, "/api/v1/explain?lb=missing"))[0] == 404


async def test_config_and_reloads(admin: AdminServer) -> None:
    status, cfg = await get(admin, "/api/v1/config")
    assert status == 200 and cfg["source"] == "test.yaml" and cfg["loaded"] is True  # type: ignore[index]
    status, rel = await get(admin, "/api/v1/reloads")
    assert rel["reloads"][0]["ok"] is True and rel["reloads"][0]["source"] == "test.yaml"  # type: ignore[index]


async def test_events_stream_pushes_state_each_tick(admin: AdminServer, source: FakeSource) -> None:
    async with aiohttp.ClientSession() as s, s.get(admin.url + "/api/v1/events") as r:
        assert r.headers["Content-Type"] == "text/event-stream"

        async def next_event() -> dict[str, object]:
            while True:
                line = await asyncio.wait_for(r.content.readline(), 10)
                if line.startswith(b"data: "):
                    return json.loads(line[6:])  # type: ignore[no-any-return]

        first = await next_event()
        source.serve(UP)
        admin._sample()
        second = await next_event()
        eps = lambda d: {e["id"]: e["requests"] for lb in d["load_balancers"] for u in lb["upstreams"]  # noqa: E731
                         for e in u["endpoints"]}
        assert sum(eps(second).values()) == sum(eps(first).values()) + 1


async def test_token_is_required_when_configured(source: FakeSource) -> None:
    server = AdminServer(source, "127.0.0.1", 0, token="s3cret", tick=3600)
    await server.start()
    try:
        assert (await get(server, "/healthz"))[0] == 200  # probes stay open (kubelet has no token)
        assert (await get(server, "/"))[0] == 200  # the page itself holds no data
        status, _ = await get(server, "/api/v1/state")
        assert status == 401
        status, _ = await get(server, "/metrics", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _ = await post(server, f"/api/v1/endpoints/{UP}/127.0.0.1:9001/drain")
        assert status == 401 and not source.ups[UP].endpoints["127.0.0.1:9001"].drained
        status, _ = await get(server, "/api/v1/state", headers={"Authorization": "Bearer s3cret"})
        assert status == 200
    finally:
        await server.stop()


async def test_port_in_use_is_a_clear_error(admin: AdminServer, source: FakeSource) -> None:
    other = AdminServer(source, "127.0.0.1", admin.port)
    with pytest.raises(AdminSetupError, match="cannot listen"):
        await other.start()
