"""Leader election with a Lease against the test API server over HTTP: acquire, renew, follow, expire,
release, and the 409 that settles a race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kube_support import KubeApi, eventually
from steelyard.kube.client import KubeClient
from steelyard.kube.leader import LeaderElector

LEASE = "coordination.k8s.io/v1"


@pytest.fixture
async def clients(api: KubeApi) -> AsyncIterator[list[KubeClient]]:
    made = [KubeClient.from_server(api.url) for _ in range(3)]
    yield made
    for client in made:
        await client.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(client: KubeClient, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(client, name="steelyard", namespace="default", identity=identity, lease_duration=15,
                         monotonic=clock)


async def test_first_acquires_second_follows_and_renewal_keeps_it(api: KubeApi,
                                                                   clients: list[KubeClient]) -> None:
    clock = Clock()
    a, b = elector(clients[0], "a", clock), elector(clients[1], "b", clock)
    assert await a.try_acquire_or_renew() is True
    assert await b.try_acquire_or_renew() is False and b.holder == "a"
    first = api.get(LEASE, "Lease", "steelyard")
    assert first is not None and first["spec"]["holderIdentity"] == "a"
    clock.now += 10
    assert await a.try_acquire_or_renew() is True  # renews: the Lease changes
    clock.now += 10  # 20s since b first looked, but the Lease changed 10s ago: not expired
    assert await b.try_acquire_or_renew() is False
    renewed = api.get(LEASE, "Lease", "steelyard")
    assert renewed is not None
    assert renewed["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    assert renewed["spec"]["leaseTransitions"] == 0


async def test_an_expired_lease_is_taken_over_by_local_observation(api: KubeApi,
                                                                   clients: list[KubeClient]) -> None:
    clock = Clock()
    a, b = elector(clients[0], "a", clock), elector(clients[1], "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 14.9
    assert not await b.try_acquire_or_renew()
    clock.now += 0.2  # a has not renewed for the lease duration, as b's clock sees it
    assert await b.try_acquire_or_renew()
    lease = api.get(LEASE, "Lease", "steelyard")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew()  # a comes back: it sees b's Lease, fresh for it


async def test_release_hands_over_at_once(api: KubeApi, clients: list[KubeClient]) -> None:
    clock = Clock()
    changes: list[bool] = []
    a = LeaderElector(clients[0], name="steelyard", namespace="default", identity="a", monotonic=clock,
                      retry_period=0.05, on_change=changes.append)
    b = elector(clients[1], "b", clock)
    task = asyncio.create_task(a.run())
    try:
        await eventually(lambda: a.is_leader, 2.0, "a to lead")
        assert a.is_leader and changes == [True]
        assert not await b.try_acquire_or_renew()
        await a.release()
        assert changes == [True, False]
        await asyncio.wait_for(task, 2)  # its loop ends: it must not take the Lease back meanwhile
        assert not await a.try_acquire_or_renew()
        assert await b.try_acquire_or_renew()  # no waiting for expiry
        assert changes == [True, False]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_race_is_settled_by_the_resource_version(api: KubeApi, clients: list[KubeClient]) -> None:
    clock = Clock()
    a, b, c = (elector(clients[i], name, clock) for i, name in enumerate("abc"))
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew() and not await c.try_acquire_or_renew()
    clock.now += 16
    results = await asyncio.gather(b.try_acquire_or_renew(), c.try_acquire_or_renew())
    assert sorted(results) == [False, True]  # both read the same version; one PUT wins, the other gets 409


async def test_the_leader_steps_down_when_it_cannot_renew(api: KubeApi, clients: list[KubeClient]) -> None:
    clock = Clock()
    a = LeaderElector(clients[0], name="steelyard", namespace="default", identity="a", monotonic=clock,
                      retry_period=0.05, renew_deadline=10)
    task = asyncio.create_task(a.run())
    try:
        await eventually(lambda: a.is_leader, 2.0, "a to lead")
        assert a.is_leader
        await asyncio.to_thread(api.go_away)
        await asyncio.sleep(0.2)
        assert a.is_leader  # within the renew deadline: still the leader
        clock.now += 11
        await eventually(lambda: not a.is_leader, 2.0, "a to step down")
        assert not a.is_leader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(api.come_back)
