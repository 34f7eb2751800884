"""An informer: a local cache of one kind of object, kept in step with the API server.

The client-go reflector's contract, done with one task per kind:
1. **list** (the whole set, and the list's resourceVersion), replacing the cache wholesale, so objects
   deleted while we were not watching disappear;
2. **watch from that resourceVersion**, applying ADDED/MODIFIED/DELETED to the cache and remembering the
   version of every event;
3. a stream that ends or breaks is **resumed from the last version seen** (no relist, no missed event);
4. **410 Gone** (the version was compacted away) means events were lost: relist at once;
5. **429 Too Many Requests**: wait the `Retry-After` the server asked for (capped at `max_retry_after`;
   the backoff when it named none) and try again; the cache keeps serving meanwhile;
6. any other error: **back off** (capped exponential with jitter, reset by the next success) and resume.
   While the API is unreachable the cache keeps the last known objects, so the proxy keeps serving them;
7. **bookmarks** only move the version, so a quiet watch resumed after the server compacted its history
   starts from a recent version instead of a compacted one (no 410, no relist).

`on_change()` is called after every change to the cache (the provider debounces). The sleep and the
random source are injected so tests can script them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

__all__ = ["Backoff", "Informer"]

log = logging.getLogger("steelyard.kube")

ObjectKey = tuple[str, str]  # (namespace, name)


class _Client(Protocol):
    async def list(self, kind: Any, namespace: str | None,
                   labels: Mapping[str, str | None] | None = None) -> tuple[list[dict[str, Any]], str]: ...

    def watch(self, kind: Any, namespace: str | None, resource_version: str,
              labels: Mapping[str, str | None] | None = None) -> Any: ...


class Backoff:
    """Capped exponential backoff with "equal jitter": attempt n waits between d/2 and d, d = min(cap,
    base * 2^(n-1)). Never zero, so a flapping server is not hammered; jittered, so replicas spread out."""

    def __init__(self, base: float = 0.2, cap: float = 5.0,
                 rand: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        ceiling = min(self.cap, self.base * 2 ** (self.attempt - 1))
        return float(ceiling / 2 + self.rand() * ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Informer:
    """The cache of one kind (in one namespace or all, optionally by labels); `run()` keeps it current."""

    def __init__(self, client: _Client, kind: Any, namespace: str | None, *,
                 labels: Mapping[str, str | None] | None = None, on_change: Callable[[], None] = lambda: None,
                 backoff: Backoff | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 idle_timeout: float = 300.0, max_retry_after: float = 30.0) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.labels = dict(labels) if labels else None
        self.on_change = on_change
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.idle_timeout = idle_timeout  # a silent stream this long is assumed dead and resumed
        self.max_retry_after = max_retry_after  # a 429's Retry-After is honoured up to this many seconds
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.resource_version: str | None = None  # None: the next round lists
        self.synced = asyncio.Event()  # set after the first successful list
        self.connected = False  # the last request reached the API server
        self.lists = 0  # how many times the whole set was listed (the first one included)
        self.errors = 0
        self.throttled = 0  # 429 answers

    def __repr__(self) -> str:
        return (f"<Informer {self.kind} ns={self.namespace or '*'} objects={len(self.objects)} "
                f"rv={self.resource_version} lists={self.lists} connected={self.connected}>")

    def items(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    async def run(self) -> None:
        """Forever: list, watch, resume, relist on 410, back off on errors. Runs as a named task."""
        from steelyard.kube.client import Gone, KubeError, KubeUnavailable, TooManyRequests

        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                await self._watch()
            except Gone as exc:
                log.info("%s: watch from resourceVersion %s: %s; relisting", self.kind, self.resource_version,
                         exc.message or "410 Gone")
                self.resource_version = None
            except TooManyRequests as exc:
                await self.sleep(self._throttled(exc.retry_after))
            except (KubeError, KubeUnavailable, TimeoutError) as exc:
                self._failed(exc)
                await self.sleep(self.backoff.next_delay())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or an unexpected answer: log it, back off, keep going
                log.exception("%s informer: unexpected error", self.kind)
                self._failed(exc)
                await self.sleep(self.backoff.next_delay())

    def _throttled(self, retry_after: float | None) -> float:
        """The wait after a 429: what the server asked for (capped), else the backoff's next delay."""
        self.throttled += 1
        self.connected = True  # it answered: not unreachable, just busy
        delay = self.backoff.next_delay() if retry_after is None else \
            max(0.1, min(retry_after, self.max_retry_after))  # never a tight loop on `Retry-After: 0`
        log.info("%s: the API server is throttling (429); retrying in %.1fs, serving the last known state",
                 self.kind, delay)
        return float(delay)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.connected or self.backoff.attempt == 0:
            log.warning("%s: the API server is not answering (%s); serving the last known state", self.kind,
                        exc)
        self.connected = False

    async def _list(self) -> None:
        items, version = await self.client.list(self.kind, self.namespace, self.labels)
        self.connected = True
        self.backoff.reset()
        self.lists += 1
        fresh = {object_key(obj): obj for obj in items}
        changed = fresh != self.objects
        self.objects = fresh
        self.resource_version = version
        log.debug("%s: listed %d object(s) at resourceVersion %s", self.kind, len(fresh), version)
        if not self.synced.is_set():
            self.synced.set()
            changed = True
        if changed:
            self.on_change()

    async def _watch(self) -> None:
        assert self.resource_version is not None
        stream = self.client.watch(self.kind, self.namespace, self.resource_version, self.labels)
        try:
            while True:
                try:
                    event_type, obj = await asyncio.wait_for(stream.__anext__(), self.idle_timeout)
                except StopAsyncIteration:
                    return
                except TimeoutError:  # quiet, or a half-open connection: resume from the version, no alarm
                    log.debug("%s: no event for %.0fs; resuming the watch", self.kind, self.idle_timeout)
                    return
                if not self.connected:
                    log.info("%s: the API server answers again; watching from resourceVersion %s",
                             self.kind, self.resource_version)
                self.connected = True
                self.backoff.reset()
                self._apply(event_type, obj)
        finally:
            await stream.aclose()

    def _apply(self, event_type: str, obj: dict[str, Any]) -> None:
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        key = object_key(obj)
        if event_type == "DELETED":
            if self.objects.pop(key, None) is None:
                return
        elif event_type in ("ADDED", "MODIFIED"):
            if self.objects.get(key) == obj:
                return
            self.objects[key] = obj
        else:  # BOOKMARK: only the version moves
            return
        self.on_change()
