"""The admin server: health probes, Prometheus metrics, the JSON API, the live dashboard.

It runs as an aiohttp.web `AppRunner` + `TCPSite` on the proxy's own event loop (aiohttp, unlike uvicorn,
leaves the process's signal handlers alone), so reading the proxy's counters needs no locks and no copies
across threads. One named, guarded task samples the counters once a second (`stats.Sampler`) and wakes
the dashboards' event streams.

Security: bound to loopback (the default, 127.0.0.1:9901) it needs no credentials. Bound to anything
else it refuses to start without a bearer token (`--admin-token` or STEELYARD_ADMIN_TOKEN), and then every
path but the probes and the dashboard's static files requires `Authorization: Bearer TOKEN`
(RFC 6750 §2.1). The dashboard page asks for the token and keeps it in the browser's session storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from steelyard.admin.api import StateBuilder, add_routes, error
from steelyard.admin.metrics import FrozenReadings, render_metrics
from steelyard.admin.source import AdminSource
from steelyard.admin.stats import Sampler

__all__ = ["DEFAULT_ADMIN", "AdminServer", "AdminSetupError", "is_loopback", "parse_address"]

log = logging.getLogger("steelyard.admin")

DEFAULT_ADMIN = "127.0.0.1:9901"
TOKEN_ENV = "STEELYARD_ADMIN_TOKEN"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
STATIC_FILES = {"app.js": "application/javascript", "style.css": "text/css", "index.html": "text/html"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminSetupError(ValueError):
    """A bad --admin address or a missing token: shown to the person as is, never as a traceback."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (loopback) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AdminSetupError(f"admin address {text!r} is not HOST:PORT (e.g. {DEFAULT_ADMIN})")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminServer:
    """Start with `await start()`, stop with `await stop()`; `port` is the bound port (tests bind 0)."""

    def __init__(self, source: AdminSource, host: str = "127.0.0.1", port: int = 9901, *,
                 token: str | None = None, tick: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.check_exposure(host, port, token)
        self.source = source
        self.host = host
        self.port = port
        self.token = token or None
        self.tick = tick
        self.sampler = Sampler(clock)
        self.builder = StateBuilder(source, self.sampler, wall_clock)
        self.runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._tick_event = asyncio.Event()
        self._state_json = b""  # built per tick only while some dashboard is watching
        self._watchers = 0
        self._closing = False

    @staticmethod
    def check_exposure(host: str, port: int, token: str | None) -> None:
        """Anything but loopback needs a token: the API can drain every endpoint."""
        if not token and not is_loopback(host):
            raise AdminSetupError(
                f"the admin API on {host}:{port} is reachable from other hosts: give it a bearer token "
                f"with --admin-token or {TOKEN_ENV}, or bind it to 127.0.0.1")

    # -- lifecycle --------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth, self._api_errors])
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        r.add_get("/metrics", self._metrics)
        r.add_get("/api/v1/events", self._events)
        r.add_get("/", self._index)
        r.add_get("/static/{name}", self._static)
        add_routes(app, self.builder)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise AdminSetupError(f"cannot listen on {self.host}:{self.port} for the admin API: "
                                  f"{exc.strerror or exc}") from None
        self.port = self.runner.addresses[0][1]  # the bound port when 0 was asked for
        await self._poll()
        self._sample()
        self._task = asyncio.get_running_loop().create_task(self._sampling(), name="admin-sampler")
        self._task.add_done_callback(_log_death)
        if is_loopback(self.host):
            auth = "loopback only" + ("; bearer token required" if self.token else "")
        else:
            auth = "reachable from other hosts; bearer token required"
        log.info("admin API and dashboard on http://%s:%d/ (%s)", self._display_host(), self.port, auth)

    def _display_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def stop(self) -> None:
        self._closing = True
        self._tick_event.set()  # event streams see _closing and end
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self._display_host()}:{self.port}"

    # -- sampling -----------------------------------------------------------------------------------------

    def _sample(self) -> None:
        self.sampler.take(self.source.upstreams())
        self._state_json = self._state_document() if self._watchers else b""
        event, self._tick_event = self._tick_event, asyncio.Event()
        event.set()

    async def _poll(self) -> None:
        """Sources that read remotely (the --workers aggregate) refresh here, once per tick."""
        poll = getattr(self.source, "poll", None)
        if poll is not None:
            await poll()

    def _state_document(self) -> bytes:
        return json.dumps(self.builder.state(), default=str).encode()

    async def _sampling(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self._poll()
                self._sample()
            except Exception:  # a bug in one read must not stop the dashboard for good
                log.exception("admin sampling failed")

    # -- middleware and plain handlers ------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is None or request.path in OPEN_PATHS or request.path.startswith("/static/"):
            return await handler(request)
        given = request.headers.get("Authorization", "")
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(),
                                                                  self.token.encode()):
            resp = error(401, "this admin API needs Authorization: Bearer TOKEN")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="steelyard"'
            return resp
        return await handler(request)

    @web.middleware
    async def _api_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """No route or the wrong method under /api/: a JSON error like the API's others, not aiohttp's
        plain-text page (the dashboard and scripts read every /api/ answer as JSON)."""
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            if not request.path.startswith("/api/"):
                raise
            resp = error(exc.status, f"{request.method} {request.path}: "
                                     + ("no such route" if exc.status == 404 else "method not allowed"))
            if isinstance(exc, web.HTTPMethodNotAllowed):
                resp.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            return resp

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, why = self.source.readiness()
        if ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        readings = FrozenReadings(self.source)  # on the loop: the proxy's state is read in one go
        body = await asyncio.get_running_loop().run_in_executor(None, render_metrics, readings)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events (HTML Living Standard §9.2): the whole state once a second."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self._watchers += 1
        try:
            if not self._state_json:
                self._state_json = self._state_document()
            while not self._closing:
                await resp.write(b"event: state\ndata: " + self._state_json + b"\n\n")
                await self._tick_event.wait()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers -= 1
        return resp

    async def _index(self, _: web.Request) -> web.Response:
        return self._file("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        data = resources.files("steelyard.admin").joinpath("static", name).read_bytes()
        return web.Response(body=data, content_type=STATIC_FILES[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s died", task.get_name(), exc_info=task.exception())
