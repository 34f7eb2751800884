"""HTTP/1.1 reverse proxying with asyncio Protocols and httptools (llhttp), callbacks only.

`HttpProxyProtocol` serves one client connection; `UpstreamConnection` is one pooled connection to an
endpoint. A request is handled without creating a task (only a new upstream connection needs one):

    client bytes -> request parser callbacks -> route, pick, pooled connection -> regenerated head (+ body)
    upstream bytes -> response parser callbacks -> head (end-to-end lines copied, framing regenerated)
                      + framed body, one write per read

Rules (RFC 9110 / RFC 9112):
- The head sent upstream is rebuilt: hop-by-hop fields (RFC 9110 §7.6.1) and those named in `Connection`
  are removed, `X-Forwarded-For` is appended to, `X-Forwarded-Proto/Host` are set. Bodies are re-framed
  (`Content-Length` kept, chunked re-chunked); client bytes are never forwarded verbatim.
- The response head is validated by llhttp (strict) before any of it is used. Its hop-by-hop fields and
  those named in `Connection` are removed and its framing fields regenerated; the common response (an
  HTTP/1.1 Content-Length one, nothing hop-by-hop but a plain `Connection`) keeps its status line and
  end-to-end field lines as read, any other has its head rebuilt field by field.
- Ambiguous framing and any parser error (llhttp, strict) answer 400 and close (RFC 9112 §6.3, §11.2), but
  an HTTP version other than 1.0 and 1.1 is 505 (RFC 9110 §15.6.6) and a method llhttp does not know 501
  (RFC 9110 §9.1; 400 when not even a token, or when it follows another request in the same read).
  HTTP/1.1 without exactly one Host is 400, and so is a Host that is not uri-host[:port] (RFC 9112 §3.2),
  checked when a connection's Host changes, not per request; limits: URI 414, header section 431, body 413,
  a client slower than the header timeout 408; a transfer-coding other than chunked 501 (RFC 9112 §6.1).
- The request timeout runs once the request is whole (as Envoy's route timeout): an upload may take as
  long as it takes while it moves. A client that sends no byte of its body for the idle timeout is the
  one late (unless the endpoint stopped taking the body, or the client waits for its 100 Continue, which
  the request timeout bounds): 408 and close, the exchange abandoned and the pick released without an
  outcome, so outlier detection never blames the endpoint.
- Pipelined requests are answered in order, one at a time: while one is in flight, reading pauses and
  any further parsed request waits in a queue (bounded by one socket read).
- Flow control both ways: a full upstream write buffer pauses reading the client, a full client write
  buffer pauses reading the upstream; both resume on drain.
- Responses to HEAD and 204/304 carry no body (RFC 9110 §6.4.1); 1xx are forwarded to HTTP/1.1 clients;
  a 101 to a websocket `Upgrade` request turns both connections into a raw byte tunnel. Only websocket
  (`Upgrade: websocket`, any case, as Envoy by default) is tunnelled: any other Upgrade (h2c, whose tunnel
  would bypass routing) is ignored (RFC 9110 §7.8 allows it), the request forwarded as a plain one without
  Upgrade and without `upgrade` in Connection.
- Retries: a request that failed before any response byte reached the client (connect failure, reset,
  a status listed in `retries.on`) goes to another endpoint when safe: nothing of the request was sent
  (connect failure), or the method is idempotent and no body byte was sent. A retried status response is
  dropped whole, never half-forwarded, and only when no body byte is still to come from the client
  (otherwise it is forwarded: the rest of the body could not go to two endpoints).
- Latency reported to `Attempt.done()` is measured to the end of the response (to the 101 for tunnels).
- Steelyard's own error answers are one line naming the load balancer and a generic reason; what would tell a
  client about the inside (the endpoint's address, the OS error, llhttp's reason) goes to the log instead
  (`failure_log`: WARNING, at most one line per load balancer, endpoint and reason a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import re
import struct
import termios
import time
from collections import deque
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserInvalidStatusError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
    HttpResponseParser,
    parse_url,
)

from steelyard.proxy.server import Writer
from steelyard.proxy.sockets import socket_fd, write_now
from steelyard.runtime.upstream import STATUS_CLASSES, Attempt, UpstreamRuntime
from steelyard.strategies import NO_CONTEXT, PickContext

try:  # Compiled with Cython when a compiler was there at install (see http.pxd and setup.py); the same
    # source runs as plain Python otherwise, without Cython installed.
    import cython

    _COMPILED: bool = cython.compiled
except ImportError:
    _COMPILED = False

if TYPE_CHECKING:
    from steelyard.proxy.pool import EndpointPool
    from steelyard.proxy.routing import Snapshot
    from steelyard.proxy.server import ProxyServer

__all__ = ["HttpProxyProtocol", "UpstreamConnection"]

log = logging.getLogger("steelyard.proxy")

# Request fields the proxy regenerates or removes; everything else is copied as is.
_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade"))
_REQUEST_SPECIAL = _HOP_BY_HOP | {b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
                                  b"x-forwarded-host"}
_RESPONSE_SPECIAL = _HOP_BY_HOP | {b"content-length"}

# Field kinds. A field name is classified once per spelling, not lowercased per request: the caches below
# map the exact bytes received (`Content-Length`, `content-length`...) to a kind. They are bounded, so
# names an attacker invents cost at most today's `lower()` once the cache is full.
_PLAIN, _DROP, _HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _UPGRADE, _XFF = range(8)
_REQUEST_KINDS_LOWER = {
    b"host": _HOST, b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION, b"upgrade": _UPGRADE, b"x-forwarded-for": _XFF,
    b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP, b"trailer": _DROP,
    b"x-forwarded-proto": _DROP, b"x-forwarded-host": _DROP,
}
_RESPONSE_KINDS_LOWER = {
    b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING, b"connection": _CONNECTION,
    b"upgrade": _UPGRADE, b"keep-alive": _DROP, b"proxy-connection": _DROP, b"te": _DROP, b"trailer": _DROP,
}
# The response head is not reported field by field (no `on_header`: five Python calls per response saved):
# once llhttp has validated it (strict: CRLF line ends, no obs-fold, no bare CR, no invalid bytes), the
# common response's end-to-end field lines are copied from the bytes read and its framing regenerated.
# This splits the field lines (each preceded by CRLF) at the lines the proxy interprets or drops; for
# each, split() yields two groups: the Content-Length value, or ":" for a hop-by-hop field (RFC 9110
# §7.6.1) other than a plain `Connection: keep-alive` / `close` (which names no other field).
_split_framing_lines = re.compile(
    rb"\r\n(?=[cCkKpPtTuU])(?:content-length:[ \t]*([0-9]+)[ \t]*"
    rb"|connection:[ \t]*(?:keep-alive|close)[ \t]*(?![^\r])"
    rb"|(?:connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade)(:)[^\r]*)(?![^\r])",
    re.IGNORECASE).split
_KIND_CACHE_MAX = 1024
# Spellings seen so far of end-to-end fields: a field whose name is in here is copied as it comes (the
# one test per field on the hot path); any other name is classified by its lowercase form.
_plain_request_names: set[bytes] = set()
_plain_response_names: set[bytes] = set()
_HOST_SPELLINGS = frozenset((b"Host", b"host", b"HOST"))


def _field_kind(name: bytes, kinds_lower: dict[bytes, int], plain_names: set[bytes]) -> int:
    kind = kinds_lower.get(name.lower(), _PLAIN)
    if kind == _PLAIN and len(plain_names) < _KIND_CACHE_MAX:
        plain_names.add(name)
    return kind

_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"))

_BODY_NONE, _BODY_LENGTH, _BODY_CHUNKED = 0, 1, 2
# A chunked body behind an ignored Upgrade, until _read_skipped_body reads it (llhttp skipped it: see there)
_BODY_CHUNKED_SKIPPED = 3
# Reasons to stop reading the client (bits); reading resumes when none is left.
_PAUSE_BUFFERING = 1  # a request waits (pipelined, or its upstream connection is not ready)
_PAUSE_UPSTREAM_FULL = 2  # the upstream connection's write buffer is above its high-water mark
_PAUSE_CLOSING = 4  # no further request will be read

# RFC 9110 §7.6.3: a gateway sends Via in each request it forwards (received protocol, then a pseudonym).
_VIA_11 = b"Via: 1.1 steelyard\r\n"
_VIA_10 = b"Via: 1.0 steelyard\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
# A request line's bytes other than its target: method (llhttp's longest is 13), spaces, version, CRLF.
_REQUEST_LINE_MAX = 32
_JOIN_MAX = 64 * 1024  # output up to this size is joined into one buffer before writing
_LINGER_TIME = 2.0  # at most this long after a half-close, reading and dropping what the client still sends
# Connection field values (all of them, joined) that name no other field: nothing to remove.
_PLAIN_CONNECTION = frozenset((None, b"keep-alive", b"Keep-Alive", b"close", b"Close"))
_CRLF = b"\r\n"

_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
# RFC 9112 §3.2, RFC 3986 §3.2.2: Host = uri-host [ ":" port ]; uri-host = IP-literal / IPv4address / reg-name
# (reg-name's characters include IPv4's).
_valid_host = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
).fullmatch
# RFC 9110 §5.6.2: a method is a token.
_is_token = re.compile(rb"[0-9A-Za-z!#$%&'*+.^_`|~-]+").fullmatch
# Status lines are regenerated with the standard reason phrase (RFC 9112 §4: clients ignore it), which
# spares a parser callback per response.
_STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}



def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d \r\n" % status
    return line


class _FailureLog:
    """Endpoint failures, logged at WARNING with what the client's answer leaves out (the endpoint's address,
    the OS error, llhttp's reason). At most one line per (load balancer, endpoint, reason) per `interval`: a
    dead endpoint under load must not flood the log; the next line for the same key counts those held back."""

    def __init__(self, interval: float = 1.0, max_keys: int = 4096):
        self.interval = interval
        self.max_keys = max_keys
        self.last: dict[tuple[str, str, str], list[float]] = {}  # key -> [when logged, lines held back]

    def failed(self, load_balancer: str, endpoint: str, reason: str, detail: str = "") -> None:
        now = time.monotonic()
        key = (load_balancer, endpoint, reason)
        last = self.last
        entry = last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return
        if entry is None and len(last) >= self.max_keys:
            for stale in [k for k, v in last.items() if now - v[0] >= self.interval]:
                del last[stale]
        last[key] = [now, 0.0]
        held = int(entry[1]) if entry is not None else 0
        log.warning("load balancer %s: endpoint %s: %s%s%s", load_balancer, endpoint, reason,
                    f" ({detail})" if detail else "",
                    f" [{held} more since the last line]" if held else "")

    def clear(self) -> None:
        self.last.clear()


failure_log = _FailureLog()


def _failed(req: HttpRequest, reason: str, detail: str = "") -> None:
    """Log an endpoint's failure on `req` (its latest attempt); the client sees `reason` only."""
    runtime = req.runtime
    failure_log.failed(runtime.name if runtime is not None else "?", req.tried[-1] if req.tried else "?",
                       reason, detail)


class _Reject(Exception):
    """Raised inside a parser callback: answer `status` with `reason` and close. With `keep`, set as a
    request's `reject` instead of raised: a local answer in turn, the connection kept."""

    def __init__(self, status: int, reason: str, keep: bool = False):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.keep = keep


_date_cache: list[object] = [0, b""]  # (second, its Date line)


def _date_line() -> bytes:
    """`Date: <IMF-fixdate>` for the current second (RFC 9110 §6.6.1), formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()]
    return _date_cache[1]  # type: ignore[return-value]


# RFC 9110 §6.6.1: a recipient with a clock that forwards a response without Date MUST add one (nginx and
# Envoy set theirs too). The backend's own Date, in any case, is kept as it is.
_any_date_field = re.compile(rb"\r\ndate:", re.IGNORECASE).search


def _dated(data: bytes, end: int) -> bool:
    """Whether the response head data[:end] has a Date field (the usual spelling found without a regex)."""
    return data.find(b"\r\nDate:", 0, end) >= 0 or _any_date_field(data, 0, end) is not None


def _split_common_head(data: bytes, end: int, parts: list[bytes]) -> bytes | None:
    """The common response head's pieces, by regex: the reference for `_scan_common_head` (and what the
    plain Python build runs, where a loop over bytes would be slow).

    data[:end] is a response head llhttp accepted (strict), `end` just past its last field line's CRLF.
    When it has exactly one Content-Length line, at most one plain `Connection: keep-alive`/`close` line and
    no other hop-by-hop field, appends to `parts` the head without those lines and without its final CRLF
    (the status line and end-to-end lines as read), then a Date line when it has none (each added line is
    preceded by CRLF, not followed by one), and returns the Content-Length digits; otherwise returns None
    (and `parts` may hold pieces: the caller drops it).
    """
    pieces = _split_framing_lines(data[:end - 2])
    n = len(pieces)
    # (split() gives 1 + 3 per line matched: 4 or 7 pieces for one or two lines; the middle group is ":"
    # for a hop-by-hop line that is not a plain Connection)
    if n in {4, 7} and pieces[2] is None and pieces[n - 2] is None:
        content_length = pieces[1] or pieces[n - 3]
        if content_length is not None:
            parts += pieces[::3]
            if not _dated(data, end):
                parts.append(b"\r\n" + _date_line()[:-2])
            return content_length  # type: ignore[no-any-return]
    return None


_SCAN_CONTENT_LENGTH, _SCAN_CONNECTION, _SCAN_DATE, _SCAN_HOP = 1, 2, 3, 4


def _lower_is(data: bytes, start: int, name: bytes, size: int) -> bool:
    """Whether data[start:start + size] is `name` (lowercase letters and "-", `size` long) in any case."""
    for k in range(size):  # noqa: SIM110 (a loop compiles to C; all() over a generator would not)
        if data[start + k] | 0x20 != name[k]:  # (x | 0x20 lowercases a letter and keeps "-"; CR is not here)
            return False
    return True


def _scan_kind(data: bytes, start: int, size: int) -> int:
    """What the field name data[start:start + size] is to `_scan_common_head`: 0 for an end-to-end field
    (the names of `_split_framing_lines`, plus Date), chosen by length and first letter before comparing."""
    first = data[start] | 0x20
    if size == 4:
        return _SCAN_DATE if _lower_is(data, start, b"date", size) else 0
    if size == 14:
        return _SCAN_CONTENT_LENGTH if _lower_is(data, start, b"content-length", size) else 0
    if size == 10:
        if first == 99:  # c
            return _SCAN_CONNECTION if _lower_is(data, start, b"connection", size) else 0
        return _SCAN_HOP if _lower_is(data, start, b"keep-alive", size) else 0
    if size == 2:
        return _SCAN_HOP if _lower_is(data, start, b"te", size) else 0
    if size == 7:
        if first == 116:  # t
            return _SCAN_HOP if _lower_is(data, start, b"trailer", size) else 0
        return _SCAN_HOP if _lower_is(data, start, b"upgrade", size) else 0
    if size == 16:
        return _SCAN_HOP if _lower_is(data, start, b"proxy-connection", size) else 0
    if size == 17:
        return _SCAN_HOP if _lower_is(data, start, b"transfer-encoding", size) else 0
    return 0


def _scan_common_head(data: bytes, end: int, parts: list[bytes]) -> bytes | None:
    """`_split_common_head` in one pass over the bytes, with no regex: what the compiled build runs (about
    half the cost there, by perf; tests/test_proxy_head_scan.py checks both give the same pieces).

    Relies on what llhttp (strict) accepted: every field line is `name:value` ended by CRLF, the name a
    token, no CR anywhere else.
    """
    if not 2 <= end <= len(data):
        return None
    head = data  # (compiled: a C pointer to the bytes, read without bounds checks: every index is < end)
    content_length = None
    connection_seen = False
    dated = False
    kept = 0  # start of the piece being kept
    if _COMPILED:  # the status line's CR, by libc (see http.pxd)
        first_cr = cython.cast(chars, memchr(head, 13, end))  # noqa: F821
        if first_cr == cython.NULL:
            return None
        line = (first_cr - head) + 2  # the first field line
    else:
        line = data.find(b"\r\n", 0, end) + 2
    last = end - 2
    while line < last:
        colon = line
        while colon < last and head[colon] != 58:  # ":"
            colon += 1
        eol = colon
        while eol < last and head[eol] != 13:  # CR
            eol += 1
        kind = _scan_kind(head, line, colon - line)
        if kind:
            if kind == _SCAN_DATE:
                dated = True
            elif kind == _SCAN_HOP or content_length is not None and kind == _SCAN_CONTENT_LENGTH:
                return None
            else:
                value = colon + 1
                while value < eol and (head[value] == 32 or head[value] == 9):
                    value += 1
                value_end = eol
                while value_end > value and (head[value_end - 1] == 32 or head[value_end - 1] == 9):
                    value_end -= 1
                if kind == _SCAN_CONTENT_LENGTH:
                    if value_end == value:
                        return None
                    for k in range(value, value_end):
                        if not 48 <= head[k] <= 57:
                            return None
                    content_length = data[value:value_end]
                elif connection_seen or not (
                        value_end - value == 10 and _lower_is(head, value, b"keep-alive", 10)
                        or value_end - value == 5 and _lower_is(head, value, b"close", 5)):
                    return None
                else:
                    connection_seen = True
                parts.append(data[kept:line - 2])
                kept = eol
        line = eol + 2
    if content_length is None:
        return None
    parts.append(data[kept:last])
    if not dated:
        parts.append(b"\r\n" + _date_line()[:-2])
    return content_length


def _head_end(data: bytes) -> int:
    """`data.find(b"\r\n\r\n") + 2` by libc's memmem (compiled build only): a bytes method call with
    arguments costs more than the search in a short head."""
    head = data
    found = cython.cast(chars, memmem(head, len(data), b"\r\n\r\n", 4))  # noqa: F821 (see http.pxd)
    return 1 if found == cython.NULL else (found - head) + 2


def _parts_dated(parts: list[bytes]) -> bool:
    """Whether a head in `_parse_fields` form (status line, then name, ": ", value, CRLF per field) has
    a Date field: what is forwarded, after the fields a Connection header named were dropped."""
    return any(parts[i].lower() == b"date" for i in range(1, len(parts), 4))


def local_response(status: int, text: str, *, keep_alive: bool = False, head_only: bool = False,
                   http10: bool = False) -> bytes:
    """A response Steelyard writes itself: plain text, one line naming what went wrong. It carries Date:
    for these Steelyard is the origin (RFC 9110 §6.6.1: required with a 4xx, allowed with a 5xx). An
    HTTP/1.0 client kept alive is told so (RFC 9112 Appendix C.2.2: persistence is not its default)."""
    body = (text + "\n").encode("utf-8", "replace")
    head = b"HTTP/1.1 %d %s\r\n%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n" % (
        status, _REASONS.get(status, "Error").encode(), _date_line(), len(body),
        (b"Connection: keep-alive\r\n" if http10 else b"") if keep_alive else b"Connection: close\r\n",
    )
    return head if head_only else head + body


class HttpRequest:
    """One request from its first byte to the end of its response.

    Its attributes and their defaults are listed in `_REQUEST_DEFAULTS` below (typed in http.pxd)."""

    if TYPE_CHECKING:  # the attributes, for type checkers
        url: bytes
        method: bytes
        http11: bool
        keep_alive: bool
        keep_plain: bool
        upgrade: bool
        skipped_body: bool
        is_head: bool
        idempotent: bool
        body_kind: int
        content_length: int
        head: bytes
        request_complete: bool
        body_bytes: int
        body_sent: bool
        head_sent: bool
        runtime: UpstreamRuntime | None
        attempt: Attempt | None
        conn: UpstreamConnection | None
        retries_left: int
        response_started: bool
        reject: _Reject | None
        cancelled: bool
        next_attempt: Attempt | None
        tunnel_data: bytes
        needs_host: bool
        resent: bool
        logged_at: float
        bytes_out: int
        pending: list[bytes] | tuple[()]
        tried: tuple[str, ...]
        fields: list[bytes]
        host_field: bytes | None
        host_count: int
        length_field: bytes | None
        coding_field: bytes | None
        connection_field: bytes | None
        upgrade_field: bytes | None
        xff_field: bytes | None
        other_fields: int
        other_bytes: int
        head_slack: int

    def __cinit__(self) -> None:
        # Compiled (Cython's allocation): attributes start as None, 0 or False; set the other defaults.
        # Uncompiled this method is never called: the defaults live on the class (see below).
        self.url = self.method = self.head = self.tunnel_data = b""
        self.http11 = self.keep_alive = self.keep_plain = self.idempotent = True
        self.pending = self.tried = ()
        self.fields = _NO_FIELDS

    @property
    def host(self) -> str:
        """The Host field (or the authority of an absolute-form target) as text; "" when absent."""
        return "" if self.host_field is None else self.host_field.decode("latin-1")


_NO_FIELDS: list[bytes] = []
# An HttpRequest's attributes and their defaults. Uncompiled, they live on the class (no __slots__):
# creating a request then sets only what differs, which is measurably cheaper per request than assigning
# thirty slots. Compiled, `__cinit__` sets those that are not None, 0 or False.
_REQUEST_DEFAULTS: dict[str, object] = dict(
    url=b"",
    method=b"",
    http11=True,
    keep_alive=True,
    keep_plain=True,  # keep_alive and http11: the common response's one test (cleared with either)
    upgrade=False,  # a websocket upgrade, tunnelled after a 101
    skipped_body=False,  # an ignored Upgrade with a body, which llhttp did not read (see _read_skipped_body)
    is_head=False,
    idempotent=True,
    body_kind=_BODY_NONE,
    content_length=0,
    head=b"",
    request_complete=False,
    body_bytes=0,
    body_sent=False,
    head_sent=False,
    runtime=None,  # UpstreamRuntime | None
    attempt=None,  # Attempt | None
    conn=None,  # UpstreamConnection | None
    retries_left=0,
    response_started=False,
    reject=None,  # _Reject | None
    cancelled=False,
    next_attempt=None,  # Attempt | None
    tunnel_data=b"",
    needs_host=False,  # an HTTP/1.0 request without Host: sent with the endpoint's authority (see _send)
    resent=False,  # sent again on a fresh connection after a pooled one died under it (see connection_lost)
    logged_at=0.0,  # set (monotonic start time) only for requests the access log samples
    bytes_out=0,  # response body bytes, counted only for those
    # Set per request only when used: body bytes waiting for the upstream connection (a list once
    # set), the endpoints tried in order, and the fields as received (set by on_url).
    pending=(),  # list[bytes] | tuple[()]
    tried=(),  # tuple[str, ...]
    # The head as read: end-to-end fields as regenerated lines (name, ": ", value, CRLF, set by on_url),
    # and the fields the proxy interprets, set by on_header only when present (read once, by
    # on_headers_complete, so trailer fields landing here later change nothing).
    fields=_NO_FIELDS,
    host_field=None,  # bytes | None, and so are the next five
    host_count=0,
    length_field=None,
    coding_field=None,
    connection_field=None,
    upgrade_field=None,
    xff_field=None,
    other_fields=0,  # interpreted or hop-by-hop fields other than Host
    other_bytes=0,
    trailer_fields=0,  # counted against the head's field limit (see _trailer_field)
    trailer_bytes=0,  # chunked: bytes read at a stretch with no body byte in them (see data_received),
    # which bounds what httptools may hold of a trailer field still arriving
    head_slack=0,  # bytes of other requests the head's size bound allows (see data_received)
)
if not _COMPILED:
    for _name, _default in _REQUEST_DEFAULTS.items():
        setattr(HttpRequest, _name, _default)


class HttpProxyProtocol(Writer):  # an asyncio.Protocol (duck-typed: a compiled class cannot derive from it)
    """One client connection: parses requests, answers them in order through upstream connections."""

    # Slots: the hot path reads these attributes many times per request (measured ~5% less Python time).
    __slots__ = ("_fd", "_client_ip_bytes", "_completed", "_fields", "_forward_tail", "_forwarded",
        "_header_timeout", "_host_line", "_host_seen", "_keepalive_timeout", "_max_head", "_max_headers",
        "_max_uri", "_only_route", "_head_left", "_read_len", "_routes", "_watch", "_watch_conn",
        "_watch_since", "_watch_bytes", "_linger_until", "client_ip", "out_append", "closed",
        "closing", "config", "current", "eof_in", "listener_key", "out",
        "parser", "parsing", "paused", "queue", "server", "transport", "tunnel", "tunnel_idle_timeout",
        "write_paused")

    def __init__(self, server: ProxyServer, listener_key: tuple[str, int]):
        self.server = server
        self.config = server.config
        self.listener_key = listener_key
        self.parser = _request_parser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.parsing: HttpRequest | None = None
        self.current: HttpRequest | None = None
        self.queue: deque[HttpRequest] = deque()
        self.out: list[bytes] = []
        self.out_append = self.out.append
        self.paused = 0
        self.write_paused = False
        self.closing = False
        self.closed = False
        self._linger_until = 0.0  # when closing with input maybe unread: see _close
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_idle_timeout = 60.0
        self.eof_in = False
        # What the timeout sweep saw last (see check_timeouts): no deadline is stamped per request.
        self._watch: object = None
        self._watch_conn: UpstreamConnection | None = None
        self._watch_since = 0.0
        self._watch_bytes = -1  # the body bytes read when the watch began; -1: the request was whole
        self._fields: list[bytes] = []  # the parsing request's `fields`
        self._fd = -1  # the socket, for write_now (compiled build)
        self._client_ip_bytes = b""
        self._forwarded = b""
        self._read_len = 0
        self._completed = 0
        config = self.config
        self._header_timeout = config.header_timeout
        self._max_uri = config.max_uri_bytes
        self._max_head = config.max_header_bytes
        # max_header_bytes less the bytes of the parsing head read before the last read (see data_received)
        self._head_left = self._max_head
        self._max_headers = config.max_headers
        self._keepalive_timeout = config.keepalive_timeout
        # Head pieces that depend only on this connection and the Host it sends (see on_headers_complete).
        self._host_seen: bytes | None = None
        self._host_line = b""
        self._forward_tail = b""
        # The routing snapshot last used and its catch-all route for this listener (see _start).
        self._routes: Snapshot | None = None
        self._only_route: UpstreamRuntime | None = None

    # -- asyncio callbacks -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if not server.admit(transport):
            self.closed = self.closing = True
            return
        self._fd = socket_fd(transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self._client_ip_bytes = self.client_ip.encode()
        self._forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\n" % self._client_ip_bytes
        if server._sweep is None:
            server.ensure_sweep()
        server.http_connections.add(self)
        server.stats.http_connections_total += 1
        if server.closing:
            self.closing = True
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)  # type: ignore[union-attr]
            self.tunnel.last_read = self.server.now  # activity either way keeps the tunnel
            return
        if self.closing and (self._linger_until or self.parsing is None and self.current is None):
            return  # (nothing more is read as a request)
        completed_before = self._completed
        self._read_len = len(data)
        parsing = self.parsing
        body_before = parsing.body_bytes if parsing is not None else -1
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgrade_requested(data[exc.args[0]:])
        except HttpParserError as exc:
            # (where the failed request starts is known when no other ended in this read)
            self._parse_failed(self._rejection(exc, data if self._completed == completed_before else None))
            return
        if parsing is not None and parsing is self.parsing and parsing.body_kind == _BODY_CHUNKED:
            # A read of a chunked body with no body byte in it is framing: a chunk-size line, or the
            # trailer section, where httptools accumulates a field until its line ends. Bound a run of
            # them by the head's limit, as for the head below.
            if parsing.body_bytes != body_before:
                parsing.trailer_bytes = 0
            else:
                parsing.trailer_bytes += len(data)
                if parsing.trailer_bytes > self._max_head:
                    self._parse_failed(_Reject(431, "request trailer section too large"))
                    return
        parsing = self.parsing
        if parsing is not None and not parsing.head:
            # The head is still incomplete: bound what httptools accumulates for us (it enforces no
            # limit), to max_header_bytes + max_uri_bytes and the request line read.
            if self._completed != completed_before:
                # An earlier request ended in this read, so how much of it is this head is unknown: all of
                # it counts towards the exact check when the head completes (on_headers_complete), none
                # of it towards this bound.
                self._head_left = self._max_head - len(data)
                parsing.head_slack = len(data)
                return
            self._head_left -= len(data)
            if self._head_left < -self.config.max_uri_bytes - _REQUEST_LINE_MAX - parsing.head_slack:
                self._parse_failed(_Reject(431, "request header section too large"))

    def eof_received(self) -> bool | None:
        tunnel = self.tunnel
        if tunnel is not None:
            # Half-close (RFC 9293 §3.6): pass the EOF on, close when both directions ended.
            self.eof_in = True
            if tunnel.eof_in or tunnel.transport is None or not tunnel.transport.can_write_eof():
                if tunnel.transport is not None:
                    tunnel.transport.close()
                return False
            tunnel.transport.write_eof()
            return True
        # A half-closed client may still read its responses; close once they are written.
        self.closing = True
        if self._linger_until:
            return False  # the client read our FIN and closed: done
        req = self.current
        if req is not None and not req.request_complete and not req.response_started:
            # The body can never arrive whole: the exchange ends now, not at the request timeout.
            self._abandon_all()
            return False
        return self.current is not None or bool(self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closing = True
        self.out.clear()  # nothing can be written any more (a flush left for the end of the pass included)
        server = self.server
        server.http_connections.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            if tunnel.transport is not None:
                tunnel.transport.close()
            return
        self._abandon_all()

    def pause_writing(self) -> None:
        self.write_paused = True
        conn = self.tunnel or (self.current.conn if self.current is not None else None)
        if conn is not None:
            conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self.tunnel or (self.current.conn if self.current is not None else None)
        if conn is not None:
            conn.resume_reading()

    # -- httptools callbacks (request) ---------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The request line starts every message, so the request is created here (one callback fewer
        # than on_message_begin); llhttp may deliver the target in pieces.
        req = self.parsing
        if req is None:
            self.parsing = req = HttpRequest()
            req.fields = self._fields = []
            self._head_left = self._max_head
            req.url = url
            if len(url) > self._max_uri:
                raise _Reject(414, "request target too long")
        else:
            req.url += url
            if len(req.url) > self._max_uri:
                raise _Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only collect: the limits are checked once per head (on_headers_complete), and what httptools
        # may buffer meanwhile is bounded per read (data_received). After the head, `_fields` is a sink:
        # trailer fields are dropped (RFC 9110 §6.5.1 allows it), only counted.
        if self._fields is _TRAILER_SINK:
            self._trailer_field(name, value)
        elif name in _plain_request_names:
            self._fields += (name, b": ", value, b"\r\n")
        elif name in _HOST_SPELLINGS:
            req = self.parsing
            req.host_field = value  # type: ignore[union-attr]
            req.host_count += 1  # type: ignore[union-attr]
        else:
            self._other_field(name, value)

    def _trailer_field(self, name: bytes, value: bytes) -> None:
        """A trailer field: never read as a head field (a `Host` in the trailers of a request queued behind
        another must not route it), but held to the head's field count (431)."""
        req = self.parsing
        if req is None:
            return
        req.trailer_fields += 1  # (their bytes are bounded by data_received)
        if req.trailer_fields > self._max_headers:
            raise _Reject(431, "too many request trailer fields")

    def _other_field(self, name: bytes, value: bytes) -> None:
        kind = _field_kind(name, _REQUEST_KINDS_LOWER, _plain_request_names)
        if kind == _PLAIN:
            self._fields += (name, b": ", value, _CRLF)
            return
        req = self.parsing
        if req is None:
            return
        if kind == _HOST:
            req.host_field = value
            req.host_count += 1
            return
        req.other_fields += 1
        req.other_bytes += len(name) + len(value) + 4
        if kind == _CONTENT_LENGTH:
            req.length_field = value  # llhttp rejects differing repeats
        elif kind == _TRANSFER_ENCODING:
            req.coding_field = _combined(req.coding_field, value, b",")
        elif kind == _CONNECTION:
            req.connection_field = _combined(req.connection_field, value, b",")
        elif kind == _UPGRADE:
            req.upgrade_field = _combined(req.upgrade_field, value, b", ")
        elif kind == _XFF:
            req.xff_field = _combined(req.xff_field, value, b", ")

    def on_headers_complete(self) -> None:
        req = self.parsing
        if req is None:  # llhttp found no target: cannot happen for a valid request line
            raise _Reject(400, "missing request target")
        kept = self._fields
        self._fields = _TRAILER_SINK
        host = req.host_field
        host_count = req.host_count
        if (len(kept) >> 2) + host_count + req.other_fields > self._max_headers:
            raise _Reject(431, "too many request header fields")
        # The exact size only when the bytes read could hold a head that large (rarely).
        if (self._read_len > self._head_left
                and sum(map(len, kept)) + req.other_bytes + (len(host) + 6 if host else 0) > self._max_head):
            raise _Reject(431, "request header section too large")
        parser = self.parser
        req.method = method = parser.get_method()
        if method != b"GET":
            if method == b"HEAD":
                req.is_head = True
            elif method == b"CONNECT":
                raise _Reject(405, "CONNECT is not supported by a reverse proxy")
            elif method not in _IDEMPOTENT:
                req.idempotent = False
            if method == b"OPTIONS" or method == b"TRACE":
                req.reject = _count_down_max_forwards(kept, method)
        url = req.url
        if b"#" in url:  # a fragment is not part of a request target (RFC 9112 §3.2.1), nor routed on
            url = req.url = url[:url.index(b"#")]
        if (not req.other_fields and host_count == 1 and url.startswith(b"/")
                and parser.should_keep_alive()):
            # The common request: persistent without a Connection field, hence HTTP/1.1 (RFC 9112 §9.3),
            # one Host, origin-form, no body, nothing hop-by-hop. The head is the request line, Host, the
            # client's fields and the forwarding fields; the pieces that depend only on this connection
            # and its Host are joined once per connection.
            if host != self._host_seen:
                clean = _host_value(host)  # type: ignore[arg-type]
                self._host_seen = host
                self._host_line = b" HTTP/1.1\r\nHost: " + clean + _CRLF
                self._forward_tail = (self._forwarded + _VIA_11  # type: ignore[operator]
                                      + b"X-Forwarded-Host: " + clean + b"\r\n\r\n")
            if kept:
                req.head = b"".join([method, b" ", url, self._host_line, *kept, self._forward_tail])
            else:
                req.head = b"".join((method, b" ", url, self._host_line, self._forward_tail))
        else:
            self._regenerate_head(req, method, url, kept, parser.should_keep_alive())
        self.server.stats.requests += 1

        if self.current is None:
            self._start(req)
        else:
            self.queue.append(req)
            self._pause(_PAUSE_BUFFERING)

    def _regenerate_head(self, req: HttpRequest, method: bytes, url: bytes, kept: list[bytes],
                         keep_alive: bool) -> None:
        """The head sent upstream for any request: versions, absolute form, bodies, Connection, Upgrade,
        X-Forwarded-For from the client."""
        if not keep_alive:
            req.keep_alive = req.keep_plain = False
        host = req.host_field
        host_count = req.host_count
        content_length = req.length_field
        transfer_encoding = req.coding_field
        connection = req.connection_field
        upgrade = req.upgrade_field
        xff = req.xff_field
        # get_http_version() formats a string (~0.3 µs): skip it when the answer is implied. Without a
        # Connection field, only HTTP/1.1 is persistent by default (RFC 9112 §9.3).
        http11 = True
        if connection is not None or not keep_alive:
            version = self.parser.get_http_version()
            if version != "1.1":
                if version != "1.0":  # (llhttp lets 0.9 and 2.0 through)
                    raise _Reject(505, f"HTTP/{version} is not supported")
                http11 = req.http11 = req.keep_plain = False

        if transfer_encoding is not None and not http11:
            # RFC 9112 §6.1: framing an HTTP/1.0 hop may not have understood; what follows it on this
            # connection cannot be trusted to be a request (a smuggling vector): close after this one.
            req.keep_alive = req.keep_plain = False
        if url == b"*" and method != b"OPTIONS":
            raise _Reject(400, "the asterisk-form target is for OPTIONS only")  # RFC 9112 §3.2.4
        if host_count != 1 and (http11 or host_count > 1):
            raise _Reject(400, "missing Host header" if host_count == 0 else "more than one Host header")
        if host is not None:
            host = req.host_field = _host_value(host) if host != self._host_seen else host.rstrip(b" \t")
        if url[:1] != b"/":
            url, host = self._absolute_form(url, host)
            if host is not None and _valid_host(host) is None:
                raise _Reject(400, "invalid request target")
            req.url = url
            req.host_field = host
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != b"chunked":
                raise _Reject(501, "unsupported transfer-coding (only chunked is accepted)")
            req.body_kind = _BODY_CHUNKED
        elif content_length is not None:
            req.content_length = length = int(content_length)  # llhttp already checked the digits
            if length:
                req.body_kind = _BODY_LENGTH
            max_body = self.config.max_body_bytes
            if max_body is not None and length > max_body:
                raise _Reject(413, f"request body larger than {max_body} bytes")
        if connection is not None:
            lowered = connection.lower()
            if lowered != b"keep-alive" and lowered != b"close":
                tokens = {t.strip() for t in lowered.split(b",")}
                named = tokens - {b"close", b"keep-alive", b"upgrade", b""}
                if named:
                    kept = _drop_named(kept, named)
                    if b"x-forwarded-for" in named:  # hop-by-hop then (RFC 9110 §7.6.1): ours alone
                        xff = None
                # (Upgrade in an HTTP/1.0 request is ignored, RFC 9110 §7.8)
                if upgrade is not None and b"upgrade" in tokens and http11:
                    if upgrade.strip().lower() == b"websocket":
                        req.upgrade = True
                        # after a refused upgrade the connection is closed
                        req.keep_alive = req.keep_plain = False
                    elif req.body_kind != _BODY_NONE:
                        # Ignored, forwarded without it; but llhttp still ends the request at its head (see
                        # _read_skipped_body), and must not end a chunked body before it is read.
                        req.skipped_body = True

        # The head sent upstream: request line, Host, the client's end-to-end fields, forwarding fields,
        # then our own framing.
        if host is not None:
            parts = [method, b" ", url, b" HTTP/1.1\r\nHost: ", host, _CRLF, *kept]
        else:  # HTTP/1.0 without Host: forwarded as HTTP/1.1, which needs one (added by _send)
            req.needs_host = True
            parts = [method, b" ", url, b" HTTP/1.1\r\n", *kept]
        if xff is not None:
            xff = xff.strip(b" \t,")  # no empty list element (RFC 9110 §5.6.1.1) in front of ours
        if not xff:
            parts.append(self._forwarded)
        else:
            parts += (b"X-Forwarded-For: ", xff, b", ", self._client_ip_bytes,
                      b"\r\nX-Forwarded-Proto: http\r\n")
        parts.append(_VIA_11 if http11 else _VIA_10)
        if host is not None:
            parts += (b"X-Forwarded-Host: ", host, _CRLF)
        if req.upgrade:
            parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, _CRLF)  # type: ignore[arg-type]
        if req.body_kind == _BODY_CHUNKED:
            parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
            if req.skipped_body:
                req.body_kind = _BODY_CHUNKED_SKIPPED
        elif content_length is not None:
            parts += (b"Content-Length: ", content_length.strip(), b"\r\n\r\n")
        else:
            parts.append(_CRLF)
        req.head = b"".join(parts)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        if req is None:
            return
        req.body_bytes += len(body)
        max_body = self.config.max_body_bytes
        if max_body is not None and req.body_bytes > max_body:
            raise _Reject(413, f"request body larger than {max_body} bytes")
        framed = [b"%x\r\n" % len(body), body, _CRLF] if req.body_kind == _BODY_CHUNKED else [body]
        conn = req.conn
        if conn is not None and req.head_sent and conn.transport is not None:
            conn.transport.writelines(framed)
            req.body_sent = True
        elif not req.cancelled:
            if req.pending:
                req.pending += framed  # type: ignore[operator]
            else:
                req.pending = framed
            self._pause(_PAUSE_BUFFERING)

    def on_message_complete(self) -> None:
        req = self.parsing
        if req is None:
            return
        self.parsing = None
        self._completed += 1
        req.request_complete = True
        if req.body_kind == _BODY_CHUNKED:
            conn = req.conn
            if conn is not None and req.head_sent and conn.transport is not None:
                conn.transport.write(_LAST_CHUNK)
            elif not req.cancelled:
                req.pending = [*req.pending, _LAST_CHUNK]

    # -- request handling ----------------------------------------------------------------------------

    def _absolute_form(self, url: bytes, host: bytes | None) -> tuple[bytes, bytes | None]:
        """RFC 9112 §3.2.2: an absolute-form target's authority replaces Host; forward origin-form."""
        if url == b"*":
            return url, host
        try:
            parsed = parse_url(url)
        except Exception:
            raise _Reject(400, "invalid request target") from None
        if parsed.host is None:
            raise _Reject(400, "invalid request target")
        host = parsed.host
        if b":" in host:  # an IPv6 address, which parse_url gives without its brackets
            host = b"[" + host + b"]"
        authority = host + (b":%d" % parsed.port if parsed.port else b"")
        origin = parsed.path or b"/"
        if parsed.query:
            origin += b"?" + parsed.query
        return origin, authority

    def _start(self, req: HttpRequest) -> None:
        """Make `req` the current request and send it on its way (or answer it locally)."""
        self.current = req
        server = self.server
        access_log = server.access_log
        if access_log is not None and access_log.sampled():
            req.logged_at = time.monotonic()
        reject = req.reject
        if reject is not None:
            self._respond_local(req, reject.status, f"steelyard: {reject.reason}")
            return
        # One catch-all route needs no matching; it is looked up once per snapshot (snapshots are
        # immutable and swapped by reference on reload).
        snapshot = server._snapshot
        if snapshot is self._routes:
            runtime = self._only_route
        else:
            self._routes = snapshot
            runtime = self._only_route = snapshot.only_route(self.listener_key)
        if runtime is None:
            url = req.url
            path = url.partition(b"?")[0].decode("latin-1") if url[:1] == b"/" else "*"
            runtime = snapshot.route_http(self.listener_key, req.host, path)
            if runtime is None:
                self._respond_local(req, 404, f"steelyard: no route for host {req.host!r} and path {path!r}")
                return
        req.runtime = runtime
        req.retries_left = runtime.retry_attempts
        attempt = runtime.pick(self._pick_context(runtime) if runtime.needs_context else NO_CONTEXT)
        if attempt is None:
            self._respond_local(req, 503, f"steelyard: load balancer {runtime.name}: "
                                          f"{runtime.unavailable_reason()}")
            return
        # _dispatch() and _send(), inlined for the common case: a pooled connection, nothing pending.
        req.attempt = attempt
        endpoint_id = attempt.endpoint_id
        req.tried = (endpoint_id,)
        pool = server.pools.get(endpoint_id) or server.pool_for(attempt.endpoint)
        idle = pool.idle  # pool.acquire(), inlined for its common case: the last idle connection is open
        conn: UpstreamConnection | None = idle.pop() if idle else None  # type: ignore[assignment]
        if conn is not None and not conn.closed:
            pool.busy += 1
            pool.reuses += 1
        else:
            conn = pool.acquire()  # type: ignore[assignment]
            if conn is None:
                server.open_upstream(pool, runtime.connect_timeout, req, self)
                return
        if req.pending or req.needs_host:
            self._send(req, conn)
            return
        req.conn = conn
        conn.client = self
        conn.req = req
        conn.head_bytes = 0
        if req.body_kind == _BODY_NONE:
            # Nothing else goes to this connection before its response: sent with the other output at the
            # end of this pass of the loop (see ProxyServer.flush_later).
            conn.unsent = req.head
            server.flush_later(conn)
        else:
            conn.transport.write(req.head)  # type: ignore[union-attr]
        req.head_sent = True
        if self.paused or self.write_paused or conn.write_full:  # rarely
            if self.paused & _PAUSE_BUFFERING and not self.queue:
                self._resume(_PAUSE_BUFFERING)
            if self.write_paused:
                conn.pause_reading()
            if conn.write_full:  # (a pooled connection still holding an earlier request's body)
                self._pause(_PAUSE_UPSTREAM_FULL)

    def _pick_context(self, runtime: UpstreamRuntime) -> PickContext:
        key: str | None = None
        if runtime.hash_source_ip:
            key = self.client_ip
        elif runtime.hash_header is not None:
            values = _field_values(self.current, runtime.hash_header)  # type: ignore[arg-type]
            key = values[0].strip() if values else None
            if not key:  # missing or empty: round robin (HAProxy's `balance hdr()`)
                key = None
        elif runtime.hash_cookie is not None:
            for cookies in _field_values(self.current, b"cookie"):  # type: ignore[arg-type]
                for pair in cookies.split(";"):
                    cname, _, cvalue = pair.strip().partition("=")
                    if cname == runtime.hash_cookie:
                        key = cvalue
                        break
                if key is not None:
                    break
        return PickContext(client_ip=self.client_ip, hash_key=key)

    def _dispatch(self, req: HttpRequest, attempt: Attempt) -> None:
        req.attempt = attempt
        endpoint_id = attempt.endpoint_id
        req.tried += (endpoint_id,)
        server = self.server
        pool = server.pools.get(endpoint_id) or server.pool_for(attempt.endpoint)
        conn = pool.acquire()
        if conn is not None:
            self._send(req, conn)  # type: ignore[arg-type]
        else:
            runtime = req.runtime
            assert runtime is not None
            server.open_upstream(pool, runtime.connect_timeout, req, self)

    def connected(self, req: HttpRequest, conn: UpstreamConnection | None, error: str | None,
                  timed_out: bool) -> None:
        """The upstream connection for `req` is open (or failed to open)."""
        if req.cancelled or self.closed:
            if req.attempt is not None:
                req.attempt.done(ok=conn is not None)
            if conn is not None:
                conn.pool.release(conn, True, self.server.now)
            return
        if conn is None:
            runtime = req.runtime
            assert runtime is not None and req.attempt is not None
            req.attempt.done(ok=False)
            if timed_out:
                status = 504
                reason = f"the endpoint did not accept a connection within {runtime.connect_timeout:g}s"
                _failed(req, reason)
            else:
                status, reason = 502, "the endpoint refused or failed the connection"
                _failed(req, reason, error or "")
            if runtime.retry_on_connect and self._retry(req):
                return
            self._respond_local(req, status, f"steelyard: load balancer {runtime.name}: {reason}")
            return
        self._send(req, conn)

    def _send(self, req: HttpRequest, conn: UpstreamConnection) -> None:
        req.conn = conn
        conn.client = self  # bind(), inlined: this runs once per request
        conn.req = req
        conn.head_bytes = 0
        transport = conn.transport
        assert transport is not None
        head = req.head
        if req.needs_host:
            # RFC 9112 §3.2: an HTTP/1.1 request carries Host; this one goes to the endpoint, so its
            # authority (what nginx's proxy_pass sends by default). The head ends its request line first.
            pool = conn.pool
            authority = (f"[{pool.host}]" if ":" in pool.host else pool.host) + f":{pool.port}"
            line_end = head.index(_CRLF) + 2
            head = b"%bHost: %b\r\n%b" % (head[:line_end], authority.encode("latin-1"), head[line_end:])
        pending = req.pending
        if pending:
            req.pending = ()
            transport.writelines([head, *pending])
            req.body_sent = req.body_kind != _BODY_NONE
        else:
            transport.write(head)
        req.head_sent = True
        if self.paused & _PAUSE_BUFFERING and not self.queue:
            self._resume(_PAUSE_BUFFERING)
        if self.write_paused:
            conn.pause_reading()
        if conn.write_full:  # (the head and body just written, or a pooled connection still full)
            self._pause(_PAUSE_UPSTREAM_FULL)

    def resend_fresh(self, req: HttpRequest, pool: EndpointPool) -> None:
        """Send `req` again, on a new connection to the endpoint of its pick (see
        UpstreamConnection.connection_lost); `connected()` takes it from there."""
        req.conn = None
        req.head_sent = False
        runtime = req.runtime
        assert runtime is not None
        self.server.stats.retries += 1  # (counted with the retries: the request went out again)
        runtime.retries += 1
        self.server.open_upstream(pool, runtime.connect_timeout, req, self)

    def retry_attempt(self, req: HttpRequest) -> Attempt | None:
        """Another endpoint for `req` when retries are left and a retry is safe, else None."""
        runtime = req.runtime
        if runtime is None or req.retries_left <= 0 or req.response_started or req.body_sent:
            return None
        if req.head_sent and not req.idempotent:
            return None
        return runtime.pick(NO_CONTEXT, exclude=req.tried)

    def _retry(self, req: HttpRequest, attempt: Attempt | None = None) -> bool:
        """Send `req` to another endpoint if retries are left and it is safe; True when it was."""
        if attempt is None:
            attempt, req.next_attempt = req.next_attempt, None  # picked when a retried status arrived
        if attempt is None:
            attempt = self.retry_attempt(req)
            if attempt is None:
                return False
        req.retries_left -= 1
        req.head_sent = False
        req.conn = None
        self.server.stats.retries += 1
        if req.runtime is not None:
            req.runtime.retries += 1
        self._dispatch(req, attempt)
        return True

    def upstream_failed(self, req: HttpRequest, status: int, reason: str, *, retriable: bool) -> None:
        """The exchange failed before any response byte was forwarded (the attempt is already done)."""
        req.conn = None
        if retriable and self._retry(req):
            return
        runtime = req.runtime
        name = runtime.name if runtime is not None else "?"
        self._respond_local(req, status, f"steelyard: load balancer {name}: {reason}")

    def upstream_broken(self, req: HttpRequest) -> None:
        """The exchange failed after the response started: the client can only see a cut connection."""
        _drop_next_attempt(req)
        req.conn = None
        self.current = None
        self.closing = True
        if self.transport is not None:
            self.flush()
            self.transport.abort()

    def _next(self) -> None:
        # The exchange is over: a full-buffer pause from its upstream connection no longer applies
        # (that connection may be back in the pool and never call resume_writing for us).
        if self.paused & _PAUSE_UPSTREAM_FULL:
            self._resume(_PAUSE_UPSTREAM_FULL)
        if self.queue:
            req = self.queue.popleft()
            if not self.queue and (self.parsing is None or not self.parsing.pending):
                self._resume(_PAUSE_BUFFERING)
            self._start(req)
        else:
            self._resume(_PAUSE_BUFFERING)

    def _respond_local(self, req: HttpRequest, status: int, text: str) -> None:
        """Answer `req` ourselves; keep the connection only when the request was read whole."""
        _drop_next_attempt(req)
        self.server.stats.local_responses[status] = self.server.stats.local_responses.get(status, 0) + 1
        self.server.stats.responses_by_class[status // 100] += 1
        whole = req.request_complete or (req.body_kind == _BODY_NONE and req.head != b"")
        keep = req.keep_alive and whole and not self.closing and (req.reject is None or req.reject.keep)
        self.out.append(local_response(status, text, keep_alive=keep, head_only=req.is_head,
                                       http10=not req.http11))
        self.flush()
        self.current = None
        if req.logged_at:
            req.bytes_out = 0 if req.is_head else len(text.encode("utf-8", "replace")) + 1
            self.log_access(req, status)
        if keep:
            self._next()
        else:
            self._close()

    def log_access(self, req: HttpRequest, status: int) -> None:
        """The access log line of a sampled request (see `steelyard.runtime.access_log`)."""
        access_log = self.server.access_log
        if access_log is None:
            return
        runtime = req.runtime
        access_log.log(client=self.client_ip, host=req.host, method=req.method.decode("latin-1"),
                       path=req.url.decode("latin-1"), upstream=runtime.key if runtime is not None else "",
                       endpoint=req.tried[-1] if req.tried else "", status=status, bytes_sent=req.bytes_out,
                       latency=time.monotonic() - req.logged_at, retries=max(0, len(req.tried) - 1))

    def _parse_failed(self, reject: _Reject) -> None:
        """A parser error: the request being parsed (or a placeholder) is answered in turn, then close."""
        self._pause(_PAUSE_CLOSING)
        req = self.parsing
        self.parsing = None
        if req is None:
            req = HttpRequest()
        if req.head and req is self.current:
            # Already forwarded (the error is in its body): the upstream exchange is void.
            req.cancelled = True
            conn = req.conn
            if conn is not None:
                conn.abandon()
            if req.attempt is not None:
                req.attempt.abandoned()  # (the client's fault, not the endpoint's)
            if req.response_started:
                self.upstream_broken(req)
                return
            req.reject = reject
            self.current = None
            self._start(req)
            return
        if req in self.queue:
            self.queue.remove(req)
        req.reject = reject
        req.keep_alive = req.keep_plain = False
        if self.current is None:
            self._start(req)
        else:
            self.queue.append(req)

    def _rejection(self, exc: HttpParserError, start: bytes | None = None) -> _Reject:
        """The answer to a request llhttp (or a callback of ours) found invalid; `start`: the bytes the
        request starts with, when known."""
        reject = exc.__context__
        if isinstance(reject, _Reject):
            return reject
        if isinstance(exc, HttpParserInvalidMethodError):
            # llhttp knows a fixed list of methods: a request line starting with another token and a space
            # has a method not implemented (RFC 9110 §9.1); anything else, or a request whose start in the
            # read is unknown (after another request in the same read), is a malformed request line.
            if start is not None:
                method, space, _ = start.lstrip(b"\r\n").partition(b" ")
                if space and _is_token(method):
                    return _Reject(501, "method not implemented")
        else:
            reason = str(exc)
            if reason == "Invalid HTTP version":  # a well-formed version other than 0.9, 1.0, 1.1, 2.0
                return _Reject(505, "HTTP version not supported")
            if reason == "Pause on PRI/Upgrade":  # the HTTP/2 connection preface (RFC 9113 §3.4)
                return _Reject(505, "HTTP/2 is not supported")
        return _Reject(400, f"bad request: {exc}")

    def _upgrade_requested(self, rest: bytes) -> None:
        """llhttp stopped after a request head with Upgrade (and `upgrade` in Connection); `rest` is what
        followed it in the read: tunnel data for a websocket upgrade, else HTTP again."""
        while True:
            req = self.current if self.current is not None and self.current.upgrade else None
            if req is None:
                for queued in self.queue:
                    if queued.upgrade:
                        req = queued
            if req is not None:
                req.tunnel_data += rest
                self._pause(_PAUSE_CLOSING)
                return
            if self.closing:
                return  # rejected or answered already, and the connection closes
            # An Upgrade ignored: the request went on as a plain one; what follows is its body, if it has
            # one, then the next request.
            for waiting in (self.current, *self.queue):
                if waiting is not None and waiting.skipped_body:
                    self._read_skipped_body(waiting)
            if not rest:
                return
            try:
                self.parser.feed_data(rest)
            except HttpParserUpgrade as exc:
                rest = rest[exc.args[0]:]
                continue
            except HttpParserError as exc:
                self._parse_failed(self._rejection(exc))
            return

    def _read_skipped_body(self, req: HttpRequest) -> None:
        """httptools makes llhttp end any upgrade request at its head (its on_headers_complete asks llhttp to
        skip the body): for an ignored Upgrade, the body that follows is read by a new parser, fed first a
        made-up head with the request's framing, its callbacks passed on to ours (`_SkippedBody`)."""
        req.skipped_body = False
        req.request_complete = False
        self.parsing = req
        if req.body_kind == _BODY_CHUNKED_SKIPPED:
            req.body_kind = _BODY_CHUNKED
            head = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        else:
            head = b"PUT / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % req.content_length
        self.parser = _skipped_head_parser(self)
        self.parser.feed_data(head)

    def start_tunnel(self, conn: UpstreamConnection, req: HttpRequest) -> None:
        """A 101 arrived: from now on bytes are copied both ways unchanged."""
        self.tunnel = conn
        self.tunnel_idle_timeout = req.runtime.idle_timeout if req.runtime is not None else 60.0
        conn.last_read = self.server.now
        self.current = None
        self.server.stats.tunnels += 1
        data = req.tunnel_data
        req.tunnel_data = b""
        if data and conn.transport is not None:
            conn.transport.write(data)
        # The exchange's pauses end here, but not a full upstream (the bytes read with the upgrade request
        # can fill it): its resume_writing() resumes the client.
        self.paused = 0
        if conn.write_full:
            self._pause(_PAUSE_UPSTREAM_FULL)
        elif self.transport is not None:
            self.transport.resume_reading()

    def _abandon_all(self) -> None:
        """The client went away, or can no longer finish its request: release every request it has."""
        for req in (self.current, *self.queue):
            if req is not None:
                self._abandon(req)
        self.current = None
        self.queue.clear()

    def _abandon(self, req: HttpRequest) -> None:
        """The client went away: release what `req` holds."""
        req.cancelled = True
        _drop_next_attempt(req)
        conn = req.conn
        if conn is not None:
            conn.abandon()
            req.conn = None
        if req.attempt is not None and (conn is not None or req.head_sent):
            req.attempt.abandoned()

    # -- output and flow control ------------------------------------------------------------------------

    def flush(self) -> None:
        out = self.out
        transport = self.transport
        if out and transport is not None:
            n = len(out)
            if n == 2:  # a response head and its body
                write_now(transport, self._fd, out[0] + out[1])
            elif n == 1:
                write_now(transport, self._fd, out[0])
            elif sum(map(len, out)) <= _JOIN_MAX:
                write_now(transport, self._fd, b"".join(out))  # one buffer
            else:
                transport.writelines(out)  # large bodies: no copy
            out.clear()

    def _close(self) -> None:
        self.closing = True
        self.flush()
        transport = self.transport
        if transport is None:
            return
        if (self._linger_until or self.tunnel is not None or not transport.can_write_eof()
                or self.parsing is None and not (self.paused and _unread_bytes(transport))):
            transport.close()
            return
        # Input waits unread (reading was paused and the kernel holds bytes, or a request was arriving):
        # closing now would make the kernel answer with a reset, which destroys the response still on its
        # way (RFC 9112 §9.6).
        # Half-close instead, then read and drop until the client closes, for at most _LINGER_TIME.
        self._linger_until = self.server.now + _LINGER_TIME
        self.parsing = None
        self.queue.clear()
        transport.write_eof()  # (after what is buffered)
        self.paused = 0
        transport.resume_reading()

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def upstream_write_full(self, full: bool) -> None:
        if full:
            self._pause(_PAUSE_UPSTREAM_FULL)
        else:
            self._resume(_PAUSE_UPSTREAM_FULL)

    # -- timers and shutdown ------------------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the server's sweep (coarse clock). No deadline is armed per request: the sweep notes
        what it finds waiting (a head still arriving, an idle connection, a request waiting for its
        response head) and since when; a wait seen again past its limit has timed out. The limits are
        thus exact to within one sweep interval (late, never early)."""
        if self.closed:
            return
        if self._linger_until:
            if now >= self._linger_until and self.transport is not None:
                self.transport.close()
            return
        tunnel = self.tunnel
        if tunnel is not None:
            if now - tunnel.last_read > self.tunnel_idle_timeout:
                self.server.stats.timeouts += 1
                if tunnel.req is not None and tunnel.req.runtime is not None:
                    tunnel.req.runtime.timeouts += 1
                tunnel.abandon()
                self._close()
            return
        req = self.current
        if req is None:
            parsing = self.parsing
            if parsing is None:
                # Idle: since the connection opened (header timeout) or since the last request ended
                # (keep-alive timeout). The count of requests read tells one idle period from the next.
                watch: object = self._completed
                limit = self._keepalive_timeout if watch else self._header_timeout
            elif not parsing.head:
                watch = parsing  # a request head still arriving
                limit = self._header_timeout
            else:
                self._watch = None
                return
            if watch != self._watch or self._watch_conn is not None:
                self._watch, self._watch_conn, self._watch_since = watch, None, now
                return
            if now - self._watch_since < limit:
                return
            self._watch = None
            if parsing is None:
                self._close()  # idle keep-alive connection, or nothing of a request arrived
                return
            self.server.stats.timeouts += 1
            self.parsing = None
            self.queue.clear()
            self._pause(_PAUSE_CLOSING)
            self.out.append(local_response(408, "steelyard: request header not received in time"))
            self._close()
            return
        conn = req.conn
        runtime = req.runtime
        if conn is None or runtime is None:
            self._watch = None
            return
        if req.response_started and conn.headers_done and now - conn.last_read > runtime.idle_timeout:
            # The response stalled (upstream silent, or the client not reading): do not hang forever.
            self.server.stats.timeouts += 1
            runtime.timeouts += 1
            conn.abandon()
            if req.attempt is not None:
                req.attempt.done(ok=False)
            self.upstream_broken(req)
            return
        if conn.headers_done and not conn.discard:  # the final response head arrived
            self._watch = None
            return
        # Sent, no final response head yet (or a retried status being dropped, which may stall as well). While
        # the body still arrives, the watch starts again at every byte: a steady upload may take as long as
        # it takes (Envoy starts its route timeout once the request is whole; nginx and HAProxy time the
        # client out only when it goes quiet), a client silent for the idle timeout gets 408. Once the
        # request is whole (or when the endpoint, not the client, holds the body up) the request timeout
        # runs from when the sweep first saw that.
        progress = -1 if req.request_complete else req.body_bytes
        if req is not self._watch or conn is not self._watch_conn or progress != self._watch_bytes:
            self._watch, self._watch_conn, self._watch_since, self._watch_bytes = req, conn, now, progress
            return
        client_late = progress >= 0 and self._client_is_late(req)
        if now - self._watch_since < (runtime.idle_timeout if client_late else runtime.request_timeout):
            return
        self._watch = self._watch_conn = None
        self.server.stats.timeouts += 1
        runtime.timeouts += 1
        if client_late:
            self._client_timed_out(req, conn, runtime)
            return
        conn.abandon()
        if req.attempt is not None:
            req.attempt.done(ok=False)
        if conn.discard:  # the endpoint answered a retried status and stalled in its body: the retry goes on
            reason = f"the endpoint's {conn.status} response stalled for {runtime.request_timeout:g}s"
            _failed(req, reason)
            self.upstream_failed(req, 504, reason, retriable=True)
            return
        reason = f"the endpoint did not answer within {runtime.request_timeout:g}s"
        _failed(req, reason)
        # (no final head went out: at most 1xx, which a final response may still follow, RFC 9110 §15.2)
        req.conn = None
        self._respond_local(req, 504, f"steelyard: load balancer {runtime.name}: {reason}")

    def _client_is_late(self, req: HttpRequest) -> bool:
        """The request body has not been read whole: whether the client is the one late. Not when the proxy
        stopped reading it because the endpoint does not take the body (its write buffer is full), nor when
        the client waits, as told, for the endpoint's 100 (Continue)."""
        if self.paused & _PAUSE_UPSTREAM_FULL:
            return False
        if not req.body_bytes and not req.response_started and req.http11:
            for expect in _field_values(req, b"expect"):
                if expect.strip().lower() == "100-continue":
                    return False
        return True

    def _client_timed_out(self, req: HttpRequest, conn: UpstreamConnection, runtime: UpstreamRuntime) -> None:
        """The client stopped sending its request body for the idle timeout: 408 and close (RFC 9110
        §15.5.9). The upstream exchange is abandoned and its pick released without an outcome: the endpoint
        did nothing wrong, so neither the tracker (outlier detection) nor the strategy counts it."""
        req.cancelled = True
        conn.abandon()
        req.conn = None
        attempt = req.attempt
        if attempt is not None:
            attempt.cancel()
        self.parsing = None
        self.queue.clear()
        self._pause(_PAUSE_CLOSING)
        req.keep_alive = req.keep_plain = False
        self._respond_local(req, 408, f"steelyard: no byte of the request body for {runtime.idle_timeout:g}s")

    def begin_shutdown(self) -> None:
        """Stop taking requests: close now when idle, else after the current response (which says
        `Connection: close`). A request body still arriving is read to its end, and a websocket flows both
        ways until it ends or the drain deadline comes (as TCP tunnels do)."""
        self.closing = True
        if self.tunnel is not None:
            return
        if self.current is None and self.parsing is None:
            self._close()
            return
        self.queue.clear()
        if self.parsing is None and self.current is not None and self.current.request_complete:
            self._pause(_PAUSE_CLOSING)  # (what the client sends next is dropped by _close's lingering)

    def is_idle(self) -> bool:
        return self.current is None and self.parsing is None and self.tunnel is None


class _SkippedBody:
    """Request parser callbacks after an ignored Upgrade with a body (see `_read_skipped_body`): the made-up
    head is dropped, the body goes to the proxy as usual, and so does every message after it."""

    __slots__ = ("live", "proxy")

    def __init__(self, proxy: HttpProxyProtocol):
        self.proxy = proxy
        self.live = False  # past the made-up head

    def on_url(self, url: bytes) -> None:
        if self.live:
            self.proxy.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.live:
            self.proxy.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.live:
            self.proxy.on_headers_complete()
        else:
            self.live = True

    def on_body(self, body: bytes) -> None:
        self.proxy.on_body(body)

    def on_message_complete(self) -> None:
        self.proxy.on_message_complete()


class _Sink(list[bytes]):
    """Where trailer fields go: nowhere."""

    def __iadd__(self, items: Iterable[bytes]) -> _Sink:  # type: ignore[override,misc]
        return self


_TRAILER_SINK = _Sink()


def _count_down_max_forwards(kept: list[bytes], method: bytes) -> _Reject | None:
    """RFC 9110 §7.6.2: OPTIONS or TRACE with Max-Forwards 0 is answered here (OPTIONS: 200; TRACE, which
    would echo the request, 405 as nginx does), any other value is forwarded one lower."""
    for i in range(0, len(kept), 4):
        if kept[i].lower() == b"max-forwards":
            value = kept[i + 2].strip()
            if not value.isdigit():
                return None  # (not a count: forwarded as it is)
            count = int(value)
            if count == 0:
                if method == b"TRACE":
                    return _Reject(405, "TRACE is not supported", keep=True)
                return _Reject(200, "OPTIONS answered by the load balancer: Max-Forwards was 0", keep=True)
            kept[i + 2] = b"%d" % (count - 1)
            return None
    return None


def _host_value(host: bytes) -> bytes:
    """Host as sent on: without the trailing whitespace llhttp leaves in a field value (OWS, not part of
    it: RFC 9110 §5.5), and valid (uri-host[:port], RFC 9112 §3.2), else 400."""
    host = host.rstrip(b" \t")
    if _valid_host(host) is None:
        raise _Reject(400, "invalid Host header")
    return host


def _combined(current: bytes | None, value: bytes, separator: bytes) -> bytes:
    """A list-valued field given on several lines, as one value (RFC 9110 §5.3)."""
    return value if current is None else current + separator + value


def _field_values(req: HttpRequest, lname: bytes) -> list[str]:
    """The values of the request fields named `lname` (lowercase), as text, in order."""
    if lname == b"host" or lname == b"x-forwarded-for":
        value = req.host_field if lname == b"host" else req.xff_field
        return [] if value is None else [value.decode("latin-1")]
    fields = req.fields
    return [fields[i + 2].decode("latin-1") for i in range(0, len(fields), 4) if fields[i].lower() == lname]


def _unread_bytes(transport: asyncio.BaseTransport) -> int:
    """How many bytes the kernel holds for this socket that nobody read yet (FIONREAD); 1 when unknown."""
    sock = transport.get_extra_info("socket")
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except (AttributeError, OSError, ValueError):
        return 1


def _drop_next_attempt(req: HttpRequest) -> None:
    """A retry picked in advance that will not happen: release its pick."""
    attempt = req.next_attempt
    if attempt is not None:
        req.next_attempt = None
        attempt.cancel()


def _drop_named(kept: list[bytes], named: set[bytes]) -> list[bytes]:
    """Remove the fields a `Connection` header names (RFC 9110 §7.6.1); `kept` is name, ': ', value, CRLF."""
    result: list[bytes] = []
    for i in range(0, len(kept), 4):
        if kept[i].lower() not in named:
            result += kept[i:i + 4]
    return result


class UpstreamConnection(Writer):  # an asyncio.Protocol (duck-typed, see HttpProxyProtocol)
    """One connection to an endpoint, carrying one exchange at a time, pooled between exchanges."""

    __slots__ = ("_fd", "_max_head_end", "_max_headers", "body_to", "chunked_in", "chunked_out", "client",
        "close_delimited", "closed", "config", "connection", "content_length", "data", "discard", "eof_in",
        "head_buf", "head_bytes", "headers_done", "headers_out", "idle_since", "interim", "keep_client",
        "last_read", "message_done", "parser", "pool", "read_paused", "req", "server", "status",
        "transport", "tunnel", "unsent", "upgrade", "upstream_keep_alive", "weight_hint", "write_full")

    def __init__(self, server: ProxyServer, pool: EndpointPool):
        self.server = server
        self.pool = pool
        self.config = server.config
        self.parser = _response_parser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.client: HttpProxyProtocol | None = None
        self.req: HttpRequest | None = None
        self.read_paused = False
        # Between pause_writing() and resume_writing(): the transport calls neither again, so whoever takes
        # this connection (from the pool, or as a tunnel) must see it is full and pause its client.
        self.write_full = False
        self.tunnel = False
        self.eof_in = False
        self.head_bytes = 0
        self.unsent = b""  # a request head waiting for the end of this pass of the loop (see flush)
        self._fd = -1  # the socket, for write_now (compiled build)
        self.last_read = 0.0
        self.status = 0
        self.discard = False
        self.interim = False
        self.close_delimited = False
        self.keep_client = True
        self.upstream_keep_alive = False
        self.weight_hint: float | None = None
        self.headers_out: list[bytes] = []
        # The response head being read: `data` holds the bytes from its first byte to the end of the last
        # read (on_headers_complete takes the head from it), `head_buf` what of it arrived in earlier reads.
        self.data = b""
        self.head_buf = b""
        self._max_headers = server.config.max_headers
        self._max_head_end = self._max_headers * 4
        # Framing and hop-by-hop fields of a response head taken the general way (_parse_fields).
        self.content_length: bytes | None = None
        self.chunked_in = False
        self.connection: bytes | None = None
        self.upgrade: bytes | None = None
        self.headers_done = False
        self.chunked_out = False
        self.message_done = False
        # Where on_body sends a body piece: None for the general `_body`, or for the common response (see
        # on_headers_complete) straight into the client's output list; reset when the exchange ends.
        self.body_to: Callable[[bytes], None] | None = None

    # -- binding ------------------------------------------------------------------------------------

    def bind(self, client: HttpProxyProtocol, req: HttpRequest) -> None:
        self.client = client
        self.req = req
        self.head_bytes = 0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def flush(self) -> None:
        """Send the request head left for the end of this pass of the loop (ProxyServer.flush_later)."""
        data = self.unsent
        self.unsent = b""
        if data and not self.closed:
            write_now(self.transport, self._fd, data)  # (the transport is set before any head is sent)

    def abandon(self) -> None:
        """The client side gave up on the exchange: this connection cannot be reused."""
        self.client = None
        self.req = None
        self.body_to = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    # -- asyncio callbacks ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._fd = socket_fd(transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            if not self.closed:  # bytes on an idle connection: not HTTP we can trust
                self.closed = True
                self.pool.discard_idle(self)
                self.transport.abort()  # type: ignore[union-attr]
            return
        self.last_read = self.server.now
        if self.tunnel:
            client.transport.write(data)  # type: ignore[union-attr]
            return
        if not self.headers_done:
            self.data = self.head_buf + data  # no copy when head_buf is empty
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0]:])
            return
        except HttpParserError as exc:
            if self.message_done and self.client is not None:
                # More than the response in one read (a second head after a complete response): the
                # response goes out, the connection is not reused, the rest is dropped.
                self.upstream_keep_alive = False
                self._finish()
                return
            reject = exc.__context__
            if isinstance(reject, _Reject):  # one of Steelyard's own checks: its words may be shown
                self._malformed(reject.reason, shown=True)
            else:  # llhttp's reason: for the log only
                self._malformed(str(exc))
            return
        if self.message_done:
            self._finish()  # flushes
            return
        if client.out:
            if len(data) < _JOIN_MAX:
                self.server.flush_later(client)
            else:  # a body streaming in: written at once, so a slow client's pause_writing() stops the reads
                client.flush()
        if not self.headers_done and self.client is not None:
            # A head still incomplete: keep its bytes for the next read, and bound what is kept (llhttp
            # enforces no limit either).
            self.head_buf = self.data
            self.head_bytes += len(data)
            if self.head_bytes > self.config.max_header_bytes:
                self._malformed("response header section too large", shown=True)

    def eof_received(self) -> bool | None:
        client = self.client
        if self.tunnel and client is not None and client.transport is not None:
            self.eof_in = True
            if client.eof_in or not client.transport.can_write_eof():
                client.transport.close()
                return False
            client.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        client, req = self.client, self.req
        if client is None or req is None:
            if not was_closed:
                self.pool.discard_idle(self)
            return
        if self.tunnel:
            self.client = self.req = None
            self.pool.forget(self)
            client.tunnel = None
            client._close()
            return
        if self.headers_done and self.close_delimited:
            # Close-delimited body (RFC 9112 §6.3 rule 8): the end of the connection ends the response.
            self.message_done = True
            self._finish()
            return
        self.client = self.req = None
        self.pool.forget(self)
        if (self.idle_since and not self.headers_done and not self.head_buf and not req.response_started
                and req.body_kind == _BODY_NONE and req.idempotent and not req.resent):
            # A pooled connection (it was idle before: idle_since is set) closed with no byte of an
            # answer: most likely the endpoint's keep-alive timeout racing our request, not a failure of
            # the endpoint. A bodiless idempotent request goes once more, on a fresh connection to the same
            # endpoint, under the same pick (as HTTP clients do for the same race, e.g. Go's net/http).
            req.resent = True
            client.resend_fresh(req, self.pool)
            return
        attempt = req.attempt
        if attempt is not None:
            attempt.done(ok=False, status=None)
        if req.response_started and self.headers_done:
            _failed(req, "the endpoint closed the connection during its response", str(exc) if exc else "")
            client.upstream_broken(req)
            return
        # (at most a 1xx went out, which a final response may follow: a 502, never retried after a 1xx)
        runtime = req.runtime
        retriable = runtime is not None and runtime.retry_on_reset
        reason = "the endpoint closed the connection before answering"
        _failed(req, reason, str(exc) if exc is not None else "")
        client.upstream_failed(req, 502, reason, retriable=retriable)

    def pause_writing(self) -> None:
        self.write_full = True
        client = self.client
        if client is not None:
            if self.tunnel:
                client._pause(_PAUSE_UPSTREAM_FULL)
            else:
                client.upstream_write_full(True)

    def resume_writing(self) -> None:
        self.write_full = False
        client = self.client
        if client is not None:
            if self.tunnel:
                client._resume(_PAUSE_UPSTREAM_FULL)
            else:
                client.upstream_write_full(False)

    # -- httptools callbacks (response) ----------------------------------------------------------------

    def _parse_fields(self, block: bytes) -> list[bytes]:
        """The general way: the field lines of a head (each ending in CRLF) as regenerated lines (name,
        ": ", value, CRLF; index 0 left for the status line), framing and hop-by-hop fields into
        attributes. llhttp has validated the lines: a name, a colon, the value (leading OWS dropped, as
        llhttp reports it)."""
        self.content_length = self.connection = self.upgrade = None
        self.chunked_in = False
        parts = [b""]
        for line in block.split(_CRLF)[:-1]:
            name, _, value = line.partition(b":")
            value = value.lstrip(b" \t")
            kind = _PLAIN if name in _plain_response_names else _field_kind(
                name, _RESPONSE_KINDS_LOWER, _plain_response_names)
            if kind == _PLAIN:
                parts += (name, b": ", value, _CRLF)
            elif kind == _CONTENT_LENGTH:
                self.content_length = value  # llhttp rejects differing repeats
            elif kind == _TRANSFER_ENCODING:
                self.chunked_in = True  # llhttp accepts it in a response only with chunked last
            elif kind == _CONNECTION:
                self.connection = _combined(self.connection, value, b",")
            elif kind == _UPGRADE:
                self.upgrade = _combined(self.upgrade, value, b", ")
        return parts

    def on_headers_complete(self) -> None:
        client, req = self.client, self.req
        if client is None or req is None:
            return
        if self.message_done:
            raise _Reject(502, "a second response head after a complete response")
        # The head is the start of `data` up to the first empty line: llhttp, strict, has just validated
        # it (CRLF line ends only, no obs-fold), so the first CRLFCRLF ends it.
        data = self.data
        self.data = b""  # held no longer than needed (a pooled connection would keep its last read)
        if self.head_buf:
            self.head_buf = b""
        end = _head_end(data) if _COMPILED else data.find(b"\r\n\r\n") + 2  # the last field line's end
        self.headers_done = True
        self.status = status = self.parser.get_status_code()
        # (a field line takes at least 4 bytes: the count is needed only for a long head)
        if end > self._max_head_end and data.count(_CRLF, 0, end) > self._max_headers + 1:
            raise _Reject(502, "too many response header fields")
        if (status in req.runtime.plain_statuses  # type: ignore[union-attr]
                and not req.is_head and data.startswith(b"HTTP/1.1 ")):
            # The common response: a final HTTP/1.1 one with a Content-Length body, to be forwarded as it
            # comes (plain_statuses: 2xx-5xx but 204, 304 and those retried, none when a header sets
            # weights), with no hop-by-hop field but a plain Connection. Its status line and end-to-end
            # field lines are copied as read, the framing lines regenerated.
            # One Content-Length line, at most one plain Connection line, nothing else hop-by-hop:
            parts: list[bytes] = []
            if _COMPILED:
                content_length = _scan_common_head(data, end, parts)
            else:
                content_length = _split_common_head(data, end, parts)
            if content_length is not None:
                # upstream_keep_alive is read by on_message_complete, which comes before _finish.
                req.response_started = True
                if req.keep_plain and req.request_complete and not client.closing:
                    self.keep_client = True
                    parts += (b"\r\nContent-Length: ", content_length, b"\r\n\r\n")
                else:
                    keep = req.keep_alive and req.request_complete and not client.closing
                    self.keep_client = keep
                    parts += (b"\r\nContent-Length: ", content_length, _CRLF,
                              b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n")
                client.out_append(b"".join(parts))
                if not req.logged_at:
                    self.body_to = client.out_append  # forwarded as it comes, nothing to count
                return
        if end < 2 or not data.startswith(b"HTTP/"):
            # The head did not start this exchange's bytes: stale bytes after an earlier response.
            raise _Reject(502, "response head not at the start of the response")
        if not 100 <= status <= 599:  # llhttp reads any three digits (RFC 9110 §15: 100..599)
            raise _Reject(502, f"invalid status code {status:03d}")
        runtime = req.runtime
        assert runtime is not None
        parts = self._parse_fields(data[data.find(_CRLF) + 2:end])
        parts[0] = _STATUS_LINES.get(status) or _status_line(status)
        content_length = self.content_length
        connection = self.connection
        if (content_length is not None and status in runtime.plain_statuses
                and connection in _PLAIN_CONNECTION and not req.is_head):
            # The common response: a final one with a Content-Length body, to be forwarded as it comes
            # (plain_statuses: 2xx-5xx but 204, 304 and those retried, none when a header sets weights).
            # upstream_keep_alive is read by on_message_complete, which always comes before _finish here.
            req.response_started = True
            self.keep_client = keep = req.keep_alive and req.request_complete and not client.closing
            if not _parts_dated(parts):
                parts.append(_date_line())
            if keep and req.http11:
                parts += (b"Content-Length: ", content_length, b"\r\n\r\n")
            else:
                parts += (b"Content-Length: ", content_length, _CRLF,
                          b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n")
            client.out.append(b"".join(parts))
            if not req.logged_at:
                self.body_to = client.out_append  # forwarded as it comes, nothing to count
            return
        # llhttp's view of keep-alive now, for a message we end here (HEAD, 204, 304); on_message_complete
        # refreshes it otherwise.
        self.upstream_keep_alive = self.parser.should_keep_alive()
        chunked = self.chunked_in
        if status < 200 and status != 101:
            self.data = data[end + 2:]  # the final response's head may follow in the same read
            self._interim(client, req, parts)
            return
        if status == 101 and self.upgrade is None:
            raise _Reject(502, "a 101 response without Upgrade")  # (RFC 9110 §15.2.2: it MUST have one)
        # A retried status: retried only when no body byte is still to come from the client (what would
        # follow could not be sent to both endpoints, and nothing here holds a body for a second send).
        if (status in runtime.retry_statuses and not req.response_started
                and (req.body_kind == _BODY_NONE or req.request_complete)):
            req.next_attempt = client.retry_attempt(req)
            if req.next_attempt is not None:
                self.discard = True  # drop this response whole; retry once it is read
                # where it ends, as for a forwarded one: at once (HEAD, 204, 304), or with the connection
                if req.is_head or status == 204 or status == 304:
                    self.message_done = True
                else:
                    self.close_delimited = content_length is None and not chunked
                return
        req.response_started = True
        weight_header = runtime.weight_header
        if weight_header is not None:
            for i in range(1, len(parts), 4):
                if parts[i].lower() == weight_header:
                    with contextlib.suppress(ValueError):
                        self.weight_hint = float(parts[i + 2])
        if connection is not None:
            lowered = connection.lower()
            if lowered != b"keep-alive" and lowered != b"close":
                named = {t.strip() for t in lowered.split(b",")} - {b"close", b"keep-alive", b"upgrade", b""}
                if named:
                    head = parts[:1]
                    for i in range(1, len(parts), 4):
                        if parts[i].lower() not in named:
                            head += parts[i:i + 4]
                    parts = head
        if status == 101:
            if connection is not None:
                parts += (b"Connection: ", connection, _CRLF)
            if self.upgrade is not None:
                parts += (b"Upgrade: ", self.upgrade, _CRLF)
            self.headers_out = parts
            return  # completed by _upgraded
        keep = req.keep_alive and req.request_complete and not client.closing
        self.close_delimited = False
        if not _parts_dated(parts):
            parts.append(_date_line())
        if req.is_head or status == 204 or status == 304:
            if content_length is not None and status != 204:
                parts += (b"Content-Length: ", content_length, _CRLF)
            # llhttp cannot know this answered a HEAD: end the message here, reset the parser after.
            self.message_done = True
        elif content_length is not None:
            parts += (b"Content-Length: ", content_length, _CRLF)
        else:
            if not chunked:
                self.close_delimited = True  # RFC 9112 §6.3 rule 8: the body ends with the connection
            if req.http11:
                self.chunked_out = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep = False
        self.keep_client = keep
        if not keep:
            parts.append(b"Connection: close\r\n\r\n")
        elif not req.http11:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(_CRLF)
        client.out.append(b"".join(parts))

    def _interim(self, client: HttpProxyProtocol, req: HttpRequest, parts: list[bytes]) -> None:
        """A 1xx (RFC 9110 §15.2): forwarded to HTTP/1.1 clients; the final response follows."""
        self.interim = True
        if req.http11:
            req.response_started = True
            parts.append(_CRLF)
            client.out.append(b"".join(parts))

    def on_body(self, body: bytes) -> None:
        body_to = self.body_to
        if body_to is not None:
            body_to(body)
        else:
            self._body(body)

    def _body(self, body: bytes) -> None:
        client = self.client
        if client is None or self.discard or self.message_done:
            return
        req = self.req
        if req is not None and req.logged_at:
            req.bytes_out += len(body)
        if self.chunked_out:
            client.out += (b"%x\r\n" % len(body), body, _CRLF)
        else:
            client.out.append(body)

    def on_message_begin(self) -> None:
        # Bytes of another message right after a complete response, in the same read: a backend that
        # answers what nobody asked. The response goes out; the connection is not reused (its parser
        # now holds the start of that message, which must never become part of the next exchange).
        if self.message_done:
            self.upstream_keep_alive = False

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.headers_done = False
            return
        self.message_done = True
        self.upstream_keep_alive = self.parser.should_keep_alive()  # llhttp forgets it after this call

    # -- end of an exchange ------------------------------------------------------------------------------

    def _finish(self) -> None:
        """The response is read whole: report, return the connection, let the client go on."""
        client, req = self.client, self.req
        if client is None or req is None:
            return
        self.client = self.req = None
        self.body_to = None
        chunked_out = self.chunked_out
        self.headers_done = self.message_done = False
        # (a close-delimited response ends with the connection: closed is set then)
        reusable = not self.closed and req.request_complete and self.upstream_keep_alive
        if req.is_head:
            self.parser = _response_parser(self)  # see on_headers_complete
        attempt = req.attempt
        status = self.status
        if self.discard:
            self.discard = False
            if attempt is not None:
                attempt.done(ok=False, status=status)
            self._release(reusable)
            next_attempt, req.next_attempt = req.next_attempt, None
            req.conn = None
            reason = f"the endpoint answered {status}"
            _failed(req, reason)
            if not client._retry(req, next_attempt):
                client.upstream_failed(req, 502, reason, retriable=False)
            return
        if chunked_out:
            self.chunked_out = False
            client.out.append(_LAST_CHUNK)
        server = self.server
        server.flush_later(client)  # (a client closed below is flushed at once by _close)
        status_class = STATUS_CLASSES[status]  # llhttp: 0-999
        if attempt is not None:
            hint = self.weight_hint
            if hint is not None:
                self.weight_hint = None
            attempt.report(status < 500, status_class, hint)
        server.stats.responses_by_class[status_class] += 1
        if req.logged_at:
            client.log_access(req, status)
        if self.read_paused:
            self._release(reusable)
        else:  # pool.release(), inlined
            pool = self.pool
            pool.busy -= 1
            idle = pool.idle
            if reusable and not pool.retired and len(idle) < pool.max_idle:
                self.idle_since = server.now
                idle.append(self)
            else:
                self.close()
        # client.response_done(), inlined: the response was written in full.
        client.current = None
        req.conn = None
        if not self.keep_client or client.closing:  # (keep_client implies request_complete)
            client._close()
        elif client.paused or client.queue:
            client._next()

    def _release(self, reusable: bool) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
        self.pool.release(self, reusable, self.server.now)

    def _upgraded(self, rest: bytes) -> None:
        """The response parser stopped after a 101: tunnel bytes from here on (RFC 9110 §7.8)."""
        client, req = self.client, self.req
        if client is None or req is None:
            return
        if self.status != 101 or not req.upgrade:
            # (the 101 head was held back, not written: the client can still have an answer, a 502)
            self.headers_out = []
            req.response_started = False
            self._malformed("unexpected protocol switch", shown=True)
            return
        parts = self.headers_out
        self.headers_out = []
        parts.append(_CRLF)
        client.out.append(b"".join(parts))
        if rest:
            client.out.append(rest)
        client.flush()
        self.tunnel = True
        req.response_started = True
        if req.attempt is not None:
            req.attempt.done(ok=True, status=101)
        self.server.stats.responses_by_class[1] += 1
        client.start_tunnel(self, req)

    def _malformed(self, why: str, *, shown: bool = False) -> None:
        """An invalid response: `why` goes to the log, and to the client only when `shown` (a reason of
        Steelyard's own wording, e.g. "too many response header fields"; never llhttp's)."""
        client, req = self.client, self.req
        self.client = self.req = None
        self.body_to = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()
        if client is None or req is None:
            return
        if req.attempt is not None:
            req.attempt.done(ok=False)
        _failed(req, "invalid response from the endpoint", why)
        if req.response_started:
            client.upstream_broken(req)
        else:
            client.upstream_failed(req, 502, f"invalid response from the endpoint ({why})" if shown
                                   else "invalid response from the endpoint", retriable=False)



# -- llhttp driven from C (the compiled build) --------------------------------------------------------------
# httptools calls a parser's protocol back through Python calls (bound methods, one per callback) and
# answers get_method() and the like through Python calls too: ~0.4 µs per request here. Compiled, the proxy
# drives the same llhttp itself (its C sources come with httptools' source distribution: setup.py) and its
# callbacks reach the protocols' cpdef on_* methods as C calls. Same interface, same rules, same errors
# (httptools' exception classes, messages and `__context__`) as httptools' parsers, which plain Python uses
# (_request_parser below). The names llhttp_* and HPE_* come from llhttp.h (see http.pxd).


class _LLParser:
    """One llhttp parser, fed as httptools' parsers are (see above; compiled build only)."""

    def feed_data(self, data: bytes) -> None:
        ll = cython.address(self.ll)
        start = data
        err = llhttp_execute(ll, start, len(data))  # noqa: F821
        if err == HPE_OK:  # noqa: F821
            return
        if err == HPE_PAUSED_UPGRADE and self.ll.upgrade == 1:  # noqa: F821
            # (httptools' way: the parser goes on as HTTP after the head, the caller takes the rest)
            offset = llhttp_get_error_pos(ll) - start  # noqa: F821
            llhttp_resume_after_upgrade(ll)  # noqa: F821
            raise HttpParserUpgrade(offset)
        reason = llhttp_get_error_reason(ll)  # noqa: F821
        text = "" if reason == cython.NULL else reason.decode("latin-1")
        if err in (HPE_CB_MESSAGE_BEGIN, HPE_CB_HEADERS_COMPLETE, HPE_CB_MESSAGE_COMPLETE,  # noqa: F821
                   HPE_CB_CHUNK_HEADER, HPE_CB_CHUNK_COMPLETE, HPE_USER):  # noqa: F821
            exc: HttpParserError = HttpParserCallbackError(text)
            if self.last_error is not None:
                exc.__context__ = self.last_error
                self.last_error = None
        elif err == HPE_INVALID_STATUS:  # noqa: F821
            exc = HttpParserInvalidStatusError(text)
        elif err == HPE_INVALID_METHOD:  # noqa: F821
            exc = HttpParserInvalidMethodError(text)
        elif err == HPE_INVALID_URL:  # noqa: F821
            exc = HttpParserInvalidURLError(text)
        else:
            exc = HttpParserError(text)
        raise exc

    def should_keep_alive(self) -> bool:
        return llhttp_should_keep_alive(cython.address(self.ll)) != 0  # noqa: F821

    def get_http_version(self) -> str:
        return f"{self.ll.http_major}.{self.ll.http_minor}"

    def _failed(self, exc: BaseException, reason: bytes | None) -> int:
        """A callback raised: llhttp stops with an error that feed_data raises, `exc` as its context."""
        self.last_error = exc
        if reason == cython.NULL:
            return -1
        llhttp_set_error_reason(cython.address(self.ll), reason)  # noqa: F821
        return HPE_USER  # noqa: F821


class _LLRequestParser(_LLParser):
    """llhttp for client requests. With `skip_head` (after an ignored Upgrade with a body, see
    `_read_skipped_body`), the first head fed is made up: it is parsed but not reported."""

    def __init__(self, proto: HttpProxyProtocol, skip_head: bool = False):
        self.proto = proto
        self.live = not skip_head
        self.name = self.value = None
        self.last_error = None
        settings = cython.address(self.settings)
        llhttp_settings_init(settings)  # noqa: F821
        settings.on_url = _request_on_url
        settings.on_header_field = _request_on_header_field
        settings.on_header_value = _request_on_header_value
        settings.on_headers_complete = _request_on_headers_complete
        settings.on_body = _request_on_body
        settings.on_message_complete = _request_on_message_complete
        settings.on_chunk_header = _request_on_chunk_header
        settings.on_chunk_complete = _request_on_chunk_complete
        llhttp_init(cython.address(self.ll), HTTP_REQUEST, settings)  # noqa: F821
        self.ll.data = cython.cast(cython.p_void, self)

    def get_method(self) -> bytes:
        return llhttp_method_name(self.ll.method)  # noqa: F821

    def _header_done(self) -> None:
        """A field line ended (the next one began, or the section did): reported as one (name, value)."""
        name, value = self.name, self.value
        self.name = self.value = None
        if self.live:
            self.proto.on_header(name, value)


class _LLResponseParser(_LLParser):
    """llhttp for upstream responses: heads are read from the bytes (see UpstreamConnection), not field by
    field, so no field callbacks."""

    def __init__(self, proto: UpstreamConnection):
        self.proto = proto
        self.last_error = None
        settings = cython.address(self.settings)
        llhttp_settings_init(settings)  # noqa: F821
        settings.on_message_begin = _response_on_message_begin
        settings.on_headers_complete = _response_on_headers_complete
        settings.on_body = _response_on_body
        settings.on_message_complete = _response_on_message_complete
        llhttp_init(cython.address(self.ll), HTTP_RESPONSE, settings)  # noqa: F821
        self.ll.data = cython.cast(cython.p_void, self)

    def get_status_code(self) -> int:
        return self.ll.status_code


# llhttp's callbacks (C functions: http.pxd). A callback that raises returns an error to llhttp, which
# stops; feed_data raises it. As in httptools, field names and values may come in pieces (split reads),
# and a field is reported when the next begins, when the head ends or, in trailers, when the chunk ends.


def _request_on_url(ll, at, length):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    try:
        if parser.live:
            parser.proto.on_url(at[:length])
    except BaseException as exc:
        return parser._failed(exc, b"`on_url` callback error")
    return 0


def _request_on_header_field(ll, at, length):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    try:
        if parser.value is not None:
            parser._header_done()
        if parser.name is None:
            parser.name = at[:length]
        else:
            parser.name += at[:length]
    except BaseException as exc:
        return parser._failed(exc, b"`on_header_field` callback error")
    return 0


def _request_on_header_value(ll, at, length):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    try:
        if parser.value is None:
            parser.value = at[:length]
        else:
            parser.value += at[:length]
    except BaseException as exc:
        return parser._failed(exc, b"`on_header_value` callback error")
    return 0


def _request_on_headers_complete(ll):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    try:
        if parser.value is not None:
            parser._header_done()
        if parser.live:
            parser.proto.on_headers_complete()
        else:
            parser.live = True
    except BaseException as exc:
        return parser._failed(exc, cython.NULL)
    return 1 if ll.upgrade else 0  # (httptools': an upgrade request ends at its head)


def _request_on_body(ll, at, length):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    try:
        parser.proto.on_body(at[:length])
    except BaseException as exc:
        return parser._failed(exc, b"`on_body` callback error")
    return 0


def _request_on_message_complete(ll):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    try:
        parser.proto.on_message_complete()
    except BaseException as exc:
        return parser._failed(exc, cython.NULL)
    return 0


def _request_on_chunk_header(ll):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    if parser.name is not None or parser.value is not None:
        return parser._failed(HttpParserError("invalid headers state"), cython.NULL)
    return 0


def _request_on_chunk_complete(ll):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLRequestParser, ll.data)
    try:
        if parser.value is not None:
            parser._header_done()
    except BaseException as exc:
        return parser._failed(exc, cython.NULL)
    return 0


def _response_on_message_begin(ll):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLResponseParser, ll.data)
    try:
        parser.proto.on_message_begin()
    except BaseException as exc:
        return parser._failed(exc, cython.NULL)
    return 0


def _response_on_headers_complete(ll):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLResponseParser, ll.data)
    try:
        parser.proto.on_headers_complete()
    except BaseException as exc:
        return parser._failed(exc, cython.NULL)
    return 1 if ll.upgrade else 0


def _response_on_body(ll, at, length):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLResponseParser, ll.data)
    try:
        parser.proto.on_body(at[:length])
    except BaseException as exc:
        return parser._failed(exc, b"`on_body` callback error")
    return 0


def _response_on_message_complete(ll):  # type: ignore[no-untyped-def]
    parser = cython.cast(_LLResponseParser, ll.data)
    try:
        parser.proto.on_message_complete()
    except BaseException as exc:
        return parser._failed(exc, cython.NULL)
    return 0


def _request_parser(proto: HttpProxyProtocol) -> HttpRequestParser:
    return _LLRequestParser(proto) if _COMPILED else HttpRequestParser(proto)


def _skipped_head_parser(proto: HttpProxyProtocol) -> HttpRequestParser:
    return _LLRequestParser(proto, True) if _COMPILED else HttpRequestParser(_SkippedBody(proto))


def _response_parser(proto: UpstreamConnection) -> HttpResponseParser:
    return _LLResponseParser(proto) if _COMPILED else HttpResponseParser(proto)
