"""The `steelyard` command. Each subcommand lives in its own module and is imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). The module has `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("steelyard.config.validate_cmd", "check configuration files and print every error"),
    "run": ("steelyard.runtime.run_cmd", "run the load balancer"),
    "backend": ("steelyard.backend", "run a small demo backend that answers with its name"),
    "demo": ("steelyard.demo", "start demo backends and Steelyard, and show it balancing"),
    "status": ("steelyard.admin.status_cmd", "show load balancers and endpoints from the admin API"),
    "manifests": ("steelyard.kube.manifests_cmd", "render Kubernetes manifests (CRDs)"),
    "init": ("steelyard.kube.scaffold_cmd", "scaffold a kustomize folder for a domain"),
    "create": ("steelyard.kube.create_cmd", "write a LoadBalancer or BalancerPolicy resource"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All subcommands are listed; only `only` (the one being run) has its module imported."""
    parser = argparse.ArgumentParser(
        prog="steelyard", description="Steelyard, a Kubernetes-native load balancer."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module_name)
        if name == only:
            importlib.import_module(module_name).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
