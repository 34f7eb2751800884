"""Support for end-to-end tests: real `steelyard` processes on 127.0.0.1, a small keep-alive HTTP client
(httptools) and a bounded load generator.

Processes are started with `python -m steelyard ...`; their output is collected by a reader thread so a
test can wait for a log line (`wait_for`) and show everything a process said when an assertion fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

LOCALHOST = "127.0.0.1"
HOST = "my-domain.com"


def missing_parts(*, strategies: Sequence[str] = (), health: bool = False, validate: bool = False,
                  default: bool = False) -> list[str]:
    """The parts of Steelyard an end-to-end test needs that are not in this tree (built in parallel).

    Looked up on disk and in the real modules, never in `sys.modules` fakes (proxy_support installs a
    stand-in tracker for the proxy's own tests)."""
    import steelyard
    import steelyard.config

    root = Path(steelyard.__file__).parent
    missing = []
    if not hasattr(steelyard.config, "load_files"):
        missing.append("steelyard.config.load_files")
    if default and not hasattr(steelyard.config, "default_config_path"):
        missing.append("steelyard.config.default_config_path")
    if not (root / "endpoints").is_dir() and not (root / "endpoints.py").is_file():
        missing.append("steelyard.endpoints")
    if health and not (root / "runtime" / "health_checks.py").is_file():
        missing.append("steelyard.runtime.health_checks")
    if validate and not (root / "config" / "validate_cmd.py").is_file():
        missing.append("steelyard.config.validate_cmd")
    if strategies:
        from steelyard.strategies import registered_names

        missing += [f"strategy {name}" for name in strategies if name not in registered_names()]
    return missing


def require(**parts: object) -> None:
    """Skip, loudly and with the reason, while a part this test needs has not landed."""
    import pytest

    missing = missing_parts(**parts)  # type: ignore[arg-type]
    if missing:
        pytest.skip(f"needs parts not in this tree yet: {', '.join(missing)}")


def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check()` every 0.1 s until it returns something true or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def free_port() -> int:
    """An ephemeral port that was free a moment ago (for config files, which need a number up front)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


# -- processes ---------------------------------------------------------------------------------------------


class Process:
    """A child process whose merged stdout/stderr is captured line by line."""

    def __init__(self, args: Sequence[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = list(args)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "steelyard", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=full_env, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """Block until a line (from index `start`) matches; fail with the whole output otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    found = regex.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{self.name}: no line matching {pattern!r} within {timeout}s "
                                         f"(exit {self.proc.poll()}); output:\n{self.output()}")
                self._cond.wait(min(left, 0.2))

    def mark(self) -> int:
        """The current number of lines, to wait only for lines logged after it."""
        with self._cond:
            return len(self.lines)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            message = f"{self.name} did not exit within {timeout}s; output:\n{self.output()}"
            raise AssertionError(message) from exc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)


class BackendProcess(Process):
    """`steelyard backend` on an ephemeral port (it prints the port it got)."""

    def __init__(self, name: str, *extra: str) -> None:
        super().__init__(["backend", "--name", name, "--port", "0", *extra], f"backend {name}")
        found = self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", timeout=20)
        self.port = int(found.group(1))

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def control(self, **changes: object) -> dict[str, object]:
        return json.loads(asyncio.run(request_once(self.port, "POST", "/control",
                                                   body=json.dumps(changes).encode())).body)


class SteelyardProcess(Process):
    """`steelyard run -c FILE...`; `ready()` waits for its start-up line."""

    def __init__(self, configs: Sequence[Path], *extra: str, name: str = "steelyard") -> None:
        args = ["run"]
        for path in configs:
            args += ["-c", str(path)]
        super().__init__([*args, "--drain-timeout", "10s", "--admin", "off", *extra], name)

    def ready(self, timeout: float = 30.0) -> None:
        self.wait_for(r"steelyard ready", timeout)


@contextlib.contextmanager
def backends(*names: str, extra: Sequence[str] = ()) -> Iterator[dict[str, BackendProcess]]:
    started: dict[str, BackendProcess] = {}
    try:
        for name in names:
            started[name] = BackendProcess(name, *extra)
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def write_config(path: Path, *, port: int, endpoints: Sequence[tuple[str, int]], strategy: str = "RoundRobin",
                 name: str = "web", hosts: Sequence[str] = (HOST,), policy_extra: str = "",
                 strategy_extra: str = "") -> Path:
    """One LoadBalancer (listener 127.0.0.1:port) with a BalancerPolicy. `endpoints`: (address, weight)."""
    eps = "\n".join(f"    - address: \"{addr}\"\n      weight: {weight}" for addr, weight in endpoints)
    host_lines = "\n".join(f"    - {h}" for h in hosts)
    text = f"""\
apiVersion: steelyard.dev/v1alpha1
kind: BalancerPolicy
metadata:
  name: {name}-policy
spec:
  strategy:
    type: {strategy}
{strategy_extra}{policy_extra}---
apiVersion: steelyard.dev/v1alpha1
kind: LoadBalancer
metadata:
  name: {name}
spec:
  policyRef:
    name: {name}-policy
  ports:
    - name: http
      port: {port}
      address: 127.0.0.1
  hosts:
{host_lines}
  endpoints:
{eps}
"""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomically, as an editor or a ConfigMap update does
    return path


# -- HTTP client --------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def backend(self) -> str:
        return self.headers.get("x-backend", "")


class _ResponseReader:
    """httptools callbacks collecting one response."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class HttpClient:
    """A keep-alive HTTP/1.1 client for one connection; reconnects when the server closed it."""

    def __init__(self, port: int, host_header: str = HOST) -> None:
        self.port = port
        self.host_header = host_header
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(LOCALHOST, self.port)

    @property
    def local_port(self) -> int:
        assert self.writer is not None
        return int(self.writer.get_extra_info("sockname")[1])

    async def request(self, method: str = "GET", path: str = "/", body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> Response:
        if self.writer is None or self.writer.is_closing():
            await self.connect()
        assert self.reader is not None and self.writer is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{k}: {v}" for k, v in headers]
        if body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        collected = _ResponseReader()
        parser = httptools.HttpResponseParser(collected)
        while not collected.done:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed before the response ended")
            parser.feed_data(data)
        response = Response(parser.get_status_code(), collected.headers, b"".join(collected.body))
        if response.headers.get("connection", "").lower() == "close" or parser.get_http_version() != "1.1":
            await self.close()
        return response

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.writer = None


async def request_once(port: int, method: str = "GET", path: str = "/", body: bytes = b"",
                       host_header: str = HOST, headers: Sequence[tuple[str, str]] = ()) -> Response:
    client = HttpClient(port, host_header)
    try:
        return await client.request(method, path, body, headers)
    finally:
        await client.close()


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    backends: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + len(self.errors)


async def load(port: int, *, connections: int = 4, requests: int | None = None,
               until: asyncio.Event | None = None, path: str = "/", host_header: str = HOST,
               max_requests: int = 20000) -> LoadResult:
    """Bounded GET load over `connections` keep-alive connections: `requests` in total, or until `until`
    is set (never more than `max_requests`). Each response is counted by status and `X-Backend`."""
    result = LoadResult()
    sent = 0

    async def worker() -> None:
        nonlocal sent
        client = HttpClient(port, host_header)
        try:
            while sent < (requests if requests is not None else max_requests):
                if until is not None and until.is_set():
                    return
                sent += 1
                try:
                    response = await client.request("GET", path)
                except (OSError, ConnectionError, httptools.HttpParserError) as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    await client.close()
                    continue
                result.statuses[response.status] += 1
                result.backends[response.backend] += 1
                result.order.append(response.backend)
        finally:
            await client.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return result


def sequence(port: int, count: int, path: str = "/") -> list[str]:
    """`count` sequential requests on one keep-alive connection; the answering backends in order."""

    async def go() -> list[str]:
        client = HttpClient(port)
        try:
            out = []
            for _ in range(count):
                response = await client.request("GET", path)
                out.append(response.backend if response.status == 200 else str(response.status))
            return out
        finally:
            await client.close()

    return asyncio.run(go())
