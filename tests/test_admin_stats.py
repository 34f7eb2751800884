"""Sampler arithmetic with a scripted clock: rates, quantiles, share history; and the access log."""

from __future__ import annotations

import io
import json
import logging
import random

import pytest

from admin_fake import Clock, FakeSource
from steelyard.admin.stats import Sampler, histogram_quantile
from steelyard.runtime.access_log import LATENCY_BUCKETS, AccessLog
from steelyard.runtime.logs import setup_logging

UP = "default/web/http"
A, B = "127.0.0.1:9001", "127.0.0.1:9002"


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    i = LATENCY_BUCKETS.index(0.01)  # bucket (0.005, 0.01]
    counts[i] = 10
    assert histogram_quantile(0.5, counts) == pytest.approx(0.0075)
    assert histogram_quantile(1.0, counts) == pytest.approx(0.01)
    counts[-1] = 90  # most requests beyond the last bound: reported as the last finite bound
    assert histogram_quantile(0.99, counts) == LATENCY_BUCKETS[-1]
    assert histogram_quantile(0.5, [0] * len(counts)) is None


def test_rates_quantiles_and_history_over_windows() -> None:
    clock = Clock()
    source = FakeSource({UP: [(A, 1), (B, 1)]})
    sampler = Sampler(clock, keep=10, rate_window=2.0, latency_window=3.0)
    assert sampler.rate(UP, A) is None  # nothing sampled yet
    sampler.take(source.upstreams())
    for second in range(1, 6):
        for _ in range(2 * second):  # 2, 4, 6, 8, 10 requests in each second, split evenly
            source.serve(UP, latency=0.002 if second < 4 else 0.2)
        clock.now = float(second)
        sampler.take(source.upstreams())
    # last 2 s: (8 + 10) / 2 requests per second, half on each endpoint
    assert sampler.rate(UP, A) == pytest.approx(4.5)
    # last 3 s hold 6 fast and 18 slow requests: the median is slow, inside (0.1, 0.25]
    p50 = sampler.latency_quantile(UP, A, 0.5)
    assert p50 is not None and 0.1 < p50 <= 0.25
    history = sampler.share_history()[UP]
    assert history["ago"] == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert history["endpoints"] == {A: [1, 2, 3, 4, 5], B: [1, 2, 3, 4, 5]}
    for _ in range(20):  # older samples fall out of `keep`
        clock.now += 1
        sampler.take(source.upstreams())
    assert len(sampler.share_history()[UP]["ago"]) == 10  # type: ignore[arg-type]
    assert sampler.rate(UP, A) == 0.0


def test_access_log_is_off_by_default_and_sampled_when_asked() -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out)
    try:
        assert not any(AccessLog().sampled() for _ in range(100))  # off by default
        every = AccessLog(sample=1.0)
        assert every.sampled()
        every.log(upstream=UP, endpoint=A, latency=0.0123, status=200, client="127.0.0.1",
                  host="my-domain.com", method="GET", path="/x", bytes_sent=42, retries=1)
        line = json.loads(out.getvalue())
        assert line["logger"] == "steelyard.access" and line["level"] == "info"
        assert {k: line[k] for k in ("client", "host", "path", "endpoint", "status", "bytes", "latency_ms",
                                     "retries")} == {"client": "127.0.0.1", "host": "my-domain.com",
                                                     "path": "/x", "endpoint": A, "status": 200,
                                                     "bytes": 42, "latency_ms": 12.3, "retries": 1}
        tenth = AccessLog(sample=0.1, rng=random.Random(7))
        logged = sum(tenth.sampled() for _ in range(1000))
        assert 60 < logged < 140  # ~100 with a seeded generator: deterministic
    finally:
        logging.getLogger().handlers = [h for h in logging.getLogger().handlers
                                        if not getattr(h, "_steelyard", False)]
    with pytest.raises(ValueError, match="between 0 and 1"):
        AccessLog(sample=2)
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("xml")


def test_share_history_columns_line_up_when_endpoints_come_and_go() -> None:
    from admin_fake import FakeEndpoint

    clock = Clock()
    source = FakeSource({UP: [(A, 1)]})
    sampler = Sampler(clock, keep=10)
    sampler.take(source.upstreams())
    source.serve(UP)
    clock.now = 1.0
    sampler.take(source.upstreams())
    source.ups[UP].endpoints[B] = FakeEndpoint(B, 1)  # a reload added B
    for _ in range(4):
        source.serve(UP)
    clock.now = 2.0
    sampler.take(source.upstreams())
    del source.ups[UP].endpoints[A]  # and the next one removed A
    source.serve(UP)
    clock.now = 3.0
    sampler.take(source.upstreams())
    history = sampler.share_history()[UP]
    assert history["ago"] == [2.0, 1.0, 0.0]
    assert history["endpoints"] == {A: [1, 2, 0], B: [0, 2, 1]}
