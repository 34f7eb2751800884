"""`RuntimeSource` over the real proxy on 127.0.0.1: explain, config, readiness, latency, through the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import uvloop

from admin_fake import Clock
from proxy_support import Backend, Harness, make_state, start_backends
from steelyard.admin.runtime_source import RuntimeSource
from steelyard.admin.server import AdminServer

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.fixture
async def running() -> AsyncIterator[tuple[Harness, RuntimeSource, AdminServer, list[Backend]]]:
    backends = await start_backends("a", "b", "c")
    async with Harness(make_state(backends)) as h:
        source = RuntimeSource(h.proxy)
        admin = AdminServer(source, "127.0.0.1", 0, tick=3600, clock=Clock(100.0))
        await admin.start()
        try:
            yield h, source, admin, backends
        finally:
            await admin.stop()
    for b in backends:
        await b.close()


async def get(admin: AdminServer, path: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(admin.url + path) as r:
        return r.status, json.loads(await r.text())


async def test_explain_predicts_each_next_pick_and_changes_nothing(running) -> None:  # type: ignore[no-untyped-def]
    h, _, admin, backends = running
    by_id = {b.endpoint.id: b.name for b in backends}
    client = await h.connect()
    for _ in range(7):
        _, first = await get(admin, "/api/v1/explain?lb=default/web")
        _, again = await get(admin, "/api/v1/explain?lb=default/web")
        predicted = first["upstreams"][0]["next_pick"]  # type: ignore[index]
        assert again["upstreams"][0]["next_pick"] == predicted  # type: ignore[index]  # explaining took nothing
        assert "RoundRobin over 3 usable endpoint(s)" in first["upstreams"][0]["reason"]  # type: ignore[index]
        assert (await client.request()).text == by_id[predicted]
    client.close()


async def test_config_readiness_and_latency(running) -> None:  # type: ignore[no-untyped-def]
    h, source, admin, backends = running
    status, _ = await get(admin, "/api/v1/config")
    async with aiohttp.ClientSession() as s, s.get(admin.url + "/readyz") as r:
        assert r.status == 503 and "no configuration" in await r.text()
    source.record_reload(False, "bad.yaml", errors=["bad.yaml:3: LoadBalancer/web: spec.ports: required"])
    source.record_reload(True, "test", "applied")
    async with aiohttp.ClientSession() as s, s.get(admin.url + "/readyz") as r:
        assert r.status == 200
    status, cfg = await get(admin, "/api/v1/config")
    doc = cfg["document"]
    assert cfg["source"] == "test" and cfg["loaded"] is True
    assert [e["id"] for e in doc["upstreams"]["default/web/http"]["endpoints"]] == [  # type: ignore[index]
        b.endpoint.id for b in backends]
    _, reloads = await get(admin, "/api/v1/reloads")
    assert [r["ok"] for r in reloads["reloads"]] == [True, False]  # type: ignore[index]
    assert "spec.ports" in reloads["reloads"][1]["errors"][0]  # type: ignore[index]

    client = await h.connect()
    for _ in range(30):
        await client.request("GET", "/slow?ms=20")
    client.close()
    admin.sampler.clock.now += 1  # type: ignore[attr-defined]
    admin._sample()
    _, eps = await get(admin, "/api/v1/endpoints")
    for row in eps["endpoints"]:  # type: ignore[attr-defined]
        assert row["requests"] == 10 and row["health"] == "healthy" and row["effective_weight"] == 1
        # every request took >= 20 ms: the estimate lies in the bucket holding them, (10, 25] ms or above
        assert 10 < row["p50_ms"] <= 100 and row["p50_ms"] <= row["p99_ms"] <= 250
        assert row["requests_per_second"] == 10.0  # 10 requests in one scripted second

    h.proxy.closing = True  # what shutdown() sets first
    async with aiohttp.ClientSession() as s, s.get(admin.url + "/readyz") as r:
        assert r.status == 503 and "draining" in await r.text()
    h.proxy.closing = False


async def test_unknown_names(running) -> None:  # type: ignore[no-untyped-def]
    _, source, admin, _ = running
    with pytest.raises(LookupError):
        source.explain("default/nope/http", None, None)
    with pytest.raises(LookupError):
        source.set_drained("default/web/http", "127.0.0.1:1", True)
    assert (await get(admin, "/api/v1/explain?lb=nope"))[0] == 404
