"""`RuntimeSource`: the `AdminSource` of a running Steelyard process, read from the proxy's own objects.

Reads go through `ProxyServer` (counters, connections, pools, the current `Snapshot` and its
`UpstreamRuntime`s: tracker rows, strategy state, per-endpoint stats and latency histograms). Everything
runs on the proxy's loop, so values are read directly and copied into the admin's frozen views.

Runtime overrides (weight, drain) go to `EndpointTracker.set_override` at once. They are also remembered
here with the endpoint's configuration at the time, and `after_apply()` (the runtime calls it after every
applied configuration) keeps each override only while the endpoint's own configuration is unchanged: a
reload that touches the endpoint (weight, name, terminating, or removes it) resets it; a reload that
touches other things leaves it in force.

`explain` never disturbs real traffic: it picks on a deep copy of the strategy (same counters, same
random state, so the copy makes the very choice the next request would make if nothing else happens
first) and reports the tracker's rows as they are.
"""

from __future__ import annotations

import copy
import json
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from steelyard.admin.source import (
    ConfigView,
    EndpointView,
    ProcessCounters,
    ReloadRecord,
    UpstreamView,
)
from steelyard.config.desired import BackendEndpoint, DesiredState, Listener
from steelyard.strategies import PickContext

if TYPE_CHECKING:
    from steelyard.proxy import ProxyServer
    from steelyard.runtime.upstream import UpstreamRuntime

__all__ = ["RuntimeSource"]

RELOADS_KEPT = 50
_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def _first(row: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return default


def _listener_text(listener: Listener, upstream_key: str) -> str | None:
    for route in listener.routes:
        if route.upstream == upstream_key:
            text = f"{listener.address}:{listener.port} {listener.protocol.value}"
            if listener.protocol.value == "HTTP":
                hosts = ",".join(route.hosts) or "*"
                text += f" {hosts}{route.path_prefix}"
            return text
    return None


class RuntimeSource:
    """Adapter from the proxy's objects to `AdminSource`."""

    def __init__(self, proxy: ProxyServer, runtime: Any = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.proxy = proxy
        self.runtime = runtime  # steelyard.runtime.apply.Runtime: its bound listeners, for readiness
        self.wall_clock = wall_clock
        self.history: deque[ReloadRecord] = deque(maxlen=RELOADS_KEPT)
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_at = 0.0
        self.loaded = False
        # (upstream, endpoint) -> (configured endpoint when set, weight override, drained)
        self.overrides: dict[tuple[str, str], tuple[BackendEndpoint, int | None, bool]] = {}

    # -- what the runtime calls --------------------------------------------------------------------------

    def record_reload(self, ok: bool, source: str, message: str = "", errors: Sequence[str] = ()) -> None:
        """After every configuration the provider produced: applied (ok) or refused (errors)."""
        now = self.wall_clock()
        self.history.append(ReloadRecord(at=now, ok=ok, source=source, message=message,
                                         errors=tuple(str(e) for e in errors)))
        if ok:
            self.reloads_ok += 1
            self.last_reload_at = now
            self.loaded = True
        else:
            self.reloads_failed += 1

    def on_applied(self, state: DesiredState, report: Any) -> None:
        """`Runtime.after_apply` hook: record the reload (failed when a listener could not bind) and
        re-apply or drop runtime overrides."""
        failed = [reason for _, reason in getattr(report, "failed", ())]
        summary = report.summary() if hasattr(report, "summary") else ""
        self.record_reload(not failed, state.source, summary, failed)
        self.after_apply()

    def on_rejected(self, source: str, errors: Sequence[str]) -> None:
        """A configuration that did not validate: the last good one keeps serving."""
        self.record_reload(False, source, "invalid; the last good configuration keeps serving", errors)

    def after_apply(self) -> None:
        """Keep overrides of endpoints the new configuration left alone; drop the others (see header)."""
        upstreams = self.proxy.snapshot.upstreams
        for (key, eid), (configured, weight, drained) in list(self.overrides.items()):
            upstream = upstreams.get(key)
            now_configured = None if upstream is None else self._configured(upstream, eid)
            if now_configured != configured:
                del self.overrides[(key, eid)]
                if upstream is not None and now_configured is not None:
                    self._clear_override(upstream, eid)
            else:
                assert upstream is not None
                self._apply_override(upstream, eid, weight, drained)

    # -- reads -------------------------------------------------------------------------------------------

    def _runtimes(self) -> Mapping[str, UpstreamRuntime]:
        return self.proxy.snapshot.upstreams

    @staticmethod
    def _configured(runtime: UpstreamRuntime, endpoint_id: str) -> BackendEndpoint | None:
        for ep in runtime.upstream.endpoints:
            if ep.id == endpoint_id:
                return ep
        return None

    def _endpoint_view(self, runtime: UpstreamRuntime, ep: BackendEndpoint, row: Mapping[str, Any],
                       usable: Mapping[str, float]) -> EndpointView:
        stats = runtime.stats.get(ep.id)
        override = self.overrides.get((runtime.key, ep.id))
        drained = bool(_first(row, "drained", default=override[2] if override else False))
        effective = usable.get(ep.id, 0.0)
        health = str(_first(row, "state", "health", "status", default="")) or (
            "draining" if drained or ep.weight == 0 else "healthy" if ep.id in usable else "unusable")
        responses: dict[str, int] = {}
        if stats is not None:
            for i, n in enumerate(stats.by_class):
                if n:
                    responses[_CLASSES[i]] = n
        hist = getattr(stats, "latency", None)  # per attempt, kept by the runtime itself
        override_weight = _first(row, "override_weight", "weight_override",
                                 default=override[1] if override else None)
        return EndpointView(
            id=ep.id, name=ep.name or ep.id, health=health, healthy=ep.id in usable,
            configured_weight=ep.weight, effective_weight=effective,
            override_weight=override_weight, drained=drained,
            in_flight=stats.in_flight if stats else 0, requests=stats.requests if stats else 0,
            failures=stats.failures if stats else 0, responses=responses,
            ejections=int(_first(row, "ejections", "times_ejected", "ejection_count", default=0)),
            latency_counts=tuple(hist.counts) if hist is not None else None,
            latency_sum=hist.total if hist is not None else 0.0,
            detail={k: v for k, v in row.items() if isinstance(v, str | int | float | bool | None)},
        )

    def _upstream_view(self, runtime: UpstreamRuntime, listeners: Sequence[Listener]) -> UpstreamView:
        up = runtime.upstream
        now = runtime.clock()
        rows = {str(_first(r, "id", "endpoint", default="")): r for r in runtime.tracker.describe(now)}
        usable = {e.id: float(e.weight) for e in runtime.usable_now()}
        endpoints = tuple(self._endpoint_view(runtime, ep, rows.get(ep.id, {}), usable)
                          for ep in up.endpoints)
        return UpstreamView(
            key=up.key, load_balancer=up.load_balancer, port_name=up.port_name, protocol=up.protocol.value,
            strategy=up.policy.strategy.type.value, policy_name=up.policy_name,
            policy=up.policy.model_dump(mode="json", by_alias=True),
            listeners=tuple(t for t in (_listener_text(lst, up.key) for lst in listeners) if t),
            endpoints=endpoints, requests=runtime.requests, no_endpoint=runtime.no_endpoint,
            retries=runtime.retries, timeouts=runtime.timeouts,
            strategy_state=_jsonable(runtime.strategy.describe()),
        )

    def upstreams(self) -> list[UpstreamView]:
        listeners = self.proxy.snapshot.state.listeners
        return [self._upstream_view(rt, listeners) for _, rt in sorted(self._runtimes().items())]

    def counters(self) -> ProcessCounters:
        proxy = self.proxy
        s = proxy.stats
        idle = sum(1 for c in proxy.http_connections if c.is_idle())
        return ProcessCounters(
            requests=s.requests,
            responses={_CLASSES[i]: n for i, n in enumerate(s.responses_by_class) if n},
            downstream_active=len(proxy.http_connections) - idle + len(proxy.tcp_tunnels),
            downstream_idle=idle,
            upstream_active=sum(p.busy for p in proxy.pools.values()) + len(proxy.tcp_tunnels),
            upstream_idle=sum(len(p.idle) for p in proxy.pools.values()),
            upstream_connect_errors=s.upstream_connect_failures, retries=s.retries, timeouts=s.timeouts,
            connections_refused=s.connections_refused,
            tcp_connections=len(proxy.tcp_tunnels),
            reloads_ok=self.reloads_ok, reloads_failed=self.reloads_failed,
            last_reload_at=self.last_reload_at,
        )

    def config(self) -> ConfigView:
        state = self.proxy.snapshot.state
        return ConfigView(source=state.source, loaded=self.loaded, document=describe_state(state),
                          errors=tuple(str(e) for e in state.errors))

    def reloads(self) -> list[ReloadRecord]:
        return list(self.history)

    def readiness(self) -> tuple[bool, str]:
        if self.proxy.closing:
            return False, "draining: shutting down"
        if self.runtime is not None and getattr(self.runtime, "stopping", False):
            return False, "shutting down: still accepting during --shutdown-delay, then draining"
        if not self.loaded:
            return False, "no configuration applied yet"
        if self.runtime is not None:
            wanted = {lst.key for lst in self.proxy.snapshot.state.listeners}
            # (a listener a reload could not bind is retried and does not count: see runtime/apply.py)
            missing = wanted - set(self.runtime.listeners) - set(getattr(self.runtime, "unbound", ()))
            if missing:  # SIGTERM closed them (draining)
                return False, "not listening on " + ", ".join(f"{a}:{p}" for a, p in sorted(missing))
        return True, ""

    # -- operations ------------------------------------------------------------------------------------------

    def _find(self, upstream: str, endpoint: str) -> tuple[UpstreamRuntime, BackendEndpoint]:
        runtime = self._runtimes().get(upstream)
        if runtime is None:
            raise LookupError(f"no upstream {upstream!r}")
        configured = self._configured(runtime, endpoint)
        if configured is None:
            raise LookupError(f"upstream {upstream!r} has no endpoint {endpoint!r}")
        return runtime, configured

    def set_weight(self, upstream: str, endpoint: str, weight: int | None) -> None:
        runtime, configured = self._find(upstream, endpoint)
        _, _, drained = self.overrides.get((upstream, endpoint), (configured, None, False))
        self._remember(runtime, configured, weight, drained)

    def set_drained(self, upstream: str, endpoint: str, drained: bool) -> None:
        runtime, configured = self._find(upstream, endpoint)
        _, weight, _ = self.overrides.get((upstream, endpoint), (configured, None, False))
        self._remember(runtime, configured, weight, drained)

    def _remember(self, runtime: UpstreamRuntime, configured: BackendEndpoint, weight: int | None,
                  drained: bool) -> None:
        key = (runtime.key, configured.id)
        if weight is None and not drained:
            self._clear_override(runtime, configured.id)
            self.overrides.pop(key, None)
        else:
            self._apply_override(runtime, configured.id, weight, drained)
            self.overrides[key] = (configured, weight, drained)

    @staticmethod
    def _apply_override(runtime: UpstreamRuntime, endpoint_id: str, weight: int | None,
                        drained: bool) -> None:
        runtime.tracker.set_override(endpoint_id, weight=weight, drained=drained)
        runtime.refresh()

    @staticmethod
    def _clear_override(runtime: UpstreamRuntime, endpoint_id: str) -> None:
        runtime.tracker.set_override(endpoint_id, weight=None, drained=False)
        runtime.refresh()

    def explain(self, upstream: str, client_ip: str | None, hash_key: str | None) -> dict[str, object]:
        runtime = self._runtimes().get(upstream)
        if runtime is None:
            raise LookupError(f"no upstream {upstream!r}")
        now = runtime.clock()
        usable = list(runtime.usable_now())  # (the strategy has this set now)
        trial = copy.deepcopy(runtime.strategy)  # a copy: the real strategy's counters stay untouched
        spec = runtime.upstream.policy.strategy
        if hash_key is None and spec.hash_on is not None and spec.hash_on.source_ip is not None:
            hash_key = client_ip  # what the proxy hashes for `hashOn: {sourceIP: {}}`
        picked = trial.pick(PickContext(client_ip=client_ip, hash_key=hash_key))
        rows = runtime.tracker.describe(now)
        not_usable = [str(_first(r, "id", default="?")) + f" ({_first(r, 'state', 'health', default='?')})"
                      for r in rows if str(_first(r, "id", default="")) not in {e.id for e in usable}]
        weights = ", ".join(f"{e.id}={e.weight:g}" for e in usable) or "none"
        reason = f"{spec.type.value} over {len(usable)} usable endpoint(s) (effective weights {weights})"
        if spec.hash_on is not None:
            on = ("header " + spec.hash_on.header if spec.hash_on.header else
                  "cookie " + spec.hash_on.cookie if spec.hash_on.cookie else "source IP")
            reason += f"; hashes the {on}: key {hash_key!r}" if hash_key else (
                f"; hashes the {on}, but no key was given (pass hash_key= or client_ip=)")
        if not_usable:
            reason += "; not usable: " + ", ".join(not_usable)
        if picked is None:
            reason += f"; no pick: {runtime.tracker.unavailable_reason(now)}"
        return {
            "upstream": upstream, "strategy": _jsonable(runtime.strategy.describe()),
            "next_pick": picked.id if picked else None, "reason": reason,
            "usable": [{"id": e.id, "effective_weight": e.weight} for e in usable],
            "endpoints": [_jsonable(r) for r in rows],
            "note": "picked on a copy of the strategy; real traffic's state is unchanged",
        }


def _jsonable(value: Any) -> Any:
    """Strategy and tracker rows as JSON values (anything odd becomes its str())."""
    return json.loads(json.dumps(value, default=str))


def describe_state(state: DesiredState) -> dict[str, object]:
    """The configuration in effect as JSON: upstreams (policy, endpoints) and listeners (routes)."""
    return {
        "source": state.source,
        "upstreams": {
            key: {"load_balancer": up.load_balancer, "port": up.port_name, "protocol": up.protocol.value,
                  "policy_name": up.policy_name, "policy": up.policy.model_dump(mode="json", by_alias=True),
                  "endpoints": [{"id": e.id, "name": e.name, "weight": e.weight, "terminating": e.terminating}
                                for e in up.endpoints]}
            for key, up in state.upstreams.items()
        },
        "listeners": [{"address": lst.address, "port": lst.port, "protocol": lst.protocol.value,
                       "routes": [{"hosts": list(r.hosts), "path_prefix": r.path_prefix,
                                   "upstream": r.upstream} for r in lst.routes]}
                      for lst in state.listeners],
        "errors": [str(e) for e in state.errors],
    }
