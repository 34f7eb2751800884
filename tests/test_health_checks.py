"""Active health checks on real sockets (127.0.0.1): probe results and the checker's loops."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from steelyard.config.desired import BackendEndpoint
from steelyard.model import BalancerPolicySpec, HealthCheck
from steelyard.runtime.health_checks import HealthChecker, probe

pytestmark = pytest.mark.asyncio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                 ) -> AsyncIterator[BackendEndpoint]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield BackendEndpoint("127.0.0.1", port)
    finally:
        srv.close()


def answering(status: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        assert request.startswith(b"GET /healthz HTTP/1.1\r\n")
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)
        await writer.drain()
        writer.close()
    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)
    writer.close()


HTTP = HealthCheck.model_validate({"type": "HTTP", "path": "/healthz", "timeout": "300ms",
                                   "interval": "50ms"})
TCP = HealthCheck.model_validate({"type": "TCP", "timeout": "300ms", "interval": "50ms"})


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (204, True), (301, True), (404, False),
                                                 (503, False)])
async def test_http_probe_judges_by_status(status: int, healthy: bool) -> None:
    async with server(answering(status)) as endpoint:
        ok, why = await probe(endpoint, HTTP)
    assert ok is healthy and why == f"HTTP {status}"


async def test_probe_of_a_closed_port_fails_at_once() -> None:
    endpoint = BackendEndpoint("127.0.0.1", free_port())
    for check in (HTTP, TCP):
        ok, why = await probe(endpoint, check)
        assert not ok and "refused" in why.lower()


async def test_a_backend_that_never_answers_fails_within_the_timeout() -> None:
    async with server(silent) as endpoint:
        loop = asyncio.get_running_loop()
        started = loop.time()
        ok, why = await probe(endpoint, HTTP)
        assert not ok and "no answer within 0.3s" in why
        assert loop.time() - started < 1.0
        assert (await probe(endpoint, TCP))[0]  # it does accept connections


async def test_garbage_is_not_healthy() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        writer.close()
    async with server(handle) as endpoint:
        ok, why = await probe(endpoint, HTTP)
    assert not ok and "not an HTTP response" in why


async def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_checker_follows_the_configuration() -> None:
    results: list[tuple[str, str, bool]] = []
    checker = HealthChecker(lambda *r: results.append(r))
    policy = BalancerPolicySpec.model_validate({"healthCheck": HTTP.model_dump(by_alias=True)})
    async with server(answering(200)) as up, server(answering(500)) as down:
        checker.update("ns/lb/http", policy, [up, down])
        await wait_for(lambda: {(r[1], r[2]) for r in results} >= {(up.id, True), (down.id, False)})
        assert all(r[0] == "ns/lb/http" for r in results)
        tasks = dict(checker._loops)
        checker.update("ns/lb/http", policy, [up])  # down removed; up's loop is left alone
        assert checker.checked() == [("ns/lb/http", up.id)]
        assert checker._loops[("ns/lb/http", up.id)][1] is tasks[("ns/lb/http", up.id)][1]
        checker.update("ns/lb/http", BalancerPolicySpec(), [up])  # healthCheck type None: no probes
        assert checker.checked() == []
        results.clear()
        await asyncio.sleep(0.15)
        assert results == []
        checker.update("ns/lb/http", policy, [up])
        await wait_for(lambda: bool(results))
        await checker.close()
        assert checker.checked() == []
