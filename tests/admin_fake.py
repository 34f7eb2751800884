"""A small, real implementation of `AdminSource` for admin tests: in-memory endpoints with counters.

`serve()` records one finished request the way the proxy would (counters, latency histogram);
`pick()` chooses by smooth weighted round robin over usable endpoints, so explain can be checked
against what the next pick really does.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from steelyard.admin.source import (
    ConfigView,
    EndpointView,
    ProcessCounters,
    ReloadRecord,
    UpstreamView,
)
from steelyard.runtime.access_log import LatencyHistogram

if TYPE_CHECKING:
    from steelyard.admin.aggregate import AggregateSource
    from steelyard.admin.server import AdminServer


@contextlib.asynccontextmanager
async def worker_group(workers: list[FakeSource]
                       ) -> AsyncIterator[tuple[list[AdminServer], AggregateSource, AdminServer]]:
    """`--workers` in miniature, on 127.0.0.1: an admin server per fake worker, and the supervisor's public
    one over an `AggregateSource` of them."""
    from steelyard.admin.aggregate import AggregateSource
    from steelyard.admin.server import AdminServer

    servers = [AdminServer(w, "127.0.0.1", 0, tick=3600) for w in workers]
    for s in servers:
        await s.start()
    aggregate = AggregateSource([s.url for s in servers])
    public = AdminServer(aggregate, "127.0.0.1", 0, tick=3600)
    await public.start()
    try:
        yield servers, aggregate, public
    finally:
        await public.stop()
        await aggregate.close()
        for s in servers:
            await s.stop()


class Clock:
    """A clock the test moves by hand (`clock.now += 1.0`) for the admin's sampler."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeEndpoint:
    id: str
    weight: int
    override: int | None = None
    drained: bool = False
    healthy: bool = True
    requests: int = 0
    in_flight: int = 0
    responses: dict[str, int] = field(default_factory=dict)
    hist: LatencyHistogram = field(default_factory=LatencyHistogram)
    current: float = 0.0  # smooth WRR state

    @property
    def effective(self) -> float:
        if self.drained or not self.healthy:
            return 0.0
        return float(self.weight if self.override is None else self.override)


@dataclass
class FakeUpstream:
    key: str
    endpoints: dict[str, FakeEndpoint]
    requests: int = 0


class FakeSource:
    def __init__(self, upstreams: dict[str, list[tuple[str, int]]]) -> None:
        self.ups = {key: FakeUpstream(key, {eid: FakeEndpoint(eid, w) for eid, w in eps})
                    for key, eps in upstreams.items()}
        self.ready = True
        self.draining = False
        self.reload_log: list[ReloadRecord] = [ReloadRecord(at=1_700_000_000.0, ok=True, source="test.yaml",
                                                            message="applied")]
        self.retries = 0

    # -- what a test does -------------------------------------------------------------------------------

    def pick(self, key: str) -> FakeEndpoint | None:
        usable = [e for e in self.ups[key].endpoints.values() if e.effective > 0]
        if not usable:
            return None
        total = sum(e.effective for e in usable)
        for e in usable:
            e.current += e.effective
        best = max(usable, key=lambda e: e.current)
        best.current -= total
        return best

    def serve(self, key: str, status: int = 200, latency: float = 0.01) -> str | None:
        ep = self.pick(key)
        if ep is None:
            return None
        ep.requests += 1
        self.ups[key].requests += 1
        cls = f"{status // 100}xx"
        ep.responses[cls] = ep.responses.get(cls, 0) + 1
        ep.hist.observe(latency)
        return ep.id

    # -- AdminSource --------------------------------------------------------------------------------------

    def upstreams(self) -> list[UpstreamView]:
        out = []
        for up in self.ups.values():
            lb = up.key.rsplit("/", 1)[0]
            eps = tuple(
                EndpointView(id=e.id, name=e.id.split(":")[-1], healthy=e.effective > 0,
                             health="draining" if e.drained else ("healthy" if e.healthy else "unhealthy"),
                             configured_weight=e.weight, effective_weight=e.effective,
                             override_weight=e.override, drained=e.drained, in_flight=e.in_flight,
                             requests=e.requests, responses=dict(e.responses),
                             latency_counts=tuple(e.hist.counts), latency_sum=e.hist.total)
                for e in up.endpoints.values())
            out.append(UpstreamView(key=up.key, load_balancer=lb, port_name=up.key.rsplit("/", 1)[1],
                                    protocol="HTTP", strategy="WeightedRoundRobin", policy_name=None,
                                    policy={"strategy": {"type": "WeightedRoundRobin"}},
                                    listeners=("127.0.0.1:8080 HTTP",), endpoints=eps, requests=up.requests))
        return out

    def counters(self) -> ProcessCounters:
        total = sum(e.requests for u in self.ups.values() for e in u.endpoints.values())
        return ProcessCounters(requests=total, responses={"2xx": total}, retries=self.retries,
                               reloads_ok=sum(r.ok for r in self.reload_log),
                               reloads_failed=sum(not r.ok for r in self.reload_log),
                               last_reload_at=max((r.at for r in self.reload_log if r.ok), default=0.0))

    def config(self) -> ConfigView:
        return ConfigView(source="test.yaml", loaded=self.ready, document={"upstreams": list(self.ups)})

    def reloads(self) -> list[ReloadRecord]:
        return list(self.reload_log)

    def readiness(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "no configuration loaded yet"
        if self.draining:
            return False, "draining"
        return True, ""

    def set_weight(self, upstream: str, endpoint: str, weight: int | None) -> None:
        self.ups[upstream].endpoints[endpoint].override = weight

    def set_drained(self, upstream: str, endpoint: str, drained: bool) -> None:
        self.ups[upstream].endpoints[endpoint].drained = drained

    def explain(self, upstream: str, client_ip: str | None, hash_key: str | None) -> dict[str, object]:
        trial = copy.deepcopy(self.ups[upstream])  # pick on a copy: real state stays as it is
        probe = FakeSource.__new__(FakeSource)
        probe.ups = {upstream: trial}
        chosen = probe.pick(upstream)
        return {"upstream": upstream, "strategy": {"strategy": "WeightedRoundRobin"},
                "next_pick": chosen.id if chosen else None,
                "endpoints": [{"id": e.id, "effective_weight": e.effective, "current": e.current}
                              for e in self.ups[upstream].endpoints.values()]}


