"""Routing tables: which `UpstreamRuntime` serves a request (HTTP) or a connection (TCP).

`UpstreamRegistry.apply(state)` keeps one `UpstreamRuntime` per `Upstream.key` across reloads (updated in
place, so balancing and health state survive) and returns an immutable `Snapshot` that the proxy reads
by reference; swapping it is one assignment.

HTTP routing (per listener): the host must equal one of the route's `hosts` (case-insensitive, any port
stripped; empty `hosts` means any host), then the longest matching `pathPrefix` wins among routes for that
host; routes naming the host are tried before any-host routes. Prefixes match **by path segment**:
`/api` matches `/api`, `/api/` and `/api/v1` but not `/apis`; a prefix ending in `/` matches every path
below it. The query string is not part of the path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from steelyard.config.desired import DesiredState, Listener
from steelyard.model import Protocol
from steelyard.runtime.upstream import UpstreamRuntime

__all__ = ["Snapshot", "UpstreamRegistry", "normalize_host", "prefix_matches"]

# (prefix, prefix with a trailing slash or None when the prefix already ends with "/", runtime)
_PrefixEntry = tuple[str, str | None, UpstreamRuntime]


def normalize_host(host: str) -> str:
    """`Example.COM:8080` -> `example.com`; `[::1]:80` -> `[::1]`."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    colon = host.rfind(":")
    return host[:colon] if colon >= 0 else host


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix match (see module docstring)."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


class _ListenerRoutes:
    __slots__ = ("by_host", "any_host")

    def __init__(self) -> None:
        self.by_host: dict[str, list[_PrefixEntry]] = {}
        self.any_host: list[_PrefixEntry] = []


def _match(entries: list[_PrefixEntry], path: str) -> UpstreamRuntime | None:
    for prefix, with_slash, runtime in entries:
        if with_slash is None:
            if path.startswith(prefix):
                return runtime
        elif path.startswith(with_slash) or path == prefix:
            return runtime
    return None


class Snapshot:
    """Immutable view of one applied configuration; the proxy reads `proxy.snapshot` per request."""

    __slots__ = ("state", "upstreams", "_http", "_tcp", "_only", "endpoint_ids")

    def __init__(self, state: DesiredState, upstreams: Mapping[str, UpstreamRuntime]):
        self.state = state
        self.upstreams: Mapping[str, UpstreamRuntime] = MappingProxyType(dict(upstreams))
        self._http: dict[tuple[str, int], _ListenerRoutes] = {}
        self._tcp: dict[tuple[str, int], UpstreamRuntime] = {}
        self._only: dict[tuple[str, int], UpstreamRuntime] = {}
        for listener in state.listeners:
            self._add_listener(listener)
        self.endpoint_ids = frozenset(
            ep.id for up in state.upstreams.values() for ep in up.endpoints
        )

    def _add_listener(self, listener: Listener) -> None:
        if listener.protocol == Protocol.TCP:
            for route in listener.routes[:1]:
                runtime = self.upstreams.get(route.upstream)
                if runtime is not None:
                    self._tcp[listener.key] = runtime
            return
        table = _ListenerRoutes()
        for route in listener.routes:
            runtime = self.upstreams.get(route.upstream)
            if runtime is None:
                continue
            prefix = route.path_prefix or "/"
            entry: _PrefixEntry = (prefix, None if prefix.endswith("/") else prefix + "/", runtime)
            if route.hosts:
                for host in route.hosts:
                    table.by_host.setdefault(normalize_host(host), []).append(entry)
            else:
                table.any_host.append(entry)
        for entries in (*table.by_host.values(), table.any_host):
            entries.sort(key=lambda e: len(e[0]), reverse=True)  # longest prefix first; stable
        self._http[listener.key] = table
        if not table.by_host and len(table.any_host) == 1 and table.any_host[0][0] == "/":
            self._only[listener.key] = table.any_host[0][2]

    def only_route(self, listener_key: tuple[str, int]) -> UpstreamRuntime | None:
        """The upstream of a listener whose single route takes every host and path, else None."""
        return self._only.get(listener_key)

    def route_http(self, listener_key: tuple[str, int], host: str, path: str) -> UpstreamRuntime | None:
        table = self._http.get(listener_key)
        if table is None:
            return None
        if table.by_host:
            entries = table.by_host.get(normalize_host(host))
            if entries is not None:
                found = _match(entries, path)
                if found is not None:
                    return found
        return _match(table.any_host, path)

    def tcp_upstream(self, listener_key: tuple[str, int]) -> UpstreamRuntime | None:
        return self._tcp.get(listener_key)

    def listener(self, listener_key: tuple[str, int]) -> Listener | None:
        for listener in self.state.listeners:
            if listener.key == listener_key:
                return listener
        return None


EMPTY_SNAPSHOT = Snapshot(DesiredState(), {})


class UpstreamRegistry:
    """Long-lived `UpstreamRuntime`s by upstream key; `apply()` turns a `DesiredState` into a `Snapshot`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.clock = clock
        self.rng = rng
        self.runtimes: dict[str, UpstreamRuntime] = {}
        self.retired: list[UpstreamRuntime] = []  # removed by the last apply (in-flight requests finish)

    def apply(self, state: DesiredState) -> Snapshot:
        runtimes: dict[str, UpstreamRuntime] = {}
        for key, upstream in state.upstreams.items():
            runtime = self.runtimes.get(key)
            if runtime is None:
                runtime = UpstreamRuntime(upstream, clock=self.clock, rng=self.rng)
            elif runtime.upstream != upstream:
                runtime.update(upstream)
            runtimes[key] = runtime
        self.retired = [rt for key, rt in self.runtimes.items() if key not in runtimes]
        self.runtimes = runtimes
        return Snapshot(state, runtimes)

    def get(self, key: str) -> UpstreamRuntime | None:
        return self.runtimes.get(key)
