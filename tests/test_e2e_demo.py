"""`steelyard demo --once` (what `make demo` runs, non-interactively): the 5/1/1 spread on fixed ports."""

from __future__ import annotations

import socket

import pytest

from e2e_support import Process, require

pytestmark = pytest.mark.slow

DEMO_PORTS = (8080, 9001, 9002, 9003)


def _busy(port: int) -> bool:
    with socket.socket() as sock:
        # as a server binds: connections left in TIME_WAIT by a finished run do not count as in use
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_demo_shows_the_weighted_spread_and_cleans_up() -> None:
    require(strategies=["WeightedRoundRobin"], default=True)
    busy = [p for p in DEMO_PORTS if _busy(p)]
    if busy:  # the demo's ports are fixed by design; say so loudly rather than fail on someone else's process
        pytest.skip(f"demo ports in use on this machine: {busy}")
    demo = Process(["demo", "--once"], "demo")
    assert demo.wait(60) == 0, demo.output()
    out = demo.output()
    assert "Order: a a b a c a a a a b a c a a" in out, out
    assert "a:  10" in out and "b:   2" in out and "c:   2" in out, out
    assert [p for p in DEMO_PORTS if _busy(p)] == [], "the demo left a process listening"
