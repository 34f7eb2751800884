"""`steelyard backend`: the demo backend answers with its name and can be told to misbehave."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import time
from collections.abc import AsyncIterator

import pytest

from e2e_support import BackendProcess, HttpClient, request_once
from steelyard.backend import Behaviour, serve


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Behaviour, int]]:
    behaviour = Behaviour(name="a")
    server = await serve(behaviour, "127.0.0.1", 0)
    try:
        yield behaviour, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_answers_with_its_name_on_one_keepalive_connection(backend: tuple[Behaviour, int]) -> None:
    behaviour, port = backend
    client = HttpClient(port)
    try:
        answers = [await client.request("GET", f"/x{i}") for i in range(3)]
    finally:
        await client.close()
    assert [(r.status, r.body, r.backend) for r in answers] == [(200, b"a\n", "a")] * 3
    assert behaviour.connections == 1 and behaviour.requests == 3


async def test_healthz_follows_the_healthy_control(backend: tuple[Behaviour, int]) -> None:
    _, port = backend
    assert (await request_once(port, path="/healthz")).status == 200
    changed = await request_once(port, "POST", "/control", json.dumps({"healthy": False}).encode())
    assert json.loads(changed.body)["healthy"] is False
    assert (await request_once(port, path="/healthz")).status == 503
    assert (await request_once(port, path="/")).status == 200  # only the health endpoint changed


async def test_control_sets_status_weight_and_failure_rate(backend: tuple[Behaviour, int]) -> None:
    behaviour, port = backend
    await request_once(port, "POST", "/control", json.dumps({"status": 500, "weight": 7}).encode())
    answer = await request_once(port)
    assert answer.status == 500 and answer.headers["steelyard-weight"] == "7"
    await request_once(port, "POST", "/control", json.dumps({"status": None, "fail_rate": 1.0}).encode())
    assert (await request_once(port)).status == 503
    assert (await request_once(port, path="/?fail_rate=0")).status == 200  # the query wins for one request
    state = json.loads((await request_once(port, path="/control")).body)
    assert state["fail_rate"] == 1.0 and state["weight"] == 7 and state["requests"] == behaviour.requests


async def test_bad_control_is_a_400_naming_the_field(backend: tuple[Behaviour, int]) -> None:
    _, port = backend
    answer = await request_once(port, "POST", "/control", json.dumps({"delay": -1}).encode())
    assert answer.status == 400 and b"delay" in answer.body
    answer = await request_once(port, "POST", "/control", json.dumps({"colour": "red"}).encode())
    assert answer.status == 400 and b"colour" in answer.body
    assert (await request_once(port, "POST", "/control", b"not json")).status == 400


async def test_delayed_answers_keep_pipelined_order(backend: tuple[Behaviour, int]) -> None:
    _, port = backend
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /first?delay=0.2 HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert time.monotonic() - started >= 0.19
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(b"a\n")
    assert data.index(b"Content-Length: 2") < data.rindex(b"Connection: close")


async def test_echo_streams_the_body_back_before_it_ends(backend: tuple[Behaviour, int]) -> None:
    _, port = backend
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    assert await asyncio.wait_for(reader.readuntil(b"hello\r\n"), 5) == b"5\r\nhello\r\n"  # before the end
    writer.write(b"0\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"0\r\n\r\n"
    writer.close()


async def test_echo_of_a_large_body_is_complete(backend: tuple[Behaviour, int]) -> None:
    _, port = backend
    body = bytes(range(256)) * 8192  # 2 MiB
    answer = await request_once(port, "POST", "/echo", body)
    assert answer.status == 200 and answer.body == body


async def test_upgrade_answers_101_with_the_accept_key_then_echoes(backend: tuple[Behaviour, int]) -> None:
    _, port = backend
    key = base64.b64encode(b"0123456789abcdef").decode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\nearly".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    expected = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert head.startswith(b"HTTP/1.1 101") and b"Sec-WebSocket-Accept: " + expected in head
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"early"
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    writer.close()


async def test_malformed_request_is_400_and_close(backend: tuple[Behaviour, int]) -> None:
    _, port = backend
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx")
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400")


def test_the_command_serves_and_exits_0_on_sigterm() -> None:
    proc = BackendProcess("cli")
    try:
        assert asyncio.run(request_once(proc.port)).body == b"cli\n"
        assert proc.control(delay=0.0)["name"] == "cli"
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stop()


def test_the_command_reports_a_port_in_use() -> None:
    first = BackendProcess("first")
    try:
        from e2e_support import Process

        second = Process(["backend", "--name", "second", "--port", str(first.port)], "second")
        assert second.wait(15) == 1
        assert "cannot listen on" in second.output() and "Traceback" not in second.output()
    finally:
        first.stop()
