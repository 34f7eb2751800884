"""`steelyard init --domain D [--dir DIR]`: scaffold a kustomize folder of Steelyard resources.

The folder holds a `kustomization.yaml` listing one file per resource, an example `LoadBalancer` for
host D (pods labelled `app=web`, port 8080) and the `BalancerPolicy` it uses. `steelyard create service`
and `steelyard create policy` add to it; `make deploy DIR=...` (or `kubectl apply -k DIR`) applies it.

This module also holds what both commands share: name checks, writing a resource after the config
loader has validated it, and keeping the kustomization's `resources` list up to date.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from steelyard.config import ConfigError, load_texts
from steelyard.model import API_VERSION

__all__ = ["add_arguments", "run"]

DEFAULT_DIR = "steelyard-config"
KUSTOMIZATION = "kustomization.yaml"
# RFC 1123 as Kubernetes checks object names (a DNS subdomain) and label values.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InputError(Exception):
    """Bad input: printed as `steelyard COMMAND: error: ...`, exit status 2."""


def fail(command: str, exc: InputError) -> int:
    print(f"steelyard {command}: error: {exc}", file=sys.stderr)
    return 2


def check_name(name: str, flag: str = "--name") -> str:
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise InputError(f"{flag} {name!r} is not a Kubernetes object name: lower-case letters, digits, "
                         "'-' and '.', starting and ending with a letter or digit, at most 253 characters")
    return name


def check_domain(domain: str) -> str:
    host = domain.strip().lower().rstrip(".")
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_DNS_LABEL.match(x) and len(x) <= 63 for x in labels):
        raise InputError(f"--domain {domain!r} is not a host name like my-domain.com")
    return host


def check_namespace(namespace: str) -> str:
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise InputError(f"--namespace {namespace!r} is not a namespace name (lower-case letters, digits and "
                         "'-', at most 63 characters)")
    return namespace


def resource_file(kind: str, name: str) -> str:
    return f"{kind.lower()}-{name}.yaml"


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def to_yaml(doc: dict[str, Any], comment: str) -> str:
    # safe_dump quotes keys YAML 1.1 reads as booleans (`'on':`), so kubectl reads retries.on as meant.
    return f"# {comment}\n" + yaml.safe_dump(doc, sort_keys=False, width=110)


# --- the folder ------------------------------------------------------------------------------------

def read_kustomization(folder: Path) -> tuple[list[str], dict[str, Any]]:
    """The header comment lines and the kustomization; InputError when there is none or it is broken."""
    path = folder / KUSTOMIZATION
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; scaffold the folder first with "
                         f"`steelyard init --domain DOMAIN --dir {folder}`") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("resources", []), list):
        raise InputError(f"{path}: not a kustomization (a mapping with a `resources` list)")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    return header, data


def write_kustomization(folder: Path, header: list[str], data: dict[str, Any]) -> None:
    text = "".join(f"{line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False, width=110)
    (folder / KUSTOMIZATION).write_text(text, encoding="utf-8")


def _listed_texts(folder: Path, data: dict[str, Any], skip: str | None) -> list[tuple[str, str]]:
    """The folder's own resource files (listed in the kustomization), as the loader takes them."""
    texts = []
    for entry in data.get("resources", []):
        if not isinstance(entry, str) or entry == skip or not entry.endswith((".yaml", ".yml")):
            continue
        try:
            texts.append((str(folder / entry), (folder / entry).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue  # a missing or odd file is kubectl's to report; it is not what we are writing
    return texts


def _missing_policy(error: ConfigError) -> bool:
    return error.field == "spec.policyRef.name" and error.message.startswith("no BalancerPolicy")


def _policy_name(error: ConfigError) -> str:
    found = re.search(r"no BalancerPolicy '([^']+)'", error.message)
    return found.group(1) if found else "NAME"


def _shown(error: ConfigError, flags: dict[str, str]) -> str:
    for field, flag in flags.items():
        if error.field and (error.field == field or error.field.startswith((field + ".", field + "["))):
            return f"{flag}: {error.message}"
    return f"{error.field}: {error.message}" if error.field else error.message


def validate(folder: Path, data: dict[str, Any], filename: str, text: str,
             flags: dict[str, str], replacing: bool) -> list[str]:
    """Check the new resource with the config loader, together with the folder's other resources.

    Raises InputError with every problem of the new resource; returns warnings: a `policyRef` to a
    policy not written yet (the seeds create the service first), and problems of the other files."""
    target = str(folder / filename)
    others = _listed_texts(folder, data, filename if replacing else None)
    result = load_texts([*others, (target, text)])
    mine = [e for e in result.errors if e.file == target]
    refused = [e for e in mine if not _missing_policy(e)]
    if refused:
        shown = "\n  ".join(_shown(e, flags) for e in refused)
        raise InputError(f"the resource would be invalid:\n  {shown}")
    warnings = [f"{_shown(e, flags)} (create it with `steelyard create policy --name {_policy_name(e)} "
                f"--dir {folder}`)" for e in mine if _missing_policy(e)]
    warnings += [f"elsewhere in the folder: {e}" for e in result.errors if e.file != target]
    return warnings


def write_resource(folder: Path, doc: dict[str, Any], comment: str, flags: dict[str, str],
                   force: bool) -> tuple[Path, list[str]]:
    """Validate `doc`, write it to its own file and list that file in the kustomization."""
    header, data = read_kustomization(folder)
    filename = resource_file(doc["kind"], doc["metadata"]["name"])
    path = folder / filename
    if path.exists() and not force:
        raise InputError(f"{path} already exists (use --force to replace it)")
    text = to_yaml(doc, comment)
    warnings = validate(folder, data, filename, text, flags, replacing=force)
    path.write_text(text, encoding="utf-8")
    resources = data.setdefault("resources", [])
    if filename not in resources:
        resources.append(filename)
        write_kustomization(folder, header, data)
    return path, warnings


# --- steelyard init --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", required=True, help="the host name clients use, e.g. my-domain.com")
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"folder to create (default: {DEFAULT_DIR})")
    parser.add_argument("--namespace", default=None,
                        help="namespace for every resource in the folder (default: kubectl's current one)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing kustomization.yaml")


def _slug(domain: str) -> str:
    return domain.replace(".", "-")[:63].strip("-")


def scaffold(folder: Path, domain: str, namespace: str | None, force: bool) -> list[Path]:
    domain = check_domain(domain)
    if namespace is not None:
        check_namespace(namespace)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--dir {folder} exists and is not a folder")
    if (folder / KUSTOMIZATION).exists() and not force:
        raise InputError(f"{folder / KUSTOMIZATION} already exists (use --force to overwrite it, or another "
                         "--dir)")
    name = _slug(domain)
    policy = resource("BalancerPolicy", name, {
        "strategy": {"type": "WeightedRoundRobin"},
        "healthCheck": {"type": "HTTP", "path": "/healthz", "interval": "5s", "timeout": "1s"},
    })
    balancer = resource("LoadBalancer", name, {
        # 8080: the port deploy/'s Service forwards port 80 to.
        "ports": [{"name": "http", "port": 8080, "protocol": "HTTP", "targetPort": 8080}],
        "hosts": [domain],
        "selector": {"matchLabels": {"app": "web"}},
        "policyRef": {"name": name},
    })
    files = {
        resource_file("BalancerPolicy", name): to_yaml(policy, f"How traffic for {domain} is balanced."),
        resource_file("LoadBalancer", name): to_yaml(
            balancer, f"Requests for {domain} on Steelyard's port 8080 go to pods labelled app=web, "
                      "port 8080."),
    }
    result = load_texts([(str(folder / n), t) for n, t in files.items()])
    if result.errors:  # the scaffold is ours: a failure here is a bug, said plainly rather than written
        raise InputError("the scaffold would be invalid: " + "; ".join(map(str, result.errors)))
    kustomization: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        kustomization["namespace"] = namespace
    kustomization["resources"] = list(files)
    header = [f"# Steelyard resources for {domain}, scaffolded by `steelyard init`.",
              "# Add more with `steelyard create service ...` / `steelyard create policy ...`;",
              f"# apply with `make deploy DIR={folder}` or `kubectl apply -k {folder}`."]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in files.items():
        (folder / filename).write_text(text, encoding="utf-8")
        written.append(folder / filename)
    write_kustomization(folder, header, kustomization)
    return [folder / KUSTOMIZATION, *written]


def run(args: argparse.Namespace) -> int:
    try:
        written = scaffold(Path(args.dir), args.domain, args.namespace, args.force)
    except InputError as exc:
        return fail("init", exc)
    except OSError as exc:
        return fail("init", InputError(f"{exc.filename}: {exc.strerror}"))
    for path in written:
        print(f"wrote {path}")
    print(f"next: steelyard create service --name NAME --selector app=web --port 8080 --target-port 8080 "
          f"--dir {args.dir}")
    return 0
