"""TCP listeners: echo through the proxy, half-close, retries on connect failure, backpressure, the
idle timeout, and what a client sends (bytes, an EOF) before the upstream connection is up."""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any

import pytest
import uvloop

from proxy_support import Harness, make_state
from steelyard.config.desired import BackendEndpoint
from steelyard.model import Protocol
from steelyard.proxy.tcp import TcpTunnel

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


class EchoServer:
    """Echoes bytes, then answers EOF with a goodbye and its own EOF (proves half-close both ways)."""

    def __init__(self, name: str):
        self.name = name
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> EchoServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def endpoint(self) -> BackendEndpoint:
        return BackendEndpoint("127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(f"hello from {self.name}\n".encode())
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"bye\n")
        writer.write_eof()
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def _free_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_tcp_echo_with_half_close_and_round_robin() -> None:
    a, b = await EchoServer("a").start(), await EchoServer("b").start()
    async with Harness(make_state([a.endpoint, b.endpoint], protocol=Protocol.TCP)) as h:
        seen = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            seen.append(await asyncio.wait_for(reader.readline(), 5))
            writer.write(b"ping" * 1000)
            writer.write_eof()  # half-close: we still read the rest
            rest = await asyncio.wait_for(reader.read(), 5)
            assert rest == b"ping" * 1000 + b"bye\n"
            writer.close()
        assert sorted(seen) == [b"hello from a\n", b"hello from b\n"]
        await asyncio.sleep(0.05)
        assert not h.proxy.tcp_tunnels  # both tunnels closed once both directions ended
    await a.close()
    await b.close()


async def test_tcp_connect_failure_tries_another_endpoint() -> None:
    a = await EchoServer("a").start()
    dead = BackendEndpoint("127.0.0.1", await _free_port())
    async with Harness(make_state([dead, a.endpoint], protocol=Protocol.TCP)) as h:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            assert await asyncio.wait_for(reader.readline(), 5) == b"hello from a\n"
            writer.close()
        assert h.proxy.stats.retries >= 1
        runtime = h.registry.get("default/web/http")
        assert runtime is not None and runtime.retries == h.proxy.stats.retries  # (per upstream, for metrics)
    await a.close()


async def test_tcp_all_endpoints_down_closes_the_connection() -> None:
    dead = BackendEndpoint("127.0.0.1", await _free_port())
    async with Harness(make_state([dead], protocol=Protocol.TCP)) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_tcp_backpressure_bounds_what_the_proxy_reads() -> None:
    """The backend reads nothing: the proxy must stop reading the client."""
    release = asyncio.Event()
    received = 0

    async def stalling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await release.wait()
        while data := await reader.read(1 << 20):
            received += len(data)
        writer.close()

    server = await asyncio.start_server(stalling, "127.0.0.1", 0)
    endpoint = BackendEndpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    size = 128 << 20
    async with Harness(make_state([endpoint], protocol=Protocol.TCP)) as h:
        _, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.transport.set_write_buffer_limits(high=size + 1)
        block = b"t" * (1 << 20)
        for _ in range(size >> 20):
            writer.write(block)
        last = -1
        for _ in range(50):
            await asyncio.sleep(0.1)
            left = writer.transport.get_write_buffer_size()
            if left == last:
                break
            last = left
        assert left > size // 2, "the proxy kept reading although the backend does not"
        release.set()
        writer.write_eof()
        for _ in range(300):
            if received == size:
                break
            await asyncio.sleep(0.05)
        assert received == size
        writer.close()
    server.close()


async def test_tcp_idle_tunnel_is_closed() -> None:
    a = await EchoServer("a").start()
    state = make_state([a.endpoint], protocol=Protocol.TCP, policy={"timeouts": {"idle": "200ms"}})
    async with Harness(state) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        assert await asyncio.wait_for(reader.readline(), 5) == b"hello from a\n"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the idle timeout
        assert h.proxy.stats.timeouts == 1
        runtime = h.registry.get("default/web/http")
        assert runtime is not None and runtime.timeouts == 1  # (per upstream, for metrics)
        writer.close()
    await a.close()


# The tests below also run on the plain asyncio loop: its transports read, pause and report an EOF
# differently from uvloop's.
BOTH_LOOPS = pytest.mark.parametrize("event_loop_policy",
                                     [asyncio.DefaultEventLoopPolicy(), uvloop.EventLoopPolicy()],
                                     ids=["asyncio", "uvloop"])


class HeldBackend:
    """A backend the proxy really cannot connect to yet: its listen queue (backlog 0) holds a connection
    nobody accepts, so Linux drops the proxy's SYN. `release()` makes room (and serves); the proxy's
    connect then completes when it sends its SYN again (1 s after the first).

    A connection reads `size` bytes (all until the EOF when None), answers `got N` and closes. `rcvbuf`
    sets its receive buffer (SO_RCVBUF), which bounds the window it offers.
    (Its preconditions fail with pytest.fail, not assert, so a broken setup is told from a broken proxy.)"""

    def __init__(self, size: int | None = None, rcvbuf: int | None = None):
        self.size = size
        self.received: list[bytes] = []
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by its connections
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        # readable once the filler waits in the queue: from then on the queue is full
        if not select.select([self.sock], [], [], 2)[0]:
            pytest.fail("the filler connection was not queued")
        self.server: asyncio.Server | None = None

    @property
    def endpoint(self) -> BackendEndpoint:
        return BackendEndpoint("127.0.0.1", self.port)

    async def release(self, serve: bool = True) -> None:
        """Without `serve`, the proxy's connection completes but waits in the queue, never read."""
        self.sock.settimeout(2)
        accepted, _ = self.sock.accept()  # the filler: the queue has room again
        accepted.close()
        self.filler.close()
        if serve:
            self.server = await asyncio.start_server(self._serve, sock=self.sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await (reader.read() if self.size is None else reader.readexactly(self.size))
        self.received.append(data)
        writer.write(b"got %d\n" % len(data))
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        self.filler.close()
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()


async def _held_by_the_proxy(h: Harness) -> TcpTunnel:
    """The client's tunnel once the proxy holds what the client sent (bytes, or an EOF alone) with its
    upstream connection not up yet: the state these tests are about."""
    async def wait() -> TcpTunnel:
        while True:
            for tunnel in h.proxy.tcp_tunnels:
                if tunnel.client.early or tunnel.client.eof_in:
                    return tunnel
            await asyncio.sleep(0.01)
    tunnel = await asyncio.wait_for(wait(), 5)
    if tunnel.upstream is not None:
        pytest.fail("the upstream connection was up before the client's bytes arrived")
    return tunnel


async def _no_tunnel_left(h: Harness) -> None:
    async def wait() -> None:
        while h.proxy.tcp_tunnels:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), 5)


@BOTH_LOOPS
async def test_tcp_bytes_sent_before_the_upstream_connects_arrive_in_order() -> None:
    """A client that talks first (SMTP's pipelining, a TLS ClientHello, a Redis command) sends before the
    proxy's connect completes: all of it reaches the backend in order, and the answer comes back."""
    payload = b"".join(b"%07d\n" % i for i in range(1 << 17))  # 1 MiB: more than the proxy reads at once
    backend = HeldBackend(size=len(payload))
    state = make_state([backend.endpoint], protocol=Protocol.TCP, policy={"timeouts": {"connect": "5s"}})
    async with Harness(state) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(payload)
        await _held_by_the_proxy(h)
        await backend.release()
        assert await asyncio.wait_for(reader.readline(), 10) == b"got %d\n" % len(payload)
        assert backend.received == [payload]
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await _no_tunnel_left(h)
    await backend.close()


@BOTH_LOOPS
@pytest.mark.parametrize("payload", [b"".join(b"%05d\n" % i for i in range(4000)), b""],
                         ids=["bytes", "nothing"])
async def test_tcp_half_close_before_the_upstream_connects(payload: bytes) -> None:
    """A client that sends its request and shuts down its sending side at once (`nc -N`, a one-shot
    query; or sends nothing and only wants the answer) before the proxy's connect completes: the backend
    reads the bytes then the EOF and still answers; the client reads the answer, then the EOF."""
    backend = HeldBackend()
    state = make_state([backend.endpoint], protocol=Protocol.TCP, policy={"timeouts": {"connect": "5s"}})
    async with Harness(state) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(payload)
        writer.write_eof()
        assert writer.transport.get_write_buffer_size() == 0  # bytes and FIN are sent, not buffered
        await _held_by_the_proxy(h)
        await backend.release()
        assert await asyncio.wait_for(reader.read(), 10) == b"got %d\n" % len(payload)
        assert backend.received == [payload]  # read() returned: the backend saw the EOF
        writer.close()
        await _no_tunnel_left(h)
    await backend.close()


@BOTH_LOOPS
async def test_tcp_early_bytes_and_eof_survive_a_connect_timeout() -> None:
    """The first endpoint never completes the connect (its SYNs are dropped): after the connect timeout
    the tunnel retries on the next one, and what the client sent meanwhile goes there, whole."""
    held, a = HeldBackend(), await EchoServer("a").start()
    state = make_state([held.endpoint, a.endpoint], protocol=Protocol.TCP,
                       policy={"timeouts": {"connect": "500ms"}})
    async with Harness(state) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(b"ping" * 1000)
        writer.write_eof()
        await _held_by_the_proxy(h)
        rest = await asyncio.wait_for(reader.read(), 10)
        assert rest == b"hello from a\n" + b"ping" * 1000 + b"bye\n"
        assert h.proxy.stats.retries == 1
        assert held.received == []
        writer.close()
        await _no_tunnel_left(h)
    await held.close()
    await a.close()


@BOTH_LOOPS
async def test_tcp_backpressure_holds_when_the_early_bytes_fill_the_upstream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Like test_tcp_backpressure_bounds_what_the_proxy_reads, with the client's first bytes held while the
    connect is pending and more than the new upstream socket takes at once (+ 64 KiB). On loopback a
    socket takes them all (64 KiB segments, a large send buffer), so the proxy's upstream socket gets a
    small send buffer (SO_SNDBUF 4 KiB, set before its connect) and the backend offers a small window."""
    backend = HeldBackend(rcvbuf=4096)
    loop = asyncio.get_running_loop()
    create_connection = loop.create_connection

    async def small_send_buffer(factory: Any, host: str, port: int, **kwargs: Any) -> Any:
        if port != backend.port:
            return await create_connection(factory, host, port, **kwargs)
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            return await create_connection(factory, sock=sock, **kwargs)
        except BaseException:
            sock.close()
            raise

    monkeypatch.setattr(loop, "create_connection", small_send_buffer)
    size = 32 << 20
    state = make_state([backend.endpoint], protocol=Protocol.TCP, policy={"timeouts": {"connect": "5s"}})
    async with Harness(state) as h:
        _, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.transport.set_write_buffer_limits(high=size + 1)
        writer.write(b"t" * size)
        tunnel = await _held_by_the_proxy(h)
        if sum(map(len, tunnel.client.early)) <= 96 << 10:
            pytest.fail("the proxy held too few early bytes to fill the upstream")
        await backend.release(serve=False)  # the backend accepts (its kernel does) and reads nothing
        left = last = -1
        for _ in range(80):
            await asyncio.sleep(0.1)
            left = writer.transport.get_write_buffer_size()
            if tunnel.upstream is not None and left == last:
                break
            last = left
        if tunnel.upstream is None:
            pytest.fail("the upstream connection did not come up")
        writer.transport.abort()
    await backend.close()
    assert left > size // 2, f"the proxy read {size - left} bytes although the backend reads nothing"
