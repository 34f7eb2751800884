"""Audit of the admin surface on real sockets (127.0.0.1 only): input validation, auth, explain, rates,
metrics, the event stream and the --workers aggregate."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import uvloop

from admin_fake import Clock, FakeSource, worker_group
from proxy_support import Harness, make_state, start_backends
from steelyard.admin.aggregate import AggregateSource
from steelyard.admin.runtime_source import RuntimeSource
from steelyard.admin.server import AdminServer

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")

UP = "default/web/http"
A, B = "127.0.0.1:9001", "127.0.0.1:9002"


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource({UP: [(A, 5), (B, 1)]})


@pytest.fixture
async def admin(source: FakeSource) -> AsyncIterator[AdminServer]:
    server = AdminServer(source, "127.0.0.1", 0, tick=3600, clock=Clock(1000.0))
    await server.start()
    yield server
    await server.stop()


async def request(server: AdminServer, method: str, path: str, **kw: Any) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, server.url + path, **kw) as r:
        text = await r.text()
        return r.status, r.content_type, (json.loads(text) if r.content_type == "application/json" else text)


# -- operations: bodies and names ----------------------------------------------------------------------------


# -- rates and the share chart across reloads ----------------------------------------------------------------


async def test_an_endpoint_removed_and_put_back_shows_no_phantom_traffic() -> None:
    backends = await start_backends("a", "b")
    a, b = backends
    state = make_state(backends)
    async with Harness(state) as h:
        source = RuntimeSource(h.proxy)
        clock = Clock(1000.0)
        server = AdminServer(source, "127.0.0.1", 0, tick=3600, clock=clock)
        await server.start()
        try:
            client = await h.connect()
            for _ in range(40):
                await client.request()
            client.close()
            for _ in range(8):  # traffic stopped: quiet seconds, the rate falls to 0
                clock.now += 1
                server._sample()
            only_b = dataclasses.replace(state.upstreams[UP], endpoints=(b.endpoint,))
            h.apply(dataclasses.replace(state, upstreams={UP: only_b}))  # a pod leaves the slice ...
            source.after_apply()
            for _ in range(6):  # a while away (a pod restarting)
                clock.now += 1
                server._sample()
            h.apply(state)  # ... and comes back; no request is sent at all
            source.after_apply()
            clock.now += 1
            server._sample()
            _, _, doc = await request(server, "GET", "/api/v1/endpoints")
            rows = {r["id"]: r for r in doc["endpoints"]}
            assert rows[a.endpoint.id]["requests"] == 20  # the counter itself carried on: fine
            assert rows[a.endpoint.id]["requests_per_second"] == 0.0  # was 4.0: 20 requests "in 5 s"
            _, _, hist = await request(server, "GET", "/api/v1/history")
            assert hist["upstreams"][UP]["endpoints"][a.endpoint.id][-1] == 0  # no request in the last second
        finally:
            await server.stop()
    for x in backends:
        await x.close()


# -- the --workers aggregate ---------------------------------------------------------------------------------


@pytest.fixture
async def group() -> AsyncIterator[tuple[list[FakeSource], list[AdminServer], AggregateSource, AdminServer]]:
    workers = [FakeSource({UP: [(A, 1), (B, 1)]}) for _ in range(2)]
    async with worker_group(workers) as (servers, aggregate, public):
        yield workers, servers, aggregate, public


async def test_group_drain_while_a_worker_is_down_is_a_json_error(group) -> None:  # type: ignore[no-untyped-def]
    workers, servers, _, public = group
    await servers[1].stop()  # worker 2 crashed; the supervisor has not restarted it yet
    status, ctype, doc = await request(public, "POST", f"/api/v1/endpoints/{UP}/{A}/drain", json={})
    assert ctype == "application/json" and "error" in doc, (status, doc)  # the dashboard reads doc.error
    assert status in (502, 503, 504)


async def test_group_explain_while_worker_one_is_down_is_a_json_error(group) -> None:  # type: ignore[no-untyped-def]
    _, servers, aggregate, public = group
    await aggregate.poll()
    await servers[0].stop()
    status, ctype, doc = await request(public, "GET", "/api/v1/explain?lb=default/web")
    assert ctype == "application/json" and "error" in doc, (status, doc)
    assert status in (502, 503, 504)


def reload_counts(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["result"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "steelyard_config_reloads" for s in f.samples}


async def test_group_reload_counter_never_goes_back_when_workers_are_replaced(group) -> None:  # type: ignore[no-untyped-def]
    workers, servers, aggregate, public = group
    for w in workers:  # three reloads seen by every worker (one of them refused)
        w.reload_log += [dataclasses.replace(w.reload_log[0], at=1_700_000_100.0),
                         dataclasses.replace(w.reload_log[0], at=1_700_000_200.0, ok=False)]
    await aggregate.poll()
    status, _, text = await request(public, "GET", "/metrics")
    assert reload_counts(text) == {"ok": 2.0, "failed": 1.0}

    fresh = [FakeSource({UP: [(A, 1), (B, 1)]}) for _ in workers]  # both restarted, one after the other
    replacements = [AdminServer(w, "127.0.0.1", 0, tick=3600) for w in fresh]
    try:
        for i, r in enumerate(replacements):
            await servers[i].stop()
            await r.start()
            aggregate.urls[i] = r.url
            await aggregate.poll()
        status, _, text = await request(public, "GET", "/metrics")
        counts = reload_counts(text)
        assert counts["ok"] >= 2.0 and counts["failed"] >= 1.0, counts  # a counter never goes back
    finally:
        for r in replacements:
            await r.stop()


# -- steelyard status ----------------------------------------------------------------------------------------


async def test_status_shows_endpoint_names_verbatim() -> None:
    from rich.console import Console

    from steelyard.admin import status_cmd
    from steelyard.config.desired import BackendEndpoint

    backends = await start_backends("a")
    named = dataclasses.replace(backends[0].endpoint, name="api[primary]")  # YAML: `name:` is free text
    other = BackendEndpoint("127.0.0.1", 1, name="db[/x]")
    async with Harness(make_state([named, other])) as h:
        source = RuntimeSource(h.proxy)
        source.record_reload(True, "test", "applied")
        server = AdminServer(source, "127.0.0.1", 0, tick=3600)
        await server.start()
        try:
            state = await asyncio.get_running_loop().run_in_executor(
                None, status_cmd.fetch_state, f"127.0.0.1:{server.port}", None, 2.0)
        finally:
            await server.stop()
    for b in backends:
        await b.close()
    first, second = state["load_balancers"][0]["upstreams"][0]["endpoints"]
    assert (first["name"], second["name"]) == ("api[primary]", "db[/x]")  # the API has them right
    console = Console(record=True, width=200)
    first_only = {**state, "load_balancers": [{**state["load_balancers"][0], "upstreams": [
        {**state["load_balancers"][0]["upstreams"][0], "endpoints": [first]}]}]}
    console.print(status_cmd.render(first_only))
    assert "api[primary]" in console.export_text()
    console.print(status_cmd.render(state))  # raised rich.errors.MarkupError
    assert "db[/x]" in console.export_text()


# -- operations: what a body may hold ------------------------------------------------------------------------


async def test_a_deeply_nested_body_is_a_400(admin: AdminServer, source: FakeSource) -> None:
    body = '{"weight": ' + "[" * 50_000 + "]" * 50_000 + "}"  # 100 kB, well under the 1 MiB body limit
    status, ctype, doc = await request(admin, "POST", f"/api/v1/endpoints/{UP}/{B}/weight", data=body,
                                       headers={"Content-Type": "application/json"})
    assert (status, ctype) == (400, "application/json") and "error" in doc
    assert source.ups[UP].endpoints[B].override is None


async def test_unknown_api_routes_and_wrong_methods_are_json_errors(admin: AdminServer) -> None:
    """Under /api/ every answer is JSON, an unknown operation or a wrong method included (aiohttp's own
    pages are plain text, which the dashboard's resp.json() cannot read); the dashboard's paths keep
    aiohttp's pages."""
    status, ctype, doc = await request(admin, "POST", f"/api/v1/endpoints/{UP}/{B}/explode", data="{}",
                                       headers={"Content-Type": "application/json"})
    assert (status, ctype) == (404, "application/json") and "no such route" in doc["error"]
    status, ctype, doc = await request(admin, "DELETE", "/api/v1/state")
    assert (status, ctype) == (405, "application/json") and "method not allowed" in doc["error"]
    status, ctype, _ = await request(admin, "GET", "/no-such-page")
    assert status == 404 and ctype != "application/json"


@pytest.mark.parametrize("body", ['{"weight": NaN}', '{"weight": Infinity}', '{"weight": -0.0}',
                                  '{"weight": 3.0}', '{"weight": 1e3}', '{"weight": true}',
                                  '{"weight": 1001}',
                                  '{"weight": ' + "9" * 5000 + "}", b'{"weight": "\xff"}', "null", "[3]",
                                  '{"weight": {"$gt": 0}}', '{"weight": 3} trailing'])
async def test_odd_weight_bodies_are_json_400s(admin: AdminServer, source: FakeSource, body: str) -> None:
    status, ctype, doc = await request(admin, "POST", f"/api/v1/endpoints/{UP}/{B}/weight", data=body,
                                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert (status, ctype) == (400, "application/json") and doc["error"]
    assert source.ups[UP].endpoints[B].override is None


async def test_encoded_names_resolve_and_unknown_ones_are_404(admin: AdminServer, source: FakeSource) -> None:
    encoded = "/api/v1/endpoints/default%2Fweb%2Fhttp/127.0.0.1%3A9001/drain"
    status, _, doc = await request(admin, "POST", encoded, json={})
    assert status == 200 and doc["endpoints"][0]["id"] == A and source.ups[UP].endpoints[A].drained
    for path in (f"/api/v1/endpoints/{UP}/127.0.0.1:9003/undrain", "/api/v1/endpoints/default/nope/x/drain",
                 f"/api/v1/endpoints/{UP}/127.0.0.1/drain"):
        status, ctype, doc = await request(admin, "POST", path, json={})
        assert (status, ctype) == (404, "application/json") and doc["error"], path
    assert source.ups[UP].endpoints[A].drained


# -- auth ----------------------------------------------------------------------------------------------------


async def test_the_token_guards_every_data_path_whatever_its_spelling(source: FakeSource) -> None:
    server = AdminServer(source, "127.0.0.1", 0, token="s3cret", tick=3600)
    await server.start()
    try:
        for path in ("/static/%2E%2E/api/v1/state", "/static/../api/v1/state", "//api/v1/state",
                     "/healthz/../api/v1/state", "/metrics?token=s3cret", "/api/v1/events", "/api/v1/raw",
                     "/api/v1/explain?lb=web", "/api/v1/history", "/api/v1/config"):
            status, _, _ = await request(server, "GET", path)
            assert status == 401, path
        for given in ("Basic s3cret", "s3cret", "Bearer s3cre", "Bearer s3cret2", "Bearer s3cret extra",
                      "Bearer"):
            status, _, _ = await request(server, "GET", "/metrics", headers={"Authorization": given})
            assert status == 401, given
        status, _, _ = await request(server, "GET", "/metrics", headers={"Authorization": "bearer  s3cret"})
        assert status == 200  # the scheme is case-insensitive (RFC 9110 11.1)
        status, _, _ = await request(server, "POST", f"/api/v1/endpoints/{UP}/{A}/drain", json={},
                                     headers={"Authorization": "Bearer wrong"})
        assert status == 401 and not source.ups[UP].endpoints[A].drained
    finally:
        await server.stop()


# -- explain, drain in flight, the event stream, metrics (verified correct) ----------------------------------


@pytest.mark.parametrize("policy", [
    {"strategy": {"type": "WeightedRoundRobin"}}, {"strategy": {"type": "Random"}},
    {"strategy": {"type": "PowerOfTwoChoices"}}, {"strategy": {"type": "PeakEWMA"}},
    {"strategy": {"type": "Maglev", "hashOn": {"header": "X-User"}}},
])
async def test_explain_names_the_very_next_pick(policy: dict[str, Any]) -> None:
    backends = await start_backends("a", "b", "c")
    endpoints = [dataclasses.replace(b.endpoint, weight=w) for b, w in zip(backends, (3, 2, 1), strict=True)]
    by_id = {b.endpoint.id: b.name for b in backends}
    async with Harness(make_state(endpoints, policy=policy)) as h:
        server = AdminServer(RuntimeSource(h.proxy), "127.0.0.1", 0, tick=3600)
        await server.start()
        client = await h.connect()
        try:
            for i in range(10):
                _, _, doc = await request(server, "GET", f"/api/v1/explain?lb=default/web&hash_key=u{i % 3}")
                predicted = by_id[doc["upstreams"][0]["next_pick"]]
                assert (await client.request(headers=f"X-User: u{i % 3}\r\n")).text == predicted, i
        finally:
            client.close()
            await server.stop()
    for b in backends:
        await b.close()


async def test_drain_lets_the_request_in_flight_finish_and_sends_new_ones_elsewhere() -> None:
    backends = await start_backends("a", "b")
    a = backends[0]
    async with Harness(make_state(backends)) as h:
        server = AdminServer(RuntimeSource(h.proxy), "127.0.0.1", 0, tick=3600)
        await server.start()
        slow = await h.connect()
        try:
            await slow.send(b"GET /slow?ms=400 HTTP/1.1\r\nHost: example.com\r\n\r\n")  # round robin: a first
            await asyncio.sleep(0.1)
            status, _, doc = await request(server, "POST", f"/api/v1/endpoints/{UP}/{a.endpoint.id}/drain",
                                           json={})
            assert status == 200 and doc["endpoints"][0]["in_flight"] == 1
            assert doc["endpoints"][0]["health"] == "draining"
            client = await h.connect()
            assert {(await client.request()).text for _ in range(4)} == {"b"}
            client.close()
            done = await slow.response(timeout=3)
            assert (done.status, done.text) == (200, "a")
            _, _, rows = await request(server, "GET", "/api/v1/endpoints")
            assert {r["id"]: r["in_flight"] for r in rows["endpoints"]}[a.endpoint.id] == 0
        finally:
            slow.close()
            await server.stop()
    for b in backends:
        await b.close()


async def test_event_streams_end_with_their_clients(source: FakeSource) -> None:
    server = AdminServer(source, "127.0.0.1", 0, tick=0.05)
    await server.start()
    before = set(asyncio.all_tasks())
    try:
        for _ in range(3):
            async with aiohttp.ClientSession() as s, s.get(server.url + "/api/v1/events") as r:
                assert (await asyncio.wait_for(r.content.readline(), 2)).startswith(b"event: state")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"event: state"), 2)
        writer.transport.abort()  # gone without a word
        for _ in range(40):
            if server._watchers == 0 and set(asyncio.all_tasks()) <= before:
                break
            await asyncio.sleep(0.05)
        assert server._watchers == 0 and set(asyncio.all_tasks()) - before == set()
    finally:
        await server.stop()


async def test_metric_labels_are_escaped_and_scrapes_agree() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    odd = 'de"f\\ault/we\nb/http'  # a name a YAML file may hold
    source = FakeSource({odd: [(A, 1)]})
    for latency in (0.003, 0.02, 0.4):
        source.serve(odd, latency=latency)
    server = AdminServer(source, "127.0.0.1", 0, tick=3600)
    await server.start()
    try:
        texts = await asyncio.gather(*(request(server, "GET", "/metrics") for _ in range(8)))
    finally:
        await server.stop()
    assert len({t[2] for t in texts}) == 1  # concurrent scrapes read the same values
    families = {f.name: f for f in text_string_to_metric_families(texts[0][2])}
    in_flight = families["steelyard_endpoint_in_flight"].samples[0]
    assert in_flight.labels == {"endpoint": A, "load_balancer": odd.rsplit("/", 1)[0], "upstream": odd}
    hist = {s.name.rsplit("_", 1)[-1] if "_bucket" not in s.name else s.labels["le"]: s.value
            for s in families["steelyard_request_duration_seconds"].samples}
    assert hist["count"] == hist["+Inf"] == 3 and hist["sum"] == pytest.approx(0.423)
