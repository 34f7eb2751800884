"""`steelyard run --kubernetes` while the API server cannot be reached: it waits, and SIGTERM still
ends it cleanly (exit 0), as a pod that is deleted before its cluster answered must."""

from __future__ import annotations

import signal

from e2e_support import Process, free_port


def test_sigterm_while_waiting_for_an_unreachable_api_exits_0() -> None:
    port = free_port()  # nothing listens here
    proxy = Process(["run", "--kubernetes", "--server", f"http://127.0.0.1:{port}", "--admin", "off"],
                    "steelyard")
    try:
        proxy.wait_for("the API server is not answering", 20)  # it says what it is waiting for
        assert proxy.proc.poll() is None, proxy.output()
        proxy.signal(signal.SIGTERM)
        code = proxy.wait(15)
    finally:
        proxy.stop()
    assert code == 0, proxy.output()
    assert "stopped before the first configuration arrived" in proxy.output()
