"""`ProxyServer`: one per process; holds the current routing snapshot, the upstream pools and the live
connections, and runs the one periodic sweep that enforces every timeout.

No timer is armed and no deadline stamped per request: the sweep (every `sweep_interval`) notes what each
connection is waiting for and since which tick, and acts on a wait it sees again past its limit (see
`HttpProxyProtocol.check_timeouts`). Timeouts are therefore exact to within one sweep interval, which is
plenty for seconds-long limits and costs the request path nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steelyard.config.desired import BackendEndpoint, Listener
from steelyard.model import Protocol
from steelyard.proxy.pool import EndpointPool
from steelyard.proxy.routing import EMPTY_SNAPSHOT, Snapshot
from steelyard.proxy.tcp import TcpProxyProtocol, TcpTunnel
from steelyard.runtime.access_log import AccessLog

if TYPE_CHECKING:  # (imported where used: compiled, steelyard.proxy.http imports this module's types)
    from steelyard.proxy.http import HttpProxyProtocol, HttpRequest, UpstreamConnection

__all__ = ["ProxyConfig", "ProxyServer", "ProxyStats", "Writer"]

log = logging.getLogger("steelyard.proxy")


class Writer:
    """A connection whose output can wait for the end of the loop's pass (`ProxyServer.flush_later`).

    The client and upstream connections derive from it so that, compiled, `_flush_unflushed` calls their
    `flush()` as a C call instead of a method looked up by name (two per request).
    """

    __slots__ = ()

    def flush(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Limits and timeouts that are not per load balancer (per-upstream ones come from its policy)."""

    header_timeout: float = 10.0  # first byte to end of the request head, else 408
    keepalive_timeout: float = 60.0  # an idle client connection is closed after this
    max_header_bytes: int = 64 * 1024  # request header section, else 431
    max_headers: int = 100  # request header fields, else 431
    max_uri_bytes: int = 8 * 1024  # request target, else 414
    max_body_bytes: int | None = None  # request body, else 413 (None: no limit)
    pool_max_idle: int = 64  # idle upstream connections kept per endpoint
    pool_idle_timeout: float = 4.0  # below the 5 s keep-alive of Node.js and uvicorn backends, so
    # the proxy closes an idle connection before the backend does (a request racing the backend's close
    # would fail with nothing received)
    sweep_interval: float = 0.5  # timeout resolution
    max_connections: int = 0  # open client connections (HTTP and TCP together) past which a new one is
    # closed at once (Envoy's listener limit; HAProxy's maxconn leaves it in the backlog); 0: no limit


class ProxyStats:
    """Counters for the admin API: plain attributes, updated with one increment each."""

    __slots__ = ("requests", "responses_by_class", "local_responses", "retries", "timeouts", "tunnels",
                 "http_connections_total", "tcp_connections_total", "upstream_connect_failures",
                 "connections_refused")

    def __init__(self) -> None:
        self.requests = 0
        self.responses_by_class = [0, 0, 0, 0, 0, 0]  # index = status // 100
        self.local_responses: dict[int, int] = {}  # status -> count, for answers Steelyard wrote itself
        self.retries = 0
        self.timeouts = 0
        self.tunnels = 0
        self.http_connections_total = 0
        self.tcp_connections_total = 0
        self.upstream_connect_failures = 0
        self.connections_refused = 0  # closed at accept: max_connections reached


class ProxyServer:
    """The data plane of one process.

    The runtime sets `snapshot` (from `UpstreamRegistry.apply`) and binds each listener with
    `loop.create_server(proxy.protocol_factory(listener), host, port)`; `shutdown()` drains.
    """

    def __init__(self, config: ProxyConfig | None = None, snapshot: Snapshot = EMPTY_SNAPSHOT):
        self.config = config or ProxyConfig()
        self._snapshot = snapshot
        self.pools: dict[str, EndpointPool] = {}
        self.http_connections: set[HttpProxyProtocol] = set()
        self.tcp_tunnels: set[TcpTunnel] = set()
        self.stats = ProxyStats()
        self.access_log: AccessLog | None = None  # `steelyard run --access-log RATE`; None: off
        self.closing = False
        self.now = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._unflushed: list[HttpProxyProtocol | UpstreamConnection] = []
        self._refusals_logged_at = float("-inf")

    # -- configuration -----------------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @snapshot.setter
    def snapshot(self, snapshot: Snapshot) -> None:
        """Swap the routing snapshot; pools of endpoints no longer configured are retired."""
        self._snapshot = snapshot
        keep = snapshot.endpoint_ids
        for endpoint_id in [e for e in self.pools if e not in keep]:
            self.pools.pop(endpoint_id).retire()

    def protocol_factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]:
        """The factory for `loop.create_server`: HTTP or TCP by `listener.protocol`."""
        self.ensure_sweep()
        key = listener.key
        # (asyncio.Protocols by their methods: the compiled classes cannot derive from it)
        if listener.protocol == Protocol.TCP:
            return lambda: TcpProxyProtocol(self, key)  # type: ignore[return-value]
        from steelyard.proxy.http import HttpProxyProtocol

        return lambda: HttpProxyProtocol(self, key)  # type: ignore[return-value]

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a connection just accepted may stay. At `config.max_connections` open client connections
        it is aborted at once and counted, so a flood cannot take the file descriptors (and memory) that
        the open connections' upstream connects need; a warning says so at most every 10 s."""
        limit = self.config.max_connections
        if not limit or len(self.http_connections) + len(self.tcp_tunnels) < limit:
            return True
        self.stats.connections_refused += 1
        transport.abort()
        now = time.monotonic()
        if now >= self._refusals_logged_at + 10.0:
            self._refusals_logged_at = now
            log.warning("refusing new connections: %d open, the limit (--max-connections); %d refused so "
                        "far", limit, self.stats.connections_refused)
        return False

    # -- upstream connections -----------------------------------------------------------------------------

    def pool_for(self, endpoint: BackendEndpoint) -> EndpointPool:
        """The endpoint's pool, made on first use. An endpoint a reload removed (a request or retry picked
        before it) gets a retired pool of its own, kept nowhere: its connection closes after the exchange
        instead of idling in a pool no later reload would retire."""
        pool = self.pools.get(endpoint.id)
        if pool is None:
            pool = EndpointPool(endpoint.id, endpoint.host, endpoint.port, self.config.pool_max_idle)
            if endpoint.id in self._snapshot.endpoint_ids:
                self.pools[endpoint.id] = pool
            else:
                pool.retire()
        return pool

    def open_upstream(self, pool: EndpointPool, timeout: float, req: HttpRequest,
                      client: HttpProxyProtocol) -> None:
        """Connect a new upstream connection for `req`; `client.connected()` gets the outcome."""
        self.spawn(self._connect(pool, timeout, req, client), "upstream-connect")

    async def _connect(self, pool: EndpointPool, timeout: float, req: HttpRequest,
                       client: HttpProxyProtocol) -> None:
        from steelyard.proxy.http import UpstreamConnection

        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self, pool), pool.host, pool.port),  # type: ignore[type-var]
                timeout
            )
        except TimeoutError:
            self.stats.upstream_connect_failures += 1
            client.connected(req, None, "timeout", True)
            return
        except OSError as exc:
            self.stats.upstream_connect_failures += 1
            client.connected(req, None, exc.strerror or str(exc), False)
            return
        pool.opened()
        client.connected(req, conn, None, False)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A named, guarded background task: an exception is logged, never lost."""
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # -- output ---------------------------------------------------------------------------------------------

    def flush_later(self, writer: Writer) -> None:
        """Write `writer`'s output at the end of this pass of the event loop, with every other connection's.

        Why: a write over loopback wakes its reader (wrk, a backend) when that sleeps, and waking a task on
        the other core is among the dearest things a proxy does on this machine. The loop hands over the
        reads of many sockets in one pass; answering each as soon as it is ready wakes a peer that has gone
        back to sleep before the next answer, where writing them together after the pass wakes it once.
        Measured: fewer CPU-µs per request and more req/s (docs/benchmarks.md). Order on a connection holds:
        the output waits in the connection's own buffer, and any earlier `flush()` writes it in turn.
        Without a loop (tests driving the protocols by hand) it writes at once.
        """
        unflushed = self._unflushed
        if not unflushed:
            loop = self._loop
            if loop is None:
                writer.flush()
                return
            loop.call_soon(self._flush_unflushed)
        unflushed.append(writer)

    def _flush_unflushed(self) -> None:
        writers = self._unflushed
        self._unflushed = []
        for writer in writers:
            try:
                writer.flush()  # (a closed connection has nothing left to write, or skips it)
            except Exception:  # one connection's failure must not keep the others' answers
                log.exception("flushing a connection failed")

    # -- timeouts -------------------------------------------------------------------------------------------

    def ensure_sweep(self) -> None:
        """Start the timeout sweep on the running loop (idempotent; without a running loop, the first
        accepted connection starts it)."""
        if self._sweep is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self.now = self._loop.time()
            self._sweep = self._loop.call_later(self.config.sweep_interval, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        self.now = now = loop.time()
        try:
            for conn in list(self.http_connections):
                conn.check_timeouts(now)
            for tunnel in list(self.tcp_tunnels):
                tunnel.check_timeouts(now)
            older_than = now - self.config.pool_idle_timeout
            for pool in self.pools.values():
                if pool.idle:
                    pool.expire(older_than)
        except Exception:  # the sweep must survive any one connection's bug
            log.exception("timeout sweep failed")
        self._sweep = loop.call_later(self.config.sweep_interval, self._tick)

    # -- shutdown ---------------------------------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(1 for c in self.http_connections if c.current is not None) + len(self.tcp_tunnels)

    def retire_listener(self, key: tuple[str, int]) -> None:
        """A listener a reload removed (or switched to TCP): its HTTP client connections finish their
        current exchange with `Connection: close` and close, idle ones at once; left open, every later
        request on them would be a 404 (their listener has no routes any more)."""
        for conn in list(self.http_connections):
            if conn.listener_key == key:
                conn.begin_shutdown()

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop taking requests, let in-flight ones finish for up to `drain_timeout`, then abort the rest.

        Idle keep-alive connections close now; busy ones answer their current request with
        `Connection: close` and close. TCP tunnels get the drain time to end on their own.
        """
        self.closing = True
        for conn in list(self.http_connections):
            conn.begin_shutdown()
        for pool in self.pools.values():
            pool.close_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while (self.http_connections or self.tcp_tunnels) and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        for conn in list(self.http_connections):
            if conn.transport is not None:
                conn.transport.abort()
        for tunnel in list(self.tcp_tunnels):
            tunnel.close(abort=True)
        for pool in self.pools.values():
            pool.close_idle()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for task in list(self._tasks):
            task.cancel()

    def describe(self) -> dict[str, object]:
        """Counters and gauges for the admin API."""
        s = self.stats
        return {
            "requests": s.requests,
            "responses": {f"{i}xx": n for i, n in enumerate(s.responses_by_class) if i},
            "local_responses": dict(s.local_responses),
            "retries": s.retries,
            "timeouts": s.timeouts,
            "tunnels": s.tunnels,
            "in_flight": self.in_flight(),
            "http_connections": len(self.http_connections),
            "idle_http_connections": sum(1 for c in self.http_connections if c.is_idle()),
            "tcp_connections": len(self.tcp_tunnels),
            "pools": {eid: pool.describe() for eid, pool in self.pools.items()},
            "upstreams": {key: rt.describe() for key, rt in self._snapshot.upstreams.items()},
        }
