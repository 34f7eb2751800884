"""`--max-connections`: past the limit a new client connection is closed at once and counted, the open
ones keep being served, and a freed slot takes the next connection. Real sockets on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import io
import resource

import pytest
import uvloop

from proxy_support import Client, Harness, eventually, make_state, start_backends
from steelyard.admin.runtime_source import RuntimeSource
from steelyard.admin.server import AdminServer
from steelyard.model import Protocol
from steelyard.proxy import ProxyConfig
from steelyard.runtime.run_cmd import (
    FD_RESERVE,
    add_arguments,
    auto_max_connections,
    options_from,
    parse_max_connections,
    raise_fd_limit,
)
from steelyard.runtime.workers import worker_command
from test_metrics import scrape, value

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def refused(client: Client) -> bool:
    """The proxy dropped the connection without a byte: EOF or a reset, within 2 s."""
    try:
        data = await asyncio.wait_for(client.reader.read(1 << 16), 2.0)
    except ConnectionResetError:
        return True
    return data == b""


async def test_http_connection_past_the_limit_is_refused_and_a_freed_slot_serves_the_next() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), ProxyConfig(sweep_interval=0.05, max_connections=2)) as h:
        first, second = await h.connect(), await h.connect()
        assert (await first.request()).text == "a" and (await second.request()).text == "a"

        third = await h.connect()  # the kernel accepts it; the proxy closes it at once
        await third.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert await refused(third)
        assert h.proxy.stats.connections_refused == 1
        assert (await first.request()).text == "a"  # the open ones are untouched
        assert (await second.request()).text == "a"

        first.close()
        assert await eventually(lambda: len(h.proxy.http_connections) == 1)
        fourth = await h.connect()
        assert (await fourth.request()).text == "a"
        assert h.proxy.stats.connections_refused == 1
        for c in (second, third, fourth):
            c.close()
    await a.close()


async def test_tcp_connection_past_the_limit_is_refused() -> None:
    (a,) = await start_backends("a")
    state = make_state([a], protocol=Protocol.TCP)
    async with Harness(state, ProxyConfig(sweep_interval=0.05, max_connections=1)) as h:
        first = await h.connect()
        assert (await first.request()).text == "a"
        second = await h.connect()
        assert await refused(second)
        assert h.proxy.stats.connections_refused == 1 and a.connections == 1  # no upstream for it
        assert (await first.request()).text == "a"
        first.close()
        assert await eventually(lambda: not h.proxy.tcp_tunnels)
        third = await h.connect()
        assert (await third.request()).text == "a"
        second.close()
        third.close()
    await a.close()


async def test_no_limit_serves_every_connection() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), ProxyConfig(sweep_interval=0.05, max_connections=0)) as h:
        clients = [await h.connect() for _ in range(20)]
        for c in clients:
            assert (await c.request()).text == "a"
        assert h.proxy.stats.connections_refused == 0
        for c in clients:
            c.close()
    await a.close()


async def test_refusals_are_in_metrics() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a]), ProxyConfig(sweep_interval=0.05, max_connections=1)) as h:
        admin = AdminServer(RuntimeSource(h.proxy), "127.0.0.1", 0, tick=3600)
        await admin.start()
        try:
            kept = await h.connect()
            assert (await kept.request()).text == "a"
            for _ in range(3):
                extra = await h.connect()
                assert await refused(extra)
                extra.close()
            samples = await scrape(admin)
            kept.close()
        finally:
            await admin.stop()
    await a.close()
    assert value(samples, "steelyard_connections_refused_total") == 3


def run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["-c", "x.yaml", *argv])


def test_max_connections_option() -> None:
    assert options_from(run_args()).max_connections is None  # auto, sized at start
    assert options_from(run_args("--max-connections", "auto")).max_connections is None
    assert options_from(run_args("--max-connections", "0")).max_connections == 0
    assert options_from(run_args("--max-connections", "5000")).max_connections == 5000
    assert parse_max_connections(" AUTO ") is None
    for bad, why in (("-1", r"0 \(no limit\) or more"), ("many", "number of connections")):
        with pytest.raises(ValueError, match=why):
            options_from(run_args("--max-connections", bad))  # (the CLI prints it and exits 2)


def test_workers_get_the_same_limit() -> None:
    for given, passed in (("auto", "auto"), ("300", "300"), ("0", "0")):
        cmd = worker_command(options_from(run_args("--max-connections", given)), 1, 5)
        assert cmd[cmd.index("--max-connections") + 1] == passed


def test_auto_limit_leaves_two_descriptors_per_connection() -> None:
    assert auto_max_connections(1024) == (1024 - FD_RESERVE) // 2 == 480
    assert auto_max_connections(FD_RESERVE) == 1  # never 0, which would mean no limit


def test_fd_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(soft, 256)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        ceiling = lowered + 100 if hard == resource.RLIM_INFINITY else min(hard, lowered + 100)
        assert raise_fd_limit(ceiling=ceiling) == ceiling
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == ceiling
        assert raise_fd_limit(ceiling=lowered) == ceiling  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_status_shows_refusals_only_when_there_are_some() -> None:
    from rich.console import Console

    from steelyard.admin.status_cmd import render

    def header(counters: dict[str, int]) -> str:
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(render({"ready": True, "counters": counters}))
        return console.export_text()

    assert "refused connections: 4" in header({"requests": 9, "connections_refused": 4})
    assert "refused" not in header({"requests": 9, "connections_refused": 0})
