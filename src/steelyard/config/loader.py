"""Loading resources from YAML and turning them into one `DesiredState`, with every error at once.

Two steps, both pure:
1. `parse_documents`: each YAML document is validated against the pydantic models; pydantic's errors
   are rewritten for a person and placed on the line of the offending field.
2. `build_state`: cross-object checks (references, duplicates, listener conflicts, static endpoints)
   and the assembly of listeners, routes and upstreams.

The file provider rejects a whole change on any error; the Kubernetes provider passes `partial=True`
so one broken load balancer is dropped and reported while the others keep serving.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError

from steelyard.config.desired import BackendEndpoint, ConfigError, DesiredState, Listener, Route, Upstream
from steelyard.config.yaml_source import SourceDocument, read_documents
from steelyard.model import (
    API_VERSION,
    HASH_STRATEGIES,
    KINDS,
    BalancerPolicy,
    BalancerPolicySpec,
    HealthCheck,
    HealthCheckType,
    LoadBalancer,
    Protocol,
    Strategy,
    StrategyType,
)
from steelyard.model.addresses import split_address

__all__ = ["LoadResult", "build_state", "default_config_path", "endpoint_problems", "load_files",
           "load_texts", "parse_documents", "split_address"]

AnyResource = LoadBalancer | BalancerPolicy


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A state (None when errors stop it; in partial mode a state that may carry errors) and errors."""

    state: DesiredState | None
    errors: tuple[ConfigError, ...] = ()
    resources: tuple[AnyResource, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors


def default_config_path() -> Path:
    """The embedded default configuration, the one `make demo` runs."""
    return Path(str(importlib_resources.files("steelyard") / "defaults" / "default.yaml"))


# --- step 1: documents -> resources --------------------------------------------------------------------

def _loc_to_path(loc: tuple[int | str, ...], data: Any) -> str:
    """`('spec', 'ports', 0, 'port')` -> `spec.ports[0].port`, skipping pydantic's union-member tags."""
    path = ""
    current: Any = data
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            current = current[part] if isinstance(current, list) and part < len(current) else None
        elif isinstance(current, dict) or current is None and not path:
            path = f"{path}.{part}" if path else part
            current = current.get(part) if isinstance(current, dict) else None
        else:
            continue  # a tag such as 'int' or 'str' naming the member of a union, not a field
    return path


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _expected_list(ctx: Mapping[str, Any]) -> str:
    return str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")


def _message(err: Mapping[str, Any]) -> str:
    """pydantic's wording, rewritten where a person would not know what to do."""
    kind = err["type"]
    ctx: Mapping[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind in ("enum", "literal_error"):
        return f"{_shown(value)} is not one of {_expected_list(ctx)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{_shown(value)} is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{_shown(value)} is not a number"
    if kind in ("string_type",):
        return f"{_shown(value)} is not a string"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{_shown(value)} is not a mapping (expected key: value fields)"
    if kind in ("tuple_type", "list_type"):
        return f"{_shown(value)} is not a list"
    if kind == "greater_than_equal":
        return f"{_shown(value)} is too small: must be at least {ctx.get('ge')}"
    if kind == "greater_than":
        return f"{_shown(value)} is too small: must be greater than {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"{_shown(value)} is too large: must be at most {ctx.get('le')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"is too long: at most {ctx.get('max_length')}"
    msg = str(err.get("msg", "is invalid"))
    return msg.removeprefix("Value error, ")


def field_problems(exc: ValidationError, data: Any) -> dict[str, str]:
    """Field path (`spec.ports[0].port`, '' for the object) -> what is wrong with it, worded for a person:
    file mode's errors and the Kubernetes status messages both."""
    merged: dict[str, list[str]] = {}
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        if err["type"] == "too_short" and isinstance(err.get("input"), list | tuple) \
                and len(err["input"]) >= int(ctx.get("min_length", 0)):
            continue  # pydantic's echo of a failed item: the list itself was long enough
        path = _loc_to_path(tuple(err["loc"]), data)
        message = _message(err)
        if message not in merged.setdefault(path, []):
            merged[path].append(message)
    out: dict[str, str] = {}
    for path, messages in merged.items():
        if path.endswith("targetPort") and len(messages) > 1:
            messages = ["must be a port number (1-65535) or a port name"]
        out[path] = " or ".join(messages)
    return out


def _validation_errors(exc: ValidationError, doc: SourceDocument, kind: str, name: str) -> list[ConfigError]:
    return [ConfigError(message, file=doc.file, line=doc.line_of(path), kind=kind, name=name,
                        field=path or None)
            for path, message in field_problems(exc, doc.data).items()]


def _normalised(data: dict[str, Any]) -> dict[str, Any]:
    """People write `on: [502, 503]` unquoted; the model holds status codes as strings."""
    spec = data.get("spec")
    retries = spec.get("retries") if isinstance(spec, dict) else None
    on = retries.get("on") if isinstance(retries, dict) else None
    if not isinstance(on, list) or not any(isinstance(v, int) and not isinstance(v, bool) for v in on):
        return data
    fixed_on = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in on]
    assert isinstance(spec, dict) and isinstance(retries, dict)
    return {**data, "spec": {**spec, "retries": {**retries, "on": fixed_on}}}


def parse_documents(
    docs: Sequence[SourceDocument],
) -> tuple[list[AnyResource], list[ConfigError], dict[int, SourceDocument]]:
    """Validate every document; returns the resources, the errors, and where each resource came from."""
    resources: list[AnyResource] = []
    errors: list[ConfigError] = []
    origin: dict[int, SourceDocument] = {}
    policy_keys = frozenset(_document_key(d) for d in docs
                            if isinstance(d.data, dict) and d.data.get("kind") == "BalancerPolicy")
    for doc in docs:
        data = doc.data
        if not isinstance(data, dict):
            errors.append(ConfigError("a document must be a mapping with apiVersion, kind, metadata and spec",
                                      file=doc.file, line=doc.line))
            continue
        kind = data.get("kind")
        meta = data.get("metadata")
        name = str(meta.get("name")) if isinstance(meta, dict) and meta.get("name") else "?"
        namespace = meta.get("namespace") if isinstance(meta, dict) else None
        if namespace and namespace != "default":
            name = f"{namespace}/{name}"  # as build_state names objects outside the default namespace

        def err(message: str, path: str, kind_shown: str | None = None,
                doc: SourceDocument = doc, name: str = name) -> None:
            errors.append(ConfigError(message, file=doc.file, line=doc.line_of(path), kind=kind_shown,
                                      name=name if kind_shown else None, field=path))

        if kind is None:
            err(f"is required (one of {', '.join(KINDS)})", "kind")
            continue
        if not isinstance(kind, str) or kind not in KINDS:
            err(f"{_shown(kind)} is not one of {', '.join(KINDS)}", "kind")
            continue
        if data.get("apiVersion") != API_VERSION:
            got = data.get("apiVersion")
            err("is required" if got is None else f"{_shown(got)} is not {API_VERSION}", "apiVersion",
                str(kind))
            continue
        for path, first, again in doc.duplicates:
            key = path.rsplit(".", 1)[-1]
            errors.append(ConfigError(
                f"key {key!r} is given twice in one mapping, on lines {first} and {again}: keep one (YAML "
                "would silently take the last; Kubernetes refuses the object)",
                file=doc.file, line=again, kind=str(kind), name=name, field=path))
        try:
            model: type[AnyResource] = LoadBalancer if kind == "LoadBalancer" else BalancerPolicy
            resource: AnyResource = model.model_validate(_normalised(data))
        except ValidationError as exc:
            found = _validation_errors(exc, doc, str(kind), name)
            errors.extend(found)
            if kind == "LoadBalancer":
                errors.extend(_unvalidated_checks(doc, str(kind), name, policy_keys, found))
            else:
                errors.extend(_unvalidated_policy_checks(doc, str(kind), name, found))
            continue
        if doc.duplicates:
            continue  # refused as a whole, as Kubernetes does
        resources.append(resource)
        origin[id(resource)] = doc
    return resources, errors, origin


def _names_given(block: object, model: type[BaseModel]) -> list[str]:
    """The YAML names of `model`'s fields that the raw mapping `block` gives, in model order."""
    if not isinstance(block, dict):
        return []
    return [n for n in (info.alias or name for name, info in model.model_fields.items()) if n in block]


def _unvalidated_policy_checks(doc: SourceDocument, kind: str, name: str,
                               reported: Sequence[ConfigError]) -> list[ConfigError]:
    """`policy_problems` on the raw data of a BalancerPolicy that did not validate, where it can tell."""
    spec = doc.data.get("spec") if isinstance(doc.data, dict) else None
    if not isinstance(spec, dict):
        return []
    raw_strategy = spec.get("strategy", {})
    raw_check = spec.get("healthCheck", {})
    if not isinstance(raw_strategy, dict) or not isinstance(raw_check, dict):
        return []
    strategy = raw_strategy.get("type", StrategyType.ROUND_ROBIN.value)
    check_type = raw_check.get("type", HealthCheckType.NONE.value)
    if not isinstance(strategy, str) or strategy not in set(StrategyType) \
            or not isinstance(check_type, str) or check_type not in set(HealthCheckType):
        return []  # reported by the schema; what applies is unknown
    hash_on = raw_strategy.get("hashOn")
    problems = policy_problems(strategy, _names_given(raw_strategy, Strategy), hash_on is not None,
                               isinstance(hash_on, dict) and hash_on.get("sourceIP") is not None, check_type,
                               _names_given(raw_check, HealthCheck), "type" in raw_check)
    shown = {e.field for e in reported}
    return [ConfigError(message, file=doc.file, line=doc.line_of(path), kind=kind, name=name, field=path)
            for path, message in problems if path not in shown]


def _unvalidated_checks(doc: SourceDocument, kind: str, name: str, policy_keys: frozenset[str],
                        reported: Sequence[ConfigError]) -> list[ConfigError]:
    """The checks `build_state` makes, made on the raw data of a LoadBalancer that did not validate, as
    far as they can be: its other errors show in the same run instead of after the schema errors are fixed.
    """
    data = doc.data
    spec = data.get("spec") if isinstance(data, dict) else None
    if not isinstance(spec, dict):
        return []
    out: list[ConfigError] = []
    shown = {(e.field, e.message) for e in reported}

    def add(path: str, message: str) -> None:
        if (path, message) not in shown and not any(f == path for f, _ in shown):
            out.append(ConfigError(message, file=doc.file, line=doc.line_of(path), kind=kind, name=name,
                                   field=path))

    ref = spec.get("policyRef")
    meta = data.get("metadata")
    namespace = (meta.get("namespace") if isinstance(meta, dict) else None) or "default"
    if isinstance(ref, dict) and isinstance(ref.get("name"), str) and isinstance(namespace, str) \
            and f"{namespace}/{ref['name']}" not in policy_keys:
        add("spec.policyRef.name", f"no BalancerPolicy {ref['name']!r} in namespace {namespace!r}")
    endpoints = spec.get("endpoints")
    ports = spec.get("ports")
    if isinstance(endpoints, list):
        addresses = [e.get("address") if isinstance(e, dict) and isinstance(e.get("address"), str) else None
                     for e in endpoints]
        targets = [p.get("targetPort") if isinstance(p, dict) else UNKNOWN_TARGET
                   for p in (ports if isinstance(ports, list) else [])]
        for path, message in endpoint_problems(addresses, targets):
            add(path, message)
    return out


# --- step 2: resources -> desired state ----------------------------------------------------------------

def _normal_host(host: str) -> str:
    """Lower-case, without a port: `My-Domain.com:8080` -> `my-domain.com` (RFC 9110 §4.2.3)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _addresses_overlap(a: str, b: str) -> bool:
    wildcard = ("0.0.0.0", "::", "")
    return a == b or a in wildcard or b in wildcard


UNKNOWN_TARGET = object()
"""A port whose targetPort cannot be told (its entry did not validate): bare hosts are not checked on it."""


def _same_host(host: str) -> str:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower().rstrip(".")


def endpoint_problems(addresses: Sequence[str | None],
                      target_ports: Sequence[object]) -> list[tuple[str, str]]:
    """`(field path, message)` for static endpoints that do not make one backend each: an address that is
    not `host[:port]`, a bare host on a port without a numeric targetPort, the same backend listed twice.

    `addresses` are `spec.endpoints[i].address` (None: not a string, reported by the schema), and
    `target_ports` the `spec.ports[j].targetPort` values (or UNKNOWN_TARGET). Works on validated
    resources and on the raw data of a document that did not validate, so both kinds of errors show at once.
    """
    out: list[tuple[str, str]] = []

    def add(path: str, message: str) -> None:
        if (path, message) not in out:
            out.append((path, message))

    for port_index, target in enumerate(target_ports or (UNKNOWN_TARGET,)):
        seen: dict[tuple[str, int], int] = {}
        for i, address in enumerate(addresses):
            if address is None:
                continue
            path = f"spec.endpoints[{i}].address"
            try:
                host, port = split_address(address)
            except ValueError as exc:
                add(path, f"{address!r} is not host:port or host ({exc})")
                continue
            if port is None:
                if target is UNKNOWN_TARGET:
                    continue
                if not isinstance(target, int) or isinstance(target, bool):
                    if port_index == 0 or target is not None:
                        add(path, f"{address!r} has no port, so spec.ports[{port_index}].targetPort must be "
                                  "a port number")
                    continue
                port = target
            ident = (_same_host(host), port)
            first = seen.setdefault(ident, i)
            if first != i:
                add(path, f"{address!r} is the same backend ({host}:{port}) as spec.endpoints[{first}]: list "
                          "each endpoint once, with one weight")
    return out


def policy_problems(strategy: str, strategy_given: Sequence[str], has_hash_on: bool, hash_on_source_ip: bool,
                    check_type: str, check_given: Sequence[str],
                    check_type_given: bool) -> list[tuple[str, str]]:
    """`(field path, message)` for a policy's settings that would be missing or silently ignored: hashOn
    missing for a hash strategy, one strategy's parameter given to another, health check settings with
    no check type. `*_given` are the YAML names the resource gives. Works on a validated resource and on
    the raw data of one that did not validate, so both kinds of errors show in one run."""
    out: list[tuple[str, str]] = []
    if strategy in HASH_STRATEGIES and not has_hash_on:
        out.append(("spec.strategy.hashOn", f"is required for {strategy}: give {{header: NAME}}, "
                                            "{cookie: NAME} or {sourceIP: {}}"))
    if "choices" in strategy_given and strategy != StrategyType.POWER_OF_TWO_CHOICES:
        out.append(("spec.strategy.choices",
                    f"only used by PowerOfTwoChoices (this strategy is {strategy}): remove it"))
    if "timeSlice" in strategy_given and strategy != StrategyType.TIME_SLICED_ROUND_ROBIN:
        out.append(("spec.strategy.timeSlice",
                    f"only used by TimeSlicedRoundRobin (this strategy is {strategy}): remove it"))
    if "hashOn" in strategy_given and has_hash_on and strategy not in HASH_STRATEGIES:
        if strategy != StrategyType.SOURCE_IP_HASH:
            out.append(("spec.strategy.hashOn",
                        f"only used by RingHash and Maglev (this strategy is {strategy}): remove it"))
        elif not hash_on_source_ip:  # {sourceIP: {}} is what SourceIPHash does anyway
            out.append(("spec.strategy.hashOn", "SourceIPHash always hashes the client's address: to hash a "
                                                "header or a cookie use RingHash or Maglev"))
    unused = [f for f in check_given if f != "type"]
    if check_type == HealthCheckType.NONE and unused:
        out.append(("spec.healthCheck.type" if check_type_given else "spec.healthCheck",
                    f"healthCheck.{'/'.join(unused)} set but type is None, so no checks run: set type: HTTP "
                    "or TCP (or remove them)"))
    return out


class _Builder:
    def __init__(self, resources: Sequence[AnyResource], origin: Mapping[int, SourceDocument],
                 partial: bool, require_endpoints: bool, invalid_policies: frozenset[str]) -> None:
        self.invalid_policies = invalid_policies
        self.resources = resources
        self.origin = origin
        self.partial = partial
        self.require_endpoints = require_endpoints
        self.errors: list[ConfigError] = []
        self.broken: set[int] = set()  # id() of resources with an error

    def error(self, res: AnyResource, path: str, message: str) -> None:
        doc = self.origin.get(id(res))
        error = ConfigError(message, file=doc.file if doc else None, line=doc.line_of(path) if doc else None,
                            kind=res.kind, name=res.metadata.name
                            if res.metadata.namespace == "default" else res.key, field=path)
        if error not in self.errors:
            self.errors.append(error)
        self.broken.add(id(res))

    def build(self, source: str) -> LoadResult:
        policies: dict[str, BalancerPolicy] = {}
        balancers: list[LoadBalancer] = []
        seen: dict[tuple[str, str], AnyResource] = {}
        for res in self.resources:
            if (res.kind, res.key) in seen:
                self.error(res, "metadata.name",
                           f"duplicate {res.kind} {res.key!r}: another one has this name")
                continue
            seen[(res.kind, res.key)] = res
            if isinstance(res, BalancerPolicy):
                self._check_policy(res)
                policies[res.key] = res
            else:
                balancers.append(res)

        upstreams: dict[str, Upstream] = {}
        # (address, port) -> protocol, routes with their owner
        listeners: dict[tuple[str, int], tuple[Protocol, list[tuple[Route, LoadBalancer]]]] = {}
        for lb in balancers:
            built = self._build_balancer(lb, policies)
            if built is None:
                continue
            lb_upstreams, lb_ports = built
            if not self._claim_listeners(lb, lb_ports, listeners):
                continue
            upstreams.update({u.key: u for u in lb_upstreams})

        if self.errors and not self.partial:
            return LoadResult(None, tuple(self.errors), tuple(self.resources))
        live = {u for u in upstreams}
        listener_list = []
        for (address, port), (protocol, owned) in sorted(listeners.items()):
            routes = [r for r, owner in owned if id(owner) not in self.broken and r.upstream in live]
            if not routes:
                continue
            routes.sort(key=lambda r: (not r.hosts, -len(r.path_prefix), r.upstream))
            listener_list.append(Listener(address, port, protocol, tuple(routes)))
        used = {r.upstream for lst in listener_list for r in lst.routes}
        state = DesiredState(
            upstreams=MappingProxyType({k: v for k, v in sorted(upstreams.items()) if k in used}),
            listeners=tuple(listener_list), source=source, errors=tuple(self.errors))
        return LoadResult(state, tuple(self.errors), tuple(self.resources))

    def _written(self, value: BaseModel, default: BaseModel) -> list[str]:
        """The YAML names of the fields of `value` the resource gives (`model_fields_set`), in model order.

        In partial (Kubernetes) mode the API server has written the CRD's defaults into the object, so a
        value equal to its default is not taken as given there.
        """
        fields = type(value).model_fields
        return [info.alias or name for name, info in fields.items() if name in value.model_fields_set
                and not (self.partial and getattr(value, name) == getattr(default, name))]

    def _check_policy(self, policy: BalancerPolicy) -> None:
        strategy = policy.spec.strategy
        check = policy.spec.health_check
        hash_on = strategy.hash_on
        for path, message in policy_problems(
                strategy.type.value, self._written(strategy, Strategy()), hash_on is not None,
                hash_on is not None and hash_on.source_ip is not None, check.type.value,
                self._written(check, HealthCheck()), "type" in check.model_fields_set):
            self.error(policy, path, message)

    def _endpoints(self, lb: LoadBalancer,
                   target_port: int | str | None) -> tuple[BackendEndpoint, ...] | None:
        """One port's backends; None when an address cannot make one (see `endpoint_problems`)."""
        out: list[BackendEndpoint] = []
        for ep in lb.spec.endpoints:
            try:
                host, port = split_address(ep.address)
            except ValueError:
                return None
            if port is None:
                if not isinstance(target_port, int):
                    return None
                port = target_port
            out.append(BackendEndpoint(host=host, port=port, weight=ep.weight, name=ep.name or ""))
        return tuple(out)

    def _build_balancer(
        self, lb: LoadBalancer, policies: Mapping[str, BalancerPolicy]
    ) -> tuple[list[Upstream], list[tuple[int, str, int, Protocol, str]]] | None:
        spec = lb.spec
        before = len(self.errors)
        policy_spec = BalancerPolicySpec()
        policy_name: str | None = None
        if spec.policy_ref is not None:
            key = f"{lb.metadata.namespace}/{spec.policy_ref.name}"
            policy = policies.get(key)
            if policy is None and key in self.invalid_policies:
                self.error(lb, "spec.policyRef.name", f"BalancerPolicy {key!r} has errors (see above)")
            elif policy is None:
                self.error(lb, "spec.policyRef.name", f"no BalancerPolicy {spec.policy_ref.name!r} in "
                           f"namespace {lb.metadata.namespace!r}")
            elif id(policy) in self.broken:
                self.error(lb, "spec.policyRef.name", f"BalancerPolicy {key!r} has errors")
            else:
                policy_spec, policy_name = policy.spec, key
        if self.require_endpoints and not spec.endpoints and spec.selector is None and spec.service is None:
            self.error(lb, "spec.endpoints", "is required in file mode (no selector or service to find "
                       "backends): list them as [{address: 'host:port'}]")
        for path, message in endpoint_problems([ep.address for ep in spec.endpoints],
                                               [p.target_port for p in spec.ports]):
            self.error(lb, path, message)
        names: set[str] = set()
        ports: list[tuple[int, str, int, Protocol, str]] = []
        upstreams: list[Upstream] = []
        for i, p in enumerate(spec.ports):
            if p.name in names:
                self.error(lb, f"spec.ports[{i}].name", f"duplicate port name {p.name!r}")
                continue
            names.add(p.name)
            endpoints = self._endpoints(lb, p.target_port)
            if endpoints is None:
                continue
            key = f"{lb.key}/{p.name}"
            upstreams.append(Upstream(key=key, load_balancer=lb.key, port_name=p.name, protocol=p.protocol,
                                      policy=policy_spec, policy_name=policy_name, endpoints=endpoints))
            ports.append((i, p.address, p.port, p.protocol, key))
        if len(self.errors) > before:
            return None
        return upstreams, ports

    def _claim_listeners(
        self, lb: LoadBalancer, ports: Sequence[tuple[int, str, int, Protocol, str]],
        listeners: dict[tuple[str, int], tuple[Protocol, list[tuple[Route, LoadBalancer]]]],
    ) -> bool:
        before = len(self.errors)
        hosts = tuple(sorted({_normal_host(h) for h in lb.spec.hosts}))
        prefix = lb.spec.path_prefix
        claims: list[tuple[tuple[str, int], Protocol, Route]] = []
        own: list[tuple[int, str, int]] = []  # this load balancer's ports so far
        for i, address, port, protocol, key in ports:
            where = f"spec.ports[{i}].port"
            again = next((j for j, a, p in own if p == port and _addresses_overlap(a, address)), None)
            own.append((i, address, port))
            if again is not None:
                self.error(lb, where, f"{address}:{port} is already spec.ports[{again}] of this load "
                           "balancer")
                continue
            clash = next((f"{a}:{p} ({proto.value})" for (a, p), (proto, _) in listeners.items()
                          if p == port and proto != protocol and _addresses_overlap(a, address)), None)
            if clash:
                self.error(lb, where, f"{address}:{port} is {protocol.value} but {clash} is already used by "
                           "another protocol on this port")
                continue
            existing = listeners.get((address, port))
            if existing is not None and protocol == Protocol.TCP:
                holder = existing[1][0][1].key if existing[1] else "?"
                self.error(lb, where, f"TCP listener {address}:{port} is already used by LoadBalancer "
                           f"{holder!r}: a TCP listener serves one load balancer")
                continue
            if existing is not None:
                for route, owner in existing[1]:
                    same_hosts = (not route.hosts and not hosts) or bool(set(route.hosts) & set(hosts))
                    if same_hosts and route.path_prefix == prefix:
                        shared = ", ".join(sorted(set(route.hosts) & set(hosts))) or "any host"
                        self.error(lb, "spec.hosts" if hosts else "spec.pathPrefix",
                                   f"{shared} with pathPrefix {prefix!r} on {address}:{port} is already "
                                   f"claimed by LoadBalancer {owner.key!r}")
                        break
            claims.append(((address, port), protocol, Route(hosts, prefix, key)))
        if len(self.errors) > before:
            return False
        for listener_key, protocol, route in claims:
            listeners.setdefault(listener_key, (protocol, []))[1].append((route, lb))
        return True


def build_state(resources: Sequence[AnyResource], source: str, *, partial: bool = False,
                require_endpoints: bool | None = None,
                origin: Mapping[int, SourceDocument] | None = None,
                invalid_policies: frozenset[str] = frozenset()) -> LoadResult:
    """Check references and conflicts across resources and assemble the desired state.

    `partial=False` (file provider): any error means no state. `partial=True` (Kubernetes provider): broken
    load balancers are dropped, reported in `state.errors`, and the rest still builds.
    `require_endpoints` (default: not partial) makes a load balancer without endpoints, selector or
    service an error, as in file mode. `origin` maps `id(resource)` to its YAML document, for lines.
    """
    need = (not partial) if require_endpoints is None else require_endpoints
    return _Builder(resources, origin or {}, partial, need, invalid_policies).build(source)


def _document_key(doc: SourceDocument) -> str:
    meta = doc.data.get("metadata") if isinstance(doc.data, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def _is_invalid_policy(doc: SourceDocument, origin: Mapping[int, SourceDocument]) -> bool:
    valid = any(d is doc for d in origin.values())
    return not valid and isinstance(doc.data, dict) and doc.data.get("kind") == "BalancerPolicy"


def load_texts(docs: Sequence[tuple[str, str]], *, partial: bool = False) -> LoadResult:
    """Parse `(name, yaml text)` pairs and build the state; every error of every file at once."""
    sources: list[SourceDocument] = []
    errors: list[ConfigError] = []
    for name, text in docs:
        found, syntax = read_documents(name, text)
        sources.extend(found)
        errors.extend(syntax)
    resources, invalid, origin = parse_documents(sources)
    errors.extend(invalid)
    invalid_policies = frozenset(_document_key(d) for d in sources if _is_invalid_policy(d, origin))
    result = build_state(resources, ", ".join(n for n, _ in docs), partial=partial, origin=origin,
                         invalid_policies=invalid_policies)
    # Shown in reading order: file by file as given, then line by line.
    order = {name: i for i, (name, _) in enumerate(docs)}
    all_errors = tuple(sorted(tuple(errors) + result.errors,
                              key=lambda e: (order.get(e.file or "", -1), e.line or 0)))
    if all_errors and not partial:
        return LoadResult(None, all_errors, result.resources)
    return LoadResult(result.state, all_errors, result.resources)


def load_files(paths: Sequence[str]) -> LoadResult:
    """Read and load files; a missing or unreadable file is an error like any other."""
    texts: list[tuple[str, str]] = []
    errors: list[ConfigError] = []
    if not paths:
        return LoadResult(None, (ConfigError("no configuration file given"),))
    for path in paths:
        try:
            texts.append((str(path), Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            errors.append(ConfigError("no such file", file=str(path)))
        except IsADirectoryError:
            errors.append(ConfigError("is a directory, not a file", file=str(path)))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append(ConfigError(f"cannot be read: {reason}", file=str(path)))
    result = load_texts(texts)
    if errors:
        return LoadResult(None, tuple(errors) + result.errors, result.resources)
    return result


def file_mode_warnings(resources: Sequence[AnyResource]) -> list[str]:
    """What a file-mode run (`steelyard run -c`) ignores: `selector` and `service` find backends only
    through the Kubernetes provider. Not errors, since the same manifests are valid for `kubectl apply`."""
    out: list[str] = []
    for lb in resources:
        if not isinstance(lb, LoadBalancer):
            continue
        ignored = [f for f, value in (("spec.selector", lb.spec.selector), ("spec.service", lb.spec.service))
                   if value is not None]
        if not ignored:
            continue
        name = f"LoadBalancer/{lb.metadata.namespace}/{lb.metadata.name}"
        serves = (f"serves its {len(lb.spec.endpoints)} spec.endpoints only" if lb.spec.endpoints
                  else "has no endpoints: every request to it gets 503")
        verb = "find" if len(ignored) > 1 else "finds"
        out.append(f"{name}: {' and '.join(ignored)} {verb} backends only with --kubernetes; from a file it "
                   f"{serves}")
    return out
