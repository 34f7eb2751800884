"""Request hygiene (RFC 9110/9112): each malformed or oversized request gets its status and a closed
connection, and nothing of it reaches a backend."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from proxy_support import Harness, make_state, start_backends
from steelyard.proxy import ProxyConfig

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


CONFIG = ProxyConfig(max_header_bytes=8192, max_headers=20, max_uri_bytes=1024, max_body_bytes=1000,
                     header_timeout=0.3, sweep_interval=0.05)

CASES = [
    ("content-length-with-transfer-encoding", 400,
     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n"),
    ("differing-content-lengths", 400,
     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    ("repeated-content-length", 400,
     b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    ("content-length-list", 400, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc"),
    ("negative-content-length", 400, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
    ("invalid-chunk-size", 400,
     b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    ("chunked-not-last", 400, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
    ("unknown-transfer-coding", 501,
     b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
    ("space-before-colon", 400, b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
    ("obsolete-line-folding", 400, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n"),
    ("bare-lf", 400, b"GET / HTTP/1.1\nHost: x\n\n"),
    ("bad-method", 400, b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    # RFC 9110 §9.1, §15.6.2: a method (a token) the proxy does not know is 501
    ("unknown-method", 501, b"BAN / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("unknown-method-underscore", 501, b"FOO_BAR / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("lowercase-method", 501, b"get / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("not-a-request-line", 400, b"BANANA\r\n\r\n"),
    # RFC 9110 §15.6.6: a well-formed version other than 1.0 and 1.1 is 505; a malformed one 400
    ("bad-version", 505, b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("http2-version", 505, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
    ("http09-version", 505, b"GET / HTTP/0.9\r\nHost: x\r\n\r\n"),
    ("http2-preface", 505, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("malformed-version", 400, b"GET / HTTP/1.x\r\nHost: x\r\n\r\n"),
    # RFC 9112 §3.2: a Host that is not uri-host[:port] is 400
    ("host-with-path", 400, b"GET / HTTP/1.1\r\nHost: raw.test/../x\r\n\r\n"),
    ("host-with-space", 400, b"GET / HTTP/1.1\r\nHost: raw test\r\n\r\n"),
    ("host-with-userinfo", 400, b"GET / HTTP/1.1\r\nHost: user@raw.test\r\n\r\n"),
    ("host-with-bad-port", 400, b"GET / HTTP/1.1\r\nHost: raw.test:8o\r\n\r\n"),
    ("host-with-bad-ip-literal", 400, b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"),
    ("host-invalid-with-body", 400, b"POST / HTTP/1.1\r\nHost: a/b\r\nContent-Length: 2\r\n\r\nok"),
    ("host-invalid-http10", 400, b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n"),
    ("missing-host", 400, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
    ("two-hosts", 400, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("connect", 405, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
    ("uri-too-long", 414, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("header-too-large", 431, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"),
    ("header-section-too-large-unfinished", 431, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000),
    ("too-many-headers", 431,
     b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(25)) + b"\r\n"),
    ("body-too-large-by-length", 413, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"),
    ("body-too-large-chunked", 413,
     b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"
     + b"z" * 2048 + b"\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize(("name", "status", "raw"), CASES, ids=[c[0] for c in CASES])
async def test_malformed_request_gets_status_and_close(name: str, status: int, raw: bytes) -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), CONFIG) as h:
        client = await h.connect()
        await client.send(raw)
        r = await client.response()
        assert r.status == status, r.text
        assert r.header("Connection") == "close"
        assert r.text.startswith("steelyard: ") and r.text.count("\n") == 1
        assert await client.closed(), "the proxy must close after a rejected request"
        client.close()
    if status != 413:  # a 413 by chunk count may happen after the head was forwarded
        assert a.requests == []
    await a.close()


async def test_host_is_validated_when_it_changes_on_a_connection() -> None:
    """Valid Host forms pass (checked once per change: the common path caches the last Host seen); the first
    invalid one on the same connection is 400 and closes it."""
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), CONFIG) as h:
        client = await h.connect()
        for host in ("example.com", "example.com", "[::1]:8080", "127.0.0.1", "127.0.0.1:", "",
                     "a-b.c_d~!$&'()*+,;=%41:80", "[v1.x]", "example.com"):
            r = await client.request(host=host)
            assert (r.status, r.body) == (200, b"a"), host
        r = await client.request(host="raw.test/../x")
        assert r.status == 400 and r.text == "steelyard: invalid Host header\n"
        assert await client.closed()
        # an absolute-form target's authority becomes the Host: an IPv6 one keeps its brackets
        client = await h.connect()
        await client.send(b"GET http://[::1]:8080/headers HTTP/1.1\r\nHost: ignored\r\n\r\n")
        r = await client.response()
        assert r.status == 200 and r.body.startswith(b"GET /headers HTTP/1.1\r\nHost: [::1]:8080\r\n")
        # the same on the general path (a request with a body)
        client = await h.connect()
        assert (await client.request("POST", "/", host="[::1]:80", body=b"ok")).status == 200
        r = await client.request("POST", "/", host="a\\b", body=b"ok")
        assert r.status == 400 and await client.closed()
    assert len(a.requests) == 11
    await a.close()


async def test_unknown_method_after_a_good_request_is_501() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), CONFIG) as h:
        client = await h.connect()
        assert (await client.request()).status == 200
        r = await client.request("BAN")
        assert (r.status, r.header("Connection")) == (501, "close")
        assert r.text == "steelyard: method not implemented\n"
        assert await client.closed()
    assert a.requests == [("GET", "/")]
    await a.close()


async def test_error_after_a_good_pipelined_request_answers_both_in_order() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), CONFIG) as h:
        client = await h.connect()
        await client.send(b"GET /slow?ms=100 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost : x\r\n\r\n")
        first, second = await client.responses(2)
        assert (first.status, first.body) == (200, b"a")
        assert second.status == 400
        assert await client.closed()
    await a.close()


async def test_slow_header_gets_408_and_close() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), CONFIG) as h:
        client = await h.connect()
        await client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and never the end of the head
        r = await client.response(timeout=5)
        assert r.status == 408 and r.header("Connection") == "close"
        assert await client.closed()
        # a connection that sends nothing at all is closed without an answer
        silent = await h.connect()
        assert await silent.closed(timeout=5) and silent.raw == b""
    assert a.requests == []
    await a.close()


async def test_http10_without_host_is_accepted() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), CONFIG) as h:
        client = await h.connect()
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        r = await client.response()
        assert (r.status, r.body) == (200, b"a")
        assert await client.closed()  # HTTP/1.0 without keep-alive
        # Forwarded as HTTP/1.1, which must carry Host (nginx answers 400 without one): the endpoint's.
        client = await h.connect()
        await client.send(b"GET /headers HTTP/1.0\r\n\r\n")
        r = await client.response()
        head = r.body.decode()
        assert head.startswith(f"GET /headers HTTP/1.1\r\nHost: 127.0.0.1:{a.endpoint.port}\r\n"), head
        assert head.count("Host:") == 1 and "X-Forwarded-Host" not in head
    await a.close()


async def test_idle_keepalive_connection_is_closed_after_timeout() -> None:
    (a,) = await start_backends("a")
    config = ProxyConfig(keepalive_timeout=0.2, sweep_interval=0.05)
    async with Harness(make_state([a]), config) as h:
        client = await h.connect()
        assert (await client.request()).status == 200
        started = asyncio.get_running_loop().time()
        assert await client.closed(timeout=5)
        assert asyncio.get_running_loop().time() - started < 4
    await a.close()


async def test_large_pipelined_body_followed_by_a_head_is_not_a_431() -> None:
    (a,) = await start_backends("a")
    config = ProxyConfig(max_header_bytes=8192, max_uri_bytes=1024, sweep_interval=0.05)
    async with Harness(make_state([a]), config) as h:
        client = await h.connect()
        body = b"p" * 200_000
        # one write: the next request's head starts inside the same read as the end of the body
        await client.send(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                          + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = await client.responses(2)
        assert (first.status, first.body) == (200, b"200000")
        assert (second.status, second.body) == (200, b"a")
        client.close()
    await a.close()
