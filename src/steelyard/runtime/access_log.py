"""What the proxy reports once per finished request: a latency histogram per endpoint and the access log.

The proxy calls `RequestObserver.request_done(...)` exactly once per request that got an answer (from an
endpoint or from Steelyard itself). The call is cheap on purpose: one `bisect` and three integer
increments for the histogram; the access log line is formatted only for the sampled requests
(`sample` = fraction of requests logged, 0 = off, the default, since at tens of thousands of requests per
second a line per request costs more CPU than the proxying itself).

The admin server reads `histograms` at scrape time (Prometheus histogram, p50/p99 on the dashboard);
nothing here runs on a timer.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_left

__all__ = ["LATENCY_BUCKETS", "LatencyHistogram", "RequestObserver"]

# Upper bounds in seconds (Prometheus `le`), the last bucket (+Inf) is implicit. Chosen for a proxy:
# sub-millisecond hops up to the default 30 s request timeout.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

access_logger = logging.getLogger("steelyard.access")


class LatencyHistogram:
    """Counts per bucket (not cumulative; index len(LATENCY_BUCKETS) is +Inf) and the sum of latencies."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


class RequestObserver:
    """One per process. `histograms[(upstream_key, endpoint_id)]`; `endpoint_id` is "" for requests
    Steelyard answered itself (no route, no endpoint, failed connects) and "-" for unrouted ones."""

    def __init__(self, sample: float = 0.0, rng: random.Random | None = None,
                 logger: logging.Logger = access_logger) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample rate {sample} is not between 0 and 1")
        self.sample = sample
        self.rng = rng if rng is not None else random.Random()
        self.logger = logger
        self.histograms: dict[tuple[str, str], LatencyHistogram] = {}

    def request_done(self, *, upstream: str, endpoint: str, latency: float, status: int, client: str = "",
                     host: str = "", method: str = "", path: str = "", bytes_sent: int = 0,
                     retries: int = 0) -> None:
        key = (upstream, endpoint)
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = LatencyHistogram()
        hist.observe(latency)
        sample = self.sample
        if sample and (sample >= 1.0 or self.rng.random() < sample):
            self.log(client=client, host=host, method=method, path=path, upstream=upstream, endpoint=endpoint,
                     status=status, bytes_sent=bytes_sent, latency=latency, retries=retries)

    def log(self, *, client: str, host: str, method: str, path: str, upstream: str, endpoint: str,
            status: int, bytes_sent: int, latency: float, retries: int) -> None:
        """One access log line; the fields also go to `extra` so the JSON formatter emits them as keys."""
        fields = {"client": client, "host": host, "method": method, "path": path, "upstream": upstream,
                  "endpoint": endpoint or "-", "status": status, "bytes": bytes_sent,
                  "latency_ms": round(latency * 1000, 3), "retries": retries}
        self.logger.info('%s "%s %s" host=%s -> %s %s %d %dB %.1fms retries=%d',
                         client or "-", method, path, host or "-", upstream or "-", endpoint or "-", status,
                         bytes_sent, latency * 1000, retries, extra={"fields": fields})
