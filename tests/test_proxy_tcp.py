"""TCP listeners: echo through the proxy, half-close, retries on connect failure, backpressure and
the idle timeout."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from proxy_support import Harness, make_state
from steelyard.config.desired import BackendEndpoint
from steelyard.model import Protocol

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
        writer.close()
    await a.close()
