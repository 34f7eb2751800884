"""`steelyard backend`: a small, fast HTTP/1.1 demo backend that answers with its name.

It exists for the demo, the end-to-end tests and the benchmark, so it is cheap per request (an asyncio
Protocol driving httptools, one `write` per response, keep-alive) and it can be told, while it runs, to
misbehave:

    GET  /anything          -> 200 "NAME\\n", header `X-Backend: NAME` (and `Steelyard-Weight` when set)
    GET  /healthz           -> 200 "ok\\n", or 503 once told `healthy: false`
    GET  /?delay=0.2        -> answer after 0.2 s; `?status=503` answers that status; `?fail_rate=0.5`
    POST /echo              -> the request body, streamed back (chunked) as it arrives, with flow control
    GET  /control           -> the current behaviour and counters as JSON
    POST /control {"delay": 0.2, "fail_rate": 0.1, "fail_status": 500, "status": 503,
                   "healthy": false, "weight": 7}      -> change the behaviour of every later request
    GET  /ws with `Upgrade` -> 101 (with `Sec-WebSocket-Accept`, RFC 6455 section 4.2.2), then every byte
                               is echoed back raw (a WebSocket-ish tunnel test, frames are not parsed)

Responses keep request order on a pipelined connection (RFC 9112 section 9.3.2) even when delayed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import random
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httptools

__all__ = ["Behaviour", "BackendProtocol", "add_arguments", "run", "serve"]

# RFC 6455 section 1.3: the GUID appended to Sec-WebSocket-Key before hashing.
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {101: "Switching Protocols", 200: "OK", 400: "Bad Request", 404: "Not Found",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_MAX_BUFFERED_BODY = 16 * 1024 * 1024


@dataclass
class Behaviour:
    """What the backend does for every request; changed at run time through `POST /control`."""

    name: str
    delay: float = 0.0  # seconds before answering
    fail_rate: float = 0.0  # fraction of requests answered with `fail_status`
    fail_status: int = 503
    status: int | None = None  # answer every request with this status
    healthy: bool = True  # /healthz answers 503 when False
    weight: int | None = None  # sent as `Steelyard-Weight` (dynamic weights, Header mode)
    requests: int = 0  # counters, read through GET /control
    connections: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    CONTROLLABLE = ("delay", "fail_rate", "fail_status", "status", "healthy", "weight")

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a control request; raises ValueError naming the bad field."""
        unknown = set(changes) - set(self.CONTROLLABLE)
        if unknown:
            raise ValueError(f"unknown control field(s): {', '.join(sorted(unknown))}")
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("delay", "fail_rate"):
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{key} must be a number >= 0")
                if key == "fail_rate" and value > 1:
                    raise ValueError("fail_rate must be between 0 and 1")
                checked[key] = float(value)
            elif key in ("fail_status", "status"):
                if value is None and key == "status":
                    checked[key] = None
                elif not isinstance(value, int) or not 200 <= value <= 599:
                    raise ValueError(f"{key} must be an HTTP status between 200 and 599")
                else:
                    checked[key] = value
            elif key == "healthy":
                if not isinstance(value, bool):
                    raise ValueError("healthy must be true or false")
                checked[key] = value
            elif key == "weight":
                if value is not None and (not isinstance(value, int) or value < 0):
                    raise ValueError("weight must be an integer >= 0 or null")
                checked[key] = value
        for key, value in checked.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: getattr(self, key) for key in self.CONTROLLABLE}
        out.update(name=self.name, requests=self.requests, connections=self.connections)
        return out


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Slot:
    """One request's place in the response order; `data` is set when its answer is ready."""

    __slots__ = ("data", "close", "streaming")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False
        self.streaming = False  # an /echo answer being written as the body arrives


class BackendProtocol(asyncio.Protocol):
    """One client connection. Decides per request, answers in order, pauses reading under backpressure."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_event_loop()
        self.pending: deque[_Slot] = deque()
        self.tunnel = False
        self.closing = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.slot: _Slot | None = None
        self.keep_alive = True
        self.upgrade = False

    # -- transport callbacks -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.behaviour.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self._write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._start_tunnel(data[offset:])
        except httptools.HttpParserError:
            body = b"bad request\n"
            self._write(_head(400, [("Content-Length", str(len(body))), ("Connection", "close")]) + body)
            self._close()

    def eof_received(self) -> bool | None:
        if self.tunnel and self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()  # half-close travels through the tunnel
            return True
        return None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # -- httptools callbacks ---------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.behaviour.requests += 1
        # llhttp's keep-alive answer is only valid until the message completes (uvicorn reads it here too).
        self.keep_alive = self.parser.should_keep_alive()
        self.upgrade = self.parser.should_upgrade()
        slot = self.slot = _Slot()
        self.pending.append(slot)
        path = httptools.parse_url(self.url).path
        if path == b"/echo" and self.parser.get_method() == b"POST" and len(self.pending) == 1:
            # Stream the body back as it arrives: chunked, since its length may be unknown (RFC 9112 7.1).
            slot.streaming = True
            slot.close = not self.keep_alive
            headers = [("Transfer-Encoding", "chunked"), ("X-Backend", self.behaviour.name)]
            if slot.close:
                headers.append(("Connection", "close"))
            self._write(_head(200, headers))

    def on_body(self, body: bytes) -> None:
        slot = self.slot
        if slot is not None and slot.streaming:
            self._write(b"%x\r\n%s\r\n" % (len(body), body))
        elif self.body_size < _MAX_BUFFERED_BODY:  # kept for /control and a pipelined (buffered) /echo
            self.body.append(body)
            self.body_size += len(body)

    def on_message_complete(self) -> None:
        slot = self.slot
        assert slot is not None
        if slot.streaming:
            self._write(b"0\r\n\r\n")
            self.pending.popleft()
            if slot.close:
                self._close()
            else:
                self._flush()
            return
        if self.upgrade:
            self.pending.pop()  # the 101 is written by _start_tunnel
            return
        method = self.parser.get_method()
        url = httptools.parse_url(self.url)
        keep_alive = self.keep_alive
        status, body, extra, delay = self._decide(method, url.path, url.query or b"")
        headers = [("Content-Type", "text/plain" if not body.startswith(b"{") else "application/json"),
                   ("Content-Length", str(len(body))), ("X-Backend", self.behaviour.name), *extra]
        if self.behaviour.weight is not None:
            headers.append(("Steelyard-Weight", str(self.behaviour.weight)))
        if not keep_alive:
            headers.append(("Connection", "close"))
        slot.close = not keep_alive
        data = _head(status, headers) + (b"" if method == b"HEAD" else body)
        if delay > 0:
            self.loop.call_later(delay, self._fill, slot, data)
        else:
            self._fill(slot, data)

    # -- decisions --------------------------------------------------------------------------------

    def _decide(self, method: bytes, path: bytes,
                query: bytes) -> tuple[int, bytes, list[tuple[str, str]], float]:
        """(status, body, extra headers, delay) for one request."""
        b = self.behaviour
        params = dict(parse_qsl(query.decode("latin-1")))
        try:
            delay = float(params.get("delay", b.delay))
            fail_rate = float(params.get("fail_rate", b.fail_rate))
            forced = int(params["status"]) if "status" in params else b.status
        except ValueError:
            return 400, b"bad query parameter\n", [], 0.0
        if path == b"/control":
            if method == b"POST":
                try:
                    changes = json.loads(b"".join(self.body) or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError("the control body must be a JSON object")
                    b.update(changes)
                except ValueError as exc:  # json.JSONDecodeError is a ValueError
                    return 400, f"{exc}\n".encode(), [], 0.0
            return 200, json.dumps(b.as_dict()).encode() + b"\n", [], 0.0
        if path == b"/healthz":
            return (200, b"ok\n", [], 0.0) if b.healthy else (503, b"unhealthy\n", [], 0.0)
        if forced is not None:
            return forced, f"{b.name} {forced}\n".encode(), [], delay
        if fail_rate and b.rng.random() < fail_rate:
            return b.fail_status, f"{b.name} failed\n".encode(), [], delay
        if path == b"/echo":
            return 200, b"".join(self.body), [], delay
        return 200, f"{b.name}\n".encode(), [], delay

    # -- output, in request order ------------------------------------------------------------

    def _fill(self, slot: _Slot, data: bytes) -> None:
        slot.data = data
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.pending[0].data is not None:
            slot = self.pending.popleft()
            assert slot.data is not None
            self._write(slot.data)
            if slot.close:
                self._close()
                return

    def _start_tunnel(self, rest: bytes) -> None:
        key = self.headers.get(b"sec-websocket-key")
        headers = [("Upgrade", self.headers.get(b"upgrade", b"websocket").decode("latin-1")),
                   ("Connection", "Upgrade"), ("X-Backend", self.behaviour.name)]
        if key:
            accept = base64.b64encode(hashlib.sha1(key.strip() + _WS_GUID).digest()).decode()
            headers.append(("Sec-WebSocket-Accept", accept))
        self._write(_head(101, headers))
        self.tunnel = True
        if rest:
            self._write(rest)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()


async def serve(behaviour: Behaviour, host: str, port: int) -> asyncio.Server:
    """Start listening; the caller owns the returned server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: BackendProtocol(behaviour), host, port, reuse_address=True,
                                    backlog=1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="the name it answers with")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests answered 503")
    parser.add_argument("--weight", type=int, default=None, help="send this Steelyard-Weight header")


async def _main(args: argparse.Namespace) -> int:
    behaviour = Behaviour(name=args.name, delay=args.delay, fail_rate=args.fail_rate, weight=args.weight)
    try:
        server = await serve(behaviour, args.host, args.port)
    except OSError as exc:
        print(f"steelyard backend: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(f"backend {args.name} listening on {args.host}:{port}", flush=True)
    await stop.wait()
    server.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 1.0)
    return 0


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"steelyard backend: port {args.port} is out of range", file=sys.stderr)
        return 2
    import uvloop

    return uvloop.run(_main(args))
