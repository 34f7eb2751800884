"""HTTP flow control on real sockets: what the proxy holds while one side does not keep up, and that no
pause outlives its reason (the client connection and the pooled upstream connection work afterwards).

Loopback sockets take megabytes before a writer sees backpressure, so where a test needs the proxy's
upstream write buffer past its high-water mark with few bytes (bytes held while the upstream connects,
bytes read with a websocket upgrade, a request body the backend has not read yet), the proxy's upstream
socket gets a small send buffer (SO_SNDBUF, set before its connect) and the backend a small receive
buffer (SO_RCVBUF, inherited from its listening socket), as in test_proxy_tcp.py. What the proxy holds
is measured where it holds it: the upstream connection's write buffer (its memory), not the client's
unsent bytes (the kernel's buffers on the way take megabytes too)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from proxy_support import Handler, Harness, Scripted, make_state, start_backends
from steelyard.config.desired import BackendEndpoint
from steelyard.proxy.http import HttpProxyProtocol, UpstreamConnection

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")

KIB = 1 << 10
MIB = 1 << 20
SMALL = 4 * KIB  # SO_SNDBUF / SO_RCVBUF on the upstream path (Linux doubles it)
EARLY = 200 * KIB  # bytes the proxy must hold at once to fill the small upstream past 64 KiB
HELD_MIN = 96 * KIB  # fewer held than this cannot fill it (64 KiB high-water mark + the sockets)
BOUND = 1 * MIB  # what the proxy may hold for one connection: its high-water mark and a read or two
UPLOAD = 16 * MIB  # what a client pushes at a backend that reads nothing
# Towards the client: a large read of a body is written at once (not at the end of the loop's pass), so
# the client's pause_writing() stops the reads within the same pass (before, ~4 MB arrived first).
DOWNLOAD_BOUND = BOUND


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


def small_backend(handler: Handler) -> Scripted:
    """A backend whose connections offer a small window (SO_RCVBUF `SMALL` on its listening socket) and
    run `handler`; their StreamReaders stop reading at 2 KiB buffered (limit 1 KiB, not 64 KiB), so a
    handler that does not read really leaves the bytes to the proxy. `grow()` in a handler restores normal
    buffers (fast reads once a test has seen the backpressure it wanted)."""
    return Scripted(handler, rcvbuf=SMALL, limit=KIB)


def grow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
    reader._limit = 64 * KIB  # type: ignore[attr-defined]  # (the default)


def small_upstream_socket(monkeypatch: pytest.MonkeyPatch, port: int,
                          gate: asyncio.Event | None = None) -> None:
    """The proxy's connections to `port` get SO_SNDBUF `SMALL`; with `gate`, each waits for it before its
    connect (the request's bytes are then held by the proxy meanwhile)."""
    loop = asyncio.get_running_loop()
    create_connection = loop.create_connection

    async def small_send_buffer(factory: Any, host: str, to_port: int, **kwargs: Any) -> Any:
        if to_port != port:
            return await create_connection(factory, host, to_port, **kwargs)
        if gate is not None:
            await gate.wait()
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, to_port))
            return await create_connection(factory, sock=sock, **kwargs)
        except BaseException:
            sock.close()
            raise

    monkeypatch.setattr(loop, "create_connection", small_send_buffer)


async def until(check: Callable[[], object], what: str, limit: float = 5.0) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(wait(), limit)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def settled(value: Callable[[], int], limit: float = 8.0) -> int:
    """Wait until `value()` stops changing (sampled every 0.1 s); return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last = -1
    while loop.time() < deadline:
        now = value()
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.1)
    return value()


def the_client(h: Harness) -> HttpProxyProtocol:
    (proto,) = h.proxy.http_connections
    return proto  # type: ignore[no-any-return]


def upstream_held(conn: UpstreamConnection | None) -> int:
    """What the proxy holds in the upstream connection's write buffer (0 without one)."""
    if conn is None or conn.transport is None or conn.closed:
        return 0
    return int(conn.transport.get_write_buffer_size())


def current_conn(h: Harness) -> UpstreamConnection | None:
    proto = the_client(h)
    return proto.current.conn if proto.current is not None else None


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """One Content-Length response: (head, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await asyncio.wait_for(reader.readexactly(length), timeout)


async def read_body(reader: asyncio.StreamReader, length: int) -> int:
    """Count `length` bytes from `reader` (64 KiB reads)."""
    total = 0
    while total < length:
        chunk = await reader.read(min(64 * KIB, length - total))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", length - total)
        total += len(chunk)
    return total


async def serve_counts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       release: asyncio.Event | None = None) -> None:
    """Requests with a Content-Length body, each answered with how many bytes came; before reading each
    body, wait for `release` (then read fast). `Expect: 100-continue` gets its 100 first."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if b"100-continue" in head.lower():
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if release is not None:
            await release.wait()
            grow(reader, writer)
        got = await read_body(reader, length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
        await writer.drain()


# -- the client uploads, the backend does not read ------------------------------------------------------


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
async def test_upload_to_a_backend_that_does_not_read_is_bounded_and_everything_works_after(
        monkeypatch: pytest.MonkeyPatch, expect: bool) -> None:
    """A backend that reads nothing (or, asked for it, sends its 100 Continue and then reads nothing):
    the proxy stops reading the client instead of holding the upload. Once the backend reads, the answer
    comes; the same client connection then uploads again over the same (pooled) upstream connection,
    again with bounded memory: no pause is left behind."""
    release = asyncio.Event()
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        await serve_counts(reader, writer, release)

    backend = await small_backend(handler).start()
    small_upstream_socket(monkeypatch, backend.port)
    async with Harness(make_state([backend.endpoint])) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.transport.set_write_buffer_limits(high=2 * UPLOAD)  # the client pushes freely
        for round_ in (1, 2):
            head = b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % UPLOAD
            if expect:
                writer.write(head + b"Expect: 100-continue\r\n\r\n")
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert interim.startswith(b"HTTP/1.1 100")
            else:
                writer.write(head + b"\r\n")
            writer.write(b"u" * UPLOAD)
            await until(lambda: current_conn(h) is not None, "the request went upstream")
            conn = current_conn(h)
            held = await settled(lambda: upstream_held(conn))  # noqa: B023
            assert held < BOUND, f"round {round_}: the proxy holds {held} bytes the backend did not read"
            assert the_client(h).paused, "reading the client is paused while the upstream is full"
            release.set()
            _, body = await read_response(reader)
            assert int(body) == UPLOAD
            release.clear()  # the next round: the backend reads nothing again
        writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        release.set()
        _, body = await read_response(reader)
        assert body == b"2"
        assert served == 1 and h.proxy.pools[backend.endpoint.id].connects == 1
        writer.close()
    await backend.close()


# -- bytes the proxy holds while the upstream connection opens -------------------------------------------


async def test_upload_held_while_the_upstream_connects_keeps_backpressure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP side of the TCP fix in 77071a5: the request's first body bytes wait in the proxy while its
    upstream connection opens, and fill that connection past its high-water mark when it is up. The pause
    for the full upstream must outlast the end of the wait: the proxy holds no more than it did."""
    release = asyncio.Event()
    gate = asyncio.Event()
    backend = await small_backend(lambda r, w: serve_counts(r, w, release)).start()
    small_upstream_socket(monkeypatch, backend.port, gate)
    async with Harness(make_state([backend.endpoint])) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.transport.set_write_buffer_limits(high=2 * UPLOAD)
        writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % UPLOAD)
        writer.write(b"u" * UPLOAD)
        await until(lambda: the_client(h).current is not None and the_client(h).current.pending,
                    "the proxy holds body bytes while the upstream connects")
        pending = sum(map(len, the_client(h).current.pending))
        if pending <= HELD_MIN:
            pytest.fail(f"the proxy held {pending} bytes while connecting: too few to fill the upstream")
        gate.set()
        await until(lambda: current_conn(h) is not None, "the upstream connection is up")
        conn = current_conn(h)
        held = await settled(lambda: upstream_held(conn))
        assert held < BOUND, f"the proxy holds {held} bytes the backend did not read"
        release.set()
        _, body = await read_response(reader)
        assert int(body) == UPLOAD
        writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        _, body = await read_response(reader)
        assert body == b"2"
        writer.close()
    await backend.close()


# -- a request body the backend has not read when its connection goes back to the pool ----------------------


async def test_pooled_connection_with_an_unread_body_still_pauses_the_next_upload(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend answers a POST before reading its body (an early 401/413 on a kept-alive connection, the
    body read and discarded afterwards, as nginx does) and is slow to read it: the connection goes back to
    the pool with the proxy still holding that body. The next upload on it must be paused all the same."""
    release = asyncio.Event()
    first = 100_000  # read by the proxy at once (its first read is ~128 KB), > 64 KiB + the sockets

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
        await release.wait()
        grow(reader, writer)
        await read_body(reader, int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        await serve_counts(reader, writer)

    backend = await small_backend(handler).start()
    small_upstream_socket(monkeypatch, backend.port)
    async with Harness(make_state([backend.endpoint])) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.transport.set_write_buffer_limits(high=2 * UPLOAD)
        writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % first + b"e" * first)
        head, body = await read_response(reader)
        assert body == b"early" and b"close" not in head.lower()
        pool = h.proxy.pools[backend.endpoint.id]
        await until(lambda: pool.idle, "the connection is back in the pool")
        (pooled,) = pool.idle
        if upstream_held(pooled) <= 64 * KIB:  # (uvloop's and asyncio's default high-water mark)
            pytest.fail(f"the pooled connection holds {upstream_held(pooled)} bytes: not write-full")
        writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % UPLOAD)
        writer.write(b"u" * UPLOAD)
        await until(lambda: current_conn(h) is not None, "the upload went upstream")
        conn = current_conn(h)
        assert conn is pooled
        held = await settled(lambda: upstream_held(conn))
        assert held < BOUND, f"the proxy holds {held} bytes the backend did not read"
        release.set()
        _, body = await read_response(reader)
        assert int(body) == UPLOAD
        writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        _, body = await read_response(reader)
        assert body == b"2" and pool.connects == 1
        writer.close()
    await backend.close()


# -- websocket tunnels ------------------------------------------------------------------------------------

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.mark.parametrize("early", [
    False,
    True,
], ids=["after-the-101", "with-the-upgrade"])
async def test_websocket_upload_to_a_backend_that_does_not_read_is_bounded(
        monkeypatch: pytest.MonkeyPatch, early: bool) -> None:
    """A websocket backend that switches protocols and then reads nothing: the proxy stops reading the
    client, also when the client sent its first frames right behind the upgrade request (read with it,
    held until the 101, then more than the upstream takes). The tunnel works once the backend reads."""
    switch, release = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await switch.wait()
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await release.wait()
        grow(reader, writer)
        total = 0
        while data := await reader.read(64 * KIB):
            total += len(data)
        writer.write(b"got %d" % total)
        await writer.drain()

    backend = await small_backend(handler).start()
    small_upstream_socket(monkeypatch, backend.port)
    async with Harness(make_state([backend.endpoint])) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.transport.set_write_buffer_limits(high=2 * UPLOAD)
        if early:
            writer.write(UPGRADE + b"w" * UPLOAD)
            await until(lambda: the_client(h).current is not None
                        and len(the_client(h).current.tunnel_data) > HELD_MIN,
                        "the proxy holds the bytes read with the upgrade request")
            switch.set()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        else:
            writer.write(UPGRADE)
            switch.set()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"w" * UPLOAD)
        assert head.startswith(b"HTTP/1.1 101")
        await until(lambda: the_client(h).tunnel is not None, "the tunnel is up")
        tunnel = the_client(h).tunnel
        held = await settled(lambda: upstream_held(tunnel))
        assert held < BOUND, f"the proxy holds {held} bytes the backend did not read"
        release.set()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"got %d" % UPLOAD
        writer.close()
    await backend.close()


# -- the client reads slowly ------------------------------------------------------------------------------


def client_held(h: Harness) -> int:
    """What the proxy holds for the client: its write buffer and the output not yet written."""
    proto = the_client(h)
    if proto.transport is None or proto.closed:
        return 0
    return int(proto.transport.get_write_buffer_size()) + sum(map(len, proto.out))


async def test_pipelined_downloads_to_a_client_that_does_not_read_are_bounded_and_the_connections_work(
        ) -> None:
    """Two large responses asked for at once (pipelined) by a client that reads nothing, then the first
    whole and again nothing: each time the proxy stops reading the backend instead of holding the
    response. Afterwards the same client connection gets a third answer over the same pooled upstream
    connection (no reading left paused on either)."""
    (a,) = await start_backends("a")
    size = 48 * MIB
    async with Harness(make_state([a])) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size * 2)
        await until(lambda: a.sent, "the backend sends")
        await settled(lambda: client_held(h) + a.sent)  # (both stop moving)
        held = client_held(h)
        assert held < DOWNLOAD_BOUND, f"the proxy holds {held} bytes of the first response"
        assert a.sent < size, "the backend sent it all to a client that reads nothing"
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Content-Length: %d" % size in head
        assert await asyncio.wait_for(read_body(reader, size), 10) == size
        await until(lambda: a.sent > size, "the second response starts")
        await settled(lambda: client_held(h) + a.sent)
        held = client_held(h)
        assert held < DOWNLOAD_BOUND, f"the proxy holds {held} bytes of the second response"
        assert a.sent < 2 * size, "the backend sent it all to a client that reads nothing"
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Content-Length: %d" % size in head
        assert await asyncio.wait_for(read_body(reader, size), 10) == size
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, body = await read_response(reader)
        assert body == b"a"
        pool = h.proxy.pools[a.endpoint.id]
        assert (pool.connects, a.connections) == (1, 1)
        writer.close()
    await a.close()


async def test_websocket_download_to_a_client_that_does_not_read_is_bounded() -> None:
    """A websocket backend pushing a lot to a client that reads nothing: the proxy stops reading the
    backend (the tunnel's upstream) instead of holding it; all of it arrives once the client reads."""
    size = 48 * MIB
    sent = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        block = b"d" * (64 * KIB)
        while sent < size:
            writer.write(block)
            sent += len(block)
            await writer.drain()
        await reader.read()  # until the client's EOF
        writer.write_eof()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    endpoint = BackendEndpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    async with Harness(make_state([endpoint])) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(UPGRADE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        await until(lambda: sent, "the backend sends")
        await settled(lambda: client_held(h) + sent)
        held = client_held(h)
        assert held < DOWNLOAD_BOUND, f"the proxy holds {held} bytes the client did not read"
        assert sent < size, "the backend sent it all to a client that reads nothing"
        assert await asyncio.wait_for(read_body(reader, size), 10) == size
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    server.close()
