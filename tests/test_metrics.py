"""/metrics after known traffic: the real proxy on 127.0.0.1 with stub backends, scraped over HTTP."""

from __future__ import annotations

from collections import Counter

import aiohttp
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from admin_fake import FakeSource
from proxy_support import Harness, make_state, start_backends
from steelyard.admin.runtime_source import RuntimeSource
from steelyard.admin.server import AdminServer
from steelyard.proxy import ProxyConfig
from steelyard.runtime.access_log import LATENCY_BUCKETS

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def scrape(server: AdminServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_request_counters_match_the_traffic_sent() -> None:
    backends = await start_backends("a", "b", "c")
    async with Harness(make_state(backends)) as h:
        source = RuntimeSource(h.proxy)
        source.record_reload(True, "test", "applied")
        admin = AdminServer(source, "127.0.0.1", 0, tick=3600)
        await admin.start()
        try:
            client = await h.connect()
            for path in ["/"] * 9 + ["/status/404"] * 3 + ["/status/503"] * 2:
                await client.request("GET", path)
            client.close()
            samples = await scrape(admin)
        finally:
            await admin.stop()
    for b in backends:
        await b.close()

    lb, up = "default/web", "default/web/http"
    for b in backends:
        sent = Counter("4xx" if p == "/status/404" else "5xx" if p == "/status/503" else "2xx"
                       for _, p in b.requests)
        for cls in ("2xx", "4xx", "5xx"):
            labels = {"load_balancer": lb, "upstream": up, "endpoint": b.endpoint.id, "code_class": cls}
            got = samples.get(("steelyard_requests_total", tuple(sorted(labels.items()))), 0)
            assert got == sent[cls], (b.name, cls)
        assert value(samples, "steelyard_endpoint_healthy", load_balancer=lb, upstream=up,
                     endpoint=b.endpoint.id) == 1
        assert value(samples, "steelyard_endpoint_effective_weight", load_balancer=lb, upstream=up,
                     endpoint=b.endpoint.id) == 1
    assert sum(len(b.requests) for b in backends) == 14
    assert value(samples, "steelyard_responses_total", code_class="2xx") == 9
    assert value(samples, "steelyard_responses_total", code_class="4xx") == 3
    assert value(samples, "steelyard_responses_total", code_class="5xx") == 2
    assert value(samples, "steelyard_config_reloads_total", result="ok") == 1
    assert value(samples, "steelyard_config_reloads_total", result="failed") == 0
    assert value(samples, "steelyard_config_last_reload_timestamp_seconds") > 1.7e9
    assert value(samples, "steelyard_retries_total") == 0
    assert value(samples, "steelyard_upstream_connect_errors_total") == 0
    # the client closed: no client connection may be counted active afterwards, the pools hold idle ones
    assert value(samples, "steelyard_connections", side="upstream", state="active") == 0
    assert value(samples, "steelyard_connections", side="upstream", state="idle") == 3


async def test_connect_errors_and_retries_are_counted() -> None:
    (a,) = await start_backends("a")
    await a.close()  # nothing listens there any more: connects are refused
    (b,) = await start_backends("b")
    async with Harness(make_state([a, b])) as h:
        source = RuntimeSource(h.proxy)
        admin = AdminServer(source, "127.0.0.1", 0, tick=3600)
        await admin.start()
        try:
            client = await h.connect()
            for _ in range(4):
                assert (await client.request()).text == "b"  # the refused connect is retried on b
            client.close()
            samples = await scrape(admin)
        finally:
            await admin.stop()
    await b.close()
    errors = value(samples, "steelyard_upstream_connect_errors_total")
    assert errors >= 1 and value(samples, "steelyard_retries_total") == errors
    web = {"load_balancer": "default/web", "upstream": "default/web/http"}
    assert value(samples, "steelyard_upstream_retries_total", **web) == errors
    assert value(samples, "steelyard_upstream_timeouts_total", **web) == 0
    assert value(samples, "steelyard_ready") == 0  # no reload recorded: not ready


async def test_histogram_buckets_are_cumulative() -> None:
    source = FakeSource({"default/web/http": [("127.0.0.1:9001", 1)]})
    for latency in (0.0001, 0.003, 0.003, 0.2, 99.0):
        source.serve("default/web/http", latency=latency)
    admin = AdminServer(source, "127.0.0.1", 0, tick=3600)
    await admin.start()
    try:
        samples = await scrape(admin)
    finally:
        await admin.stop()
    labels = {"load_balancer": "default/web", "upstream": "default/web/http", "endpoint": "127.0.0.1:9001"}

    def bucket(le: str) -> float:
        return value(samples, "steelyard_request_duration_seconds_bucket", le=le, **labels)

    assert bucket("0.0005") == 1 and bucket("0.005") == 3 and bucket("0.25") == 4
    assert bucket(repr(LATENCY_BUCKETS[-1])) == 4 and bucket("+Inf") == 5
    assert value(samples, "steelyard_request_duration_seconds_count", **labels) == 5
    assert value(samples, "steelyard_request_duration_seconds_sum", **labels) == pytest.approx(99.2061)


async def test_timeouts_are_counted_per_upstream_and_summed_over_workers() -> None:
    """A request timed out on one load balancer counts there, not on the other; a request head that never
    arrives has no upstream and counts only in the process's total. The supervisor's merge of several
    workers sums both per-upstream counters."""
    from steelyard.admin.aggregate import carry_upstreams, merge_upstreams
    from steelyard.config.desired import Route, Upstream
    from steelyard.model import BalancerPolicySpec, Protocol

    a, b = await start_backends("a", "b")
    slow_policy = BalancerPolicySpec.model_validate({"timeouts": {"request": "200ms"},
                                                     "retries": {"attempts": 0}})
    api = Upstream(key="default/api/http", load_balancer="default/api", port_name="http",
                   protocol=Protocol.HTTP, policy=slow_policy, policy_name=None, endpoints=(b.endpoint,))
    state = make_state([a], extra_routes=[(api, Route(hosts=(), path_prefix="/slow", upstream=api.key))])
    async with Harness(state, ProxyConfig(sweep_interval=0.05, header_timeout=0.3)) as h:
        source = RuntimeSource(h.proxy)
        admin = AdminServer(source, "127.0.0.1", 0, tick=3600)
        await admin.start()
        try:
            client = await h.connect()
            assert (await client.request(path="/slow?ms=2000")).status == 504
            assert (await client.request()).text == "a"
            client.close()
            silent = await h.connect()
            await silent.send(b"GET / HTTP/1.1\r\n")  # and nothing more: 408 at the header timeout
            assert (await silent.response(timeout=5)).status == 408
            silent.close()
            samples = await scrape(admin)
            views = source.upstreams()
        finally:
            await admin.stop()
    await a.close()
    await b.close()

    def timeouts(lb: str) -> float:
        return value(samples, "steelyard_upstream_timeouts_total", load_balancer=f"default/{lb}",
                     upstream=f"default/{lb}/http")

    assert (timeouts("api"), timeouts("web")) == (1, 0)
    assert value(samples, "steelyard_timeouts_total") == 2
    merged = {u.key: u for u in merge_upstreams([views, views])}
    assert (merged["default/api/http"].timeouts, merged["default/web/http"].timeouts) == (2, 0)
    carried = {u.key: u for u in carry_upstreams(list(merged.values()), [views])}
    assert carried["default/api/http"].timeouts == 3
