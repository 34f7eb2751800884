"""The Kubernetes provider: informers -> `translate` -> one whole `DesiredState` -> `Runtime.apply`.

Like the file provider it hands out whole states, never deltas, and drops a state equal to the one
applied (Traefik's configuration watcher). A burst of events (a rollout touches pods, slices and the
load balancer within milliseconds) is debounced: the first change arms a short timer (`debounce`,
100 ms) and everything arriving meanwhile is folded into the one translation that follows.

Every replica watches and serves; the `LeaderElector` decides which one writes status and Events
(`StatusWriter`). While the API server is unreachable the informers keep their caches, so the state last
applied keeps serving; once they are back they catch up (resume or relist) and one new state is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from steelyard.config.desired import DesiredState
from steelyard.kube.informer import Informer
from steelyard.kube.leader import LeaderElector
from steelyard.kube.status import StatusWriter
from steelyard.kube.translate import SERVICE_NAME_LABEL, ClusterObjects, Translation, translate

__all__ = ["KubeOptions", "KubeProvider", "start_provider"]

log = logging.getLogger("steelyard.provider")

STATUS_RESYNC = 2.0  # the leader re-checks status this often without events (ejections change alone);
# a check that finds nothing to change costs no API call


@dataclass(frozen=True, slots=True)
class KubeOptions:
    server: str | None = None  # an API server URL (tests, `kubectl proxy`); else in-cluster or kubeconfig
    kubeconfig: str | None = None
    token: str | None = None
    namespace: str | None = None  # None: every namespace
    lease_name: str = "steelyard"
    lease_namespace: str = "default"
    identity: str = "steelyard"
    lease_duration: float = 15.0
    debounce: float = 0.1


def _same(a: DesiredState | None, b: DesiredState | None) -> bool:
    if a is None or b is None:
        return a is b
    return dict(a.upstreams) == dict(b.upstreams) and a.listeners == b.listeners


class KubeProvider:
    """Duck-types the file provider for `steelyard run`: `source`, `current`, `watch(apply)`."""

    source = "kubernetes"

    def __init__(self, client: Any, options: KubeOptions, *, start_leader: bool = True) -> None:
        from steelyard.kube.client import BALANCER_POLICIES, ENDPOINT_SLICES, LOAD_BALANCERS, PODS, SERVICES

        self.client = client
        self.options = options
        ns = options.namespace
        self.informers = {
            "LoadBalancer": Informer(client, LOAD_BALANCERS, ns, on_change=self._changed),
            "BalancerPolicy": Informer(client, BALANCER_POLICIES, ns, on_change=self._changed),
            "Pod": Informer(client, PODS, ns, on_change=self._changed),
            "EndpointSlice": Informer(client, ENDPOINT_SLICES, ns, labels={SERVICE_NAME_LABEL: None},
                                      on_change=self._changed),
            "Service": Informer(client, SERVICES, ns, on_change=self._changed),
        }
        self.current: DesiredState | None = None
        self.translation: Translation | None = None
        self.on_invalid: list[Callable[[str, tuple[str, ...]], None]] = []
        self.last_errors: tuple[str, ...] = ()
        self.ejected: Callable[[str], int] = lambda key: 0  # set by the runtime wiring when it can count
        self.status = StatusWriter(client, options.identity)
        self.leader: LeaderElector | None = None
        if start_leader:
            self.leader = LeaderElector(client, name=options.lease_name, namespace=options.lease_namespace,
                                        identity=options.identity, lease_duration=options.lease_duration,
                                        renew_deadline=options.lease_duration * 2 / 3,
                                        retry_period=max(0.2, options.lease_duration / 7.5),
                                        on_change=self._leadership_changed)
        self._dirty = asyncio.Event()
        self._status_due = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.applies = 0

    def __repr__(self) -> str:
        return f"<KubeProvider informers={list(self.informers.values())} leader={self.leader}>"

    # -- tasks ---------------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """A named task that is logged if it dies (the runtime's habit, kept inside this package)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s died: %s", t.get_name(), t.exception(), exc_info=t.exception())

        task.add_done_callback(done)

    def start(self) -> None:
        for name, informer in self.informers.items():
            self._spawn(informer.run(), f"kube-informer-{name}")
        if self.leader is not None:
            self._spawn(self.leader.run(), "kube-leader-election")
            self._spawn(self._status_loop(), "kube-status")

    async def wait_synced(self) -> None:
        """Until every informer has listed once (the API may be down at start: this waits for it)."""
        await asyncio.gather(*(i.synced.wait() for i in self.informers.values()))

    async def close(self) -> None:
        """Release the Lease (another replica takes over at once), stop the informers, close the client."""
        if self.leader is not None:
            await self.leader.release()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.client.close()

    # -- translation -----------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty.set()

    def _leadership_changed(self, leader: bool) -> None:
        if leader:
            self._status_due.set()

    def objects(self) -> ClusterObjects:
        i = self.informers
        return ClusterObjects(load_balancers=i["LoadBalancer"].items(), policies=i["BalancerPolicy"].items(),
                              pods=i["Pod"].items(), endpoint_slices=i["EndpointSlice"].items(),
                              services=i["Service"].items())

    def build(self) -> DesiredState:
        self.translation = translate(self.objects())
        state = self.translation.state
        self.last_errors = tuple(str(e) for e in state.errors)
        self._status_due.set()
        return state

    async def watch(self, apply: Callable[[DesiredState], Awaitable[object]]) -> None:
        """Forever: after a change, wait `debounce`, translate everything, apply if the state differs."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.options.debounce)  # fold the rest of the burst into this round
            self._dirty.clear()
            try:
                state = self.build()
            except Exception:  # a translation bug must not stop later changes
                log.exception("translating the cluster's objects failed; the previous state keeps serving")
                continue
            if _same(state, self.current):
                continue
            if state.errors:
                log.warning("kubernetes: %d resource(s) with errors (dropped, others serve):\n%s",
                            len(state.errors), "\n".join(f"  {e}" for e in state.errors))
            self.current = state
            try:
                await apply(state)
                self.applies += 1
            except Exception:
                log.exception("applying the state from kubernetes failed; the previous one keeps serving")
                self.current = None

    def attach_registry(self, registry: Any) -> None:
        """Count ejected endpoints from the running upstreams (duck-typed: `registry.runtimes`, each with
        `upstream.load_balancer`, `clock()` and `tracker.describe(now)`); the status reports them."""

        def ejected(lb_key: str) -> int:
            out: set[object] = set()
            for rt in list(getattr(registry, "runtimes", {}).values()):
                try:
                    if rt.upstream.load_balancer != lb_key:
                        continue
                    rows = rt.tracker.describe(rt.clock())
                except Exception:  # the runtime's shape changed: report none rather than fail status
                    continue
                # (by pod, as `ready` counts them: one pod behind two ports is one endpoint)
                out.update(row.get("name") or str(row["id"]).rsplit(":", 1)[0] for row in rows
                           if row.get("state") in ("ejected", "unhealthy"))
            return len(out)

        self.ejected = ejected

    def request_reload(self) -> None:
        """SIGHUP: translate again (level-triggered; the informers are always current)."""
        self._dirty.set()

    # -- status (leader only) ----------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_due.wait(), STATUS_RESYNC)
            self._status_due.clear()
            if self.leader is None or not self.leader.is_leader or self.translation is None:
                continue
            try:
                await self.status.sync(self.translation, _by_key(self.informers["LoadBalancer"].items()),
                                       _by_key(self.informers["BalancerPolicy"].items()), self.ejected)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("writing status failed (retrying in %.0fs): %s", STATUS_RESYNC, exc)


def _by_key(objects: list[dict[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return {f"{o['metadata'].get('namespace') or 'default'}/{o['metadata']['name']}": o for o in objects}


async def start_provider(options: KubeOptions) -> KubeProvider:
    """Connect, start the informers and the leader election, wait for the first full sync, translate."""
    from steelyard.kube.client import KubeClient

    if options.server:
        client = KubeClient.from_server(options.server, options.token)
    else:
        client = KubeClient.from_environment(options.kubeconfig)
    provider = KubeProvider(client, options)
    provider.start()
    waiting = asyncio.ensure_future(provider.wait_synced())
    while not waiting.done():
        done, _ = await asyncio.wait({waiting}, timeout=10)
        if not done:
            pending = [name for name, i in provider.informers.items() if not i.synced.is_set()]
            log.warning("still waiting for the Kubernetes API to list %s", ", ".join(pending))
    provider.current = provider.build()
    provider._dirty.clear()
    return provider
