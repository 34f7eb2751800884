"""`steelyard run`: serve the configuration in `-c FILE...` (default: the embedded demo configuration).

One process, one uvloop event loop (uvicorn's shape: a plain `RunOptions` apart from the code that runs
it). With `--workers N` a supervisor starts N such processes, each binding every listener with
SO_REUSEPORT (see `steelyard.runtime.workers`).

Signals: SIGTERM/SIGINT drain and exit 0 (stop accepting, in-flight requests finish up to
`--drain-timeout`, idle connections close); SIGHUP re-reads the configuration files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from steelyard.admin.wiring import add_arguments as admin_arguments
from steelyard.admin.wiring import check_options as check_admin_options
from steelyard.config.desired import DesiredState
from steelyard.runtime.apply import REFRESH_INTERVAL, ApplyReport, HealthCheckerLike, Runtime
from steelyard.runtime.file_provider import FileProvider, Loaded
from steelyard.runtime.tasks import TaskGroup

__all__ = ["RunOptions", "add_arguments", "run"]

log = logging.getLogger("steelyard")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `steelyard run` was asked to do, checked; no I/O."""

    configs: tuple[str, ...]
    workers: int = 1
    admin: str | None = None
    drain_timeout: float = 30.0
    shutdown_delay: float = 0.0  # after SIGTERM: not ready, but still accepting, for this long
    log_format: str = "text"
    log_level: str = "INFO"
    poll_interval: float = 1.0
    admin_token: str | None = None
    access_log: float = 0.0  # fraction of requests logged
    worker_id: int | None = None  # set in a worker process started by the supervisor
    ready_fd: int | None = None  # the worker writes one byte here once it serves
    kubernetes: Any = None  # steelyard.kube.provider.KubeOptions with --kubernetes: the cluster, not files
    max_connections: int | None = None  # per process; None: from the file-descriptor limit (auto)
    fallback_configs: tuple[str, ...] = ()  # a restarted worker: the supervisor's last good copies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", metavar="FILE", default=None,
                        help="configuration file (repeatable; default: the embedded demo configuration)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes sharing each listener with SO_REUSEPORT (default 1)")
    parser.add_argument("--admin", metavar="ADDR", default=None,
                        help="admin API, metrics and dashboard address, or 'off' (default 127.0.0.1:9901, "
                             "skipped with a warning when taken)")
    admin_arguments(parser)
    parser.add_argument("--drain-timeout", default="30s", metavar="DURATION",
                        help="on SIGTERM, how long in-flight requests may take to finish (default 30s)")
    parser.add_argument("--shutdown-delay", default="0s", metavar="DURATION",
                        help="on SIGTERM, first report not ready but keep accepting for this long, so load "
                             "balancers and endpoint lists stop sending here before the listeners close "
                             "(Kubernetes: a few seconds instead of a preStop sleep; default 0s)")
    parser.add_argument("--max-connections", default="auto", metavar="N",
                        help="open client connections per process past which a new one is closed at once "
                             "and counted (steelyard_connections_refused); 0: no limit; default auto: half "
                             "the file-descriptor limit, which is raised to its hard limit at start")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"), type=str.lower)
    parser.add_argument("--poll-interval", default="1s", metavar="DURATION",
                        help="how often the configuration files are checked for changes (default 1s)")
    kube = parser.add_argument_group("Kubernetes (--kubernetes: LoadBalancer/BalancerPolicy resources)")
    kube.add_argument("--kubernetes", action="store_true",
                      help="take the configuration from the Kubernetes API instead of -c files")
    kube.add_argument("--server", metavar="URL", default=None,
                      help="API server URL (default: in-cluster service account, else --kubeconfig)")
    kube.add_argument("--kubeconfig", metavar="FILE", default=None,
                      help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    kube.add_argument("--namespace", metavar="NS", default=None,
                      help="watch only this namespace (default: every namespace)")
    kube.add_argument("--lease-name", default="steelyard", metavar="NAME",
                      help="the coordination.k8s.io Lease for leader election (default steelyard)")
    kube.add_argument("--lease-duration", default="15s", metavar="DURATION", help=argparse.SUPPRESS)
    parser.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fallback-config", action="append", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)


def default_configs() -> tuple[str, ...]:
    """The embedded default configuration (the demo's), used when no `-c` is given."""
    try:
        from steelyard.config import default_config_path  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        raise ValueError("no -c FILE given and this build has no embedded default configuration") from exc
    return (str(default_config_path()),)


def options_from(args: argparse.Namespace) -> RunOptions:
    """Check the arguments; raises ValueError with a message for the person."""
    from steelyard.model.durations import parse_duration

    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {args.workers}")
    drain = parse_duration(args.drain_timeout)
    shutdown_delay = parse_duration(args.shutdown_delay)
    poll = parse_duration(args.poll_interval)
    if poll <= 0:
        raise ValueError("--poll-interval must be more than 0")
    kubernetes = _kube_options(args) if getattr(args, "kubernetes", False) else None
    if kubernetes is not None and args.config:
        raise ValueError("--kubernetes takes the configuration from the cluster: give no -c FILE")
    if kubernetes is not None and args.workers > 1:
        raise ValueError("--kubernetes runs one process per pod (scale with replicas, not --workers)")
    configs = () if kubernetes is not None else \
        tuple(os.path.abspath(p) for p in args.config) if args.config else default_configs()
    admin_token = check_admin_options(args.admin, args.admin_token)
    return RunOptions(configs=configs, workers=args.workers, admin=args.admin, admin_token=admin_token,
                      kubernetes=kubernetes, max_connections=parse_max_connections(args.max_connections),
                      fallback_configs=tuple(args.fallback_config or ()),
                      access_log=args.access_log, drain_timeout=drain, shutdown_delay=shutdown_delay,
                      log_format=args.log_format, log_level=args.log_level.upper(), poll_interval=poll,
                      worker_id=args.worker_id, ready_fd=args.ready_fd)


def parse_max_connections(value: str) -> int | None:
    """`--max-connections`: a count, 0 for no limit, or `auto` (None: sized at start, see
    `auto_max_connections`)."""
    if value.strip().lower() == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--max-connections must be a number of connections, 0 or 'auto', not {value!r}") \
            from None
    if count < 0:
        raise ValueError(f"--max-connections must be 0 (no limit) or more, not {count}")
    return count


FD_RESERVE = 64  # descriptors kept for listeners, the admin API, health probes, logs and files


def auto_max_connections(fd_limit: int) -> int:
    """Half the descriptors left after `FD_RESERVE`: a client connection can hold two, its own and the
    pooled upstream one its request uses (HAProxy sizes its maxconn from `ulimit -n` the same way). Past
    it, libuv would accept and drop connections anyway and upstream connects would fail with EMFILE."""
    return max(1, (fd_limit - FD_RESERVE) // 2)


def raise_fd_limit(ceiling: int = 1 << 20) -> int:
    """Raise the soft file-descriptor limit to the hard one (at most `ceiling`), as Go's runtime does at
    start: the usual soft 1024 is far below what a proxy holds. Returns the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("could not raise the file-descriptor limit from %d to %d: %s", soft, target, exc)
    return ceiling if soft == resource.RLIM_INFINITY else soft


def _kube_options(args: argparse.Namespace) -> Any:
    """Identity from POD_NAME (the Deployment sets it from the downward API), else host name and pid."""
    import socket

    from steelyard.kube.provider import KubeOptions
    from steelyard.model.durations import parse_duration

    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    lease_namespace = os.environ.get("POD_NAMESPACE") or args.namespace or "default"
    return KubeOptions(server=args.server, kubeconfig=args.kubeconfig, namespace=args.namespace,
                       token=os.environ.get("STEELYARD_KUBE_TOKEN"), lease_name=args.lease_name,
                       lease_namespace=lease_namespace, identity=identity,
                       lease_duration=parse_duration(args.lease_duration))


def _setup_logging(options: RunOptions) -> None:
    try:
        from steelyard.runtime.logs import setup_logging
    except ImportError:  # pragma: no cover - the observability module is optional
        logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    setup_logging(options.log_format, options.log_level)
    if options.worker_id is not None:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_WorkerTag(options.worker_id))


class _WorkerTag(logging.Filter):
    """Prefix a worker's log lines with `[worker N]`: N processes log the same reloads and requests."""

    def __init__(self, worker_id: int) -> None:
        super().__init__()
        self.prefix = f"[worker {worker_id}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


def print_errors(source: str, loaded: Loaded) -> None:
    print(f"steelyard: configuration {source} is invalid ({len(loaded.errors)} error(s)):", file=sys.stderr)
    for error in loaded.errors:
        print(f"  {error}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"steelyard run: {exc}", file=sys.stderr)
        return 2
    _setup_logging(options)
    # Until the loop's handler takes over (after the first apply), a SIGHUP would kill the process by the
    # default action; dropping it loses nothing: start-up reads the files, and the poll sees later changes.
    signal.signal(signal.SIGHUP, lambda _sig, _frame: None)
    if options.workers > 1 and options.worker_id is None:
        from steelyard.runtime.workers import supervise

        return supervise(options)
    import uvloop

    return uvloop.run(serve(options))


def _describe_state(state: DesiredState) -> str:
    lbs = {u.load_balancer for u in state.upstreams.values()}
    endpoints = sum(len(u.endpoints) for u in state.upstreams.values())
    return f"{len(lbs)} load balancer(s), {len(state.upstreams)} upstream(s), {endpoints} endpoint(s)"


def _who(options: RunOptions) -> str:
    """`steelyard` for a single process; a worker's lines already carry `[worker N]`."""
    return "steelyard" if options.worker_id is None else "worker"

T = TypeVar("T")


async def _until_stopped(start: Coroutine[Any, Any, T]) -> T | None:
    """Await a start-up step (the Kubernetes provider waits for a reachable API) that SIGTERM/SIGINT
    may cut short: then None, and the process exits cleanly instead of dying by the signal."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(start)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
            return None
        raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve(options: RunOptions) -> int:
    """Run one process until SIGTERM/SIGINT; 0 after a clean drain, 1 when start-up fails."""
    if options.worker_id is not None:
        from steelyard.runtime.workers import die_with_parent

        die_with_parent()
    provider: Any
    if options.kubernetes is not None:
        from steelyard.kube.provider import start_provider  # the one runtime -> kube edge (pyproject)

        provider = await _until_stopped(start_provider(options.kubernetes))  # the first full list
        if provider is None:
            log.info("stopped before the first configuration arrived (pid %d)", os.getpid())
            return 0
        loaded = Loaded(provider.current, ())
    else:
        provider = FileProvider(options.configs, poll_interval=options.poll_interval)
        loaded = provider.load()
        if loaded.state is None and options.fallback_configs:
            # A worker restarted while the files hold an invalid change: its siblings serve the last good
            # configuration, so does it (the supervisor's copy); it watches the real files like them.
            fallback = FileProvider(options.fallback_configs).load()
            if fallback.state is not None:
                log.error("configuration %s is invalid; starting from the last good one. %d error(s):\n%s",
                          provider.source, len(loaded.errors), "\n".join(f"  {e}" for e in loaded.errors))
                loaded = fallback
    if loaded.state is None:
        print_errors(provider.source, loaded)
        return 1
    provider.current = loaded.state
    state = loaded.state

    from steelyard.proxy import ProxyConfig, ProxyServer, UpstreamRegistry

    registry = UpstreamRegistry()
    fd_limit = raise_fd_limit()
    max_connections = options.max_connections
    if max_connections is None:
        max_connections = auto_max_connections(fd_limit)
    proxy = ProxyServer(ProxyConfig(max_connections=max_connections))
    health = _health_checker(registry)
    runtime = Runtime(proxy, registry, health=health)
    if hasattr(provider, "attach_registry"):
        provider.attach_registry(registry)  # Kubernetes: ejected endpoints go into LoadBalancer.status
    from steelyard.admin.server import AdminSetupError
    from steelyard.admin.wiring import start_admin

    try:
        admin = await start_admin(options, proxy, runtime, provider)
    except AdminSetupError as exc:
        print(f"steelyard: {exc}", file=sys.stderr)
        return 1
    try:
        report = await runtime.apply(state)
    except Exception as exc:  # a bug, not a configuration error: say so in one line, details in the log
        log.debug("applying the configuration failed", exc_info=True)
        print(f"steelyard: cannot apply configuration {provider.source}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        await runtime.close_health()
        return 1
    if report.failed:
        for _, reason in report.failed:
            print(f"steelyard: {reason}", file=sys.stderr)
        runtime.stop_accepting()
        await runtime.close_health()
        if admin is not None:
            await admin.stop()
        return 1

    tasks = TaskGroup()
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal cuts the shutdown delay short
    loop = asyncio.get_running_loop()

    def on_stop(signame: str) -> None:
        if stop.is_set():
            log.info("%s again: already draining", signame)
            hurry.set()
        else:
            log.info("%s: stopping", signame)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, provider.request_reload)

    async def apply_change(new_state: DesiredState) -> ApplyReport:
        result = await runtime.apply(new_state)
        level = logging.ERROR if result.failed else logging.INFO
        log.log(level, "configuration reloaded from %s: %s", provider.source, result.summary())
        return result

    tasks.spawn(provider.watch(apply_change), f"{provider.source if options.kubernetes else 'file'}-provider")
    tasks.spawn(runtime.refresh_forever(REFRESH_INTERVAL), "refresh-upstreams")
    listening = ", ".join(f"{x.protocol.value.lower()}://{x.address}:{x.port}" for x in report.bound)
    log.info("%s ready: pid %d; listening on %s; %s; source %s; %s%s", _who(options), os.getpid(),
             listening or "nothing",
             _describe_state(state), provider.source,
             f"up to {max_connections} client connections" if max_connections else "no connection limit",
             f"; admin {admin.url}/" if admin is not None else "; no admin API")
    if options.ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(options.ready_fd, b"r" + (str(admin.port).encode() if admin is not None else b""))
            os.close(options.ready_fd)

    await stop.wait()
    if options.shutdown_delay > 0 and not hurry.is_set():
        runtime.stopping = True  # /readyz says so; new connections are still served
        log.info("not ready; still accepting for %.1fs (--shutdown-delay) before draining",
                 options.shutdown_delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), options.shutdown_delay)
    runtime.stop_accepting()
    in_flight = proxy.in_flight()
    log.info("draining: %d in-flight request(s)/tunnel(s), up to %.1fs", in_flight, options.drain_timeout)
    await tasks.cancel_all()
    if hasattr(provider, "close"):
        await provider.close()  # Kubernetes: hand the Lease over at once
    await proxy.shutdown(options.drain_timeout)
    await runtime.close_health()
    if admin is not None:
        await admin.stop()
    log.info("stopped (pid %d)", os.getpid())
    ignore_stop_signals(loop)
    return 0


def ignore_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """After a clean drain, a late SIGTERM/SIGINT (Ctrl-C reaches the whole process group, and the
    supervisor forwards one too) must not turn exit 0 into death by signal once the loop is gone."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def _health_checker(registry: object) -> HealthCheckerLike | None:
    """The active health checker, wired to `UpstreamRuntime.on_health_check` (None until it exists).

    Its callback reports `(upstream_key, endpoint_id, healthy)`, or `(endpoint_id, healthy)`; the latter
    goes to every upstream that has the endpoint (the same address checked once serves them all)."""
    try:
        from steelyard.runtime.health_checks import HealthChecker
    except ImportError:
        return None

    def on_result(*args: object) -> None:
        runtimes = registry.runtimes  # type: ignore[attr-defined]
        if len(args) == 3:
            upstream_key, endpoint_id, healthy = args
            targets = [runtimes.get(upstream_key)]
        else:
            endpoint_id, healthy = args
            targets = [rt for rt in runtimes.values() if rt.tracker.endpoint(endpoint_id) is not None]
        for runtime in targets:
            if runtime is not None:
                runtime.on_health_check(endpoint_id, bool(healthy))

    return HealthChecker(on_result)  # type: ignore[no-any-return]
