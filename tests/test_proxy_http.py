"""HTTP proxying end to end on 127.0.0.1: forwarding, keep-alive, pipelining, framing, routing, errors."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from proxy_support import Backend, Harness, make_state, start_backends


pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def test_get_is_forwarded_and_connection_kept_alive() -> None:
    (a,) = await start_backends("a")
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        for _ in range(3):
            r = await client.request("GET", "/x")
            assert r.status == 200 and r.body == b"a"
            assert r.header("X-Backend") == "a"
        assert a.requests == [("GET", "/x")] * 3
        assert a.connections == 1  # the upstream connection was pooled and reused
        client.close()
    await a.close()


async def test_round_robin_spreads_over_backends() -> None:
    backends = await start_backends("a", "b", "c")
    async with Harness(make_state(backends)) as h:
        client = await h.connect()
        names = [(await client.request()).text for _ in range(6)]
        assert names == ["a", "b", "c", "a", "b", "c"]
        client.close()
    for b in backends:
        await b.close()
