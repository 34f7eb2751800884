"""Applying a desired state to a running process: plan, then I/O, then swap.

`Runtime.apply(state)`:
1. plan the listeners (`plan_listeners`, pure) and open the new sockets (synchronous bind: a failure is
   known before anything changes; new sockets queue connections in their backlog until served);
2. `registry.apply(state)` updates the long-lived `UpstreamRuntime`s (state kept for endpoints that stay)
   and the proxy's snapshot is swapped by reference;
3. the new sockets start accepting; removed (or protocol-changed) listeners stop accepting. Connections
   already accepted keep their in-flight requests; those of a removed listener (or HTTP ones of a port
   now TCP) then close (`ProxyServer.retire_listener`) instead of answering 404 for lack of routes;
4. the health checker follows the new endpoints.

A listener that cannot be bound (its port taken by another process) does not stop the rest of a change:
it is reported, kept in `unbound`, and bound as soon as the port is free (`retry_unbound`, every
BIND_RETRY_INTERVAL from the refresh task). Readiness does not wait for it: one port that another process
holds must not take every replica's other ports out of service.

A periodic task (`refresh-upstreams`) re-reads endpoint usability when time alone changes it (slow-start
steps, ejection expiry: `tracker.next_change_at`), so the strategy sees it even without traffic.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from steelyard.config.desired import DesiredState, Listener
from steelyard.model import Protocol as ListenerProtocol
from steelyard.runtime.listeners import BACKLOG, ListenerBindError, open_socket, serve_socket
from steelyard.runtime.plan import ListenerKey, ListenerPlan, describe_changes, plan_listeners

__all__ = ["ApplyReport", "HealthCheckerLike", "Runtime"]

log = logging.getLogger("steelyard.runtime")

REFRESH_INTERVAL = 0.25
BIND_RETRY_INTERVAL = 2.0


class _Registry(Protocol):
    runtimes: Any

    def apply(self, state: DesiredState) -> Any: ...


class _Proxy(Protocol):
    snapshot: Any

    def protocol_factory(self, listener: Listener) -> Callable[[], asyncio.Protocol]: ...

    def retire_listener(self, key: ListenerKey) -> None: ...


class HealthCheckerLike(Protocol):
    def update(self, upstream_key: str, policy: Any, endpoints: Any) -> None: ...

    def close(self) -> Any: ...


@dataclass
class ApplyReport:
    """What one apply did, for the log line and the admin API."""

    bound: list[Listener] = field(default_factory=list)
    closed: list[ListenerKey] = field(default_factory=list)
    failed: list[tuple[Listener, str]] = field(default_factory=list)
    upstreams: int = 0
    endpoints: int = 0
    changes: list[str] = field(default_factory=list)  # plan.describe_changes: what the change did

    def summary(self) -> str:
        parts = [f"{self.upstreams} upstream(s), {self.endpoints} endpoint(s)"]
        if self.changes:
            parts.append("changed " + "; ".join(self.changes))
        if self.bound:
            parts.append("listening on " + ", ".join(_describe(x) for x in self.bound))
        if self.closed:
            parts.append("closed " + ", ".join(f"{a}:{p}" for a, p in self.closed))
        if self.failed:
            parts.append("could not listen: " + "; ".join(reason for _, reason in self.failed)
                         + f" (retrying every {BIND_RETRY_INTERVAL:g}s)")
        return "; ".join(parts)


def _describe(listener: Listener) -> str:
    scheme = "http" if listener.protocol.value == "HTTP" else "tcp"
    return f"{scheme}://{listener.address}:{listener.port}"


class Runtime:
    """The process's data plane state: bound listeners, the registry, the proxy and the health checks."""

    def __init__(self, proxy: _Proxy, registry: _Registry, *, health: HealthCheckerLike | None = None,
                 backlog: int = BACKLOG, clock: Callable[[], float] = time.monotonic) -> None:
        self.proxy = proxy
        self.registry = registry
        self.health = health
        self.backlog = backlog
        self.clock = clock
        self.state: DesiredState | None = None
        self.stopping = False  # SIGTERM arrived: not ready, listeners still open (--shutdown-delay)
        self.listeners: dict[ListenerKey, tuple[Listener, asyncio.AbstractServer]] = {}
        self.unbound: dict[ListenerKey, tuple[Listener, str]] = {}  # wanted, but the bind failed (retried)
        self.after_apply: list[Callable[[DesiredState, ApplyReport], None]] = []  # admin API hooks
        self._health_policies: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    def bound(self) -> dict[ListenerKey, Listener]:
        return {key: listener for key, (listener, _) in self.listeners.items()}

    async def apply(self, state: DesiredState) -> ApplyReport:
        async with self._lock:  # a SIGHUP during an apply waits for it
            return await self._apply(state)

    async def _apply(self, state: DesiredState) -> ApplyReport:
        report = ApplyReport()
        plan: ListenerPlan = plan_listeners(self.bound(), state.listeners)
        opened: list[tuple[Listener, socket.socket]] = []
        for listener in plan.to_bind:
            try:
                opened.append((listener, open_socket(listener, self.backlog)))
            except ListenerBindError as exc:
                report.failed.append((listener, str(exc)))

        try:
            snapshot = self.registry.apply(state)
        except BaseException:
            for _, sock in opened:  # nothing changed: give the new sockets back
                sock.close()
            raise
        self.proxy.snapshot = snapshot
        report.changes = describe_changes(self.state, state)
        self.state = state
        report.upstreams = len(state.upstreams)
        report.endpoints = sum(len(u.endpoints) for u in state.upstreams.values())

        for listener, sock in opened:
            await self._serve(listener, sock)
            report.bound.append(listener)
        rebinding = {listener.key for listener in plan.to_bind}
        for key in plan.to_close:
            if key in rebinding:  # handled above: closed once its replacement accepts (or kept if it failed)
                continue
            entry = self.listeners.pop(key, None)
            if entry is not None:
                entry[1].close()
                self.proxy.retire_listener(key)  # (its open connections: close, not 404 forever)
                report.closed.append(key)
        for listener in plan.to_keep:
            server = self.listeners[listener.key][1]
            self.listeners[listener.key] = (listener, server)  # routes may have changed
        wanted = {listener.key for listener in state.listeners}
        self.unbound = {key: entry for key, entry in self.unbound.items()
                        if key in wanted and key not in self.listeners}
        for listener, reason in report.failed:
            self.unbound[listener.key] = (listener, reason)
        self._update_health(state)
        for hook in self.after_apply:
            try:
                hook(state, report)
            except Exception:
                log.exception("after-apply hook failed")
        return report

    async def _serve(self, listener: Listener, sock: socket.socket) -> None:
        """Start accepting on a newly bound socket; a listener it replaces (protocol changed) closes after."""
        old = self.listeners.get(listener.key)
        server = await serve_socket(sock, self.proxy.protocol_factory(listener), self.backlog)
        if old is not None:  # the new socket accepts before the old one closes
            old[1].close()
            if old[0].protocol == ListenerProtocol.HTTP and listener.protocol != ListenerProtocol.HTTP:
                self.proxy.retire_listener(listener.key)  # (HTTP connections of a port now TCP)
        self.listeners[listener.key] = (listener, server)

    def _update_health(self, state: DesiredState) -> None:
        """Start checks for new endpoints and stop those of removed ones (an empty endpoint list)."""
        if self.health is None:
            return
        for key, upstream in state.upstreams.items():
            self.health.update(key, upstream.policy, upstream.endpoints)
        for key, policy in self._health_policies.items():
            if key not in state.upstreams:
                self.health.update(key, policy, ())
        self._health_policies = {key: u.policy for key, u in state.upstreams.items()}

    def refresh_due(self) -> int:
        """Refresh every upstream whose usable set may have changed with time; returns how many."""
        now = self.clock()
        refreshed = 0
        for runtime in list(self.registry.runtimes.values()):
            due = runtime.tracker.next_change_at(now)
            if due is not None and due <= now:
                runtime.refresh()
                refreshed += 1
        return refreshed

    async def retry_unbound(self) -> None:
        """Try again to bind the listeners a change could not bind; serve those that now can."""
        async with self._lock:
            for key, (listener, _) in list(self.unbound.items()):
                try:
                    sock = open_socket(listener, self.backlog)
                except ListenerBindError as exc:
                    self.unbound[key] = (listener, str(exc))
                    continue
                await self._serve(listener, sock)
                del self.unbound[key]
                log.info("now listening on %s (the port was taken when the configuration asked for it)",
                         _describe(listener))

    async def refresh_forever(self, interval: float = REFRESH_INTERVAL) -> None:
        """The `refresh-upstreams` task; also retries the binds that failed (BIND_RETRY_INTERVAL)."""
        next_bind_retry = 0.0
        while True:
            await asyncio.sleep(interval)
            try:
                self.refresh_due()
                if self.unbound and not self.stopping and self.clock() >= next_bind_retry:
                    next_bind_retry = self.clock() + BIND_RETRY_INTERVAL
                    await self.retry_unbound()
            except Exception:  # one upstream's bug must not stop the others' refreshes
                log.exception("refreshing upstreams failed")

    def stop_accepting(self) -> None:
        """SIGTERM, step one: close every listening socket; accepted connections carry on."""
        for _, server in self.listeners.values():
            server.close()
        self.listeners.clear()
        self.unbound.clear()

    async def close_health(self) -> None:
        if self.health is not None:
            result = self.health.close()
            if asyncio.iscoroutine(result):
                await result
