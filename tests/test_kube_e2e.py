"""End to end in "Kubernetes": real `steelyard run --kubernetes` processes against the test API server
(`kube_support`), Pods and EndpointSlices pointing at real `steelyard backend` processes, real HTTP through
the proxy, all on 127.0.0.1. The test plays the cluster's controllers: it marks pods ready (the kubelet),
writes EndpointSlices (the EndpointSlice controller), and deletes and finally removes pods.

Every wait has a deadline and polls a condition a user could see (traffic, status, the Lease, a log line).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from e2e_support import BackendProcess, Process, backends, free_port, load, require, sequence
from kube_support import (
    LB_API,
    KubeApi,
    balancer_policy,
    endpoint_slice,
    load_balancer,
    pod,
    pod_ready_status,
    slice_endpoint,
    wait_until,
)

pytestmark = pytest.mark.slow

class KubeSteelyard(Process):
    """`steelyard run --kubernetes --server URL` with its own identity (POD_NAME)."""

    def __init__(self, api: KubeApi, name: str = "steelyard") -> None:
        super().__init__(["run", "--kubernetes", "--server", api.url, "--admin", "off",
                          "--drain-timeout", "5s", "--lease-duration", "3s"], name, env={"POD_NAME": name})

    def ready(self, timeout: float = 30.0) -> KubeSteelyard:
        self.wait_for(r"steelyard ready", timeout)
        return self


def add_pod(api: KubeApi, name: str, backend: BackendProcess, *, labels: dict[str, str] | None = None,
            weight: int | None = None) -> None:
    """Create the pod (its container port named `http` is the backend's port) and mark it Ready."""
    api.create(pod(name, labels=labels or {"app": "web"}, port=backend.port, weight=weight))
    api.patch("v1", "Pod", name, pod_ready_status(), subresource="status")


def seen(port: int, count: int = 8) -> list[str]:
    try:
        return sequence(port, count)
    except (OSError, ConnectionError):
        return []


def wait_serving(port: int, expected: set[str], timeout: float = 10.0) -> None:
    """Until `count` requests in a row are answered by exactly the backends in `expected`."""
    wait_until(lambda: set(seen(port, 4 * max(1, len(expected)))) == expected, timeout,
               what=f"traffic to exactly {sorted(expected)}")


def lb_status(api: KubeApi, name: str = "web") -> dict[str, Any]:
    return dict((api.get(LB_API, "LoadBalancer", name) or {}).get("status") or {})


def ready_condition(status: dict[str, Any]) -> tuple[str, str]:
    cond = next((c for c in status.get("conditions") or () if c["type"] == "Ready"), {})
    return cond.get("status", ""), cond.get("reason", "")


def lease_holder(api: KubeApi) -> str | None:
    lease = api.get("coordination.k8s.io/v1", "Lease", "steelyard") or {}
    return (lease.get("spec") or {}).get("holderIdentity")


def test_create_then_traffic_flows_with_the_policys_strategy(api: KubeApi) -> None:
    require(strategies=["WeightedRoundRobin"])
    with backends("a", "b", "c") as bs:
        port = free_port()
        for name, weight in (("a", 5), ("b", 1), ("c", 1)):
            add_pod(api, name, bs[name], weight=weight)
        api.create(balancer_policy("weighted", "WeightedRoundRobin"))
        api.create(load_balancer("web", port=port, selector={"app": "web"}, policy="weighted",
                                 target_port="http"))
        proxy = KubeSteelyard(api).ready()
        try:
            assert Counter(sequence(port, 14)) == {"a": 10, "b": 2, "c": 2}
            # The status the CRD's printer columns show: .status.strategy and .status.endpoints.ready.
            status = wait_until(lambda: lb_status(api).get("strategy") and lb_status(api))
            assert status["strategy"] == "WeightedRoundRobin"
            assert status["endpoints"] == {"ready": 3, "terminating": 0, "ejected": 0}
            assert ready_condition(status) == ("True", "Serving")
            assert status["observedGeneration"] == 1
        finally:
            proxy.stop()


Serving = tuple[dict[str, BackendProcess], int, KubeSteelyard]


@contextlib.contextmanager
def web_serving_a(api: KubeApi, *names: str) -> Iterator[Serving]:
    """Backends `names`, pod "a" behind LoadBalancer "web" (selector app=web), and a ready Steelyard."""
    with backends(*names) as bs:
        port = free_port()
        add_pod(api, "a", bs["a"])
        api.create(load_balancer("web", port=port, selector={"app": "web"}, target_port="http"))
        proxy = KubeSteelyard(api).ready()
        try:
            yield bs, port, proxy
        finally:
            proxy.stop()


def test_scale_up_and_down(api: KubeApi) -> None:
    require()
    with web_serving_a(api, "a", "b", "c") as (bs, port, proxy):
        assert set(sequence(port, 4)) == {"a"}
        add_pod(api, "b", bs["b"])
        add_pod(api, "c", bs["c"])
        wait_serving(port, {"a", "b", "c"})
        api.delete("v1", "Pod", "a", grace=0)
        api.delete("v1", "Pod", "b", grace=0)
        wait_serving(port, {"c"})
        wait_until(lambda: lb_status(api).get("endpoints", {}).get("ready") == 1, what="ready: 1")


def test_a_terminating_endpoint_drains_and_is_the_last_resort(api: KubeApi) -> None:
    require()
    with backends("a", "b") as bs:
        port = free_port()
        for name in ("a", "b"):
            api.create(endpoint_slice("web", [slice_endpoint(pod=name)], port=bs[name].port,
                                      name=f"web-{name}"))
        api.create({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"ports": [{"name": "http", "port": 80}]}})
        api.create(load_balancer("web", port=port, service="web"))
        proxy = KubeSteelyard(api).ready()
        try:
            assert set(sequence(port, 4)) == {"a", "b"}
            # a is terminating but still serving: no new requests while b is ready (KEP-1669).
            api.patch("discovery.k8s.io/v1", "EndpointSlice", "web-a",
                      {"endpoints": [slice_endpoint(ready=False, serving=True, terminating=True, pod="a")]})
            wait_serving(port, {"b"})
            assert set(sequence(port, 20)) == {"b"}
            drained = {"ready": 1, "terminating": 1, "ejected": 0}
            wait_until(lambda: lb_status(api).get("endpoints") == drained)
            # b goes away: the terminating a is used rather than nothing.
            api.patch("discovery.k8s.io/v1", "EndpointSlice", "web-b",
                      {"endpoints": [slice_endpoint(ready=False, serving=False, terminating=True, pod="b")]})
            wait_serving(port, {"a"})
            wait_until(lambda: ready_condition(lb_status(api)) == ("False", "OnlyTerminatingEndpoints"))
        finally:
            proxy.stop()


def test_the_policy_changes_strategy_live(api: KubeApi) -> None:
    require(strategies=["WeightedRoundRobin"])
    with backends("a", "b") as bs:
        port = free_port()
        add_pod(api, "a", bs["a"], weight=3)
        add_pod(api, "b", bs["b"], weight=1)
        api.create(balancer_policy("p", "RoundRobin"))
        api.create(load_balancer("web", port=port, selector={"app": "web"}, policy="p", target_port="http"))
        proxy = KubeSteelyard(api).ready()
        try:
            assert Counter(sequence(port, 8)) == {"a": 4, "b": 4}  # round robin ignores weights
            api.patch(LB_API, "BalancerPolicy", "p", {"spec": {"strategy": {"type": "WeightedRoundRobin"}}})
            wait_until(lambda: Counter(seen(port, 8)) == {"a": 6, "b": 2}, what="weighted 3:1")
            wait_until(lambda: lb_status(api).get("strategy") == "WeightedRoundRobin")
        finally:
            proxy.stop()


def test_a_bad_reference_is_ready_false_with_a_reason_and_others_keep_serving(api: KubeApi) -> None:
    require()
    with backends("a") as bs:
        port, other_port = free_port(), free_port()
        add_pod(api, "a", bs["a"])
        api.create(load_balancer("web", port=port, selector={"app": "web"}, target_port="http"))
        api.create(load_balancer("broken", port=other_port, selector={"app": "web"}, policy="nope",
                                 target_port="http"))
        proxy = KubeSteelyard(api).ready()
        try:
            assert set(sequence(port, 4)) == {"a"}
            status = wait_until(lambda: lb_status(api, "broken").get("conditions")
                                and lb_status(api, "broken"))
            assert ready_condition(status) == ("False", "PolicyNotFound")
            message = next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
            assert "nope" in message
            assert "strategy" not in status
            assert seen(other_port, 1) == []  # not served: nothing listens there
            events = api.list("v1", "Event")
            assert any(e["reason"] == "PolicyNotFound" and e["type"] == "Warning" for e in events)
            api.create(balancer_policy("nope"))  # fixed: it serves, and says so
            wait_serving(other_port, {"a"})
            wait_until(lambda: ready_condition(lb_status(api, "broken")) == ("True", "Serving"))
        finally:
            proxy.stop()


def test_the_api_goes_away_traffic_continues_then_it_catches_up(api: KubeApi) -> None:
    require()
    with web_serving_a(api, "a", "b") as (bs, port, proxy):
        assert set(sequence(port, 4)) == {"a"}
        mark = proxy.mark()
        api.go_away()
        proxy.wait_for(r"not answering", 10, mark)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the last known state keeps serving
            assert set(sequence(port, 4)) == {"a"}
        api.come_back()
        add_pod(api, "b", bs["b"])
        wait_serving(port, {"a", "b"}, timeout=15)
        assert proxy.proc.poll() is None


def test_410_gone_forces_a_relist(api: KubeApi) -> None:
    require()
    with web_serving_a(api, "a", "b") as (bs, port, proxy):
        wait_until(lambda: api.watch_count() >= 5, what="five watches")
        mark = proxy.mark()
        api.expire_history()
        proxy.wait_for(r"Pod: watch from resourceVersion \d+: .*relisting", 10, mark)
        add_pod(api, "b", bs["b"])
        wait_serving(port, {"a", "b"})


def test_two_replicas_only_the_leader_writes_status_and_the_other_takes_over(api: KubeApi) -> None:
    require()
    with backends("a", "b", "c") as bs:
        port = free_port()
        add_pod(api, "a", bs["a"])
        api.create(load_balancer("web", port=port, selector={"app": "web"}, target_port="http"))
        one = KubeSteelyard(api, "one").ready()
        two: KubeSteelyard | None = None
        try:
            one.wait_for(r"one is now the leader")
            two = KubeSteelyard(api, "two").ready()
            assert lease_holder(api) == "one"
            mark_one, mark_two = one.mark(), two.mark()
            add_pod(api, "b", bs["b"])
            wait_until(lambda: lb_status(api).get("endpoints", {}).get("ready") == 2, what="ready: 2")
            one.wait_for(r"status of LoadBalancer default/web written", 5, mark_one)
            assert "status of" not in "\n".join(two.lines[mark_two:])  # every replica serves, one writes
            wait_serving(port, {"a", "b"})
            one.signal(signal.SIGTERM)  # releases the Lease: no waiting for it to expire
            stopped_at = time.monotonic()
            assert one.wait(15) == 0
            two.wait_for(r"two (is now the leader|took over)", 5)
            assert time.monotonic() - stopped_at < 3.0  # well under the 3s lease duration after the exit
            wait_until(lambda: lease_holder(api) == "two")
            add_pod(api, "c", bs["c"])
            wait_until(lambda: lb_status(api).get("endpoints", {}).get("ready") == 3, what="ready: 3")
            two.wait_for(r"status of LoadBalancer default/web written", 5)
            wait_serving(port, {"a", "b", "c"})
        finally:
            one.stop()
            if two is not None:
                two.stop()


def test_rolling_replacement_of_every_backend_under_load_fails_no_request(api: KubeApi) -> None:
    """No preStop sleep: the pod is deleted and its process gets SIGTERM at the same moment, as the
    kubelet does. Terminating endpoints get no new requests, and the retry on connect-failure/reset
    covers the moments before the deletion is seen."""
    require()
    with backends("old-0", "old-1", "old-2") as olds:
        port = free_port()
        for name, backend in olds.items():
            add_pod(api, name, backend)
        api.create(balancer_policy("p", "RoundRobin"))
        api.create(load_balancer("web", port=port, selector={"app": "web"}, policy="p", target_port="http"))
        proxy = KubeSteelyard(api).ready()
        news: list[BackendProcess] = []

        async def scenario() -> Any:
            stop = asyncio.Event()
            running = asyncio.create_task(load(port, connections=4, until=stop, max_requests=30000))
            await asyncio.sleep(0.3)
            for i, (old_name, old) in enumerate(olds.items()):
                new = await asyncio.to_thread(BackendProcess, f"new-{i}")
                news.append(new)
                await asyncio.to_thread(add_pod, api, f"new-{i}", new)
                await asyncio.to_thread(wait_until, lambda n=f"new-{i}": n in seen(port, 8), 10.0, "new pod")
                await asyncio.to_thread(api.delete, "v1", "Pod", old_name)  # terminating (graceful)
                old.signal(signal.SIGTERM)  # at the same moment, no preStop sleep
                await asyncio.to_thread(old.wait, 10)
                await asyncio.to_thread(api.finish_pod_deletion, old_name)
            await asyncio.sleep(0.3)
            stop.set()
            return await running

        try:
            result = asyncio.run(scenario())
            assert result.errors == [] and result.non_2xx == 0, (result.statuses, result.errors[:5])
            assert result.total > 200
            assert set(seen(port, 6)) == {"new-0", "new-1", "new-2"}
        finally:
            proxy.stop()
            for new in news:
                new.stop()


def test_an_endpoint_out_of_rotation_is_counted_and_degraded(api: KubeApi) -> None:
    require(health=True)
    with backends("a", "b") as bs:
        port = free_port()
        add_pod(api, "a", bs["a"])
        add_pod(api, "b", bs["b"])
        api.create(balancer_policy("checked", healthCheck={
            "type": "HTTP", "path": "/healthz", "interval": "100ms", "timeout": "500ms",
            "healthyThreshold": 1, "unhealthyThreshold": 1}))
        api.create(load_balancer("web", port=port, selector={"app": "web"}, policy="checked",
                                 target_port="http"))
        proxy = KubeSteelyard(api).ready()
        try:
            wait_serving(port, {"a", "b"})
            bs["b"].control(healthy=False)
            wait_serving(port, {"a"})
            status = wait_until(lambda: lb_status(api).get("endpoints", {}).get("ejected") == 1
                                and lb_status(api), timeout=10, what="ejected: 1")
            degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
            assert (degraded["status"], degraded["reason"]) == ("True", "EndpointsEjected")
            assert ready_condition(status) == ("True", "Serving")
        finally:
            proxy.stop()
