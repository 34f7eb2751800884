"""What the leader writes: `LoadBalancer.status`, `BalancerPolicy.status`, and Events.

Level-triggered: the desired status of every object is computed from the latest `Translation` and
compared with the status the informer's cache shows (our own writes come back through the watch); only a
difference is written (merge patch of the status subresource). A condition keeps its
`lastTransitionTime` while its status stays the same, so an unchanged world writes nothing.

`LoadBalancer.status` (the CRD's printer columns read `.status.strategy` and `.status.endpoints.ready`):

    observedGeneration: 3            # metadata.generation this status describes
    strategy: WeightedRoundRobin     # the strategy in effect; absent while the load balancer is not served
    endpoints: {ready: 2, terminating: 1, ejected: 0}   # ejected: out of rotation (outlier detection or
                                                       # failing health checks), counted among ready
    conditions:
      - type: Ready                  # True: served with at least one ready endpoint
        status: "False"
        reason: PolicyNotFound       # InvalidSpec | PolicyNotFound | InvalidPolicy | ListenerConflict |
                                     # ServiceNotFound | NoEndpoints | OnlyTerminatingEndpoints | Serving
        message: "spec.policyRef.name: no BalancerPolicy 'fast' in namespace 'default'"
        lastTransitionTime: ...
        observedGeneration: 3
      - type: Degraded               # True: served, but not as specified (ejected endpoints, warnings)
        status: "False"
        reason: AsExpected | EndpointsEjected | Warnings | NotReady
        message: ...

`BalancerPolicy.status`: `observedGeneration`, `loadBalancers` (namespace/name of every load balancer
whose `policyRef` names it) and a `Ready` condition (`Valid` or `InvalidSpec` with the message).

Events (`v1` Events on the object, from component `steelyard`): a Warning when Ready turns False or its
reason changes, a Normal `Recovered` when it turns True again; the same for a policy becoming invalid.

A 429 Too Many Requests ends the round, and no write is tried again before its `Retry-After` (capped at
`max_retry_after`) has passed: level-triggered, the next round after that writes whatever still differs.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from steelyard.kube.translate import LoadBalancerReport, PolicyReport, Translation
from steelyard.model import API_VERSION

__all__ = ["StatusWriter", "load_balancer_status", "policy_status"]

log = logging.getLogger("steelyard.kube")


class _Client(Protocol):
    async def patch_status(self, kind: Any, name: str, namespace: str,
                           status: Mapping[str, Any]) -> dict[str, Any]: ...

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int | None,
               current: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = next((c for c in (current or {}).get("conditions") or () if c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else now
    out: dict[str, Any] = {"type": kind, "status": status, "reason": reason, "message": message,
                           "lastTransitionTime": since or now}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def load_balancer_status(report: LoadBalancerReport, current: Mapping[str, Any] | None, *, ejected: int = 0,
                         now: str | None = None) -> dict[str, Any]:
    now = now or _now()
    if not report.ready:
        degraded = (False, "NotReady", "the load balancer is not ready; see the Ready condition"
                    + "".join(f"; {w}" for w in report.warnings))  # (a targetPort no pod has, say)
    elif ejected:
        degraded = (True, "EndpointsEjected", f"{ejected} endpoint(s) out of rotation: failing health checks "
                    "or ejected by outlier detection")
    elif report.warnings:
        degraded = (True, "Warnings", "; ".join(report.warnings))
    else:
        degraded = (False, "AsExpected", "serving as specified")
    status: dict[str, Any] = {
        "observedGeneration": report.generation,
        "strategy": report.strategy,
        "endpoints": {"ready": report.ready_endpoints, "terminating": report.terminating_endpoints,
                      "ejected": ejected},
        "conditions": [
            _condition("Ready", report.ready, report.reason, report.message, report.generation, current, now),
            _condition("Degraded", degraded[0], degraded[1], degraded[2], report.generation, current, now),
        ],
    }
    return status


def policy_status(report: PolicyReport, current: Mapping[str, Any] | None, *,
                  now: str | None = None) -> dict[str, Any]:
    now = now or _now()
    return {
        "observedGeneration": report.generation,
        "loadBalancers": list(report.used_by),
        "conditions": [_condition("Ready", report.valid, "Valid" if report.valid else "InvalidSpec",
                                  report.message, report.generation, current, now)],
    }


def _ready(status: Mapping[str, Any] | None) -> tuple[str, str] | None:
    for cond in (status or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return str(cond.get("status")), str(cond.get("reason"))
    return None


def _same(desired: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Equal as the API would store it (a None field is absent after a merge patch)."""
    return {k: v for k, v in desired.items() if v is not None} == dict(current or {})


class StatusWriter:
    """Writes status and Events for the objects in the informers' caches; call `sync` as the leader."""

    def __init__(self, client: _Client, identity: str, *, max_retry_after: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.identity = identity
        self.max_retry_after = max_retry_after
        self.monotonic = monotonic
        self.writes = 0
        self.events = 0
        self.throttled = 0  # 429 answers
        self.retry_at = 0.0  # after a 429: no write before this (monotonic)

    def _throttled_by(self, exc: BaseException) -> bool:
        """After a 429: remember when to try again (the server's Retry-After, capped; 1 s if unnamed)."""
        from steelyard.kube.client import TooManyRequests

        if not isinstance(exc, TooManyRequests):
            return False
        wait = min(self.max_retry_after, exc.retry_after if exc.retry_after is not None else 1.0)
        self.retry_at = self.monotonic() + wait
        self.throttled += 1
        log.info("the API server is throttling status writes (429); next try in %.1fs", wait)
        return True

    async def sync(self, translation: Translation, load_balancers: Mapping[str, Mapping[str, Any]],
                   policies: Mapping[str, Mapping[str, Any]],
                   ejected: Callable[[str], int] = lambda key: 0) -> None:
        if self.monotonic() < self.retry_at:
            return  # throttled: the status loop comes back; level-triggered, nothing is lost
        try:
            await self._sync(translation, load_balancers, policies, ejected)
        except Exception as exc:
            if not self._throttled_by(exc):
                raise

    async def _sync(self, translation: Translation, load_balancers: Mapping[str, Mapping[str, Any]],
                    policies: Mapping[str, Mapping[str, Any]], ejected: Callable[[str], int]) -> None:
        from steelyard.kube.client import BALANCER_POLICIES, LOAD_BALANCERS

        for key, report in translation.load_balancers.items():
            obj = load_balancers.get(key)
            if obj is None:
                continue
            current = obj.get("status")
            desired = load_balancer_status(report, current, ejected=ejected(key) if report.ready else 0)
            if _same(desired, current):
                continue
            await self._write(LOAD_BALANCERS, obj, desired)
            await self._event_on_change(obj, current, desired, report.message)
        for key, preport in translation.policies.items():
            obj = policies.get(key)
            if obj is None:
                continue
            current = obj.get("status")
            desired = policy_status(preport, current)
            if _same(desired, current):
                continue
            await self._write(BALANCER_POLICIES, obj, desired)
            await self._event_on_change(obj, current, desired, preport.message)

    async def _write(self, kind: Any, obj: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        # Conditions and lists are replaced whole by a merge patch; fields we no longer set are nulled.
        patch = dict(status)
        for old_field in (obj.get("status") or {}):
            patch.setdefault(old_field, None)
        await self.client.patch_status(kind, meta["name"], meta.get("namespace") or "default", patch)
        self.writes += 1
        ready = _ready(status)
        log.info("status of %s %s/%s written: Ready=%s (%s)", kind, meta.get("namespace") or "default",
                 meta["name"], *(ready or ("?", "?")))

    async def _event_on_change(self, obj: Mapping[str, Any], current: Mapping[str, Any] | None,
                               desired: Mapping[str, Any], message: str) -> None:
        before, after = _ready(current), _ready(desired)
        if after is None or before == after:
            return
        if after[0] == "True":
            if before is None:
                return  # first status, all fine: nothing to tell
            await self.event(obj, "Normal", "Recovered", f"ready again: {message}")
        else:
            await self.event(obj, "Warning", after[1], message)

    async def event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = _now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind"),
                               "name": meta["name"], "namespace": namespace, "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": "steelyard"}, "reportingComponent": "steelyard",
            "reportingInstance": self.identity, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        if self.monotonic() < self.retry_at:
            log.info("Event %s on %s/%s not recorded: the API server is throttling", reason, namespace,
                     meta["name"])
            return
        try:
            await self.client.create(event)
            self.events += 1
        except Exception as exc:  # an Event is a courtesy: never let it stop status writing
            if self._throttled_by(exc):
                return
            log.warning("could not record Event %s on %s/%s: %s", reason, namespace, meta["name"], exc)
