"""Test helpers for the proxy: real backends on 127.0.0.1, a proxy in the test's loop, a raw client.

Backends answer with their name (HAProxy's reg-test habit) and act on the path:
  /echo             echo the request body (Content-Length response)
  /count            read the body as it streams, answer how many bytes arrived
  /chunked?n=K      answer K chunks "part-i" with chunked framing
  /bytes?n=N        stream N bytes (Content-Length), in 64 KiB writes with drain
  /status/NNN       answer status NNN
  /slow?ms=T        answer after T milliseconds
  /close            close the connection without answering
  /close-reused     the same on a connection that served a request before (a keep-alive timeout race)
  /continue         answer 100 Continue first, then echo the body
  /headers          answer the request head as received, as the body
  /weight?w=W       answer with a `Steelyard-Weight: W` field (dynamic weights, Header mode)
  /eof              answer with neither Content-Length nor chunked: the body ends with the connection
  /ws               switch protocols (101) and echo raw bytes both ways
  /partial          send a head and 3 of 10 body bytes, then stay silent
  /stall            wait for `release` before reading the body, then answer its length
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import httptools

from steelyard.config.desired import BackendEndpoint, DesiredState, Listener, Route, Upstream
from steelyard.model import BalancerPolicySpec, Protocol
from steelyard.proxy import ProxyConfig, ProxyServer, UpstreamRegistry
from steelyard.runtime.upstream import UpstreamRuntime

LISTENER_PORT = 18080  # the listener's configured port (its key); the socket binds an ephemeral port


@dataclass
class Backend:
    name: str
    server: asyncio.Server | None = None
    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    # Misbehaviour for every request: an int status to answer, "reset" (close at once), "garbage".
    mode: int | str | None = None
    sent: int = 0  # body bytes written by /bytes so far
    release: asyncio.Event = field(default_factory=asyncio.Event)  # /stall waits for it before reading
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def endpoint(self) -> BackendEndpoint:
        return BackendEndpoint(host="127.0.0.1", port=self.port, name=self.name)

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def kill(self) -> None:
        """Like a crashed process: stop listening and reset every open connection."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        served = 0
        try:
            while await self._one(reader, writer, served):
                served += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, served: int) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        path, _, query = target.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        self.requests.append((method, path))
        self.heads.append(head)

        async def body_chunks() -> AsyncIterator[bytes]:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass
                        return
                    yield await reader.readexactly(size)
                    await reader.readexactly(2)
            else:
                left = int(headers.get("content-length", "0"))
                while left:
                    data = await reader.read(min(left, 1 << 16))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    yield data

        def respond(status: int, body: bytes, extra: str = "") -> None:
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nX-Backend: {self.name}\r\n{extra}\r\n"
                .encode() + (b"" if method == "HEAD" else body)
            )

        if self.mode == "reset":
            writer.transport.abort()
            return False
        if self.mode == "garbage":
            writer.write(b"HTTP/1.1 2x0 Broken\r\n\r\n")
            await writer.drain()
            return False
        if isinstance(self.mode, int):
            async for _ in body_chunks():
                pass
            respond(self.mode, f"{self.name} {self.mode}".encode())
            await writer.drain()
            return True
        if path == "/close" or (path == "/close-reused" and served):
            writer.transport.abort()
            return False
        if path == "/ws":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            return False
        if path == "/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = b"".join([c async for c in body_chunks()])
            respond(200, body)
        elif path == "/echo":
            body = b"".join([c async for c in body_chunks()])
            respond(200, body)
        elif path == "/partial":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            await reader.read()  # hold the connection open, silent, until the proxy closes it
            return False
        elif path == "/stall":
            await self.release.wait()
            total = 0
            async for chunk in body_chunks():
                total += len(chunk)
            respond(200, str(total).encode())
        elif path == "/count":
            total = 0
            async for chunk in body_chunks():
                total += len(chunk)
            respond(200, str(total).encode())
        else:
            async for _ in body_chunks():
                pass
            if path == "/chunked":
                n = int(params.get("n", "3"))
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Backend: "
                             + self.name.encode()
                             + b"\r\nTrailer: X-T\r\n\r\n")
                for i in range(n):
                    part = f"part-{i};".encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\nX-T: 1\r\n\r\n")
            elif path == "/bytes":
                n = int(params.get("n", "0"))
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
                block = b"x" * 65536
                while n > 0:
                    piece = block[: min(n, 65536)]
                    writer.write(piece)
                    n -= len(piece)
                    self.sent += len(piece)
                    await writer.drain()
            elif path.startswith("/status/"):
                status = int(path.rsplit("/", 1)[1])
                if status in (204, 304):
                    writer.write(f"HTTP/1.1 {status} X\r\nX-Backend: {self.name}\r\n"
                                 f"{'Content-Length: 7' if status == 304 else ''}\r\n\r\n".encode()
                                 .replace(b"\r\n\r\n\r\n", b"\r\n\r\n"))
                else:
                    respond(status, f"{self.name} {status}".encode())
            elif path == "/slow":
                await asyncio.sleep(int(params.get("ms", "100")) / 1000)
                respond(200, self.name.encode())
            elif path == "/weight":
                respond(200, self.name.encode(), f"Steelyard-Weight: {params.get('w', '5')}\r\n")
            elif path == "/headers":
                respond(200, head)
            elif path == "/eof":
                writer.write(b"HTTP/1.1 200 OK\r\nX-Backend: " + self.name.encode() + b"\r\n\r\nuntil-close")
                await writer.drain()
                return False
            else:
                respond(200, self.name.encode(), "Connection: keep-alive\r\n")
        await writer.drain()
        return headers.get("connection", "").lower() != "close"


def make_state(backends: Sequence[Backend | BackendEndpoint], *, protocol: Protocol = Protocol.HTTP,
               policy: dict[str, Any] | None = None, hosts: tuple[str, ...] = (), prefix: str = "/",
               key: str = "default/web/http", extra_routes: Sequence[tuple[Upstream, Route]] = ()
               ) -> DesiredState:
    endpoints = tuple(b.endpoint if isinstance(b, Backend) else b for b in backends)
    spec = BalancerPolicySpec.model_validate(policy or {})
    upstream = Upstream(key=key, load_balancer=key.rsplit("/", 1)[0], port_name="http", protocol=protocol,
                        policy=spec, policy_name=None, endpoints=endpoints)
    upstreams = {key: upstream}
    routes = [Route(hosts=hosts, path_prefix=prefix, upstream=key)]
    for extra_upstream, route in extra_routes:
        upstreams[extra_upstream.key] = extra_upstream
        routes.append(route)
    listener = Listener(address="127.0.0.1", port=LISTENER_PORT, protocol=protocol, routes=tuple(routes))
    return DesiredState(upstreams=MappingProxyType(upstreams), listeners=(listener,), source="test")


class Harness:
    """A ProxyServer in the current loop with one listener bound to an ephemeral port on 127.0.0.1."""

    def __init__(self, state: DesiredState, config: ProxyConfig | None = None):
        self.registry = UpstreamRegistry()
        self.proxy = ProxyServer(config or ProxyConfig(sweep_interval=0.05))
        self.state = state
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Harness:
        self.proxy.snapshot = self.registry.apply(self.state)
        listener = self.state.listeners[0]
        self.server = await asyncio.get_running_loop().create_server(
            self.proxy.protocol_factory(listener), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def apply(self, state: DesiredState) -> None:
        self.state = state
        self.proxy.snapshot = self.registry.apply(state)

    def runtime(self, key: str = "default/web/http") -> UpstreamRuntime:
        """The running upstream `key` (make_state's default key unless told)."""
        runtime = self.registry.get(key)
        assert runtime is not None, f"no upstream {key!r}"
        return runtime

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.proxy.shutdown(1.0)

    async def connect(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return Client(reader, writer)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Collector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self.parser: Any = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode(), value.decode()))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.responses.append(Response(self.parser.get_status_code(), self._headers, b"".join(self._body)))
        self._headers, self._body = [], []


class Client:
    """A raw HTTP/1.1 client: bytes out, parsed responses in, and whether the proxy closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.collector = _Collector()
        self.parser = httptools.HttpResponseParser(self.collector)
        self.collector.parser = self.parser
        self.eof = False
        self.raw = bytearray()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def responses(self, n: int, timeout: float = 10.0, head_only: bool = False) -> list[Response]:
        async def read() -> None:
            while len(self.collector.responses) < n:
                data = await self.reader.read(1 << 16)
                if not data:
                    self.eof = True
                    return
                self.raw += data
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    return
        await asyncio.wait_for(read(), timeout)
        got, self.collector.responses = self.collector.responses[:n], self.collector.responses[n:]
        if len(got) < n:
            raise AssertionError(f"connection closed after {len(got)} of {n} responses: {bytes(self.raw)!r}")
        return got

    async def response(self, timeout: float = 10.0) -> Response:
        return (await self.responses(1, timeout))[0]

    async def closed(self, timeout: float = 10.0) -> bool:
        """True when the proxy closes the connection (reads until EOF)."""
        if self.eof:
            return True
        try:
            while data := await asyncio.wait_for(self.reader.read(1 << 16), timeout):
                self.raw += data
        except (ConnectionError, TimeoutError):
            return False
        self.eof = True
        return True

    async def request(self, method: str = "GET", path: str = "/", host: str = "example.com",
                      body: bytes | None = None, headers: str = "") -> Response:
        data = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}".encode()
        if body is not None:
            data += b"Content-Length: %d\r\n" % len(body)
        await self.send(data + b"\r\n" + (body or b""))
        return await self.response()

    def close(self) -> None:
        self.writer.close()


async def start_backends(*names: str) -> list[Backend]:
    return [await Backend(name).start() for name in names]


def _serve_proxy(backend_ports: list[int]) -> None:
    """`python proxy_support.py PORT...`: a proxy in its own process (for memory measurements).

    Prints its listening port on stdout, then serves until stdin closes.
    """
    import sys

    from steelyard.config.desired import BackendEndpoint as _Endpoint

    async def main() -> None:
        state = make_state([_Endpoint("127.0.0.1", p) for p in backend_ports])
        async with Harness(state) as h:
            print(h.port, flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)

    uvloop.run(main())


if __name__ == "__main__":
    import sys

    import uvloop

    _serve_proxy([int(p) for p in sys.argv[1:]])


_DATE_LINE = re.compile(rb"\r\nDate: (?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                        rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                        rb"\d\d:\d\d:\d\d GMT(?=\r\n)")


def without_date(data: bytes | bytearray, count: int | None = None) -> bytes:
    """`data` less its Date lines, which must be IMF-fixdates (RFC 9110 §5.6.7): the proxy adds one to a
    final response that has none (§6.6.1), so exact comparisons leave them out. `count`: how many there
    must be."""
    out, found = _DATE_LINE.subn(b"", bytes(data))
    assert count is None or found == count, (found, count, bytes(data))
    return out


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Scripted:
    """A backend running `handler` per connection; `open` counts its connections still open. With `rcvbuf`,
    its listening socket (so each connection) gets that SO_RCVBUF, a small window; `limit` is its
    StreamReaders' buffer limit (asyncio's default 64 KiB)."""

    def __init__(self, handler: Handler, *, rcvbuf: int | None = None, limit: int = 1 << 16):
        self.handler = handler
        self.rcvbuf = rcvbuf
        self.limit = limit
        self.server: asyncio.Server | None = None
        self.port = 0
        self.open = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Scripted:
        sock = socket.socket()
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._serve, sock=sock, limit=self.limit)
        self.port = sock.getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.writers.add(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    @property
    def endpoint(self) -> BackendEndpoint:
        return BackendEndpoint("127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Whether `check()` becomes true within `timeout` (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
