"""Writing to a connection's socket without the transport, when nothing can go wrong by it.

uvloop writes with write(2), whose VFS layers cost the kernel more than send(2) does on a socket
(fdget_pos, rw_verify_area, sock_write_iter: ~0.1 µs a call here, by perf), and its own write path costs
about as much again in user space; HAProxy sends with send(2) (strace). So the compiled HTTP path sends a
connection's output itself while the transport holds nothing and is not closing, and hands the transport
whatever the socket did not take, and any error: order, backpressure (pause_writing) and error reporting
stay the transport's. Plain Python always uses the transport.

TCP mode does not use it: four paired quick runs (2026-11-29 21:45 UTC) gave 1.05/1.04/0.99/1.07× HAProxy
with uvloop's write against 1.02/0.97/0.91/0.94× with this, at the same CPU per request (TCP mode's rate
is bound by the other core, wrk and the backends, not by the proxy's CPU).
"""

from __future__ import annotations

import asyncio

try:  # compiled with Cython when a compiler was there at install (see sockets.pxd and setup.py)
    import cython

    _COMPILED: bool = cython.compiled
except ImportError:
    _COMPILED = False

__all__ = ["socket_fd", "write_now"]


def socket_fd(transport: asyncio.BaseTransport) -> int:
    """The transport's socket for `write_now`: -1 when it has none (a test's stand-in), or in plain Python."""
    sock = transport.get_extra_info("socket") if _COMPILED else None
    return sock.fileno() if sock is not None else -1


def write_now(transport: asyncio.Transport, fd: int, data: bytes) -> None:
    """`transport.write(data)`, with send(2) on `fd` first when the transport is open (closing, its socket
    may already be closed and its number reused) and holds nothing (the bytes must keep their order)."""
    if fd >= 0 and _COMPILED and not transport.is_closing() and not transport.get_write_buffer_size():
        buf = data
        sent = send(fd, buf, len(data), MSG_NOSIGNAL | MSG_DONTWAIT)  # noqa: F821 (libc: see sockets.pxd)
        if sent == len(data):
            return
        if sent > 0:
            transport.write(memoryview(data)[sent:])  # (no copy of the rest)
            return
    transport.write(data)
