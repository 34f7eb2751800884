"""The common response head is taken apart two ways: `_split_common_head` (a regex, the reference, what the
plain Python build runs) and `_scan_common_head` (one loop over the bytes, what the compiled build runs).
For every head llhttp accepts they must give the same pieces, or both decline (the general path then).
"""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.proxy import http

_SPECIAL = ["Content-Length", "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
            "Transfer-Encoding", "Upgrade", "Date"]
_OTHERS = ["Server", "Content-Type", "ETag", "X-Len", "Content-Lengths", "Connections", "Dates", "Tea",
           "Upgrades", "X-Content-Length", "Trailers", "Keep-Alive-X", "Dato"]
_WS = st.sampled_from(["", " ", "  ", "\t", " \t"])


@st.composite
def _name(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(_SPECIAL + _OTHERS))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(name, flips, strict=True))


@st.composite
def _value(draw: st.DrawFn, name: str) -> str:
    lowered = name.lower()
    if lowered == "content-length":
        core = draw(st.sampled_from(["0", "2", "17", "00", "123456789012"]))
    elif lowered == "connection":
        core = draw(st.sampled_from(["keep-alive", "close", "Keep-Alive", "CLOSE", "upgrade", "x-trace",
                                     "keep-alive, x-trace", "keep-alivex"]))
    else:  # (sometimes what a framing field would carry, to catch a name mistaken for another)
        core = draw(st.sampled_from(["close", "keep-alive", "12"]) | st.text(alphabet="abcXYZ019 ,;=-/",
                                                                               max_size=12)).strip()
    return draw(_WS) + core + draw(_WS)


@st.composite
def _head(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(_name(), max_size=6))
    if draw(st.integers(0, 4)):  # mostly with a Content-Length, the shape that is not declined at once
        spelling = draw(st.sampled_from(["Content-Length", "content-length"]))
        names.insert(draw(st.integers(0, len(names))), spelling)
    lines = [draw(st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 503 "]))]
    lines += [f"{name}:{draw(_value(name))}" for name in names]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _accepted_by_llhttp(head: bytes) -> bool:
    parser = httptools.HttpResponseParser(object())
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:
        return False
    return True


def _both(data: bytes) -> tuple[tuple[bytes | None, list[bytes]], tuple[bytes | None, list[bytes]]]:
    end = data.find(b"\r\n\r\n") + 2
    results = []
    for take_apart in (http._split_common_head, http._scan_common_head):
        parts: list[bytes] = []
        length = take_apart(data, end, parts)
        if parts and parts[-1].startswith(b"\r\nDate: ") and b"\r\ndate:" not in data.lower():
            parts[-1] = b"\r\nDate: (added)"  # (the two calls may fall in different seconds)
        results.append((length, parts if length is not None else []))
    return results[0], results[1]


@settings(max_examples=600, deadline=None, derandomize=True)
@given(head=_head(), body=st.sampled_from([b"", b"ok", b"HTTP/1.1 200 OK\r\n"]))
def test_scan_and_regex_agree_on_every_head_llhttp_accepts(head: bytes, body: bytes) -> None:
    if not _accepted_by_llhttp(head):
        return
    reference, scanned = _both(head + body)
    assert scanned == reference


@pytest.mark.parametrize(("head", "length", "kept"), [
    (b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: d\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n", b"2",
     b"HTTP/1.1 200 OK\r\nServer: x\r\nDate: d"),
    (b"HTTP/1.1 200 OK\r\ncontent-length:\t17 \r\nDATE: d\r\nCONNECTION: Close\r\nX: y\r\n\r\n", b"17",
     b"HTTP/1.1 200 OK\r\nDATE: d\r\nX: y"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\nDate: d\r\n\r\n", None, b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-trace\r\nDate: d\r\n\r\n", None, b""),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: close\r\nContent-Length: 2\r\nDate: d\r\n\r\n",
     None, b""),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDate: d\r\n\r\n", None, b""),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\n", None, b""),
    (b"HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 2\r\n\r\n", None, b""),
    (b"HTTP/1.1 200 OK\r\nDate: d\r\n\r\n", None, b""),
    (b"HTTP/1.1 200 OK\r\n\r\n", None, b""),
])
def test_common_heads_lose_their_framing_lines_and_others_are_declined(
        head: bytes, length: bytes | None, kept: bytes) -> None:
    assert _accepted_by_llhttp(head)
    for take_apart in (http._split_common_head, http._scan_common_head):
        parts: list[bytes] = []
        assert take_apart(head, len(head) - 2, parts) == length
        if length is not None:
            assert b"".join(parts) == kept


def test_a_head_without_date_gets_one() -> None:
    head = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 0\r\n\r\n"
    for take_apart in (http._split_common_head, http._scan_common_head):
        parts: list[bytes] = []
        assert take_apart(head, len(head) - 2, parts) == b"0"
        assert parts[0] == b"HTTP/1.1 200 OK\r\nServer: x"
        assert parts[-1].startswith(b"\r\nDate: ") and parts[-1].endswith(b" GMT")
