"""Per-request observations: the latency histogram each endpoint keeps, and the sampled access log.

`LatencyHistogram.observe()` is one `bisect` and two additions, cheap enough for every attempt
(`EndpointStats.latency`); the admin server reads the counts at scrape time (Prometheus histogram,
p50/p99 on the dashboard).

The access log is off by default (`sample` = 0): at tens of thousands of requests per second a line per
request costs more CPU than the proxying itself. `--access-log 0.01` logs one request in a hundred,
`--access-log 1` every one.
"""

from __future__ import annotations

import logging
import random
from bisect import bisect_left

__all__ = ["LATENCY_BUCKETS", "AccessLog", "LatencyHistogram"]

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


class AccessLog:
    """Decides per request whether it is logged (`sample` = fraction, 0 = off) and writes the line.

    The proxy asks `sampled()` when a request starts, so only sampled requests pay for timing and byte
    counting; `log()` formats one line when the request ends."""

    def __init__(self, sample: float = 0.0, rng: random.Random | None = None,
                 logger: logging.Logger = access_logger) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"access log sample rate {sample} is not between 0 and 1")
        self.sample = sample
        self.rng = rng if rng is not None else random.Random()
        self.logger = logger

    def sampled(self) -> bool:
        sample = self.sample
        return sample >= 1.0 or (sample > 0.0 and self.rng.random() < sample)

    def log(self, *, client: str, host: str, method: str, path: str, upstream: str, endpoint: str,
            status: int, bytes_sent: int, latency: float, retries: int) -> None:
        """One access log line; the fields also go to `extra` so the JSON formatter emits them as keys."""
        fields = {"client": client, "host": host, "method": method, "path": path, "upstream": upstream,
                  "endpoint": endpoint or "-", "status": status, "bytes": bytes_sent,
                  "latency_ms": round(latency * 1000, 3), "retries": retries}
        self.logger.info('%s "%s %s" host=%s -> %s %s %d %dB %.1fms retries=%d',
                         client or "-", method, path, host or "-", upstream or "-", endpoint or "-", status,
                         bytes_sent, latency * 1000, retries, extra={"fields": fields})
