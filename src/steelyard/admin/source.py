"""The narrow interface between the admin server and the running proxy: read its state, steer endpoints.

The admin server, the metrics collector, the dashboard and `steelyard status` know only `AdminSource`
and the plain values below, never the proxy's objects. `runtime_source.RuntimeSource` adapts the real
runtime; tests use a small fake. Every read builds fresh values, so the admin never holds references
into state the proxy mutates, and the proxy's hot path only ever increments plain ints.

Identities: an *upstream* is one load balancer port (`namespace/name/port`), an *endpoint* is
`host:port` inside it. Operations take the upstream key; `resolve_upstreams` maps what a person types
(`namespace/name`, `name`, or the full key) to keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "AdminSource", "ConfigView", "EndpointView", "ProcessCounters", "ReloadRecord", "UpstreamView",
    "resolve_upstreams",
]


@dataclass(frozen=True, slots=True)
class EndpointView:
    id: str  # host:port
    name: str
    health: str  # healthy | unhealthy | ejected | draining | terminating | slow-start | ...
    healthy: bool  # receives new requests (usable)
    configured_weight: int
    effective_weight: float  # after slow start, dynamic weights, overrides; 0 when not usable
    override_weight: int | None = None  # set through the admin API, None when not overridden
    drained: bool = False  # drained through the admin API
    in_flight: int = 0
    requests: int = 0  # picks since start (counter)
    failures: int = 0
    responses: Mapping[str, int] = field(default_factory=dict)  # "2xx" -> count; "none": no status
    ejections: int = 0  # times ejected by outlier detection (counter)
    # Latency histogram: counts per LATENCY_BUCKETS bucket (+Inf last, not cumulative) and their sum.
    latency_counts: tuple[int, ...] | None = None
    latency_sum: float = 0.0
    detail: Mapping[str, object] = field(default_factory=dict)  # the tracker's own row, shown as is


@dataclass(frozen=True, slots=True)
class UpstreamView:
    key: str  # namespace/name/port
    load_balancer: str  # namespace/name
    port_name: str
    protocol: str  # HTTP | TCP
    strategy: str
    policy_name: str | None
    policy: Mapping[str, object]  # the policy in effect, as YAML/JSON names
    listeners: tuple[str, ...]  # "127.0.0.1:8080 HTTP hosts=a.com path=/"
    endpoints: tuple[EndpointView, ...]
    requests: int = 0
    no_endpoint: int = 0  # requests answered 503 because no endpoint was usable
    retries: int = 0  # requests (TCP: connects) sent again to another endpoint or on a fresh connection
    timeouts: int = 0  # requests, websockets and TCP connections ended by a timeout
    strategy_state: Mapping[str, object] = field(default_factory=dict)  # strategy.describe()


class SourceUnavailable(Exception):
    """An operation could not reach what it acts on (`--workers`: a worker not answering): 503."""


@dataclass(frozen=True, slots=True)
class ProcessCounters:
    """Process-wide counters and gauges (not per load balancer)."""

    requests: int = 0
    responses: Mapping[str, int] = field(default_factory=dict)  # by class, including local answers
    downstream_active: int = 0  # client connections with a request in progress
    downstream_idle: int = 0  # keep-alive client connections waiting
    upstream_active: int = 0
    upstream_idle: int = 0  # pooled
    upstream_connect_errors: int = 0
    connections_refused: int = 0  # closed at accept: --max-connections reached
    retries: int = 0
    timeouts: int = 0
    tcp_connections: int = 0
    reloads_ok: int = 0  # counters: the reload history itself is bounded
    reloads_failed: int = 0
    last_reload_at: float = 0.0  # Unix time of the last configuration applied, 0 before the first


@dataclass(frozen=True, slots=True)
class ReloadRecord:
    at: float  # wall-clock time (Unix seconds)
    ok: bool
    source: str
    message: str = ""
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigView:
    source: str  # file paths or "kubernetes"; "" before the first configuration
    loaded: bool
    document: object = None  # the configuration in effect, JSON-able
    errors: tuple[str, ...] = ()  # problems that did not stop the rest


class AdminSource(Protocol):
    """What the admin server needs from a running Steelyard. All calls run on the proxy's loop."""

    def upstreams(self) -> Sequence[UpstreamView]: ...

    def counters(self) -> ProcessCounters: ...

    def config(self) -> ConfigView: ...

    def reloads(self) -> Sequence[ReloadRecord]: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): false before the first configuration is applied and while draining."""
        ...

    # The three calls below may also be coroutines (the --workers aggregate forwards them to workers).

    def set_weight(self, upstream: str, endpoint: str, weight: int | None) -> Awaitable[None] | None:
        """Override the endpoint's weight (None: back to the configured one). LookupError if unknown."""
        ...

    def set_drained(self, upstream: str, endpoint: str, drained: bool) -> Awaitable[None] | None: ...

    def explain(self, upstream: str, client_ip: str | None,
                hash_key: str | None) -> dict[str, object] | Awaitable[dict[str, object]]:
        """Why the next pick would choose which endpoint, without changing any real balancing state."""
        ...


def resolve_upstreams(upstreams: Sequence[UpstreamView], name: str) -> list[UpstreamView]:
    """`ns/lb/port` (one upstream), `ns/lb` (all its ports) or `lb` when only one namespace has it."""
    exact = [u for u in upstreams if u.key == name]
    if exact:
        return exact
    by_lb = [u for u in upstreams if u.load_balancer == name]
    if by_lb:
        return by_lb
    return [u for u in upstreams if u.load_balancer.split("/", 1)[-1] == name
            and len({v.load_balancer for v in upstreams if v.load_balancer.split("/", 1)[-1] == name}) == 1]
