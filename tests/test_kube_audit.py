"""Audit of the Kubernetes provider against the test API server (tests/kube_support.py), over real HTTP on
127.0.0.1: what an operator would see from the desired state each replica serves and from the status the
leader writes. Seven tests began as strict xfails for bugs found and pass since their fixes; the rest are
checks of tricky cases that hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kube_support import (
    LB_API,
    KubeApi,
    balancer_policy,
    endpoint_slice,
    eventually,
    load_balancer,
    pod,
    pod_ready_status,
    slice_endpoint,
)
from steelyard.config.desired import DesiredState
from steelyard.kube.client import KubeClient
from steelyard.kube.provider import KubeOptions, KubeProvider


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking test-API call off the test's loop."""
    return await asyncio.to_thread(fn, *args)


class Replica:
    """A provider (no leader election unless asked) whose `watch` keeps `current` up to date."""

    def __init__(self, api: KubeApi, **options: Any) -> None:
        self.client = KubeClient.from_server(api.url)
        leader = options.pop("leader", False)
        self.provider = KubeProvider(self.client, KubeOptions(debounce=0.05, **options),
                                     start_leader=leader)
        self.watcher: asyncio.Task[None] | None = None

    async def start(self) -> Replica:
        self.provider.start()
        await asyncio.wait_for(self.provider.wait_synced(), 5)
        self.provider.current = self.provider.build()
        self.provider._dirty.clear()

        async def apply(state: DesiredState) -> None:
            return None

        self.watcher = asyncio.create_task(self.provider.watch(apply))
        return self

    @property
    def state(self) -> DesiredState:
        assert self.provider.current is not None
        return self.provider.current

    def served(self) -> set[str]:
        """The load balancers (namespace/name) with a route on some listener."""
        return {r.upstream.rsplit("/", 1)[0] for lst in self.state.listeners for r in lst.routes}

    def endpoints(self, lb: str = "default/web") -> list[str]:
        return sorted(e.id + ("~" if e.terminating else "") + (f"*{e.weight}" if e.weight != 1 else "")
                      for u in self.state.upstreams.values() if u.load_balancer == lb for e in u.endpoints)

    def report(self, lb: str = "default/web") -> Any:
        translation = self.provider.translation
        assert translation is not None
        return translation.load_balancers.get(lb)

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
        await self.provider.close()


@pytest.fixture
async def replicas(api: KubeApi) -> AsyncIterator[Callable[..., Any]]:
    made: list[Replica] = []

    async def start(**options: Any) -> Replica:
        replica = Replica(api, **options)
        made.append(replica)
        return await replica.start()

    yield start
    for replica in made:
        await replica.close()


def ready_pod(api: KubeApi, name: str, port: int, *, labels: dict[str, str] | None = None,
              weight: int | str | None = None, namespace: str = "default") -> None:
    obj = pod(name, labels=labels or {"app": "web"}, port=port, namespace=namespace)
    if weight is not None:
        obj["metadata"]["annotations"] = {"steelyard.dev/weight": str(weight)}
    api.create(obj)
    api.patch("v1", "Pod", name, pod_ready_status(), namespace, "status")


def service(name: str, ports: list[dict[str, Any]], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name}, "ports": ports}}


def condition(api: KubeApi, name: str, kind: str = "LoadBalancer", cond: str = "Ready",
              namespace: str = "default") -> dict[str, Any]:
    obj = api.get(LB_API, kind, name, namespace) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == cond), {})


# -- listener conflicts: which load balancer gets a contested port ------------------------------------------


async def test_a_listener_conflict_winner_does_not_flip_after_a_relist(api: KubeApi, replicas: Any) -> None:
    # zeta claims the port first; alpha, created later, asks for the same listener and must be refused.
    await call(api.create, load_balancer("zeta", port=18301, selector={"app": "zeta"}))
    replica = await replicas()
    await asyncio.sleep(1.1)  # (creationTimestamp has whole seconds: alpha is then the younger one)
    await call(api.create, load_balancer("alpha", port=18301, selector={"app": "alpha"}))
    await eventually(lambda: replica.report("default/alpha") is not None, what="alpha translated")
    assert replica.served() == {"default/zeta"}
    assert replica.report("default/alpha").reason == "ListenerConflict"
    # The API server compacts its history: the watch gets 410 and the informer relists (sorted by name).
    lbs = replica.provider.informers["LoadBalancer"]
    await call(api.expire_history)
    await eventually(lambda: lbs.lists == 2, what="the relist")
    before = replica.provider.translation  # the relist found no change: nothing is translated again
    await call(api.create, pod("unrelated", labels={"app": "other"}))  # until any later event
    await eventually(lambda: replica.provider.translation is not before, what="the next translation")
    assert replica.served() == {"default/zeta"}, "the port moved from zeta to alpha with no change by anyone"


async def test_replicas_agree_on_the_winner_of_a_listener_conflict(api: KubeApi, replicas: Any) -> None:
    await call(api.create, load_balancer("zeta", port=18302, selector={"app": "zeta"}))
    old = await replicas()
    await asyncio.sleep(1.1)  # (creationTimestamp has whole seconds: alpha is then the younger one)
    await call(api.create, load_balancer("alpha", port=18302, selector={"app": "alpha"}))
    await eventually(lambda: old.report("default/alpha") is not None, what="alpha translated")
    new = await replicas()  # a replica (re)started now: same cluster, same objects
    assert old.served() == new.served()


async def test_two_namespaces_share_a_port_with_distinct_hosts(api: KubeApi, replicas: Any) -> None:
    for ns in ("team-a", "team-b"):
        await call(api.create, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        lb = load_balancer("web", port=18303, selector={"app": "web"}, hosts=(f"{ns}.example",), namespace=ns)
        await call(api.create, lb)
    replica = await replicas()
    assert replica.served() == {"team-a/web", "team-b/web"}
    (listener,) = replica.state.listeners
    assert {r.hosts for r in listener.routes} == {("team-a.example",), ("team-b.example",)}


# -- EndpointSlices -----------------------------------------------------------------------------------------


async def test_slice_conditions_split_slices_and_a_deleted_slice(api: KubeApi, replicas: Any) -> None:
    await call(api.create, service("web", [{"name": "http", "port": 80, "targetPort": 8080}]))
    await call(api.create, load_balancer("web", port=18310, service="web"))
    first = endpoint_slice("web", [slice_endpoint(pod="a"),                                   # ready
                                   slice_endpoint(ready=False, pod="b")],                     # not ready
                           port=9001, name="web-1")
    third = endpoint_slice("web", [{"addresses": ["127.0.0.1"], "conditions": {}}], port=9003,  # nil: ready
                           name="web-3")
    second = endpoint_slice("web", [slice_endpoint(ready=False, serving=True, terminating=True, pod="c"),
                                    slice_endpoint(ready=False, serving=False, terminating=True, pod="d")],
                            port=9002, name="web-2")
    await call(api.create, first)
    await call(api.create, second)
    await call(api.create, third)
    replica = await replicas()
    assert replica.endpoints() == ["127.0.0.1:9001", "127.0.0.1:9002~", "127.0.0.1:9003"]
    report = replica.report()
    assert (report.ready_endpoints, report.terminating_endpoints) == (2, 1)
    await call(api.delete, "discovery.k8s.io/v1", "EndpointSlice", "web-1")
    await call(api.delete, "discovery.k8s.io/v1", "EndpointSlice", "web-3")
    await eventually(lambda: replica.endpoints() == ["127.0.0.1:9002~"], what="the slice gone")
    assert replica.report().reason == "OnlyTerminatingEndpoints"


async def test_named_target_port_through_the_service(api: KubeApi, replicas: Any) -> None:
    # Service port "web" (80) -> targetPort "http" (a container port name); the slice names its port "web".
    await call(api.create, service("web", [{"name": "web", "port": 80, "targetPort": "http"},
                                           {"name": "admin", "port": 81, "targetPort": "admin"}]))
    eps = endpoint_slice("web", [slice_endpoint(pod="a")], port=9010, port_name="web", name="web-x")
    eps["ports"].append({"name": "admin", "port": 9011, "protocol": "TCP"})
    await call(api.create, eps)
    await call(api.create, load_balancer("web", port=18311, service="web", target_port="http"))
    replica = await replicas()
    assert replica.endpoints() == ["127.0.0.1:9010"]


async def test_pod_weight_through_the_slices_target_ref(api: KubeApi, replicas: Any) -> None:
    await call(lambda: ready_pod(api, "a", 9020, weight=5))
    await call(api.create, endpoint_slice("web", [slice_endpoint(pod="a")], port=9020, name="web-w"))
    await call(api.create, load_balancer("web", port=18312, service="web"))
    replica = await replicas()
    assert replica.endpoints() == ["127.0.0.1:9020*5"]
    await call(api.patch, "v1", "Pod", "a", {"metadata": {"annotations": {"steelyard.dev/weight": "7"}}})
    await eventually(lambda: replica.endpoints() == ["127.0.0.1:9020*7"], what="the new weight")


# -- selector mode ---------------------------------------------------------------------------------------


async def test_a_pod_leaving_the_selector_leaves_the_endpoints(api: KubeApi, replicas: Any) -> None:
    await call(api.create, load_balancer("web", port=18320, selector={"app": "web"}, target_port="http"))
    await call(ready_pod, api, "a", 9030)
    await call(ready_pod, api, "b", 9031)
    replica = await replicas()
    assert replica.endpoints() == ["127.0.0.1:9030", "127.0.0.1:9031"]
    await call(api.patch, "v1", "Pod", "b", {"metadata": {"labels": {"app": "canary"}}})
    await eventually(lambda: replica.endpoints() == ["127.0.0.1:9030"], what="b out")
    await call(api.delete, "v1", "Pod", "a", "default", 30)  # graceful: terminating, still Ready
    await eventually(lambda: replica.endpoints() == ["127.0.0.1:9030~"], what="a terminating")
    await call(api.finish_pod_deletion, "a")
    await eventually(lambda: replica.endpoints() == [], what="a gone")
    assert replica.report().reason == "NoEndpoints"


@pytest.mark.parametrize("value", ["abc", "1001", "-1", "", "2.5"])
async def test_a_bad_weight_annotation_is_a_warning_and_weight_one(api: KubeApi, replicas: Any,
                                                                   value: str) -> None:
    await call(api.create, load_balancer("web", port=18321, selector={"app": "web"}, target_port="http"))
    await call(lambda: ready_pod(api, "a", 9040, weight=value))
    replica = await replicas()
    assert replica.endpoints() == ["127.0.0.1:9040"]
    assert len(replica.report().warnings) == 1 and "steelyard.dev/weight" in replica.report().warnings[0]


# -- status: what the leader writes -------------------------------------------------------------------------


async def test_policy_status_names_every_problem(api: KubeApi, replicas: Any) -> None:
    # Three problems the CRD schema lets through but the config loader refuses (as `steelyard validate`
    # reports them: every one at once).
    policy = balancer_policy("p", "RingHash", healthCheck={"interval": "3s"})
    policy["spec"]["strategy"]["timeSlice"] = "5s"
    await call(api.create, policy)
    replica = await replicas(leader=True, identity="one", lease_duration=1.5)
    message = await eventually(lambda: condition(api, "p", "BalancerPolicy").get("message"), what="status")
    assert condition(api, "p", "BalancerPolicy")["status"] == "False"
    assert replica.provider.translation is not None
    for field in ("spec.strategy.hashOn", "spec.strategy.timeSlice", "spec.healthCheck"):
        assert field in message, f"{field} missing from the status message {message!r}"


def two_port_pod(name: str, weight: str | None = None) -> dict[str, Any]:
    obj = pod(name, labels={"app": "web"})
    obj["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 9080},
                                             {"name": "admin", "containerPort": 9081}]
    if weight is not None:
        obj["metadata"]["annotations"] = {"steelyard.dev/weight": weight}
    return obj


def two_port_balancer(policy: str | None = None) -> dict[str, Any]:
    lb = load_balancer("web", port=18360, selector={"app": "web"}, target_port="http", policy=policy)
    lb["spec"]["ports"].append({"name": "admin", "port": 18361, "address": "127.0.0.1",
                                "targetPort": "admin"})
    return lb


async def one_pod_failing_its_checks(api: KubeApi, replicas: Any) -> dict[str, Any]:
    """A two-port load balancer over one pod whose checks fail on both ports (its process is down), with
    real upstream runtimes behind the leader's status; returns the status once it counts the ejection."""
    from types import SimpleNamespace

    from steelyard.runtime.upstream import UpstreamRuntime

    await call(api.create, balancer_policy("checked", healthCheck={"type": "TCP"}))
    await call(api.create, two_port_balancer("checked"))
    await call(api.create, two_port_pod("a"))
    await call(api.patch, "v1", "Pod", "a", pod_ready_status(), "default", "status")
    replica = await replicas(leader=True, identity="one", lease_duration=1.5)
    await eventually(lambda: condition(api, "web").get("status") == "True", what="Ready")
    runtimes = {key: UpstreamRuntime(upstream) for key, upstream in replica.state.upstreams.items()}
    assert len(runtimes) == 2
    for runtime in runtimes.values():
        (endpoint,) = runtime.upstream.endpoints
        for _ in range(runtime.upstream.policy.health_check.unhealthy_threshold):
            runtime.tracker.on_health_check(endpoint.id, runtime.clock(), False, "refused")
    replica.provider.attach_registry(SimpleNamespace(runtimes=runtimes))
    replica.provider._status_due.set()

    def status() -> dict[str, Any]:
        return dict((api.get(LB_API, "LoadBalancer", "web") or {}).get("status") or {})

    return dict(await eventually(lambda: status().get("endpoints", {}).get("ejected") and status(),
                                 what="the ejected count"))


async def test_ejected_endpoints_are_counted_like_ready_ones(api: KubeApi, replicas: Any) -> None:
    status = await one_pod_failing_its_checks(api, replicas)
    assert status["endpoints"] == {"ready": 1, "terminating": 0, "ejected": 1}


async def test_degraded_does_not_blame_outlier_detection_for_failing_checks(api: KubeApi,
                                                                            replicas: Any) -> None:
    status = await one_pod_failing_its_checks(api, replicas)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert "failing health checks" in degraded["message"], degraded["message"]


async def test_a_bad_weight_annotation_is_warned_about_once(api: KubeApi, replicas: Any) -> None:
    await call(api.create, two_port_balancer())
    await call(api.create, two_port_pod("a", weight="heavy"))
    await call(api.patch, "v1", "Pod", "a", pod_ready_status(), "default", "status")
    replica = await replicas()
    assert len(replica.endpoints()) == 2
    assert len(replica.report().warnings) == 1, replica.report().warnings


async def test_a_target_port_typo_is_explained_in_the_status(api: KubeApi, replicas: Any) -> None:
    await call(api.create, load_balancer("web", port=18370, selector={"app": "web"}, target_port="htp"))
    await call(ready_pod, api, "a", 9090)  # its container port is named "http"
    await replicas(leader=True, identity="one", lease_duration=1.5)
    await eventually(lambda: condition(api, "web").get("reason") == "NoEndpoints", what="status")
    said = " ".join(c.get("message", "") for c in (api.get(LB_API, "LoadBalancer", "web") or {})
                    .get("status", {}).get("conditions", ()))
    assert "htp" in said, said


async def test_leader_handover_rewrites_nothing_and_records_no_event(api: KubeApi, replicas: Any) -> None:
    await call(api.create, load_balancer("web", port=18371, selector={"app": "web"}, target_port="http"))
    await call(api.create, load_balancer("orphan", port=18372, selector={"app": "web"}, policy="nope"))
    await call(lambda: ready_pod(api, "a", 9091, weight="bad"))
    one = await replicas(leader=True, identity="one", lease_duration=1.5)
    await eventually(lambda: one.provider.leader.is_leader, what="one leads")
    two = await replicas(leader=True, identity="two", lease_duration=1.5)
    await eventually(lambda: condition(api, "web", cond="Degraded").get("reason") == "Warnings",
                     what="status")
    await eventually(lambda: condition(api, "orphan").get("reason") == "PolicyNotFound", what="status")

    def status_writes() -> list[tuple[str, str, str]]:
        return [w for w in api.writes() if w[1].endswith("/status") and "/pods/" not in w[1]]

    writes, events = len(await call(status_writes)), len(await call(api.list, "v1", "Event"))
    assert one.provider.status.writes == writes and two.provider.status.writes == 0
    await one.close()  # SIGTERM: the Lease is released, two takes over at its next try
    await eventually(lambda: two.provider.leader.is_leader, what="two leads")
    two.provider._status_due.set()
    await eventually(lambda: two.provider.status.writes == 0 and not two.provider._status_due.is_set(),
                     what="two's first status round")
    await asyncio.sleep(0.3)
    assert len(await call(status_writes)) == writes and len(await call(api.list, "v1", "Event")) == events


# -- the API server away, and back ---------------------------------------------------------------------------


async def test_the_last_state_serves_through_an_outage_and_the_changes_meanwhile_arrive(
        api: KubeApi, replicas: Any) -> None:
    from kube_support import KINDS

    slices = ("discovery.k8s.io", "v1", "endpointslices")
    await call(api.create, load_balancer("web", port=18380, service="web"))
    await call(api.create, endpoint_slice("web", [slice_endpoint(pod="a")], port=9001, name="web-1"))
    replica = await replicas()
    assert replica.endpoints() == ["127.0.0.1:9001"]
    informer = replica.provider.informers["EndpointSlice"]
    await call(api.go_away)
    await eventually(lambda: informer.errors >= 2, what="the informer failing")
    assert replica.endpoints() == ["127.0.0.1:9001"] and replica.served() == {"default/web"}

    def meanwhile() -> None:  # other clients change the cluster, then etcd compacts: a relist is due
        server = api.server
        assert server is not None
        server._delete(slices, KINDS[slices], "default", "web-1", {})
        server._create(slices, KINDS[slices], "default",
                       endpoint_slice("web", [slice_endpoint(pod="b")], port=9002, name="web-2"))
        server.expire_history()

    await call(api.call, meanwhile)
    await call(api.come_back)
    await eventually(lambda: replica.endpoints() == ["127.0.0.1:9002"], timeout=8, what="the catch-up")
    assert informer.lists == 2
