"""The runtime's pieces in one process: the listener plan (pure), restart backoff (pure), the file
provider (real files), and `Runtime.apply` on real sockets with the real proxy."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from e2e_support import HttpClient, free_port
from proxy_support import Backend, make_state  # also installs a tracker fallback until endpoints land
from steelyard.config.desired import DesiredState, Listener
from steelyard.model import Protocol
from steelyard.proxy import ProxyConfig, ProxyServer, UpstreamRegistry
from steelyard.runtime.apply import Runtime
from steelyard.runtime.file_provider import FileProvider, Loaded
from steelyard.runtime.plan import describe_changes, plan_listeners
from steelyard.runtime.workers import Backoff


def _listener(port: int, protocol: Protocol = Protocol.HTTP, address: str = "127.0.0.1") -> Listener:
    return Listener(address=address, port=port, protocol=protocol, routes=())


# -- plan ------------------------------------------------------------------------------------------------


def test_plan_binds_new_closes_removed_keeps_the_rest() -> None:
    a, b, c = _listener(1), _listener(2), _listener(3)
    plan = plan_listeners({a.key: a, b.key: b}, [b, c])
    assert plan.to_bind == (c,) and plan.to_close == (a.key,) and plan.to_keep == (b,)


def test_plan_rebinds_when_the_protocol_of_an_address_changes() -> None:
    http = _listener(1)
    tcp = _listener(1, Protocol.TCP)
    plan = plan_listeners({http.key: http}, [tcp])
    assert plan.to_bind == (tcp,) and plan.to_close == (http.key,) and plan.to_keep == ()


def test_plan_keeps_a_listener_whose_routes_changed() -> None:
    before = _listener(1)
    after = dataclasses.replace(before, routes=make_state([]).listeners[0].routes)
    plan = plan_listeners({before.key: before}, [after])
    assert plan.is_empty and plan.to_keep == (after,)


def test_plan_of_nothing_to_nothing_is_empty() -> None:
    assert plan_listeners({}, []).is_empty


def test_changes_are_described_for_the_reload_log() -> None:
    from steelyard.config.desired import BackendEndpoint

    a, b, c = (BackendEndpoint("127.0.0.1", p) for p in (9001, 9002, 9003))
    old = make_state([a, b], policy={"strategy": {"type": "LeastConnections"}})
    assert describe_changes(None, old) == []
    assert describe_changes(old, old) == []
    heavier = dataclasses.replace(b, weight=5)
    new = make_state([heavier, c], policy={"strategy": {"type": "Random"}})
    assert describe_changes(old, new) == [
        "default/web/http: strategy LeastConnections -> Random, +127.0.0.1:9003, -127.0.0.1:9001, "
        "127.0.0.1:9002 weight 1 -> 5"]
    retimed = make_state([a, b], policy={"strategy": {"type": "LeastConnections"},
                                         "timeouts": {"connect": "1s"}})
    assert describe_changes(old, retimed) == ["default/web/http: policy changed"]
    other = make_state([a], key="default/api/http")
    assert describe_changes(old, other) == ["+default/api/http", "-default/web/http"]


def test_backoff_doubles_to_a_cap_and_resets_after_healthy_uptime() -> None:
    backoff = Backoff(first=0.5, maximum=4.0, healthy_after=60.0)
    assert [backoff.next_delay(uptime=1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.next_delay(uptime=61.0) == 0.5


# -- file provider ----------------------------------------------------------------------------------------


class FakeLoader:
    """Reads each file's text: 'bad...' is an error, anything else a state whose source is the text."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, paths: Sequence[str]) -> Loaded:
        self.calls += 1
        texts = [Path(p).read_text() for p in paths]
        bad = [f"{p}:1: LoadBalancer/x: spec: {t.strip()}" for p, t in zip(paths, texts, strict=True)
               if t.startswith("bad")]
        if bad:
            return Loaded(None, tuple(bad))
        return Loaded(make_state([], key="ns/" + "-".join(t.strip() for t in texts) + "/http"), ())


def test_provider_sees_a_replaced_file_and_drops_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text("one")
    loader = FakeLoader()
    provider = FileProvider([str(path)], loader=loader)
    first = provider.accept(provider.load(), "start")
    assert first is not None and not provider.changed()
    replacement = tmp_path / "new"
    replacement.write_text("one")
    os.replace(replacement, path)  # same content, new inode: an editor's save
    assert provider.changed()
    assert provider.accept(provider.load(), "file changed") is None  # same configuration: dropped
    path.write_text("two")
    os.utime(path, ns=(1, 1))
    assert provider.changed()
    second = provider.accept(provider.load(), "file changed")
    assert second is not None and list(second.upstreams) == ["ns/two/http"]


def test_provider_logs_every_error_and_keeps_the_last_good(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    good, other = tmp_path / "a.yaml", tmp_path / "b.yaml"
    good.write_text("one")
    other.write_text("two")
    provider = FileProvider([str(good), str(other)], loader=FakeLoader())
    kept = provider.accept(provider.load(), "start")
    good.write_text("bad port\n")
    other.write_text("bad host\n")
    with caplog.at_level(logging.ERROR, logger="steelyard.provider"):
        assert provider.accept(provider.load(), "file changed") is None
    assert provider.current is kept
    text = caplog.text
    assert "keeping the last good one" in text and "2 error(s)" in text
    assert f"{good}:1: LoadBalancer/x: spec: bad port" in text
    assert f"{other}:1: LoadBalancer/x: spec: bad host" in text


async def test_provider_watch_applies_changes_and_sighup_rereads(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text("one")
    loader = FakeLoader()
    provider = FileProvider([str(path)], poll_interval=0.02, loader=loader)
    provider.current = provider.load().state
    applied: asyncio.Queue[DesiredState] = asyncio.Queue()

    async def apply(state: DesiredState) -> None:
        await applied.put(state)

    task = asyncio.create_task(provider.watch(apply), name="file-provider")
    try:
        path.write_text("three")
        os.utime(path, ns=(5, 5))
        state = await asyncio.wait_for(applied.get(), 10)
        assert list(state.upstreams) == ["ns/three/http"]
        calls = loader.calls
        provider.request_reload()  # SIGHUP: read although nothing changed, and drop the duplicate
        for _ in range(500):
            if loader.calls > calls:
                break
            await asyncio.sleep(0.01)
        assert loader.calls == calls + 1 and applied.empty()
    finally:
        task.cancel()


# -- Runtime.apply on real sockets -----------------------------------------------------------------------


def _state_on(backend: Backend, *ports: int, protocol: Protocol = Protocol.HTTP) -> DesiredState:
    base = make_state([backend], protocol=protocol)
    listeners = tuple(dataclasses.replace(base.listeners[0], port=p) for p in ports)
    return dataclasses.replace(base, listeners=listeners)


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_apply_binds_and_closes_only_changed_listeners_and_keeps_connections() -> None:
    backend = await Backend("a").start()
    proxy = ProxyServer(ProxyConfig(sweep_interval=0.05))
    runtime = Runtime(proxy, UpstreamRegistry())
    p1, p2 = free_port(), free_port()
    try:
        report = await runtime.apply(_state_on(backend, p1))
        assert [x.port for x in report.bound] == [p1] and not report.failed
        kept = HttpClient(p1, "example.com")
        assert (await kept.request()).backend == "a"
        server_before = runtime.listeners[("127.0.0.1", p1)][1]

        report = await runtime.apply(_state_on(backend, p1, p2))
        assert [x.port for x in report.bound] == [p2] and report.closed == []
        assert runtime.listeners[("127.0.0.1", p1)][1] is server_before  # not rebound
        assert (await request_on(p2)).backend == "a"

        report = await runtime.apply(_state_on(backend, p1))
        assert report.closed == [("127.0.0.1", p2)] and report.bound == []
        assert await _refused(p2)
        # The keep-alive connection accepted before both reloads still works.
        assert (await kept.request()).backend == "a"
        await kept.close()
    finally:
        runtime.stop_accepting()
        await proxy.shutdown(1.0)
        await backend.close()


async def test_apply_rebinds_a_listener_whose_protocol_changed() -> None:
    backend = await Backend("a").start()
    proxy = ProxyServer(ProxyConfig(sweep_interval=0.05))
    runtime = Runtime(proxy, UpstreamRegistry())
    port = free_port()
    try:
        await runtime.apply(_state_on(backend, port))
        report = await runtime.apply(_state_on(backend, port, protocol=Protocol.TCP))
        assert [x.protocol for x in report.bound] == [Protocol.TCP]
        assert runtime.bound()[("127.0.0.1", port)].protocol == Protocol.TCP
        # A TCP listener copies bytes: the backend's own answer comes back untouched.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert b"X-Backend: a" in data
    finally:
        runtime.stop_accepting()
        await proxy.shutdown(1.0)
        await backend.close()


async def test_apply_reports_a_listener_it_cannot_bind_and_serves_the_rest() -> None:
    backend = await Backend("a").start()
    proxy = ProxyServer(ProxyConfig(sweep_interval=0.05))
    runtime = Runtime(proxy, UpstreamRegistry())
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # no SO_REUSEPORT: a conflict
    taken = blocker.sockets[0].getsockname()[1]
    good = free_port()
    try:
        report = await runtime.apply(_state_on(backend, taken, good))
        assert [x.port for x in report.bound] == [good]
        assert len(report.failed) == 1 and f"127.0.0.1:{taken}" in report.failed[0][1]
        assert "could not listen" in report.summary() and "retrying" in report.summary()
        assert (await request_on(good)).backend == "a"
        assert set(runtime.unbound) == {("127.0.0.1", taken)}
        await runtime.retry_unbound()  # still taken: still waiting
        assert set(runtime.unbound) == {("127.0.0.1", taken)}
        blocker.close()
        await blocker.wait_closed()
        await runtime.retry_unbound()  # the port is free now: bound and serving, nothing left to retry
        assert not runtime.unbound and ("127.0.0.1", taken) in runtime.listeners
        assert (await request_on(taken)).backend == "a"
        await runtime.apply(_state_on(backend, good))  # a change that drops it forgets it too
        assert not runtime.unbound and ("127.0.0.1", taken) not in runtime.listeners
    finally:
        blocker.close()
        runtime.stop_accepting()
        await proxy.shutdown(1.0)
        await backend.close()


async def request_on(port: int) -> object:
    client = HttpClient(port, "example.com")
    try:
        return await client.request()
    finally:
        await client.close()
