"""Proxy benchmark: Steelyard against HAProxy and nginx, same backends, same machine, same run.

Why it is built this way (issue 3, section 5):
- The machine is small (2 cores) and shared, so absolute numbers drift from minute to minute. Every
  row runs once per round, rounds rotate the order, the figure is the median of the rounds, and each
  proxy is reported as a ratio to HAProxy measured in the same round.
- Pinned rows put the proxy alone on core 0 and wrk + backends on core 1 (taskset), so the proxy's own
  cost is what limits the rate; the unpinned rows let everything share both cores (the 2-worker run).
- CPU-µs per request is the proxy's utime+stime (every process of its process group and every
  descendant, from /proc/PID/stat) over the run, divided by the requests wrk counted.
- Backends are nginx `return 200 "ok"` servers on 127.0.0.1 ports; the bulk backend streams 1 GiB from
  memory and the client reads and discards it. Everything binds to 127.0.0.1 only.
- Every process started here gets its own process group and is stopped on exit, error or Ctrl-C.

Run `python -m bench.proxy --help`; `make bench` runs it through `python -m bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
OUT = Path(__file__).resolve().parent / "out"
DOCS = REPO / "docs" / "benchmarks.md"
RUN_CMD = REPO / "src" / "steelyard" / "runtime" / "run_cmd.py"

HOST = "127.0.0.1"
BULK_BYTES = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
DISTURBED = 1.1  # a sample whose client core cost more than this x its row's best is measured again
PROXY_CPUS = {0}
CLIENT_CPUS = {1}
DEBIAN_PACKAGES = ("wrk", "haproxy", "nginx")

SECTION_BEGIN = "<!-- proxy:begin -->"
SECTION_END = "<!-- proxy:end -->"
NOTES_BEGIN = "<!-- proxy-notes:begin -->"
NOTES_END = "<!-- proxy-notes:end -->"


class NotAvailable(Exception):
    """A row cannot run here (tool missing, Steelyard not serving yet); the reason goes in the table."""


# --------------------------------------------------------------------------------------------------
# Processes: each in its own process group, all stopped at exit.


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def process_tree(root: int, pgid: int) -> list[int]:
    """The root, its descendants, and every process of its process group (workers may re-parent)."""
    parent: dict[int, int] = {}
    members: set[int] = set()
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None:
            continue
        parent[pid] = int(fields[1])
        if int(fields[2]) == pgid:
            members.add(pid)
    if root in parent:
        members.add(root)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return sorted(members)


def cpu_ticks(pids: Sequence[int]) -> tuple[int, int]:
    """(utime, stime) in clock ticks summed over pids; every thread of a process is included."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user, system


class HostCounters(NamedTuple):
    """Counters so far, read before and after a row: the deltas are the row's (the run has the host)."""

    busy: int  # clock ticks the given cpus spent not idle (iowait counts as idle)
    total: int  # clock ticks of the given cpus
    segments: int  # TCP segments sent, host-wide (every hop counts)
    switches: int  # context switches, host-wide


def host_counters(cpus: set[int]) -> HostCounters:
    """One read of /proc/stat and one of /proc/net/snmp: what a row costs beside the proxy."""
    busy = total = switches = segments = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(x) for x in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
        elif name == "ctxt":
            switches = int(rest)
    snmp = Path("/proc/net/snmp").read_text().splitlines()
    lines = [line.split() for line in snmp if line.startswith("Tcp:")]
    if len(lines) >= 2 and "OutSegs" in lines[0]:
        segments = int(lines[1][lines[0].index("OutSegs")])
    return HostCounters(busy, total, segments, switches)


def set_affinity(pids: Sequence[int], cpus: set[int]) -> None:
    """Move every thread of every pid to cpus (sched_setaffinity acts on one thread at a time)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


class Proc:
    """A started command in its own session/process group, output to a log file."""

    running: list[Proc] = []

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        cpus: set[int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        argv = list(argv)
        if cpus is not None:
            argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
        self.argv = argv
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
                env=env,
            )
        self.pid = self.popen.pid
        self.pgid = self.pid
        self.seen: dict[int, str] = {}  # pid -> start time, so a re-used pid is never signalled
        Proc.running.append(self)

    def tree(self) -> list[int]:
        pids = process_tree(self.pid, self.pgid) if self.alive() else []
        for pid in pids:
            fields = _stat_fields(pid)
            if fields is not None:
                self.seen.setdefault(pid, fields[19])
        return pids

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the log, the ones that say what went wrong first, cut to one table cell."""
        try:
            text = [t.strip() for t in self.log.read_text(errors="replace").splitlines() if t.strip()]
        except OSError:
            return ""
        bad = [t for t in text if re.search(r"ALERT|error|Error|emerg|Traceback", t)]
        tail = " / ".join((bad or text)[-lines:])
        return tail if len(tail) <= 300 else tail[:297] + "..."

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group, SIGKILL after `grace`; then any descendant seen that left the group."""
        self.tree()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(2)
        for pid, started in self.seen.items():
            fields = _stat_fields(pid)
            if pid != self.pid and fields is not None and fields[19] == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self in Proc.running:
            Proc.running.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in reversed(list(cls.running)):
            with contextlib.suppress(Exception):
                proc.stop(grace=3.0)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------------------
# Tools, ports, readiness.


def ensure_tools(install: bool = True) -> dict[str, str]:
    """Install wrk, haproxy and nginx from Debian when missing (as root). Returns {tool: why missing}."""

    def missing() -> list[str]:
        return [t for t in DEBIAN_PACKAGES if not _which(t)]

    need = missing()
    if need and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(DEBIAN_PACKAGES)} with apt-get (missing: {', '.join(need)})", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # Debian starts installed services by default (nginx's default site would listen on every
        # address, port 80): policy-rc.d exit 101 forbids that during this install.
        policy = Path("/usr/sbin/policy-rc.d")
        made_policy = not policy.exists()
        if made_policy:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
            subprocess.run(["apt-get", "install", "-y", "-q", *DEBIAN_PACKAGES], env=env, check=False)
        finally:
            if made_policy:
                policy.unlink(missing_ok=True)
        need = missing()
    how = "apt-get install -y " + " ".join(DEBIAN_PACKAGES) + " (as root)"
    return {t: f"{t} is not installed: {how}" for t in need}


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/local/sbin")


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (all held open while choosing, so no duplicates)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get_status(port: int, timeout: float = 2.0) -> int | None:
    """Status of `GET /` on 127.0.0.1:port, or None if nothing answered."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else None


def wait_serving(proc: Proc, port: int, timeout: float) -> None:
    """Until `GET /` through port answers 200; NotAvailable with the reason otherwise."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise NotAvailable(f"{proc.name} exited with code {proc.popen.returncode}: {proc.log_tail(3)}")
        status = http_get_status(port, timeout=1.0)
        if status == 200:
            return
        time.sleep(0.2)
    what = f"answered {status}" if status else "did not answer"
    raise NotAvailable(f"{proc.name} {what} on 127.0.0.1:{port} within {timeout:.0f}s: {proc.log_tail(3)}")


def render(template: str, **values: object) -> str:
    text = (CONFIGS / template).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise ValueError(f"{template}: no value for {', '.join(sorted(set(left)))}")
    return text


# --------------------------------------------------------------------------------------------------
# The bulk backend and client (run as `python -m bench.proxy --bulk-server/--bulk-client`).


def bulk_server(port: int, size: int) -> None:
    """Every connection gets `size` bytes from one in-memory buffer, then EOF."""
    chunk = memoryview(bytes(1 << 20))

    def send(conn: socket.socket) -> None:
        with conn:
            try:
                left = size
                while left:
                    n = min(len(chunk), left)
                    conn.sendall(chunk[:n])
                    left -= n
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=send, args=(conn,), daemon=True).start()


def bulk_client(port: int) -> None:
    """Read until EOF and discard; print bytes and wall seconds as JSON."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=60) as s:
        while True:
            n = s.recv_into(view)
            if not n:
                break
            got += n
    print(json.dumps({"bytes": got, "seconds": time.perf_counter() - start}))


# --------------------------------------------------------------------------------------------------
# The floor: a bare uvloop + httptools forwarder (`--floor-server PORT BACKEND...`), the least a Python
# proxy must do: parse both sides, regenerate the heads, one upstream connection per client, round robin
# over backends, bodiless requests only. No limits, no hygiene, no retries: a reference row, not a
# product. On the day's noisy machine it tells how much of Steelyard's cost is Python itself and how much
# is Steelyard.


def floor_server(port: int, backends: Sequence[int]) -> None:
    import asyncio

    import httptools  # type: ignore[import-untyped]
    import uvloop

    turn = [0]

    class Upstream(asyncio.Protocol):
        def __init__(self, client: Client) -> None:
            self.client = client
            self.parser = httptools.HttpResponseParser(self)
            self.headers: list[bytes] = []
            self.body: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() not in (b"connection", b"keep-alive", b"content-length", b"transfer-encoding"):
                self.headers += (name, b": ", value, b"\r\n")

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body = b"".join(self.body)
            status = self.parser.get_status_code()
            head = b"HTTP/1.1 %d OK\r\n%bContent-Length: %d\r\n\r\n" % (
                status,
                b"".join(self.headers),
                len(body),
            )
            self.client.transport.write(head + body)
            self.headers, self.body = [], []

        def connection_lost(self, exc: Exception | None) -> None:
            self.client.transport.close()

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.headers: list[bytes] = []
            self.upstream: Upstream | None = None
            self.waiting: list[bytes] = []
            self.peer = transport.get_extra_info("peername")[0].encode()
            turn[0] += 1
            loop.create_task(self.connect(backends[turn[0] % len(backends)]))

        async def connect(self, backend: int) -> None:
            _, self.upstream = await loop.create_connection(lambda: Upstream(self), HOST, backend)
            for chunk in self.waiting:
                self.upstream.transport.write(chunk)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() not in (b"connection", b"keep-alive"):
                self.headers += (name, b": ", value, b"\r\n")

        def on_message_complete(self) -> None:
            head = b"%b %b HTTP/1.1\r\n%bX-Forwarded-For: %b\r\n\r\n" % (
                self.parser.get_method(),
                self.url,
                b"".join(self.headers),
                self.peer,
            )
            self.headers = []
            if self.upstream is not None and hasattr(self.upstream, "transport"):
                self.upstream.transport.write(head)  # type: ignore[attr-defined]
            else:
                self.waiting.append(head)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.upstream is not None:
                self.upstream.transport.close()  # type: ignore[attr-defined]

    async def serve() -> None:
        server = await loop.create_server(Client, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(serve())


# --------------------------------------------------------------------------------------------------
# Python cost per request (`--python-cost`): Steelyard's HTTP path in this process, with transports that
# only count writes, so no system call and no other process is involved. The time (best of many short
# runs) moves with the machine; the bytecodes executed per request do not, which makes it the figure to
# compare two versions of the hot path by on a shared machine.

_COST_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"  # what wrk sends
_COST_RESPONSE = (  # what the nginx backends answer
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 10:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
)


def python_cost(requests: int = 1000, repeats: int = 300) -> str:
    from types import MappingProxyType

    from steelyard.config.desired import BackendEndpoint, DesiredState, Listener, Route, Upstream
    from steelyard.model import BalancerPolicySpec, Protocol
    from steelyard.proxy import ProxyConfig, ProxyServer, UpstreamRegistry
    from steelyard.proxy.http import UpstreamConnection

    last: list[object] = [None]

    class CountingTransport:
        def __init__(self, owner: object) -> None:
            self.owner = owner

        def write(self, data: bytes) -> None:
            last[0] = self.owner

        def writelines(self, data: list[bytes]) -> None:
            last[0] = self.owner

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

        def get_extra_info(self, name: str, default: object = None) -> object:
            return (HOST, 40000) if name == "peername" else default

        def close(self) -> None: ...

        def abort(self) -> None: ...

    class OnePass:
        """The event loop as `ProxyServer.flush_later` sees it: what is scheduled runs at the end of the
        pass, here when `exchange()` says (uvloop's own work, not counted)."""

        def __init__(self) -> None:
            self.ready: list[Callable[[], object]] = []

        def is_running(self) -> bool:
            return True

        def call_soon(self, callback: Callable[[], object]) -> None:
            self.ready.append(callback)

        def end_pass(self) -> None:
            ready, self.ready = self.ready, []
            for callback in ready:
                callback()

    endpoints = tuple(BackendEndpoint(host=HOST, port=p) for p in (9001, 9002, 9003))
    upstream = Upstream(key="default/bench/http", load_balancer="default/bench", port_name="http",
                        protocol=Protocol.HTTP, policy=BalancerPolicySpec.model_validate({}),
                        policy_name=None, endpoints=endpoints)
    listener = Listener(address=HOST, port=18080, protocol=Protocol.HTTP,
                        routes=(Route(hosts=(), path_prefix="/", upstream=upstream.key),))
    state = DesiredState(upstreams=MappingProxyType({upstream.key: upstream}), listeners=(listener,),
                         source="bench")
    proxy = ProxyServer(ProxyConfig())
    proxy.snapshot = UpstreamRegistry().apply(state)
    client = proxy.protocol_factory(listener)()
    for endpoint in endpoints:
        pool = proxy.pool_for(endpoint)
        conn = UpstreamConnection(proxy, pool)
        conn.connection_made(CountingTransport(conn))  # type: ignore[arg-type]
        pool.idle.append(conn)
    client.connection_made(CountingTransport(client))  # type: ignore[arg-type]
    loop = OnePass()
    proxy._loop = loop  # type: ignore[assignment]
    end_pass = loop.end_pass

    def exchange() -> None:  # one pass of the loop per read (under load one pass serves several)
        client.data_received(_COST_REQUEST)
        end_pass()
        last[0].data_received(_COST_RESPONSE)  # type: ignore[attr-defined]
        end_pass()

    for _ in range(20 * requests):
        exchange()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(requests):
            exchange()
        times.append((time.perf_counter() - start) / requests * 1e6)
    times.sort()
    counts: Counter[str] = Counter()
    own = {exchange.__code__, CountingTransport.write.__code__, CountingTransport.writelines.__code__,
           OnePass.is_running.__code__, OnePass.call_soon.__code__, OnePass.end_pass.__code__}

    def trace(frame, event, arg):  # type: ignore[no-untyped-def]
        frame.f_trace_opcodes = True
        if event == "opcode" and frame.f_code not in own:
            counts[frame.f_code.co_qualname] += 1
        return trace

    sys.settrace(trace)
    for _ in range(10):
        exchange()
    sys.settrace(None)
    import steelyard.proxy.http as http_module

    compiled = not http_module.__file__ or not http_module.__file__.endswith(".py")
    lines = [f"Python per proxied request (no system calls): {times[0]:.2f} µs best, "
             f"{times[len(times) // 2]:.2f} µs median of {repeats} runs of {requests}; "
             f"{sum(counts.values()) / 10:.0f} bytecodes"
             + (" (the request path is compiled: only the interpreted rest is counted; for the whole "
                "count run it on the plain Python copy, PYTHONPATH=build/pure after `make test`)"
                if compiled else "")
             + ":"]
    lines += [f"  {n / 10:6.0f}  {name}" for name, n in counts.most_common()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Proxies under test.


@dataclass
class Ports:
    backends: list[int]
    bulk_backend: int


@dataclass
class ProxySpec:
    """One proxy process shared by the rows that use it; `listen` maps a row kind to its port."""

    key: str
    label: str
    pinned: bool
    tool: str  # what must be installed (or "steelyard")
    build: Callable[[ProxySpec, Ports, Path], list[str]]
    kinds: tuple[str, ...]  # "http", "tcp", "bulk"
    threads: int = 1
    listen: dict[str, int] = field(default_factory=dict)
    proc: Proc | None = None
    unavailable: str | None = None


def _haproxy_servers(backends: Sequence[int]) -> str:
    return "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backends, 1))


def build_haproxy_http(spec: ProxySpec, ports: Ports, work: Path) -> list[str]:
    cfg = work / f"{spec.key}.cfg"
    cfg.write_text(
        render(
            "haproxy-http.cfg",
            threads=spec.threads,
            port=spec.listen["http"],
            servers=_haproxy_servers(ports.backends),
        )
    )
    return [_which("haproxy") or "haproxy", "-db", "-f", str(cfg)]


def build_haproxy_tcp(spec: ProxySpec, ports: Ports, work: Path) -> list[str]:
    cfg = work / f"{spec.key}.cfg"
    cfg.write_text(
        render(
            "haproxy-tcp.cfg",
            threads=spec.threads,
            port=spec.listen["tcp"],
            bulk_port=spec.listen["bulk"],
            bulk_backend_port=ports.bulk_backend,
            servers=_haproxy_servers(ports.backends),
        )
    )
    return [_which("haproxy") or "haproxy", "-db", "-f", str(cfg)]


def build_nginx(spec: ProxySpec, ports: Ports, work: Path) -> list[str]:
    cfg = work / f"{spec.key}.conf"
    for sub in ("body", "proxy"):
        (work / f"nginx-{spec.key}-{sub}").mkdir(exist_ok=True)
    servers = "\n".join(f"        server {HOST}:{p};" for p in ports.backends)
    cfg.write_text(
        render(
            "nginx-proxy.conf",
            workers=spec.threads,
            workdir=work,
            name=spec.key,
            port=spec.listen["http"],
            servers=servers,
        )
    )
    return [_which("nginx") or "nginx", "-p", str(work), "-c", str(cfg), "-g", "daemon off;"]


def _steelyard_endpoints(backends: Sequence[int]) -> str:
    return "\n".join(f'    - address: "{HOST}:{p}"' for p in backends)


STEELYARD_CMD: list[str] = []  # --steelyard-cmd; empty = `python -m steelyard run` of this checkout


def steelyard_argv(cfg: Path, workers: int) -> list[str]:
    """`python -m steelyard run -c CFG [--workers N]`, or --steelyard-cmd in place of the first part."""
    if STEELYARD_CMD:
        argv = [*STEELYARD_CMD, "-c", str(cfg)]
    elif not RUN_CMD.exists():
        raise NotAvailable(
            "src/steelyard/runtime/run_cmd.py does not exist yet (`steelyard run` not written)"
        )
    else:
        argv = [sys.executable, "-m", "steelyard", "run", "-c", str(cfg)]
        # No admin server: HAProxy and nginx run without stats pages too, and several Steelyards
        # would contend for the admin's default port.
        if '"--admin"' in RUN_CMD.read_text():
            argv += ["--admin", "off"]
    if workers != 1:
        argv += ["--workers", str(workers)]
    return argv


def build_steelyard_http(spec: ProxySpec, ports: Ports, work: Path) -> list[str]:
    cfg = work / f"{spec.key}.yaml"
    cfg.write_text(
        render(
            "steelyard-http.yaml", port=spec.listen["http"], endpoints=_steelyard_endpoints(ports.backends)
        )
    )
    return steelyard_argv(cfg, spec.threads)


def build_steelyard_tcp(spec: ProxySpec, ports: Ports, work: Path) -> list[str]:
    cfg = work / f"{spec.key}.yaml"
    cfg.write_text(
        render(
            "steelyard-tcp.yaml",
            port=spec.listen["tcp"],
            bulk_port=spec.listen["bulk"],
            bulk_backend_port=ports.bulk_backend,
            endpoints=_steelyard_endpoints(ports.backends),
        )
    )
    return steelyard_argv(cfg, spec.threads)


def build_floor(spec: ProxySpec, ports: Ports, work: Path) -> list[str]:
    backends = [str(p) for p in ports.backends]
    return [sys.executable, "-m", "bench.proxy", "--floor-server", str(spec.listen["http"]), *backends]


def proxy_specs() -> dict[str, ProxySpec]:
    specs = [
        ProxySpec("haproxy-http", "HAProxy 1 thread", True, "haproxy", build_haproxy_http, ("http",)),
        ProxySpec("nginx-http", "nginx 1 worker", True, "nginx", build_nginx, ("http",)),
        ProxySpec("steelyard-http", "Steelyard 1 worker", True, "steelyard", build_steelyard_http, ("http",)),
        ProxySpec("floor-http", "bare forwarder", True, "python", build_floor, ("http",)),
        ProxySpec("haproxy-http2", "HAProxy 2 threads", False, "haproxy", build_haproxy_http, ("http",), 2),
        ProxySpec("nginx-http2", "nginx 2 workers", False, "nginx", build_nginx, ("http",), 2),
        ProxySpec(
            "steelyard-http2", "Steelyard 2 workers", False, "steelyard", build_steelyard_http, ("http",), 2
        ),
        ProxySpec("haproxy-tcp", "HAProxy TCP", True, "haproxy", build_haproxy_tcp, ("tcp", "bulk")),
        ProxySpec("steelyard-tcp", "Steelyard TCP", True, "steelyard", build_steelyard_tcp, ("tcp", "bulk")),
    ]
    return {s.key: s for s in specs}


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # http (pinned), http2 (unpinned), tcp, bulk
    kind: str  # http | tcp | bulk (which listener of the proxy)
    proxy: str | None  # ProxySpec key; None = direct to the backend
    label: str
    baseline: str | None = None  # row compared against (HAProxy in the same group)

    @property
    def pinned(self) -> bool:
        return self.group != "http2"


ROWS: tuple[Row, ...] = (
    Row("http-direct", "http", "http", None, "direct (wrk → nginx backend)"),
    Row("http-haproxy", "http", "http", "haproxy-http", "HAProxy 2.6 HTTP"),
    Row("http-nginx", "http", "http", "nginx-http", "nginx proxy", "http-haproxy"),
    Row("http-steelyard", "http", "http", "steelyard-http", "Steelyard 1 worker", "http-haproxy"),
    Row(
        "http-floor", "http", "http", "floor-http", "bare uvloop+httptools forwarder (floor)", "http-haproxy"
    ),
    Row("http2-direct", "http2", "http", None, "direct, unpinned"),
    Row("http2-haproxy", "http2", "http", "haproxy-http2", "HAProxy nbthread 2, unpinned"),
    Row("http2-nginx", "http2", "http", "nginx-http2", "nginx 2 workers, unpinned", "http2-haproxy"),
    Row(
        "http2-steelyard",
        "http2",
        "http",
        "steelyard-http2",
        "Steelyard 2 workers, unpinned",
        "http2-haproxy",
    ),
    Row("tcp-haproxy", "tcp", "tcp", "haproxy-tcp", "HAProxy 2.6 TCP mode"),
    Row("tcp-steelyard", "tcp", "tcp", "steelyard-tcp", "Steelyard TCP", "tcp-haproxy"),
    Row("bulk-direct", "bulk", "bulk", None, "direct"),
    Row("bulk-haproxy", "bulk", "bulk", "haproxy-tcp", "HAProxy TCP mode"),
    Row("bulk-steelyard", "bulk", "bulk", "steelyard-tcp", "Steelyard TCP", "bulk-haproxy"),
)


def select_rows(tokens: Sequence[str] | None) -> list[Row]:
    """A token picks rows by name, by group (http, http2, tcp, bulk) or by proxy (haproxy, steelyard...)."""
    if not tokens:
        return list(ROWS)
    chosen: list[Row] = []
    for token in tokens:
        hits = [r for r in ROWS if token in (r.name, r.group) or r.name.endswith("-" + token)]
        if not hits:
            raise SystemExit(f"--rows: unknown row {token!r}; rows: {', '.join(r.name for r in ROWS)}")
        chosen += [r for r in hits if r not in chosen]
    return [r for r in ROWS if r in chosen]


# --------------------------------------------------------------------------------------------------
# Measurements.


@dataclass
class Sample:
    """One row in one round."""

    row: str
    round: int
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    cpu_us: float | None = None  # proxy CPU-µs per request (HTTP/TCP) or CPU-ms per GiB (bulk)
    sys_share: float | None = None
    client_us: float | None = None  # CPU-µs per request on the client core (wrk + backends), pinned rows
    client_busy: float | None = None  # the client core's busy share over the run: ~1.0 means it set the rate
    segments: float | None = None  # TCP segments sent per request, host-wide (every hop counts)
    switches: float | None = None  # context switches per request, host-wide
    mbps: float = 0.0
    failed: str | None = None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(f"unreadable latency {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text: str) -> dict[str, float]:
    """Requests, req/s, p50/p99 (ms) and errors from `wrk --latency` output."""
    out: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    n = re.search(r"(\d+) requests in", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (m and n and p50 and p99):
        raise ValueError("wrk output not understood: " + " | ".join(text.strip().splitlines()[-4:]))
    out["rps"] = float(m.group(1))
    out["requests"] = int(n.group(1))
    out["p50_ms"] = _ms(p50.group(1))
    out["p99_ms"] = _ms(p99.group(1))
    errors = 0
    if e := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        errors += int(e.group(1))
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(x) for x in e.groups())
    out["errors"] = errors
    return out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="steelyard-bench-"))
        self.specs = proxy_specs()
        self.rows = select_rows(args.rows)
        self.pinning = (os.cpu_count() or 1) >= 2 and not args.no_pin
        self.backends: Proc | None = None
        self.bulk: Proc | None = None
        self.ports: Ports | None = None
        self.unavailable: dict[str, str] = {}
        self.samples: list[Sample] = []
        self.remeasured: list[str] = []  # samples replaced by remeasure_disturbed()
        self.started = dt.datetime.now(dt.UTC)

    # ---- set-up
    def setup(self) -> None:
        missing = ensure_tools(install=not self.args.no_install)
        if "wrk" in missing:
            for row in self.rows:
                if row.kind != "bulk":
                    self.unavailable[row.name] = missing["wrk"]
        if self.pinning:
            os.sched_setaffinity(0, CLIENT_CPUS)
        backend_ports = free_ports(3 + 1)
        self.ports = Ports(backends=backend_ports[:3], bulk_backend=backend_ports[3])
        needs_nginx_backends = any(r.kind != "bulk" for r in self.rows)
        if needs_nginx_backends and "nginx" in missing:
            for row in self.rows:
                if row.kind != "bulk":
                    self.unavailable.setdefault(row.name, "backends need " + missing["nginx"])
        elif needs_nginx_backends:
            servers = "\n".join(
                f'    server {{ listen {HOST}:{p}; location / {{ return 200 "ok"; }} }}'
                for p in self.ports.backends
            )
            cfg = self.work / "nginx-backends.conf"
            cfg.write_text(render("nginx-backends.conf", workdir=self.work, servers=servers))
            self.backends = Proc(
                "nginx backends",
                [_which("nginx") or "nginx", "-p", str(self.work), "-c", str(cfg), "-g", "daemon off;"],
                self.work / "backends.log",
                self._client_cpus,
            )
            for port in self.ports.backends:
                wait_serving(self.backends, port, 10)
        if any(r.kind == "bulk" for r in self.rows):
            self.bulk = Proc(
                "bulk backend",
                [sys.executable, "-m", "bench.proxy", "--bulk-server", str(self.ports.bulk_backend)],
                self.work / "bulk.log",
                self._client_cpus,
            )
            _wait_port(self.bulk, self.ports.bulk_backend, 10)
        for spec in self.specs.values():
            rows = [r for r in self.rows if r.proxy == spec.key and r.name not in self.unavailable]
            if rows:
                self._start_proxy(spec, missing)
                for row in rows:
                    if spec.unavailable:
                        self.unavailable[row.name] = spec.unavailable

    @property
    def _client_cpus(self) -> set[int] | None:
        return CLIENT_CPUS if self.pinning else None

    def _start_proxy(self, spec: ProxySpec, missing: dict[str, str]) -> None:
        assert self.ports is not None
        if spec.tool in missing:
            spec.unavailable = missing[spec.tool]
            return
        ports = free_ports(len(spec.kinds))
        spec.listen = dict(zip(spec.kinds, ports, strict=True))
        try:
            argv = spec.build(spec, self.ports, self.work)
            cpus = PROXY_CPUS if (spec.pinned and self.pinning) else None
            spec.proc = Proc(spec.label, argv, self.work / f"{spec.key}.log", cpus)
            first = spec.kinds[0]
            wait_serving(spec.proc, spec.listen[first], 20 if spec.tool == "steelyard" else 10)
            if "bulk" in spec.listen:
                _wait_port(spec.proc, spec.listen["bulk"], 10)
            # Warm up: pools filled, workers all started, caches hot. Not measured.
            if first in ("http", "tcp") and _which("wrk"):
                self._wrk(spec.listen[first], 2, pinned=spec.pinned)
        except NotAvailable as exc:
            spec.unavailable = str(exc)
            if spec.proc is not None:
                spec.proc.stop()
        print(
            f"  {spec.label}: {'not available: ' + spec.unavailable if spec.unavailable else 'ready'}",
            flush=True,
        )

    # ---- runs
    def _wrk(self, port: int, seconds: float, pinned: bool) -> str:
        argv = [
            _which("wrk") or "wrk",
            "-t1",
            f"-c{self.args.connections}",
            f"-d{seconds:g}s",
            "--latency",
            f"http://{HOST}:{port}/",
        ]
        if pinned and self.pinning:
            argv = ["taskset", "-c", ",".join(map(str, sorted(CLIENT_CPUS))), *argv]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return out

    def _prepare_affinity(self, row: Row) -> None:
        """Backends follow the row: core 1 when pinned, both cores when not."""
        if not self.pinning:
            return
        cpus = CLIENT_CPUS if row.pinned else set(range(os.cpu_count() or 1))
        for proc in (self.backends, self.bulk):
            if proc is not None:
                set_affinity(proc.tree(), cpus)

    def measure(self, row: Row, rnd: int) -> Sample:
        assert self.ports is not None
        sample = Sample(row.name, rnd)
        spec = self.specs[row.proxy] if row.proxy else None
        if spec is not None:
            assert spec.proc is not None
            if not spec.proc.alive():
                sample.failed = f"{spec.label} exited: {spec.proc.log_tail(2)}"
                return sample
            port = spec.listen[row.kind]
        else:
            port = self.ports.bulk_backend if row.kind == "bulk" else self.ports.backends[0]
        self._prepare_affinity(row)
        pids = spec.proc.tree() if spec and spec.proc else []
        before = cpu_ticks(pids)
        host_before = host_counters(CLIENT_CPUS)
        try:
            if row.kind == "bulk":
                self._measure_bulk(port, row.pinned, sample)
            else:
                stats = parse_wrk(self._wrk(port, self.args.duration, row.pinned))
                sample.requests = int(stats["requests"])
                sample.rps, sample.p50_ms, sample.p99_ms = stats["rps"], stats["p50_ms"], stats["p99_ms"]
                sample.errors = int(stats["errors"])
        except (ValueError, subprocess.SubprocessError, OSError) as exc:
            sample.failed = str(exc)
            return sample
        host_after = host_counters(CLIENT_CPUS)
        if row.kind != "bulk" and sample.requests:
            sample.segments = (host_after.segments - host_before.segments) / sample.requests
            sample.switches = (host_after.switches - host_before.switches) / sample.requests
            if self.pinning and row.pinned:
                busy, total = host_after.busy - host_before.busy, host_after.total - host_before.total
                sample.client_us = busy / CLK_TCK * 1e6 / sample.requests
                sample.client_busy = busy / total if total else None
        if spec and spec.proc:
            after = cpu_ticks(spec.proc.tree() or pids)
            user, system = after[0] - before[0], after[1] - before[1]
            total_s = (user + system) / CLK_TCK
            if row.kind == "bulk":
                sample.cpu_us = total_s * 1e3 * (BULK_BYTES / max(sample.requests, 1))  # CPU-ms per GiB
            elif sample.requests:
                sample.cpu_us = total_s * 1e6 / sample.requests
            sample.sys_share = system / (user + system) if user + system else None
        return sample

    def _measure_bulk(self, port: int, pinned: bool, sample: Sample) -> None:
        argv = [sys.executable, "-m", "bench.proxy", "--bulk-client", str(port)]
        if pinned and self.pinning:
            argv = ["taskset", "-c", ",".join(map(str, sorted(CLIENT_CPUS))), *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
        if done.returncode != 0:
            raise ValueError(f"bulk client failed: {done.stderr.strip().splitlines()[-1:]}")
        result = json.loads(done.stdout)
        if result["bytes"] != BULK_BYTES:
            sample.errors = 1
            raise ValueError(f"bulk client got {result['bytes']} bytes, expected {BULK_BYTES}")
        sample.requests = result["bytes"]
        sample.mbps = result["bytes"] / result["seconds"] / 1e6

    def run_rounds(self) -> None:
        runnable = [r for r in self.rows if r.name not in self.unavailable]
        for rnd in range(self.args.rounds):
            shift = rnd % max(len(runnable), 1)
            order = runnable[shift:] + runnable[:shift]
            print(f"round {rnd + 1}/{self.args.rounds}: {' '.join(r.name for r in order)}", flush=True)
            for row in order:
                sample = self.measure(row, rnd)
                self.samples.append(sample)
                print("  " + describe_sample(row, sample), flush=True)
        self.remeasure_disturbed()

    def remeasure_disturbed(self, passes: int = 2) -> None:
        """Measure again, at most `passes` times, a pinned sample taken while the host slowed down.

        The signal is the client core's CPU per request, which a proxy barely moves (within a few per
        cent between HAProxy, nginx and Steelyard) but a busy neighbour raises for every row alike (by
        15-25 % in the disturbed rounds seen here). A sample whose client core cost more than
        DISTURBED x the best of its own row's samples is replaced by a new measurement in the same round
        slot; HAProxy's rows are treated the same way as every other row. Each replaced sample is listed
        in the report.
        """
        if not self.pinning or self.args.rounds < 3:
            return
        by_name = {r.name: r for r in self.rows}
        for _ in range(passes):
            best: dict[str, float] = {}
            for s in self.samples:
                if s.client_us is not None and not s.failed:
                    best[s.row] = min(best.get(s.row, s.client_us), s.client_us)
            disturbed = [s for s in self.samples if s.client_us is not None and not s.failed
                         and s.client_us > DISTURBED * best[s.row]]
            if not disturbed:
                return
            print(f"re-measuring {len(disturbed)} sample(s) taken while the host slowed down "
                  f"(client core > {DISTURBED:g}x the row's best)", flush=True)
            for old in disturbed:
                row = by_name[old.row]
                sample = self.measure(row, old.round)
                self.samples[next(i for i, s in enumerate(self.samples) if s is old)] = sample
                self.remeasured.append(f"{row.name} round {old.round + 1} (client core "
                                       f"{old.client_us:.1f} µs/req against a best of {best[row.name]:.1f})")
                print("  " + describe_sample(row, sample), flush=True)

    # ---- profile
    def profile(self) -> list[str]:
        """Where Steelyard's time goes, next to HAProxy's; everything lands in bench/out/.

        - perf (on-CPU samples, kernel included) split by library and by symbol, in µs per request,
          for Steelyard and HAProxy, HTTP and TCP mode (those whose rows ran): kernel vs interpreter vs
          httptools vs uvloop.
        - py-spy (Python frames, wall time while not idle) on Steelyard: flamegraph and top functions.
        - strace -c: system calls per request for the same proxies.
        """
        OUT.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        spec = self.specs["steelyard-http"]
        if spec.proc is None or spec.unavailable:
            why = spec.unavailable or "not started (select its row)"
            return [f"profile skipped: Steelyard 1 worker {why}"]
        seconds = max(3, int(self.args.duration))
        sections: list[str] = []
        compared = ("steelyard-http", "haproxy-http", "steelyard-tcp", "haproxy-tcp")
        if _which("perf"):
            for key in compared:
                other = self.specs[key]
                if other.proc is not None and not other.unavailable:
                    sections.append(self._perf(other, seconds))
        else:
            sections.append("perf not installed (Debian: linux-perf): no kernel/user split by library")
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if Path(pyspy).exists():
            sections.append(self._pyspy(spec, pyspy, seconds, notes))
        else:
            sections.append("py-spy not installed in the venv (pip install py-spy): no Python profile")
        if shutil.which("strace"):
            for key in compared:
                other = self.specs[key]
                if other.proc is not None and not other.unavailable:
                    sections.append(self._strace(other))
        text = "\n\n".join(sections) + "\n"
        (OUT / "profile.txt").write_text(text)
        print(text)
        notes.append(f"wrote {(OUT / 'profile.txt').relative_to(REPO)}")
        return notes

    def _pinned_prefix(self) -> list[str]:
        return ["taskset", "-c", ",".join(map(str, sorted(CLIENT_CPUS)))] if self.pinning else []

    def _pyspy(self, spec: ProxySpec, pyspy: str, seconds: int, notes: list[str]) -> str:
        assert spec.proc is not None
        for fmt, path in (
            ("flamegraph", OUT / "steelyard-flamegraph.svg"),
            ("raw", OUT / "steelyard-stacks.txt"),
        ):
            cmd = [
                *self._pinned_prefix(),
                pyspy,
                "record",
                "--pid",
                str(spec.proc.pid),
                "--subprocesses",
                "--rate",
                "250",
                "--duration",
                str(seconds),
                "--format",
                fmt,
                "--output",
                str(path),
            ]
            if self.args.native:
                cmd.append("--native")
            spy = Proc("py-spy", cmd, self.work / "py-spy.log")
            time.sleep(0.5)
            self._wrk(spec.listen["http"], seconds, pinned=True)
            try:
                spy.popen.wait(seconds + 30)
            finally:
                spy.stop()
            notes.append(f"wrote {path.relative_to(REPO)}")
        raw = OUT / "steelyard-stacks.txt"
        top = top_functions(raw.read_text() if raw.exists() else "")
        (OUT / "steelyard-top.txt").write_text(top)
        return f"py-spy on {spec.label} (wall time while not idle, Python frames):\n{top}"

    def _perf(self, spec: ProxySpec, seconds: int) -> str:
        """perf record -e cpu-clock on the proxy's processes under wrk; shares turned into µs per request."""
        assert spec.proc is not None
        data = self.work / f"perf-{spec.key}.data"
        pids = spec.proc.tree()
        cmd = [
            *self._pinned_prefix(),
            _which("perf") or "perf",
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "1999",
            "-o",
            str(data),
            "-p",
            ",".join(map(str, pids)),
            "--",
            "sleep",
            str(seconds),
        ]
        rec = Proc("perf", cmd, self.work / "perf.log")
        time.sleep(0.5)
        before = cpu_ticks(pids)
        stats = parse_wrk(self._wrk(spec.listen[spec.kinds[0]], seconds - 1, pinned=True))
        after = cpu_ticks(spec.proc.tree() or pids)
        try:
            rec.popen.wait(seconds + 30)
        finally:
            rec.stop()
        cpu_us = (sum(after) - sum(before)) / CLK_TCK * 1e6 / max(int(stats["requests"]), 1)
        lines = [f"perf on {spec.label}: {stats['rps']:.0f} req/s, {cpu_us:.1f} CPU-µs/req; by library:"]
        for sort, limit in (("dso", 8), ("dso,sym", 25)):
            done = subprocess.run(
                [
                    _which("perf") or "perf",
                    "report",
                    "-i",
                    str(data),
                    "--no-children",
                    "--sort",
                    sort,
                    "--stdio",
                    "-g",
                    "none",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            shares = parse_perf_report(done.stdout)
            if not shares:
                lines.append(f"  (perf report gave nothing: {done.stderr.strip()[-200:]})")
                break
            if sort == "dso,sym":
                lines.append("  top symbols:")
            for share, name in shares[:limit]:
                lines.append(f"  {share:5.1f}%  {share / 100 * cpu_us:5.2f} µs/req  {name}")
        return "\n".join(lines)

    def _strace(self, spec: ProxySpec) -> str:
        """System calls per request under wrk (strace slows the proxy; the counts per request still hold)."""
        assert spec.proc is not None
        out = self.work / f"strace-{spec.key}.txt"
        argv = ["strace", "-c", "-f", "-o", str(out)]
        for pid in spec.proc.tree():
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    argv += ["-p", tid]
        tracer = Proc("strace", argv, self.work / "strace.log")
        time.sleep(1.0)
        stats = parse_wrk(self._wrk(spec.listen[spec.kinds[0]], 3, pinned=True))
        tracer.popen.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            tracer.popen.wait(10)
        tracer.stop()
        text = out.read_text() if out.exists() else "(strace wrote nothing)"
        return summarize_strace(spec.label, text, int(stats["requests"]))

    def close(self) -> None:
        Proc.stop_all()
        if os.environ.get("STEELYARD_BENCH_KEEP"):  # e.g. to read the perf data again (`perf report -i`)
            print(f"kept {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _wait_port(proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise NotAvailable(f"{proc.name} exited: {proc.log_tail(3)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise NotAvailable(f"{proc.name} not listening on 127.0.0.1:{port} within {timeout:.0f}s")


def top_functions(raw: str, limit: int = 20) -> str:
    """Self shares per function and per line, and inclusive shares per function, from py-spy's raw stacks.

    py-spy sees Python frames only: time spent inside C (uvloop's loop, the system calls a transport
    makes) is charged to the Python line that called it, or to the loop's `run` when the loop itself
    is busy (reading sockets, scheduling callbacks).
    """
    own: Counter[str] = Counter()
    own_line: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += n
        own_line[frames[-1]] += n
        functions = [re.sub(r":\d+\)$", ")", f) for f in frames]
        own[functions[-1]] += n
        for function in set(functions):
            incl[function] += n
    if not total:
        return "py-spy recorded no samples\n"
    out = [f"{total} samples (idle excluded)", "", "self %  function (file)"]
    out += [f"{100 * n / total:5.1f}  {f}" for f, n in own.most_common(limit)]
    out += ["", "self %  line"]
    out += [f"{100 * n / total:5.1f}  {f}" for f, n in own_line.most_common(limit)]
    out += ["", "total %  function (file)"]
    out += [f"{100 * n / total:5.1f}  {f}" for f, n in incl.most_common(limit)]
    return "\n".join(out) + "\n"


def parse_perf_report(text: str) -> list[tuple[float, str]]:
    """(percent, what) rows from `perf report --stdio` without call graphs, largest first."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\s+([\d.]+)%\s+(\S.*?)\s*$", line)
        if m:
            rows.append((float(m.group(1)), re.sub(r"\s+", " ", m.group(2))))
    return sorted(rows, reverse=True)


def summarize_strace(label: str, text: str, requests: int) -> str:
    """strace -c's table turned into calls per request, busiest first."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        name = parts[-1] if parts else ""
        if (
            len(parts) >= 5
            and parts[0].replace(".", "").isdigit()
            and name.isidentifier()
            and name != "total"
        ):
            try:
                calls = int(parts[3])
            except ValueError:
                continue
            rows.append((calls, parts[-1]))
    rows.sort(reverse=True)
    total = sum(c for c, _ in rows)
    head = f"{label}: {requests} requests under strace, {total / max(requests, 1):.2f} syscalls per request"
    body = [f"  {c / max(requests, 1):6.3f}/req  {name}" for c, name in rows[:12]]
    return "\n".join([head, *body])


# --------------------------------------------------------------------------------------------------
# Results.


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class RowResult:
    row: Row
    samples: list[Sample]
    unavailable: str | None = None

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if not s.failed]

    def med(self, attr: str) -> float | None:
        return _median([getattr(s, attr) for s in self.ok])

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.ok)


def summarize(bench: Bench) -> dict[str, RowResult]:
    results: dict[str, RowResult] = {}
    for row in bench.rows:
        results[row.name] = RowResult(
            row, [s for s in bench.samples if s.row == row.name], bench.unavailable.get(row.name)
        )
    return results


def ratio(results: dict[str, RowResult], row: Row, attr: str) -> float | None:
    """Median over rounds of row/baseline for the same round: both ran minutes apart at most."""
    base = row.baseline or _group_baseline(row)
    if row.proxy is None or base is None or base not in results or base == row.name:
        return None
    mine = {s.round: getattr(s, attr) for s in results[row.name].ok}
    theirs = {s.round: getattr(s, attr) for s in results[base].ok}
    ratios = [mine[r] / theirs[r] for r in mine if r in theirs and mine[r] is not None and theirs[r]]
    return _median(ratios)


def _group_baseline(row: Row) -> str | None:
    return {
        "http": "http-haproxy",
        "http2": "http2-haproxy",
        "tcp": "tcp-haproxy",
        "bulk": "bulk-haproxy",
    }.get(row.group)


def describe_sample(row: Row, s: Sample) -> str:
    if s.failed:
        return f"{row.name:16} FAILED: {s.failed}"
    cpu = f"{s.cpu_us:.1f}" if s.cpu_us is not None else "-"
    if row.kind == "bulk":
        return f"{row.name:16} {s.mbps:8.0f} MB/s  cpu-ms/GiB {cpu}"
    client = ""
    if s.client_us is not None and s.client_busy is not None:
        client = f"  client core {s.client_us:.1f} µs/req, {100 * s.client_busy:.0f}% busy"
    if s.segments is not None and s.switches is not None:
        client += f"  segments {s.segments:.2f}/req  switches {s.switches:.3f}/req"
    return (
        f"{row.name:16} {s.rps:9.0f} req/s  p50 {s.p50_ms:.3f} ms  p99 {s.p99_ms:.3f} ms  "
        f"cpu-µs/req {cpu}  errors {s.errors}{client}"
    )


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "–" if value is None else format(value, spec) + suffix


GROUP_TITLES = {
    "http": "HTTP, proxy pinned to core 0, wrk and backends on core 1",
    "http2": "HTTP, unpinned (everything shares both cores), 2 workers/threads",
    "tcp": "TCP mode (wrk requests through a TCP proxy), pinned",
    "bulk": "Bulk: one 1 GiB stream through TCP mode, pinned",
}


def tables(results: dict[str, RowResult]) -> str:
    out: list[str] = []
    for group, title in GROUP_TITLES.items():
        rows = [r for r in results.values() if r.row.group == group]
        if not rows:
            continue
        out += [f"**{title}**", ""]
        if group == "bulk":
            out += ["| row | MB/s | proxy CPU-ms per GiB | MB/s vs HAProxy |", "|---|---:|---:|---:|"]
        else:
            out += [
                "| row | req/s | p50 ms | p99 ms | proxy CPU-µs/req | sys share | client core CPU-µs/req "
                "| client core busy | errors | req/s vs HAProxy | CPU/req vs HAProxy | p99 vs HAProxy |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
        for r in rows:
            label = r.row.label
            if r.unavailable or not r.ok:
                reason = (
                    r.unavailable or "; ".join(sorted({s.failed or "" for s in r.samples})) or "no sample"
                )
                cols = 3 if group == "bulk" else 11
                out.append(f"| {label} | not available: {reason.replace('|', '/')} |" + " |" * (cols - 1))
                continue
            if group == "bulk":
                out.append(
                    f"| {label} | {_fmt(r.med('mbps'), '.0f')} | {_fmt(r.med('cpu_us'), '.0f')} "
                    f"| {_fmt(ratio(results, r.row, 'mbps'), '.2f', '×')} |"
                )
            else:
                share, busy = r.med("sys_share"), r.med("client_busy")
                out.append(
                    f"| {label} | {_fmt(r.med('rps'), ',.0f')} | {_fmt(r.med('p50_ms'), '.2f')} "
                    f"| {_fmt(r.med('p99_ms'), '.2f')} | {_fmt(r.med('cpu_us'), '.1f')} "
                    f"| {_fmt(None if share is None else 100 * share, '.0f', '%')} "
                    f"| {_fmt(r.med('client_us'), '.1f')} "
                    f"| {_fmt(None if busy is None else 100 * busy, '.0f', '%')} "
                    f"| {r.errors} "
                    f"| {_fmt(ratio(results, r.row, 'rps'), '.2f', '×')} "
                    f"| {_fmt(ratio(results, r.row, 'cpu_us'), '.2f', '×')} "
                    f"| {_fmt(ratio(results, r.row, 'p99_ms'), '.2f', '×')} |"
                )
        out.append("")
    return "\n".join(out)


TARGETS = (
    # (row, attribute, comparison, bound, text)
    ("http-steelyard", "rps", ">=", 1.0, "HTTP req/s ≥ 1.0× HAProxy"),
    ("http-steelyard", "cpu_us", "<=", 1.1, "HTTP CPU-µs/req ≤ 1.1× HAProxy"),
    ("http-steelyard", "p99_ms", "<=", 1.2, "HTTP p99 ≤ 1.2× HAProxy"),
    ("tcp-steelyard", "rps", ">=", 1.0, "TCP req/s ≥ 1.0× HAProxy TCP"),
    ("bulk-steelyard", "mbps", ">=", 1.0, "bulk MB/s ≥ 1.0× HAProxy TCP"),
)


def targets(results: dict[str, RowResult]) -> str:
    out = ["| target | measured | verdict |", "|---|---:|---|"]
    for row_name, attr, op, bound, text in TARGETS:
        r = results.get(row_name)
        if r is None:
            out.append(f"| {text} | not run | – |")
            continue
        value = ratio(results, r.row, attr) if not r.unavailable else None
        if value is None:
            why = r.unavailable or "no measurement"
            out.append(f"| {text} | – | not measured: {why.replace('|', '/')} |")
            continue
        met = value >= bound if op == ">=" else value <= bound
        note = ""
        if r.errors:
            met = False
            note = f" ({r.errors} errors)"
        out.append(f"| {text} | {value:.2f}× | {'met' if met else 'not met'}{note} |")
    return "\n".join(out)


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    for tool, argv in (("HAProxy", ["haproxy", "-v"]), ("nginx", ["nginx", "-v"]), ("wrk", ["wrk", "-v"])):
        exe = _which(argv[0])
        if not exe:
            continue
        done = subprocess.run([exe, *argv[1:]], capture_output=True, text=True)
        text = done.stdout + done.stderr
        m = re.search(r"(?:version|nginx/|wrk )\s*(?:debian/)?([\d.]+)", text)
        versions.append(f"{tool} {m.group(1) if m else '?'}")
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"CPython {platform.python_version()}, {', '.join(versions)}"
    )


def report(
    bench: Bench, results: dict[str, RowResult], command: str, load_before: str, load_after: str
) -> str:
    a = bench.args
    when = bench.started.strftime("%Y-%m-%d %H:%M UTC")
    method = (
        f"wrk -t1 -c{a.connections} -d{a.duration:g}s --latency; {a.rounds} interleaved round(s), "
        "each running every row once in a rotated order; medians over rounds; ratios are the median of "
        "per-round ratios to HAProxy in the same group"
    )
    if not bench.pinning:
        method += "; NOT pinned (fewer than 2 CPUs or --no-pin)"
    lines = [
        "## Proxy benchmark",
        "",
        f"Measured {when} with `{command}`.",
        "",
        f"- Machine: {machine()}; load average {load_before} before, {load_after} after.",
        f'- Method: {method}. Backends: 3 nginx `return 200 "ok"` servers (one worker, keep-alive); bulk: '
        "a backend streaming 1 GiB from memory, a client reading and discarding it (MB/s = 10⁶ B/s). "
        "Proxy CPU is utime+stime of all its processes from /proc over the run.",
        "- Configurations: `bench/configs/` (HAProxy: roundrobin, option forwardfor, http-reuse always; "
        'nginx: upstream keepalive 64, HTTP/1.1, `Connection ""`; Steelyard: RoundRobin, no health checks).',
        "- Disturbed samples: a pinned sample whose client core (wrk and backends) cost more than "
        f"{DISTURBED:g}× its row's best per request was taken while the host slowed down, and was measured "
        "again (at most twice), whatever the proxy: "
        + ("; ".join(bench.remeasured) if bench.remeasured else "none") + ".",
        "",
        tables(results),
        "**Targets** (same run, same machine; errors void a target)",
        "",
        targets(results),
        "",
    ]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    """Replace only the proxy section of docs/benchmarks.md, keeping its hand-written notes block."""
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    # A new file gets a title and this section only: other sections belong to their own benchmarks.
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    notes = f"{NOTES_BEGIN}\n{NOTES_END}"
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        old, tail = rest.split(SECTION_END, 1)
        if NOTES_BEGIN in old and NOTES_END in old:
            notes = NOTES_BEGIN + old.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0] + NOTES_END
    else:
        head, tail = text.rstrip("\n") + "\n\n", "\n"
    DOCS.write_text(f"{head}{SECTION_BEGIN}\n{section}\n{notes}\n{SECTION_END}{tail}")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 3 s per row, docs left alone")
    p.add_argument(
        "--rows",
        type=lambda s: [t for t in s.split(",") if t],
        help="comma list of rows, groups (http, http2, tcp, bulk) or proxies (haproxy, nginx, "
        "steelyard, direct); default all: " + ", ".join(r.name for r in ROWS),
    )
    p.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 8, --quick 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, profile Steelyard 1 worker and HAProxy under wrk: perf (kernel/user split "
        "by library), py-spy (Python; flamegraph) and strace (syscalls per request); output in bench/out/",
    )
    p.add_argument("--native", action="store_true", help="with --profile: py-spy --native (C frames too)")
    p.add_argument(
        "--python-cost",
        action="store_true",
        help="only measure the Python cost of one proxied request in this process (fake transports): "
        "µs and bytecodes per request by function; nothing is started",
    )
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--no-install", action="store_true", help="never apt-get install missing tools")
    p.add_argument("--no-pin", action="store_true", help="do not pin (taskset) anything")
    p.add_argument(
        "--steelyard-cmd",
        metavar="CMD",
        help="start Steelyard with CMD instead of `python -m steelyard run` (another checkout, an installed "
        "build); `-c FILE` and `--workers N` are appended",
    )
    p.add_argument("--bulk-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--bulk-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--floor-server", type=int, nargs="+", metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 3.0 if args.quick else 8.0
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        p.error("--rounds, --duration and --connections must be positive")
    return args


def main(argv: Sequence[str] | None = None, command: str | None = None) -> int:
    """`command` is how the run was started, for the report (`make bench` passes its own)."""
    args = parse_args(argv)
    if args.steelyard_cmd:
        STEELYARD_CMD[:] = shlex.split(args.steelyard_cmd)
    if args.bulk_server:
        bulk_server(args.bulk_server, BULK_BYTES)
        return 0
    if args.bulk_client:
        bulk_client(args.bulk_client)
        return 0
    if args.floor_server:
        floor_server(args.floor_server[0], args.floor_server[1:])
        return 0
    if args.python_cost:
        print(python_cost())
        return 0
    if command is None:
        command = shlex.join(["python", "-m", "bench.proxy", *(sys.argv[1:] if argv is None else argv)])
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    bench = Bench(args)
    try:
        load_before = _loadavg()
        print(f"proxy benchmark: rows {', '.join(r.name for r in bench.rows)}", flush=True)
        bench.setup()
        bench.run_rounds()
        results = summarize(bench)
        load_after = _loadavg()
        notes = bench.profile() if args.profile else []
        text = report(bench, results, command.strip(), load_before, load_after)
        print()
        print(text)
        for note in notes:
            print(note)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "proxy-results.json").write_text(
            json.dumps(
                {
                    "started": bench.started.isoformat(),
                    "command": command,
                    "samples": [vars(s) for s in bench.samples],
                    "unavailable": bench.unavailable,
                },
                indent=1,
            )
        )
        (OUT / "proxy-report.md").write_text(text)
        if not (args.no_docs or args.quick):
            write_docs(text)
            print(f"wrote the proxy section of {DOCS.relative_to(REPO)}")
        return 0
    except NotAvailable as exc:
        print(f"proxy benchmark cannot run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything started", file=sys.stderr)
        return 130
    finally:
        bench.close()
        signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    raise SystemExit(main())
