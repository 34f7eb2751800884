"""The HTTP proxy's result must not depend on how bytes are split into reads (property-based, in-process).

`HttpProxyProtocol` and `UpstreamConnection` are driven directly with fake transports that only record
what is written: no sockets, no event loop. A `World` plays the network: client reads (respecting
pause_reading), upstream connects (deferred, like the real task), a backend that decodes what the proxy
writes upstream and answers each complete request with scripted bytes, cut into reads as told, and
connection_lost after close()/abort(). `World.run()` steps until nothing more can happen. With
`per_pass`, a stand-in loop ends a pass every N events, which is when output the proxy left for the end
of the pass (`ProxyServer.flush_later`) is written: the cut runs draw 0 (at once), 1 or 3.

Properties:
1. request split invariance: pipelined valid requests fed in one read or cut anywhere give the same
   requests upstream (heads byte for byte, decoded bodies) and the same bytes to the client;
2. response split invariance: a response stream (interim 1xx, hop-by-hop fields, chunked, 204/304, HEAD,
   many fields) cut anywhere gives the client the same responses as in one read, and the right ones;
3. garbage never escapes: arbitrary or mutated bytes on either side never raise out of data_received;
   the client gets the backend's answers in order then at most one 4xx/5xx with Connection: close
   (and the connection closed), and only well-formed heads reach the upstream.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httptools
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy_support import make_state, without_date
from steelyard.config.desired import BackendEndpoint
from steelyard.proxy import ProxyConfig, ProxyServer, UpstreamRegistry
from steelyard.proxy.http import HttpProxyProtocol, UpstreamConnection

CLIENT_IP = "10.1.2.3"
_SETTINGS = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# -- the simulated network ----------------------------------------------------------------------------------


class FakeTransport:
    """Records writes; close()/abort() schedule connection_lost (delivered by World.run)."""

    def __init__(self, world: World, peer: tuple[str, int]):
        self.world = world
        self.peer = peer
        self.data = bytearray()
        self.paused = False
        self.closed = False
        self.aborted = False
        self.lost = False
        self.eof_written = False
        self.protocol: HttpProxyProtocol | UpstreamConnection | None = None

    def write(self, data: bytes) -> None:
        if self.lost:  # uvloop raises on a closed handle
            self.world.errors.append(f"write after connection_lost: {bytes(data)[:40]!r}")
        elif self.closed:
            self.world.errors.append(f"write after close: {bytes(data)[:40]!r}")
        else:
            self.data += data

    def writelines(self, pieces: Sequence[bytes]) -> None:
        for piece in pieces:
            self.write(piece)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.world.to_lose.append(self)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed


@dataclass
class Upstream:
    """One upstream connection and the backend's side of it."""

    conn: UpstreamConnection
    transport: FakeTransport
    decoded: int = 0  # bytes of transport.data decoded into requests
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)  # (head, decoded body)
    reads: deque[bytes | None] = field(default_factory=deque)  # to deliver; None: the backend closes
    peer_closed: bool = False


# The backend's answer to a request: (method, head, body, index of the request overall) -> reads (a None
# read closes the connection).
Responder = Callable[[bytes, bytes, bytes, int], list[bytes | None]]


class _Pass:
    """The event loop as `ProxyServer.flush_later` sees it: what is scheduled runs at the end of a pass."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.ready.append(callback)


class World:
    def __init__(self, responder: Responder, config: ProxyConfig | None = None, per_pass: int = 0):
        """`per_pass`: 0, the proxy writes at once (no loop); N, a loop pass ends after N network events
        (or when nothing else is ready), and output left for the end of the pass is written then."""
        self.responder = responder
        self.per_pass = per_pass
        self.events = 0
        self.errors: list[str] = []
        self.to_lose: list[FakeTransport] = []
        self.connects: deque[tuple[object, object, HttpProxyProtocol]] = deque()
        self.upstreams: list[Upstream] = []
        self.answered: list[bytes] = []  # the method of each request answered, in order
        state = make_state([BackendEndpoint(host="192.0.2.10", port=8080)])
        self.proxy = ProxyServer(config or ProxyConfig())
        self.proxy.snapshot = UpstreamRegistry().apply(state)
        self.proxy.open_upstream = self._open_upstream  # type: ignore[method-assign]
        self.loop = _Pass()
        if per_pass:
            self.proxy._loop = self.loop  # type: ignore[assignment]
        self.client: HttpProxyProtocol = self.proxy.protocol_factory(state.listeners[0])()  # type: ignore[assignment]
        self.ct = FakeTransport(self, (CLIENT_IP, 40000))
        self.ct.protocol = self.client
        self.client.connection_made(self.ct)  # type: ignore[arg-type]
        self.input: deque[bytes] = deque()
        self.eof_sent = False

    def _open_upstream(self, pool: object, timeout: float, req: object, client: HttpProxyProtocol) -> None:
        self.connects.append((pool, req, client))  # completed by run(), as the connect task would be

    def _step(self) -> bool:
        """One event that the network has ready, upstream side first; False when there is none."""
        if self.to_lose:
            transport = self.to_lose.pop(0)
            transport.lost = True
            assert transport.protocol is not None
            transport.protocol.connection_lost(None)
            return True
        if self.connects:
            pool, req, client = self.connects.popleft()
            conn = UpstreamConnection(self.proxy, pool)  # type: ignore[arg-type]
            transport = FakeTransport(self, ("192.0.2.10", 8080))
            transport.protocol = conn
            conn.connection_made(transport)  # type: ignore[arg-type]
            self.upstreams.append(Upstream(conn, transport))
            pool.opened()  # type: ignore[attr-defined]
            client.connected(req, conn, None, False)  # type: ignore[arg-type]
            return True
        for up in self.upstreams:
            self._decode(up)
            if up.reads and not up.transport.lost and not up.peer_closed and not up.transport.paused:
                read = up.reads.popleft()
                if read is None:
                    up.peer_closed = True
                    if not up.transport.closed:
                        up.transport.closed = up.transport.lost = True
                        up.conn.connection_lost(None)
                else:
                    up.conn.data_received(read)
                return True
        if self.input and not self.ct.paused and not self.ct.closed:
            self.client.data_received(self.input.popleft())
            return True
        return False

    def _end_pass(self) -> bool:
        ready, self.loop.ready = self.loop.ready, []
        for callback in ready:
            callback()
        return bool(ready)

    def _decode(self, up: Upstream) -> None:
        while True:
            taken = take_message(bytes(up.transport.data[up.decoded:]), is_request=True)
            if taken is None:
                return
            head, body, used = taken
            up.decoded += used
            up.requests.append((head, body))
            method = head.split(b" ", 1)[0]
            self.answered.append(method)
            up.reads.extend(self.responder(method, head, body, len(self.answered) - 1))

    def run(self, reads: Sequence[bytes] = (), *, eof: bool = False) -> World:
        self.input.extend(reads)
        for _ in range(100_000):
            if self._step():
                self.events += 1
                if self.per_pass and self.events % self.per_pass == 0:
                    self._end_pass()
                continue
            if self._end_pass():
                continue
            if eof and not self.eof_sent and not self.input and not self.ct.closed:
                self.eof_sent = True
                if not self.client.eof_received():
                    self.ct.close()
                continue
            if self.ct.eof_written and not self.eof_sent and not self.input and not self.ct.closed:
                # The proxy half-closed (a lingering close) and read what was left: the client, having read
                # the end of the stream, closes its end too.
                self.eof_sent = True
                if not self.client.eof_received():
                    self.ct.close()
                continue
            return self
        raise AssertionError("the simulation does not settle")

    @property
    def stuck(self) -> bool:
        """Client bytes left unread while the proxy has nothing left to do: it would hang."""
        return bool(self.input) and not self.ct.closed

    def upstream_view(self) -> list[tuple[list[tuple[bytes, bytes]], bytes, bool]]:
        """Per upstream connection: the requests decoded, the bytes after them, whether it was aborted."""
        return [(up.requests, bytes(up.transport.data[up.decoded:]), up.transport.aborted)
                for up in self.upstreams]


# -- message framing (the test's own, simple decoder for the bytes the proxy writes) -----------------------

_HEAD_END = b"\r\n\r\n"


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head[:-4].split(b"\r\n")[1:]
    return [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines)]


def take_message(buf: bytes, *, is_request: bool, no_body: bool = False,
                 at_close: bool = False) -> tuple[bytes, bytes, int] | None:
    """(head, decoded body, bytes used) of the complete message at the start of `buf`, else None."""
    end = buf.find(_HEAD_END)
    if end < 0:
        return None
    head = buf[:end + 4]
    pos = end + 4
    fields = dict(_fields(head))
    status = 0 if is_request else int(head[9:12])
    if no_body or status in (204, 304) or 100 <= status < 200:
        return head, b"", pos
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                while True:  # trailer section
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        return None
                    line, pos = buf[pos:eol], eol + 2
                    if not line:
                        return head, bytes(body), pos
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos:pos + size]
            pos += size + 2
    if b"content-length" in fields:
        n = int(fields[b"content-length"])
        if len(buf) < pos + n:
            return None
        return head, buf[pos:pos + n], pos + n
    if is_request:
        return head, b"", pos
    return (head, buf[pos:], len(buf)) if at_close else None


def client_responses(world: World) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The responses the client got, heads as sent and bodies decoded, and the bytes left after them.
    A response to HEAD has no body: backend responses answer world.answered in order."""
    data = bytes(world.ct.data)
    out: list[tuple[bytes, bytes]] = []
    finals = 0
    while data:
        is_local = b"\r\nX-Backend:" not in data[:data.find(_HEAD_END) + 2] if _HEAD_END in data else False
        method = world.answered[finals] if not is_local and finals < len(world.answered) else b""
        taken = take_message(data, is_request=False, no_body=method == b"HEAD", at_close=world.ct.closed)
        if taken is None and is_local and _HEAD_END in data:  # a local answer to HEAD: the head only
            taken = take_message(data, is_request=False, no_body=True)
            assert taken is not None
        if taken is None:
            break
        head, body, used = taken
        out.append((head, body))
        if not head.startswith(b"HTTP/1.1 1"):
            finals += 1
        data = data[used:]
    return out, data


# -- generated requests ------------------------------------------------------------------------------------


@dataclass
class Req:
    method: bytes
    target: bytes
    fields: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunks: list[bytes] | None = None  # chunked body
    version: bytes = b"1.1"

    @property
    def closes(self) -> bool:
        """The connection ends after this request's response."""
        connection = dict(self.fields).get(b"Connection", b"").lower()
        return connection == b"close" or (self.version == b"1.0" and b"keep-alive" not in connection)

    def encode(self) -> bytes:
        lines = [b"%s %s HTTP/%s\r\n" % (self.method, self.target, self.version)]
        lines += [b"%s: %s\r\n" % nv for nv in self.fields]
        if self.chunks is not None:
            lines.append(b"\r\n")
            for i, chunk in enumerate(self.chunks):
                lines.append(b"%x%s\r\n%s\r\n" % (len(chunk), b";ext=1" if i % 2 else b"", chunk))
            lines.append(b"0\r\nX-Trailer: t\r\n\r\n" if len(self.chunks) % 2 else b"0\r\n\r\n")
        else:
            lines += [b"\r\n", self.body]
        return b"".join(lines)


_token_values = st.sampled_from([b"v", b"a b", b"", b"x" * 40, b"\xe9t\xe9", b"1, 2", b" spaced \t"])
_plain_fields = st.lists(st.tuples(
    st.sampled_from([b"Accept", b"accept", b"User-Agent", b"X-A", b"X-A", b"Cookie", b"X-Forwarded-For",
                     b"x-forwarded-for", b"X-Forwarded-Proto", b"Keep-Alive", b"TE", b"X-Secret",
                     b"Proxy-Connection", b"X-Long-Field-Name-" + b"n" * 30]),
    _token_values), max_size=6)


@st.composite
def requests(draw: st.DrawFn) -> Req:
    kind = draw(st.sampled_from(["GET", "HEAD", "POST", "CHUNKED", "DELETE"]))
    host_name = draw(st.sampled_from([b"Host", b"host", b"HOST"]))
    host = draw(st.sampled_from([b"example.com", b"Shop.Example:8080"]))
    path = draw(st.sampled_from([b"/", b"/a/b?q=1&r=%20", b"/x" * 20]))
    target = draw(st.sampled_from([path, b"http://abs.example:81" + path, b"http://abs.example" + path]))
    fields = [(host_name, host), *draw(_plain_fields)]
    connection = draw(st.sampled_from([None, b"keep-alive", b"Keep-Alive", b"keep-alive, X-Secret",
                                       b"close"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    if version == b"1.0" and connection is None:
        connection = b"keep-alive"
    if connection is not None:
        fields.insert(draw(st.integers(0, len(fields))), (b"Connection", connection))
    method = {"CHUNKED": b"POST"}.get(kind, kind.encode())
    req = Req(method, target, fields, version=version)
    if kind == "POST" or (kind == "DELETE" and draw(st.booleans())):
        req.body = draw(st.binary(max_size=40))
        name = draw(st.sampled_from([b"Content-Length", b"content-length"]))
        fields.insert(draw(st.integers(0, len(fields))), (name, b"%d" % len(req.body)))
    elif kind == "CHUNKED" and version == b"1.1":
        req.chunks = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3))
        fields.insert(draw(st.integers(0, len(fields))), (b"Transfer-Encoding", b"chunked"))
    return req


def _cuts(data: bytes, points: Sequence[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length)."""
    if not data:
        return [data]
    offsets = sorted({p % len(data) for p in points} - {0})
    return [data[a:b] for a, b in zip([0, *offsets], [*offsets, len(data)], strict=True)]


# A few cuts anywhere, or one read per byte.
_cut_points = st.lists(st.integers(0, 10_000), max_size=8) | st.just(range(1, 10_000))
# Writes at once (0), or left for the end of a loop pass of 1 or 3 network events (ProxyServer.flush_later).
_per_pass = st.sampled_from([0, 1, 3])
# The default limits, or small ones that requests straddle (431, 414, 413).
_configs = st.none() | st.builds(
    ProxyConfig, max_header_bytes=st.integers(40, 400), max_uri_bytes=st.integers(8, 120),
    max_headers=st.integers(1, 10), max_body_bytes=st.sampled_from([None, 0, 10, 30]))


_local_text = re.compile(rb"(charset=utf-8\r\nContent-Length: )\d+(\r\n(?:Connection: close\r\n)?\r\n)"
                         rb"steelyard: [^\n]*\n")


_date_line = re.compile(rb"\r\nDate: [^\r]*\r\n")


def _without_reasons(data: bytes | bytearray) -> bytes:
    """The client's bytes with the text of the proxy's own responses left out (their status stays), and
    their Date lines (two runs straddling a second would differ there)."""
    return _date_line.sub(b"\r\nDate: ?\r\n", _local_text.sub(rb"\1?\2", bytes(data)))


def _echo_responder(method: bytes, head: bytes, body: bytes, index: int) -> list[bytes | None]:
    """A keep-alive response naming what arrived (HEAD: the head only)."""
    payload = b"#%d %s %d %d" % (index, head.split(b"\r\n", 1)[0], len(head), len(body))
    response = (b"HTTP/1.1 200 OK\r\nX-Backend: b\r\nContent-Length: %d\r\n\r\n" % len(payload)
                + (b"" if method == b"HEAD" else payload))
    return [response]


# -- 1. request split invariance --------------------------------------------------------------------------


@settings(_SETTINGS, max_examples=250)
@given(reqs=st.lists(requests(), min_size=1, max_size=4), points=_cut_points, config=_configs,
       per_pass=_per_pass)
def test_requests_cut_anywhere_reach_the_upstream_and_client_the_same(
        reqs: list[Req], points: list[int], config: ProxyConfig | None, per_pass: int) -> None:
    stream = b"".join(r.encode() for r in reqs)
    whole = World(_echo_responder, config).run([stream])
    cut = World(_echo_responder, config, per_pass).run(_cuts(stream, points))
    assert not whole.errors and not cut.errors
    assert not whole.stuck and not cut.stuck
    if config is not None and config.max_body_bytes is not None and any(
            r.chunks and sum(map(len, r.chunks)) > config.max_body_bytes for r in reqs):
        # A chunked body crosses the limit after its head was forwarded, or before, if the request still
        # waited its turn: that head and the aborted connection may differ, never a complete request.
        assert [q for up in cut.upstream_view() for q in up[0]] == [q for up in whole.upstream_view()
                                                                  for q in up[0]]
    else:
        assert cut.upstream_view() == whole.upstream_view()
    # (a request over two limits may be refused for either: the status must be the same, not the text)
    assert _without_reasons(cut.ct.data) == _without_reasons(whole.ct.data)
    assert (cut.ct.closed, cut.ct.aborted) == (whole.ct.closed, whole.ct.aborted)
    if config is not None:
        return
    # and one read is right: every request answered until the first that closes the connection
    expected = 0
    for r in reqs:
        expected += 1
        if r.closes:
            break
    responses, rest = client_responses(whole)
    assert len(whole.answered) == expected and rest == b""
    assert [h.split(b"\r\n", 1)[0] for h, _ in responses] == [b"HTTP/1.1 200 OK"] * expected


# -- 2. response split invariance -------------------------------------------------------------------------

_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
               b"upgrade", b"content-length"}


@dataclass
class Resp:
    status: int
    fields: list[tuple[bytes, bytes]]  # as sent, framing included
    body: bytes  # decoded; not sent for HEAD, 204, 304
    head_request: bool = False
    interims: list[bytes] = field(default_factory=list)
    version: bytes = b"HTTP/1.1"
    reason: bytes = b"OK"
    chunks: list[bytes] | None = None
    close: bool = False  # the backend closes the connection after it
    framing: str = "length"  # or "chunked", "close" (the body ends with the connection), "none" (204)

    def encode(self) -> bytes:
        head = b"%s %d %s\r\n" % (self.version, self.status, self.reason)
        head += b"".join(b"%s:%s\r\n" % nv for nv in self.fields) + b"\r\n"
        if self.head_request or self.status in (204, 304):
            body = b""
        elif self.chunks is not None:
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in self.chunks) + b"0\r\nX-T: 1\r\n\r\n"
        else:
            body = self.body
        return b"".join(self.interims) + head + body

    @property
    def end_to_end(self) -> list[tuple[bytes, bytes]]:
        """The fields the client must get: not hop-by-hop, not named by Connection (lowercase, stripped)."""
        fields = _fields(b"X 200 X\r\n" + b"".join(b"%s:%s\r\n" % nv for nv in self.fields) + b"\r\n")
        named = {t.strip() for n, v in fields if n == b"connection" for t in v.lower().split(b",")}
        return [(n, v) for n, v in fields if n not in _HOP_BY_HOP and n not in named]


_INTERIMS = [b"HTTP/1.1 100 Continue\r\n\r\n",
             b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nX-Hint: h\r\n\r\n"]
_response_fields = st.lists(st.tuples(
    st.sampled_from([b"Server", b"Date", b"X-A", b"X-A", b"Set-Cookie", b"Content-Type", b"X-Connection",
                     b"ConnectionX", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Upgrade",
                     b"X-Secret", b"x-secret", b"Cache-Control", b"X-Long-" + b"n" * 40]),
    st.sampled_from([b" v", b"v", b"  a b  ", b" timeout=5", b" ", b" \xe9", b" x" * 30])), max_size=12)


@st.composite
def responses(draw: st.DrawFn, head: bool = True) -> Resp:
    head_request = head and draw(st.booleans())
    status = draw(st.sampled_from([200, 200, 201, 404, 500, 204, 304, 299]))
    fields = [(b"X-Backend", b" b"), *draw(_response_fields)]
    if draw(st.integers(0, 4)) == 0:  # many fields
        fields += [(b"X-Many-%d" % i, b" %d" % i) for i in range(draw(st.integers(10, 30)))]
    version = draw(st.sampled_from([b"HTTP/1.1"] * 5 + [b"HTTP/1.0"]))
    connection = draw(st.sampled_from([None, None, b" keep-alive", b" close", b"Keep-Alive",
                                       b" keep-alive, X-Secret", b" X-Secret"]))
    if connection is not None:
        name = draw(st.sampled_from([b"Connection", b"connection"]))
        fields.insert(draw(st.integers(0, len(fields))), (name, connection))
    body = draw(st.binary(max_size=30))
    framing = "none" if status == 204 else draw(st.sampled_from(["length", "length", "chunked", "close"]))
    interims = draw(st.lists(st.sampled_from(_INTERIMS), max_size=2)) if version == b"HTTP/1.1" else []
    resp = Resp(status, fields, body, head_request, version=version, interims=interims, framing=framing,
                reason=draw(st.sampled_from([b"OK", b"", b"Some Reason"])))
    if framing == "length":
        name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
        value = draw(st.sampled_from([b" %d", b"%d", b" %d  "])) % len(body)
        fields.insert(draw(st.integers(0, len(fields))), (name, value))
    elif framing == "chunked":
        resp.chunks = [body[i:i + 7] for i in range(0, len(body), 7)]
        fields.insert(draw(st.integers(0, len(fields))), (b"Transfer-Encoding", b" chunked"))
    if status in (204, 304) or head_request:
        resp.body = b""
    tokens = {t.strip() for t in (connection or b"").lower().split(b",")}
    has_body = not head_request and status not in (204, 304)
    resp.close = ((framing == "close" and has_body) or b"close" in tokens
                  or (version == b"HTTP/1.0" and b"keep-alive" not in tokens))
    return resp


@st.composite
def response_streams(draw: st.DrawFn) -> list[Resp]:
    stream: list[Resp] = []
    for _ in range(draw(st.integers(1, 3))):
        resp = draw(responses())
        stream.append(resp)
        if resp.framing == "close" and not resp.head_request and resp.status not in (204, 304):
            break  # the body ends with the connection: nothing can follow
    return stream


def _scripted(stream: list[Resp], points: Sequence[int]) -> Responder:
    def respond(method: bytes, head: bytes, body: bytes, index: int) -> list[bytes | None]:
        resp = stream[index]
        assert (method == b"HEAD") == resp.head_request
        return [*_cuts(resp.encode(), points), *([None] if resp.close else [])]
    return respond


def _requests_for(stream: list[Resp]) -> bytes:
    return b"".join(b"%s /%d HTTP/1.1\r\nHost: example.com\r\n\r\n"
                    % (b"HEAD" if r.head_request else b"GET", i) for i, r in enumerate(stream))


@settings(_SETTINGS, max_examples=300)
@given(stream=response_streams(), points=_cut_points, per_pass=_per_pass)
def test_responses_cut_anywhere_reach_the_client_the_same(stream: list[Resp], points: list[int],
                                                          per_pass: int) -> None:
    requests_bytes = _requests_for(stream)
    whole = World(_scripted(stream, [])).run([requests_bytes])
    cut = World(_scripted(stream, points), per_pass=per_pass).run([requests_bytes])
    assert not whole.errors and not cut.errors
    got, rest = client_responses(cut)
    whole_got, whole_rest = client_responses(whole)
    assert ([(without_date(h), b) for h, b in got], rest) == ([(without_date(h), b) for h, b in whole_got],
                                                             whole_rest)
    if all(r.framing in ("length", "none") for r in stream):  # else re-chunked as the pieces come
        assert without_date(cut.ct.data) == without_date(whole.ct.data)
    assert (cut.ct.closed, cut.ct.aborted) == (whole.ct.closed, whole.ct.aborted)
    # and what the client got is right
    assert rest == b""
    finals = [(h, b) for h, b in got if not h.startswith(b"HTTP/1.1 1")]
    assert len(finals) == len(stream)
    interims = [h for h, _ in got if h.startswith(b"HTTP/1.1 1")]
    assert len(interims) == sum(len(r.interims) for r in stream)
    for (head, body), resp in zip(finals, stream, strict=True):
        assert head.startswith(b"HTTP/1.1 %d " % resp.status)
        assert body == resp.body
        if not any(n == b"date" for n, _ in resp.end_to_end):  # the proxy adds one (RFC 9110 §6.6.1)
            head = without_date(head, 1)
        fields = _fields(head)
        assert [(n, v) for n, v in fields if n not in _HOP_BY_HOP] == resp.end_to_end
        assert len([n for n, _ in fields if n in (b"content-length", b"transfer-encoding")]) <= 1
    assert not cut.ct.closed  # the upstream closing is no reason to close the client


# -- 3. garbage never escapes -------------------------------------------------------------------------------

_HEAD_LINE = re.compile(rb"[A-Z]+ [!-~]+ HTTP/1\.1\r\n")


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with one byte replaced, deleted or inserted."""
    pos = draw(st.integers(0, len(valid)))
    byte = bytes([draw(st.sampled_from(b"\x00\r\n :;,\t\x7f\xff0123456789aAzZ-/H" + bytes(range(256))))])
    how = draw(st.sampled_from(["replace", "delete", "insert"]))
    if how == "insert" or pos == len(valid):
        return valid[:pos] + byte + valid[pos:]
    return valid[:pos] + (byte if how == "replace" else b"") + valid[pos + 1:]


@st.composite
def client_garbage(draw: st.DrawFn) -> bytes:
    valid = b"".join(r.encode() for r in draw(st.lists(requests(), min_size=1, max_size=3)))
    return draw(st.binary(min_size=1, max_size=300) | mutated(valid) | st.just(valid).map(
        lambda v: v + draw(st.binary(min_size=1, max_size=40))))


def _check_upstream_stream(data: bytes) -> None:
    """What went upstream parses strictly (it may end anywhere) and every head starts with a method."""
    heads: list[bytes] = []

    class Sink:
        def on_url(self, url: bytes) -> None: ...

    parser = httptools.HttpRequestParser(Sink())
    parser.feed_data(data)  # raises on anything malformed
    pos = 0
    while (taken := take_message(data[pos:], is_request=True)) is not None:
        heads.append(taken[0])
        pos += taken[2]
    for head in heads:
        assert _HEAD_LINE.match(head) and head.endswith(b"\r\n\r\n"), head


@settings(_SETTINGS, max_examples=300)
@given(data=client_garbage(), points=_cut_points, config=_configs, per_pass=_per_pass)
def test_client_garbage_never_escapes(data: bytes, points: list[int], config: ProxyConfig | None,
                                      per_pass: int) -> None:
    world = World(_echo_responder, config, per_pass).run(_cuts(data, points), eof=True)
    assert not world.errors
    for up in world.upstreams:
        _check_upstream_stream(bytes(up.transport.data))
    got, rest = client_responses(world)
    assert rest == b""
    backend = [(h, b) for h, b in got if b"\r\nX-Backend: b\r\n" in h]
    local = got[len(backend):]
    assert got[:len(backend)] == backend  # the backend's answers first, then ours
    assert len(backend) <= len(world.answered)
    for i, (head, body) in enumerate(backend):  # each the answer to the request sent, in order
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert world.answered[i] == b"HEAD" or body.startswith(b"#%d " % i)
    assert len(local) <= 1
    event(f"client garbage: {len(backend)} forwarded, {len(local)} local")
    if local:
        head = local[0][0]
        assert re.match(rb"HTTP/1\.1 [45]\d\d ", head) and head.endswith(b"\r\nConnection: close\r\n\r\n")
        assert world.ct.closed


def _reference(data: bytes) -> tuple[int, bytes] | None:
    """(status, body) of the final response in `data` as llhttp reads it alone, when it is one complete,
    valid response and nothing follows; else None."""
    result: dict[str, object] = {}
    body = bytearray()

    class Sink:
        def on_body(self, piece: bytes) -> None:
            body.extend(piece)

        def on_message_complete(self) -> None:
            status = parser.get_status_code()
            if status >= 200:
                result["final"] = (status, bytes(body))
                result["messages"] = int(result.get("messages", 0)) + 1  # type: ignore[call-overload]
            body.clear()

    parser = httptools.HttpResponseParser(Sink())
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if result.get("messages") != 1 or not data.endswith(_HEAD_END + bytes(result["final"][1])):  # type: ignore[index]
        return None  # incomplete, several, or something after it
    return result["final"]  # type: ignore[return-value]


@st.composite
def upstream_garbage(draw: st.DrawFn) -> bytes:
    valid = draw(responses(head=False)).encode()
    return draw(st.binary(min_size=1, max_size=200) | mutated(valid) | st.just(valid))


_NEXT = b"HTTP/1.1 200 OK\r\nX-Backend: b\r\nContent-Length: 4\r\n\r\nnext"


@settings(_SETTINGS, max_examples=300)
@given(data=upstream_garbage(), points=_cut_points, close=st.booleans())
def test_upstream_garbage_never_escapes(data: bytes, points: list[int], close: bool) -> None:
    def respond(method: bytes, head: bytes, body: bytes, index: int) -> list[bytes | None]:
        if index == 0:
            return [*_cuts(data, points), *([None] if close else [])]
        return [_NEXT]

    world = World(respond).run([b"GET /0 HTTP/1.1\r\nHost: example.com\r\n\r\n"])
    assert not world.errors
    got, rest = client_responses(world)
    finals = [(h, b) for h, b in got if not h.startswith(b"HTTP/1.1 1")]
    assert len(finals) <= 1
    if not finals:  # nothing complete: the response is still awaited, or the connection was cut
        event("upstream garbage: no response" + (" (cut)" if world.ct.aborted else ""))
        assert world.client.current is not None or world.ct.aborted
        return
    head, body = finals[0]
    status = int(head[9:12])
    ours = body.startswith(b"steelyard: ")
    event(f"upstream garbage: {'local' if ours else 'backend'} {status}")
    assert 100 <= status <= 599
    if ours:  # nothing of the response had been sent
        assert status == 502 and got == finals and rest == b""
    expected = _reference(data)
    if expected is not None and expected[0] != 101:
        assert (status, body) == expected
    if world.ct.closed or world.client.current is not None:
        return
    # The client connection is still good: the next request gets the next response, nothing stale.
    assert rest == b""
    before = len(world.ct.data)
    event("upstream garbage: next request")
    world.run([b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\n"])
    assert without_date(world.ct.data[before:], 1) == _NEXT and not world.errors


# -- regressions found by the properties above ---------------------------------------------------------------


def _ok_responder(method: bytes, head: bytes, body: bytes, index: int) -> list[bytes | None]:
    head = b"HTTP/1.1 200 OK\r\nX-Backend: b\r\nContent-Length: 2\r\n\r\n"
    return [head if method == b"HEAD" else head + b"ok"]


def _statuses(world: World) -> list[bytes]:
    return [head.split(b"\r\n", 1)[0] for head, _ in client_responses(world)[0]]


def test_a_head_begun_in_the_read_that_ended_a_request_is_held_to_the_size_limit() -> None:
    # Found by property 1: the bytes of a pipelined head that came in the read ending the request before
    # it were not counted, so a head over max_header_bytes passed when its rest came in a later read.
    config = ProxyConfig(max_header_bytes=100, max_uri_bytes=20)
    first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    second = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"a" * 60 + b"\r\nX-B: " + b"b" * 60 + b"\r\n\r\n"
    for reads in ([first + second], [first + second[:80], second[80:]]):
        world = World(_ok_responder, config).run(reads)
        assert _statuses(world) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 431 Request Header Fields Too Large"]
        assert len(world.answered) == 1 and world.ct.closed


def test_the_size_bound_on_an_incomplete_head_leaves_room_for_the_request_line() -> None:
    # Found by property 1: a head within max_header_bytes (fields) and max_uri_bytes (target) was refused
    # when cut, as the bound on an incomplete head counted the method and version against the target.
    config = ProxyConfig(max_header_bytes=40, max_uri_bytes=8, max_headers=2)
    request = b"POST / HTTP/1.1\r\nContent-Length: 0\r\nHost: example.com\r\n\r\n"  # fields: 38 bytes
    for reads in ([request], [request[:49], request[49:]], [request[:56], request[56:]]):
        world = World(_ok_responder, config).run(reads)
        assert _statuses(world) == [b"HTTP/1.1 200 OK"] and len(world.answered) == 1


def test_a_status_code_outside_100_to_599_is_a_502() -> None:
    # Found by property 3: llhttp reads any three digits as a status; "HTTP/1.0 000" went to the client
    # as "HTTP/1.1 0 " (RFC 9110 §15: values outside 100..599 are invalid).
    for response in (b"HTTP/1.0 000\r\n!:\r\n\r\n", b"HTTP/1.1 099 X\r\nContent-Length: 2\r\n\r\nok",
                     b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nok", b"HTTP/1.1 999 X\r\n\r\n"):
        world = World(lambda method, head, body, index, r=response: [r]).run(  # type: ignore[misc]
            [b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"])
        assert _statuses(world) == [b"HTTP/1.1 502 Bad Gateway"], response
        assert b"invalid status code" in bytes(world.ct.data)
