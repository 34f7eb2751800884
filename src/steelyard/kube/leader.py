"""Leader election with a `coordination.k8s.io/v1` Lease: only the leader writes status and Events; every
replica serves traffic either way.

The protocol is client-go's `leaderelection` with a Lease lock:
- **acquire**: no Lease -> create it naming us (409: someone was faster). A Lease whose holder is empty
  (released) or that has not changed for `leaseDurationSeconds` *as observed by our own clock* (expired)
  is taken over with a PUT carrying the resourceVersion we read: 409 means another replica won.
  Expiry is judged on local observation, not on the `renewTime` written by another machine, so clock skew
  between nodes does not matter (client-go does the same).
- **renew**: the holder rewrites `renewTime` every `retry_period`. If it cannot renew for
  `renew_deadline` it stops acting as leader before its Lease can expire and be taken over.
- **release** (SIGTERM): the holder empties `holderIdentity`, so another replica takes over at its next
  try instead of waiting for expiry.
- **429 Too Many Requests**: the next try waits the server's `Retry-After` (at least `retry_period`, at
  most `max_retry_after`); a leader never waits past its renew deadline, so it still steps down in time
  when the throttling outlasts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["LeaderElector"]

log = logging.getLogger("steelyard.kube")


class _Client(Protocol):
    async def get(self, kind: Any, name: str, namespace: str) -> dict[str, Any] | None: ...

    async def create(self, obj: Any) -> dict[str, Any]: ...

    async def replace(self, obj: Any) -> dict[str, Any]: ...


def _micro_time(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, client: _Client, *, name: str, namespace: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 on_change: Callable[[bool], None] = lambda leader: None,
                 max_retry_after: float = 30.0) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.monotonic = monotonic
        self.wall = wall
        self.on_change = on_change
        self.max_retry_after = max_retry_after
        self.throttled = 0  # 429 answers
        self.is_leader = False
        self.holder: str | None = None  # who holds the Lease, as last seen
        self._observed: tuple[str, float] | None = None  # (resourceVersion, when we first saw it)
        self._renewed_at = 0.0
        self._wake = asyncio.Event()
        self._released = False  # release() was called: never take the Lease again

    def __repr__(self) -> str:
        return f"<LeaderElector {self.namespace}/{self.name} me={self.identity} leader={self.is_leader}>"

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("%s %s the leader (Lease %s/%s)", self.identity, "is now" if leader else "is no longer",
                     self.namespace, self.name)
            self.on_change(leader)

    def _lease(self, *, acquire_time: str, transitions: int, version: str | None) -> dict[str, Any]:
        now = _micro_time(self.wall())
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if version:
            meta["resourceVersion"] = version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": max(1, round(self.lease_duration)),
                         "acquireTime": acquire_time, "renewTime": now, "leaseTransitions": transitions}}

    async def try_acquire_or_renew(self) -> bool:
        """One round; returns whether we hold the Lease now. Raises the client's errors."""
        from steelyard.kube.client import LEASES, KubeError

        if self._released:
            return False
        lease = await self.client.get(LEASES, self.name, self.namespace)
        now = self.monotonic()
        if self._released:  # released while we read: a write now would take the Lease back
            return False
        try:
            if lease is None:
                await self.client.create(self._lease(acquire_time=_micro_time(self.wall()), transitions=0,
                                                     version=None))
                self.holder = self.identity
                return True
            spec = lease.get("spec") or {}
            version = str(lease["metadata"].get("resourceVersion"))
            holder = spec.get("holderIdentity") or ""
            self.holder = holder or None
            if self._observed is None or self._observed[0] != version:
                self._observed = (version, now)
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            expired = now - self._observed[1] >= duration
            if holder == self.identity:
                acquire = spec.get("acquireTime") or _micro_time(self.wall())
                await self.client.replace(self._lease(acquire_time=acquire,
                                                      transitions=int(spec.get("leaseTransitions") or 0),
                                                      version=version))
                return True
            if holder and not expired:
                return False
            await self.client.replace(self._lease(acquire_time=_micro_time(self.wall()),
                                                  transitions=int(spec.get("leaseTransitions") or 0) + 1,
                                                  version=version))
            log.info("%s took over Lease %s/%s from %s", self.identity, self.namespace, self.name,
                     holder or "nobody (released)")
            self.holder = self.identity
            return True
        except KubeError as exc:
            if exc.code == 409:  # another replica wrote first
                return False
            raise

    async def run(self) -> None:
        """Until released: try every `retry_period`; step down when renewing fails for `renew_deadline`."""
        while not self._released:
            wait = self.retry_period
            try:
                held = await self.try_acquire_or_renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
                if self.is_leader and self.monotonic() - self._renewed_at > self.renew_deadline:
                    self._set_leader(False)
                wait = self.wait_after(exc)
            else:
                if self._released:
                    return
                if held:
                    self._renewed_at = self.monotonic()
                self._set_leader(held)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def wait_after(self, exc: BaseException) -> float:
        """How long to wait before the next try after a failed one: `retry_period`, or a 429's Retry-After
        (capped); a leader's wait ends by its renew deadline (it tries once more, then steps down)."""
        from steelyard.kube.client import TooManyRequests

        if not isinstance(exc, TooManyRequests) or exc.retry_after is None:
            return self.retry_period
        self.throttled += 1
        wait = max(self.retry_period, min(exc.retry_after, self.max_retry_after))
        if self.is_leader:
            left = self.renew_deadline - (self.monotonic() - self._renewed_at)
            wait = min(wait, max(left, 0.0) + 0.01)
        return float(wait)

    async def release(self) -> None:
        """Give the Lease up at once (SIGTERM), so another replica need not wait for it to expire."""
        from steelyard.kube.client import LEASES

        self._released = True  # from here on run() and try_acquire_or_renew() leave the Lease alone
        self._wake.set()
        if not self.is_leader:
            return
        self._set_leader(False)
        try:
            lease = await self.client.get(LEASES, self.name, self.namespace)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(lease["spec"])
            spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_time(self.wall()))
            await self.client.replace({**lease, "spec": spec})
            log.info("%s released Lease %s/%s", self.identity, self.namespace, self.name)
        except Exception as exc:  # it will expire instead
            log.warning("releasing Lease %s/%s failed: %s", self.namespace, self.name, exc)
