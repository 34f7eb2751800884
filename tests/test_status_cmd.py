"""`steelyard status` as a real process against an admin server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from admin_fake import FakeSource
from steelyard.admin.server import AdminServer

UP = "default/web/http"


@pytest.fixture
async def admin() -> AsyncIterator[tuple[AdminServer, FakeSource]]:
    source = FakeSource({UP: [("127.0.0.1:9001", 5), ("127.0.0.1:9002", 1)]})
    for _ in range(12):
        source.serve(UP)
    source.set_drained(UP, "127.0.0.1:9002", True)
    server = AdminServer(source, "127.0.0.1", 0, token="tok", tick=3600)
    await server.start()
    yield server, source
    await server.stop()


async def status(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "steelyard", "status", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, COLUMNS="160", **(env or {})))
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


async def test_table_shows_endpoints(admin: tuple[AdminServer, FakeSource]) -> None:
    server, _ = admin
    code, out = await status("--admin", f"http://127.0.0.1:{server.port}/",
                             env={"STEELYARD_ADMIN_TOKEN": "tok"})
    assert code == 0, out
    assert "default/web · http (HTTP) · WeightedRoundRobin" in out
    lines = {ep: line for line in out.splitlines()
             for ep in ("127.0.0.1:9001", "127.0.0.1:9002") if ep in line}
    assert "healthy" in lines["127.0.0.1:9001"] and " 10 " in lines["127.0.0.1:9001"]
    assert "draining" in lines["127.0.0.1:9002"] and "0/1" in lines["127.0.0.1:9002"]
    assert "reload" in out and "test.yaml" in out


async def test_piped_output_is_not_cut_to_80_columns(admin: tuple[AdminServer, FakeSource]) -> None:
    server, _ = admin
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "steelyard", "status", "--admin", f"127.0.0.1:{server.port}", "--admin-token",
        "tok", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    out = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
    assert proc.returncode == 0, out
    assert "…" not in out and "default/web · http (HTTP) · WeightedRoundRobin" in out


async def test_clear_errors(admin: tuple[AdminServer, FakeSource]) -> None:
    server, _ = admin
    code, out = await status("--admin", f"127.0.0.1:{server.port}")
    assert code == 1 and "needs a token" in out and "Traceback" not in out
    code, out = await status("--admin", "127.0.0.1:1")  # nothing listens on port 1
    assert code == 1 and "cannot reach the admin API" in out and "Traceback" not in out
    code, out = await status("--admin", "nonsense")
    assert code == 1 and "is not HOST:PORT" in out


async def test_watch_refreshes_until_interrupted(admin: tuple[AdminServer, FakeSource]) -> None:
    server, source = admin
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "steelyard", "status", "--admin", f"127.0.0.1:{server.port}", "--admin-token",
        "tok", "--watch", "--interval", "0.2", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, COLUMNS="160"))
    assert proc.stdout is not None
    seen = b""
    async def until(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            chunk = await proc.stdout.read(4096)  # type: ignore[union-attr]
            assert chunk, seen.decode()
            seen += chunk
    try:
        await asyncio.wait_for(until(b"127.0.0.1:9001"), 30)
        for _ in range(30):
            source.serve(UP)
        server._sample()
        await asyncio.wait_for(until(b" 40 "), 30)  # 10 + all 30 new requests: the other one is drained
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
