"""The admin server hooked into the real `Runtime` and `FileProvider` (as `steelyard run` does), on
127.0.0.1 with ephemeral ports: reload history, readiness, and start-up decisions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from e2e_support import free_port
from proxy_support import make_state, start_backends
from steelyard.admin.server import AdminSetupError
from steelyard.admin.wiring import check_options, start_admin
from steelyard.proxy import ProxyConfig, ProxyServer, UpstreamRegistry
from steelyard.runtime.apply import Runtime
from steelyard.runtime.file_provider import FileProvider, Loaded
from steelyard.runtime.run_cmd import add_arguments, options_from


@dataclass
class Options:
    admin: str | None
    admin_token: str | None = None
    worker_id: int | None = None


async def fetch(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_reloads_and_readiness_follow_the_runtime(tmp_path: Path) -> None:
    backends = await start_backends("a")
    state = make_state(backends)
    port = free_port()
    state = type(state)(upstreams=state.upstreams, listeners=tuple(
        type(lst)(address="127.0.0.1", port=port, protocol=lst.protocol, routes=lst.routes)
        for lst in state.listeners), source="lb.yaml")
    config = tmp_path / "lb.yaml"
    config.write_text("x")

    def loader(paths: Sequence[str]) -> Loaded:
        return Loaded(None, ("lb.yaml:1: LoadBalancer/web: spec.ports: field required",))

    provider = FileProvider([str(config)], loader=loader)
    proxy = ProxyServer(ProxyConfig())
    runtime = Runtime(proxy, UpstreamRegistry())
    admin = await start_admin(Options(admin=f"127.0.0.1:{free_port()}"), proxy, runtime, provider)
    assert admin is not None
    try:
        status, text = await fetch(admin.url + "/readyz")
        assert status == 503 and "no configuration applied yet" in text
        await runtime.apply(state)
        assert (await fetch(admin.url + "/readyz"))[0] == 200
        assert provider.accept(provider.load(), "file changed") is None  # invalid: last good one stays
        status, text = await fetch(admin.url + "/api/v1/reloads")
        assert status == 200
        assert '"ok": false' in text and "spec.ports: field required" in text
        assert '"ok": true' in text and "1 upstream(s), 1 endpoint(s)" in text
        status, text = await fetch(admin.url + "/metrics")
        assert 'steelyard_config_reloads_total{result="ok"} 1.0' in text
        assert 'steelyard_config_reloads_total{result="failed"} 1.0' in text
        runtime.stop_accepting()  # SIGTERM's first step: not ready from here on
        status, text = await fetch(admin.url + "/readyz")
        assert status == 503 and f"not listening on 127.0.0.1:{port}" in text
    finally:
        runtime.stop_accepting()
        await proxy.shutdown(1.0)
        await admin.stop()
    for b in backends:
        await b.close()


async def test_start_up_decisions() -> None:
    proxy = ProxyServer(ProxyConfig())
    runtime = Runtime(proxy, UpstreamRegistry())
    assert await start_admin(Options(admin="off"), proxy, runtime) is None
    assert await start_admin(Options(admin=None, worker_id=2), proxy, runtime) is None  # workers: none
    first = await start_admin(Options(admin="127.0.0.1:0"), proxy, runtime)
    assert first is not None
    try:
        with pytest.raises(AdminSetupError, match="cannot listen"):  # an explicit address must bind
            await start_admin(Options(admin=f"127.0.0.1:{first.port}"), proxy, runtime)
        assert len(runtime.after_apply) == 1  # the failed one left no hook behind
    finally:
        await first.stop()


def test_run_arguments_check_the_admin_address_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEELYARD_ADMIN_TOKEN", raising=False)
    with pytest.raises(ValueError, match="bearer token"):
        check_options("0.0.0.0:9901", None)
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        check_options("9901", None)
    assert check_options("127.0.0.1:9901", None) is None
    monkeypatch.setenv("STEELYARD_ADMIN_TOKEN", "from-env")
    assert check_options("0.0.0.0:9901", None) == "from-env"
    assert check_options("0.0.0.0:9901", "given") == "given"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["-c", "x.yaml", "--admin", "127.0.0.1:9999", "--admin-token", "t"])
    options = options_from(args)
    assert options.admin == "127.0.0.1:9999" and options.admin_token == "t"
