"""Audit of `steelyard run` as a process: hot reload, invalid changes, graceful shutdown, `--workers N`
and `--max-connections`, with real processes and sockets on 127.0.0.1.

Five tests began as strict xfails for bugs this audit found, and pass since their fixes; the others pin
tricky cases verified to work.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e_support import (
    HttpClient,
    Process,
    SteelyardProcess,
    backends,
    free_port,
    request_once,
    require,
    until,
    write_config,
)

pytestmark = pytest.mark.slow

DEAD = "127.0.0.1:1"  # an endpoint nobody listens on, for tests that need no backend answer


def _start(configs: list[Path], *extra: str) -> SteelyardProcess:
    proxy = SteelyardProcess(configs, "--poll-interval", "100ms", *extra)
    proxy.ready()
    return proxy


def _http_get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:\{{\}})? ([0-9.e+]+)$", text, re.M)
    assert found, text
    return float(found.group(1))


# -- --workers N ----------------------------------------------------------------------------------------


def test_sighup_while_workers_start_does_not_kill_them(tmp_path: Path) -> None:
    require()
    config = write_config(tmp_path / "lb.yaml", port=free_port(), endpoints=[(DEAD, 1)])
    proxy = SteelyardProcess([config], "--workers", "2")
    try:
        assert until(lambda: len(_children(proxy.pid)) == 2, 10), proxy.output()
        proxy.signal(signal.SIGHUP)  # e.g. a config-management run; the supervisor has its handler by now
        proxy.wait_for(r"steelyard ready: 2 workers", 15)
        assert proxy.proc.poll() is None, proxy.output()
    finally:
        proxy.stop()


def test_sigterm_while_a_dead_worker_awaits_its_restart_exits_0(tmp_path: Path) -> None:
    require()
    config = write_config(tmp_path / "lb.yaml", port=free_port(), endpoints=[(DEAD, 1)])
    proxy = _start([config], "--workers", "2")
    try:
        pids = [int(p) for p in proxy.wait_for(r"2 workers \(pids (\d+), (\d+)\)").groups()]
        mark = proxy.mark()
        os.kill(pids[0], signal.SIGKILL)
        proxy.wait_for(rf"worker \d \(pid {pids[0]}\) exited .* restarting in", 10, mark)
        proxy.signal(signal.SIGTERM)  # within the 0.5 s backoff
        code = proxy.wait(15)
    finally:
        proxy.stop()
    assert code == 0, proxy.output()


def test_workers_aggregate_admin_with_the_token_from_the_environment(tmp_path: Path) -> None:
    require()
    token = "s3cret-token"
    with backends("a") as bs:
        port, admin = free_port(), free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        proxy = Process(["run", "-c", str(config), "--workers", "2", "--admin", f"127.0.0.1:{admin}",
                         "--drain-timeout", "5s"], "steelyard", env={"STEELYARD_ADMIN_TOKEN": token})
        try:
            proxy.wait_for(r"steelyard ready: 2 workers", 30)
            assert asyncio.run(request_once(port)).status == 200
            ready = until(lambda: _http_get(admin, "/readyz")[0] == 200, 5)
            assert ready, (_http_get(admin, "/readyz"), proxy.output())

            def served() -> float:  # (the aggregate polls the workers once a second)
                status, metrics = _http_get(admin, "/metrics", token)
                assert status == 200, metrics
                return sum(float(v) for v in re.findall(r"^steelyard_requests_total\{[^}]*\} (\S+)$",
                                                        metrics, re.M))
            assert until(lambda: served() >= 1, 5), _http_get(admin, "/metrics", token)
        finally:
            proxy.stop()


def test_max_connections_applies_per_worker_and_refusals_sum_in_the_supervisor_metrics(
        tmp_path: Path) -> None:
    require()
    with backends("a") as bs:
        port, admin = free_port(), free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        proxy = _start([config], "--workers", "2", "--max-connections", "1", "--admin", f"127.0.0.1:{admin}")

        async def scenario() -> tuple[int, int, int]:
            clients = [HttpClient(port) for _ in range(10)]
            for client in clients:
                await client.connect()
            await asyncio.sleep(0.3)  # every worker has accepted (or refused) its share

            async def one(client: HttpClient) -> bool:
                try:
                    return (await asyncio.wait_for(client.request(), 5)).status == 200
                except (OSError, ConnectionError):
                    return False
            served = sum(await asyncio.gather(*(one(c) for c in clients)))
            for client in clients:
                await client.close()
            await asyncio.sleep(0.3)
            after = await request_once(port)  # the slots are free again
            return served, len(clients) - served, after.status

        try:
            served, refused, after = asyncio.run(scenario())
            assert 1 <= served <= 2 and after == 200, (served, refused, proxy.output())

            def counted() -> float:
                return _metric(_http_get(admin, "/metrics")[1], "steelyard_connections_refused_total")
            assert until(lambda: counted() == refused, 6), (counted(), refused)
            proxy.signal(signal.SIGTERM)
            assert proxy.wait(15) == 0, proxy.output()
        finally:
            proxy.stop()


# -- --max-connections values -----------------------------------------------------------------------------


def test_max_connections_garbage_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    require()
    config = write_config(tmp_path / "lb.yaml", port=free_port(), endpoints=[(DEAD, 1)])
    runs = {value: subprocess.Popen([sys.executable, "-m", "steelyard", "run", "-c", str(config),
                                     "--admin", "off", f"--max-connections={value}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for value in ("lots", "-3", "1.5", "")}
    for value, run in runs.items():
        out, _ = run.communicate(timeout=20)
        assert run.returncode == 2, (value, out)
        assert "--max-connections" in out and "Traceback" not in out, (value, out)


# -- shutdown --------------------------------------------------------------------------------------------


def test_drain_timeout_exceeded_cuts_the_slow_request_closes_idle_ones_and_exits_0(tmp_path: Path) -> None:
    require()
    with backends("a") as bs:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        proxy = _start([config], "--drain-timeout", "1s")

        async def scenario() -> tuple[str, bytes, float]:
            idle = HttpClient(port)
            assert (await idle.request()).status == 200
            slow = asyncio.create_task(request_once(port, path="/?delay=6"))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            proxy.signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            proxy.signal(signal.SIGTERM)  # twice: still a drain, still exit 0
            assert idle.reader is not None
            idle_read = await asyncio.wait_for(idle.reader.read(100), 3)  # closed at once: EOF
            try:
                outcome = f"answered {(await slow).status}"
            except (OSError, ConnectionError) as exc:
                outcome = f"cut: {type(exc).__name__}"
            await idle.close()
            return outcome, idle_read, time.monotonic() - started

        try:
            outcome, idle_read, took = asyncio.run(scenario())
            code = proxy.wait(10)
        finally:
            proxy.stop()
    assert idle_read == b""
    assert outcome.startswith("cut"), outcome
    assert 0.8 <= took <= 3.5, took
    assert code == 0, proxy.output()


# -- hot reload -------------------------------------------------------------------------------------------


def test_second_file_deleted_then_recreated_keeps_serving_and_keep_alive_survives(tmp_path: Path) -> None:
    require()
    with backends("a", "b") as bs:
        port, port2 = free_port(), free_port()
        first = write_config(tmp_path / "one.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        second = write_config(tmp_path / "two.yaml", port=port2, endpoints=[(bs["a"].address, 1)],
                              name="api")
        proxy = _start([first, second])

        async def scenario() -> list[str]:
            kept = HttpClient(port)
            seen = [(await kept.request()).backend]
            local = kept.local_port
            mark = proxy.mark()
            second.unlink()
            await asyncio.to_thread(proxy.wait_for, r"is invalid; keeping the last good one", 5, mark)
            await asyncio.to_thread(proxy.wait_for, rf"{re.escape(str(second))}.*no such file", 5, mark)
            seen.append((await request_once(port2, host_header="my-domain.com")).backend)
            seen.append((await kept.request()).backend)
            mark = proxy.mark()
            write_config(second, port=port2, endpoints=[(bs["b"].address, 1)], name="api")
            await asyncio.to_thread(proxy.wait_for, "configuration reloaded", 5, mark)
            seen.append((await request_once(port2)).backend)
            seen.append((await kept.request()).backend)
            assert kept.local_port == local  # the same keep-alive connection all along
            await kept.close()
            return seen

        try:
            seen = asyncio.run(scenario())
        finally:
            proxy.stop()
    assert seen == ["a", "a", "a", "b", "a"], seen


def test_supervisor_readyz_is_503_as_soon_as_sigterm_starts_the_shutdown_delay(tmp_path: Path) -> None:
    require()
    port, admin = free_port(), free_port()
    config = write_config(tmp_path / "lb.yaml", port=port, endpoints=[(DEAD, 1)])
    proxy = _start([config], "--workers", "2", "--admin", f"127.0.0.1:{admin}", "--shutdown-delay", "3s")

    async def just_after_a_poll() -> None:
        """Return right after the supervisor's admin tick (its poll of the workers): the next is 1 s away."""
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        writer.write(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        events = 0
        while events < 2:  # the first is written at once, the second after a tick
            line = await asyncio.wait_for(reader.readline(), 5)
            events += line.startswith(b"event: state")
        writer.close()

    try:
        assert until(lambda: _http_get(admin, "/readyz")[0] == 200, 8), _http_get(admin, "/readyz")
        asyncio.run(just_after_a_poll())
        mark = proxy.mark()
        proxy.signal(signal.SIGTERM)
        proxy.wait_for(r"\[worker 1\] not ready; still accepting", 5, mark)
        proxy.wait_for(r"\[worker 2\] not ready; still accepting", 5, mark)
        status, body = _http_get(admin, "/readyz")
        assert status == 503, body
    finally:
        proxy.signal(signal.SIGTERM)
        proxy.stop()


def test_a_worker_that_dies_while_the_file_is_invalid_comes_back_with_the_last_good_config(
        tmp_path: Path) -> None:
    require()
    with backends("a") as bs:
        port = free_port()
        path = write_config(tmp_path / "lb.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        proxy = _start([path], "--workers", "2")
        try:
            pids = [int(p) for p in proxy.wait_for(r"2 workers \(pids (\d+), (\d+)\)").groups()]
            mark = proxy.mark()
            path.write_text(path.read_text().replace("type: RoundRobin", "type: Fastest"))
            proxy.wait_for(r"\[worker 1\] .*is invalid; keeping the last good one", 5, mark)
            proxy.wait_for(r"\[worker 2\] .*is invalid; keeping the last good one", 5, mark)
            os.kill(pids[0], signal.SIGKILL)
            proxy.wait_for(r"\[worker 1\] .*is invalid; starting from the last good one", 4, mark)
            proxy.wait_for(r"worker 1 restarted \(pid \d+\)", 4, mark)
            assert asyncio.run(request_once(port)).status == 200
            mark = proxy.mark()  # the file fixed: the restarted worker follows it like its sibling
            path.write_text(path.read_text().replace("type: Fastest", "type: LeastConnections"))
            proxy.wait_for(r"\[worker 1\] .*configuration reloaded", 5, mark)
            proxy.wait_for(r"\[worker 2\] .*configuration reloaded", 5, mark)
        finally:
            proxy.stop()


def test_a_reload_adding_a_port_held_by_another_process_binds_it_once_freed_and_stays_ready(
        tmp_path: Path) -> None:
    require()
    import socket

    with backends("a") as bs:
        port, admin = free_port(), free_port()
        first = write_config(tmp_path / "one.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        second = tmp_path / "two.yaml"
        holder = socket.socket()  # no SO_REUSEPORT: Steelyard's bind fails while it is open
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        second.write_text("")  # valid and empty to begin with
        proxy = _start([first, second], "--admin", f"127.0.0.1:{admin}")
        try:
            mark = proxy.mark()
            write_config(second, port=taken, endpoints=[(bs["a"].address, 1)], name="api")
            proxy.wait_for(rf"configuration reloaded .*could not listen: cannot listen on 127.0.0.1:{taken}",
                           5, mark)
            assert asyncio.run(request_once(port)).status == 200
            assert _http_get(admin, "/readyz")[0] == 200
            holder.close()
            proxy.wait_for(rf"now listening on http://127.0.0.1:{taken}", 5, mark)
            assert asyncio.run(request_once(taken)).backend == "a"
        finally:
            holder.close()
            proxy.stop()
