"""Listening sockets: bound with SO_REUSEADDR and SO_REUSEPORT so every `--workers` process binds each
listener itself and the kernel spreads new connections between them (Linux `SO_REUSEPORT`, 3.9+)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from steelyard.config.desired import Listener

__all__ = ["BACKLOG", "ListenerBindError", "open_socket", "serve_socket"]

BACKLOG = 1024


class ListenerBindError(Exception):
    """A listener could not be bound; the message names the address and the reason."""


def open_socket(listener: Listener, backlog: int = BACKLOG) -> socket.socket:
    """Create, bind and listen synchronously, so a failure is known before anything else changes."""
    host = listener.address or None
    try:
        infos = socket.getaddrinfo(host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenerBindError(f"cannot resolve listener address {listener.address!r}: {exc}") from exc
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ListenerBindError(
            f"cannot listen on {listener.address}:{listener.port}: {exc.strerror or exc}"
        ) from exc
    return sock


async def serve_socket(sock: socket.socket, factory: Callable[[], asyncio.Protocol],
                       backlog: int = BACKLOG) -> asyncio.AbstractServer:
    """Start accepting on an already bound socket."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, sock=sock, backlog=backlog)
