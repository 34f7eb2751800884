"""`--workers N`: a supervisor process and N worker processes.

Each worker is a whole `steelyard run` (its own event loop, registry, pools and health checks) that binds
every listener itself with SO_REUSEPORT; the kernel spreads new connections between the workers. The
supervisor holds no sockets and takes no traffic. It:
- checks the configuration once and refuses to start on errors (exit 1);
- starts the workers (spawned with `python -m steelyard run ... --worker-id I`, never forked from a process
  that has a loop) and waits until each has bound its listeners (one byte on a pipe);
- forwards SIGHUP, and on SIGTERM/SIGINT forwards SIGTERM and exits 0 once every worker has drained;
- restarts a worker that dies unexpectedly, with exponential backoff (reset after a minute of good
  health). A worker that fails during the initial start-up stops the whole start (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from steelyard.admin.wiring import WORKER_ADMIN, start_group_admin
from steelyard.runtime.file_provider import FileProvider, file_signature
from steelyard.runtime.run_cmd import RunOptions, print_errors
from steelyard.runtime.tasks import TaskGroup

__all__ = ["Backoff", "die_with_parent", "supervise"]

log = logging.getLogger("steelyard.supervisor")

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, so no worker outlives it (prctl(2))."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Backoff:
    """Restart delays: first 0.5 s, doubling to at most 10 s; back to the start after `healthy_after`
    seconds of uptime. Pure: times are passed in."""

    first: float = 0.5
    maximum: float = 10.0
    healthy_after: float = 60.0
    failures: int = 0

    def next_delay(self, uptime: float) -> float:
        if uptime >= self.healthy_after:
            self.failures = 0
        delay = min(self.maximum, self.first * (2 ** self.failures))
        self.failures += 1
        return delay


@dataclass
class WorkerSlot:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False  # the current process has said it serves
    backoff: Backoff = field(default_factory=Backoff)


def worker_command(options: RunOptions, index: int, ready_fd: int, fallback: tuple[str, ...] = ()
                   ) -> list[str]:
    cmd = [sys.executable, "-m", "steelyard", "run", "--worker-id", str(index), "--ready-fd", str(ready_fd),
           "--drain-timeout", f"{options.drain_timeout}s",
           "--shutdown-delay", f"{options.shutdown_delay}s", "--log-format", options.log_format,
           "--log-level", options.log_level.lower(), "--poll-interval", f"{options.poll_interval}s",
           "--admin", WORKER_ADMIN,  # private, aggregated by the supervisor's admin API
           "--access-log", str(options.access_log),
           "--max-connections", "auto" if options.max_connections is None else str(options.max_connections)]
    for path in options.configs:
        cmd += ["-c", path]
    for path in fallback:
        cmd += ["--fallback-config", path]
    return cmd


class Supervisor:
    def __init__(self, options: RunOptions, last_good: LastGood | None = None) -> None:
        self.options = options
        self.last_good = last_good
        self.slots = [WorkerSlot(i) for i in range(1, options.workers + 1)]
        self.stopping = False
        self.tasks = TaskGroup()
        self.failed_start: str | None = None
        self.admin_urls = [""] * options.workers  # each worker's private admin API, for the aggregate

    async def start_worker(self, slot: WorkerSlot) -> bool:
        """Spawn one worker and wait until it serves (True) or exits first (False)."""
        read_fd, write_fd = os.pipe()
        try:
            fallback = self.last_good.copies if self.last_good is not None else ()
            slot.process = await asyncio.create_subprocess_exec(
                *worker_command(self.options, slot.index, write_fd, fallback), pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        slot.started = time.monotonic()
        slot.ready = False
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()

        def on_readable() -> None:
            loop.remove_reader(read_fd)
            data = b""
            with contextlib.suppress(OSError):
                data = os.read(read_fd, 32)  # b"r" and the worker's admin port
            os.close(read_fd)
            if data[1:].isdigit():
                self.admin_urls[slot.index - 1] = f"http://127.0.0.1:{int(data[1:])}"
            slot.ready = bool(data)  # EOF without a byte: it exited before serving
            if not ready.done():
                ready.set_result(slot.ready)

        loop.add_reader(read_fd, on_readable)
        return await ready

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        aggregate: Any = None

        def on_stop(signame: str) -> None:
            log.info("supervisor: %s, stopping %d worker(s)", signame, len(self.slots))
            self.stopping = True
            stop.set()
            if aggregate is not None:
                aggregate.stopping = True  # /readyz says so now, not at the next poll of the workers
            self.signal_all(signal.SIGTERM)

        loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
        # Only to workers that serve: one still starting has no handler yet (SIGHUP's default action would
        # kill it), and it reads the files as it starts anyway.
        loop.add_signal_handler(signal.SIGHUP, self.signal_all, signal.SIGHUP, True)

        results = await asyncio.gather(*(self.start_worker(slot) for slot in self.slots))
        if not all(results) or self.stopping:
            bad = [s.index for s, ok in zip(self.slots, results, strict=True) if not ok]
            if bad and not self.stopping:
                print(f"steelyard: worker(s) {bad} failed to start; stopping", file=sys.stderr)
            self.stopping = True
            self.signal_all(signal.SIGTERM)
            await self.wait_all()
            return 1 if bad else 0
        try:
            admin, aggregate = await start_group_admin(self.options, self.admin_urls)
            aggregate.stopping = self.stopping
        except ValueError as exc:  # AdminSetupError: an explicit --admin that cannot be served
            print(f"steelyard: {exc}", file=sys.stderr)
            self.stopping = True
            self.signal_all(signal.SIGTERM)
            await self.wait_all()
            return 1
        pids = ", ".join(str(s.process.pid) for s in self.slots if s.process is not None)
        log.info("steelyard ready: %d workers (pids %s), supervisor pid %d%s", len(self.slots), pids,
                 os.getpid(), f"; admin {admin.url}/" if admin is not None else "; no admin API")
        for slot in self.slots:
            self.tasks.spawn(self.watch(slot), f"watch-worker-{slot.index}")
        if self.last_good is not None:
            self.tasks.spawn(self.last_good.follow(self.options.poll_interval), "last-good")
        await stop.wait()
        codes = await self.wait_all(clean_stop=True)
        await self.tasks.cancel_all()
        if admin is not None:
            await admin.stop()
        await aggregate.close()
        log.info("supervisor: all workers stopped (exit codes %s)", codes)
        from steelyard.runtime.run_cmd import ignore_stop_signals

        ignore_stop_signals(loop)
        return 0 if all(c in (0, None) for c in codes) else 1

    async def watch(self, slot: WorkerSlot) -> None:
        """Restart the worker whenever it exits while we are not stopping."""
        while not self.stopping:
            assert slot.process is not None
            code = await slot.process.wait()
            if self.stopping:
                return
            uptime = time.monotonic() - slot.started
            delay = slot.backoff.next_delay(uptime)
            log.warning("worker %d (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                        slot.index, slot.process.pid, code, uptime, delay)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            if await self.start_worker(slot):
                assert slot.process is not None
                log.info("worker %d restarted (pid %d)", slot.index, slot.process.pid)

    def signal_all(self, sig: int, serving_only: bool = False) -> None:
        for slot in self.slots:
            proc = slot.process
            if proc is not None and proc.returncode is None and (slot.ready or not serving_only):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def wait_all(self, clean_stop: bool = False) -> list[int | None]:
        """Wait for every worker to exit: drain time plus a margin, then SIGKILL. With `clean_stop`, the
        codes are those of the stop itself: None for a worker already dead (its exit was logged when it
        happened; it was waiting to be restarted), 0 for one that was still starting and died of the
        SIGTERM it was sent (it had nothing to drain)."""
        deadline = self.options.shutdown_delay + self.options.drain_timeout + 10.0
        codes: list[int | None] = []
        for slot in self.slots:
            proc = slot.process
            if proc is None or (clean_stop and proc.returncode is not None):
                codes.append(None)
                continue
            starting = not slot.ready
            try:
                code = await asyncio.wait_for(proc.wait(), deadline)
            except TimeoutError:
                log.error("worker %d (pid %d) did not stop; killing it", slot.index, proc.pid)
                proc.kill()
                code = await proc.wait()
            codes.append(0 if clean_stop and starting and code == -signal.SIGTERM else code)
        return codes


class LastGood:
    """Copies of the configuration files as last read valid, kept by the supervisor: a worker restarted
    while the files hold an invalid change starts from them (`--fallback-config`) instead of exiting, and
    watches the real files as its siblings do."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = paths
        self.dir = tempfile.mkdtemp(prefix="steelyard-last-good-")
        self.copies: tuple[str, ...] = ()
        self._generation = 0

    def snapshot(self) -> bool:
        """Copy the files and keep the copies if they load valid (the files may change meanwhile)."""
        from steelyard.config import load_files  # type: ignore[attr-defined]

        self._generation += 1
        staging = os.path.join(self.dir, str(self._generation))
        os.mkdir(staging)
        copies = tuple(os.path.join(staging, f"{i}-{os.path.basename(p)}") for i, p in enumerate(self.paths))
        try:
            for path, copy in zip(self.paths, copies, strict=True):
                shutil.copyfile(path, copy)
            valid = not load_files(list(copies)).errors
        except OSError:
            valid = False
        if not valid:
            shutil.rmtree(staging, ignore_errors=True)
            return False
        if self.copies:
            shutil.rmtree(os.path.dirname(self.copies[0]), ignore_errors=True)
        self.copies = copies
        return True

    async def follow(self, poll_interval: float) -> None:
        """Take a new copy whenever the files change to a valid configuration (the named task
        `last-good`)."""
        seen = file_signature(self.paths)  # (the stat of the files: snapshot() reads and checks them once)
        while True:
            await asyncio.sleep(poll_interval)
            now = file_signature(self.paths)
            if now != seen:
                seen = now
                self.snapshot()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def supervise(options: RunOptions) -> int:
    """Check the configuration, then run the supervisor's loop."""
    provider = FileProvider(options.configs)
    loaded = provider.load()
    if loaded.state is None:
        print_errors(provider.source, loaded)
        return 1
    import uvloop

    last_good = LastGood(options.configs)
    try:
        last_good.snapshot()
        return uvloop.run(Supervisor(options, last_good).run())
    finally:
        last_good.remove()
