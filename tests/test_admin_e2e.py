"""`steelyard run --admin` as real processes on 127.0.0.1: status CLI, metrics after known traffic, reload
history, access log lines in JSON, and one aggregated admin API over `--workers 2`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from e2e_support import HttpClient, SteelyardProcess, backends, free_port, until, write_config


def _config_loader_missing() -> bool:
    import steelyard.config

    return not hasattr(steelyard.config, "load_files")


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_config_loader_missing(), reason="needs steelyard.config.load_files")]


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def get_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return resp.read().decode()


async def send(port: int, n: int, connections: int = 1) -> list[str]:
    async def one(count: int) -> list[str]:
        client = HttpClient(port)
        out = [(await client.request("GET", "/hello")).backend for _ in range(count)]
        await client.close()
        return out
    per = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    return [name for part in await asyncio.gather(*(one(k) for k in per)) for name in part]


def test_run_serves_admin_metrics_status_reloads_and_access_log(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with backends("a", "b") as procs:
        config = write_config(tmp_path / "lb.yaml", port=port,
                              endpoints=[(p.address, 1) for p in procs.values()])
        proxy = SteelyardProcess([config], "--admin", f"127.0.0.1:{admin}", "--access-log", "1",
                                 "--log-format", "json")
        try:
            proxy.ready()
            assert get_text(admin, "/readyz") == "ready\n"
            names = asyncio.run(send(port, 10))
            assert sorted(set(names)) == ["a", "b"]

            metrics = get_text(admin, "/metrics")
            for name in ("a", "b"):
                ep = procs[name].address
                line = next(x for x in metrics.splitlines() if x.startswith("steelyard_requests_total{")
                            and f'endpoint="{ep}"' in x and 'code_class="2xx"' in x)
                assert float(line.rsplit(" ", 1)[1]) == names.count(name)
            access = [json.loads(x) for x in proxy.output().splitlines()
                      if x.startswith("{") and '"steelyard.access"' in x]
            assert len(access) == 10 and all(x["path"] == "/hello" and x["status"] == 200 for x in access)

            status = subprocess.run(
                [sys.executable, "-m", "steelyard", "status", "--admin", f"127.0.0.1:{admin}"],
                capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
            assert status.returncode == 0, status.stdout + status.stderr
            assert "default/web" in status.stdout and procs["a"].address in status.stdout

            config.write_text("kind: LoadBalancer\nnot: valid\n")  # the last good one keeps serving
            reloads = until(lambda: [r for r in get_json(admin, "/api/v1/reloads")["reloads"] if not r["ok"]])
            assert reloads and reloads[0]["errors"], get_json(admin, "/api/v1/reloads")
            assert get_text(admin, "/readyz") == "ready\n"
            proxy.signal(signal.SIGTERM)
            assert proxy.wait() == 0
        finally:
            proxy.stop()


def test_workers_share_one_aggregated_admin_api(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    with backends("a", "b") as procs:
        config = write_config(tmp_path / "lb.yaml", port=port,
                              endpoints=[(p.address, 1) for p in procs.values()])
        proxy = SteelyardProcess([config], "--workers", "2", "--admin", f"127.0.0.1:{admin}")
        try:
            proxy.wait_for(r"steelyard ready: 2 workers .*; admin http://127\.0\.0\.1:\d+/", timeout=30)
            assert until(lambda: get_json(admin, "/api/v1/state")["ready"]), get_json(admin, "/api/v1/state")
            asyncio.run(send(port, 40, connections=8))

            def total() -> int:
                rows = get_json(admin, "/api/v1/endpoints")["endpoints"]
                return sum(r["requests"] for r in rows)
            assert until(lambda: total() == 40), total()
            rows = get_json(admin, "/api/v1/endpoints")["endpoints"]
            assert all(r["detail"]["workers"] == 2 for r in rows)
            proxy.signal(signal.SIGTERM)
            assert proxy.wait() == 0
        finally:
            proxy.stop()
