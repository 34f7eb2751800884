"""The access log on the real proxy (127.0.0.1): one line per sampled request with the documented fields."""

from __future__ import annotations

import logging
import random

import pytest
import uvloop

from proxy_support import Harness, make_state, start_backends
from steelyard.runtime.access_log import AccessLog

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, object]] = []
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(record.fields)  # type: ignore[attr-defined]
        self.messages.append(record.getMessage())


def logger_with(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.access.{id(handler)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    return logger


async def test_every_request_is_logged_with_endpoint_status_bytes_and_retries() -> None:
    (gone,) = await start_backends("gone")
    await gone.close()  # refused: the request is retried on the other endpoint
    (b,) = await start_backends("b")
    lines = Lines()
    async with Harness(make_state([gone, b], hosts=("shop.example",))) as h:
        h.proxy.access_log = AccessLog(1.0, logger=logger_with(lines))
        client = await h.connect()
        for _ in range(2):  # round robin: one of the two picks is the refused endpoint, then a retry
            assert (await client.request("GET", "/bytes?n=1000", host="shop.example")).status == 200
        assert (await client.request("GET", "/x", host="other.example")).status == 404
        client.close()
    await b.close()
    first, again, second = lines.fields
    assert first["host"] == "shop.example" and first["method"] == "GET" and first["path"] == "/bytes?n=1000"
    assert first["endpoint"] == b.endpoint.id and first["upstream"] == "default/web/http"
    assert first["status"] == 200 and first["bytes"] == 1000 and first["client"] == "127.0.0.1"
    assert sorted([first["retries"], again["retries"]]) == [0, 1]  # type: ignore[type-var]
    assert isinstance(first["latency_ms"], float) and first["latency_ms"] >= 0
    assert second["status"] == 404 and second["endpoint"] == "-" and second["upstream"] == ""
    assert "GET /bytes?n=1000" in lines.messages[0]


async def test_sampling_logs_about_the_asked_fraction_and_off_logs_nothing() -> None:
    (a,) = await start_backends("a")
    lines = Lines()
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        for _ in range(20):  # access_log None: the default
            await client.request()
        h.proxy.access_log = AccessLog(0.25, rng=random.Random(3), logger=logger_with(lines))
        for _ in range(200):
            await client.request()
        client.close()
    await a.close()
    assert 25 <= len(lines.fields) <= 75  # ~50 of 200, seeded: the same count every run
