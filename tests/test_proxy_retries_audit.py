"""Audit of retries and of the one-completion-per-pick rule, on real sockets (127.0.0.1).

Every pick (`UpstreamRuntime.pick` -> `Attempt`) gets exactly one completion (`done`, `report` or `cancel`),
so the per-endpoint in-flight counts (`runtime.stats[...].in_flight`, and LeastConnections' own counts, which
every test here uses) are back to zero after every exchange, however it ends. And a request goes to another
endpoint only before any response byte reached the client, only when nothing of it was sent or it is
idempotent and no body byte was sent, never twice to the same endpoint, at most `retries.attempts` times;
the client gets the last endpoint's answer or a one-line 502/503/504, never a hang.

Timeouts are short and set per test through the policy; the sweep runs every 50 ms (Harness' default);
every wait is bounded by asyncio.wait_for (directly or through `Client.response` / `eventually`)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import uvloop

from proxy_support import Backend, Client, Harness, Scripted, eventually, make_state, start_backends
from steelyard.config.desired import BackendEndpoint
from steelyard.runtime.upstream import UpstreamRuntime
from test_proxy_timeouts import UPGRADE, head_of

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")

LC = {"type": "LeastConnections"}


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


def _counts(runtime: UpstreamRuntime) -> tuple[dict[str, int], dict[str, int]]:
    """In-flight per endpoint: the proxy's stats and LeastConnections' own counts."""
    stats = {eid: s.in_flight for eid, s in runtime.stats.items()}
    strategy = dict(runtime.strategy.describe().get("in_flight", ()))  # type: ignore[call-overload]
    return stats, strategy


async def settled(h: Harness, timeout: float = 2.0) -> None:
    """Every pick completed: nothing in flight anywhere (stats and strategy)."""
    runtime = h.runtime()

    def zero() -> bool:
        stats, strategy = _counts(runtime)
        return not any(stats.values()) and not any(strategy.values())

    assert await eventually(zero, timeout), _counts(runtime)


@asynccontextmanager
async def scripted(*handlers: Any) -> AsyncIterator[list[Scripted]]:
    backends = [await Scripted(handler).start() for handler in handlers]
    try:
        yield backends
    finally:
        for backend in backends:
            await backend.close()


@asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    started = await start_backends(*names)
    try:
        yield started
    finally:
        for backend in started:
            await backend.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def blackhole() -> AsyncIterator[BackendEndpoint]:
    """An endpoint whose connects neither succeed nor fail: a listener with a full accept queue (backlog
    0, never accepting), whose further SYNs the kernel drops."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with suppress(BlockingIOError):
            s.connect(address)
        fillers.append(s)
    await asyncio.sleep(0.05)
    try:
        yield BackendEndpoint("127.0.0.1", address[1])
    finally:
        for s in fillers:
            s.close()
        server.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def _answer(name: str, status: int = 200, body: bytes | None = None) -> Any:
    """A keep-alive handler answering every request `status` with `body` (default: the name)."""
    payload = name.encode() if body is None else body

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await _read_body(reader, head)
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(payload), payload))
            await writer.drain()

    return handler


# -- connect failures --------------------------------------------------------------------------------------


async def test_connect_refused_is_retried_and_every_pick_completes() -> None:
    """A dead endpoint (nothing listens) and a good one, retries on connect failure: every request gets the
    good one's answer and neither endpoint keeps anything in flight."""
    dead = BackendEndpoint("127.0.0.1", _free_port())
    async with backends("good") as (good,):
        policy = {"strategy": LC, "retries": {"attempts": 1}}
        async with Harness(make_state([dead, good], policy=policy)) as h:
            client = await h.connect()
            for _ in range(4):
                r = await asyncio.wait_for(client.request(), 5)
                assert (r.status, r.text) == (200, "good")
            assert h.runtime().stats[dead.id].failures >= 1
            await settled(h)
            client.close()


async def test_connect_refused_without_retries_is_a_plain_502() -> None:
    dead = BackendEndpoint("127.0.0.1", _free_port())
    policy = {"strategy": LC, "retries": {"attempts": 0}}
    async with Harness(make_state([dead], policy=policy)) as h:
        client = await h.connect()
        r = await asyncio.wait_for(client.request(), 5)
        assert r.status == 502 and r.text.count("\n") == 1 and r.text.startswith("steelyard: ")
        await settled(h)
        client.close()


async def test_connect_timeout_is_a_504_or_a_retry_and_completes_the_pick() -> None:
    async with blackhole() as hole, backends("good") as (good,):
        policy = {"strategy": LC, "timeouts": {"connect": "200ms"}, "retries": {"attempts": 0}}
        async with Harness(make_state([hole], policy=policy)) as h:
            client = await h.connect()
            r = await asyncio.wait_for(client.request(), 3)
            assert r.status == 504
            await settled(h)
            # with a retry, the good endpoint answers
            h.apply(make_state([hole, good], policy={**policy, "retries": {"attempts": 1}}))
            for _ in range(2):
                r = await asyncio.wait_for(client.request(), 3)
                assert (r.status, r.text) == (200, "good")
            await settled(h)
            client.close()


async def test_client_gone_while_the_upstream_connect_is_pending_completes_the_pick() -> None:
    """The client closes while the proxy still waits for the endpoint to accept: the pick is completed when
    the connect ends (here: its timeout), not kept in flight for ever."""
    async with blackhole() as hole:
        policy = {"strategy": LC, "timeouts": {"connect": "250ms"}, "retries": {"attempts": 0}}
        async with Harness(make_state([hole], policy=policy)) as h:
            client = await h.connect()
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            runtime = h.runtime()
            assert await eventually(lambda: runtime.stats.get(hole.id) is not None
                                    and runtime.stats[hole.id].in_flight == 1)
            reset(client)
            await asyncio.sleep(0.1)
            await settled(h)


# -- resets --------------------------------------------------------------------------------------------


async def test_reset_before_the_head_is_retried_or_502_and_completes() -> None:
    async with backends("good", "resetting") as (good, resetting):
        resetting.mode = "reset"
        policy = {"strategy": LC, "retries": {"attempts": 1}}
        async with Harness(make_state([resetting, good], policy=policy)) as h:
            client = await h.connect()
            for _ in range(4):
                r = await asyncio.wait_for(client.request(), 5)
                assert (r.status, r.text) == (200, "good")
            await settled(h)
            h.apply(make_state([resetting], policy={**policy, "retries": {"attempts": 0}}))
            r = await asyncio.wait_for(client.request(), 5)
            assert r.status == 502 and r.text.startswith("steelyard: ")
            await settled(h)
            client.close()


async def test_reset_mid_response_body_cuts_the_client_and_completes() -> None:
    async def partial_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    async with scripted(partial_then_reset) as (backend,):
        policy = {"strategy": LC, "retries": {"attempts": 2}}
        async with Harness(make_state([backend.endpoint], policy=policy)) as h:
            client = await h.connect()
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await client.closed(3)
            assert bytes(client.raw).startswith(b"HTTP/1.1 200 ") and bytes(client.raw).endswith(b"abc")
            await settled(h)


# -- the client going away -------------------------------------------------------------------------------


def reset(client: Client) -> None:
    """The client vanishes: its socket closed with a reset (SO_LINGER 0), not a FIN (a half-close, after
    which a client may still read its answer: the proxy keeps the exchange for it)."""
    sock = client.writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def _reads_head_then_waits(got_head: asyncio.Event) -> Any:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_head.set()
        await reader.read()
    return handler


async def test_client_gone_mid_request_body_completes() -> None:
    got_head = asyncio.Event()
    async with scripted(await _reads_head_then_waits(got_head)) as (backend,):
        policy = {"strategy": LC, "timeouts": {"request": "5s"}}
        async with Harness(make_state([backend.endpoint], policy=policy)) as h:
            client = await h.connect()
            await client.send(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            await asyncio.wait_for(got_head.wait(), 3)
            reset(client)
            await settled(h, 1.0)
            assert await eventually(lambda: backend.open == 0, 1.0)


async def test_client_half_closed_mid_request_body_releases_the_pick_at_once() -> None:
    """A client that sends part of its body and then closes (a FIN: e.g. a killed curl upload): the body can
    never arrive whole, so the exchange is over; nothing should stay in flight until the request timeout."""
    got_head = asyncio.Event()
    async with scripted(await _reads_head_then_waits(got_head)) as (backend,):
        policy = {"strategy": LC, "timeouts": {"request": "3s"}}
        async with Harness(make_state([backend.endpoint], policy=policy)) as h:
            client = await h.connect()
            await client.send(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            await asyncio.wait_for(got_head.wait(), 3)
            client.close()
            await settled(h, 1.0)


async def test_client_gone_waiting_for_the_head_completes() -> None:
    async with backends("a") as (a,), Harness(make_state([a], policy={"strategy": LC})) as h:
        client = await h.connect()
        await client.send(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await eventually(lambda: a.endpoint.id in h.runtime().stats
                                and h.runtime().stats[a.endpoint.id].in_flight == 1)
        reset(client)
        await settled(h, 1.0)


async def test_client_half_closed_waiting_for_the_head_completes_with_the_response() -> None:
    """After a FIN the proxy keeps the exchange (the client may read its answer): done when it ends."""
    async with backends("a") as (a,), Harness(make_state([a], policy={"strategy": LC})) as h:
        client = await h.connect()
        await client.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.1)
        client.writer.write_eof()
        r = await client.response(3)
        assert (r.status, r.text) == (200, "a")
        await settled(h)
        client.close()


async def test_client_gone_mid_response_completes() -> None:
    async with backends("a") as (a,), Harness(make_state([a], policy={"strategy": LC})) as h:
        client = await h.connect()
        await client.send(b"GET /partial HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(client.reader.readuntil(b"abc"), 3)
        reset(client)
        await settled(h, 1.0)


async def test_client_half_closed_mid_response_completes_at_the_idle_timeout() -> None:
    policy = {"strategy": LC, "timeouts": {"idle": "300ms"}}
    async with backends("a") as (a,), Harness(make_state([a], policy=policy)) as h:
        client = await h.connect()
        await client.send(b"GET /partial HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(client.reader.readuntil(b"abc"), 3)
        client.close()
        await settled(h, 1.5)


# -- retried statuses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"a 503 page", b""], ids=["with-body", "empty-body"])
async def test_a_retried_status_goes_to_the_other_endpoint_and_completes(body: bytes) -> None:
    async with scripted(_answer("failing", 503, body), _answer("good")) as (failing, good):
        policy = {"strategy": LC, "retries": {"attempts": 1, "on": ["503"]}}
        async with Harness(make_state([failing.endpoint, good.endpoint], policy=policy)) as h:
            client = await h.connect()
            for _ in range(4):
                r = await asyncio.wait_for(client.request(), 3)
                assert (r.status, r.text) == (200, "good")
            stats = h.runtime().stats[failing.endpoint.id]
            assert stats.by_class[5] >= 1
            await settled(h)
            client.close()


async def test_a_retry_picked_in_advance_is_released_when_the_client_leaves() -> None:
    """A 503 (retried) whose body stalls: the retry is picked as its head arrives; the client leaving then
    must release that pick too (the other endpoint never saw a request)."""
    async def stalled_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with scripted(stalled_503, _answer("good")) as (stalled, good):
        policy = {"strategy": LC, "retries": {"attempts": 1, "on": ["503"]}, "timeouts": {"request": "5s"}}
        async with Harness(make_state([stalled.endpoint], policy=policy)) as h:
            # only the stalled endpoint first (so it is picked), then the good one joins before the head
            h.apply(make_state([stalled.endpoint, good.endpoint], policy=policy))
            runtime = h.runtime()
            client = await h.connect()
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            picked = await eventually(lambda: sum(s.requests for s in runtime.stats.values()) == 2)
            if not picked:  # LeastConnections sent it to the good one: ask again on another connection
                other = await h.connect()
                await other.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert await eventually(lambda: runtime.stats[good.endpoint.id].in_flight == 1
                                        and runtime.stats[stalled.endpoint.id].in_flight == 1)
                other.close()
            assert runtime.stats[good.endpoint.id].in_flight == 1  # the retry, picked in advance
            reset(client)
            await settled(h)
            assert good.open == 0  # never used


async def test_a_retry_picked_in_advance_is_released_when_the_503_is_cut() -> None:
    """retries.on lists 503 only: a 503 whose body is cut by a reset gets the client a plain 502, and the
    retry picked when its head came is released."""
    async def cut_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 100\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    async with scripted(cut_503, _answer("good")) as (cut, good):
        policy = {"strategy": LC, "retries": {"attempts": 1, "on": ["503"]}}
        async with Harness(make_state([cut.endpoint], policy=policy)) as h:
            h.apply(make_state([cut.endpoint, good.endpoint], policy=policy))
            client = await h.connect()
            answers = set()
            for _ in range(3):
                r = await asyncio.wait_for(client.request(), 3)
                answers.add((r.status, r.text.split(":")[0]))
                await settled(h)
                if r.status == 502:
                    break
                client.close()
                client = await h.connect()
            assert (502, "steelyard") in answers
            await settled(h)
            client.close()


async def test_never_twice_to_the_same_endpoint_and_attempts_bound_it() -> None:
    names = ("a", "b", "c", "d")
    async with scripted(*(_answer(n, 503) for n in names)) as failing:
        counts = {b.endpoint.id: 0 for b in failing}
        eps = [b.endpoint for b in failing]

        def counting(name: str, eid: str) -> Any:
            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    counts[eid] += 1
                    payload = name.encode()
                    writer.write(b"HTTP/1.1 503 X\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                    await writer.drain()
            return handler

        for backend, name in zip(failing, names, strict=True):
            backend.handler = counting(name, backend.endpoint.id)
        policy = {"strategy": LC, "retries": {"attempts": 10, "on": ["503"]}}
        async with Harness(make_state(eps, policy=policy)) as h:
            client = await h.connect()
            r = await asyncio.wait_for(client.request(), 3)
            # every endpoint once, the last one's real 503 passed on
            assert r.status == 503 and r.text in names
            assert sorted(counts.values()) == [1, 1, 1, 1]
            await settled(h)
            for eid in counts:
                counts[eid] = 0
            h.apply(make_state(eps, policy={**policy, "retries": {"attempts": 2, "on": ["503"]}}))
            r = await asyncio.wait_for(client.request(), 3)
            assert r.status == 503 and sum(counts.values()) == 3 and max(counts.values()) == 1
            await settled(h)
            client.close()


async def test_a_request_whose_body_was_sent_is_not_retried_on_a_status() -> None:
    """PUT is idempotent, but its body went to the first endpoint: its 503 is the answer."""
    seen: list[bytes] = []

    async def failing_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(await _read_body(reader, head))
            writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 7\r\n\r\nfailing")
            await writer.drain()

    async with scripted(failing_reads, _answer("good")) as (failing, good):
        policy = {"strategy": LC, "retries": {"attempts": 1, "on": ["503"]}}
        async with Harness(make_state([failing.endpoint], policy=policy)) as h:
            h.apply(make_state([failing.endpoint, good.endpoint], policy=policy))
            client = await h.connect()
            r = await asyncio.wait_for(client.request("PUT", "/", body=b"payload"), 3)
            if r.text == "good":  # LeastConnections chose the good one first: once more
                r = await asyncio.wait_for(client.request("PUT", "/", body=b"payload"), 3)
            assert (r.status, r.text) == (503, "failing") and seen == [b"payload"]
            await settled(h)
            client.close()


async def test_a_post_refused_at_connect_is_retried_since_nothing_was_sent() -> None:
    dead = BackendEndpoint("127.0.0.1", _free_port())
    async with scripted(_answer("good")) as (good,):
        policy = {"strategy": LC, "retries": {"attempts": 1}}
        async with Harness(make_state([dead, good.endpoint], policy=policy)) as h:
            client = await h.connect()
            for _ in range(3):
                r = await asyncio.wait_for(client.request("POST", "/", body=b"order"), 3)
                assert (r.status, r.text) == (200, "good")
            await settled(h)
            client.close()


# -- pipelining, local answers ------------------------------------------------------------------------------


async def test_pipelined_requests_where_a_later_one_fails() -> None:
    async with backends("a") as (a,):
        policy = {"strategy": LC, "retries": {"attempts": 0}}
        async with Harness(make_state([a], policy=policy)) as h:
            client = await h.connect()
            await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            r1, r2, r3 = await client.responses(3, timeout=3)
            assert (r1.status, r1.text, r2.status, r3.status, r3.text) == (200, "a", 502, 200, "a")
            await settled(h)
            client.close()


async def test_a_400_queued_behind_a_proxied_request() -> None:
    async with backends("a") as (a,), Harness(make_state([a], policy={"strategy": LC})) as h:
        client = await h.connect()
        await client.send(b"GET /slow?ms=150 HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET / HTTP/1.1\r\nHost: x\r\nBad Field\r\n\r\n")
        r1, r2 = await client.responses(2, timeout=3)
        assert (r1.status, r1.text, r2.status) == (200, "a", 400)
        assert await client.closed(3)
        await settled(h)


# -- websockets ---------------------------------------------------------------------------------------------


async def test_a_refused_websocket_upgrade_is_answered_and_completes() -> None:
    async with scripted(_answer("no", 403, b"forbidden")) as (backend,), \
            Harness(make_state([backend.endpoint], policy={"strategy": LC})) as h:
        client = await h.connect()
        await client.send(UPGRADE)
        r = await client.response(3)
        assert (r.status, r.text) == (403, "forbidden")
        assert await client.closed(3)
        await settled(h)


@pytest.mark.parametrize("who_ends", ["client", "backend"])
async def test_a_websocket_tunnel_that_ends_either_way_completes(who_ends: str) -> None:
    async def ws(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        data = await reader.read(100)
        writer.write(data)
        await writer.drain()
        if who_ends == "backend":
            writer.transport.abort()
        else:
            await reader.read()

    async with scripted(ws) as (backend,), \
            Harness(make_state([backend.endpoint], policy={"strategy": LC})) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(UPGRADE)
        assert (await head_of(reader)).startswith(b"HTTP/1.1 101 ")
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 3) == b"ping"
        await settled(h)
        if who_ends == "client":
            writer.close()
        else:
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()
        assert await eventually(lambda: backend.open == 0 and not h.proxy.http_connections)
        await settled(h)
        assert h.runtime().stats[backend.endpoint.id].by_class[1] == 1


# -- bugs ---------------------------------------------------------------------------------------------------


async def test_body_bytes_sent_while_a_retried_status_is_dropped_forbid_the_retry() -> None:
    """retries.on lists 503; a PUT whose head went out before its body. The first endpoint answers 503 at
    once, but its body comes in two pieces; between them the client sends the first half of its body, which
    the proxy writes to that endpoint. The retry picked when the 503 head came must not go ahead now: the
    second endpoint would get the head and only the rest of the body."""
    first_half = asyncio.Event()

    async def early_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        await reader.readexactly(4)  # the first half of the client's body
        first_half.set()
        writer.write(b"cd")
        await writer.drain()
        await reader.read()

    echoed: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = await _read_body(reader, head)
            echoed.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async with scripted(early_503, echo) as (first, second):
        policy = {"retries": {"attempts": 1, "on": ["503"]}, "timeouts": {"request": "1s"}}
        async with Harness(make_state([first.endpoint], policy=policy)) as h:
            h.apply(make_state([first.endpoint, second.endpoint], policy=policy))  # (round robin: first)
            client = await h.connect()
            await client.send(b"PUT /doc HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
            await asyncio.sleep(0.15)  # the 503 head reached the proxy
            await client.send(b"1234")
            await asyncio.wait_for(first_half.wait(), 3)
            await asyncio.sleep(0.15)
            await client.send(b"5678")
            r = await client.response(3)
            assert echoed in ([], [b"12345678"]), echoed  # never a truncated body elsewhere
            assert r.status == 503 or r.body == b"12345678", (r.status, r.text)
            await settled(h)
            client.close()


async def test_a_head_request_answered_with_a_retried_status_is_retried_at_once() -> None:
    """retries.on lists 503; a HEAD answered 503 with `Content-Length: 9` (and, HEAD, no body). The proxy
    drops that response to retry: it must know the response has no body (it knows it answers a HEAD), not
    wait for 9 bytes until the request timeout."""
    async with backends("failing", "good") as (failing, good):
        failing.mode = 503
        policy = {"strategy": LC, "retries": {"attempts": 1, "on": ["503"]},
                  "timeouts": {"request": "1500ms"}}
        async with Harness(make_state([failing], policy=policy)) as h:
            h.apply(make_state([failing, good], policy=policy))
            client = await h.connect()
            for _ in range(2):
                await client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
                # (httptools cannot know the request was HEAD: read the head bytes directly)
                head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 0.8)
                assert head.startswith(b"HTTP/1.1 200") and b"X-Backend: good\r\n" in head, head
            assert h.proxy.stats.timeouts == 0
            await settled(h, 3)
            client.close()


async def test_a_retried_status_whose_body_ends_with_the_connection_is_retried() -> None:
    """retries.on lists 503 only; the first endpoint answers a complete 503 whose body is delimited by
    closing the connection (no Content-Length, no chunked: RFC 9112 section 6.3 rule 8). That is a whole
    503, as retriable as any: the other endpoint should answer, not a 502 claiming no answer came."""
    async def close_delimited_503(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 X\r\nConnection: close\r\n\r\nbusy, try elsewhere")
        await writer.drain()
        writer.close()

    async with scripted(close_delimited_503, _answer("good")) as (failing, good):
        policy = {"strategy": LC, "retries": {"attempts": 1, "on": ["503"]}}
        async with Harness(make_state([failing.endpoint], policy=policy)) as h:
            h.apply(make_state([failing.endpoint, good.endpoint], policy=policy))
            answers = []
            for _ in range(3):
                client = await h.connect()
                r = await asyncio.wait_for(client.request(), 3)
                answers.append((r.status, r.text))
                client.close()
            await settled(h)
            assert all(a == (200, "good") for a in answers), answers


async def test_a_bare_101_gets_the_client_an_answer() -> None:
    """An endpoint answers `101 Switching Protocols` without Upgrade and Connection fields (llhttp then
    ends the message instead of switching): the client must get an answer (a 502), not silence while the
    proxy moves on to its next request."""
    async def bare_101(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with scripted(bare_101) as (backend,), \
            Harness(make_state([backend.endpoint], policy={"strategy": LC})) as h:
        client: Client = await h.connect()
        await client.send(UPGRADE)
        r = await client.response(1.0)
        assert r.status == 502
        await settled(h)
        client.close()


async def test_pipelined_requests_then_a_half_close_are_all_answered() -> None:
    """A client pipelines three requests and half-closes (e.g. `printf ... | nc -N`): all three are answered
    before the close (reading is paused while requests wait, so the FIN is seen after them), nothing left
    in flight."""
    async with backends("a") as (a,), Harness(make_state([a], policy={"strategy": LC})) as h:
        client = await h.connect()
        await client.send(b"GET /slow?ms=100 HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        client.writer.write_eof()
        answers = await client.responses(3, timeout=2)
        assert [r.status for r in answers] == [200, 200, 200]
        await settled(h)
        client.close()


async def test_a_reset_after_100_continue_gets_the_client_a_502() -> None:
    """The endpoint sends 100 (Continue), reads the body, then resets: no final response reached the client,
    so it can still get a plain 502 (not a cut connection), as it gets a 504 when the endpoint falls
    silent after its 100."""
    async def continue_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await _read_body(reader, head)
        writer.transport.abort()

    async with scripted(continue_then_reset) as (backend,), \
            Harness(make_state([backend.endpoint], policy={"strategy": LC})) as h:
        client = await h.connect()
        await client.send(b"PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert (await head_of(client.reader)).startswith(b"HTTP/1.1 100 ")
        await client.send(b"data")
        r = await client.response(2)
        assert r.status == 502 and r.text.startswith("steelyard: ")
        await settled(h)
        client.close()
