"""The desired state: what every provider produces and the runtime applies.

A provider (file or Kubernetes) turns its source into one `DesiredState`: a whole, validated, immutable
configuration, never a delta (Traefik's habit). The runtime diffs it against what runs and swaps it in.

Vocabulary:
- an **Upstream** is one load balancer's port: its policy and its backend endpoints. Balancing state is
  kept per upstream key, and per endpoint id inside it, so it survives config changes.
- a **Listener** is one address:port Steelyard accepts on, with the routes of every load balancer that
  shares it (HTTP: by host and longest path prefix; TCP: exactly one route).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from steelyard.model import BalancerPolicySpec, Protocol


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem in the configuration, shown to the person as `FILE:LINE: kind/name: field: message`
    (`FILE:LINE:COLUMN:` for a YAML syntax error, which points at a character, not a field)."""

    message: str
    file: str | None = None
    line: int | None = None
    kind: str | None = None
    name: str | None = None
    field: str | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
            if self.line and self.column:
                where = f"{self.file}:{self.line}:{self.column}: "
        obj = f"{self.kind}/{self.name}: " if self.kind else ""
        fld = f"{self.field}: " if self.field else ""
        return f"{where}{obj}{fld}{self.message}"


@dataclass(frozen=True, slots=True)
class BackendEndpoint:
    """A backend as configured. `weight` 0 means draining: no new requests, in-flight ones finish.

    `terminating` endpoints (Kubernetes: serving but terminating) are used only when no other endpoint
    of the upstream is usable, as kube-proxy does (KEP-1669).
    """

    host: str
    port: int
    weight: int = 1
    name: str = ""
    terminating: bool = False

    @property
    def id(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Upstream:
    key: str  # "namespace/lbname/portname"
    load_balancer: str  # "namespace/lbname"
    port_name: str
    protocol: Protocol
    policy: BalancerPolicySpec
    policy_name: str | None  # "namespace/policyname", None for the defaults
    endpoints: tuple[BackendEndpoint, ...]


@dataclass(frozen=True, slots=True)
class Route:
    hosts: tuple[str, ...]  # lower-case, no port; empty means any host
    path_prefix: str
    upstream: str  # Upstream.key


@dataclass(frozen=True, slots=True)
class Listener:
    address: str
    port: int
    protocol: Protocol
    routes: tuple[Route, ...]  # most specific first: exact hosts before any-host, then longest prefix

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)


def _empty() -> Mapping[str, Upstream]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DesiredState:
    upstreams: Mapping[str, Upstream] = field(default_factory=_empty)
    listeners: tuple[Listener, ...] = ()
    source: str = ""  # where it came from, for the admin API: file paths or "kubernetes"
    # Problems that did not stop the rest (Kubernetes: one bad resource must not stop the others).
    errors: tuple[ConfigError, ...] = ()
