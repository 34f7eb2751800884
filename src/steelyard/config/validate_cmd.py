"""`steelyard validate FILE...`: print every configuration error (exit 1) or a one-line summary (exit 0).

A folder made by `steelyard init` (or any kustomize folder) can be given as is: its kustomization's
`resources` are validated, not the kustomization itself, which is kubectl's file, not ours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from steelyard.config.loader import load_files
from steelyard.model import BalancerPolicy, LoadBalancer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML files with LoadBalancer and "
                        "BalancerPolicy resources (several documents per file allowed), or folders: a "
                        "kustomization's resources, else every *.yaml in it")


KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def expand(paths: list[str]) -> list[str]:
    """Files to validate: folders and kustomization files become the resource files they name."""
    out: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            kustomization = next((path / n for n in KUSTOMIZATION_NAMES if (path / n).is_file()), None)
            if kustomization is None:
                out += sorted(str(p) for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
                continue
            path = kustomization
        if path.name in KUSTOMIZATION_NAMES and path.is_file():
            out += expand([str(path.parent / r) for r in _resources(path)])
        else:
            out.append(raw)
    return out


def _resources(kustomization: Path) -> list[str]:
    """The `resources` a kustomization names; nothing when it cannot be read (kubectl will say why)."""
    try:
        document = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    resources = document.get("resources") if isinstance(document, dict) else None
    if not isinstance(resources, list):
        return []
    return [r for r in resources if isinstance(r, str) and "://" not in r]  # remote bases: kubectl's


def run(args: argparse.Namespace) -> int:
    files = expand(list(args.files))
    if not files:
        print(f"no resource files in {', '.join(args.files)}", file=sys.stderr)
        return 1
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
