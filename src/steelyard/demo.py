"""`steelyard demo` (what `make demo` runs): Steelyard balancing three demo backends, shown live.

Starts `steelyard backend` a, b and c on 127.0.0.1:9001-9003 and `steelyard run` on the embedded default
configuration (listener 127.0.0.1:8080, host my-domain.com, WeightedRoundRobin with weights 5/1/1), sends a
few requests and prints who answered each and the tally. Then it keeps running so you can try it yourself,
until Ctrl-C; with `--once`, or when stdin is not a terminal (CI, pipes), it stops after the demonstration.
Every child process is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import IO

__all__ = ["add_arguments", "run"]

HOST_HEADER = "my-domain.com"
PROXY = ("127.0.0.1", 8080)
BACKENDS = (("a", 9001), ("b", 9002), ("c", 9003))
WEIGHTS = {"a": 5, "b": 1, "c": 1}  # as in the embedded default configuration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="exit after the demonstration")
    parser.add_argument("--requests", type=int, default=14, metavar="N", help="requests to send (default 14)")


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


class DemoError(Exception):
    pass


def _port_free(address: tuple[str, int]) -> bool:
    with socket.socket() as sock:
        # as a server binds: connections left in TIME_WAIT by a finished run do not count as in use
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def _start(name: str, *args: str) -> Child:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _stop() with the process
    process = subprocess.Popen([sys.executable, "-m", "steelyard", *args], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT)
    return Child(name, process, log)


def _wait_listening(child: Child, address: tuple[str, int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise DemoError(f"{child.name} exited with {child.process.returncode}:\n{child.output()}")
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=0.5):
            return  # an empty connection: no request, so no pick is spent before the demonstration
        time.sleep(0.05)
    raise DemoError(f"{child.name} is not listening on {address[0]}:{address[1]} after {timeout:.0f}s:\n"
                    f"{child.output()}")


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.process.wait(15)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait(5)
        child.log.close()


def _demonstrate(count: int) -> Counter[str]:
    print(f"\nSending {count} requests to http://{PROXY[0]}:{PROXY[1]}/ with Host: {HOST_HEADER}\n")
    conn = http.client.HTTPConnection(*PROXY, timeout=10)
    tally: Counter[str] = Counter()
    order: list[str] = []
    try:
        for i in range(1, count + 1):
            conn.request("GET", "/", headers={"Host": HOST_HEADER})
            response = conn.getresponse()
            body = response.read().decode(errors="replace").strip()
            who = response.getheader("X-Backend") or f"({response.status})"
            print(f"  {i:2d}  {response.status}  answered by {who:<3}  body: {body}")
            tally[who] += 1
            order.append(who)
    finally:
        conn.close()
    total_weight = sum(WEIGHTS.values())
    print(f"\nOrder: {' '.join(order)}")
    print("Tally (WeightedRoundRobin, weights " + "/".join(str(w) for w in WEIGHTS.values()) + "):")
    for name, weight in WEIGHTS.items():
        expected = count * weight / total_weight
        bar = "#" * tally[name]
        print(f"  {name}: {tally[name]:3d}  (weight {weight}, expected {expected:4.1f})  {bar}")
    return tally


def run(args: argparse.Namespace) -> int:
    if args.requests < 1:
        print("steelyard demo: --requests must be at least 1", file=sys.stderr)
        return 2
    busy = [f"{h}:{p}" for h, p in [PROXY, *((PROXY[0], port) for _, port in BACKENDS)]
            if not _port_free((h, p))]
    if busy:
        print(f"steelyard demo: port(s) already in use: {', '.join(busy)}; stop whatever uses them "
              "(an earlier demo?) and try again", file=sys.stderr)
        return 1
    children: list[Child] = []
    try:
        print("Starting demo backends a, b, c on 127.0.0.1:9001-9003 and Steelyard on 127.0.0.1:8080 ...")
        for name, port in BACKENDS:
            children.append(_start(f"backend {name}", "backend", "--name", name, "--port", str(port)))
        children.append(_start("steelyard", "run", "--drain-timeout", "5s"))
        for child, (_, port) in zip(children, BACKENDS, strict=False):
            _wait_listening(child, ("127.0.0.1", port))
        _wait_listening(children[-1], PROXY)
        _demonstrate(args.requests)
        if args.once or not sys.stdin.isatty():
            print("\nDone; stopping the demo processes.")
            return 0
        print(f"\nSteelyard keeps running. Try it yourself:\n"
              f"  curl -H 'Host: {HOST_HEADER}' http://{PROXY[0]}:{PROXY[1]}/\n"
              f"  curl -X POST -d '{{\"delay\": 0.5}}' http://127.0.0.1:9001/control   # make a slow\n"
              f"Press Ctrl-C to stop.")
        while all(c.process.poll() is None for c in children):
            time.sleep(0.5)
        gone = [c for c in children if c.process.poll() is not None]
        print(f"steelyard demo: {gone[0].name} exited with {gone[0].process.returncode}:\n{gone[0].output()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping the demo processes.")
        return 0
    except DemoError as exc:
        print(f"steelyard demo: {exc}", file=sys.stderr)
        return 1
    except (OSError, http.client.HTTPException) as exc:
        print(f"steelyard demo: request failed: {exc}", file=sys.stderr)
        for child in children:
            if child.name == "steelyard":
                print(child.output(), file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            _stop(children)
