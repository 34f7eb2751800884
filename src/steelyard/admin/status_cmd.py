"""`steelyard status`: load balancers and endpoints of a running Steelyard, read from its admin API.

One table per load balancer port: each endpoint's health, weight (effective/configured), in-flight
requests, requests per second, p50/p99 latency, requests and ejections. `--watch` redraws it every
`--interval` seconds until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from steelyard.admin.server import DEFAULT_ADMIN, TOKEN_ENV, AdminSetupError, parse_address

HEALTH_STYLE = {"healthy": "green", "unhealthy": "red", "ejected": "red", "draining": "yellow",
                "slow-start": "cyan", "terminating": "yellow"}


class StatusError(Exception):
    """Shown to the person as one line, exit status 1."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", default=os.environ.get("STEELYARD_ADMIN", DEFAULT_ADMIN), metavar="ADDR",
                        help=f"the admin API's HOST:PORT (default {DEFAULT_ADMIN}, or $STEELYARD_ADMIN)")
    parser.add_argument("--admin-token", default=os.environ.get(TOKEN_ENV), metavar="TOKEN",
                        help=f"bearer token when the admin API needs one (default ${TOKEN_ENV})")
    parser.add_argument("--watch", action="store_true", help="keep refreshing until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="refresh interval with --watch (default 2)")


def fetch_state(admin: str, token: str | None, timeout: float = 5.0) -> dict[str, Any]:
    try:
        host, port = parse_address(admin.removeprefix("http://").rstrip("/"))  # also the URL the log prints
    except AdminSetupError as exc:
        raise StatusError(str(exc)) from None
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/api/v1/state"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusError(f"the admin API at {admin} needs a token: --admin-token or "
                              f"${TOKEN_ENV}") from None
        raise StatusError(f"the admin API at {admin} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach the admin API at {admin}: {reason} "
                          f"(is `steelyard run --admin {admin}` running?)") from None
    except ValueError:
        raise StatusError(f"the admin API at {admin} sent something that is not JSON") from None


def _num(value: object, digits: int = 1) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def render(state: dict[str, Any]) -> Group:
    c = state.get("counters", {})
    ready = Text("ready", style="bold green") if state.get("ready") else Text(
        f"not ready: {state.get('not_ready_reason')}", style="bold red")
    refused = c.get("connections_refused", 0)
    header = Text.assemble("Steelyard  ", ready,
                           f"  config: {state.get('config', {}).get('source') or '-'}"
                           f"  requests: {c.get('requests', 0)}  retries: {c.get('retries', 0)}"
                           f"  connect errors: {c.get('upstream_connect_errors', 0)}"
                           + (f"  refused connections: {refused}" if refused else ""))
    parts: list[Any] = [header]
    for lb in state.get("load_balancers", []):
        for up in lb["upstreams"]:
            # (names come from configuration, verbatim: Text, never rich markup, whose [..] they may hold)
            table = Table(title=Text(f"{lb['name']} · {up['port']} ({up['protocol']}) · {up['strategy']} · "
                                     f"{_num(up.get('requests_per_second'))} req/s"),
                          title_justify="left", expand=False, box=box.SIMPLE_HEAD)
            table.add_column("endpoint", no_wrap=True)
            table.add_column("health", no_wrap=True)
            for col in ("weight", "in-flight", "req/s", "p50 ms", "p99 ms", "requests", "ejections"):
                table.add_column(col, justify="right")
            for ep in up["endpoints"]:
                name = ep["id"] if ep["name"] in ("", ep["id"]) else f"{ep['name']} ({ep['id']})"
                weight = f"{ep['effective_weight']:g}/{ep['configured_weight']}"
                if ep.get("override_weight") is not None:
                    weight += f" (set {ep['override_weight']})"
                health = Text(ep["health"], style=HEALTH_STYLE.get(ep["health"], ""))
                table.add_row(Text(name), health, weight,
                              str(ep["in_flight"]), _num(ep.get("requests_per_second")),
                              _num(ep.get("p50_ms"), 2), _num(ep.get("p99_ms"), 2), str(ep["requests"]),
                              str(ep["ejections"]))
            parts.append(table)
    if not state.get("load_balancers"):
        parts.append(Text("no load balancers configured", style="yellow"))
    reloads = state.get("reloads", [])[:3]
    for r in reloads:
        when = time.strftime("%H:%M:%S", time.localtime(r["at"]))
        result = Text("ok", style="green") if r["ok"] else Text("failed", style="red")
        detail = "; ".join([r.get("message") or "", *r.get("errors", [])]).strip("; ")
        parts.append(Text.assemble(f"reload {when} ", result, f" {r['source']} {detail}"))
    return Group(*parts)


# Piped output (a log, `| less`) has no width to fit: rich would assume 80 columns and cut the headers.
PIPED_WIDTH = 160


def run(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPED_WIDTH)
    try:
        if not args.watch:
            console.print(render(fetch_state(args.admin, args.admin_token)))
            return 0
        if args.interval <= 0:
            raise StatusError("--interval must be more than 0 seconds")
        if not console.is_terminal:  # piped: one table after the other, nothing redrawn in place
            while True:
                console.print(render(fetch_state(args.admin, args.admin_token)))
                console.file.flush()
                time.sleep(args.interval)
        with Live(render(fetch_state(args.admin, args.admin_token)), console=console,
                  auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(render(fetch_state(args.admin, args.admin_token)), refresh=True)
    except StatusError as exc:
        console.print(f"[red]steelyard status:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 0
