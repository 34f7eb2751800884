"""`steelyard manifests`: print (or write) Kubernetes manifests.

- `steelyard manifests crds` prints both CRDs, rendered from the models (`steelyard.kube.crds`);
  `--write DIR` writes one file per CRD instead (how deploy/crds/ is regenerated).
- `steelyard manifests all [--dir deploy]` prints the whole kustomize base, as `kubectl kustomize` renders it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from steelyard.kube import crds

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("crds", "all"),
                        help="crds: the LoadBalancer and BalancerPolicy CRDs; all: the kustomize base "
                             "rendered with kubectl")
    parser.add_argument("--write", metavar="DIR", default=None,
                        help="crds only: write one file per CRD into DIR (e.g. deploy/crds) instead of "
                             "printing")
    parser.add_argument("--dir", metavar="DIR", default="deploy",
                        help="all only: the kustomize folder to render (default: deploy)")


def _fail(message: str) -> int:
    print(f"steelyard manifests: error: {message}", file=sys.stderr)
    return 2


def _crds(write: str | None) -> int:
    definitions = crds.all_crds()
    if write is None:
        sys.stdout.write("---\n".join(crds.to_yaml(d) for d in definitions))
        return 0
    folder = Path(write)
    if not folder.is_dir():
        return _fail(f"{write}: no such directory")
    for definition in definitions:
        target = folder / crds.file_name(definition)
        target.write_text(crds.to_yaml(definition), encoding="utf-8")
        print(f"wrote {target}")
    return 0


def _all(folder: str) -> int:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return _fail("kubectl is not installed; it renders the kustomize base (`kubectl kustomize DIR`)")
    if not (Path(folder) / "kustomization.yaml").is_file():
        return _fail(f"{folder}: no kustomization.yaml here (run from the repository root, or give --dir)")
    done = subprocess.run([kubectl, "kustomize", folder], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return _fail(f"kubectl kustomize {folder} failed:\n{done.stderr.strip()}")
    sys.stdout.write(done.stdout)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.what == "crds":
        return _crds(args.write)
    if args.write is not None:
        return _fail("--write goes with `crds`")
    return _all(args.dir)
