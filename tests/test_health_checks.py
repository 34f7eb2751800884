"""Active health checks on real sockets (127.0.0.1): probe results and the checker's loops."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from steelyard.config.desired import BackendEndpoint, Upstream
from steelyard.model import BalancerPolicySpec, HealthCheck, Protocol
from steelyard.runtime.health_checks import HealthChecker, LocalResourceError, probe
from steelyard.runtime.upstream import UpstreamRuntime

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


# -- transitions as the operator sees them: the runtime's log lines, once per transition ------------------

FAST = {"type": "TCP", "timeout": "300ms", "interval": "20ms", "unhealthyThreshold": 3, "healthyThreshold": 2}


def runtime_for(*endpoints: BackendEndpoint, check: dict[str, object] = FAST) -> UpstreamRuntime:
    policy = BalancerPolicySpec.model_validate({"healthCheck": check})
    return UpstreamRuntime(Upstream(key="default/web/http", load_balancer="default/web", port_name="http",
                                    protocol=Protocol.HTTP, policy=policy, policy_name=None,
                                    endpoints=tuple(endpoints)))


def checker_for(runtime: UpstreamRuntime) -> HealthChecker:
    """Wired as `steelyard run` wires it: (upstream key, endpoint id, healthy) to `on_health_check`."""
    checker = HealthChecker(lambda key, endpoint_id, healthy: runtime.on_health_check(endpoint_id, healthy))
    checker.update(runtime.key, runtime.upstream.policy, runtime.upstream.endpoints)
    return checker


def messages(caplog: pytest.LogCaptureFixture, text: str, logger: str = "steelyard.upstream") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and text in r.getMessage()]


async def test_down_and_up_against_a_real_backend_are_logged_once_each(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    a_server = await asyncio.start_server(accept, "127.0.0.1", 0)
    b_server = await asyncio.start_server(accept, "127.0.0.1", 0)
    a = BackendEndpoint("127.0.0.1", a_server.sockets[0].getsockname()[1])
    b = BackendEndpoint("127.0.0.1", b_server.sockets[0].getsockname()[1])
    runtime = runtime_for(a, b)
    checker = checker_for(runtime)
    try:
        await asyncio.sleep(0.15)  # healthy probes: no transition
        assert messages(caplog, "endpoint") == []
        b_server.close()
        await b_server.wait_closed()
        await wait_for(lambda: bool(messages(caplog, "is DOWN")))
        await asyncio.sleep(0.2)  # ten more failed probes: still one line
        assert messages(caplog, "is DOWN") == [
            f"default/web/http: endpoint {b.id} is DOWN (3 failed health checks: Connection refused); "
            "1 of 2 endpoints usable"]
        assert [r.levelname for r in caplog.records if "is DOWN" in r.getMessage()] == ["WARNING"]

        a_server.close()
        await a_server.wait_closed()
        await wait_for(lambda: bool(messages(caplog, "no usable endpoint")))
        await asyncio.sleep(0.2)
        assert messages(caplog, "no usable endpoint") == [
            "default/web/http: no usable endpoint: 2 configured, 2 failing health checks"]
        assert runtime.pick() is None

        b_server = await asyncio.start_server(accept, "127.0.0.1", b.port)  # b comes back
        await wait_for(lambda: bool(messages(caplog, "UP again")))
        await asyncio.sleep(0.2)
        assert messages(caplog, "UP again") == [
            f"default/web/http: endpoint {b.id} is UP again (2 passed health checks); "
            "1 of 2 endpoints usable"]
        assert messages(caplog, "usable endpoints again") == [
            "default/web/http: usable endpoints again (1 of 2)"]
        assert len(messages(caplog, "is DOWN")) == 2 and len(messages(caplog, "no usable endpoint")) == 1
        # the checker itself logs a flip of one endpoint's probe result, not every probe
        assert len(messages(caplog, f"{b.id}: fail", logger="steelyard.health")) == 1
    finally:
        await checker.close()
        b_server.close()


async def test_a_local_resource_error_does_not_count_against_the_endpoint(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    async with server(answering(200)) as endpoint:
        runtime = runtime_for(endpoint, check={**FAST, "unhealthyThreshold": 1})
        before = runtime.tracker.describe(runtime.clock())

        async def out_of_descriptors(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        monkeypatch.setattr(asyncio, "open_connection", out_of_descriptors)
        with pytest.raises(LocalResourceError):
            await probe(endpoint, HTTP)
        checker = checker_for(runtime)
        try:
            await wait_for(lambda: checker.skipped >= 5)
        finally:
            await checker.close()
        assert runtime.tracker.describe(runtime.clock()) == before  # healthy, no failure counted
        assert [e.id for e in runtime.tracker.usable(runtime.clock())] == [endpoint.id]
        local = messages(caplog, "local resource problem", logger="steelyard.health")
        assert len(local) == 1 and "Too many open files" in local[0]  # rate-limited: one line, many probes
        assert messages(caplog, "endpoint") == []
        assert messages(caplog, "fail", logger="steelyard.health") == []


@pytest.mark.parametrize("code", [errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL])
async def test_every_local_errno_is_the_proxys_problem(code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    async with server(answering(200)) as endpoint:
        monkeypatch.setattr(asyncio, "open_connection", failing)
        with pytest.raises(LocalResourceError):
            await probe(endpoint, HTTP)
