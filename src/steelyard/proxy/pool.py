"""Per-endpoint keep-alive pools of upstream connections, keyed by endpoint id (`host:port`).

Pools outlive configuration changes: an endpoint that stays keeps its warm connections. A pool whose
endpoint left the configuration is *retired*: its idle connections close now, busy ones close when their
exchange ends instead of returning. Idle connections are reused last-in-first-out, so the warmest one is
used and the surplus ages out under the idle timeout.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

__all__ = ["EndpointPool", "Poolable"]


class Poolable(Protocol):
    closed: bool
    idle_since: float

    def close(self) -> None: ...


class EndpointPool:
    __slots__ = ("endpoint_id", "host", "port", "idle", "busy", "max_idle", "retired", "connects", "reuses")

    def __init__(self, endpoint_id: str, host: str, port: int, max_idle: int):
        self.endpoint_id = endpoint_id
        self.host = host
        self.port = port
        self.idle: list[Poolable] = []
        self.busy = 0
        self.max_idle = max_idle
        self.retired = False
        self.connects = 0
        self.reuses = 0

    def acquire(self) -> Poolable | None:
        """An idle open connection, now counted busy, or None (the caller opens one)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.busy += 1
                self.reuses += 1
                return conn
        return None

    def opened(self) -> None:
        """A new connection was opened for this pool and is busy."""
        self.busy += 1
        self.connects += 1

    def release(self, conn: Poolable, reusable: bool, now: float) -> None:
        """The exchange on `conn` ended; keep it idle when it may carry another request."""
        self.busy -= 1
        if reusable and not conn.closed and not self.retired and len(self.idle) < self.max_idle:
            conn.idle_since = now
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: Poolable) -> None:
        """A busy connection will not come back (tunnel, error): stop counting it."""
        self.busy -= 1

    def discard_idle(self, conn: Poolable) -> None:
        """An idle connection closed by the peer."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def expire(self, older_than: float) -> None:
        """Close idle connections unused since before `older_than` (the oldest are first in the list)."""
        idle = self.idle
        while idle and (idle[0].idle_since < older_than or idle[0].closed):
            idle.pop(0).close()

    def retire(self) -> None:
        self.retired = True
        self.close_idle()

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def describe(self) -> dict[str, object]:
        return {"idle": len(self.idle), "busy": self.busy, "connects": self.connects, "reuses": self.reuses,
                "retired": self.retired}

    def __repr__(self) -> str:
        return f"<EndpointPool {self.endpoint_id} idle={len(self.idle)} busy={self.busy}>"
