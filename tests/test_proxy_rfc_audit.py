"""RFC 9110 / RFC 9112 audit of how the proxy treats client requests, on real sockets (127.0.0.1).

What tests/test_proxy_hygiene.py and tests/test_proxy_http.py already cover is not repeated here: this file
looks at the corners (transfer-coding on HTTP/1.0, Upgrade on HTTP/1.0, trailer fields, Connection naming a
field the proxy rewrites, request-target forms, list fields). Eleven tests began as strict xfails for bugs
found, and pass since their fixes; the others pin tricky cases verified correct.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import uvloop

from proxy_support import Backend, Harness, Scripted, make_state, start_backends
from steelyard.config.desired import DesiredState, Route, Upstream
from steelyard.proxy import ProxyConfig

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


CONFIG = ProxyConfig(max_header_bytes=8192, max_headers=20, max_uri_bytes=1024, max_body_bytes=100_000,
                     header_timeout=1.0, sweep_interval=0.05)


async def _exchange(raw: bytes, *, wait: float = 0.5, config: ProxyConfig = CONFIG
                    ) -> tuple[bytes, bool, list[bytes]]:
    """Send `raw` to a proxy in front of one backend; return what the client read within `wait` seconds
    of silence, whether the proxy closed the connection, and the request heads the backend received."""
    (a,) = await start_backends("a")
    try:
        async with Harness(make_state([a]), config) as h:
            client = await h.connect()
            await client.send(raw)
            closed = await client.closed(timeout=wait)
            client.close()
            return bytes(client.raw), closed, list(a.heads)
    finally:
        await a.close()


def _statuses(raw: bytes) -> list[int]:
    """The status codes of the response heads in `raw` (bodies here never contain a status line)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


# -- RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request ---------------------------------------------


async def test_http10_transfer_encoding_closes_the_connection_after_the_message() -> None:
    """An HTTP/1.0 recipient of Transfer-Encoding MUST treat the framing as faulty and close the connection
    after processing the message: an HTTP/1.0 hop in front may not know chunked, so what follows cannot be
    trusted to be a request (a smuggling vector). Even with `Connection: keep-alive`."""
    raw = (b"POST /echo HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n"
           b"GET /smuggled HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    out, closed, heads = await _exchange(raw)
    assert _statuses(out)[:1] == [200]
    assert not any(b"/smuggled" in head for head in heads), heads
    assert b"Connection: close\r\n" in out and closed


async def test_http10_transfer_encoding_without_keep_alive_is_processed_and_closed() -> None:
    """Without keep-alive the HTTP/1.0 message is processed (re-chunked upstream) and the connection closes;
    with Content-Length as well it is 400."""
    out, closed, heads = await _exchange(b"POST /echo HTTP/1.0\r\nHost: x\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert _statuses(out) == [200] and out.endswith(b"\r\n\r\nabc") and closed
    assert b"Transfer-Encoding: chunked\r\n" in heads[0]
    out, closed, heads = await _exchange(b"POST /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert _statuses(out) == [400] and closed and heads == []


# -- RFC 9110 §7.8: Upgrade in an HTTP/1.0 request -------------------------------------------------------


async def test_upgrade_in_an_http10_request_is_ignored() -> None:
    """`A server MUST ignore an Upgrade header field that is received in an HTTP/1.0 request`: the request
    goes on as a plain one, without Upgrade and without `upgrade` in Connection."""
    out, _, heads = await _exchange(b"GET /headers HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\n"
                                    b"Upgrade: websocket\r\n\r\n")
    assert _statuses(out) == [200]
    assert b"upgrade" not in heads[0].lower(), heads[0]


# -- trailer fields (RFC 9110 §6.5) ----------------------------------------------------------------------


def _shop_and_internal_admin(web: Backend, admin: Backend) -> DesiredState:
    """One listener: host shop.example to `web`, host admin.internal to `admin` (another load balancer)."""
    web_up = make_state([web]).upstreams["default/web/http"]
    admin_up = Upstream("default/admin/http", "default/admin", "http", web_up.protocol, web_up.policy, None,
                        (admin.endpoint,))
    return make_state([web], hosts=("shop.example",), extra_routes=[
        (admin_up, Route(hosts=("admin.internal",), path_prefix="/", upstream=admin_up.key))])


async def test_a_trailer_host_does_not_route_a_pipelined_request() -> None:
    """Trailer fields are dropped (RFC 9110 §6.5.1 allows it) and MUST NOT be used for routing, which the
    header section already decided. A request that waits behind another (pipelined) is routed when its turn
    comes; by then its trailer section was parsed, and a `Host` in it must not send it to another host's
    load balancer (here an internal one), while the head says the original Host."""
    web, admin = await start_backends("web", "admin")
    state = _shop_and_internal_admin(web, admin)
    try:
        async with Harness(state, CONFIG) as h:
            client = await h.connect()
            await client.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: shop.example\r\n\r\n"
                              b"POST /count HTTP/1.1\r\nHost: shop.example\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n0\r\nHost: admin.internal\r\n\r\n")
            first, second = await client.responses(2, timeout=3)
            assert (first.status, first.header("X-Backend")) == (200, "web")
            assert (second.status, second.body) == (200, b"3")
            assert second.header("X-Backend") == "web"
            assert admin.requests == []
            client.close()
    finally:
        await web.close()
        await admin.close()


async def test_a_trailer_host_does_not_route_a_request_sent_alone() -> None:
    """The same trailer on a request that is not queued: routed by its head (verified correct)."""
    web, admin = await start_backends("web", "admin")
    state = _shop_and_internal_admin(web, admin)
    try:
        async with Harness(state, CONFIG) as h:
            client = await h.connect()
            await client.send(b"POST /count HTTP/1.1\r\nHost: shop.example\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n0\r\nHost: admin.internal\r\nX-T: 1\r\n\r\n")
            r = await client.response(timeout=3)
            assert (r.status, r.body, r.header("X-Backend")) == (200, b"3", "web")
            assert admin.requests == []
            client.close()
    finally:
        await web.close()
        await admin.close()


async def test_an_oversized_trailer_section_is_rejected() -> None:
    """The header-section limit (max_header_bytes, 431) must bound the trailer section too: httptools
    accumulates a field value in memory (by concatenation) until its line ends, so a client sending one
    endless trailer field makes the proxy buffer it all. Here 200 KB, 25 times the limit, never ended."""
    (a,) = await start_backends("a")
    try:
        async with Harness(make_state([a]), CONFIG) as h:
            client = await h.connect()
            await client.send(b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"3\r\nabc\r\n0\r\nX-Big: ")
            for _ in range(20):
                await client.send(b"b" * 10_000)
            r = await client.response(timeout=1)
            assert r.status in (400, 431), r.text
            assert await client.closed(timeout=2)
            client.close()
    finally:
        await a.close()


async def test_more_trailer_fields_than_the_head_may_have_is_431() -> None:
    """The head's field count (max_headers, 20 here) bounds the trailer section too: 21 trailer fields
    are 431 and close (they were dropped, but counted by nothing)."""
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(21))
    out, closed, _ = await _exchange(b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
    assert _statuses(out) == [431] and closed, out
    out, closed, _ = await _exchange(b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"3\r\nabc\r\n0\r\n" + trailers.replace(b"X-T20: v\r\n", b"")
                                     + b"\r\n")  # 20: fine
    assert _statuses(out) == [200] and not closed, out


async def test_trailer_fields_are_not_forwarded() -> None:
    """Trailers are dropped, a hop-by-hop one included; the body is re-chunked and ends with a bare last
    chunk (verified correct)."""
    seen = bytearray()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.extend(await reader.readuntil(b"\r\n\r\n"))
        seen.extend(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    scripted = await Scripted(backend).start()
    try:
        async with Harness(make_state([scripted.endpoint]), CONFIG) as h:
            client = await h.connect()
            await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              b"Trailer: X-T\r\n\r\n"
                              b"3;ext=1\r\nabc\r\n0\r\nX-T: secret\r\nConnection: close\r\n\r\n")
            r = await client.response(timeout=3)
            assert (r.status, r.body) == (200, b"ok")
            assert bytes(seen).endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), bytes(seen)
            assert b"secret" not in seen and b"trailer" not in seen.lower()
            client.close()
    finally:
        await scripted.close()


# -- Connection options naming a field the proxy rewrites (RFC 9110 §7.6.1) ------------------------------


async def test_x_forwarded_for_named_in_connection_is_removed() -> None:
    """A field named in Connection is hop-by-hop: the client's X-Forwarded-For must be removed before
    forwarding; the proxy then sets its own (the client's address alone)."""
    out, _, heads = await _exchange(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: X-Forwarded-For\r\n"
                                    b"X-Forwarded-For: 6.6.6.6\r\n\r\n")
    assert _statuses(out) == [200]
    assert b"6.6.6.6" not in heads[0], heads[0]
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in heads[0]


async def test_connection_naming_fields_the_proxy_sets_keeps_them() -> None:
    """Connection naming Host, Via or X-Forwarded-Host does not strip what the proxy itself sends (verified
    correct); the client's own Via, named, goes."""
    out, _, heads = await _exchange(b"GET /headers HTTP/1.1\r\nHost: x\r\nVia: 1.1 edge\r\n"
                                    b"Connection: Host, Via, X-Forwarded-Host, X-Forwarded-Proto\r\n\r\n")
    assert _statuses(out) == [200]
    head = heads[0]
    assert head.startswith(b"GET /headers HTTP/1.1\r\nHost: x\r\n")
    for line in (b"X-Forwarded-Proto: http", b"X-Forwarded-Host: x", b"Via: 1.1 steelyard"):
        assert b"\r\n" + line + b"\r\n" in head, head
    assert b"edge" not in head and b"connection" not in head.lower()


# -- X-Forwarded-For as a list (RFC 9110 §5.6.1) ---------------------------------------------------------


async def test_an_empty_x_forwarded_for_gives_no_empty_list_element() -> None:
    """A sender MUST NOT generate empty list elements: appending to an empty X-Forwarded-For must give the
    client address alone, not ", 127.0.0.1" (whose first element, what most applications take as the
    client, is empty)."""
    out, _, heads = await _exchange(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \r\n\r\n")
    assert _statuses(out) == [200]
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in heads[0], heads[0]


async def test_several_x_forwarded_for_lines_are_joined_then_appended_to() -> None:
    out, _, heads = await _exchange(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\n"
                                    b"x-forwarded-for: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-Host: evil\r\n"
                                    b"X-Forwarded-Proto: https\r\n\r\n")
    assert _statuses(out) == [200]
    head = heads[0]
    assert head.count(b"X-Forwarded-For") == 1 and head.lower().count(b"x-forwarded-for") == 1
    assert b"\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1\r\n" in head
    assert b"evil" not in head and b"https" not in head


# -- request-target forms (RFC 9112 §3.2) ----------------------------------------------------------------


async def test_a_fragment_in_an_origin_form_target_never_reaches_the_endpoint() -> None:
    """origin-form has no fragment. The proxy drops it from an absolute-form target but forwards
    `/headers#frag` as is, which the endpoint may read differently from the proxy's routing (400, or the
    fragment removed, are both fine)."""
    out, _, heads = await _exchange(b"GET /headers#frag HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not any(b"#" in head.split(b"\r\n", 1)[0] for head in heads), heads
    assert _statuses(out) in ([200], [400])


async def test_a_fragment_in_an_absolute_form_target_is_dropped() -> None:
    out, _, heads = await _exchange(b"GET http://o.example/headers?q=1#frag HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _statuses(out) == [200]
    assert heads[0].startswith(b"GET /headers?q=1 HTTP/1.1\r\nHost: o.example\r\n")


async def test_asterisk_form_is_only_for_options() -> None:
    """`GET *` is not a valid request line: 400, nothing forwarded. OPTIONS * is forwarded as is."""
    out, closed, heads = await _exchange(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _statuses(out) == [400] and closed and heads == []


async def test_options_asterisk_is_forwarded_as_is() -> None:
    out, _, heads = await _exchange(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _statuses(out) == [200] and heads[0].startswith(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n")


async def test_absolute_form_drops_userinfo_and_replaces_host() -> None:
    """RFC 9112 §3.2.2: the authority of an absolute-form target replaces Host; userinfo never goes on."""
    out, _, heads = await _exchange(b"GET http://user:pw@Other.Example:81/headers?q HTTP/1.1\r\n"
                                    b"Host: x\r\n\r\n")
    assert _statuses(out) == [200]
    head = heads[0]
    assert head.startswith(b"GET /headers?q HTTP/1.1\r\nHost: Other.Example:81\r\n")
    assert b"pw" not in head and b"X-Forwarded-Host: Other.Example:81\r\n" in head


# -- framing variants verified correct --------------------------------------------------------------------


FRAMING_CASES = [
    # (name, request, status, closed)
    ("chunked-any-case", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n", 200, False),
    ("chunked-identity", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n", 400, True),
    ("chunked-twice", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400, True),
    ("content-length-plus", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400, True),
    ("content-length-1,1", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\na", 400, True),
    ("content-length-inner-space", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1 1\r\n\r\na",
     400, True),
    ("content-length-ows", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length:  3 \t\r\n\r\nabc", 200, False),
    ("chunk-size-trailing-space", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3 \r\nabc\r\n0\r\n\r\n", 400, True),
    ("chunk-size-0x", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"0x3\r\nabc\r\n0\r\n\r\n", 400, True),
    ("chunk-data-too-long", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"3\r\nabcX\r\n0\r\n\r\n", 400, True),
    ("chunk-lf-only", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
     400, True),
    ("malformed-last-chunk", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nabc\r\n0\r\nXX\r\n\r\n", 400, True),
]


@pytest.mark.parametrize(("name", "raw", "status", "closed"), FRAMING_CASES,
                         ids=[c[0] for c in FRAMING_CASES])
async def test_framing_variants(name: str, raw: bytes, status: int, closed: bool) -> None:
    out, was_closed, _ = await _exchange(raw + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n", wait=0.3)
    statuses = _statuses(out)
    assert statuses[:1] == [status], out
    if closed:
        assert was_closed and statuses == [status]
    else:
        assert out.count(b"\r\n\r\nabc") == 1 and statuses == [status, 200]


async def test_a_malformed_last_chunk_voids_the_forwarded_exchange() -> None:
    """The head and first chunk went upstream before the error: the upstream request is cut (never ended
    with a last chunk), the client gets 400 and the connection closes."""
    received = bytearray()
    done = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                received.extend(data)
        finally:
            done.set()

    scripted = await Scripted(backend).start()
    try:
        async with Harness(make_state([scripted.endpoint]), CONFIG) as h:
            client = await h.connect()
            await client.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await asyncio.sleep(0.1)
            await client.send(b"0\r\nbad trailer\r\n\r\n")
            r = await client.response(timeout=2)
            assert r.status == 400 and await client.closed(timeout=2)
            await asyncio.wait_for(done.wait(), 2)
            assert b"3\r\nabc\r\n" in received and not received.endswith(b"0\r\n\r\n")
            client.close()
    finally:
        await scripted.close()


# -- limits at their edge ----------------------------------------------------------------------------------


async def test_limits_at_their_edge_pass_and_one_past_is_refused() -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(19))  # 19 + Host = max_headers
    out, closed, _ = await _exchange(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", wait=0.2)
    assert _statuses(out) == [200] and not closed
    out, closed, _ = await _exchange(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"X-One: more\r\n\r\n",
                                     wait=0.2)
    assert _statuses(out) == [431] and closed
    out, closed, _ = await _exchange(b"GET /" + b"u" * 1023 + b" HTTP/1.1\r\nHost: x\r\n\r\n", wait=0.2)
    assert _statuses(out) == [200] and not closed
    out, closed, _ = await _exchange(b"GET /" + b"u" * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n", wait=0.2)
    assert _statuses(out) == [414] and closed


# -- HTTP/1.0 persistence and bodies on GET/HEAD -----------------------------------------------------------


async def test_http10_keep_alive_gets_framing_it_can_use() -> None:
    """An HTTP/1.0 keep-alive client: a chunked upstream response is de-chunked and closed (HTTP/1.0 has no
    chunked), a 204 and a HEAD keep the connection, saying so (verified correct)."""
    out, closed, _ = await _exchange(b"GET /chunked?n=2 HTTP/1.0\r\nHost: x\r\n"
                                     b"Connection: keep-alive\r\n\r\n")
    assert closed and b"Connection: close\r\n" in out and out.endswith(b"\r\n\r\npart-0;part-1;")
    assert b"chunked" not in out.lower()
    out, closed, _ = await _exchange(
        b"GET /status/204 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        b"HEAD /chunked HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
    assert _statuses(out) == [204, 200, 200] and not closed
    assert out.count(b"Connection: keep-alive\r\n") == 3 and out.endswith(b"\r\n\r\na")


async def test_bodies_on_get_and_head_are_forwarded_and_pipelining_goes_on() -> None:
    out, _, heads = await _exchange(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                                    b"HEAD /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
                                    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _statuses(out) == [200, 200, 200]
    assert out.count(b"abc") == 1 and b"xyz" not in out and out.endswith(b"\r\n\r\na")
    assert [h.split(b" ", 1)[0] for h in heads] == [b"GET", b"HEAD", b"GET"]


# -- field values: optional whitespace is not part of them (RFC 9110 §5.5) ----------------------------------


async def test_trailing_whitespace_after_host_is_not_part_of_it() -> None:
    """llhttp strips the whitespace before a field value, not after it: the proxy must, before checking
    Host (uri-host[:port]) and before routing by it. `Host: x ` is valid HTTP and names host x."""
    out, closed, heads = await _exchange(b"GET /headers HTTP/1.1\r\nHost: x \r\n\r\n")
    assert _statuses(out) == [200] and not closed, out
    assert heads[0].startswith(b"GET /headers HTTP/1.1\r\nHost: x\r\n")


async def test_max_forwards_is_honoured_for_options_and_trace() -> None:
    """An intermediary receiving TRACE or OPTIONS with Max-Forwards MUST NOT forward it when the value is 0
    (it answers as the final recipient), and otherwise forwards it decremented."""
    out, _, heads = await _exchange(b"OPTIONS /headers HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n"
                                    b"TRACE /headers HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\n\r\n")
    assert len(_statuses(out)) == 2
    assert [h.split(b" ", 1)[0] for h in heads] == [b"TRACE"], heads
    assert b"\r\nMax-Forwards: 4\r\n" in heads[0]


# -- persistence: what follows a request that ends the connection ------------------------------------------


async def test_nothing_after_a_connection_close_request_is_forwarded() -> None:
    """RFC 9112 §9.6: after a request with `close` (whitespace after the option included) the server
    processes no further request on the connection (verified correct)."""
    out, closed, heads = await _exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close \r\n\r\n"
                                         b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _statuses(out) == [200] and closed and b"Connection: close\r\n" in out
    assert len(heads) == 1


async def test_http10_keep_alive_local_answers_say_keep_alive() -> None:
    """A local answer (404) to an HTTP/1.0 keep-alive request that keeps the connection must say so, as the
    proxied answers do: an HTTP/1.0 client takes a response without `Connection: keep-alive` as the end."""
    (a,) = await start_backends("a")
    try:
        async with Harness(make_state([a], hosts=("shop.example",)), CONFIG) as h:
            client = await h.connect()
            await client.send(b"GET / HTTP/1.0\r\nHost: nowhere.example\r\nConnection: keep-alive\r\n\r\n")
            r = await client.response(timeout=2)
            assert r.status == 404
            kept = not await client.closed(timeout=0.3)
            assert kept == (r.header("Connection") == "keep-alive"), (kept, r.header("Connection"))
            client.close()
    finally:
        await a.close()
