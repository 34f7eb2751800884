"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright) against the real proxy
on 127.0.0.1 with real traffic: numbers move, the share chart draws, drain and undrain work from the page.

The browser loads only from the admin server on 127.0.0.1 (the page fetches nothing from elsewhere; the
test fails on any request to another origin). Screenshots: the test's tmp_path, and docs/dashboard.png
for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

import pytest
import uvloop

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
            response = await client.request("GET", "/")
            assert response.status == 200, response
            sent += 1
            await asyncio.sleep(0.005)
    finally:
        client.close()
    return sent


async def test_dashboard_shows_live_traffic_and_drains_from_the_page(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    backends = await start_backends("alpha", "beta", "gamma")
    a = backends[0]
    state = make_state(backends, key="default/shop/http")
    async with Harness(state) as h:
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
                    page = await browser.new_page(viewport={"width": 1400, "height": 800})
                    foreign: list[str] = []
                    page.on("request", lambda r: foreign.append(r.url)
                            if not r.url.startswith(admin.url) and not r.url.startswith("data:") else None)
                    await page.goto(admin.url + "/")
                    await run_checks(page, expect, a, backends, tmp_path)
                    assert foreign == []
                finally:
                    await browser.close()
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load, 10)
            await admin.stop()
    for b in backends:
        await b.close()


async def run_checks(page, expect, a: Backend, backends: list[Backend], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    row = page.locator(f'tr[data-endpoint="{a.endpoint.id}"]')
    await expect(page.locator("#ready")).to_have_text("ready", timeout=15_000)
    await expect(page.locator(".strategy")).to_have_text("RoundRobin")

    # numbers move: alpha's request count grows between two updates, and its rate is above zero
    first = int(await row.locator(".requests").text_content(timeout=15_000) or 0)
    await page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel).textContent) > n + 20",
        arg=[f'tr[data-endpoint="{a.endpoint.id}"] .requests', first], timeout=15_000)
    await page.wait_for_function(
        "(sel) => parseFloat(document.querySelector(sel).textContent) > 0",
        arg=f'tr[data-endpoint="{a.endpoint.id}"] .rps', timeout=15_000)
    # the share chart has drawn something (some pixel is not blank)
    await page.wait_for_function("""() => {
        const c = document.querySelector('canvas.chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0 && d[i - 1] > 200 && d[i - 3] < 100) return true;
        return false; }""", timeout=15_000)

    await page.screenshot(path=str(tmp_path / "dashboard-live.png"), full_page=True)

    # drain alpha from the page: its health shows draining and the proxy stops sending it requests
    await row.locator("button.drain").click()
    await expect(row.locator(".health")).to_have_text("draining", timeout=15_000)
    await expect(row.locator("button.drain")).to_have_text("undrain")
    drained_at = len(a.requests)
    others = sum(len(b.requests) for b in backends[1:])
    await page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel).textContent) > n + 40",
        arg=[f'tr[data-endpoint="{backends[1].endpoint.id}"] .requests', len(backends[1].requests)],
        timeout=15_000)
    assert sum(len(b.requests) for b in backends[1:]) > others + 40
    assert len(a.requests) <= drained_at + 1  # at most the one request in flight when drain was clicked
    await page.screenshot(path=str(tmp_path / "dashboard-drained.png"), full_page=True)

    # weight from the page, then undrain: alpha takes traffic again
    await row.locator("input.weight-input").fill("3")
    await row.locator("button.set-weight").click()
    await expect(row.locator(".weights")).to_contain_text("(set 3)", timeout=15_000)
    await row.locator("button.drain").click()
    await expect(row.locator(".health")).not_to_have_text("draining", timeout=15_000)
    before = len(a.requests)
    await page.wait_for_function(
        "([sel, n]) => Number(document.querySelector(sel).textContent) > n + 30",
        arg=[f'tr[data-endpoint="{a.endpoint.id}"] .requests', before], timeout=15_000)
    assert len(a.requests) > before + 30

    shot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    with contextlib.suppress(OSError):  # a read-only checkout still passes
        shutil.copyfile(shot, DOCS_SCREENSHOT)
