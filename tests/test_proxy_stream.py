"""Streaming: 100 MiB up and down through a proxy process with flat memory; backpressure both ways."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import uvloop

from proxy_support import Harness, make_state, start_backends

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")

MIB = 1 << 20


@pytest.fixture(scope="module")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    return uvloop.EventLoopPolicy()


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_100_mib_upload_and_download_stream_with_flat_memory() -> None:
    (a,) = await start_backends("a")
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(here / "proxy_support.py"), str(a.port),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\na"), 10)).startswith(b"HTTP/1.1 200")
        baseline = _peak_rss(proc.pid)

        size = 100 * MIB
        writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"u" * MIB
        for _ in range(size // MIB):
            writer.write(block)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert int(await reader.readexactly(length)) == size

        writer.write(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert b"Content-Length: %d" % size in head
        received = 0
        while received < size:
            chunk = await asyncio.wait_for(reader.read(4 * MIB), 30)
            assert chunk
            received += len(chunk)
        assert received == size

        growth = _peak_rss(proc.pid) - baseline
        print(f"peak RSS baseline {baseline / MIB:.1f} MiB, growth {growth / MIB:.1f} MiB")
        assert growth < 20 * MIB, f"proxy peak RSS grew by {growth / MIB:.1f} MiB"
        writer.close()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await a.close()


async def _settled(value, interval: float = 0.2, limit: float = 10.0) -> int:  # type: ignore[no-untyped-def]
    """Wait until `value()` stops changing; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last = -1
    while loop.time() < deadline:
        now = value()
        if now == last:
            return int(now)
        last = now
        await asyncio.sleep(interval)
    raise AssertionError("never settled")


async def test_slow_client_pauses_the_backend() -> None:
    (a,) = await start_backends("a")
    size = 256 * MIB
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        await client.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        stalled_at = await _settled(lambda: a.sent)  # the client reads nothing
        assert 0 < stalled_at < size // 4, f"backend wrote {stalled_at} bytes to a client that reads nothing"
        received = 0
        while received < size:
            chunk = await asyncio.wait_for(client.reader.read(4 * MIB), 30)
            assert chunk
            received += len(chunk)
        assert received >= size and a.sent == size
        client.close()
    await a.close()


async def test_slow_backend_pauses_the_client() -> None:
    (a,) = await start_backends("a")
    size = 128 * MIB
    async with Harness(make_state([a])) as h:
        client = await h.connect()
        client.writer.transport.set_write_buffer_limits(high=size + MIB)  # let the client push freely
        client.writer.write(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"s" * MIB
        for _ in range(size // MIB):
            client.writer.write(block)
        left = await _settled(lambda: client.writer.transport.get_write_buffer_size())
        assert left > size // 2, "the proxy kept reading although the backend does not"
        (conn,) = h.proxy.http_connections
        assert conn.paused, "client reading is paused while the upstream buffer is full"
        a.release.set()
        r = await client.response(timeout=30)
        assert (r.status, int(r.body)) == (200, size)
        client.close()
    await a.close()
