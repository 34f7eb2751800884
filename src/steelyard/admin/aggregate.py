"""`--workers N`: one admin API for the whole process group.

Each worker process serves its own views at `GET /api/v1/raw` on a private loopback admin port (the
plain `AdminSource` values as JSON). The process that owns the public admin address runs an
`AggregateSource`: a poller fetches every worker's raw views once per tick and the merge below answers
the admin API, metrics and dashboard as if the group were one process:

- counters, requests, in-flight, failures, responses by class, ejections and latency histograms are
  summed (histograms merge bucket by bucket, so p50/p99 and `/metrics` stay exact);
- an endpoint is `healthy` when every worker can use it; otherwise its health reads e.g.
  `unhealthy in 1/4 workers`; the effective weight is the mean over workers;
- counters never go backwards (Prometheus would read a drop as a reset): a worker that does not answer
  still counts with its last views, and when the supervisor restarts one (its admin URL changes), the
  old process's final counts are carried into every later sum;
- ready only when every worker is ready (and every worker answered);
- operations (weight, drain, undrain) go to every worker; `explain` asks worker 1 and says so, since
  each worker balances on its own state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from steelyard.admin.source import (
    AdminSource,
    ConfigView,
    EndpointView,
    ProcessCounters,
    ReloadRecord,
    SourceUnavailable,
    UpstreamView,
)

__all__ = ["AggregateSource", "carry_counters", "carry_upstreams", "merge_counters", "merge_upstreams",
           "raw_document", "views_from_raw"]

log = logging.getLogger("steelyard.admin")


# -- serialising one worker's views -------------------------------------------------------------------------


def raw_document(source: AdminSource) -> dict[str, Any]:
    ready, why = source.readiness()
    return {
        "upstreams": [dataclasses.asdict(u) for u in source.upstreams()],
        "counters": dataclasses.asdict(source.counters()),
        "config": dataclasses.asdict(source.config()),
        "reloads": [dataclasses.asdict(r) for r in source.reloads()],
        "ready": ready, "why": why,
    }


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerViews:
    upstreams: tuple[UpstreamView, ...]
    counters: ProcessCounters
    config: ConfigView
    reloads: tuple[ReloadRecord, ...]
    ready: bool
    why: str


def _endpoint(d: dict[str, Any]) -> EndpointView:
    counts = d.get("latency_counts")
    return EndpointView(**(d | {"latency_counts": tuple(counts) if counts is not None else None}))


def _upstream(d: dict[str, Any]) -> UpstreamView:
    return UpstreamView(**(d | {"listeners": tuple(d["listeners"]),
                                "endpoints": tuple(_endpoint(e) for e in d["endpoints"])}))


def views_from_raw(doc: dict[str, Any]) -> WorkerViews:
    return WorkerViews(
        upstreams=tuple(_upstream(u) for u in doc["upstreams"]),
        counters=ProcessCounters(**doc["counters"]),
        config=ConfigView(**(doc["config"] | {"errors": tuple(doc["config"]["errors"])})),
        reloads=tuple(ReloadRecord(**(r | {"errors": tuple(r["errors"])})) for r in doc["reloads"]),
        ready=bool(doc["ready"]), why=str(doc["why"]),
    )


# -- merging ----------------------------------------------------------------------------------------------


def _sum_maps(maps: Sequence[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in maps:
        for k, v in m.items():
            out[k] = out.get(k, 0) + v
    return out


def _sum_latency(rows: Sequence[EndpointView]) -> tuple[int, ...] | None:
    """Latency histograms added bucket by bucket (None when no row has one)."""
    latency = [r.latency_counts for r in rows if r.latency_counts is not None]
    return tuple(map(sum, zip(*latency, strict=True))) if latency else None


def _merge_endpoint(rows: Sequence[EndpointView], workers: int) -> EndpointView:
    first = rows[0]
    usable = sum(1 for r in rows if r.healthy)
    if usable == workers and all(r.health == first.health for r in rows):
        health = first.health
    else:
        worst = next((r.health for r in rows if not r.healthy), first.health)
        health = f"{worst} in {workers - usable}/{workers} workers" if usable < workers else "mixed"
    return dataclasses.replace(
        first, health=health, healthy=usable == workers,
        effective_weight=sum(r.effective_weight for r in rows) / workers,
        drained=all(r.drained for r in rows), in_flight=sum(r.in_flight for r in rows),
        requests=sum(r.requests for r in rows), failures=sum(r.failures for r in rows),
        responses=_sum_maps([r.responses for r in rows]), ejections=sum(r.ejections for r in rows),
        latency_counts=_sum_latency(rows),
        latency_sum=sum(r.latency_sum for r in rows), detail={"workers": len(rows)},
    )


def merge_upstreams(per_worker: Sequence[Sequence[UpstreamView]]) -> list[UpstreamView]:
    """Upstreams and endpoints in the order worker 1 lists them, then any only others have."""
    order: dict[str, list[UpstreamView]] = {}
    for views in per_worker:
        for up in views:
            order.setdefault(up.key, []).append(up)
    workers = len(per_worker)
    merged = []
    for group in order.values():
        first = group[0]
        endpoints: dict[str, list[EndpointView]] = {}
        for up in group:
            for ep in up.endpoints:
                endpoints.setdefault(ep.id, []).append(ep)
        merged.append(dataclasses.replace(
            first, endpoints=tuple(_merge_endpoint(rows, workers) for rows in endpoints.values()),
            requests=sum(u.requests for u in group), no_endpoint=sum(u.no_endpoint for u in group),
            retries=sum(u.retries for u in group), timeouts=sum(u.timeouts for u in group),
            strategy_state={**first.strategy_state, "note": "worker 1's strategy state"}))
    return merged


def merge_counters(counters: Sequence[ProcessCounters]) -> ProcessCounters:
    fields = {f.name for f in dataclasses.fields(ProcessCounters)}
    out: dict[str, Any] = {}
    for name in fields - {"responses", "last_reload_at", "reloads_ok", "reloads_failed"}:
        out[name] = sum(getattr(c, name) for c in counters)
    out["responses"] = _sum_maps([c.responses for c in counters])
    # every worker reads the same configuration: its reloads are one event seen N times
    out["reloads_ok"] = max((c.reloads_ok for c in counters), default=0)
    out["reloads_failed"] = max((c.reloads_failed for c in counters), default=0)
    out["last_reload_at"] = max((c.last_reload_at for c in counters), default=0.0)
    return ProcessCounters(**out)


# The fields that only ever grow within one worker process: carried over when its process is gone.
_COUNTER_FIELDS = ("requests", "upstream_connect_errors", "retries", "timeouts", "connections_refused")


def carry_counters(merged: ProcessCounters, gone: Sequence[ProcessCounters]) -> ProcessCounters:
    """`merged` plus the counters (not the gauges) of processes that are no longer answering or alive."""
    if not gone:
        return merged
    extra = {name: getattr(merged, name) + sum(getattr(c, name) for c in gone) for name in _COUNTER_FIELDS}
    responses = _sum_maps([merged.responses, *(c.responses for c in gone)])
    # (every worker counts the same reloads: the most any of them, gone or not, has seen)
    reloads = {name: max(getattr(merged, name), *(getattr(c, name) for c in gone))
               for name in ("reloads_ok", "reloads_failed")}
    return dataclasses.replace(merged, **extra, **reloads, responses=responses)


def carry_upstreams(merged: Sequence[UpstreamView],
                    gone: Sequence[Sequence[UpstreamView]]) -> list[UpstreamView]:
    """`merged` with the request, failure, response, ejection and latency counts of processes no longer
    answering or alive added to the upstreams and endpoints that still exist."""
    if not gone:
        return list(merged)
    by_endpoint: dict[tuple[str, str], list[EndpointView]] = {}
    by_upstream: dict[str, list[UpstreamView]] = {}
    for views in gone:
        for up in views:
            by_upstream.setdefault(up.key, []).append(up)
            for ep in up.endpoints:
                by_endpoint.setdefault((up.key, ep.id), []).append(ep)
    out = []
    for up in merged:
        old_ups = by_upstream.get(up.key, [])
        endpoints = []
        for ep in up.endpoints:
            old = by_endpoint.get((up.key, ep.id), [])
            if old:
                ep = dataclasses.replace(
                    ep, requests=ep.requests + sum(r.requests for r in old),
                    failures=ep.failures + sum(r.failures for r in old),
                    responses=_sum_maps([ep.responses, *(r.responses for r in old)]),
                    ejections=ep.ejections + sum(r.ejections for r in old),
                    latency_counts=_sum_latency((ep, *old)),
                    latency_sum=ep.latency_sum + sum(r.latency_sum for r in old))
            endpoints.append(ep)
        out.append(dataclasses.replace(
            up, endpoints=tuple(endpoints), requests=up.requests + sum(u.requests for u in old_ups),
            no_endpoint=up.no_endpoint + sum(u.no_endpoint for u in old_ups),
            retries=up.retries + sum(u.retries for u in old_ups),
            timeouts=up.timeouts + sum(u.timeouts for u in old_ups)))
    return out


# What a worker's admin API that does not answer raises (refused, reset, timed out).
_UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError)


class AggregateSource:
    """`AdminSource` over worker admin URLs (`http://127.0.0.1:PORT`), refreshed by `poll()`."""

    def __init__(self, worker_urls: list[str], token: str | None = None, timeout: float = 2.0) -> None:
        self.urls = worker_urls  # shared with the supervisor, which updates it when a worker restarts
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.views: list[WorkerViews | None] = [None] * len(self.urls)  # None: did not answer the last poll
        self.last: list[WorkerViews | None] = [None] * len(self.urls)  # the last answer of each worker
        self.polled: list[str] = list(self.urls)  # the URL each `last` came from
        self.retired: list[WorkerViews] = []  # final answers of worker processes since replaced
        self.silent: set[int] = set()  # workers whose last poll failed (logged once until they answer)
        self.stopping = False  # set by the supervisor on SIGTERM: not ready from that moment
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def poll(self) -> None:
        """Fetch every worker's views at once; a worker that does not answer shows as not ready."""
        if len(self.views) != len(self.urls):
            self.views = [None] * len(self.urls)
            self.last = [None] * len(self.urls)
            self.polled = list(self.urls)
        for i, url in enumerate(self.urls):
            if url != self.polled[i]:  # the supervisor replaced worker i: its old counts are final
                old = self.last[i]
                if old is not None:
                    self.retired.append(old)
                self.last[i] = None
                self.polled[i] = url

        async def one(i: int, url: str) -> None:
            try:
                async with self._client().get(url + "/api/v1/raw") as resp:
                    resp.raise_for_status()
                    self.views[i] = self.last[i] = views_from_raw(await resp.json())
                if i in self.silent:
                    self.silent.discard(i)
                    log.info("worker %d admin %s answers again", i + 1, url)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                if i not in self.silent:  # once per silence, not once per poll
                    self.silent.add(i)
                    log.warning("worker %d admin %s did not answer: %s", i + 1, url, exc)
                self.views[i] = None
        await asyncio.gather(*(one(i, u) for i, u in enumerate(self.urls)))

    def _known(self) -> list[WorkerViews]:
        return [v for v in self.views if v is not None]

    def _gone(self) -> list[WorkerViews]:
        """Counts no live answer includes: retired processes, and workers silent since their last answer."""
        silent = [last for view, last in zip(self.views, self.last, strict=True) if view is None and last]
        return self.retired + silent

    def upstreams(self) -> list[UpstreamView]:
        known = self._known()
        merged = merge_upstreams([v.upstreams for v in known]) if known else []
        return carry_upstreams(merged, [v.upstreams for v in self._gone()])

    def counters(self) -> ProcessCounters:
        return carry_counters(merge_counters([v.counters for v in self._known()]),
                              [v.counters for v in self._gone()])

    def config(self) -> ConfigView:
        known = self._known()
        return known[0].config if known else ConfigView(source="", loaded=False)

    def reloads(self) -> list[ReloadRecord]:
        known = self._known()
        return list(known[0].reloads) if known else []

    def readiness(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "shutting down: the workers are stopping"
        missing = [i for i, v in enumerate(self.views) if v is None]
        if missing:
            return False, f"worker(s) {', '.join(str(i + 1) for i in missing)} not answering"
        not_ready = [(i, v.why) for i, v in enumerate(self.views) if v is not None and not v.ready]
        if not_ready:
            return False, "; ".join(f"worker {i + 1}: {why}" for i, why in not_ready)
        return True, ""

    async def _broadcast(self, path: str, body: dict[str, Any]) -> None:
        async def one(index: int, url: str) -> str | None:
            try:
                async with self._client().post(url + path, json=body) as resp:
                    if resp.status >= 400:
                        raise LookupError((await resp.json()).get("error", f"worker answered {resp.status}"))
            except _UNREACHABLE as exc:
                return f"worker {index + 1} ({exc.__class__.__name__})"
            return None
        missed = [m for m in await asyncio.gather(*(one(i, u) for i, u in enumerate(self.urls))) if m]
        await self.poll()
        if missed:
            raise SourceUnavailable(f"not applied in {', '.join(missed)}, which did not answer; the other "
                                    "workers applied it")

    async def set_weight(self, upstream: str, endpoint: str, weight: int | None) -> None:
        await self._broadcast(f"/api/v1/endpoints/{upstream}/{endpoint}/weight", {"weight": weight})

    async def set_drained(self, upstream: str, endpoint: str, drained: bool) -> None:
        await self._broadcast(f"/api/v1/endpoints/{upstream}/{endpoint}/{'drain' if drained else 'undrain'}",
                              {})

    async def explain(self, upstream: str, client_ip: str | None, hash_key: str | None) -> dict[str, object]:
        """Worker 1's answer: each worker balances on its own state, so this is one worker's next pick."""
        params = {"lb": upstream, "client_ip": client_ip or "", "hash_key": hash_key or ""}
        try:
            async with self._client().get(self.urls[0] + "/api/v1/explain", params=params) as resp:
                doc = await resp.json()
        except _UNREACHABLE as exc:
            raise SourceUnavailable(f"worker 1 did not answer ({exc.__class__.__name__})") from None
        if resp.status >= 400:
            raise LookupError(doc.get("error", f"worker answered {resp.status}"))
        answer: dict[str, object] = doc["upstreams"][0]
        answer["note"] = f"worker 1 of {len(self.urls)}; every worker balances on its own state"
        return answer
