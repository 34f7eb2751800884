"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright) against the real proxy
on 127.0.0.1 with real traffic: numbers move, the share chart draws, drain and undrain work from the page.

The browser loads only from the admin server on 127.0.0.1 (the page fetches nothing from elsewhere; the
test fails on any request to another origin). Screenshots: the test's tmp_path, and the one taken after
the drain also as docs/dashboard.png for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from admin_fake import FakeSource
from proxy_support import Backend, Harness, make_state, start_backends
from steelyard.admin.runtime_source import RuntimeSource
from steelyard.admin.server import AdminServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
MAX_REQUESTS = 5000  # the traffic generator's bound, whatever happens

pytestmark = [
    pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture"),
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def traffic(h: Harness, stop: asyncio.Event) -> int:
    """Requests one after another on a keep-alive connection, about 200 per second, until `stop`."""
    client = await h.connect()
    sent = 0
    try:
        while not stop.is_set() and sent < MAX_REQUESTS:
            response = await client.request("GET", "/slow?ms=2")
            assert response.status == 200, response
            sent += 1
            await asyncio.sleep(0.003)
    finally:
        client.close()
    return sent


@contextlib.asynccontextmanager
async def dashboard(backends: list[Backend]) -> AsyncIterator[tuple[Any, AdminServer]]:
    """The real proxy with `backends`, traffic flowing, its admin server, and a page showing it."""
    from playwright.async_api import async_playwright

    async with Harness(make_state(backends, key="default/shop/http")) as h:
        source = RuntimeSource(h.proxy)
        source.record_reload(True, "shop.yaml", "applied: 1 load balancer, 3 endpoints")
        admin = AdminServer(source, "127.0.0.1", 0, tick=0.25)
        await admin.start()
        stop = asyncio.Event()
        load = asyncio.create_task(traffic(h, stop), name="test-traffic")
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                   headless=True)
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 760})
                    foreign: list[str] = []
                    page.on("request", lambda r: foreign.append(r.url)
                            if not r.url.startswith(admin.url) and not r.url.startswith("data:") else None)
                    await page.goto(admin.url + "/")
                    yield page, admin
                    assert foreign == []  # nothing loaded from anywhere but the admin server
                finally:
                    await browser.close()
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load, 10)
            await admin.stop()


def requests_cell(b: Backend) -> str:
    return f'tr[data-endpoint="{b.endpoint.id}"] .requests'


async def test_dashboard_numbers_move_and_the_share_chart_draws(tmp_path: Path) -> None:
    from playwright.async_api import expect

    backends = await start_backends("alpha", "beta", "gamma")
    a = backends[0]
    async with dashboard(backends) as (page, _):
        row = page.locator(f'tr[data-endpoint="{a.endpoint.id}"]')
        await expect(page.locator("#ready")).to_have_text("ready", timeout=15_000)
        await expect(page.locator(".strategy")).to_have_text("RoundRobin")
        await expect(page.locator("#reloads tbody tr")).to_have_count(1)
        # numbers move: alpha's request count grows between updates; rate and latency appear
        first = int(await row.locator(".requests").text_content(timeout=15_000) or 0)
        await page.wait_for_function("([sel, n]) => Number(document.querySelector(sel).textContent) > n + 20",
                                     arg=[requests_cell(a), first], timeout=15_000)
        for cell in (".rps", ".p50", ".p99"):
            await page.wait_for_function("(sel) => parseFloat(document.querySelector(sel).textContent) > 0",
                                         arg=f'tr[data-endpoint="{a.endpoint.id}"] {cell}', timeout=15_000)
        # the share chart has drawn: a third of the canvas' columns on the right are coloured
        await page.wait_for_function("""() => {
            const c = document.querySelector('canvas.chart');
            const g = c.getContext('2d'), y = Math.floor(c.height / 2);
            const d = g.getImageData(0, y, c.width, 1).data;
            let coloured = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 0 && !(d[i] > 240 && d[i + 1] > 240)) coloured++;
            }
            return coloured > c.width / 20; }""", timeout=15_000)
        # explain from the page names an endpoint
        await page.get_by_role("button", name="explain next pick").click()
        await expect(page.locator(".explain")).to_contain_text("next pick: 127.0.0.1:", timeout=15_000)
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
    for b in backends:
        await b.close()
    assert shot.stat().st_size > 10_000


async def test_drain_weight_and_undrain_from_the_page(tmp_path: Path) -> None:
    from playwright.async_api import expect

    backends = await start_backends("alpha", "beta", "gamma")
    a, b = backends[0], backends[1]
    async with dashboard(backends) as (page, _):
        row = page.locator(f'tr[data-endpoint="{a.endpoint.id}"]')
        await page.wait_for_function("([sel, n]) => Number(document.querySelector(sel).textContent) > n",
                                     arg=[requests_cell(a), 10], timeout=15_000)
        # drain alpha from the page: the row says so and the proxy stops sending it requests
        await row.locator("button.drain").click()
        await expect(row.locator(".health")).to_have_text("draining", timeout=15_000)
        await expect(row.locator("button.drain")).to_have_text("undrain")
        drained_at = len(a.requests)
        await page.wait_for_function("([sel, n]) => Number(document.querySelector(sel).textContent) > n + 40",
                                     arg=[requests_cell(b), len(b.requests)], timeout=15_000)
        assert len(a.requests) <= drained_at + 1  # at most the one request in flight at the click
        shot = tmp_path / "dashboard-drained.png"
        await page.screenshot(path=str(shot), full_page=True)
        with contextlib.suppress(OSError):  # the README's picture; a read-only checkout still passes
            shutil.copyfile(shot, DOCS_SCREENSHOT)

        # weight from the page, then undrain: alpha takes traffic again
        await row.locator("input.weight-input").fill("3")
        await row.locator("button.set-weight").click()
        await expect(row.locator(".weights")).to_contain_text("(set 3)", timeout=15_000)
        await row.locator("button.drain").click()
        await expect(row.locator(".health")).not_to_have_text("draining", timeout=15_000)
        before = len(a.requests)
        await page.wait_for_function("([sel, n]) => Number(document.querySelector(sel).textContent) > n + 30",
                                     arg=[requests_cell(a), before], timeout=15_000)
        assert len(a.requests) > before + 30
    for backend in backends:
        await backend.close()


async def test_the_page_asks_for_the_token_and_then_shows_the_data() -> None:
    from playwright.async_api import async_playwright, expect

    source = FakeSource({"default/web/http": [("127.0.0.1:9001", 1)]})
    admin = AdminServer(source, "127.0.0.1", 0, token="s3cret", tick=0.25)
    await admin.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = await browser.new_page()
                await page.goto(admin.url + "/")
                await expect(page.locator("#token-form")).to_be_visible(timeout=15_000)
                await expect(page.locator("#error")).to_contain_text("401")
                await page.fill("#token", "s3cret")
                await page.click("#token-form button")
                row = page.locator('tr[data-endpoint="127.0.0.1:9001"]')
                await expect(row.locator(".health")).to_have_text("healthy", timeout=15_000)
                await row.locator("button.drain").click()
                await expect(row.locator(".health")).to_have_text("draining", timeout=15_000)
                assert source.ups["default/web/http"].endpoints["127.0.0.1:9001"].drained
            finally:
                await browser.close()
    finally:
        await admin.stop()
