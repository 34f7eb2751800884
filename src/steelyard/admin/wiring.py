"""How `steelyard run` starts the admin server: its arguments, and the hooks into the runtime.

The admin API is on by default at 127.0.0.1:9901. When that default address is taken (another Steelyard
on the same host, a test running several), the process logs a warning and runs without it; an address
given with `--admin` must bind or start-up fails. `--admin off` turns it off. Worker processes of
`--workers N` start none of their own unless given an address.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Protocol

from steelyard.admin.runtime_source import RuntimeSource
from steelyard.admin.server import DEFAULT_ADMIN, TOKEN_ENV, AdminServer, AdminSetupError, parse_address

__all__ = ["add_arguments", "check_options", "start_admin"]

log = logging.getLogger("steelyard.admin")


class _Options(Protocol):
    @property
    def admin(self) -> str | None: ...

    @property
    def admin_token(self) -> str | None: ...

    @property
    def worker_id(self) -> int | None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--admin-token`; `--admin` itself is defined by run_cmd."""
    parser.add_argument("--admin-token", default=None, metavar="TOKEN",
                        help=f"bearer token for the admin API (default ${TOKEN_ENV}); required when --admin "
                             "is not a loopback address")
    parser.add_argument("--access-log", type=_fraction, default=0.0, metavar="FRACTION",
                        help="log this fraction of requests, one line each (0: off, the default; 1: all; "
                             "0.01: one in a hundred)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def check_options(admin: str | None, token: str | None) -> str | None:
    """The token to use (argument, else environment); raises ValueError for a bad address or a missing
    token, before anything starts."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if admin is not None and admin != "off":
        try:
            host, port = parse_address(admin)
            AdminServer.check_exposure(host, port, token)
        except AdminSetupError as exc:
            raise ValueError(str(exc)) from None
    return token


async def start_admin(options: _Options, proxy: Any, runtime: Any,
                      provider: Any = None) -> AdminServer | None:
    """Start the admin server on the running loop and hook it to the runtime's applies and the provider's
    rejected configurations; switch the proxy's access log on when asked. Raises AdminSetupError when an
    explicit address cannot be served."""
    sample = getattr(options, "access_log", 0.0)
    if sample:
        from steelyard.runtime.access_log import AccessLog

        proxy.access_log = AccessLog(sample)
    explicit = options.admin is not None
    if options.admin == "off" or (not explicit and options.worker_id is not None):
        return None
    host, port = parse_address(options.admin or DEFAULT_ADMIN)
    source = RuntimeSource(proxy, runtime)
    runtime.after_apply.append(source.on_applied)
    if provider is not None and hasattr(provider, "on_invalid"):
        provider.on_invalid.append(source.on_rejected)
    server = AdminServer(source, host, port, token=options.admin_token)
    try:
        await server.start()
    except AdminSetupError as exc:
        runtime.after_apply.remove(source.on_applied)
        if explicit:
            raise
        log.warning("%s; running without the admin API (choose one with --admin HOST:PORT)", exc)
        return None
    return server


WORKER_ADMIN = "127.0.0.1:0"  # each worker's private admin API: loopback, an ephemeral port


async def start_group_admin(options: _Options, worker_urls: list[str]) -> tuple[AdminServer | None, Any]:
    """The supervisor's admin API for `--workers N`: an `AggregateSource` over the workers' private admin
    APIs (`worker_urls` is shared, so a restarted worker's new URL is seen at the next poll)."""
    from steelyard.admin.aggregate import AggregateSource

    # (the workers' private APIs take the same token when it came from the environment)
    aggregate = AggregateSource(worker_urls, token=options.admin_token)
    explicit = options.admin is not None
    if options.admin == "off":
        return None, aggregate
    host, port = parse_address(options.admin or DEFAULT_ADMIN)
    server = AdminServer(aggregate, host, port, token=options.admin_token)
    try:
        await server.start()
    except AdminSetupError as exc:
        if explicit:
            raise
        log.warning("%s; running without the admin API (choose one with --admin HOST:PORT)", exc)
        return None, aggregate
    return server, aggregate
