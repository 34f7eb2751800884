"""Many clients doing odd things at once: afterwards nothing leaks (in-flight, busy pool connections,
client connections) and the event loop saw no unhandled exception."""

from __future__ import annotations

import asyncio
import random

import pytest
import uvloop

from proxy_support import Harness, make_state, start_backends
from steelyard.proxy import ProxyConfig

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


SEED = 1234

SCRIPTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3,
    b"GET /slow?ms=50 HTTP/1.1\r\nHost: x\r\n\r\nGET /chunked?n=5 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + b"b" * 300000,
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nping",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n",
    b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /status/503 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /partial HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /continue HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /bytes?n=2000000 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n",  # unfinished
]


async def test_chaos_leaves_no_leaks() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    backends = await start_backends("a", "b", "c")
    backends[2].mode = "reset"
    rng = random.Random(SEED)
    config = ProxyConfig(header_timeout=0.5, keepalive_timeout=0.5, sweep_interval=0.05)
    policy = {"timeouts": {"idle": "300ms", "request": "1s"},
              "retries": {"attempts": 2, "on": ["connect-failure", "reset", "503"]}}
    async with Harness(make_state(backends, policy=policy), config) as h:

        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            script = SCRIPTS[i % len(SCRIPTS)]
            cut = rng.random() < 0.3
            data = script[: rng.randrange(1, len(script) + 1)] if cut else script
            try:
                writer.write(data)
                await writer.drain()
                if rng.random() < 0.5:
                    await asyncio.wait_for(reader.read(rng.choice([10, 1000, 1 << 20])), 2)
                if rng.random() < 0.3:
                    writer.transport.abort()
                else:
                    writer.close()
            except (ConnectionError, TimeoutError):
                writer.transport.abort()

        for round_ in range(4):
            await asyncio.gather(*(one(round_ * 50 + i) for i in range(50)))
        # let every timeout fire and every exchange end
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not h.proxy.http_connections and all(p.busy == 0 for p in h.proxy.pools.values()):
                break
        assert not h.proxy.http_connections, [repr(c.current) for c in h.proxy.http_connections]
        assert {eid: p.busy for eid, p in h.proxy.pools.items()} == {eid: 0 for eid in h.proxy.pools}
        runtime = h.registry.get("default/web/http")
        assert runtime is not None
        assert {eid: s.in_flight for eid, s in runtime.stats.items()} == {eid: 0 for eid in runtime.stats}
        stats = h.proxy.stats
        assert stats.local_responses.get(400) and stats.tunnels and stats.retries and stats.timeouts
        # and it still serves
        client = await h.connect()
        r = await client.request()
        assert r.status == 200, r.text
        client.close()
    for b in backends:
        await b.close()
    assert errors == []
