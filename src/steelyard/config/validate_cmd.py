"""`steelyard validate FILE...`: print every configuration error (exit 1) or a one-line summary (exit 0)."""

from __future__ import annotations

import argparse
import sys

from steelyard.config.loader import load_files
from steelyard.model import BalancerPolicy, LoadBalancer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML files with LoadBalancer and "
                        "BalancerPolicy resources (several documents per file allowed)")


def run(args: argparse.Namespace) -> int:
    files: list[str] = list(args.files)
    result = load_files(files)
    if result.errors or result.state is None:
        for error in result.errors:
            print(error, file=sys.stderr)
        count = len(result.errors)
        print(f"{count} error{'s' if count != 1 else ''} in {', '.join(files)}", file=sys.stderr)
        return 1
    balancers = sum(isinstance(r, LoadBalancer) for r in result.resources)
    policies = sum(isinstance(r, BalancerPolicy) for r in result.resources)
    listeners = len(result.state.listeners)

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    print(f"ok: {plural(balancers, 'load balancer')}, {policies} polic{'y' if policies == 1 else 'ies'}, "
          f"{plural(listeners, 'listener')} in {', '.join(files)}")
    return 0
