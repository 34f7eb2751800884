"""EndpointPool: LIFO reuse, max idle, idle expiry and retirement, with plain objects (no sockets)."""

from __future__ import annotations

from steelyard.proxy.pool import EndpointPool


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.idle_since = 0.0

    def close(self) -> None:
        self.closed = True


def test_reuse_is_last_in_first_out_and_skips_closed() -> None:
    pool = EndpointPool("h:1", "h", 1, max_idle=4)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for _ in range(3):
        pool.opened()
    for t, conn in enumerate((a, b, c)):
        pool.release(conn, True, now=float(t))
    assert pool.busy == 0 and len(pool.idle) == 3
    c.closed = True  # the backend closed it while idle
    assert pool.acquire() is b
    assert pool.acquire() is a
    assert pool.acquire() is None
    assert pool.busy == 2 and (pool.connects, pool.reuses) == (3, 2)


def test_not_reusable_or_over_max_idle_is_closed() -> None:
    pool = EndpointPool("h:1", "h", 1, max_idle=1)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for _ in range(3):
        pool.opened()
    pool.release(a, False, 0.0)
    pool.release(b, True, 0.0)
    pool.release(c, True, 0.0)
    assert (a.closed, b.closed, c.closed) == (True, False, True)
    assert pool.idle == [b] and pool.busy == 0


def test_expire_closes_connections_idle_too_long() -> None:
    pool = EndpointPool("h:1", "h", 1, max_idle=8)
    conns = [Conn(str(i)) for i in range(3)]
    for i, conn in enumerate(conns):
        pool.opened()
        pool.release(conn, True, now=10.0 + i)
    pool.expire(older_than=11.5)
    assert [c.closed for c in conns] == [True, True, False]
    assert pool.idle == [conns[2]]


def test_retired_pool_closes_idle_now_and_busy_ones_on_release() -> None:
    pool = EndpointPool("h:1", "h", 1, max_idle=8)
    idle, busy = Conn("idle"), Conn("busy")
    pool.opened()
    pool.opened()
    pool.release(idle, True, 0.0)
    pool.retire()
    assert idle.closed and pool.idle == []
    pool.release(busy, True, 1.0)
    assert busy.closed and pool.busy == 0
    assert "idle=0 busy=0" in repr(pool)
