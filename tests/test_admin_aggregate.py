"""`--workers N`: one admin API over several workers' admin servers (real sockets on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from admin_fake import FakeSource, worker_group
from steelyard.admin.aggregate import AggregateSource
from steelyard.admin.server import AdminServer

UP = "default/web/http"
A, B = "127.0.0.1:9001", "127.0.0.1:9002"


@pytest.fixture
async def group() -> AsyncIterator[tuple[list[FakeSource], list[AdminServer], AggregateSource, AdminServer]]:
    workers = [FakeSource({UP: [(A, 1), (B, 1)]}) for _ in range(3)]
    async with worker_group(workers) as (servers, aggregate, public):
        yield workers, servers, aggregate, public


async def get(server: AdminServer, path: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(server.url + path) as r:
        return r.status, json.loads(await r.text())


async def test_counts_are_summed_and_histograms_merged(group) -> None:  # type: ignore[no-untyped-def]
    workers, _, aggregate, public = group
    for i, w in enumerate(workers):
        for _ in range(2 * (i + 1)):  # 2, 4 and 6 requests, split evenly over A and B
            w.serve(UP, latency=0.003)
    await aggregate.poll()
    rows = {e.id: e for e in aggregate.upstreams()[0].endpoints}
    assert rows[A].requests == rows[B].requests == 6
    assert rows[A].latency_counts is not None and sum(rows[A].latency_counts) == 6
    assert aggregate.counters().requests == 12
    assert aggregate.readiness() == (True, "")
    async with aiohttp.ClientSession() as s, s.get(public.url + "/metrics") as r:
        text = await r.text()
    assert ('steelyard_request_duration_seconds_count{endpoint="127.0.0.1:9001",load_balancer="default/web",'
            'upstream="default/web/http"} 6.0') in text


async def test_drain_goes_to_every_worker_and_health_shows_disagreement(group) -> None:  # type: ignore[no-untyped-def]
    workers, _, aggregate, public = group
    async with aiohttp.ClientSession() as s, s.post(public.url + f"/api/v1/endpoints/{UP}/{A}/drain",
                                                    json={}) as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["endpoints"][0]["drained"] is True and doc["endpoints"][0]["healthy"] is False
    assert all(w.ups[UP].endpoints[A].drained for w in workers)
    workers[1].ups[UP].endpoints[B].healthy = False  # one worker's health check failed
    await aggregate.poll()
    row = {e.id: e for e in aggregate.upstreams()[0].endpoints}[B]
    assert row.health == "unhealthy in 1/3 workers" and not row.healthy
    assert row.effective_weight == pytest.approx(2 / 3)


async def test_explain_asks_worker_zero(group) -> None:  # type: ignore[no-untyped-def]
    workers, _, _, public = group
    workers[0].serve(UP)  # worker 1's next pick is now B
    status, doc = await get(public, "/api/v1/explain?lb=default/web")
    assert status == 200
    answer = doc["upstreams"][0]  # type: ignore[index]
    assert answer["next_pick"] == B and "worker 1 of 3" in answer["note"]


async def test_a_silent_worker_makes_the_group_not_ready(group) -> None:  # type: ignore[no-untyped-def]
    _, servers, aggregate, public = group
    await servers[2].stop()
    await aggregate.poll()
    ready, why = aggregate.readiness()
    assert not ready and "worker(s) 3 not answering" in why  # numbered from 1, as the supervisor's log
    async with aiohttp.ClientSession() as s, s.get(public.url + "/readyz") as r:
        assert r.status == 503


async def test_counters_never_go_back_when_a_worker_falls_silent_or_is_replaced(group) -> None:  # type: ignore[no-untyped-def]
    """Prometheus reads a drop as a counter reset: a silent worker keeps its last counts, and a worker the
    supervisor restarted (a new admin URL) leaves its final counts in every later sum."""
    workers, servers, aggregate, _ = group
    for w in workers:
        for _ in range(4):
            w.serve(UP, latency=0.003)
    await aggregate.poll()
    assert aggregate.counters().requests == 12
    assert sum(e.requests for e in aggregate.upstreams()[0].endpoints) == 12

    await servers[2].stop()  # worker 2 dies: not answering
    await aggregate.poll()
    assert not aggregate.readiness()[0]
    assert aggregate.counters().requests == 12
    rows = aggregate.upstreams()[0]
    assert sum(e.requests for e in rows.endpoints) == 12 and rows.requests == 12

    fresh = FakeSource({UP: [(A, 1), (B, 1)]})  # the supervisor's replacement starts from zero
    replacement = AdminServer(fresh, "127.0.0.1", 0, tick=3600)
    await replacement.start()
    try:
        aggregate.urls[2] = replacement.url
        fresh.serve(UP, latency=0.003)
        await aggregate.poll()
        assert aggregate.readiness() == (True, "")
        assert aggregate.counters().requests == 13
        rows = aggregate.upstreams()[0]
        by_id = {e.id: e for e in rows.endpoints}
        assert sum(e.requests for e in rows.endpoints) == 13
        assert by_id[A].latency_counts is not None and sum(by_id[A].latency_counts) == by_id[A].requests
        assert aggregate.counters().upstream_active == sum(w.counters().upstream_active
                                                           for w in (workers[0], workers[1], fresh))
    finally:
        await replacement.stop()
