"""Runtime overrides through the admin API on the real proxy (127.0.0.1): drain, undrain, weight — at
once, and kept across a reload unless that reload touches the endpoint.

Uses the real `steelyard.endpoints.EndpointTracker`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
import uvloop

from proxy_support import Backend, Harness, make_state, start_backends
from steelyard.admin.runtime_source import RuntimeSource
from steelyard.admin.server import AdminServer
from steelyard.config.desired import BackendEndpoint, DesiredState

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")
UP = "default/web/http"


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def post(admin: AdminServer, path: str, body: object = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(admin.url + path, json=body or {}) as r:
        assert r.status == 200, await r.text()
        return json.loads(await r.text())  # type: ignore[no-any-return]


async def served_by(h: Harness, n: int) -> list[str]:
    client = await h.connect()
    names = [(await client.request()).text for _ in range(n)]
    client.close()
    return names


def with_endpoints(state: DesiredState, endpoints: Sequence[BackendEndpoint]) -> DesiredState:
    up = dataclasses.replace(state.upstreams[UP], endpoints=tuple(endpoints))
    return dataclasses.replace(state, upstreams={UP: up})


async def test_drain_holds_across_an_unrelated_reload_and_resets_when_the_endpoint_changes() -> None:
    a, b, c = backends = await start_backends("a", "b", "c")
    state = make_state([a, b])
    async with Harness(state) as h:
        source = RuntimeSource(h.proxy)
        admin = AdminServer(source, "127.0.0.1", 0, tick=3600)
        await admin.start()
        try:
            doc = await post(admin, f"/api/v1/endpoints/{UP}/{a.endpoint.id}/drain")
            assert doc["endpoints"][0]["drained"] is True and doc["endpoints"][0]["health"] == "draining"
            assert set(await served_by(h, 6)) == {"b"}  # at once: no request reaches a

            h.apply(with_endpoints(state, [a.endpoint, b.endpoint, c.endpoint]))  # touches b? no: adds c
            source.after_apply()
            assert set(await served_by(h, 6)) == {"b", "c"}  # a stays drained

            reweighted = dataclasses.replace(a.endpoint, weight=2)
            h.apply(with_endpoints(state, [reweighted, b.endpoint, c.endpoint]))  # touches a
            source.after_apply()
            assert "a" in await served_by(h, 6)  # the reload reset a's drain
            assert source.overrides == {}
        finally:
            await admin.stop()
    for backend in backends:
        await backend.close()


async def test_weight_override_and_undrain_show_in_the_api_at_once() -> None:
    backends: list[Backend] = await start_backends("a", "b")
    a = backends[0]
    async with Harness(make_state(backends)) as h:
        source = RuntimeSource(h.proxy)
        admin = AdminServer(source, "127.0.0.1", 0, tick=3600)
        await admin.start()
        try:
            doc = await post(admin, f"/api/v1/endpoints/{UP}/{a.endpoint.id}/weight", {"weight": 7})
            row = doc["endpoints"][0]
            assert row["override_weight"] == 7 and row["effective_weight"] == 7
            assert row["configured_weight"] == 1
            doc = await post(admin, f"/api/v1/endpoints/{UP}/{a.endpoint.id}/weight", {"weight": 0})
            assert doc["endpoints"][0]["effective_weight"] == 0
            assert set(await served_by(h, 4)) == {"b"}  # weight 0: no new requests
            doc = await post(admin, f"/api/v1/endpoints/{UP}/{a.endpoint.id}/weight", {"weight": None})
            row = doc["endpoints"][0]
            assert row["effective_weight"] == 1 and row["override_weight"] is None
            await post(admin, f"/api/v1/endpoints/{UP}/{a.endpoint.id}/drain")
            await post(admin, f"/api/v1/endpoints/{UP}/{a.endpoint.id}/undrain")
            assert set(await served_by(h, 4)) == {"a", "b"}
            assert source.overrides == {}
        finally:
            await admin.stop()
    for backend in backends:
        await backend.close()
