"""Cached Kubernetes objects -> the one `DesiredState` the file provider also produces. Pure: no I/O.

`translate(objects)` validates every `LoadBalancer` and `BalancerPolicy` against the pydantic models,
finds each load balancer's backends, and hands the valid resources to `config.build_state(partial=True)`,
so references, duplicates and listener conflicts are checked exactly as in file mode. An error in one
resource (an invalid spec that slipped past the schema, an unknown policy, a port clash, a missing
Service) drops that load balancer only and is reported for its status; the others keep serving.

Backends:
- `spec.selector`: Pods of the load balancer's namespace matching the label selector. A pod is *ready*
  when its `Ready` condition is True and it has no `deletionTimestamp`; a pod with a `deletionTimestamp`
  that is still Ready is *serving and terminating*; anything else (no IP, not ready, finished) is left out.
- `spec.service`: the EndpointSlices labelled `kubernetes.io/service-name=NAME`. Per endpoint,
  `conditions.ready` (nil means true), `serving` (nil means the value of ready) and `terminating` (nil
  means false), as the EndpointSlice API defines them.
- Serving + terminating endpoints become `BackendEndpoint(terminating=True)`: they get no new requests
  while a ready endpoint exists and are used only when none remains, as kube-proxy does (KEP-1669).
- Per-endpoint weight from the pod annotation `steelyard.dev/weight` (0-1000; for EndpointSlices through
  the endpoint's `targetRef` pod).
- `targetPort`: a number is used as it is; a name is a container port name (selector mode) or an
  EndpointSlice port name, or a Service port's `targetPort` name (service mode); none means the load
  balancer port's own number (selector mode) or the slice's only port / the port of the same name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from steelyard.config.desired import BackendEndpoint, ConfigError, DesiredState
from steelyard.config.loader import build_state, field_problems
from steelyard.model import BalancerPolicy, LabelSelector, LoadBalancer, StrategyType

__all__ = ["ClusterObjects", "LoadBalancerReport", "PolicyReport", "Translation", "translate",
           "WEIGHT_ANNOTATION", "SERVICE_NAME_LABEL"]

WEIGHT_ANNOTATION = "steelyard.dev/weight"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SOURCE = "kubernetes"


@dataclass(frozen=True, slots=True)
class ClusterObjects:
    """What the informers hold, as the API's JSON (camelCase dicts)."""

    load_balancers: Sequence[Mapping[str, Any]] = ()
    policies: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()
    endpoint_slices: Sequence[Mapping[str, Any]] = ()
    services: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True, slots=True)
class LoadBalancerReport:
    """What the status of one LoadBalancer should say (the leader writes it; see `steelyard.kube.status`)."""

    key: str  # namespace/name
    generation: int | None
    ready: bool
    reason: str  # for the Ready condition
    message: str
    strategy: str | None  # the strategy in effect, None when the load balancer is not served
    ready_endpoints: int = 0
    terminating_endpoints: int = 0
    warnings: tuple[str, ...] = ()  # problems that do not stop it (bad weight annotation, unnamed port)
    policy: str | None = None  # namespace/name of the policy it uses


@dataclass(frozen=True, slots=True)
class PolicyReport:
    key: str
    generation: int | None
    valid: bool
    message: str
    used_by: tuple[str, ...] = ()  # namespace/name of load balancers referencing it


@dataclass(frozen=True, slots=True)
class Translation:
    state: DesiredState
    load_balancers: Mapping[str, LoadBalancerReport] = field(default_factory=dict)
    policies: Mapping[str, PolicyReport] = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def _generation(obj: Mapping[str, Any]) -> int | None:
    value = _meta(obj).get("generation")
    return value if isinstance(value, int) else None


def _validation_message(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """Every problem as `field: message`, worded and pathed (`spec.hosts[0]`) as in file mode."""
    return "; ".join(f"{path}: {message}" if path else message
                     for path, message in field_problems(exc, data).items())


def _resource_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the models know; `status` is ours to write, not to read."""
    return {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec")}


def matches_selector(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes' LabelSelector semantics (matchLabels AND every matchExpression)."""
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def _weight(pod: Mapping[str, Any] | None, warnings: list[str]) -> int:
    if pod is None:
        return 1
    text = (_meta(pod).get("annotations") or {}).get(WEIGHT_ANNOTATION)
    if text is None:
        return 1
    try:
        weight = int(str(text).strip())
    except ValueError:
        weight = -1
    if not 0 <= weight <= 1000:
        warnings.append(f"pod {_meta(pod).get('name')}: annotation {WEIGHT_ANNOTATION}={text!r} is not a "
                        "whole number from 0 to 1000; using 1")
        return 1
    return weight


def _pod_condition(pod: Mapping[str, Any], kind: str) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return bool(cond.get("status") == "True")
    return False


def _container_port(pod: Mapping[str, Any], name: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == name and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return None


def _dedupe(endpoints: Iterable[BackendEndpoint]) -> tuple[BackendEndpoint, ...]:
    """One endpoint per address (the same pod can sit in two slices during an update); ready wins."""
    chosen: dict[str, BackendEndpoint] = {}
    for ep in endpoints:
        have = chosen.get(ep.id)
        if have is None or (have.terminating and not ep.terminating):
            chosen[ep.id] = ep
    return tuple(sorted(chosen.values(), key=lambda e: (e.name, e.host, e.port)))


# -- backends --------------------------------------------------------------------------------------------


class _Backends:
    def __init__(self, objects: ClusterObjects) -> None:
        self.pods_by_ns: dict[str, list[Mapping[str, Any]]] = {}
        self.pods: dict[str, Mapping[str, Any]] = {}
        for pod in objects.pods:
            self.pods_by_ns.setdefault(_meta(pod).get("namespace") or "default", []).append(pod)
            self.pods[_key(pod)] = pod
        self.slices: dict[str, list[Mapping[str, Any]]] = {}
        for eps in objects.endpoint_slices:
            service = (_meta(eps).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if service:
                ns = _meta(eps).get("namespace") or "default"
                self.slices.setdefault(f"{ns}/{service}", []).append(eps)
        self.services = {_key(s): s for s in objects.services}

    def from_pods(self, lb: LoadBalancer, target: int | str | None, listen_port: int,
                  warnings: list[str]) -> list[BackendEndpoint]:
        assert lb.spec.selector is not None
        out = []
        for pod in self.pods_by_ns.get(lb.metadata.namespace, ()):
            meta = _meta(pod)
            if not matches_selector(lb.spec.selector, meta.get("labels") or {}):
                continue
            status = pod.get("status") or {}
            ip = status.get("podIP")
            if not ip or status.get("phase") in ("Succeeded", "Failed"):
                continue
            if isinstance(target, str):
                port = _container_port(pod, target)
                if port is None:
                    warnings.append(f"pod {meta.get('name')}: no container port named {target!r}")
                    continue
            else:
                port = target if target is not None else listen_port
            ready = _pod_condition(pod, "Ready")
            terminating = bool(meta.get("deletionTimestamp"))
            if not ready:
                continue  # neither ready nor serving
            out.append(BackendEndpoint(host=str(ip), port=port, weight=_weight(pod, warnings),
                                       name=str(meta.get("name") or ""), terminating=terminating))
        return out

    def from_slices(self, lb: LoadBalancer, port_name: str, target: int | str | None,
                    warnings: list[str]) -> list[BackendEndpoint] | None:
        """None when the Service does not exist (no Service and no slice)."""
        assert lb.spec.service is not None
        key = f"{lb.metadata.namespace}/{lb.spec.service.name}"
        slices = self.slices.get(key, [])
        service = self.services.get(key)
        if service is None and not slices:
            return None
        # A named target may be a Service port's targetPort name (a container port name): find the
        # Service port, whose name the EndpointSlice ports carry.
        names = {target} if isinstance(target, str) else set()
        for sp in ((service or {}).get("spec") or {}).get("ports") or ():
            if isinstance(target, str) and sp.get("targetPort") == target and sp.get("name"):
                names.add(sp["name"])
            if isinstance(target, int) and sp.get("port") == target:
                names.add(sp.get("name") or "")
        out = []
        for eps in slices:
            ports = eps.get("ports") or []
            port = self._slice_port(ports, port_name, target, names)
            if port is None:
                warnings.append(f"EndpointSlice {_meta(eps).get('name')}: no port matches targetPort "
                                f"{target if target is not None else port_name!r}")
                continue
            for ep in eps.get("endpoints") or ():
                cond = ep.get("conditions") or {}
                ready = cond.get("ready") is not False
                serving = cond.get("serving") if cond.get("serving") is not None else ready
                terminating = bool(cond.get("terminating"))
                if terminating:
                    ready = False
                if not ready and not (serving and terminating):
                    continue
                ref = ep.get("targetRef") or {}
                pod = self.pods.get(f"{ref.get('namespace') or lb.metadata.namespace}/{ref.get('name')}") \
                    if ref.get("kind") == "Pod" else None
                weight = _weight(pod, warnings)
                for address in (ep.get("addresses") or ())[:1]:  # addresses are fungible: use the first
                    out.append(BackendEndpoint(host=str(address), port=port, weight=weight,
                                               name=str(ref.get("name") or address),
                                               terminating=not ready))
        return out

    @staticmethod
    def _slice_port(ports: Sequence[Mapping[str, Any]], port_name: str, target: int | str | None,
                    names: set[str]) -> int | None:
        for p in ports:
            if (p.get("name") or "") in names and isinstance(p.get("port"), int):
                return int(p["port"])
        if isinstance(target, int):
            if any(p.get("port") == target for p in ports) or not names:
                return target
            return None
        if target is None:
            if len(ports) == 1 and isinstance(ports[0].get("port"), int):
                return int(ports[0]["port"])
            for p in ports:
                if p.get("name") == port_name and isinstance(p.get("port"), int):
                    return int(p["port"])
        return None


# -- the translation -------------------------------------------------------------------------------------


def _reason(error: ConfigError) -> str:
    fld = error.field or ""
    if fld.startswith("spec.policyRef"):
        return "InvalidPolicy" if "has errors" in error.message else "PolicyNotFound"
    if "already" in error.message and ("claimed" in error.message or "used" in error.message):
        return "ListenerConflict"
    return "InvalidSpec"


def _error_key(error: ConfigError) -> str:
    name = error.name or ""
    return name if "/" in name else f"default/{name}"


def translate(objects: ClusterObjects) -> Translation:
    """The desired state and, per LoadBalancer and BalancerPolicy, what its status should say."""
    policies: list[BalancerPolicy] = []
    policy_reports: dict[str, PolicyReport] = {}
    invalid_policies: set[str] = set()
    for obj in objects.policies:
        key = _key(obj)
        try:
            fields = _resource_fields(obj)
            policies.append(BalancerPolicy.model_validate(fields))
        except ValidationError as exc:
            invalid_policies.add(key)
            policy_reports[key] = PolicyReport(key, _generation(obj), False, _validation_message(exc, fields))

    balancers: list[LoadBalancer] = []
    lb_objects: dict[str, Mapping[str, Any]] = {}
    failed: dict[str, tuple[str, str]] = {}  # key -> (reason, message)
    # Oldest first (then by key): who wins a contested listener must not depend on the informer's order,
    # which a relist changes and another replica may not share (as Kubernetes settles such conflicts).
    ordered = sorted(objects.load_balancers,
                     key=lambda o: (str(_meta(o).get("creationTimestamp") or ""), _key(o)))
    for obj in ordered:
        key = _key(obj)
        lb_objects[key] = obj
        try:
            fields = _resource_fields(obj)
            balancers.append(LoadBalancer.model_validate(fields))
        except ValidationError as exc:
            failed[key] = ("InvalidSpec", _validation_message(exc, fields))

    result = build_state([*policies, *balancers], SOURCE, partial=True, require_endpoints=False,
                         invalid_policies=frozenset(invalid_policies))
    for error in result.errors:
        key = _error_key(error)
        if error.kind == "BalancerPolicy":
            invalid_policies.add(key)
            said = f"{error.field}: {error.message}"
            earlier = policy_reports.get(key)
            if earlier is not None and not earlier.valid:  # every problem, not only the last one
                said = f"{earlier.message}; {said}"
            policy_reports[key] = PolicyReport(key, None, False, said)
        elif key not in failed:
            message = error.message.replace(" (see above)", "")
            failed[key] = (_reason(error), f"{error.field}: {message}" if error.field else message)
    state = result.state or DesiredState(source=SOURCE)

    backends = _Backends(objects)
    upstreams = dict(state.upstreams)
    lb_reports: dict[str, LoadBalancerReport] = {}
    for lb in balancers:
        key = lb.key
        warnings: list[str] = []
        ready_at: set[str] = set()  # a backend serving several ports counts once
        terminating_at: set[str] = set()
        missing_service = False
        mine = {u.port_name: u for u in upstreams.values() if u.load_balancer == key}
        for port in lb.spec.ports:
            upstream = mine.get(port.name)
            if upstream is None:
                continue
            found: list[BackendEndpoint] = []
            if lb.spec.selector is not None:
                found += backends.from_pods(lb, port.target_port, port.port, warnings)
            if lb.spec.service is not None:
                from_slices = backends.from_slices(lb, port.name, port.target_port, warnings)
                if from_slices is None:
                    missing_service = True
                else:
                    found += from_slices
            endpoints = _dedupe([*upstream.endpoints, *found])
            upstreams[upstream.key] = dataclasses.replace(upstream, endpoints=endpoints)
            ready_at.update(e.name or e.host for e in endpoints if not e.terminating)
            terminating_at.update(e.name or e.host for e in endpoints if e.terminating)
        ready, terminating = len(ready_at), len(terminating_at - ready_at)
        policy_key = f"{lb.metadata.namespace}/{lb.spec.policy_ref.name}" if lb.spec.policy_ref else None
        generation = lb.metadata.generation
        if key in failed:
            reason, message = failed[key]
            lb_reports[key] = LoadBalancerReport(key, generation, False, reason, message, None,
                                                 warnings=tuple(dict.fromkeys(warnings)), policy=policy_key)
            continue
        strategy = next((u.policy.strategy.type.value for u in mine.values()), StrategyType.ROUND_ROBIN.value)
        if missing_service:
            assert lb.spec.service is not None
            ok, reason, message = False, "ServiceNotFound", (f"no Service {lb.spec.service.name!r} (and no "
                                                             f"EndpointSlices) in namespace "
                                                             f"{lb.metadata.namespace!r}")
        elif ready == 0 and terminating == 0:
            ok, reason, message = False, "NoEndpoints", "no ready endpoint"
        elif ready == 0:
            ok, reason, message = False, "OnlyTerminatingEndpoints", \
                f"no ready endpoint; {terminating} terminating endpoint(s) finish the traffic"
        else:
            ok, reason, message = True, "Serving", f"{ready} ready endpoint(s)"
        lb_reports[key] = LoadBalancerReport(key, generation, ok, reason, message, strategy, ready,
                                             terminating, tuple(dict.fromkeys(warnings)), policy_key)
    for key, (reason, message) in failed.items():
        if key not in lb_reports:
            lb_reports[key] = LoadBalancerReport(key, _generation(lb_objects[key]), False, reason, message,
                                                 None)

    for policy in policies:
        key = policy.key
        used_by = tuple(sorted(r.key for r in lb_reports.values() if r.policy == key))
        if key in policy_reports:
            policy_reports[key] = dataclasses.replace(policy_reports[key], used_by=used_by,
                                                      generation=policy.metadata.generation)
        else:
            policy_reports[key] = PolicyReport(key, policy.metadata.generation, True, "valid", used_by)
    for key, report in list(policy_reports.items()):
        if not report.used_by:
            used_by = tuple(sorted(r.key for r in lb_reports.values() if r.policy == key))
            policy_reports[key] = dataclasses.replace(report, used_by=used_by)

    final = DesiredState(upstreams=MappingProxyType(dict(sorted(upstreams.items()))),
                         listeners=state.listeners, source=SOURCE, errors=state.errors)
    return Translation(final, MappingProxyType(lb_reports), MappingProxyType(policy_reports))
