"""Runtime overrides through the admin API on the real proxy (127.0.0.1): drain, undrain, weight — at
once, and kept across a reload unless that reload touches the endpoint.

Uses `steelyard.endpoints.EndpointTracker` when it has `set_override`; until then a small tracker with
the documented interface stands in (weights as configured, overrides applied in `usable()`).
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
from steelyard.strategies import Endpoint

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")
UP = "default/web/http"


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


class StandInTracker:
    """The documented EndpointTracker interface, only as far as overrides need it."""

    def __init__(self, endpoints: Sequence[BackendEndpoint]) -> None:
        self.endpoints = {e.id: e for e in endpoints}
        self.weights: dict[str, int] = {}
        self.drained: set[str] = set()

    def set_policy(self, policy: Any, now: float) -> None:
        pass

    def set_endpoints(self, endpoints: Sequence[BackendEndpoint], now: float) -> None:
        self.endpoints = {e.id: e for e in endpoints}

    def set_override(self, endpoint_id: str, *, weight: int | None = None,
                     drained: bool | None = None) -> bool:
        if weight is None:
            self.weights.pop(endpoint_id, None)
        else:
            self.weights[endpoint_id] = weight
        if drained is not None:
            (self.drained.add if drained else self.drained.discard)(endpoint_id)
        return True

    def usable(self, now: float) -> tuple[Endpoint, ...]:
        out = []
        for e in self.endpoints.values():
            weight = self.weights.get(e.id, e.weight)
            if weight > 0 and e.id not in self.drained:
                out.append(Endpoint(e.id, float(weight)))
        return tuple(out)

    def on_outcome(self, endpoint_id: str, now: float, **kw: Any) -> bool:
        return False

    def on_health_check(self, endpoint_id: str, now: float, healthy: bool) -> bool:
        return False

    def endpoint(self, endpoint_id: str) -> BackendEndpoint | None:
        return self.endpoints.get(endpoint_id)

    def unavailable_reason(self, now: float) -> str:
        return "no usable endpoint"

    def describe(self, now: float) -> list[dict[str, object]]:
        return [{"id": e.id, "state": "draining" if e.id in self.drained else "healthy"}
                for e in self.endpoints.values()]

    def next_change_at(self, now: float) -> float | None:
        return None


def ensure_overridable(h: Harness) -> None:
    runtime = h.registry.get(UP)
    assert runtime is not None
    if not hasattr(runtime.tracker, "set_override"):
        runtime.tracker = StandInTracker(runtime.upstream.endpoints)  # type: ignore[assignment]
        runtime.refresh()


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
        ensure_overridable(h)
        source = RuntimeSource(h.proxy)
        admin = AdminServer(source, "127.0.0.1", 0, tick=3600)
        await admin.start()
        try:
            doc = await post(admin, f"/api/v1/endpoints/{UP}/{a.endpoint.id}/drain")
            assert doc["endpoints"][0]["drained"] is True and doc["endpoints"][0]["health"] == "draining"
            assert set(await served_by(h, 6)) == {"b"}  # at once: no request reaches a

            h.apply(with_endpoints(state, [a.endpoint, b.endpoint, c.endpoint]))  # touches b? no: adds c
            ensure_overridable(h)
            source.after_apply()
            assert set(await served_by(h, 6)) == {"b", "c"}  # a stays drained

            reweighted = dataclasses.replace(a.endpoint, weight=2)
            h.apply(with_endpoints(state, [reweighted, b.endpoint, c.endpoint]))  # touches a
            ensure_overridable(h)
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
        ensure_overridable(h)
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
