"""The file provider: `-c FILE` (repeatable) read into one whole `DesiredState`, re-read when a file
changes or on SIGHUP (Traefik's provider habit: whole configurations, never deltas).

Change detection is stat polling (mtime, size, inode and device of every file, about once a second). It
needs no inotify, and it sees editors and ConfigMap updates that *replace* a file rather than write it in
place (new inode). It is level-triggered: each poll compares the files as they are now with those last
read, so a missed event heals at the next poll. A re-read that yields the state already applied is
dropped.

An invalid change is logged with every error, in the text `steelyard validate` prints, and the last good
configuration keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from steelyard.config.desired import DesiredState

__all__ = ["FileProvider", "FileSignature", "file_signature", "same_configuration"]

log = logging.getLogger("steelyard.provider")

# (mtime_ns, size, inode, device) per path; None when the file is missing or unreadable.
FileSignature = tuple[tuple[int, int, int, int] | None, ...]


def file_signature(paths: Sequence[str]) -> FileSignature:
    out: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
    return tuple(out)


def same_configuration(a: DesiredState | None, b: DesiredState | None) -> bool:
    """Equal upstreams and listeners (the source label does not count)."""
    if a is None or b is None:
        return a is b
    return dict(a.upstreams) == dict(b.upstreams) and a.listeners == b.listeners


@dataclass(frozen=True, slots=True)
class Loaded:
    """One read of the files: a state, or the errors that stopped it (as `steelyard validate` prints)."""

    state: DesiredState | None
    errors: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # what a valid configuration does not do in file mode


def _default_loader(paths: Sequence[str]) -> Loaded:
    from steelyard.config import file_mode_warnings, load_files  # type: ignore[attr-defined]

    result = load_files(list(paths))
    errors = tuple(str(e) for e in result.errors)
    warnings = () if errors else tuple(file_mode_warnings(result.resources))
    return Loaded(result.state if not errors else None, errors, warnings)


class FileProvider:
    """Reads `paths`; `watch(apply)` calls `apply(state)` for every new valid configuration."""

    def __init__(self, paths: Sequence[str], *, poll_interval: float = 1.0,
                 loader: Callable[[Sequence[str]], Loaded] = _default_loader) -> None:
        self.paths = tuple(paths)
        self.poll_interval = poll_interval
        self.loader = loader
        self.signature: FileSignature | None = None
        self.current: DesiredState | None = None  # the last good state handed out
        self.last_errors: tuple[str, ...] = ()
        self.on_invalid: list[Callable[[str, tuple[str, ...]], None]] = []  # admin API: reload history
        self._forced = asyncio.Event() if _loop_running() else None

    @property
    def source(self) -> str:
        return ", ".join(self.paths)

    def load(self) -> Loaded:
        """Read the files now (start-up, SIGHUP, or a change seen by polling) and remember what was seen."""
        self.signature = file_signature(self.paths)
        loaded = self.loader(self.paths)
        self.last_errors = loaded.errors
        return loaded

    def changed(self) -> bool:
        return file_signature(self.paths) != self.signature

    def request_reload(self) -> None:
        """SIGHUP: re-read at once even if no file looks changed."""
        if self._forced is None:
            self._forced = asyncio.Event()
        self._forced.set()

    def accept(self, loaded: Loaded, reason: str) -> DesiredState | None:
        """Log the outcome of a read; return the state to apply, or None (invalid or unchanged)."""
        if loaded.state is None:
            log.error("configuration %s (%s) is invalid; keeping the last good one. %d error(s):\n%s",
                      self.source, reason, len(loaded.errors), "\n".join(f"  {e}" for e in loaded.errors))
            for hook in self.on_invalid:
                hook(self.source, loaded.errors)
            return None
        if self.current is not None and self.current.listeners and not loaded.state.listeners \
                and not loaded.state.upstreams:
            # Nothing at all where there was a configuration: far likelier a file caught half-written (or
            # emptied by mistake) than a wish to close every listener; stopping the process does that.
            log.error("configuration %s (%s) holds no resources (an empty or half-written file?); keeping "
                      "the last good one", self.source, reason)
            for hook in self.on_invalid:
                hook(self.source, ("holds no resources (an empty or half-written file?)",))
            return None
        if same_configuration(loaded.state, self.current):
            log.info("configuration %s re-read (%s): unchanged", self.source, reason)
            return None
        for warning in loaded.warnings:
            log.warning("configuration %s: %s", self.source, warning)
        self.current = loaded.state
        return loaded.state

    async def watch(self, apply: Callable[[DesiredState], Awaitable[object]]) -> None:
        """Poll forever; apply every new valid state. Runs as the named task `file-provider`."""
        if self._forced is None:
            self._forced = asyncio.Event()
        forced = self._forced
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(forced.wait(), self.poll_interval)
            was_forced = forced.is_set()
            forced.clear()
            if not was_forced and not self.changed():
                continue
            reason = "SIGHUP" if was_forced else "file changed"
            try:
                loaded = self.load()  # a few small files: milliseconds, so on the loop
            except Exception:  # a loader bug must not stop the watching
                log.exception("reading configuration %s failed", self.source)
                continue
            state = self.accept(loaded, reason)
            if state is not None:
                try:
                    await apply(state)
                except Exception:  # a bug in applying must not stop later reloads
                    log.exception("applying configuration %s failed; the previous one keeps serving",
                                  self.source)
                    self.current = None  # so the next read is applied again, not dropped as a duplicate


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
