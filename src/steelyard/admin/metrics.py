"""Prometheus metrics, read from the running proxy at scrape time.

A custom `Collector` in its own `CollectorRegistry` (no process-global state, several servers per test
process) turns `AdminSource` values into metric families when `/metrics` is scraped. The proxy itself
only increments plain ints; nothing here runs per request. The values are read on the proxy's loop
(`FrozenReadings`) and formatted in a worker thread.

Names follow Prometheus conventions: base units (seconds), `_total` for counters, labels for dimensions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from steelyard.admin.source import AdminSource, ProcessCounters, UpstreamView
from steelyard.runtime.access_log import LATENCY_BUCKETS

__all__ = ["FrozenReadings", "SteelyardCollector", "render_metrics"]

CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")


class Readings(Protocol):
    """The part of `AdminSource` metrics read."""

    def upstreams(self) -> Sequence[UpstreamView]: ...

    def counters(self) -> ProcessCounters: ...

    def readiness(self) -> tuple[bool, str]: ...


class SteelyardCollector(Collector):
    def __init__(self, source: Readings) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        src = self.source
        upstreams = src.upstreams()
        lb_ep = ["load_balancer", "upstream", "endpoint"]

        requests = CounterMetricFamily(
            "steelyard_requests", "Requests forwarded, by load balancer, endpoint and status class "
            "(code_class none: no status, e.g. connect failure or a TCP connection).",
            labels=[*lb_ep, "code_class"])
        duration = HistogramMetricFamily(
            "steelyard_request_duration_seconds", "Request latency as seen by the proxy, per endpoint.",
            labels=lb_ep, unit="")
        weight = GaugeMetricFamily("steelyard_endpoint_effective_weight",
                                   "Weight the strategy uses now (slow start, dynamic weights, overrides); "
                                   "0 when the endpoint is not usable.", labels=lb_ep)
        configured = GaugeMetricFamily("steelyard_endpoint_configured_weight", "Weight as configured.",
                                       labels=lb_ep)
        healthy = GaugeMetricFamily("steelyard_endpoint_healthy",
                                    "1 when the endpoint takes new requests, else 0.", labels=lb_ep)
        in_flight = GaugeMetricFamily("steelyard_endpoint_in_flight", "Requests in progress.", labels=lb_ep)
        ejections = CounterMetricFamily("steelyard_ejections", "Outlier-detection ejections.", labels=lb_ep)
        no_endpoint = CounterMetricFamily("steelyard_no_endpoint", "Requests answered 503: no usable "
                                          "endpoint.", labels=["load_balancer", "upstream"])
        retries = CounterMetricFamily("steelyard_upstream_retries", "Requests (TCP: connects) sent again, by "
                                      "upstream (steelyard_retries: the process's total).",
                                      labels=["load_balancer", "upstream"])
        timeouts = CounterMetricFamily("steelyard_upstream_timeouts", "Requests, websockets and TCP "
                                       "connections ended by a timeout, by upstream (steelyard_timeouts: the "
                                       "process's total, request heads that never arrived included).",
                                       labels=["load_balancer", "upstream"])
        for up in upstreams:
            no_endpoint.add_metric([up.load_balancer, up.key], up.no_endpoint)
            retries.add_metric([up.load_balancer, up.key], up.retries)
            timeouts.add_metric([up.load_balancer, up.key], up.timeouts)
            for ep in up.endpoints:
                labels = [up.load_balancer, up.key, ep.id]
                for cls in CODE_CLASSES:
                    n = ep.responses.get(cls, 0)
                    if n or cls == "2xx":
                        requests.add_metric([*labels, cls], n)
                if ep.latency_counts is not None:
                    cumulative, buckets = 0, []
                    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), ep.latency_counts, strict=True):
                        cumulative += n
                        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                    duration.add_metric(labels, buckets, ep.latency_sum)
                weight.add_metric(labels, ep.effective_weight)
                configured.add_metric(labels, ep.configured_weight)
                healthy.add_metric(labels, 1 if ep.healthy else 0)
                in_flight.add_metric(labels, ep.in_flight)
                ejections.add_metric(labels, ep.ejections)
        yield from (requests, duration, weight, configured, healthy, in_flight, ejections, no_endpoint,
                    retries, timeouts)

        c = src.counters()
        conns = GaugeMetricFamily("steelyard_connections", "Open connections by side and state.",
                                  labels=["side", "state"])
        conns.add_metric(["downstream", "active"], c.downstream_active)
        conns.add_metric(["downstream", "idle"], c.downstream_idle)
        conns.add_metric(["upstream", "active"], c.upstream_active)
        conns.add_metric(["upstream", "idle"], c.upstream_idle)
        yield conns
        yield CounterMetricFamily("steelyard_upstream_connect_errors",
                                  "Failed or timed-out upstream connects.",
                                  value=c.upstream_connect_errors)
        yield CounterMetricFamily("steelyard_connections_refused",
                                  "Client connections closed at accept: --max-connections were open.",
                                  value=c.connections_refused)
        yield CounterMetricFamily("steelyard_retries", "Requests sent again: to another endpoint, or on a "
                                  "fresh connection after a pooled one closed under them.", value=c.retries)
        yield CounterMetricFamily("steelyard_timeouts", "Requests or connections ended by a timeout.",
                                  value=c.timeouts)
        responses = CounterMetricFamily("steelyard_responses", "Responses sent to clients by status class, "
                                        "including Steelyard's own (404, 502, 503, ...).",
                                        labels=["code_class"])
        for cls in CODE_CLASSES:
            responses.add_metric([cls], c.responses.get(cls, 0))
        yield responses

        reload_counter = CounterMetricFamily("steelyard_config_reloads", "Configuration changes seen.",
                                             labels=["result"])
        reload_counter.add_metric(["ok"], c.reloads_ok)
        reload_counter.add_metric(["failed"], c.reloads_failed)
        yield reload_counter
        yield GaugeMetricFamily("steelyard_config_last_reload_timestamp_seconds",
                                "Unix time of the last configuration applied successfully.",
                                value=c.last_reload_at)
        ready, _ = src.readiness()
        yield GaugeMetricFamily("steelyard_ready", "1 when the configuration is loaded and not draining.",
                                value=1 if ready else 0)


class FrozenReadings:
    """What a scrape reads, taken on the proxy's loop in one go; formatting then runs in a thread, so a
    large scrape (hundreds of endpoints: tens of thousands of lines) does not stall the proxy's loop."""

    def __init__(self, source: AdminSource) -> None:
        self._upstreams = list(source.upstreams())
        self._counters = source.counters()
        self._readiness = source.readiness()

    def upstreams(self) -> list[UpstreamView]:
        return self._upstreams

    def counters(self) -> ProcessCounters:
        return self._counters

    def readiness(self) -> tuple[bool, str]:
        return self._readiness


def render_metrics(readings: Readings) -> bytes:
    """The Prometheus text exposition of `readings`, from a registry of its own (no global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SteelyardCollector(readings))
    return generate_latest(registry)
