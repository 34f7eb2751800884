"""Hot reload and routing audit on real sockets: a new snapshot (or a whole `Runtime.apply`) under open
keep-alive connections, in-flight requests, listeners added, removed and switched between HTTP and TCP,
endpoints moved, and balancing state that must survive a reload.

Each test drives a running proxy on 127.0.0.1 the way a user would notice a stale decision: which backend
answers on an already-open connection, whether a port accepts, whether a connection stays open.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

from e2e_support import free_port
from proxy_support import LISTENER_PORT, Backend, Client, Harness, eventually, make_state, start_backends
from steelyard.config.desired import BackendEndpoint, DesiredState, Listener, Route, Upstream
from steelyard.model import BalancerPolicySpec, Protocol
from steelyard.proxy import ProxyConfig, ProxyServer, UpstreamRegistry
from steelyard.runtime.apply import Runtime

RouteSpec = tuple[tuple[str, ...], str, str]  # (hosts, pathPrefix, upstream key)


def _upstream(key: str, backends: Sequence[Backend | BackendEndpoint], policy: dict[str, Any] | None = None,
              protocol: Protocol = Protocol.HTTP) -> Upstream:
    endpoints = tuple(b.endpoint if isinstance(b, Backend) else b for b in backends)
    return Upstream(key=key, load_balancer=key.rsplit("/", 1)[0], port_name="http", protocol=protocol,
                    policy=BalancerPolicySpec.model_validate(policy or {}), policy_name=None,
                    endpoints=endpoints)


def _state(upstreams: Sequence[Upstream], routes: Sequence[RouteSpec], port: int = LISTENER_PORT,
           protocol: Protocol = Protocol.HTTP) -> DesiredState:
    listener = Listener(address="127.0.0.1", port=port, protocol=protocol,
                        routes=tuple(Route(hosts=h, path_prefix=p, upstream=k) for h, p, k in routes))
    return DesiredState(upstreams=MappingProxyType({u.key: u for u in upstreams}), listeners=(listener,),
                        source="test")


@asynccontextmanager
async def _runtime() -> AsyncIterator[tuple[Backend, ProxyServer, Runtime]]:
    """A backend "a" and a real Runtime (listeners bound and served by it) around a ProxyServer."""
    backend = await Backend("a").start()
    proxy = ProxyServer(ProxyConfig(sweep_interval=0.05))
    runtime = Runtime(proxy, UpstreamRegistry())
    try:
        yield backend, proxy, runtime
    finally:
        runtime.stop_accepting()
        await proxy.shutdown(1.0)
        await backend.close()


async def _connect(port: int) -> Client:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    return Client(reader, writer)


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def _close_all(*backends: Backend) -> None:
    for b in backends:
        await b.close()


A_KEY, B_KEY = "default/a/http", "default/b/http"


# -- routes on an already-open connection ---------------------------------------------------------------


async def test_an_open_connection_follows_host_and_prefix_routes_across_reloads() -> None:
    """The catch-all route is cached per connection per snapshot: every reload must be seen by the very
    next request on the same keep-alive connection (host route added, longer prefix added, a route
    removed -> 404, the catch-all back)."""
    a, b = await start_backends("a", "b")
    ua, ub = _upstream(A_KEY, [a]), _upstream(B_KEY, [b])
    catch_all = _state([ua], [((), "/", A_KEY)])
    async with Harness(catch_all) as h:
        client = await h.connect()
        assert (await client.request(path="/api/x", host="b.example")).text == "a"  # caches the catch-all
        h.apply(_state([ua, ub], [(("b.example",), "/", B_KEY), ((), "/", A_KEY)]))
        assert (await client.request(path="/api/x", host="B.Example:8080")).text == "b"
        assert (await client.request(path="/api/x", host="other")).text == "a"
        h.apply(_state([ua, ub], [((), "/api", B_KEY), ((), "/", A_KEY)]))
        assert (await client.request(path="/api/x", host="b.example")).text == "b"
        assert (await client.request(path="/apis", host="b.example")).text == "a"
        h.apply(_state([ub], [((), "/api", B_KEY)]))  # the catch-all is gone
        r = await client.request(path="/other", host="b.example")
        assert r.status == 404 and b"no route" in r.body
        assert (await client.request(path="/api", host="x")).text == "b"
        h.apply(catch_all)
        assert (await client.request(path="/api/x", host="b.example")).text == "a"
        # b's warm connection served every b answer; a's closed when its upstream left (its pool retired)
        assert (b.connections, a.connections) == (1, 2)
        client.close()
    await _close_all(a, b)


async def test_pipelined_requests_sent_before_a_reload_are_routed_by_the_new_snapshot() -> None:
    """Requests queued behind a slow one on the same connection are routed when they start, so a reload
    that lands while they wait applies to them."""
    a, b = await start_backends("a", "b")
    ua, ub = _upstream(A_KEY, [a]), _upstream(B_KEY, [b])
    async with Harness(_state([ua], [((), "/", A_KEY)])) as h:
        client = await h.connect()
        await client.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await eventually(lambda: a.requests == [("GET", "/slow")])
        h.apply(_state([ua, ub], [((), "/next", B_KEY), ((), "/", A_KEY)]))
        first, second = await client.responses(2, timeout=5)
        assert (first.text, second.text) == ("a", "b")
        client.close()
    await _close_all(a, b)


async def test_two_load_balancers_on_one_port_one_removed_then_readded() -> None:
    """Removing one load balancer of a shared port: its in-flight request finishes, its host gets a 404 on
    an open connection while the other keeps its answers; added back, it serves again (a fresh runtime)."""
    a, b = await start_backends("a", "b")
    ua, ub = _upstream(A_KEY, [a]), _upstream(B_KEY, [b])
    both = _state([ua, ub], [(("a.example",), "/", A_KEY), (("b.example",), "/", B_KEY)])
    async with Harness(both) as h:
        client, busy = await h.connect(), await h.connect()
        assert (await client.request(host="b.example")).text == "b"
        runtime_b = h.registry.get(B_KEY)
        await busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: b.example\r\n\r\n")
        assert await eventually(lambda: ("GET", "/slow") in b.requests)
        h.apply(_state([ua], [(("a.example",), "/", A_KEY)]))
        r = await client.request(host="b.example")
        assert r.status == 404 and b"no route" in r.body
        assert (await client.request(host="a.example")).text == "a"
        r = await busy.response(timeout=5)
        assert (r.status, r.text) == (200, "b")
        h.apply(both)
        assert h.registry.get(B_KEY) is not runtime_b
        assert (await client.request(host="b.example")).text == "b"
        assert (await busy.request(host="b.example")).text == "b"
        client.close()
        busy.close()
    await _close_all(a, b)


# -- endpoints -------------------------------------------------------------------------------------------


async def test_an_address_that_leaves_and_comes_back_gets_a_fresh_pool_that_pools_again() -> None:
    """web-0 moves from a's address to b's and back: the old address's warm connection closes when it
    leaves, and when it returns its connections are pooled again (not handed to the retired pool, whose
    connections are never reused)."""
    a, b = await start_backends("a", "b")
    at_a = BackendEndpoint("127.0.0.1", a.port, name="web-0")
    at_b = BackendEndpoint("127.0.0.1", b.port, name="web-0")
    async with Harness(make_state([at_a])) as h:
        client = await h.connect()
        assert (await client.request()).text == "a"
        h.apply(make_state([at_b]))
        assert await eventually(lambda: not a.writers)  # the idle pooled connection to a closed
        assert [(await client.request()).text for _ in range(2)] == ["b", "b"]
        h.apply(make_state([at_a]))
        assert await eventually(lambda: not b.writers)
        assert [(await client.request()).text for _ in range(3)] == ["a", "a", "a"]
        assert a.connections == 2  # one before the move, one after: reused for all three
        assert not h.proxy.pools[at_a.id].retired
        client.close()
    await _close_all(a, b)


async def test_a_connection_for_an_endpoint_a_reload_removed_is_not_pooled_anywhere() -> None:
    """A request or retry picked before a reload may connect to its endpoint after it. That endpoint's
    pool is gone; a new one must not appear (no later reload would retire it, and its connections would
    idle to a backend no longer configured): it gets a retired pool of its own."""
    a, b = await start_backends("a", "b")
    async with Harness(make_state([a])) as h:
        h.apply(make_state([b]))
        late = h.proxy.pool_for(a.endpoint)
        assert late.retired and a.endpoint.id not in h.proxy.pools
        current = h.proxy.pool_for(b.endpoint)
        assert not current.retired and h.proxy.pools[b.endpoint.id] is current
    await _close_all(a, b)


async def test_least_connections_counts_survive_a_reload_that_adds_an_endpoint() -> None:
    """LeastConnections: a request in flight before the reload still counts after it, so the next two
    requests go to the two idle endpoints, never to the busy one."""
    a, b, c = await start_backends("a", "b", "c")
    policy = {"strategy": {"type": "LeastConnections"}}
    async with Harness(make_state([a, b], policy=policy)) as h:
        busy = await h.connect()
        await busy.send(b"GET /slow?ms=600 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await eventually(lambda: len(a.requests) + len(b.requests) == 1)
        loaded = "a" if a.requests else "b"
        h.apply(make_state([a, b, c], policy=policy))
        others = [await h.connect() for _ in range(2)]
        for client in others:
            await client.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = sorted([(await client.response(timeout=5)).text for client in others])
        assert loaded not in got and len(set(got)) == 2, (loaded, got)
        assert (await busy.response(timeout=5)).text == loaded
        for client in (busy, *others):
            client.close()
    await _close_all(a, b, c)


async def test_weighted_round_robin_keeps_its_place_across_a_policy_only_reload() -> None:
    """A reload that changes the policy but not the strategy (a timeout) keeps the WRR schedule where it
    was: fourteen requests across the reload are two whole cycles of the 5:1:1 order."""
    a, b, c = await start_backends("a", "b", "c")
    weighted = [BackendEndpoint("127.0.0.1", a.port, weight=5, name="a"), b.endpoint, c.endpoint]
    policy: dict[str, Any] = {"strategy": {"type": "WeightedRoundRobin"}}
    async with Harness(make_state(weighted, policy=policy)) as h:
        client = await h.connect()
        cycle = [(await client.request()).text for _ in range(7)]
        assert sorted(cycle) == ["a"] * 5 + ["b", "c"]
        runtime = h.registry.get("default/web/http")
        assert runtime is not None
        strategy = runtime.strategy
        seen = [(await client.request()).text for _ in range(3)]
        h.apply(make_state(weighted, policy={**policy, "timeouts": {"connect": "1500ms"}}))
        assert runtime.connect_timeout == 1.5 and runtime.strategy is strategy
        seen += [(await client.request()).text for _ in range(11)]
        assert seen == (cycle * 2)[:14], (cycle, seen)
        client.close()
    await _close_all(a, b, c)


# -- listeners through Runtime.apply -----------------------------------------------------------------------


def _listener_state(backends: Sequence[Backend], ports: Sequence[int],
                    protocol: Protocol = Protocol.HTTP) -> DesiredState:
    base = make_state(list(backends), protocol=protocol)
    return dataclasses.replace(base, listeners=tuple(dataclasses.replace(base.listeners[0], port=p)
                                                     for p in ports))


async def test_a_removed_port_refuses_new_connections_while_its_in_flight_request_finishes() -> None:
    async with _runtime() as (backend, proxy, runtime):
        kept, removed = free_port(), free_port()
        await runtime.apply(_listener_state([backend], [kept, removed]))
        busy = await _connect(removed)
        await busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await eventually(lambda: ("GET", "/slow") in backend.requests)
        report = await runtime.apply(_listener_state([backend], [kept]))
        assert report.closed == [("127.0.0.1", removed)]
        assert await _refused(removed)
        r = await busy.response(timeout=5)
        assert (r.status, r.text) == (200, "a")
        other = await _connect(kept)
        assert (await other.request()).text == "a"
        # Added back: the same port accepts again and serves.
        await runtime.apply(_listener_state([backend], [kept, removed]))
        again = await _connect(removed)
        assert (await again.request()).text == "a"
        for client in (busy, other, again):
            client.close()


async def test_keep_alive_connections_of_a_removed_port_close_after_their_in_flight_request() -> None:
    async with _runtime() as (backend, proxy, runtime):
        kept, removed = free_port(), free_port()
        await runtime.apply(_listener_state([backend], [kept, removed]))
        busy, idle = await _connect(removed), await _connect(removed)
        assert (await idle.request()).text == "a"
        await busy.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await eventually(lambda: ("GET", "/slow") in backend.requests)
        await runtime.apply(_listener_state([backend], [kept]))
        r = await busy.response(timeout=5)
        assert (r.status, r.text, r.header("Connection")) == (200, "a", "close")
        try:
            # A pooling client must not get a 404 from a port that no longer exists on either connection:
            # the proxy closes both by itself (the idle one at once, the busy one after its response), so
            # the client reconnects (and is refused). (Nothing is sent first: a request racing the close
            # could end in a reset, which says nothing either way.)
            for client in (busy, idle):
                assert await client.closed(timeout=1) and not client.collector.responses, bytes(client.raw)
        finally:
            busy.close()
            idle.close()


async def test_a_port_switched_tcp_to_http_and_back_keeps_open_tunnels_and_serves_the_new_protocol() -> None:
    """TCP -> HTTP: the open tunnel keeps copying bytes and a new connection is proxied as HTTP (the
    backend sees X-Forwarded-For); HTTP -> TCP again: a new connection is a raw tunnel once more."""
    async with _runtime() as (backend, proxy, runtime):
        port = free_port()
        raw = b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n"
        await runtime.apply(_listener_state([backend], [port], Protocol.TCP))
        tunnel = await _connect(port)
        assert b"X-Forwarded-For" not in (await tunnel.request(path="/headers")).body
        await runtime.apply(_listener_state([backend], [port], Protocol.HTTP))
        assert runtime.bound()[("127.0.0.1", port)].protocol == Protocol.HTTP
        await tunnel.send(raw)  # the open tunnel still copies, untouched
        assert b"X-Forwarded-For" not in (await tunnel.response(timeout=5)).body
        http = await _connect(port)
        assert b"X-Forwarded-For: 127.0.0.1" in (await http.request(path="/headers")).body
        await runtime.apply(_listener_state([backend], [port], Protocol.TCP))
        again = await _connect(port)
        assert b"X-Forwarded-For" not in (await again.request(path="/headers")).body
        assert b"X-Forwarded-For" not in (await tunnel.request(path="/headers")).body
        for client in (tunnel, http, again):
            client.close()


async def test_an_http_connection_kept_across_a_switch_to_tcp_is_closed_not_answered_404() -> None:
    async with _runtime() as (backend, proxy, runtime):
        port = free_port()
        await runtime.apply(_listener_state([backend], [port], Protocol.HTTP))
        http = await _connect(port)
        assert (await http.request()).text == "a"
        await runtime.apply(_listener_state([backend], [port], Protocol.TCP))
        try:  # (idle: closed at once by the proxy, before the client sends anything more)
            assert await http.closed(timeout=1) and not http.collector.responses, bytes(http.raw)
        finally:
            http.close()
