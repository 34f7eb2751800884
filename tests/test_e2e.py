"""End to end: real `steelyard run` and `steelyard backend` processes on 127.0.0.1 (issue 3, "Done when").

Each test writes its configuration into tmp_path, starts the backends on ephemeral ports and Steelyard on
a free port, and talks HTTP to it like a user would. Load is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest

from e2e_support import (
    HttpClient,
    Process,
    SteelyardProcess,
    backends,
    free_port,
    load,
    request_once,
    require,
    sequence,
    write_config,
)

pytestmark = pytest.mark.slow

FAST_HEALTH = """\
  healthCheck:
    type: HTTP
    path: /healthz
    interval: 100ms
    timeout: 500ms
    healthyThreshold: 1
    unhealthyThreshold: 1
"""
RETRIES = """\
  retries:
    attempts: 2
    on: [connect-failure, reset, "503"]
"""
OUTLIERS = """\
  outlierDetection:
    consecutiveFailures: 1
    baseEjectionTime: 10s
    maxEjectionPercent: 50
"""


def _start(configs: list[Path], *extra: str) -> SteelyardProcess:
    proxy = SteelyardProcess(configs, "--poll-interval", "100ms", *extra)
    proxy.ready()
    return proxy


def test_weighted_round_robin_5_1_1_order_end_to_end(tmp_path: Path) -> None:
    require(strategies=["WeightedRoundRobin"])
    with backends("a", "b", "c") as bs:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, strategy="WeightedRoundRobin",
                              endpoints=[(bs["a"].address, 5), (bs["b"].address, 1), (bs["c"].address, 1)])
        proxy = _start([config])
        try:
            smooth_wrr_cycle = ["a", "a", "b", "a", "c", "a", "a"]  # nginx's smooth weighted round robin
            assert sequence(port, 14) == smooth_wrr_cycle * 2
        finally:
            proxy.stop()


def test_least_connections_sends_less_to_a_slow_backend(tmp_path: Path) -> None:
    require(strategies=["LeastConnections"])
    with backends("a", "b") as fast, backends("slow", extra=["--delay", "0.2"]) as slow:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, strategy="LeastConnections",
                              endpoints=[(fast["a"].address, 1), (fast["b"].address, 1),
                                         (slow["slow"].address, 1)])
        proxy = _start([config])
        try:
            result = asyncio.run(load(port, connections=6, requests=300))
        finally:
            proxy.stop()
    assert result.non_2xx == 0, result
    # Round robin would give the slow backend a third (100), as much as each fast one. Least connections
    # gives each backend about the same number in flight, so requests in proportion to its speed: the slow
    # one's share shrinks as the fast ones get faster (a busy machine slows them too; hence a ratio).
    counts = result.backends
    assert counts["slow"] <= 0.5 * min(counts["a"], counts["b"]), counts
    assert counts["slow"] < 60, counts


def test_time_sliced_round_robin_switches_backend_after_its_slice(tmp_path: Path) -> None:
    require(strategies=["TimeSlicedRoundRobin"])
    with backends("a", "b") as bs:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, strategy="TimeSlicedRoundRobin",
                              strategy_extra="    timeSlice: 400ms\n",
                              endpoints=[(bs["a"].address, 1), (bs["b"].address, 1)])
        proxy = _start([config])

        async def observe() -> list[tuple[float, str]]:
            client = HttpClient(port)
            seen = []
            started = time.monotonic()
            try:
                while time.monotonic() - started < 1.3:
                    response = await client.request()
                    seen.append((time.monotonic() - started, response.backend))
                    await asyncio.sleep(0.01)
            finally:
                await client.close()
            return seen

        try:
            seen = asyncio.run(observe())
        finally:
            proxy.stop()
    runs: list[list[tuple[float, str]]] = []
    for t, who in seen:
        if runs and runs[-1][0][1] == who:
            runs[-1].append((t, who))
        else:
            runs.append([(t, who)])
    assert 2 <= len(runs) <= 6, [(r[0][1], len(r)) for r in runs]
    # Every run that ended inside the window lasted about one slice (never a single request).
    for run in runs[1:-1]:
        assert run[-1][0] - run[0][0] > 0.2, [(r[0][1], r[0][0], r[-1][0]) for r in runs]
    assert {r[0][1] for r in runs} == {"a", "b"}


def test_a_backend_killed_under_load_gives_no_client_errors(tmp_path: Path) -> None:
    require(health=True)
    with backends("a", "b") as bs:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, strategy="RoundRobin",
                              policy_extra=FAST_HEALTH + RETRIES + OUTLIERS,
                              endpoints=[(bs["a"].address, 1), (bs["b"].address, 1)])
        proxy = _start([config])

        async def scenario() -> tuple[object, object]:
            stop = asyncio.Event()
            running = asyncio.create_task(load(port, connections=4, until=stop, max_requests=6000))
            await asyncio.sleep(0.4)
            bs["b"].proc.kill()  # SIGKILL: resets, refused connects, no goodbye
            await asyncio.sleep(1.0)
            stop.set()
            before = await running
            after = await load(port, connections=2, requests=20)
            return before, after

        try:
            during, after = asyncio.run(scenario())
        finally:
            proxy.stop()
    assert during.errors == [] and during.non_2xx == 0, (during.statuses, during.errors[:5], proxy.output())
    assert during.backends["a"] > 0 and during.backends["b"] > 0
    assert after.backends == {"a": 20}


def test_all_endpoints_down_gives_503_naming_the_load_balancer(tmp_path: Path) -> None:
    require(health=True)
    with backends("a") as bs:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, name="shop", policy_extra=FAST_HEALTH,
                              endpoints=[(bs["a"].address, 1), (f"127.0.0.1:{free_port()}", 1)])
        proxy = _start([config])
        try:
            bs["a"].control(healthy=False)
            deadline = time.monotonic() + 10
            response = asyncio.run(request_once(port))
            while response.status != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
                response = asyncio.run(request_once(port))
        finally:
            proxy.stop()
    assert response.status == 503, (response, proxy.output())
    assert b"shop" in response.body and b"no usable endpoint" in response.body, response.body


def test_reload_under_load_adding_and_removing_a_backend_gives_no_errors(tmp_path: Path) -> None:
    require()
    with backends("a", "b", "c") as bs:
        port = free_port()
        path = tmp_path / "lb.yaml"
        write_config(path, port=port, endpoints=[(bs["a"].address, 1), (bs["b"].address, 1)])
        proxy = _start([path])

        async def scenario() -> tuple[object, object]:
            stop = asyncio.Event()
            running = asyncio.create_task(load(port, connections=4, until=stop, max_requests=8000))
            await asyncio.sleep(0.3)
            mark = proxy.mark()
            write_config(path, port=port, endpoints=[(bs["b"].address, 1), (bs["c"].address, 1)])
            await asyncio.to_thread(proxy.wait_for, "configuration reloaded", 10, mark)
            await asyncio.sleep(0.5)
            stop.set()
            during = await running
            after = await load(port, connections=2, requests=40)
            return during, after

        try:
            during, after = asyncio.run(scenario())
        finally:
            proxy.stop()
    assert during.non_2xx == 0, (during.statuses, during.errors[:5])
    assert during.backends["a"] > 0 and during.backends["c"] > 0, during.backends
    assert set(after.backends) == {"b", "c"}, after.backends


def test_an_invalid_change_is_logged_and_the_last_good_configuration_keeps_serving(tmp_path: Path) -> None:
    require(validate=True)
    with backends("a") as bs:
        port = free_port()
        path = tmp_path / "lb.yaml"
        write_config(path, port=port, endpoints=[(bs["a"].address, 1)])
        proxy = _start([path])
        try:
            mark = proxy.mark()
            good_text = path.read_text()
            path.write_text(good_text.replace("type: RoundRobin", "type: Fastest").replace(
                "port: ", "port: 70000 #"))
            proxy.wait_for(r"is invalid; keeping the last good one", 10, mark)
            validate = Process(["validate", str(path)], "validate")
            assert validate.wait(30) == 1
            errors = [line.strip() for line in validate.lines if line.strip().startswith(f"{path}:")]
            assert len(errors) >= 2, validate.output()
            for error in errors:  # the same text `steelyard validate` prints, each error
                proxy.wait_for(re.escape(error), 5, mark)
            assert sequence(port, 3) == ["a", "a", "a"]
        finally:
            proxy.stop()


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(tmp_path: Path) -> None:
    require()
    with backends("a") as bs:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        proxy = _start([config])

        async def scenario() -> tuple[object, bool]:
            pending = asyncio.create_task(request_once(port, path="/?delay=1.0"))
            await asyncio.sleep(0.4)
            proxy.signal(signal.SIGTERM)
            await asyncio.to_thread(proxy.wait_for, "draining", 10)
            try:
                await request_once(port)
                refused = False
            except OSError:
                refused = True
            return await pending, refused

        try:
            response, refused = asyncio.run(scenario())
            code = proxy.wait(20)
        finally:
            proxy.stop()
    assert response.status == 200 and response.backend == "a", response
    assert refused, "new connections must be refused once draining"
    assert code == 0, proxy.output()


def test_shutdown_delay_reports_not_ready_but_keeps_accepting_then_drains(tmp_path: Path) -> None:
    """Kubernetes without a preStop sleep: endpoint lists lag a SIGTERM by a moment, so for
    --shutdown-delay the pod says it is not ready while still serving whoever has not heard yet."""
    require()
    with backends("a") as bs:
        port, admin = free_port(), free_port()
        config = write_config(tmp_path / "lb.yaml", port=port, endpoints=[(bs["a"].address, 1)])
        proxy = _start([config], "--admin", f"127.0.0.1:{admin}", "--shutdown-delay", "1500ms")

        async def readyz() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin)
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status = int((await reader.readline()).split()[1])
            writer.close()
            return status

        async def scenario() -> tuple[int, int, object]:
            before = await readyz()
            proxy.signal(signal.SIGTERM)
            await asyncio.to_thread(proxy.wait_for, "still accepting", 10)
            during = await readyz()
            response = await request_once(port)  # a new connection, after SIGTERM
            return before, during, response

        try:
            before, during, response = asyncio.run(scenario())
            proxy.wait_for("draining", 10)
            code = proxy.wait(20)
        finally:
            proxy.stop()
    assert (before, during) == (200, 503)
    assert response.status == 200 and response.backend == "a", response  # type: ignore[attr-defined]
    assert code == 0, proxy.output()


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def _accepted_by(listen_port: int, client_port: int) -> int | None:
    """The inode of the socket that accepted our connection (local port = listener, remote = ours)."""
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            cols = row.split()
            local, remote = cols[1], cols[2]
            if int(local.split(":")[1], 16) == listen_port and int(remote.split(":")[1], 16) == client_port:
                return int(cols[9])
    return None


def test_two_workers_serve_both_get_traffic_and_a_dead_one_is_restarted(tmp_path: Path) -> None:
    require()
    with backends("a", "b") as bs:
        port = free_port()
        config = write_config(tmp_path / "lb.yaml", port=port,
                              endpoints=[(bs["a"].address, 1), (bs["b"].address, 1)])
        proxy = _start([config], "--workers", "2")
        try:
            pids = [int(p) for p in proxy.wait_for(r"2 workers \(pids (\d+), (\d+)\)").groups()]

            async def scenario() -> dict[int, int]:
                clients = [HttpClient(port) for _ in range(24)]
                served: dict[int, int] = {pid: 0 for pid in pids}
                try:
                    for client in clients:
                        assert (await client.request()).status == 200
                    inodes = {pid: _socket_inodes(pid) for pid in pids}
                    for client in clients:
                        inode = _accepted_by(port, client.local_port)
                        owner = [pid for pid in pids if inode in inodes[pid]]
                        assert len(owner) == 1, (inode, inodes)
                        served[owner[0]] += 1
                finally:
                    for client in clients:
                        await client.close()
                return served

            served = asyncio.run(scenario())
            assert all(n > 0 for n in served.values()), served
            # A worker that dies is restarted (after a backoff) and the listener keeps serving meanwhile.
            mark = proxy.mark()
            os.kill(pids[0], signal.SIGKILL)
            proxy.wait_for(rf"worker \d \(pid {pids[0]}\) exited", 10, mark)
            assert sorted(sequence(port, 4)) == ["a", "a", "b", "b"]
            proxy.wait_for(r"worker \d restarted \(pid \d+\)", 20, mark)
            proxy.signal(signal.SIGTERM)
            assert proxy.wait(30) == 0, proxy.output()
        finally:
            proxy.stop()


def test_weight_0_drains_no_new_requests_in_flight_ones_finish(tmp_path: Path) -> None:
    require()
    with backends("a", "b") as bs:
        port = free_port()
        path = tmp_path / "lb.yaml"
        write_config(path, port=port, endpoints=[(bs["a"].address, 1), (bs["b"].address, 0)])
        proxy = _start([path])

        async def scenario() -> tuple[object, list[str]]:
            slow = asyncio.create_task(request_once(port, path="/?delay=1.0"))  # only a is usable
            await asyncio.sleep(0.3)
            mark = proxy.mark()
            write_config(path, port=port, endpoints=[(bs["a"].address, 0), (bs["b"].address, 1)])
            await asyncio.to_thread(proxy.wait_for, "configuration reloaded", 10, mark)
            after = await asyncio.to_thread(sequence, port, 10)
            return await slow, after

        try:
            slow, after = asyncio.run(scenario())
            mark = proxy.mark()
            proxy.signal(signal.SIGHUP)  # forces a re-read; the same configuration is dropped as a duplicate
            proxy.wait_for(r"re-read \(SIGHUP\): unchanged", 10, mark)
        finally:
            proxy.stop()
    assert slow.status == 200 and slow.backend == "a", slow
    assert after == ["b"] * 10


def test_invalid_configuration_at_start_prints_the_errors_and_exits_1(tmp_path: Path) -> None:
    require()
    path = write_config(tmp_path / "lb.yaml", port=free_port(), endpoints=[("127.0.0.1:1", 1)],
                        strategy="Fastest")
    proxy = SteelyardProcess([path])
    assert proxy.wait(30) == 1
    out = proxy.output()
    assert "Fastest" in out and str(path) in out and "Traceback" not in out, out


def test_workers_that_cannot_bind_stop_the_start_with_exit_1(tmp_path: Path) -> None:
    require()
    import socket

    with socket.socket() as taken:  # no SO_REUSEPORT: the workers' bind fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "lb.yaml", port=port, endpoints=[("127.0.0.1:1", 1)])
        proxy = SteelyardProcess([config], "--workers", "2")
        assert proxy.wait(30) == 1
    out = proxy.output()
    assert f"cannot listen on 127.0.0.1:{port}" in out and "failed to start" in out, out
    assert "Traceback" not in out, out
