"""One upstream's live balancing state: the endpoint tracker, the strategy, and the pick/done loop.

An `UpstreamRuntime` lives as long as its `Upstream.key` exists; a reload calls `update()` and the
state of endpoints that stay (health, ejections, strategy counters, EWMA) is kept. The proxy calls
`pick()` per request (HTTP) or per connection (TCP) and reports the outcome through the returned
`Attempt` exactly once (gRPC's Done callback): that one report feeds the strategy (`on_done`), the
tracker (outlier detection, dynamic weights) and the counters the admin API reads.

The strategy only ever sees `tracker.usable()`; `refresh()` re-reads it when an outcome, a health
check or the passage of time (`next_change_at`) may have changed it, never per pick.

`refresh()` is also where state transitions are logged (logger `steelyard.upstream`), one line each: an
endpoint DOWN or UP again (health checks), ejected or back (outlier detection), drained or re-weighted by an
operator, and the upstream left with no usable endpoint or usable again. Only when the tracker's
`generation` moved are the endpoints' looks compared, so nothing is added per request.
"""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Collection
from contextvars import ContextVar
from typing import TYPE_CHECKING

from steelyard.config.desired import BackendEndpoint, Upstream
from steelyard.model import DynamicWeightMode, StrategyType
from steelyard.runtime.access_log import LATENCY_BUCKETS, LatencyHistogram
from steelyard.strategies import NO_CONTEXT, BalancingStrategy, Endpoint, PickContext, create

if TYPE_CHECKING:
    from steelyard.endpoints import EndpointTracker, Look, Transition

Clock = Callable[[], float]

# status -> index in EndpointStats.by_class; anything else (no status, 600-999) is 0
STATUS_CLASS: dict[int | None, int] = {status: status // 100 for status in range(100, 600)}
# the same for any status llhttp reports (0-999) as a tuple: an index instead of a dict.get() call
STATUS_CLASSES: tuple[int, ...] = tuple(STATUS_CLASS.get(status, 0) for status in range(1000))

__all__ = ["HEALTH_DETAIL", "STATUS_CLASS", "STATUS_CLASSES", "Attempt", "EndpointStats", "UpstreamRuntime"]

log = logging.getLogger("steelyard.upstream")

# What the probe being reported said ("Connection refused"): set by `HealthChecker` around its callback,
# read by `on_health_check`, so the callback keeps its (upstream key, endpoint id, healthy) signature.
HEALTH_DETAIL: ContextVar[str | None] = ContextVar("steelyard_health_detail", default=None)


class EndpointStats:
    """Counters of one endpoint inside one upstream; plain ints so an update costs an attribute write."""

    __slots__ = ("requests", "failures", "by_class", "latency")

    def __init__(self) -> None:
        self.requests = 0  # picks not cancelled
        self.failures = 0
        self.latency = LatencyHistogram()  # pick to done(), per attempt: admin p50/p99 and /metrics
        # index = status // 100 (0 = no status: connect failure, reset, TCP connection)
        self.by_class = [0, 0, 0, 0, 0, 0]

    @property
    def in_flight(self) -> int:
        """Picks without their outcome yet: every pick counts one request, every outcome one response
        class, a cancel takes its request back (one counter fewer to keep per request)."""
        return self.requests - sum(self.by_class)

    def as_dict(self) -> dict[str, object]:
        classes = {f"{i}xx": n for i, n in enumerate(self.by_class) if i and n}
        if self.by_class[0]:
            classes["none"] = self.by_class[0]
        return {"requests": self.requests, "in_flight": self.in_flight, "failures": self.failures,
                "responses": classes}


class Attempt:
    """One pick. `done()` must be called exactly once; later calls are ignored, so error paths may
    call it defensively. Latency is measured from the pick to `done()`."""

    # `_stats` is None once finished (one slot fewer to set per request than a separate flag).
    __slots__ = ("endpoint", "endpoint_id", "_runtime", "_picked", "_on_done", "_started", "_stats")

    def __init__(self, runtime: UpstreamRuntime, endpoint: BackendEndpoint, picked: Endpoint | None,
                 started: float, stats: EndpointStats, endpoint_id: str):
        self.endpoint = endpoint
        self.endpoint_id = endpoint_id  # == endpoint.id, without formatting it per request
        self._runtime = runtime
        self._picked = picked  # None when the strategy does not hear of it (a retry it does not count)
        # The on_done of the strategy that counted this pick, kept here: a reload may replace the
        # strategy meanwhile, and the new one must not hear of picks it never counted.
        self._on_done = runtime.strategy_on_done if picked is not None else None
        self._started = started
        self._stats: EndpointStats | None = stats

    @property
    def finished(self) -> bool:
        return self._stats is None

    def done(self, ok: bool, status: int | None = None, weight_hint: float | None = None) -> None:
        self.report(ok, STATUS_CLASS.get(status, 0), weight_hint)

    def report(self, ok: bool, status_class: int, weight_hint: float | None = None) -> None:
        """`done()` with the status already mapped to its `STATUS_CLASS` index (the proxy has it)."""
        stats = self._stats
        if stats is None:
            return
        self._stats = None
        runtime = self._runtime
        now = runtime.clock()
        latency = now - self._started
        histogram = stats.latency  # LatencyHistogram.observe(), inlined: this runs once per request
        histogram.counts[bisect_left(LATENCY_BUCKETS, latency)] += 1
        histogram.total += latency
        if not ok:
            stats.failures += 1
        stats.by_class[status_class] += 1
        if runtime.hears_outcomes:  # rarely: one test per request when nobody listens
            on_done = self._on_done
            if on_done is not None:
                on_done(self._picked, latency, ok)
            if runtime.tracker_listens and runtime.tracker.on_outcome(
                    self.endpoint_id, now, ok=ok, latency=latency, weight_hint=weight_hint):
                runtime.refresh()

    def cancel(self) -> None:
        """Release a pick that was never used (a retry prepared, then not needed) without an outcome:
        no request went to the endpoint, so neither the tracker nor the latency estimates hear of it.
        A strategy that made the pick still gets its one `on_done`, marked ok, since it counted it."""
        stats = self._stats
        if stats is None:
            return
        self._stats = None
        stats.requests -= 1
        self._runtime.requests -= 1
        on_done = self._on_done
        if on_done is not None:
            on_done(self._picked, 0.0, True)

    def abandoned(self) -> None:
        """The client went away while the endpoint had the request. The request counts (no status) and
        the strategy gets its `on_done` (the pick is no longer in flight) with the time so far, marked ok;
        the tracker hears nothing: a client leaving says nothing of the endpoint, so it neither resets
        outlier detection's run of failures nor feeds dynamic weights (Envoy ignores such aborts too)."""
        stats = self._stats
        if stats is None:
            return
        self._stats = None
        stats.by_class[0] += 1
        runtime = self._runtime
        on_done = self._on_done
        if on_done is not None:
            on_done(self._picked, runtime.clock() - self._started, True)

    def __repr__(self) -> str:
        return f"<Attempt {self.endpoint.id} finished={self.finished}>"


class UpstreamRuntime:
    """Balancing state of one upstream (one load balancer port). Not thread-safe: one per event loop."""

    def __init__(self, upstream: Upstream, clock: Clock = time.monotonic, rng: random.Random | None = None):
        from steelyard.endpoints import EndpointTracker

        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        now = clock()
        self.upstream = upstream
        self.tracker: EndpointTracker = EndpointTracker(upstream.policy, now)
        self.tracker.set_endpoints(upstream.endpoints, now)
        self.strategy = create(upstream.policy.strategy, clock=clock, rng=self.rng)
        self.stats: dict[str, EndpointStats] = {}
        self.requests = 0
        self.no_endpoint = 0  # picks that found no usable endpoint (the 503s)
        self.retries = 0  # requests (and TCP connects) sent again, counted by the proxy
        self.timeouts = 0  # requests, websockets and TCP connections of this upstream ended by a timeout
        self._usable: tuple[Endpoint, ...] = ()
        self._next_change: float | None = None
        self._generation = -1  # the tracker's generation self._looks was taken at
        self._looks: dict[str, Look] = {}
        self._none_usable = False  # whether "no usable endpoint" was the last thing logged about the upstream
        self._derive(upstream)
        self.refresh()

    def _derive(self, upstream: Upstream) -> None:
        """Values the proxy reads per request, computed once per config change."""
        policy = upstream.policy
        self.retry_attempts = policy.retries.attempts
        self.retry_on_connect = "connect-failure" in policy.retries.on
        self.retry_on_reset = "reset" in policy.retries.on
        self.retry_statuses = frozenset(int(s) for s in policy.retries.on if s.isdigit())
        self.connect_timeout = policy.timeouts.connect
        self.request_timeout = policy.timeouts.request
        self.idle_timeout = policy.timeouts.idle
        dyn = policy.dynamic_weights
        self.weight_header: bytes | None = (
            dyn.header.lower().encode("latin-1") if dyn.mode == DynamicWeightMode.HEADER else None
        )
        hash_on = policy.strategy.hash_on
        self.hash_header: bytes | None = None
        self.hash_cookie: str | None = None
        self.hash_source_ip = False
        if hash_on is not None:
            if hash_on.header is not None:
                self.hash_header = hash_on.header.lower().encode("latin-1")
            elif hash_on.cookie is not None:
                self.hash_cookie = hash_on.cookie
            else:
                self.hash_source_ip = True
        # Statuses of a response the proxy may forward as it comes, without looking at it further: final,
        # with a body, not retried, and no header carries a weight for the tracker.
        self.plain_statuses: frozenset[int] = (
            frozenset() if self.weight_header is not None
            else frozenset(range(200, 600)) - {204, 304} - self.retry_statuses
        )
        self.name = upstream.load_balancer
        # SourceIPHash hashes the client address with or without hashOn: it needs the context too.
        self.needs_context = hash_on is not None or policy.strategy.type == StrategyType.SOURCE_IP_HASH
        # Whether outcomes can change anything in the tracker (outlier detection, dynamic weights); when
        # not, done() skips the call. Read after the tracker took the policy; unknown means yes.
        self.tracker_listens = self.tracker.listens
        self.hears_outcomes = self.tracker_listens or self.strategy_on_done is not None
        self._endpoints = {e.id: e for e in upstream.endpoints}
        # endpoint id -> (endpoint, stats) for endpoints picked before: pick()'s one lookup
        self._known: dict[str, tuple[BackendEndpoint, EndpointStats]] = {}

    @property
    def strategy(self) -> BalancingStrategy:
        return self._strategy

    @strategy.setter
    def strategy(self, strategy: BalancingStrategy) -> None:
        self._strategy = strategy
        # Most strategies keep no per-pick state: skip their no-op on_done (one call per request).
        self.strategy_on_done = (None if type(strategy).on_done is BalancingStrategy.on_done
                                 else strategy.on_done)
        # Whether Attempt.report has anyone to tell (the strategy or the tracker); see _derive().
        self.hears_outcomes = self.strategy_on_done is not None or getattr(self, "tracker_listens", True)

    @property
    def key(self) -> str:
        return self.upstream.key

    def update(self, upstream: Upstream) -> None:
        """Apply a new configuration; state for endpoint ids that stay is kept by the tracker/strategy."""
        now = self.clock()
        old = self.upstream
        self.upstream = upstream
        if upstream.policy != old.policy:
            self.tracker.set_policy(upstream.policy, now)
            if upstream.policy.strategy != old.policy.strategy:
                self.strategy = create(upstream.policy.strategy, clock=self.clock, rng=self.rng)
                self._usable = ()  # force set_endpoints on the new strategy
        if upstream.endpoints != old.endpoints:
            self.tracker.set_endpoints(upstream.endpoints, now)
        self._derive(upstream)
        self.refresh()

    def refresh(self) -> None:
        """Hand the strategy the usable set when it changed; remember when time alone may change it; log
        the transitions since the last refresh."""
        now = self.clock()
        tracker = self.tracker
        usable = tuple(tracker.usable(now))
        if usable != self._usable:
            self._usable = usable
            self.strategy.set_endpoints(usable)
        self._next_change = tracker.next_change_at(now)
        if tracker.generation != self._generation:  # a transition may have happened (never per request)
            self._generation = tracker.generation
            before, self._looks = self._looks, tracker.looks()
            if before:
                changes = tracker.transitions(before, self._looks)
                if changes:
                    self._log_transitions(changes, len(usable))
        none_usable = not usable
        if none_usable is not self._none_usable:
            self._none_usable = none_usable
            configured = len(self.upstream.endpoints)
            if not none_usable:
                log.info("%s: usable endpoints again (%d of %d)", self.key, len(usable), configured)
            elif configured:  # "no usable endpoint: 3 configured, 2 failing health checks, 1 ejected ..."
                log.error("%s: %s", self.key, tracker.unavailable_reason(now))
            else:
                log.warning("%s: no usable endpoint (no endpoints configured)", self.key)

    def _log_transitions(self, changes: list[Transition], usable: int) -> None:
        configured = len(self.upstream.endpoints)
        for change in changes:
            endpoint = self._endpoints.get(change.endpoint_id)
            name = change.endpoint_id
            if endpoint is not None and endpoint.name and endpoint.name != name:
                name += f" ({endpoint.name})"
            log.log(logging.WARNING if change.new in ("down", "ejected") else logging.INFO,
                    "%s: endpoint %s %s; %d of %d endpoints usable", self.key, name, change.reason, usable,
                    configured)

    def usable_now(self) -> tuple[Endpoint, ...]:
        """The usable set, brought up to date first. Readers outside the hot path (the admin API) use
        this, not `tracker.usable()`: that call also ends expired ejections, and whoever ends one must
        hand the result to the strategy (and log the return), which `refresh()` does."""
        self.refresh()
        return self._usable

    def on_health_check(self, endpoint_id: str, healthy: bool, detail: str | None = None) -> None:
        """One probe's result; `detail` (else `HEALTH_DETAIL`) is what it said, for the DOWN line."""
        if detail is None:
            detail = HEALTH_DETAIL.get()
        if self.tracker.on_health_check(endpoint_id, self.clock(), healthy, detail):
            self.refresh()

    def pick(self, ctx: PickContext = NO_CONTEXT, exclude: Collection[str] = ()) -> Attempt | None:
        """Choose an endpoint, or None when none is usable (the proxy answers 503).

        With `exclude` (a retry), the choice is among the usable endpoints not yet tried: by the strategy's
        own rule where it has one for that (`pick_among`: LeastConnections, P2C, PeakEWMA), else a weighted
        random draw the strategy hears of through `note_pick`. Either way a strategy that counts requests
        in flight counts the retry and gets its `on_done`, so LeastConnections neither sends a retry to a
        busy endpoint nor piles new requests onto an endpoint busy with one.
        """
        now = self.clock()
        if self._next_change is not None and now >= self._next_change:
            self.refresh()
        if exclude:
            others = [e for e in self._usable if e.id not in exclude and e.weight > 0]
            if not others:  # (retries ran out: the client gets the last failure, not "no usable endpoint")
                return None
            strategy = self._strategy
            chosen = strategy.pick_among(others)
            if chosen is not None:
                return self._attempt(chosen, chosen, now)
            weights = [e.weight for e in others]
            chosen = others[0] if len(others) == 1 else self.rng.choices(others, weights)[0]
            return self._attempt(chosen, chosen if strategy.note_pick(chosen) else None, now)
        picked = self._strategy.pick(ctx)
        if picked is None:
            self.no_endpoint += 1
            return None
        # _attempt(), inlined for the common case: this runs once per request.
        endpoint_id = picked.id
        known = self._known.get(endpoint_id)
        if known is None:
            return self._attempt(picked, picked, now)
        endpoint, stats = known
        stats.requests += 1
        self.requests += 1
        # Attempt(...) without running __init__ (a class call with a Python __init__ is one of the
        # dearest calls there is): the same slots, set here (compiled: a C allocation, see upstream.pxd).
        attempt = Attempt.__new__(Attempt)
        attempt.endpoint = endpoint
        attempt.endpoint_id = endpoint_id
        attempt._runtime = self
        attempt._picked = picked
        attempt._on_done = self.strategy_on_done
        attempt._started = now
        attempt._stats = stats
        return attempt

    def _attempt(self, chosen: Endpoint, picked: Endpoint | None, now: float) -> Attempt | None:
        endpoint_id = chosen.id
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:  # the strategy still knew an endpoint the tracker dropped
            if picked is not None:
                self.strategy.on_done(picked, 0.0, True)
            self.no_endpoint += 1
            return None
        stats = self.stats.get(endpoint_id)
        if stats is None:
            stats = self.stats[endpoint_id] = EndpointStats()
        self._known[endpoint_id] = (endpoint, stats)
        stats.requests += 1
        self.requests += 1
        return Attempt(self, endpoint, picked, now, stats, endpoint_id)

    def unavailable_reason(self) -> str:
        return self.tracker.unavailable_reason(self.clock())

    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.stats.values())

    def describe(self) -> dict[str, object]:
        now = self.clock()
        return {
            "upstream": self.key,
            "load_balancer": self.upstream.load_balancer,
            "requests": self.requests,
            "no_endpoint": self.no_endpoint,
            "retries": self.retries,
            "timeouts": self.timeouts,
            "strategy": self.strategy.describe(),
            "endpoints": self.tracker.describe(now),
            "stats": {eid: s.as_dict() for eid, s in self.stats.items()},
        }

    def __repr__(self) -> str:
        return f"<UpstreamRuntime {self.key} usable={[e.id for e in self._usable]}>"
