"""Active health checks: one probe loop per (upstream, endpoint), results to the endpoint tracker.

A probe is an HTTP `GET path` (healthy on 2xx/3xx, as HAProxy's `option httpchk`) or a TCP connect,
bounded by `healthCheck.timeout`, every `healthCheck.interval` (the first one at once, with a little
jitter so a reload does not probe every backend in the same millisecond). Every result is reported;
the thresholds (`healthyThreshold`, `unhealthyThreshold`) are applied by `steelyard.endpoints`, which is
pure and tested with a scripted clock.

A probe that fails for want of a LOCAL resource (EMFILE/ENFILE: the proxy is out of file descriptors;
ENOBUFS/ENOMEM; EADDRNOTAVAIL: out of local ports) says nothing about the endpoint: it is not reported at
all (the tracker's state stays as it was), and logged as the proxy's own problem at most once a minute
(`LOCAL_LOG_INTERVAL`).

The state transitions themselves (an endpoint DOWN after `unhealthyThreshold` failures, UP again) are logged
by `UpstreamRuntime`, which is told what the probe said through `HEALTH_DETAIL`; this module logs only when
one endpoint's probe result flips.

`update()` follows the configuration: loops start for new endpoints, stop for removed ones, and restart
only when the endpoint's check itself changed, so a reload does not reset anything it did not touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterable

from steelyard.config.desired import BackendEndpoint
from steelyard.model import BalancerPolicySpec, HealthCheck, HealthCheckType
from steelyard.runtime.upstream import HEALTH_DETAIL

__all__ = ["LOCAL_ERRNOS", "HealthChecker", "LocalResourceError", "probe"]

log = logging.getLogger("steelyard.health")

OnResult = Callable[[str, str, bool], None]  # (upstream key, endpoint id, healthy)
_Checked = tuple[BackendEndpoint, HealthCheck]

# errors of this process, not of the endpoint: out of file descriptors (ours, the system's), buffers, memory
# (EADDRNOTAVAIL on connect: the proxy ran out of local ports, TIME_WAIT piling up)
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
LOCAL_LOG_INTERVAL = 60.0  # seconds between two log lines about skipped probes


class LocalResourceError(Exception):
    """A probe could not be made for want of a local resource (`LOCAL_ERRNOS`): no verdict on the endpoint."""


async def probe(endpoint: BackendEndpoint, check: HealthCheck) -> tuple[bool, str]:
    """One probe. Returns (healthy, why) — `why` is for the log when the state flips. Raises
    `LocalResourceError` when the proxy itself lacks file descriptors, buffers or memory."""
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            try:
                if check.type == HealthCheckType.TCP:
                    return True, "connected"
                host = f"{endpoint.host}:{endpoint.port}"
                writer.write(f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: steelyard-health\r\n"
                             "Connection: close\r\n\r\n".encode("latin-1"))
                line = await reader.readuntil(b"\r\n")
                parts = line.split(None, 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                    return False, f"not an HTTP response: {line[:60]!r}"
                status = int(parts[1])
                return 200 <= status < 400, f"HTTP {status}"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return False, f"no answer within {check.timeout:g}s"
    except OSError as exc:  # asyncio's message names the call, not the cause: say the cause
        if exc.errno in LOCAL_ERRNOS:
            raise LocalResourceError(os.strerror(exc.errno)) from exc
        return False, os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False, "connection closed before a status line"


class HealthChecker:
    """Runs the probe loops of every upstream whose policy has a health check."""

    def __init__(self, on_result: OnResult, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.on_result = on_result
        self.rng = rng or random.Random()
        self.clock = clock
        self.skipped = 0  # probes not counted because of a local resource error (since the start)
        self._skipped_unlogged = 0
        self._local_logged_at: float | None = None
        # (upstream key, endpoint id) -> (what it checks, its task)
        self._loops: dict[tuple[str, str], tuple[_Checked, asyncio.Task[None]]] = {}

    def update(self, upstream_key: str, policy: BalancerPolicySpec,
               endpoints: Iterable[BackendEndpoint]) -> None:
        check = policy.health_check
        wanted: dict[str, BackendEndpoint] = {}
        if check.type != HealthCheckType.NONE:
            wanted = {e.id: e for e in endpoints}
        for key in [k for k in self._loops if k[0] == upstream_key]:
            spec, task = self._loops[key]
            endpoint = wanted.get(key[1])
            # (the key holds the address; a weight, name or terminating change keeps the loop and its
            # counts, only a change to the check itself restarts it)
            if endpoint is None or spec[1] != check:
                task.cancel()
                del self._loops[key]
        for endpoint_id, endpoint in wanted.items():
            key = (upstream_key, endpoint_id)
            if key not in self._loops:
                task = asyncio.get_running_loop().create_task(
                    self._run(upstream_key, endpoint, check),
                    name=f"health-check {upstream_key} {endpoint_id}")
                self._loops[key] = ((endpoint, check), task)

    async def _run(self, upstream_key: str, endpoint: BackendEndpoint, check: HealthCheck) -> None:
        await asyncio.sleep(self.rng.uniform(0, min(check.interval, 1.0) / 10))
        last: bool | None = None
        while True:
            started = asyncio.get_running_loop().time()
            result: tuple[bool, str] | None
            try:
                result = await probe(endpoint, check)
            except LocalResourceError as exc:  # our problem, not the endpoint's: no result at all
                self._local_problem(upstream_key, endpoint, str(exc))
                result = None
            except Exception:  # a bug in a probe must not stop the checks
                log.exception("health check of %s failed unexpectedly", endpoint.id)
                result = False, "internal error"
            if result is not None:
                healthy, why = result
                self._report(upstream_key, endpoint, healthy, why, healthy != last)
                last = healthy
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(check.interval - elapsed, 0.0))

    def _report(self, upstream_key: str, endpoint: BackendEndpoint, healthy: bool, why: str,
                flipped: bool) -> None:
        if flipped:
            (log.info if healthy else log.warning)("health check %s %s: %s (%s)", upstream_key,
                                                   endpoint.id, "pass" if healthy else "fail", why)
        token = HEALTH_DETAIL.set(why)  # for the runtime's DOWN line
        try:
            self.on_result(upstream_key, endpoint.id, healthy)
        except Exception:
            log.exception("health result for %s could not be applied", endpoint.id)
        finally:
            HEALTH_DETAIL.reset(token)

    def _local_problem(self, upstream_key: str, endpoint: BackendEndpoint, why: str) -> None:
        """A probe skipped for a local resource error: logged at most once per `LOCAL_LOG_INTERVAL`."""
        self.skipped += 1
        self._skipped_unlogged += 1
        now = self.clock()
        if self._local_logged_at is not None and now - self._local_logged_at < LOCAL_LOG_INTERVAL:
            return
        self._local_logged_at = now
        skipped, self._skipped_unlogged = self._skipped_unlogged, 0
        log.error("health check %s %s not made: local resource problem (%s), not the endpoint's: the proxy "
                  "is short of file descriptors or memory; the probe is not counted (%d skipped since the "
                  "last such line, at most one a minute)", upstream_key, endpoint.id, why, skipped)

    def checked(self) -> list[tuple[str, str]]:
        """(upstream key, endpoint id) of every running probe loop."""
        return sorted(self._loops)

    async def close(self) -> None:
        tasks = [task for _, task in self._loops.values()]
        self._loops.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
