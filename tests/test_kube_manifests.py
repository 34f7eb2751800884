"""deploy/ as kubectl renders it: every object valid for Kubernetes (strict), and the properties the
Deployment, RBAC, Service and PodDisruptionBudget promise; `steelyard manifests` prints the same files."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from steelyard.cli import main
from steelyard.kube import crds
from steelyard.model import parse_duration
from steelyard.runtime import run_cmd

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30"
KUBECTL = shutil.which("kubectl")
NO_KUBECTL = "kubectl is not installed (.ci/run installs it); it renders deploy/ with `kubectl kustomize`"
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)


def kustomize(folder: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    return kustomize(DEPLOY)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_every_object_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_strict_validation_does_refuse_unknown_fields() -> None:
    """So that the test above means something."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"bogus": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_the_base_has_every_part(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    assert kinds == sorted([
        ("Namespace", "steelyard-system"),
        ("CustomResourceDefinition", "loadbalancers.steelyard.dev"),
        ("CustomResourceDefinition", "balancerpolicies.steelyard.dev"),
        ("ServiceAccount", "steelyard"), ("ClusterRole", "steelyard"), ("ClusterRoleBinding", "steelyard"),
        ("Role", "steelyard-leader-election"), ("RoleBinding", "steelyard-leader-election"),
        ("Deployment", "steelyard"), ("Service", "steelyard"), ("PodDisruptionBudget", "steelyard"),
    ])
    for obj in rendered:
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "steelyard-system", obj["kind"]


def test_rendered_crds_are_the_model_ones(rendered: list[dict[str, Any]]) -> None:
    for definition in crds.all_crds():
        assert one(rendered, "CustomResourceDefinition", definition["metadata"]["name"]) == definition


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_rbac_is_least_privilege(rendered: list[dict[str, Any]]) -> None:
    read = {"get", "list", "watch"}
    watched = (("", "pods"), ("", "services"), ("discovery.k8s.io", "endpointslices"),
               ("steelyard.dev", "loadbalancers"), ("steelyard.dev", "balancerpolicies"))
    expected = {(g, r, v) for g, r in watched for v in read}
    expected |= {("steelyard.dev", f"{r}/status", v) for r in ("loadbalancers", "balancerpolicies")
                 for v in ("get", "patch", "update")}
    expected |= {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")}
    assert _rules(one(rendered, "ClusterRole", "steelyard")) == expected
    assert _rules(one(rendered, "Role", "steelyard-leader-election")) == {
        ("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    for kind, name in (("ClusterRoleBinding", "steelyard"), ("RoleBinding", "steelyard-leader-election")):
        binding = one(rendered, kind, name)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "steelyard",
                                        "namespace": "steelyard-system"}]
    deployment = one(rendered, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "steelyard"


def _run_options(args: list[str]) -> argparse.Namespace:
    """The container's arguments as `steelyard run` parses them (`--kubernetes` may not have landed yet)."""
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    options, unknown = parser.parse_known_args(args[1:])
    assert args[0] == "run" and not unknown, unknown
    return options


def test_deployment_is_hardened_and_probed(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment", "steelyard")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "lifecycle" not in container, "no preStop sleep: Steelyard drains on SIGTERM itself"
    assert container["resources"]["requests"] and container["resources"]["limits"]

    args = container["args"]
    assert "--kubernetes" in args
    options = _run_options(args)
    assert options.admin == "0.0.0.0:9901"
    shutdown_delay = parse_duration(options.shutdown_delay)
    assert shutdown_delay > 0, "endpoint lists lag SIGTERM: stay accepting a moment (no preStop sleep)"
    assert pod["terminationGracePeriodSeconds"] > shutdown_delay + parse_duration(options.drain_timeout)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "admin": 9901}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}

    env = {e["name"]: e.get("valueFrom", {}) for e in container["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["STEELYARD_ADMIN_TOKEN"]["secretKeyRef"]["name"] == "steelyard-admin"


def test_image_runs_as_the_deployments_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    user = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile, re.MULTILINE)
    assert user, "the image must end with a numeric non-root USER (runAsNonRoot can check only numbers)"
    uid, gid = user[-1]
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text(encoding="utf-8"))
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert int(uid) == pod_security["runAsUser"] != 0
    assert int(gid or uid) == pod_security["runAsGroup"]
    assert re.search(r"^RUN pip install .* \.\s*$", dockerfile, re.MULTILINE)
    # setup.py declares the C extension: without it (or without gcc) the image would silently fall back.
    assert re.search(r"^COPY .*\bsetup\.py\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN apt-get .*install .*\bgcc\b", dockerfile, re.MULTILINE)
    # and the compiled request path needs llhttp's sources fetched before the install builds it
    fetch = re.search(r"^RUN python tools/fetch_llhttp\.py\s*$", dockerfile, re.MULTILINE)
    install = re.search(r"^RUN pip install .* \.\s*$", dockerfile, re.MULTILINE)
    assert fetch and install and fetch.start() < install.start()
    assert re.search(r"^COPY tools\b", dockerfile, re.MULTILINE)
    # every path the build copies from the context gets past .dockerignore (which ignores all but a list)
    ignore = (DEPLOY.parent / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].strip().rstrip("/") for line in ignore if line.startswith("!")}
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+\s*$", dockerfile, re.MULTILINE):
        for source in sources.split():
            assert source.removeprefix("./").rstrip("/") in allowed, f".dockerignore keeps {source} out"
    assert 'ENTRYPOINT ["steelyard"]' in dockerfile


def test_service_and_disruption_budget(rendered: list[dict[str, Any]]) -> None:
    pod_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(rendered, "Service", "steelyard")["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["selector"].items() <= pod_labels.items()
    pdb = one(rendered, "PodDisruptionBudget", "steelyard")["spec"]
    assert pdb["minAvailable"] == 1 and pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_manifests_crds_prints_the_committed_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifests", "crds"]) == 0
    printed = capsys.readouterr().out
    committed = [(DEPLOY / "crds" / crds.file_name(d)).read_text(encoding="utf-8") for d in crds.all_crds()]
    assert printed == "---\n".join(committed)
    assert [d["kind"] for d in yaml.safe_load_all(printed)] == ["CustomResourceDefinition"] * 2


def test_manifests_crds_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifests", "crds", "--write", str(tmp_path)]) == 0
    for definition in crds.all_crds():
        assert (tmp_path / crds.file_name(definition)).read_text(encoding="utf-8") == crds.to_yaml(definition)
    assert main(["manifests", "crds", "--write", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


@needs_kubectl
def test_manifests_all_is_the_kustomize_output(capsys: pytest.CaptureFixture[str],
                                               rendered: list[dict[str, Any]]) -> None:
    assert main(["manifests", "all", "--dir", str(DEPLOY)]) == 0
    assert [d for d in yaml.safe_load_all(capsys.readouterr().out) if d] == rendered


def test_manifests_all_without_a_kustomization(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifests", "all", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "kubectl" in err or "no kustomization.yaml" in err
