"""Timeouts, draining and graceful shutdown on real sockets (127.0.0.1): each timeout fires on a wait that
really stalls and never on an exchange that moves slowly but steadily, leaves no state behind (in-flight
counts, pooled connections), and endpoints leaving (reload, weight 0) or the process leaving (shutdown)
let in-flight exchanges finish.

Timeouts are short (a few hundred ms) and the sweep runs every 50 ms (Harness' default), so the margins
below are several sweeps wide either way; every wait is bounded by asyncio.wait_for."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import uvloop

from proxy_support import Harness, Scripted, eventually, make_state, start_backends
from steelyard.config.desired import BackendEndpoint
from steelyard.model import Protocol
from steelyard.proxy import ProxyConfig

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")

KEY = "default/web/http"


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def head_of(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


# -- the request timeout, the response idle timeout ------------------------------------------------------


async def test_a_slow_but_steady_download_outlives_the_request_and_idle_timeouts() -> None:
    """The request timeout bounds the wait for the response head, the idle timeout a silence: a body that
    keeps coming (a piece every 120 ms for 1.2 s) is neither, and arrives whole on a connection that stays."""
    pieces = 10

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /trickle"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (pieces * 1000))
                for i in range(pieces):
                    writer.write(b"%d" % i * 1000)
                    await writer.drain()
                    await asyncio.sleep(0.12)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    backend = await Scripted(trickle).start()
    policy = {"timeouts": {"request": "300ms", "idle": "400ms"}, "retries": {"attempts": 0}}
    async with Harness(make_state([backend.endpoint], policy=policy)) as h:
        client = await h.connect()
        r = await client.request("GET", "/trickle")
        assert r.status == 200 and r.body == b"".join(b"%d" % i * 1000 for i in range(pieces))
        assert h.proxy.stats.timeouts == 0
        assert (await client.request("GET", "/again")).body == b"ok"
        client.close()
    await backend.close()


async def test_a_504_releases_the_pick_and_never_reuses_the_connection() -> None:
    """LeastConnections, one endpoint that answers after the request timeout: the 504 reports the attempt
    (nothing left in flight, in the stats or in the strategy), the timed-out connection is closed, not
    pooled, and the next request goes on a fresh one (the late answer never reaches anybody)."""
    (a,) = await start_backends("a")
    policy = {"strategy": {"type": "LeastConnections"}, "timeouts": {"request": "300ms"},
              "retries": {"attempts": 0}}
    async with Harness(make_state([a], policy=policy)) as h:
        runtime = h.registry.get(KEY)
        assert runtime is not None
        client = await h.connect()
        r = await client.request("GET", "/slow?ms=900")
        assert r.status == 504 and r.header("Connection") is None  # the client connection is kept
        stats = runtime.stats[a.endpoint.id]
        assert (stats.in_flight, stats.failures) == (0, 1)
        assert runtime.strategy.describe()["in_flight"] == {a.endpoint.id: 0}
        pool = h.proxy.pools[a.endpoint.id]
        assert (pool.busy, pool.idle) == (0, [])
        assert await eventually(lambda: not a.writers)  # the proxy closed it
        await asyncio.sleep(0.7)  # past the moment the backend would have answered
        r = await client.request("GET", "/x")
        assert (r.status, r.text) == (200, "a")
        assert (pool.connects, pool.reuses, a.connections) == (2, 0, 2)
        assert stats.in_flight == 0 and h.proxy.in_flight() == 0
        client.close()
    await a.close()


async def test_a_retried_status_whose_body_stalls_is_timed_out() -> None:
    """retries.on lists 503: the endpoint answers a 503 head and 3 of its 100 body bytes, then nothing. The
    proxy drops that response whole (it will retry), so it waits for the rest of the body: that wait must
    end within the request timeout, the retry go to the other endpoint, and nothing stay in flight."""

    async def stalled_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        await reader.read()  # silent until the proxy closes

    stalled = await Scripted(stalled_503).start()
    (good,) = await start_backends("good")
    policy = {"timeouts": {"request": "300ms", "idle": "300ms"}, "retries": {"attempts": 1, "on": ["503"]}}
    try:
        async with Harness(make_state([stalled.endpoint, good], policy=policy)) as h:
            runtime = h.registry.get(KEY)
            assert runtime is not None
            clients = [await h.connect() for _ in range(2)]  # round robin: one of them meets the stalled one
            for client in clients:
                await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [await client.response(timeout=2) for client in clients]
            assert [r.status for r in answers] == [200, 200]
            assert await eventually(lambda: all(s.in_flight == 0 for s in runtime.stats.values()))
            for client in clients:
                client.close()
    finally:
        await stalled.close()
        await good.close()


async def test_a_100_continue_then_silence_is_answered_504() -> None:
    """An endpoint that sends 100 (Continue), reads the body, then says nothing: a final response may still
    follow a 1xx (RFC 9110 §15.2), so the request timeout gives the client a 504, not a cut connection."""

    async def continue_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await reader.readexactly(5)
        await reader.read()  # silent until the proxy closes

    backend = await Scripted(continue_then_silence).start()
    policy = {"timeouts": {"request": "300ms", "idle": "300ms"}}
    try:
        async with Harness(make_state([backend.endpoint], policy=policy)) as h:
            client = await h.connect()
            await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                              b"Content-Length: 5\r\n\r\n")
            assert (await client.response(timeout=2)).status == 100
            await client.send(b"hello")
            assert (await client.response(timeout=3)).status == 504
            client.close()
    finally:
        await backend.close()


# -- the header and keep-alive timeouts ---------------------------------------------------------------


async def test_a_head_dribbled_one_field_at_a_time_still_gets_408() -> None:
    """Slowloris: a field line every 80 ms keeps the client busy but the head never ends; the header
    timeout (400 ms) counts from the head's first byte, not from its latest one."""
    (a,) = await start_backends("a")
    config = ProxyConfig(header_timeout=0.4, sweep_interval=0.05)
    async with Harness(make_state([a]), config) as h:
        client = await h.connect()
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")

        async def dribble() -> None:
            for i in range(40):  # 3.2 s of fields, far past the timeout
                await client.send(b"X-Field-%d: v\r\n" % i)
                await asyncio.sleep(0.08)

        sender = asyncio.create_task(dribble())
        started = time.monotonic()
        try:
            r = await client.response(timeout=2.5)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        assert (r.status, r.header("Connection")) == (408, "close")
        assert 0.35 <= time.monotonic() - started < 2.0
        assert await client.closed(timeout=3)
        assert a.requests == []
        client.close()
    await a.close()


async def test_the_keepalive_timeout_counts_each_idle_period_from_its_start() -> None:
    """keepalive 0.5 s: requests 0.3 s apart (quicker than the sweep ever sees them in flight) keep the
    connection for 1.8 s; a request slower than the keep-alive timeout does not count as idle; then 0.5 s
    of silence closes it, not sooner."""
    (a,) = await start_backends("a")
    config = ProxyConfig(keepalive_timeout=0.5, header_timeout=5.0, sweep_interval=0.05)
    async with Harness(make_state([a]), config) as h:
        client = await h.connect()
        for _ in range(6):
            assert (await client.request()).status == 200
            await asyncio.sleep(0.3)
        assert (await client.request("GET", "/slow?ms=800")).status == 200
        assert (await client.request()).status == 200
        idle_from = time.monotonic()
        assert await client.closed(timeout=3)
        assert time.monotonic() - idle_from >= 0.45
        assert h.proxy.stats.timeouts == 0  # (an idle close is no timeout of a request)
        client.close()
    await a.close()


# -- tunnels: busy one way is not idle ----------------------------------------------------------------


async def test_a_websocket_busy_in_one_direction_at_a_time_is_not_idle() -> None:
    """Tunnel idle timeout 300 ms: the client alone sends for 1 s (the backend only reads), then the backend
    alone sends for 1 s (the client only reads); traffic either way keeps the tunnel."""

    async def one_way(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        got = 0
        while got < 100:  # phase 1: read what the client sends, say nothing
            data = await reader.read(1000)
            if not data:
                return
            got += len(data)
        for _ in range(10):  # phase 2: talk, read nothing
            writer.write(b"s" * 10)
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"done")
        await writer.drain()
        await reader.read()

    backend = await Scripted(one_way).start()
    policy = {"timeouts": {"idle": "300ms"}}
    async with Harness(make_state([backend.endpoint], policy=policy)) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(UPGRADE)
        assert (await head_of(reader)).startswith(b"HTTP/1.1 101 ")
        for _ in range(10):
            writer.write(b"c" * 10)
            await writer.drain()
            await asyncio.sleep(0.1)
        received = await asyncio.wait_for(reader.readexactly(104), 5)
        assert received == b"s" * 100 + b"done"
        assert h.proxy.stats.timeouts == 0
        writer.close()
    await backend.close()


async def test_a_tcp_tunnel_busy_in_one_direction_is_not_idle() -> None:
    """TCP idle timeout 300 ms: a client that only sends (10 bytes every 100 ms for 1.2 s) to a backend that
    only reads keeps its tunnel; then silence closes it."""
    counted: list[int] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(1000):
            total += len(data)
        counted.append(total)
        writer.write(b"%d" % total)
        await writer.drain()

    backend = await Scripted(sink).start()
    state = make_state([backend.endpoint], protocol=Protocol.TCP, policy={"timeouts": {"idle": "300ms"}})
    async with Harness(state) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        for _ in range(12):
            writer.write(b"t" * 10)
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"120"
        assert counted == [120] and h.proxy.stats.timeouts == 0
        writer.close()
        # the same client, silent: cut after the idle timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"t")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert h.proxy.stats.timeouts == 1
        writer.close()
    await backend.close()


# -- pooled upstream connections ------------------------------------------------------------------------


async def test_an_idle_pooled_connection_is_closed_after_the_pool_idle_timeout() -> None:
    """pool_idle_timeout 0.3 s: the proxy closes its idle connection to the endpoint (not sooner than
    0.25 s), the client connection stays, and the next request opens a fresh one."""
    (a,) = await start_backends("a")
    config = ProxyConfig(pool_idle_timeout=0.3, sweep_interval=0.05)
    async with Harness(make_state([a]), config) as h:
        client = await h.connect()
        assert (await client.request()).status == 200
        pool = h.proxy.pools[a.endpoint.id]
        assert len(pool.idle) == 1 and len(a.writers) == 1
        released = time.monotonic()
        assert await eventually(lambda: not a.writers and not pool.idle)
        assert time.monotonic() - released >= 0.2
        assert (await client.request()).status == 200
        assert (pool.connects, pool.reuses, pool.busy) == (2, 0, 0)
        client.close()
    await a.close()


# -- draining: an endpoint removed by a reload, or set to weight 0 --------------------------------------


async def _busy_and_idle_on(h: Harness, slow_ms: int) -> tuple[object, object]:
    """A request in flight on one connection to the first endpoint and another connection to it idle
    in its pool; returns (the client waiting for the slow answer, a client for more requests)."""
    busy = await h.connect()
    await busy.send(b"GET /slow?ms=%d HTTP/1.1\r\nHost: x\r\n\r\n" % slow_ms)
    await asyncio.sleep(0.1)
    other = await h.connect()
    r = await other.request()
    assert r.status == 200
    return busy, other


async def test_an_endpoint_removed_by_a_reload_drains_and_leaks_nothing() -> None:
    """The request in flight on the removed endpoint finishes, its idle pooled connection closes at once,
    the busy one when its exchange ends (never pooled again), new requests go to the endpoint that stays,
    and neither pools nor in-flight counts keep anything of it."""
    a, b = await start_backends("a", "b")
    async with Harness(make_state([a])) as h:
        runtime = h.registry.get(KEY)
        assert runtime is not None
        busy, other = await _busy_and_idle_on(h, 600)
        pool = h.proxy.pools[a.endpoint.id]
        assert (pool.busy, len(pool.idle), len(a.writers)) == (1, 1, 2)
        h.apply(make_state([b]))
        assert pool.retired and set(h.proxy.pools) == set()
        assert await eventually(lambda: len(a.writers) == 1)  # the idle one, closed now
        assert [(await other.request()).text for _ in range(3)] == ["b", "b", "b"]  # type: ignore[attr-defined]
        r = await busy.response(timeout=5)  # type: ignore[attr-defined]
        assert (r.status, r.text) == (200, "a")
        assert await eventually(lambda: not a.writers)  # the busy one, closed when its exchange ended
        assert (pool.busy, pool.idle) == (0, [])
        assert set(h.proxy.pools) == {b.endpoint.id}
        assert runtime.stats[a.endpoint.id].in_flight == 0 and h.proxy.in_flight() == 0
        assert (await busy.request()).text == "b"  # type: ignore[attr-defined]
        busy.close()  # type: ignore[attr-defined]
        other.close()  # type: ignore[attr-defined]
    await a.close()
    await b.close()


async def test_an_endpoint_set_to_weight_zero_drains_and_its_idle_connections_age_out() -> None:
    """Weight 0 keeps the endpoint configured (its pool stays) but gives it no new request; the request in
    flight finishes, and its connections close by the pool idle timeout (0.3 s)."""
    a, b = await start_backends("a", "b")
    config = ProxyConfig(pool_idle_timeout=0.3, sweep_interval=0.05)
    async with Harness(make_state([a]), config) as h:
        runtime = h.registry.get(KEY)
        assert runtime is not None
        busy, other = await _busy_and_idle_on(h, 500)
        pool = h.proxy.pools[a.endpoint.id]
        drained = BackendEndpoint("127.0.0.1", a.port, weight=0, name="a")
        h.apply(make_state([drained, b]))
        assert not pool.retired and h.proxy.pools[a.endpoint.id] is pool
        assert [(await other.request()).text for _ in range(4)] == ["b"] * 4  # type: ignore[attr-defined]
        r = await busy.response(timeout=5)  # type: ignore[attr-defined]
        assert (r.status, r.text) == (200, "a")
        assert await eventually(lambda: not a.writers and not pool.idle)
        assert pool.busy == 0 and runtime.stats[a.endpoint.id].in_flight == 0
        assert len(a.requests) == 2  # the slow one and the first idle one's: nothing after the change
        busy.close()  # type: ignore[attr-defined]
        other.close()  # type: ignore[attr-defined]
    await a.close()
    await b.close()


# -- graceful shutdown ------------------------------------------------------------------------------------


async def test_shutdown_closes_idle_connections_and_answers_in_flight_with_close() -> None:
    """Idle keep-alive connections close at once (cleanly: an EOF, no answer), a request in flight is
    answered with Connection: close, pooled connections close, and shutdown returns once drained."""
    (a,) = await start_backends("a")
    h = Harness(make_state([a]))
    await h.__aenter__()
    try:
        idle = await h.connect()
        assert (await idle.request()).status == 200
        busy = await h.connect()
        await busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.1)
        assert h.server is not None
        h.server.close()
        started = time.monotonic()
        drain = asyncio.create_task(h.proxy.shutdown(5.0))
        assert await idle.closed(timeout=1) and idle.raw.count(b"HTTP/1.1") == 1
        r = await busy.response(timeout=5)
        assert (r.status, r.header("Connection")) == (200, "close")
        assert await busy.closed(timeout=2)
        await asyncio.wait_for(drain, 5)
        assert time.monotonic() - started < 2.0
        assert await eventually(lambda: not a.writers)
        assert not h.proxy.http_connections and h.proxy.in_flight() == 0
    finally:
        await h.__aexit__(None, None, None)
    await a.close()


async def test_an_upload_in_flight_at_shutdown_finishes() -> None:
    """A POST whose body is half sent when the drain starts: the rest arrives during the drain, and the
    answer is the endpoint's (the body echoed whole) with Connection: close."""
    (a,) = await start_backends("a")
    policy = {"timeouts": {"request": "1s"}, "retries": {"attempts": 0}}
    h = Harness(make_state([a], policy=policy))
    await h.__aenter__()
    try:
        body = bytes(range(256)) * 80
        client = await h.connect()
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                          + body[:10000])
        await asyncio.sleep(0.2)
        assert h.server is not None
        h.server.close()
        drain = asyncio.create_task(h.proxy.shutdown(2.5))
        await asyncio.sleep(0.1)
        await client.send(body[10000:])
        r = await client.response(timeout=4)
        assert (r.status, r.header("Connection")) == (200, "close"), r.text
        assert r.body == body
        await asyncio.wait_for(drain, 4)
    finally:
        await h.__aexit__(None, None, None)
    await a.close()


async def test_a_websocket_keeps_flowing_both_ways_during_the_drain() -> None:
    (a,) = await start_backends("a")
    h = Harness(make_state([a]))
    await h.__aenter__()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(UPGRADE)
        assert (await head_of(reader)).startswith(b"HTTP/1.1 101 ")
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"
        assert h.server is not None
        h.server.close()
        drain = asyncio.create_task(h.proxy.shutdown(2.0))
        await asyncio.sleep(0.1)
        writer.write(b"during")
        try:
            assert await asyncio.wait_for(reader.readexactly(6), 1.0) == b"during"
        finally:
            writer.close()
            await asyncio.wait_for(drain, 4)
    finally:
        await h.__aexit__(None, None, None)
    await a.close()


async def test_a_tcp_tunnel_keeps_flowing_during_the_drain_and_ends_it() -> None:
    """Shutdown does not cut a TCP tunnel: it carries bytes both ways until the client ends it, and the
    drain returns then (well before its deadline); a connection accepted during the drain is closed."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1000):
            writer.write(data)
            await writer.drain()

    backend = await Scripted(echo).start()
    h = Harness(make_state([backend.endpoint], protocol=Protocol.TCP))
    await h.__aenter__()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"one")
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"one"
        drain = asyncio.create_task(h.proxy.shutdown(5.0))  # (listener left open: a late connection)
        await asyncio.sleep(0.1)
        writer.write(b"two")
        assert await asyncio.wait_for(reader.readexactly(3), 2) == b"two"
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", h.port)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(late_reader.read(), 2) == b""
        late_writer.close()
        started = time.monotonic()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        await asyncio.wait_for(drain, 5)
        assert time.monotonic() - started < 1.5
        assert not h.proxy.tcp_tunnels
        writer.close()
    finally:
        await h.__aexit__(None, None, None)
    await backend.close()


async def test_a_request_sent_during_the_drain_does_not_cut_the_response_before_it() -> None:
    """A client streaming a large response sends its next request on the same connection during the drain
    (as a pipelining client, or one that has not yet seen Connection: close, does): the response in
    progress still arrives whole, followed by a clean close (its head went out before the drain, so it cannot
    carry Connection: close); the new request goes unanswered (allowed
    after Connection: close), but is no reason to reset."""
    (a,) = await start_backends("a")
    h = Harness(make_state([a]))
    await h.__aenter__()
    try:
        size = 8 << 20
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        await asyncio.sleep(0.2)  # the proxy's buffers towards this client fill: it reads nothing yet
        assert h.server is not None
        h.server.close()
        drain = asyncio.create_task(h.proxy.shutdown(5.0))
        await asyncio.sleep(0.05)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await head_of(reader)
        assert head.startswith(b"HTTP/1.1 200 ")  # (sent before the drain: no Connection: close in it)
        got = 0
        try:
            while data := await asyncio.wait_for(reader.read(1 << 16), 5):
                got += len(data)
                await asyncio.sleep(0.002)  # a client reading at ~30 MB/s
        finally:
            writer.close()
            await asyncio.wait_for(drain, 6)
        assert got == size
    finally:
        await h.__aexit__(None, None, None)
    await a.close()


async def test_the_request_timeout_runs_from_the_request_end_so_a_steady_upload_may_take_longer() -> None:
    """An upload that keeps moving for three times the request timeout is answered (before: 408 once the
    request timeout had passed since the head); the request timeout then still bounds the wait for the
    response head, counted from the body's last byte."""
    (a,) = await start_backends("a")
    policy = {"timeouts": {"request": "300ms", "idle": "600ms"}, "retries": {"attempts": 0}}
    async with Harness(make_state([a], policy=policy)) as h:
        client = await h.connect()
        await client.send(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0.1)
            await client.send(b"u")
        r = await client.response(timeout=5)
        assert (r.status, r.text) == (200, "10")

        await client.send(b"POST /slow?ms=2000 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0.1)
            await client.send(b"u")
        body_end = time.monotonic()
        r = await client.response(timeout=5)
        waited = time.monotonic() - body_end
        assert r.status == 504 and "did not answer within 0.3s" in r.text, r.text
        assert 0.3 <= waited < 1.5, waited
        assert h.proxy.stats.timeouts == 1
        client.close()
    await a.close()
