"""Writes straight to the socket (`steelyard.proxy.sockets.write_now`, compiled build): bytes never overtake
what the transport still holds, nor go to a closing transport's socket, on either event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
import uvloop

from proxy_support import Harness, make_state, start_backends
from steelyard.proxy import sockets

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")

MIB = 1 << 20


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


async def test_answers_behind_a_response_the_transport_still_holds_keep_their_order() -> None:
    """A large download the client does not read yet fills the socket, so the transport holds the rest;
    the two small answers pipelined behind it must wait for it, not go to the socket first."""
    (a,) = await start_backends("a")
    size = MIB
    async with Harness(make_state([a])) as h:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a full socket soon
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", h.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size
                     + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d\r\n" % size in head
        body = bytearray()
        while len(body) < size:  # slowly, so that the proxy's transport keeps holding the download's end
            body += await asyncio.wait_for(reader.read(min(16 * 1024, size - len(body))), 5)
            await asyncio.sleep(0.002)
        assert body.count(b"HTTP/1.1") == 0, "a later answer went out in the middle of the download"
        for _ in range(2):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 1\r\n" in head
            assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
        writer.close()
    await a.close()


class HeldTransport:
    """Stands in for a transport around `peer`: says what it holds and whether it is closing, and keeps
    what it is given (which a real one would send after what it holds)."""

    def __init__(self, held: int = 0, closing: bool = False):
        self.held = held
        self.closing = closing
        self.given: list[bytes] = []

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.held

    def write(self, data: bytes) -> None:
        self.given.append(data)


def received(sock: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += chunk


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    yield ours, peer
    ours.close()
    peer.close()


@pytest.mark.parametrize(("held", "closing"), [(1, False), (0, True)])
def test_a_write_behind_held_bytes_or_on_a_closing_transport_goes_through_the_transport(
        pair: tuple[socket.socket, socket.socket], held: int, closing: bool) -> None:
    ours, peer = pair
    transport = HeldTransport(held, closing)
    sockets.write_now(transport, ours.fileno(), b"second")
    assert transport.given == [b"second"]
    assert received(peer) == b"", "the bytes overtook what the transport holds (or went to a closed one)"


def test_a_write_on_an_idle_transport_arrives_whole_and_in_order(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """More than the socket takes at once: what send() took is on the wire first, then the rest through
    the transport (plain Python: all of it through the transport)."""
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096  # 1 MiB
    transport = HeldTransport()
    sockets.write_now(transport, ours.fileno(), data)
    direct = received(peer)
    assert direct + b"".join(transport.given) == data
    if sockets._COMPILED:
        assert direct, "nothing went straight to the socket"
        assert transport.given, "a full socket took everything"
