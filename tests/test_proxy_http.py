"""HTTP proxying end to end on 127.0.0.1: forwarding, keep-alive, pipelining, framing, routing, errors."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time

import pytest
import uvloop

from proxy_support import Harness, make_state, start_backends, without_date
from steelyard.proxy.http import failure_log

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def test_get_is_forwarded_and_connection_kept_alive() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        for _ in range(3):
            r = await client.request("GET", "/x")
            assert r.status == 200 and r.body == b"a"
            assert r.header("X-Backend") == "a"
        assert a.requests == [("GET", "/x")] * 3
        assert a.connections == 1  # the upstream connection was pooled and reused
        client.close()
    await a.close()


async def test_round_robin_spreads_over_backends() -> None:
    backends = await start_backends("a", "b", "c")
    async with Harness(make_state(backends)) as h:
        client = await h.connect()
        names = [(await client.request()).text for _ in range(6)]
        assert names == ["a", "b", "c", "a", "b", "c"]
        client.close()
    for b in backends:
        await b.close()


async def test_pipelined_requests_are_answered_in_order() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        await client.send(b"GET /slow?ms=150 HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                          b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n")
        r1, r2, r3 = await client.responses(3)
        assert (r1.status, r1.body) == (200, b"a")
        assert (r2.status, r2.body) == (200, b"hello")
        assert r3.status == 200 and r3.body.startswith(b"GET /headers HTTP/1.1")
        assert a.requests == [("GET", "/slow"), ("POST", "/echo"), ("GET", "/headers")]
        client.close()
    await a.close()


async def test_chunked_request_is_reframed_and_chunked_response_forwarded() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = await client.response()
        assert (r.status, r.body) == (200, b"abcde")
        assert b"Transfer-Encoding: chunked" in a.heads[-1]
        r = await client.request("GET", "/chunked?n=3")
        assert r.body == b"part-0;part-1;part-2;"
        assert r.header("Transfer-Encoding") == "chunked"
        assert r.header("Trailer") is None  # hop-by-hop, and trailers are dropped
        # the connection is still usable afterwards
        assert (await client.request()).status == 200
        client.close()
    await a.close()


async def test_close_delimited_response_is_rechunked_for_http11_and_closed_for_http10() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        r = await client.request("GET", "/eof")
        assert r.body == b"until-close" and r.header("Transfer-Encoding") == "chunked"
        assert (await client.request()).body == b"a"
        client.close()
        client = await h.connect()
        await client.send(b"GET /eof HTTP/1.0\r\n\r\n")
        assert await client.closed()  # the end of the connection ends the body for HTTP/1.0
        head, _, body = bytes(client.raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and body == b"until-close"
    await a.close()


async def test_head_204_and_304_have_no_body_and_keep_the_connection() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        await client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0)
        # httptools cannot know the request was HEAD: read the head bytes directly
        data = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert data.startswith(b"HTTP/1.1 200") and b"Content-Length: 1\r\n" in data
        r = await client.request("GET", "/status/204")
        assert r.status == 204 and r.body == b"" and r.header("Content-Length") is None
        r = await client.request("GET", "/status/304")
        assert r.status == 304 and r.body == b""
        r = await client.request("GET", "/")
        assert (r.status, r.body) == (200, b"a")
        client.close()
    await a.close()


async def test_expect_100_continue_is_forwarded() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        await client.send(b"POST /continue HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await client.send(b"data")
        r = await client.response()
        assert (r.status, r.body) == (200, b"data")
        client.close()
    await a.close()


async def test_upgrade_tunnels_bytes_both_ways_with_half_close() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        await client.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Upgrade: websocket" in head and b"Connection: Upgrade" in head
        await client.send(b"\x81\x05hello")
        assert await asyncio.wait_for(client.reader.readexactly(7), 5) == b"\x81\x05hello"
        await client.send(b"more")
        assert await asyncio.wait_for(client.reader.readexactly(4), 5) == b"more"
        client.writer.write_eof()  # half-close: the backend sees EOF, answers with its own EOF
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
        assert h.proxy.stats.tunnels == 1
        client.close()
    await a.close()


async def test_only_websocket_upgrades_are_tunnelled() -> None:
    """h2c (or any Upgrade but websocket) is not tunnelled, which would let a client bypass path routing
    through the endpoint: the request goes as a plain one, without Upgrade nor `upgrade` in Connection, and
    the connection carries on with the next request (its body, if any, forwarded as usual)."""
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        h2c = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAA\r\n"
        await client.send(b"GET /headers HTTP/1.1\r\nHost: x\r\n" + h2c + b"\r\n"
                          b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = await client.responses(2)
        assert first.status == 200 and first.body.startswith(b"GET /headers HTTP/1.1\r\n")
        sent = first.body.lower()
        assert b"upgrade" not in sent and b"http2-settings" not in sent and b"\r\nconnection:" not in sent
        assert (second.status, second.body) == (200, b"a")
        # with a body, by length or chunked: the body is forwarded, then the next request is read
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + h2c + b"Content-Length: 5\r\n\r\nhello"
                          b"POST /echo HTTP/1.1\r\nHost: x\r\n" + h2c
                          + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                          b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        r1, r2, r3 = await client.responses(3)
        assert [(r.status, r.body) for r in (r1, r2, r3)] == [(200, b"hello"), (200, b"abcde"), (200, b"a")]
        # a body split across reads, after the head
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + h2c + b"Content-Length: 6\r\n\r\nsp")
        await asyncio.sleep(0.05)
        await client.send(b"lit!")
        assert (await client.response()).body == b"split!"
        # websocket in a list with another protocol is not a websocket upgrade either
        both = "Connection: upgrade\r\nUpgrade: websocket, h2c\r\n"
        r = await client.request("GET", "/headers", headers=both)
        assert r.status == 200 and b"upgrade" not in r.body.lower()
        # an endpoint that switches protocols anyway is not followed: 502
        await client.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
        r = await client.response()
        assert r.status == 502 and r.text.endswith("from the endpoint (unexpected protocol switch)\n")
        assert h.proxy.stats.tunnels == 0
        client.close()
        # websocket, in any case, is tunnelled as before
        tunnel = await h.connect()
        await tunnel.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n\r\n")
        head = await asyncio.wait_for(tunnel.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        await tunnel.send(b"ping")
        assert await asyncio.wait_for(tunnel.reader.readexactly(4), 5) == b"ping"
        assert b"Upgrade: WebSocket\r\n" in a.heads[-1]
        tunnel.close()
    await a.close()


async def test_request_head_is_regenerated_with_forwarding_fields() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        r = await client.request("GET", "/headers?q=1", host="Shop.Example:8080", headers=(
            "Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
            "Proxy-Connection: keep-alive\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
            "X-Custom: kept\r\n"))
        head = r.body.decode().lower()
        assert head.startswith("get /headers?q=1 http/1.1\r\nhost: shop.example:8080\r\n")
        for gone in ("x-secret", "keep-alive", "te:", "proxy-connection", "connection:", "https"):
            assert gone not in head
        assert "x-forwarded-for: 1.2.3.4, 127.0.0.1\r\n" in head
        assert "x-forwarded-proto: http\r\n" in head
        assert "x-forwarded-host: shop.example:8080\r\n" in head
        assert "x-custom: kept\r\n" in head
        assert head.count("via:") == 1 and "via: 1.1 steelyard\r\n" in head  # RFC 9110 §7.6.3
        # The client's own Via is kept, ours comes after it; an HTTP/1.0 request says so.
        r = await client.request("GET", "/headers", headers="Via: 1.1 edge\r\n")
        assert r.text.index("Via: 1.1 edge\r\n") < r.text.index("Via: 1.1 steelyard\r\n")
        plain = await h.connect()
        await plain.send(b"GET /headers HTTP/1.0\r\nHost: x\r\n\r\n")
        assert "Via: 1.0 steelyard\r\n" in (await plain.response()).text
        # and the response: the backend's hop-by-hop Connection field is not passed on
        r = await client.request("GET", "/")
        assert r.header("Connection") is None and r.header("X-Backend") == "a"
        client.close()
    await a.close()


async def test_pipelined_local_answer_after_a_proxied_one_keeps_the_order() -> None:
    """A proxied response waits for the end of the loop's pass (ProxyServer.flush_later); a local answer
    to the next pipelined request, written at once, must still come after it."""
    (web,) = await start_backends("web")
    async with Harness(make_state([web], hosts=("shop.example",))) as h:
        client = await h.connect()
        await client.send(b"GET /a HTTP/1.1\r\nHost: shop.example\r\n\r\n"
                          b"GET /b HTTP/1.1\r\nHost: nowhere.example\r\n\r\n"
                          b"GET /c HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        r1, r2, r3 = await client.responses(3)
        assert (r1.status, r1.text) == (200, "web")
        assert r2.status == 404 and "nowhere.example" in r2.text
        assert (r3.status, r3.text) == (200, "web")
        assert web.requests == [("GET", "/a"), ("GET", "/c")]
        client.close()
    await web.close()


async def test_a_pooled_connection_closed_under_a_request_is_replaced_once() -> None:
    """The endpoint closes a kept-alive connection just as a request goes out on it (its keep-alive timeout
    racing ours): a bodiless idempotent request goes again on a fresh connection to the same endpoint, even
    with one endpoint and no retries configured; anything else gets the 502 it always got."""
    (a,) = await start_backends("a")
    state = make_state([a], policy={"retries": {"attempts": 0}})
    async with Harness(state) as h:
        client = await h.connect()
        assert (await client.request("GET", "/first")).status == 200  # the connection is now pooled
        r = await client.request("GET", "/close-reused")
        assert (r.status, r.text) == (200, "a")
        assert a.connections == 2 and a.requests[-2:] == [("GET", "/close-reused")] * 2
        assert h.proxy.stats.retries == 1
        # A request with a body is not sent twice: its body is gone.
        r = await client.request("PUT", "/close-reused", body=b"x")
        assert r.status == 502
        # Nor is a non-idempotent one, even without a body.
        client = await h.connect()
        assert (await client.request("GET", "/first")).status == 200
        r = await client.request("POST", "/close-reused")
        assert r.status == 502
        # And a fresh connection that closes is the endpoint's failure: 502, not resent.
        client = await h.connect()
        r = await client.request("GET", "/close")
        assert r.status == 502
        client.close()
    await a.close()


async def test_routing_by_host_and_longest_segment_prefix() -> None:
    from steelyard.config.desired import Route, Upstream

    api, web, other = await start_backends("api", "web", "other")
    base = make_state([web], hosts=("shop.example",), prefix="/", key="default/web/http")
    spec = base.upstreams["default/web/http"].policy
    api_up = Upstream("default/api/http", "default/api", "http", base.upstreams["default/web/http"].protocol,
                      spec, None, (api.endpoint,))
    other_up = Upstream("default/other/http", "default/other", "http", api_up.protocol, spec, None,
                        (other.endpoint,))
    state = make_state([web], hosts=("shop.example",), prefix="/", extra_routes=[
        (api_up, Route(hosts=("shop.example",), path_prefix="/api", upstream=api_up.key)),
        (other_up, Route(hosts=(), path_prefix="/other", upstream=other_up.key)),
    ])
    async with Harness(state) as h:
        client = await h.connect()
        assert (await client.request("GET", "/api/v1", host="SHOP.example:80")).text == "api"
        assert (await client.request("GET", "/api?x", host="shop.example")).text == "api"
        assert (await client.request("GET", "/apis", host="shop.example")).text == "web"
        assert (await client.request("GET", "/other/x", host="any.example")).text == "other"
        r = await client.request("GET", "/nothing", host="any.example")
        assert r.status == 404 and "no route" in r.text and "any.example" in r.text
        # Steelyard is the origin of its own 4xx: it dates it (RFC 9110 §6.6.1), in IMF-fixdate.
        from email.utils import parsedate_to_datetime
        date = r.header("Date")
        assert date is not None and date.endswith(" GMT")
        assert abs(parsedate_to_datetime(date).timestamp() - time.time()) < 5
        assert (await client.request("GET", "/", host="shop.example")).text == "web"  # still open
        client.close()
    for b in (api, web, other):
        await b.close()


async def test_no_usable_endpoint_is_503_naming_the_load_balancer() -> None:
    from steelyard.config.desired import BackendEndpoint

    state = make_state([BackendEndpoint("127.0.0.1", 9, weight=0)], key="shop/front/http")
    async with Harness(state) as h:
        client = await h.connect()
        r = await client.request()
        assert r.status == 503
        assert r.text.startswith("steelyard: load balancer shop/front: ") and "\n" not in r.text.strip()
        assert (await client.request()).status == 503  # the connection is kept: the request was whole
        client.close()


async def _free_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "steelyard.proxy" and r.levelno == logging.WARNING]


async def test_connect_refused_is_502_and_slow_endpoint_is_504(caplog: pytest.LogCaptureFixture) -> None:
    """The answer names the load balancer and a generic reason, never the endpoint's address or the OS
    error: those go to the log."""
    from steelyard.config.desired import BackendEndpoint

    caplog.set_level(logging.WARNING, logger="steelyard.proxy")
    failure_log.clear()
    dead = BackendEndpoint("127.0.0.1", await _free_port())
    async with Harness(make_state([dead], policy={"retries": {"attempts": 0}})) as h:
        client = await h.connect()
        r = await client.request()
        assert r.status == 502
        reason = "the endpoint refused or failed the connection"
        assert r.text == f"steelyard: load balancer default/web: {reason}\n"
        assert "127.0.0.1" not in r.text and str(dead.port) not in r.text
        line = f"load balancer default/web: endpoint {dead.id}: {reason} (Connection refused)"
        assert line in _logged(caplog)
        client.close()
    (a,) = await start_backends("a")
    policy = {"timeouts": {"request": "300ms"}, "retries": {"attempts": 0}}
    async with Harness(make_state([a], policy=policy)) as h:
        client = await h.connect()
        r = await client.request("GET", "/slow?ms=3000")
        assert r.status == 504
        assert r.text == "steelyard: load balancer default/web: the endpoint did not answer within 0.3s\n"
        assert str(a.port) not in r.text
        line = f"load balancer default/web: endpoint {a.endpoint.id}: the endpoint did not answer within 0.3s"
        assert line in _logged(caplog)
        client.close()
    await a.close()


async def test_endpoint_failures_are_logged_at_most_once_a_second_per_endpoint_and_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    """A dead endpoint under load: one log line, then one a second at most, counting those held back."""
    from steelyard.config.desired import BackendEndpoint

    caplog.set_level(logging.WARNING, logger="steelyard.proxy")
    failure_log.clear()
    dead = BackendEndpoint("127.0.0.1", await _free_port())
    async with Harness(make_state([dead], policy={"retries": {"attempts": 0}})) as h:
        client = await h.connect()
        for _ in range(20):
            assert (await client.request()).status == 502
        lines = [m for m in _logged(caplog) if dead.id in m]
        assert len(lines) == 1 and "more since the last line" not in lines[0]
        await asyncio.sleep(1.1)
        assert (await client.request()).status == 502
        lines = [m for m in _logged(caplog) if dead.id in m]
        assert len(lines) == 2 and lines[1].endswith(" [19 more since the last line]"), lines
        client.close()


async def test_a_client_that_stops_sending_its_body_gets_408_and_the_endpoint_is_not_blamed() -> None:
    """A slow client is not a failing endpoint: with outlier detection ejecting after two failures, clients
    that send part of a body and go silent each get 408 (and close) when the idle timeout fires; the
    endpoint counts no failure, is not ejected, and has nothing left in flight."""
    (a,) = await start_backends("a")
    policy = {"outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "30s",
                                   "maxEjectionPercent": 50},
              "timeouts": {"request": "300ms", "idle": "300ms"}}
    async with Harness(make_state([a], policy=policy)) as h:
        runtime = h.registry.get("default/web/http")
        assert runtime is not None
        for _ in range(3):
            client = await h.connect()
            await client.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            r = await client.response(timeout=5)
            assert (r.status, r.header("Connection")) == (408, "close"), r.text
            assert r.text == "steelyard: no byte of the request body for 0.3s\n"
            assert await client.closed()
        assert a.requests == [("POST", "/x")] * 3  # the heads went upstream: the exchanges were abandoned
        (row,) = runtime.tracker.describe(runtime.clock())
        assert (row["state"], row["ejections"], row["consecutive_failures"]) == ("healthy", 0, 0), row
        stats = runtime.stats[a.endpoint.id]
        assert (stats.failures, stats.in_flight) == (0, 0)
        assert h.proxy.stats.timeouts == 3 and h.proxy.stats.local_responses == {408: 3}
        client = await h.connect()
        assert (await client.request()).status == 200  # still in service
        # A client waiting, as it said it would, for the endpoint's 100 (Continue) is not late: 504.
        await client.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                          b"Expect: 100-continue\r\n\r\n")
        assert (await client.response(timeout=5)).status == 504
        assert runtime.stats[a.endpoint.id].failures == 1
        client.close()
    await a.close()


async def test_an_endpoint_that_does_not_read_the_body_is_still_the_one_timed_out() -> None:
    """The body is incomplete because the endpoint stopped reading it (the proxy stopped reading the client
    when its upstream buffer filled): 504, the endpoint's failure, not the client's 408."""
    (a,) = await start_backends("a")
    policy = {"timeouts": {"request": "300ms"}, "retries": {"attempts": 0}}
    async with Harness(make_state([a], policy=policy)) as h:
        runtime = h.registry.get("default/web/http")
        assert runtime is not None
        client = await h.connect()
        size = 256 << 20
        client.writer.write(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)

        async def upload() -> None:
            block = b"u" * (1 << 20)
            for _ in range(size >> 20):
                await client.send(block)

        sender = asyncio.create_task(upload())
        r = await client.response(timeout=10)
        assert r.status == 504, r.text
        assert runtime.stats[a.endpoint.id].failures == 1
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        a.release.set()
        client.close()
    await a.close()


async def test_malformed_upstream_response_is_502(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="steelyard.proxy")
    failure_log.clear()
    (a,) = await start_backends("a")
    a.mode = "garbage"
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        r = await client.request()
        assert r.status == 502
        assert r.text == "steelyard: load balancer default/web: invalid response from the endpoint\n"
        # llhttp's reason and the address are for the log
        assert (f"load balancer default/web: endpoint {a.endpoint.id}: invalid response from the endpoint "
                "(Invalid status code)" in _logged(caplog)), _logged(caplog)
        client.close()
    await a.close()


async def test_retry_goes_to_another_endpoint_on_connect_failure_and_reset() -> None:
    from steelyard.config.desired import BackendEndpoint

    good, resetting = await start_backends("good", "resetting")
    resetting.mode = "reset"
    dead = BackendEndpoint("127.0.0.1", await _free_port())
    async with Harness(make_state([dead, resetting, good], policy={"retries": {"attempts": 2}})) as h:
        client = await h.connect()
        for _ in range(3):
            r = await client.request()
            assert (r.status, r.text) == (200, "good")
        assert h.proxy.stats.retries >= 2  # the first two requests met a bad endpoint first
        client.close()
    await good.close()
    await resetting.close()


async def test_no_retry_for_a_non_idempotent_request_whose_body_was_sent() -> None:
    good, resetting = await start_backends("good", "resetting")
    resetting.mode = "reset"
    async with Harness(make_state([resetting, good], policy={"retries": {"attempts": 2}})) as h:
        client = await h.connect()
        r = await client.request("POST", "/echo", body=b"payment")
        assert r.status == 502 and "closed the connection before answering" in r.text
        assert good.requests == []  # never replayed elsewhere
        client.close()
    await good.close()
    await resetting.close()


async def test_retry_on_listed_status_drops_the_first_response_whole() -> None:
    good, failing = await start_backends("good", "failing")
    failing.mode = 503
    policy = {"retries": {"attempts": 1, "on": ["503"]}}
    async with Harness(make_state([failing, good], policy=policy)) as h:
        client = await h.connect()
        r = await client.request("GET", "/")
        assert (r.status, r.text) == (200, "good")
        assert failing.requests == [("GET", "/")]
        # with no other endpoint left the real 503 is passed on, not invented
        failing_only = make_state([failing], policy=policy)
        h.apply(failing_only)
        r = await client.request("GET", "/")
        assert (r.status, r.text) == (503, "failing 503")
        client.close()
    await good.close()
    await failing.close()


async def test_reload_keeps_runtime_and_pool_for_endpoints_that_stay() -> None:
    a, b = await start_backends("a", "b")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        assert (await client.request()).text == "a"
        runtime = h.registry.get("default/web/http")
        pool = h.proxy.pools[a.endpoint.id]
        h.apply(make_state([a, b]))
        assert h.registry.get("default/web/http") is runtime
        assert h.proxy.pools[a.endpoint.id] is pool
        texts = {(await client.request()).text for _ in range(4)}
        assert texts == {"a", "b"}
        h.apply(make_state([b]))
        assert pool.retired and a.endpoint.id not in h.proxy.pools
        assert {(await client.request()).text for _ in range(3)} == {"b"}
        assert a.connections == 1
        client.close()
    await a.close()
    await b.close()


async def test_shutdown_finishes_in_flight_request_with_connection_close() -> None:
    (a,) = await start_backends("a")
    h = Harness(make_state([a]))
    await h.__aenter__()
    busy = await h.connect()
    idle = await h.connect()
    assert (await idle.request()).status == 200
    await busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.1)
    assert h.server is not None
    h.server.close()
    await h.proxy.shutdown(5.0)
    r = await busy.response()
    assert r.status == 200 and r.header("Connection") == "close"
    assert await busy.closed() and await idle.closed()
    await a.close()


async def test_stalled_response_and_idle_tunnel_are_cut_after_the_idle_timeout() -> None:
    (a,) = await start_backends("a")
    policy = {"timeouts": {"idle": "300ms"}}
    async with Harness(make_state([a], policy=policy)) as h:
        client = await h.connect()
        await client.send(b"GET /partial HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await client.closed(timeout=5)  # never a hang
        assert bytes(client.raw).endswith(b"\r\n\r\nabc")
        tunnel = await h.connect()
        await tunnel.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert await tunnel.closed(timeout=5)
        assert bytes(tunnel.raw).startswith(b"HTTP/1.1 101 ")
        assert h.proxy.stats.timeouts == 2
    await a.close()


async def test_backend_killed_under_load_gives_no_client_error() -> None:
    a, b = await start_backends("a", "b")
    async with Harness(make_state([a, b], policy={"retries": {"attempts": 2}})) as h:
        stop = asyncio.Event()
        statuses: list[int] = []

        async def client_loop() -> None:
            client = await h.connect()
            while not stop.is_set():
                statuses.append((await client.request()).status)
            client.close()

        clients = [asyncio.create_task(client_loop()) for _ in range(10)]
        while len(statuses) < 300:
            await asyncio.sleep(0.01)
        b.kill()
        killed_at = len(statuses)
        while len(statuses) < killed_at + 300:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*clients)
        assert set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} errors"
        assert h.proxy.stats.retries > 0
    await a.close()


async def test_weight_header_and_outcomes_reach_the_tracker_once_per_request() -> None:
    (a,) = await start_backends("a")
    policy = {"dynamicWeights": {"mode": "Header"}}
    async with Harness(make_state([a], policy=policy)) as h:
        runtime = h.registry.get("default/web/http")
        assert runtime is not None
        outcomes: list[tuple[bool, float | None]] = []
        original = runtime.tracker.on_outcome

        def spy(endpoint_id: str, now: float, *, ok: bool, latency: float,
                weight_hint: float | None = None) -> bool:
            outcomes.append((ok, weight_hint))
            return original(endpoint_id, now, ok=ok, latency=latency, weight_hint=weight_hint)

        runtime.tracker.on_outcome = spy  # type: ignore[method-assign]
        client = await h.connect()
        r = await client.request("GET", "/weight?w=7")
        assert r.header("Steelyard-Weight") == "7"  # passed on to the client as well
        await client.request("GET", "/status/500")
        await client.request("GET", "/")
        assert outcomes == [(True, 7.0), (False, None), (True, None)]
        stats = runtime.stats[a.endpoint.id]
        assert (stats.requests, stats.in_flight, stats.failures) == (3, 0, 1)
        assert stats.by_class[2] == 2 and stats.by_class[5] == 1
        client.close()
    await a.close()


async def test_connection_persistence_follows_the_client() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()  # HTTP/1.0 asking for keep-alive gets it, said explicitly
        for _ in range(2):
            await client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = await client.response()
            assert (r.status, r.body, r.header("Connection")) == (200, b"a", "keep-alive")
        client.close()
        client = await h.connect()  # HTTP/1.1 asking to close
        r = await client.request(headers="Connection: close\r\n")
        assert r.header("Connection") == "close"
        assert await client.closed()
        # an absolute-form target: routed and forwarded in origin-form, its authority as Host
        client = await h.connect()
        await client.send(b"GET http://Other.Example:8080/headers?x=1 HTTP/1.1\r\nHost: ignored\r\n\r\n")
        r = await client.response()
        assert r.body.startswith(b"GET /headers?x=1 HTTP/1.1\r\nHost: Other.Example:8080\r\n")
        client.close()
    await a.close()


# -- the response head: copied from the bytes read for the common response, hop-by-hop fields removed --------


class _ScriptedBackend:
    """Answers each request with the next scripted response: byte pieces written one by one, a pause
    between them (separate reads at the proxy). A piece None closes the connection."""

    def __init__(self, script: list[list[bytes | None]]):
        self.script = list(script)
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.script:
                await reader.readuntil(b"\r\n\r\n")
                for piece in self.script.pop(0):
                    if piece is None:
                        writer.close()
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.02)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _scripted_state(port: int) -> object:
    from steelyard.config.desired import BackendEndpoint

    return make_state([BackendEndpoint("127.0.0.1", port)])


def _head(raw: bytes) -> bytes:
    """The first response head the client got, less the Date line the proxy added (the backends here
    send none: exactly one must be there)."""
    return without_date(raw[:raw.index(b"\r\n\r\n") + 4], 1)


_HOP_BY_HOP_HEADS = [
    ("plain", b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"),
    ("keep-alive-field", b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n"
                         b"Connection: Keep-Alive\r\n\r\n"),
    ("connection-named", b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nx-secret: s\r\n"
                         b"X-SECRET: t\r\nContent-Length: 2\r\n\r\n"),
    ("all-hop-by-hop", b"HTTP/1.1 200 OK\r\nPROXY-CONNECTION: keep-alive\r\nte: trailers\r\n"
                       b"Trailer: X-T\r\nUpgrade: h2c\r\ncontent-length:2\r\n\r\n"),
    ("lowercase-no-space", b"HTTP/1.1 200 OK\r\nconnection:keep-alive\r\ncontent-length:2  \r\n\r\n"),
    ("two-connection-lines", b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n"
                             b"Connection: X-Secret\r\nX-Secret: s\r\n\r\n"),
]


@pytest.mark.parametrize(("name", "head"), _HOP_BY_HOP_HEADS, ids=[c[0] for c in _HOP_BY_HOP_HEADS])
async def test_response_hop_by_hop_fields_never_reach_the_client(name: str, head: bytes) -> None:
    backend = _ScriptedBackend([
        [head + b"ok"],
        [b"HTTP/1.1 200 OK\r\nX-Connection: kept\r\nConnectionX: kept\r\nTEX: kept\r\n"
         b"Upgrade-Insecure: kept\r\nContent-Length: 3\r\nX-A:  v a l \r\n\r\nyes"],
    ])
    port = await backend.start()
    async with Harness(_scripted_state(port)) as h:
        client = await h.connect()
        r = await client.request()
        assert r.status == 200 and r.body == b"ok"
        sent = _head(bytes(client.raw))
        assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and sent.endswith(b"\r\nContent-Length: 2\r\n\r\n")
        lower = sent.lower()
        for gone in (b"\r\nconnection:", b"keep-alive", b"x-secret", b"\r\nte:", b"trailer", b"upgrade",
                     b"proxy-connection"):
            assert gone not in lower, (gone, sent)
        assert lower.count(b"content-length") == 1
        if name == "plain":
            assert sent == b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\n"
        # Names that only start like a hop-by-hop one are end-to-end: kept as sent, value spacing too.
        client.raw.clear()
        r = await client.request()
        assert r.body == b"yes"
        assert _head(bytes(client.raw)) == (
            b"HTTP/1.1 200 OK\r\nX-Connection: kept\r\nConnectionX: kept\r\nTEX: kept\r\n"
            b"Upgrade-Insecure: kept\r\nX-A:  v a l \r\nContent-Length: 3\r\n\r\n")
        client.close()
    assert backend.connections == 1  # the upstream connection was reused: framing kept
    await backend.close()


_SPLIT_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
                   b"Content-Length: 5\r\nX-End: e\r\n\r\nhello")


@pytest.mark.parametrize("cut", [5, 17, 30, 31, 60, len(_SPLIT_RESPONSE) - 7, len(_SPLIT_RESPONSE) - 6,
                                 len(_SPLIT_RESPONSE) - 5])
async def test_response_head_split_across_reads(cut: int) -> None:
    plain = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\nX-End: e\r\n\r\nok"
    backend = _ScriptedBackend([
        [_SPLIT_RESPONSE[:cut], _SPLIT_RESPONSE[cut:]],
        [plain[:cut // 2], plain[cut // 2:cut], plain[cut:]],
    ])
    port = await backend.start()
    async with Harness(_scripted_state(port)) as h:
        client = await h.connect()
        r = await client.request()
        assert r.body == b"hello"
        assert _head(bytes(client.raw)) == (
            b"HTTP/1.1 200 OK\r\nServer: s\r\nX-End: e\r\nContent-Length: 5\r\n\r\n")
        client.raw.clear()
        r = await client.request()
        assert r.body == b"ok"
        assert _head(bytes(client.raw)) == (
            b"HTTP/1.1 200 OK\r\nServer: s\r\nX-End: e\r\nContent-Length: 2\r\n\r\n")
        client.close()
    await backend.close()


_INTERIM_THEN_FINAL = (b"HTTP/1.1 100 Continue\r\n\r\n"
                       b"HTTP/1.1 200 OK\r\nConnection: X-S\r\nX-S: s\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize("pieces", [
    [_INTERIM_THEN_FINAL],
    [_INTERIM_THEN_FINAL[:58], _INTERIM_THEN_FINAL[58:]],
    [_INTERIM_THEN_FINAL[:17], _INTERIM_THEN_FINAL[17:]],
], ids=["one-read", "final-head-split", "interim-head-split"])
async def test_interim_then_final_response_heads(pieces: list[bytes]) -> None:
    backend = _ScriptedBackend([pieces])
    port = await backend.start()
    async with Harness(_scripted_state(port)) as h:
        client = await h.connect()
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        interim, final = await client.responses(2)
        assert (interim.status, final.status, final.body) == (100, 200, b"ok")
        assert without_date(client.raw, 1) == (b"HTTP/1.1 100 Continue\r\n\r\n"
                                               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        client.close()
    await backend.close()


async def test_a_second_response_in_the_same_read_is_dropped_with_the_connection() -> None:
    backend = _ScriptedBackend([
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
         b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Evil: 1\r\n\r\nevil!"],
    ])
    port = await backend.start()
    later = _ScriptedBackend([[b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"]])
    async with Harness(_scripted_state(port)) as h:
        client = await h.connect()
        r = await client.request()
        assert r.body == b"ok" and bytes(client.raw).count(b"HTTP/1.1") == 1
        await asyncio.sleep(0.1)
        assert b"evil" not in bytes(client.raw)
        h.apply(_scripted_state(await later.start()))
        assert (await client.request()).body == b"next"  # the client connection is still good
        client.close()
    await backend.close()
    await later.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n",  # invalid byte in a value
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\n",  # bare CR
    b"HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 2\r\n\r\n",  # bare LF
    b"HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 2\r\n\r\n",  # invalid byte in a name
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n",  # space before the colon
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",  # differing lengths
], ids=["obs-fold", "nul", "bare-cr", "bare-lf", "space-in-name", "space-before-colon", "two-lengths"])
async def test_invalid_response_heads_are_rejected_by_llhttp(head: bytes) -> None:
    backend = _ScriptedBackend([[head + b"ok"]])
    port = await backend.start()
    async with Harness(_scripted_state(port)) as h:
        client = await h.connect()
        r = await client.request()
        assert r.status == 502 and r.text.endswith(": invalid response from the endpoint\n")
        client.close()
    await backend.close()


async def test_too_many_response_fields_is_a_502(caplog: pytest.LogCaptureFixture) -> None:
    from steelyard.proxy import ProxyConfig

    caplog.set_level(logging.WARNING, logger="steelyard.proxy")
    failure_log.clear()
    head = b"HTTP/1.1 200 OK\r\n" + b"a:\r\n" * 21 + b"Content-Length: 2\r\n\r\n"
    backend = _ScriptedBackend([[head + b"ok"], [head.replace(b"a:\r\n" * 21, b"a:\r\n" * 19) + b"ok"]])
    port = await backend.start()
    async with Harness(_scripted_state(port), ProxyConfig(max_headers=20, sweep_interval=0.05)) as h:
        client = await h.connect()
        r = await client.request()
        # Steelyard's own reason may be shown (llhttp's may not, see above); the endpoint is logged
        reason = "invalid response from the endpoint (too many response header fields)"
        assert r.status == 502 and r.text == f"steelyard: load balancer default/web: {reason}\n"
        assert f"load balancer default/web: endpoint 127.0.0.1:{port}: {reason}" in _logged(caplog)
        client.close()
        client = await h.connect()
        assert (await client.request()).body == b"ok"  # 20 fields: allowed
        client.close()
    await backend.close()


async def test_stale_bytes_after_a_response_close_the_upstream_connection() -> None:
    # The backend answers the first request and adds the start of another head in the same read. The
    # response goes out; the connection is not pooled, so those bytes never meet the next exchange, which
    # gets a new connection (the script's second entry is served there).
    backend = _ScriptedBackend([
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 2"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"],
    ])
    port = await backend.start()
    async with Harness(_scripted_state(port)) as h:
        client = await h.connect()
        assert (await client.request()).body == b"ok"
        r = await client.request()
        assert (r.status, r.body) == (200, b"next")
        assert backend.connections == 2
        client.close()
    await backend.close()


_DATE_CASES = [
    # (backend head, how many Date lines the client must see, the backend's own line if it had one)
    ("none, common path", b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 2\r\n\r\n", None),
    ("none, chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", None),
    ("none, HTTP/1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", None),
    ("own", b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nContent-Length: 2\r\n\r\n",
     b"Date: Tue, 01 Jan 2030 00:00:00 GMT"),
    ("own, lowercase", b"HTTP/1.1 200 OK\r\ndate: yesterday\r\nContent-Length: 2\r\n\r\n",
     b"date: yesterday"),
    ("own, general path", b"HTTP/1.1 200 OK\r\nDATE: x\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\n",
     b"DATE: x"),
]


@pytest.mark.parametrize(("name", "head", "own"), _DATE_CASES, ids=[c[0] for c in _DATE_CASES])
async def test_a_response_without_date_gets_one_and_the_backends_own_is_kept(name: str, head: bytes,
                                                                            own: bytes | None) -> None:
    """RFC 9110 §6.6.1: a recipient with a clock MUST add Date to a response it forwards without one."""
    body = b"" if b"chunked" in head else b"ok"
    backend = _ScriptedBackend([[head + body]])
    port = await backend.start()
    async with Harness(_scripted_state(port)) as h:
        client = await h.connect()
        r = await client.request()
        assert r.status == 200 and r.body == b"ok"
        sent = bytes(client.raw[:client.raw.index(b"\r\n\r\n") + 4])
        dates = [line for line in sent.split(b"\r\n") if line.lower().startswith(b"date:")]
        if own is None:
            assert len(dates) == 1 and without_date(sent, 1)  # one IMF-fixdate, the proxy's
            when = email.utils.parsedate_to_datetime(dates[0][6:].decode())
            assert abs(when.timestamp() - time.time()) < 5
        else:
            assert dates == [own]
        client.close()
    await backend.close()
