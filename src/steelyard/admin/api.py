"""The JSON API under /api/v1: documents built from `AdminSource` values, and the runtime operations.

Read endpoints:
  GET  /api/v1/state          everything the dashboard shows (also pushed by /api/v1/events every second)
  GET  /api/v1/loadbalancers  load balancers with policy, listeners and endpoints
  GET  /api/v1/endpoints      one row per (upstream, endpoint)
  GET  /api/v1/config         the configuration in effect and its source
  GET  /api/v1/reloads        recent reload results
  GET  /api/v1/history        per-second requests per endpoint over the last minutes (the share chart)
  GET  /api/v1/explain?lb=NAME&client_ip=IP&hash_key=KEY
Operations (JSON body; the Content-Type must be application/json, so a cross-site page cannot send one
without a CORS preflight that this server never grants):
  POST /api/v1/endpoints/{lb}/{endpoint}/weight   {"weight": N}  (null: back to the configured weight)
  POST /api/v1/endpoints/{lb}/{endpoint}/drain
  POST /api/v1/endpoints/{lb}/{endpoint}/undrain
`{lb}` is `namespace/name/port`, `namespace/name` (every port) or a bare name when unambiguous;
`{endpoint}` is `host:port` or the endpoint's name.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from steelyard.admin.source import (
    AdminSource,
    EndpointView,
    SourceUnavailable,
    UpstreamView,
    resolve_upstreams,
)
from steelyard.admin.stats import Sampler

__all__ = ["StateBuilder", "add_routes"]

RELOADS_SHOWN = 20
MAX_WEIGHT = 1000  # the resource model's bound for a configured weight


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _rate(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class StateBuilder:
    """Turns the source's values plus the sampler's rates and quantiles into JSON documents."""

    def __init__(self, source: AdminSource, sampler: Sampler, wall_clock: Any) -> None:
        self.source = source
        self.sampler = sampler
        self.wall_clock = wall_clock

    def endpoint_doc(self, up: UpstreamView, ep: EndpointView) -> dict[str, object]:
        s = self.sampler
        return {
            "id": ep.id, "name": ep.name, "health": ep.health, "healthy": ep.healthy,
            "configured_weight": ep.configured_weight, "effective_weight": round(ep.effective_weight, 3),
            "override_weight": ep.override_weight, "drained": ep.drained, "in_flight": ep.in_flight,
            "requests": ep.requests, "requests_per_second": _rate(s.rate(up.key, ep.id)),
            "p50_ms": _ms(s.latency_quantile(up.key, ep.id, 0.5)),
            "p99_ms": _ms(s.latency_quantile(up.key, ep.id, 0.99)),
            "failures": ep.failures, "responses": dict(ep.responses), "ejections": ep.ejections,
            "detail": dict(ep.detail),
        }

    def upstream_doc(self, up: UpstreamView) -> dict[str, object]:
        rates = [self.sampler.rate(up.key, ep.id) for ep in up.endpoints]
        known = [r for r in rates if r is not None]
        return {
            "key": up.key, "port": up.port_name, "protocol": up.protocol, "strategy": up.strategy,
            "policy_name": up.policy_name, "listeners": list(up.listeners), "requests": up.requests,
            "requests_per_second": _rate(sum(known)) if known else None, "no_endpoint": up.no_endpoint,
            "retries": up.retries, "timeouts": up.timeouts,
            "strategy_state": dict(up.strategy_state),
            "endpoints": [self.endpoint_doc(up, ep) for ep in up.endpoints],
        }

    def load_balancers(self, upstreams: Sequence[UpstreamView] | None = None) -> list[dict[str, object]]:
        ups = self.source.upstreams() if upstreams is None else upstreams
        lbs: dict[str, list[UpstreamView]] = {}
        for up in ups:
            lbs.setdefault(up.load_balancer, []).append(up)
        return [{"name": name, "upstreams": [self.upstream_doc(u) for u in group]}
                for name, group in sorted(lbs.items())]

    def policies(self, upstreams: Sequence[UpstreamView]) -> dict[str, object]:
        return {up.key: dict(up.policy) for up in upstreams}

    def reloads(self) -> list[dict[str, object]]:
        recent = list(self.source.reloads())[-RELOADS_SHOWN:]
        return [dataclasses.asdict(r) | {"errors": list(r.errors)} for r in reversed(recent)]

    def state(self) -> dict[str, object]:
        ready, why = self.source.readiness()
        cfg = self.source.config()
        counters = dataclasses.asdict(self.source.counters())
        return {
            "time": self.wall_clock(), "ready": ready, "not_ready_reason": why or None,
            "config": {"source": cfg.source, "loaded": cfg.loaded, "errors": list(cfg.errors)},
            "counters": counters, "load_balancers": self.load_balancers(), "reloads": self.reloads(),
        }


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data: object) -> str:
    import json

    def default(o: object) -> object:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return str(o)

    return json.dumps(data, default=default, allow_nan=False)


def error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


def add_routes(app: web.Application, builder: StateBuilder) -> None:
    source = builder.source
    r = app.router

    async def state(_: web.Request) -> web.Response:
        return _json(builder.state())

    async def load_balancers(_: web.Request) -> web.Response:
        ups = source.upstreams()
        lbs = builder.load_balancers(ups)
        policies = builder.policies(ups)
        for lb in lbs:
            for up in lb["upstreams"]:  # type: ignore[attr-defined]
                up["policy"] = policies.get(up["key"])
        return _json({"load_balancers": lbs})

    async def endpoints(_: web.Request) -> web.Response:
        rows = [{"load_balancer": up.load_balancer, "upstream": up.key} | builder.endpoint_doc(up, ep)
                for up in source.upstreams() for ep in up.endpoints]
        return _json({"endpoints": rows})

    async def config(_: web.Request) -> web.Response:
        cfg = source.config()
        return _json({"source": cfg.source, "loaded": cfg.loaded, "document": cfg.document,
                      "errors": list(cfg.errors)})

    async def reloads(_: web.Request) -> web.Response:
        return _json({"reloads": builder.reloads()})

    async def history(_: web.Request) -> web.Response:
        return _json({"upstreams": builder.sampler.share_history()})

    async def raw(_: web.Request) -> web.Response:
        """This process's plain views, for the --workers aggregate (see aggregate.py)."""
        from steelyard.admin.aggregate import raw_document

        return _json(raw_document(source))

    async def explain(request: web.Request) -> web.Response:
        name = request.query.get("lb", "")
        if not name:
            return error(400, "explain needs ?lb=NAME (namespace/name, or namespace/name/port)")
        matches = resolve_upstreams(source.upstreams(), name)
        if not matches:
            return error(404, f"no load balancer {name!r}")
        client_ip = request.query.get("client_ip") or None
        hash_key = request.query.get("hash_key") or None
        answers = []
        try:
            for up in matches:
                answer = source.explain(up.key, client_ip, hash_key)
                answers.append(await answer if inspect.isawaitable(answer) else answer)
        except LookupError as exc:
            return error(404, str(exc))
        except SourceUnavailable as exc:
            return error(503, str(exc))
        return _json({"load_balancer": name, "client_ip": client_ip, "hash_key": hash_key,
                      "upstreams": answers})

    async def operate(request: web.Request) -> web.Response:
        info = request.match_info
        name, endpoint, op = info["lb"], info["endpoint"], info["op"]
        if request.content_type != "application/json":
            return error(415, "send operations with Content-Type: application/json")
        try:
            body = await request.json() if request.can_read_body else {}
        except (ValueError, RecursionError):  # (RecursionError: brackets nested thousands deep)
            return error(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        weight: int | None = None
        if op == "weight":
            if "weight" not in body:
                return error(400, 'weight needs a body like {"weight": 3} (null resets it)')
            raw = body["weight"]
            if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int)
                                    or not 0 <= raw <= MAX_WEIGHT):
                return error(400, f"weight must be an integer from 0 to {MAX_WEIGHT}, or null")
            weight = raw
        ups = resolve_upstreams(source.upstreams(), name)
        if not ups:
            return error(404, f"no load balancer {name!r}")
        touched = []
        for up in ups:
            for ep in up.endpoints:
                if endpoint in (ep.id, ep.name):
                    try:
                        done = (source.set_weight(up.key, ep.id, weight) if op == "weight"
                                else source.set_drained(up.key, ep.id, op == "drain"))
                        if inspect.isawaitable(done):
                            await done
                    except LookupError as exc:  # gone by a reload since the list was read
                        return error(404, str(exc))
                    except SourceUnavailable as exc:  # (applied where it could be: say so, and where not)
                        return error(503, str(exc))
                    touched.append((up.key, ep.id))
        if not touched:
            return error(404, f"load balancer {name!r} has no endpoint {endpoint!r}")
        now = {(u.key, e.id): (u, e) for u in source.upstreams() for e in u.endpoints}
        rows = [{"upstream": key} | builder.endpoint_doc(*now[(key, eid)]) for key, eid in touched
                if (key, eid) in now]
        return _json({"operation": op, "endpoints": rows})

    r.add_get("/api/v1/state", state)
    r.add_get("/api/v1/loadbalancers", load_balancers)
    r.add_get("/api/v1/endpoints", endpoints)
    r.add_get("/api/v1/config", config)
    r.add_get("/api/v1/reloads", reloads)
    r.add_get("/api/v1/history", history)
    r.add_get("/api/v1/raw", raw)
    r.add_get("/api/v1/explain", explain)
    r.add_post(r"/api/v1/endpoints/{lb:.+}/{endpoint:[^/]+}/{op:weight|drain|undrain}", operate)
