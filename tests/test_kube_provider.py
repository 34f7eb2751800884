"""The informer and the provider in process, against the test API server over real HTTP: list then watch,
resume after a dropped stream, relist on 410, back off and keep the cache while the API is away,
debounce a burst into one apply, and the leader's status writes."""

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
from steelyard.kube.client import BALANCER_POLICIES, ENDPOINT_SLICES, PODS, KubeClient, KubeError
from steelyard.kube.informer import Backoff, Informer
from steelyard.kube.provider import KubeOptions, KubeProvider


@pytest.fixture
async def client(api: KubeApi) -> AsyncIterator[KubeClient]:
    made = KubeClient.from_server(api.url)
    yield made
    await made.close()


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking test-API call off the test's loop."""
    return await asyncio.to_thread(fn, *args)


def names(informer: Informer) -> set[str]:
    return {name for _, name in informer.objects}


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Informer], None]]:
    tasks: list[asyncio.Task[None]] = []

    def start(informer: Informer) -> None:
        tasks.append(asyncio.create_task(informer.run(), name=f"test-informer-{informer.kind}"))

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_backoff_is_capped_exponential_with_jitter() -> None:
    low = Backoff(base=0.2, cap=5.0, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5, 2.5]
    high = Backoff(base=0.2, cap=5.0, rand=lambda: 1.0)
    assert [high.next_delay() for _ in range(7)][-2:] == [5.0, 5.0]
    high.reset()
    assert high.next_delay() == 0.2


async def test_lists_then_watches_from_the_lists_version(api: KubeApi, client: KubeClient,
                                                         running: Callable[[Informer], None]) -> None:
    await call(api.create, balancer_policy("a"))
    changes: list[int] = []
    informer = Informer(client, BALANCER_POLICIES, "default", on_change=lambda: changes.append(1))
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    assert names(informer) == {"a"} and informer.lists == 1
    await call(api.create, balancer_policy("b"))
    await call(api.patch, LB_API, "BalancerPolicy", "a", {"spec": {"strategy": {"type": "Random"}}})
    await eventually(lambda: informer.objects.get(("default", "a"), {}).get("spec", {}).get("strategy", {})
                     .get("type") == "Random" and names(informer) == {"a", "b"})
    await call(api.delete, LB_API, "BalancerPolicy", "b")
    await eventually(lambda: names(informer) == {"a"})
    assert informer.lists == 1  # no relist: one list, then the watch


async def test_resumes_after_a_dropped_stream_without_relisting(api: KubeApi, client: KubeClient,
                                                               running: Callable[[Informer], None]) -> None:
    informer = Informer(client, BALANCER_POLICIES, "default")
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    await eventually(lambda: api.watch_count() == 1, what="a watch")
    await call(api.drop_watches)
    await call(api.create, balancer_policy("later"))
    await eventually(lambda: names(informer) == {"later"}, what="the event after the drop")
    assert informer.lists == 1


async def test_410_gone_forces_a_relist_that_catches_up(api: KubeApi, client: KubeClient,
                                                        running: Callable[[Informer], None]) -> None:
    await call(api.create, balancer_policy("a"))
    gate = asyncio.Event()
    backing_off = asyncio.Event()

    async def gated_sleep(delay: float) -> None:
        backing_off.set()
        await gate.wait()

    informer = Informer(client, BALANCER_POLICIES, "default", sleep=gated_sleep)
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    await eventually(lambda: api.watch_count() == 1, what="a watch")
    await call(api.go_away)
    await asyncio.wait_for(backing_off.wait(), 5)
    # While the informer waits: a deleted, b created, and the history compacted past its version.
    await call(api.come_back)
    await call(api.delete, LB_API, "BalancerPolicy", "a")
    await call(api.create, balancer_policy("b"))
    await call(api.expire_history)
    gate.set()
    await eventually(lambda: names(informer) == {"b"}, timeout=10, what="the relist")
    assert informer.lists == 2


async def test_keeps_the_cache_while_the_api_is_away_and_catches_up(
        api: KubeApi, client: KubeClient, running: Callable[[Informer], None]) -> None:
    await call(api.create, pod("a", labels={"app": "web"}))
    sleeps: list[float] = []

    async def short_sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(0.05)

    informer = Informer(client, PODS, "default", sleep=short_sleep)
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    await call(api.go_away)
    await eventually(lambda: len(sleeps) >= 3, what="backing off")
    assert names(informer) == {"a"} and not informer.connected
    assert sleeps[1] > sleeps[0] or sleeps[1] >= 0.1  # growing
    await call(api.come_back)
    await call(api.create, pod("b", labels={"app": "web"}))
    await eventually(lambda: names(informer) == {"a", "b"} and informer.connected, timeout=10)


class Applied:
    def __init__(self) -> None:
        self.states: list[DesiredState] = []

    async def __call__(self, state: DesiredState) -> None:
        self.states.append(state)


def endpoints(state: DesiredState) -> list[str]:
    return sorted(e.id + ("~" if e.terminating else "")
                  for u in state.upstreams.values() for e in u.endpoints)


async def test_a_burst_of_events_is_one_apply_and_duplicates_are_dropped(api: KubeApi,
                                                                         client: KubeClient) -> None:
    await call(api.create, load_balancer("web", port=18080, service="web"))
    provider = KubeProvider(client, KubeOptions(debounce=0.2), start_leader=False)
    provider.start()
    applied = Applied()
    watcher = asyncio.create_task(provider.watch(applied))
    try:
        await asyncio.wait_for(provider.wait_synced(), 5)
        provider.current = provider.build()

        def burst() -> None:
            for i in range(5):
                api.create(endpoint_slice("web", [slice_endpoint(pod=f"p{i}")], port=9000 + i,
                                          name=f"web-{i}"))

        await call(burst)
        await eventually(lambda: applied.states, what="an apply")
        await asyncio.sleep(0.4)  # the debounce window has passed: nothing else may come
        assert len(applied.states) == 1
        assert endpoints(applied.states[0]) == [f"127.0.0.1:{9000 + i}" for i in range(5)]
        await call(api.patch, LB_API, "LoadBalancer", "web", {"metadata": {"labels": {"x": "y"}}})
        await asyncio.sleep(0.4)
        assert len(applied.states) == 1  # same state: dropped
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await provider.close()


async def test_the_leader_writes_status_and_events_and_followers_do_not(api: KubeApi) -> None:
    await call(api.create, balancer_policy("p", "LeastConnections"))
    await call(api.create, load_balancer("web", port=18081, selector={"app": "web"}, policy="p",
                                         target_port="http"))
    await call(api.create, load_balancer("orphan", port=18082, selector={"app": "x"}, policy="missing"))
    await call(api.create, pod("a", labels={"app": "web"}, port=9001))
    await call(api.patch, "v1", "Pod", "a", pod_ready_status(), "default", "status")
    providers = []
    watchers = []
    for identity in ("one", "two"):
        client = KubeClient.from_server(api.url)
        provider = KubeProvider(client, KubeOptions(identity=identity, lease_duration=3))
        provider.start()
        providers.append(provider)
    try:
        for provider in providers:
            await asyncio.wait_for(provider.wait_synced(), 5)
            provider.build()
            watchers.append(asyncio.create_task(provider.watch(Applied())))

        def status(name: str) -> dict[str, Any]:
            obj = api.get(LB_API, "LoadBalancer", name) or {}
            return dict(obj.get("status") or {})

        web = await eventually(lambda: status("web").get("strategy") and status("web"), what="web's status")
        assert web["strategy"] == "LeastConnections" and web["endpoints"] == {"ready": 1, "terminating": 0,
                                                                             "ejected": 0}
        assert web["observedGeneration"] == 1
        ready = {c["type"]: c for c in web["conditions"]}
        assert ready["Ready"]["status"] == "True" and ready["Degraded"]["status"] == "False"
        orphan = await eventually(lambda: status("orphan").get("conditions") and status("orphan"))
        orphan_ready = next(c for c in orphan["conditions"] if c["type"] == "Ready")
        assert (orphan_ready["status"], orphan_ready["reason"]) == ("False", "PolicyNotFound")
        assert "missing" in orphan_ready["message"]
        def policy_status() -> dict[str, Any]:
            return dict((api.get(LB_API, "BalancerPolicy", "p") or {}).get("status") or {})

        # the policy's status is written in the same round as, but after, the load balancers'
        policy = await eventually(lambda: policy_status().get("loadBalancers") and policy_status(),
                                  what="p's status")
        assert policy["loadBalancers"] == ["default/web"]
        events = await eventually(lambda: api.list("v1", "Event"), what="an Event")
        assert any(e["reason"] == "PolicyNotFound" and e["involvedObject"]["name"] == "orphan"
                   for e in events)
        writers = {agent for method, path, agent in api.writes() if path.endswith("/status")}
        leaders = [p for p in providers if p.leader is not None and p.leader.is_leader]
        assert len(leaders) == 1 and leaders[0].status.writes >= 2
        follower = next(p for p in providers if p is not leaders[0])
        assert follower.status.writes == 0 and writers
        # Fixing the reference: the next reason; a ready pod: Ready turns True and a recovery is recorded.
        await call(api.create, balancer_policy("missing"))

        def orphan_ready() -> tuple[str, str]:
            cond = next((c for c in status("orphan").get("conditions") or () if c["type"] == "Ready"), {})
            return cond.get("status", ""), cond.get("reason", "")

        await eventually(lambda: orphan_ready() == ("False", "NoEndpoints"), what="NoEndpoints")
        await call(api.create, pod("x", labels={"app": "x"}))
        await call(api.patch, "v1", "Pod", "x", pod_ready_status(), "default", "status")
        await eventually(lambda: orphan_ready() == ("True", "Serving"), what="Ready again")
        events = await eventually(lambda: [e["reason"] for e in api.list("v1", "Event")
                                           if e["involvedObject"]["name"] == "orphan"
                                           and e["reason"] == "Recovered"] and api.list("v1", "Event"))
        events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))  # in the order they were made
        orphan_events = [e["reason"] for e in events if e["involvedObject"]["name"] == "orphan"]
        assert orphan_events == ["PolicyNotFound", "NoEndpoints", "Recovered"]
        assert {e["type"] for e in events if e["reason"] == "Recovered"} == {"Normal"}
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for provider in providers:
            await provider.close()


class ScriptedClient:
    """A client whose list/watch answers are scripted, recording every call (the informer's contract as
    an exact sequence)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, str | None]] = []

    async def list(self, kind: Any, namespace: str | None,
                   labels: Any = None) -> tuple[list[dict[str, Any]], str]:
        self.calls.append(("list", None))
        answer = self.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def watch(self, kind: Any, namespace: str | None, resource_version: str, labels: Any = None) -> Any:
        self.calls.append(("watch", resource_version))
        answer = self.script.pop(0) if self.script else asyncio.Event()

        async def stream() -> Any:
            if isinstance(answer, asyncio.Event):
                await answer.wait()  # the end of the script: block
            if isinstance(answer, BaseException):
                raise answer
            for event in answer if isinstance(answer, list) else ():
                yield event

        return stream()


def obj(name: str, version: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(version)}}


async def test_the_informer_contract_as_an_exact_sequence_of_calls() -> None:
    from steelyard.kube.client import Gone, KubeUnavailable

    client = ScriptedClient([
        ([obj("a", 3)], "5"),                                   # list at 5
        [("ADDED", obj("b", 6)), ("MODIFIED", obj("a", 7))],    # watch from 5; the stream ends
        KubeUnavailable("connection refused"),                  # resume from 7: refused
        KubeUnavailable("connection refused"),                  # again, after backing off
        [("DELETED", obj("b", 8))],                             # resumed from 7 at last
        Gone(410, "Expired", "too old"),                        # resume from 8: compacted
        ([obj("c", 20)], "21"),                                 # relist at once, no backoff
    ])
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    informer = Informer(client, "Thing", "default", sleep=sleep, backoff=Backoff(rand=lambda: 0.0))
    task = asyncio.create_task(informer.run())
    expected = [("list", None), ("watch", "5"), ("watch", "7"), ("watch", "7"), ("watch", "7"),
                ("watch", "8"), ("list", None), ("watch", "21")]
    await eventually(lambda: client.calls == expected)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sleeps == [0.1, 0.2]  # backed off twice, growing; none before the relist
    assert names(informer) == {"c"} and informer.lists == 2 and informer.connected


async def test_a_quiet_watch_is_resumed_without_an_error(api: KubeApi, client: KubeClient,
                                                        running: Callable[[Informer], None]) -> None:
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    informer = Informer(client, BALANCER_POLICIES, "default", sleep=sleep, idle_timeout=0.2)
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    await asyncio.sleep(0.7)  # several idle timeouts
    await call(api.create, balancer_policy("late"))
    await eventually(lambda: names(informer) == {"late"})
    assert sleeps == [] and informer.errors == 0 and informer.lists == 1 and informer.connected


# -- 429 Too Many Requests ----------------------------------------------------------------------------------


def only_watches(method: str, path: str, params: Any) -> bool:
    return bool(params.get("watch") == "true")


async def test_the_informer_honours_retry_after_keeps_its_cache_and_recovers(
        api: KubeApi, client: KubeClient, running: Callable[[Informer], None]) -> None:
    await call(api.create, balancer_policy("a"))
    await call(api.throttle, 1, 45)  # the first list: told to wait 45 s, waits the cap (5 s)
    sleeps: list[float] = []
    gate = asyncio.Event()
    gate.set()

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        await gate.wait()

    informer = Informer(client, BALANCER_POLICIES, "default", sleep=sleep, max_retry_after=5,
                        backoff=Backoff(rand=lambda: 0.0))
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    assert sleeps == [5] and names(informer) == {"a"}
    await eventually(lambda: api.watch_count() == 1, what="a watch")
    gate.clear()
    await call(api.throttle, 2, 2, only_watches)  # the resumed watch: twice 429, Retry-After 2
    await call(api.drop_watches)
    await eventually(lambda: len(sleeps) == 2, what="a throttled resume")
    await call(api.create, balancer_policy("b"))
    assert names(informer) == {"a"} and informer.synced.is_set()  # the last known state keeps serving
    gate.set()
    await eventually(lambda: names(informer) == {"a", "b"}, what="the recovery")
    assert sleeps == [5, 2, 2]  # Retry-After, not the exponential backoff (0.1, 0.2, ...)
    assert informer.throttled == 3 and informer.errors == 0 and informer.lists == 1  # no relist
    assert informer.connected


async def test_a_429_carries_its_retry_after_to_the_caller(api: KubeApi, client: KubeClient) -> None:
    from steelyard.kube.client import LOAD_BALANCERS, TooManyRequests

    await call(api.throttle, 1, 3)
    with pytest.raises(TooManyRequests) as caught:
        await client.get(LOAD_BALANCERS, "web", "default")
    assert (caught.value.code, caught.value.retry_after) == (429, 3.0)
    assert await client.get(LOAD_BALANCERS, "web", "default") is None


async def test_the_status_writer_waits_out_retry_after(api: KubeApi, client: KubeClient) -> None:
    from steelyard.kube.status import StatusWriter
    from steelyard.kube.translate import ClusterObjects, translate

    await call(api.create, load_balancer("web", port=18090, selector={"app": "web"}))
    lb = await call(api.get, LB_API, "LoadBalancer", "web")
    translation = translate(ClusterObjects(load_balancers=[lb]))
    clock = [100.0]
    writer = StatusWriter(client, "me", monotonic=lambda: clock[0], max_retry_after=10)

    def status_writes() -> int:
        return sum(1 for method, path, _ in api.writes() if path.endswith("/status"))

    await call(api.throttle, 1, 7, lambda method, path, params: path.endswith("/status"))
    await writer.sync(translation, {"default/web": lb}, {})
    assert (writer.writes, writer.throttled, writer.retry_at) == (0, 1, 107.0)
    clock[0] = 106.9
    await writer.sync(translation, {"default/web": lb}, {})  # still waiting: not even a request
    assert writer.writes == 0 and len(await call(api.throttled)) == 1 and status_writes() == 0
    clock[0] = 107.0
    await writer.sync(translation, {"default/web": lb}, {})
    assert writer.writes == 1 and status_writes() == 1
    written = await call(api.get, LB_API, "LoadBalancer", "web")
    assert next(c for c in written["status"]["conditions"] if c["type"] == "Ready")["reason"] == "NoEndpoints"
    # A 429 on the Event is a courtesy lost, never an error; no write before its Retry-After either.
    await call(api.throttle, 1, 30, lambda method, path, params: method == "POST")
    await writer.event(written, "Warning", "Test", "throttled")
    assert writer.throttled == 2 and writer.retry_at == 117.0  # capped at max_retry_after


async def test_the_lease_loop_waits_retry_after_but_never_past_the_renew_deadline(
        api: KubeApi, client: KubeClient) -> None:
    from steelyard.kube.client import TooManyRequests
    from steelyard.kube.leader import LeaderElector

    clock = [1000.0]
    elector = LeaderElector(client, name="steelyard", namespace="default", identity="a", lease_duration=15,
                            renew_deadline=10, retry_period=2, monotonic=lambda: clock[0])
    busy = TooManyRequests(429, "TooManyRequests", "slow down", 5)
    assert elector.wait_after(busy) == 5  # a follower: the server's Retry-After
    assert elector.wait_after(TooManyRequests(429, "", "", 1)) == 2  # never below retry_period
    assert elector.wait_after(TooManyRequests(429, "", "", 3600)) == 30  # capped
    assert elector.wait_after(TooManyRequests(429, "", "", None)) == 2
    assert elector.wait_after(KubeError(500, "", "")) == 2
    assert await elector.try_acquire_or_renew() is True
    elector._set_leader(True)
    elector._renewed_at = clock[0]
    clock[0] += 8  # renewed 8 s ago, deadline 10 s: try again at the deadline, not 5 s later
    assert elector.wait_after(busy) == pytest.approx(2.01)


async def test_a_throttled_leader_keeps_its_lease_when_retry_after_fits_the_deadline(
        api: KubeApi, client: KubeClient) -> None:
    from steelyard.kube.leader import LeaderElector

    changes: list[bool] = []
    elector = LeaderElector(client, name="steelyard", namespace="default", identity="a", lease_duration=15,
                            renew_deadline=5, retry_period=0.1, on_change=changes.append)
    task = asyncio.create_task(elector.run())
    try:
        await eventually(lambda: elector.is_leader, what="leadership")
        before = (await call(api.get, "coordination.k8s.io/v1", "Lease", "steelyard"))["spec"]["renewTime"]
        await call(api.throttle, 2, 1, lambda method, path, params: "/leases" in path)
        await eventually(lambda: elector.throttled == 2, what="two 429s")
        await eventually(lambda: (api.get("coordination.k8s.io/v1", "Lease", "steelyard") or {})
                         .get("spec", {}).get("renewTime") != before, timeout=5, what="a renewal")
        stamps = [t for t, _, _ in await call(api.throttled)]
        assert stamps[1] - stamps[0] >= 0.9  # waited the Retry-After, not the 0.1 s retry period
        assert changes == [True] and elector.is_leader  # never stepped down
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- paginated lists ----------------------------------------------------------------------------------------


async def test_the_informer_lists_in_pages(api: KubeApi, client: KubeClient,
                                          running: Callable[[Informer], None]) -> None:
    assert client.page_size == 500  # the default: a big cluster is not one giant response
    client.page_size = 2

    def seven() -> None:
        for i in range(7):
            api.create(pod(f"p{i}", labels={"app": "web"}))

    await call(seven)
    informer = Informer(client, PODS, "default")
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    assert names(informer) == {f"p{i}" for i in range(7)} and informer.lists == 1
    pages = await call(api.list_requests)
    assert [p.get("limit") for p in pages] == ["2"] * 4
    assert ["continue" in p for p in pages] == [False, True, True, True]
    await call(api.create, pod("late", labels={"app": "web"}))  # the watch starts from the pages' version
    await eventually(lambda: "late" in names(informer))
    assert informer.lists == 1


async def test_an_expired_continue_token_relists_from_the_first_page(
        api: KubeApi, client: KubeClient, running: Callable[[Informer], None]) -> None:
    client.page_size = 2
    await call(lambda: [api.create(pod(f"p{i}", labels={"app": "web"})) for i in range(5)])
    expired: list[str] = []

    def compact_once(method: str, path: str, params: Any) -> None:
        if "continue" in params and not expired:
            expired.append(params["continue"])
            api.server.expire_history()  # type: ignore[union-attr]  # (on the server's loop)

    api.server.before = compact_once  # type: ignore[union-attr]
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    informer = Informer(client, PODS, "default", sleep=sleep)
    running(informer)
    await asyncio.wait_for(informer.synced.wait(), 5)
    assert names(informer) == {f"p{i}" for i in range(5)}
    pages = [("continue" in p) for p in await call(api.list_requests)]
    assert pages == [False, True, False, True, True]  # 410 on the 2nd page: start again, at once
    assert sleeps == [] and informer.errors == 0 and informer.lists == 1


# -- watch bookmarks ----------------------------------------------------------------------------------------


async def quiet_watch_after_compaction(api: KubeApi, client: KubeClient,
                                       running: Callable[[Informer], None]) -> list[Informer]:
    """Informers on quiet kinds; other kinds churn; a bookmark (when the server sends them); compaction;
    the streams drop. Returns the informers once the policy created after all that is seen."""
    informers = [Informer(client, BALANCER_POLICIES, "default"), Informer(client, ENDPOINT_SLICES, "default")]
    for informer in informers:
        running(informer)
        await asyncio.wait_for(informer.synced.wait(), 5)
    await eventually(lambda: api.watch_count() == 2, what="two watches")
    listed_at = informers[0].resource_version
    await call(lambda: [api.create(pod(f"p{i}", labels={"app": "web"})) for i in range(3)])  # churn elsewhere
    await call(api.send_bookmarks)
    if api.server.bookmarks:  # type: ignore[union-attr]
        current = await call(api.current_version)
        await eventually(lambda: all(i.resource_version == current for i in informers), what="the bookmarks")
    else:
        await asyncio.sleep(0.2)
        assert informers[0].resource_version == listed_at  # no event, no bookmark: the version stays
    await call(api.compact)
    await call(api.drop_watches)
    await call(api.create, balancer_policy("after"))
    await eventually(lambda: names(informers[0]) == {"after"}, what="the policy after the compaction")
    return informers


async def test_a_bookmark_lets_a_quiet_watch_resume_after_compaction_without_a_relist(
        api: KubeApi, client: KubeClient, running: Callable[[Informer], None]) -> None:
    informers = await quiet_watch_after_compaction(api, client, running)
    assert [i.lists for i in informers] == [1, 1] and [i.errors for i in informers] == [0, 0]
    assert len(await call(api.list_requests)) == 2  # one list per kind, none after the compaction


async def test_without_bookmarks_the_same_quiet_watch_needs_a_relist(
        api: KubeApi, client: KubeClient, running: Callable[[Informer], None]) -> None:
    api.server.bookmarks = False  # type: ignore[union-attr]  # allowWatchBookmarks is only a hint
    informers = await quiet_watch_after_compaction(api, client, running)
    assert informers[0].lists == 2  # 410 on resume: the whole set listed again
    await eventually(lambda: informers[1].lists == 2)
