"""`steelyard create service|policy`: write one resource into a folder scaffolded by `steelyard init`.

- `create service --name N --selector app=web --port 80 --target-port 8080 [--policy P]` writes a
  `LoadBalancer` that balances over the pods matching the selector (or `--service S`: its EndpointSlices).
- `create policy --name P --strategy WeightedRoundRobin [...]` writes a `BalancerPolicy`.

Each resource is checked by the config loader (the models, then references and listener conflicts with
the rest of the folder) before anything is written; bad input is refused with exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from steelyard.kube.scaffold_cmd import DEFAULT_DIR, InputError, check_name, fail, resource, write_resource
from steelyard.model import HASH_STRATEGIES, StrategyType

__all__ = ["add_arguments", "run"]

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
SERVICE_PORT = 8080  # the port deploy/service.yaml sends its port 80 to
_RETRY_ON = ("connect-failure", "reset", "502", "503", "504")

SERVICE_FLAGS = {
    "spec.ports[0].port": "--port", "spec.ports[0].targetPort": "--target-port",
    "spec.ports[0].protocol": "--protocol", "spec.hosts": "--host", "spec.pathPrefix": "--path-prefix",
    "spec.policyRef.name": "--policy", "metadata.name": "--name",
}
POLICY_FLAGS = {
    "spec.strategy.timeSlice": "--time-slice", "spec.strategy.choices": "--choices",
    "spec.strategy.hashOn": "--hash-header/--hash-cookie/--hash-source-ip", "spec.strategy": "--strategy",
    "spec.healthCheck.path": "--health-path", "spec.healthCheck.interval": "--health-interval",
    "spec.healthCheck.timeout": "--health-timeout", "spec.healthCheck": "--health-check",
    "spec.slowStart.window": "--slow-start", "spec.retries.attempts": "--retries",
    "spec.retries.on": "--retry-on", "spec.dynamicWeights.mode": "--dynamic-weights",
    "metadata.name": "--name",
}


def _strategy(text: str) -> StrategyType:
    for strategy in StrategyType:
        if strategy.value.lower() == text.lower():
            return strategy
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a strategy: one of {', '.join(s.value for s in StrategyType)}")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="the resource's name (a Kubernetes object name)")
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help=f"the folder made by `steelyard init` (default: {DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true", help="replace a resource of the same name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="what", metavar="KIND", required=True)

    service = kinds.add_parser("service", help="a LoadBalancer for pods or a Service",
                               description="Write a LoadBalancer resource.")
    _common(service)
    backends = service.add_mutually_exclusive_group(required=True)
    backends.add_argument("--selector", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                          help="balance over the pods with these labels (repeatable)")
    backends.add_argument("--service", metavar="NAME", help="balance over this Service's EndpointSlices")
    service.add_argument("--port", type=int, default=SERVICE_PORT,
                         help="the port Steelyard listens on (default 8080, where deploy/'s Service sends "
                              "port 80)")
    service.add_argument("--target-port", metavar="PORT",
                         help="the backends' port: a number or a container port name")
    service.add_argument("--protocol", choices=("HTTP", "TCP"), default="HTTP", type=str.upper)
    service.add_argument("--host", action="append", default=[],
                         help="route only requests for this host (repeatable; default: any host)")
    service.add_argument("--path-prefix", default=None, help="route only paths under this prefix")
    service.add_argument("--policy", default=None, help="the BalancerPolicy to use (its name)")

    policy = kinds.add_parser("policy", help="a BalancerPolicy",
                              description="Write a BalancerPolicy resource.")
    _common(policy)
    policy.add_argument("--strategy", type=_strategy, default=StrategyType.ROUND_ROBIN,
                        help=f"one of {', '.join(s.value for s in StrategyType)} (default RoundRobin)")
    policy.add_argument("--time-slice", metavar="DURATION", help="TimeSlicedRoundRobin: each backend's slice")
    policy.add_argument("--choices", type=int, help="PowerOfTwoChoices: how many endpoints to compare")
    hashing = policy.add_mutually_exclusive_group()
    hashing.add_argument("--hash-header", metavar="NAME", help="RingHash/Maglev: hash this request header")
    hashing.add_argument("--hash-cookie", metavar="NAME", help="RingHash/Maglev: hash this cookie")
    hashing.add_argument("--hash-source-ip", action="store_true",
                         help="RingHash/Maglev: hash the client address")
    policy.add_argument("--health-check", choices=("HTTP", "TCP", "None"), default=None,
                        help="active health check (default: HTTP when --health-path is given, else none)")
    policy.add_argument("--health-path", metavar="PATH", help="HTTP health check path, e.g. /healthz")
    policy.add_argument("--health-interval", metavar="DURATION")
    policy.add_argument("--health-timeout", metavar="DURATION")
    policy.add_argument("--slow-start", metavar="DURATION",
                        help="ramp a new endpoint's weight up over this window")
    policy.add_argument("--dynamic-weights", choices=("Off", "Latency", "Header"), default=None)
    policy.add_argument("--retries", type=int, metavar="N", help="retry attempts (0-10)")
    policy.add_argument("--retry-on", metavar="WHAT[,WHAT]",
                        help=f"what to retry: {', '.join(_RETRY_ON)}")


def _selector(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in (p.strip() for value in values for p in value.split(",")):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise InputError(f"--selector {part!r} is not KEY=VALUE (e.g. app=web)")
        if len(key) > 316 or not _LABEL_KEY.match(key):
            raise InputError(f"--selector {part!r}: {key!r} is not a label key")
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise InputError(f"--selector {part!r}: {value!r} is not a label value (letters, digits, "
                             "'-', '_', '.', at most 63)")
        labels[key] = value
    return labels


def _target_port(text: str | None) -> int | str | None:
    if text is None:
        return None
    if not text.strip().isdigit():
        return text  # a container port name; the model checks the rest
    if not 1 <= int(text) <= 65535:
        raise InputError(f"--target-port {text} is not a port number from 1 to 65535")
    return int(text)


def service_resource(args: argparse.Namespace) -> dict[str, Any]:
    name = check_name(args.name)
    port: dict[str, Any] = {"name": "http" if args.protocol == "HTTP" else "tcp", "port": args.port,
                            "protocol": args.protocol}
    target = _target_port(args.target_port)
    if target is not None:
        port["targetPort"] = target
    spec: dict[str, Any] = {"ports": [port]}
    if args.host:
        spec["hosts"] = list(args.host)
    if args.path_prefix is not None:
        spec["pathPrefix"] = args.path_prefix
    if args.service is not None:
        spec["service"] = {"name": check_name(args.service, "--service")}
    else:
        spec["selector"] = {"matchLabels": _selector(args.selector)}
    if args.policy is not None:
        spec["policyRef"] = {"name": check_name(args.policy, "--policy")}
    return resource("LoadBalancer", name, spec)


def policy_resource(args: argparse.Namespace) -> dict[str, Any]:
    name = check_name(args.name)
    strategy_type: StrategyType = args.strategy
    strategy: dict[str, Any] = {"type": strategy_type.value}
    if args.time_slice is not None:
        if strategy_type != StrategyType.TIME_SLICED_ROUND_ROBIN:
            raise InputError("--time-slice goes with --strategy TimeSlicedRoundRobin")
        strategy["timeSlice"] = args.time_slice
    if args.choices is not None:
        if strategy_type != StrategyType.POWER_OF_TWO_CHOICES:
            raise InputError("--choices goes with --strategy PowerOfTwoChoices")
        strategy["choices"] = args.choices
    hash_on = ({"header": args.hash_header} if args.hash_header else {"cookie": args.hash_cookie}
               if args.hash_cookie else {"sourceIP": {}} if args.hash_source_ip else None)
    if hash_on is not None and strategy_type not in HASH_STRATEGIES:
        raise InputError("--hash-header, --hash-cookie and --hash-source-ip go with --strategy RingHash "
                         "or Maglev")
    if hash_on is None and strategy_type in HASH_STRATEGIES:
        raise InputError(f"--strategy {strategy_type.value} needs what to hash: --hash-header NAME, "
                         "--hash-cookie NAME or --hash-source-ip")
    if hash_on is not None:
        strategy["hashOn"] = hash_on
    spec: dict[str, Any] = {"strategy": strategy}

    check_type = args.health_check or ("HTTP" if args.health_path else None)
    if check_type is None and (args.health_interval or args.health_timeout):
        raise InputError("--health-interval and --health-timeout need --health-check or --health-path")
    if args.health_path and check_type != "HTTP":
        raise InputError("--health-path goes with an HTTP health check")
    if check_type is not None:
        health: dict[str, Any] = {"type": check_type}
        for key, value in (("path", args.health_path), ("interval", args.health_interval),
                           ("timeout", args.health_timeout)):
            if value is not None:
                health[key] = value
        spec["healthCheck"] = health
    if args.slow_start is not None:
        spec["slowStart"] = {"window": args.slow_start}
    if args.dynamic_weights is not None:
        spec["dynamicWeights"] = {"mode": args.dynamic_weights}
    retries: dict[str, Any] = {}
    if args.retries is not None:
        retries["attempts"] = args.retries
    if args.retry_on is not None:
        retries["on"] = [w.strip() for w in args.retry_on.split(",") if w.strip()]
    if retries:
        spec["retries"] = retries
    return resource("BalancerPolicy", name, spec)


def run(args: argparse.Namespace) -> int:
    command = f"create {args.what}"
    folder = Path(args.dir)
    try:
        if args.what == "service":
            doc, flags = service_resource(args), SERVICE_FLAGS
            comment = f"LoadBalancer {args.name}, written by `steelyard create service`."
        else:
            doc, flags = policy_resource(args), POLICY_FLAGS
            comment = f"BalancerPolicy {args.name}, written by `steelyard create policy`."
        path, warnings = write_resource(folder, doc, comment, flags, args.force)
    except InputError as exc:
        return fail(command, exc)
    except OSError as exc:
        return fail(command, InputError(f"{exc.filename}: {exc.strerror}"))
    if args.what == "service" and args.port != SERVICE_PORT:
        warnings.append(f"deploy/'s Service forwards port 80 to Steelyard's port {SERVICE_PORT}; to reach "
                        f"port {args.port} from outside the cluster, add it to that Service")
    for warning in warnings:
        print(f"steelyard {command}: warning: {warning}", file=sys.stderr)
    print(f"wrote {path}")
    return 0
