"""Rates, latency quantiles and traffic-share history, derived from counters sampled once a second.

The proxy keeps only monotonic counters (requests, latency histogram buckets). The admin server's
sampler task calls `Sampler.take()` every second; rates and quantiles are differences between samples,
so nothing per request is stored and a scrape never disturbs the hot path. The clock is passed in, so
tests script it.

Quantiles follow Prometheus' `histogram_quantile`: find the bucket holding the rank and interpolate
linearly inside it; a rank in the +Inf bucket reports the highest finite bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from steelyard.admin.source import UpstreamView
from steelyard.runtime.access_log import LATENCY_BUCKETS

__all__ = ["Sampler", "histogram_quantile"]

Key = tuple[str, str]  # (upstream key, endpoint id)


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    requests: dict[Key, int]
    latency: dict[Key, tuple[int, ...]]


def histogram_quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS
                       ) -> float | None:
    """The q-quantile (0..1) of non-cumulative bucket `counts` (+Inf last), None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n > 0 and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * ((rank - seen) / n)
        seen += n
    return bounds[-1]


class Sampler:
    """Keeps `keep` seconds of once-a-second samples of every endpoint's counters."""

    def __init__(self, clock: Callable[[], float], keep: float = 300.0, rate_window: float = 5.0,
                 latency_window: float = 60.0) -> None:
        self.clock = clock
        self.rate_window = rate_window
        self.latency_window = latency_window
        self.samples: deque[_Sample] = deque(maxlen=int(keep) + 1)
        # An endpoint a reload removes and puts back keeps its counters in the proxy: its samples start
        # again from 0 at its return (less what it had when last seen), or the first difference after it
        # would be a lifetime's traffic shown as the last second's.
        self._last_seen: dict[Key, tuple[int, tuple[int, ...] | None]] = {}  # raw counts when last seen
        self._offsets: dict[Key, tuple[int, tuple[int, ...] | None]] = {}

    def take(self, upstreams: Sequence[UpstreamView]) -> None:
        requests: dict[Key, int] = {}
        latency: dict[Key, tuple[int, ...]] = {}
        previous = self.samples[-1].requests if self.samples else {}
        last_seen, offsets = self._last_seen, self._offsets
        for up in upstreams:
            for ep in up.endpoints:
                key = (up.key, ep.id)
                counts = ep.latency_counts
                if key not in previous and key in last_seen:
                    offsets[key] = last_seen[key]  # back after an absence
                last_seen[key] = (ep.requests, counts)
                offset = offsets.get(key)
                if offset is None:
                    requests[key] = ep.requests
                    if counts is not None:
                        latency[key] = counts
                    continue
                requests[key] = ep.requests - offset[0]
                if counts is not None:
                    then = offset[1]
                    latency[key] = counts if then is None else tuple(
                        a - b for a, b in zip(counts, then, strict=True))
        if len(last_seen) > 4 * len(requests) + 1000:  # (endpoints long gone: forget them)
            for key in [k for k in last_seen if k not in requests]:
                last_seen.pop(key, None)
                offsets.pop(key, None)
        self.samples.append(_Sample(self.clock(), requests, latency))

    def _since(self, window: float) -> tuple[_Sample, _Sample] | None:
        """(oldest sample within `window` of the newest, newest), or None with fewer than two samples."""
        if len(self.samples) < 2:
            return None
        newest = self.samples[-1]
        oldest = newest
        for sample in reversed(self.samples):
            if newest.at - sample.at > window + 1e-9:
                break
            oldest = sample
        if oldest is newest:
            oldest = self.samples[-2]
        return oldest, newest

    def rate(self, upstream: str, endpoint: str) -> float | None:
        """Requests per second over the last `rate_window` seconds."""
        pair = self._since(self.rate_window)
        if pair is None:
            return None
        old, new = pair
        key = (upstream, endpoint)
        if key not in new.requests:
            return None
        elapsed = new.at - old.at
        if elapsed <= 0:
            return None
        return max(0, new.requests[key] - old.requests.get(key, 0)) / elapsed

    def latency_quantile(self, upstream: str, endpoint: str, q: float) -> float | None:
        """Latency q-quantile (seconds) of the requests finished in the last `latency_window` seconds."""
        pair = self._since(self.latency_window)
        if pair is None:
            return None
        old, new = pair
        key = (upstream, endpoint)
        now_counts = new.latency.get(key)
        if now_counts is None:
            return None
        then = old.latency.get(key)
        counts = now_counts if then is None else [a - b for a, b in zip(now_counts, then, strict=True)]
        return histogram_quantile(q, counts)

    def share_history(self) -> dict[str, dict[str, object]]:
        """Per upstream: sample times (seconds before the newest) and each endpoint's requests per interval,
        the data of the dashboard's traffic-share chart. Columns line up: an endpoint missing from a
        sample counts 0 there."""
        out: dict[str, tuple[list[float], dict[str, list[int]]]] = {}
        samples = list(self.samples)
        if len(samples) < 2:
            return {}
        newest = samples[-1].at
        for prev, cur in zip(samples, samples[1:], strict=False):
            deltas: dict[str, dict[str, int]] = {}
            for (up, ep), n in cur.requests.items():
                deltas.setdefault(up, {})[ep] = max(0, n - prev.requests.get((up, ep), 0))
            for up, per_endpoint in deltas.items():
                ago, series = out.setdefault(up, ([], {}))
                column = len(ago)
                ago.append(round(newest - cur.at, 3))
                for ep, n in per_endpoint.items():
                    series.setdefault(ep, [0] * column).append(n)
                for values in series.values():
                    if len(values) == column:
                        values.append(0)
        return {up: {"ago": ago, "endpoints": series} for up, (ago, series) in out.items()}
