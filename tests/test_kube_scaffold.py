"""The seeds' workflow through the real CLI: `steelyard init`, `create service`, `create policy`, then the
folder as the config loader, kubectl kustomize and the CRD schema see it; bad input refused plainly;
`make install`/`make deploy` without a cluster say so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from steelyard.cli import main
from steelyard.config import load_files
from steelyard.kube import crds

ROOT = Path(__file__).resolve().parent.parent
STEELYARD = Path(sys.executable).parent / "steelyard"
KUBECTL = shutil.which("kubectl")
DOMAIN = "my-domain.com"


def steelyard(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def kubectl_load_all(text: str) -> list[dict[str, Any]]:
    """As kubectl reads YAML (YAML 1.1 booleans; boolean keys become "true"/"false")."""
    def go(value: Any) -> Any:
        if isinstance(value, dict):
            return {(str(k).lower() if isinstance(k, bool) else k): go(v) for k, v in value.items()}
        return [go(v) for v in value] if isinstance(value, list) else value
    return [go(d) for d in yaml.safe_load_all(text) if d is not None]


def resource_files(folder: Path) -> list[str]:
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    for name in listed:
        assert (folder / name).is_file(), f"{name} is listed in the kustomization but missing"
    return [str(folder / name) for name in listed]


def check_folder(folder: Path) -> list[dict[str, Any]]:
    """Every resource loads with the config loader, and matches the CRD schema as kubectl would send it."""
    files = resource_files(folder)
    result = load_files(files)
    assert result.ok, "\n".join(map(str, result.errors))
    docs = [d for f in files for d in kubectl_load_all(Path(f).read_text(encoding="utf-8"))]
    for doc in docs:
        schema = crds.crd(doc["kind"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        errors = list(jsonschema.Draft202012Validator(crds.to_json_schema(schema)).iter_errors(doc))
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {[e.message for e in errors]}"
    return docs


def kustomize(folder: Path) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (.ci/run installs it); it renders the folder")
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return kubectl_load_all(done.stdout)


def sorted_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kubectl kustomize orders objects by kind."""
    return sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"]))


@pytest.fixture
def folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    target = tmp_path / "lb"
    code, out, err = steelyard("init", "--domain", DOMAIN, "--dir", str(target), capsys=capsys)
    assert code == 0, err
    return target


def readme_commands(section: str) -> list[list[str]]:
    """The `steelyard ...` lines of README's code block under `section` (continuations joined, comments
    dropped), as argument lists."""
    text = (ROOT / "README.md").read_text().split(section, 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands, line = [], ""
    for raw in text.splitlines():
        line += raw.split("  #", 1)[0].strip().rstrip("\\").strip() + " "
        if raw.rstrip().endswith("\\"):
            continue
        if line.startswith("steelyard "):
            commands.append(line.split()[1:])
        line = ""
    return commands


def test_readme_kubernetes_tour_works_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `steelyard` command of README's "Run it in Kubernetes" block, in order, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    commands = readme_commands("### Run it in Kubernetes")
    assert [c[0] for c in commands][:4] == ["init", "create", "create", "validate"]
    for argv in commands:
        code, out, err = steelyard(*argv, capsys=capsys)
        assert code == 0, (argv, out, err)


def test_init_scaffolds_a_valid_example(tmp_path: Path) -> None:
    """Through the installed `steelyard` entry point, as a user runs it."""
    folder = tmp_path / "lb"
    done = subprocess.run([str(STEELYARD), "init", "--domain", DOMAIN, "--dir", str(folder)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"wrote {folder / 'kustomization.yaml'}" in done.stdout
    docs = check_folder(folder)
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"LoadBalancer", "BalancerPolicy"}
    lb = by_kind["LoadBalancer"]
    assert lb["spec"]["hosts"] == [DOMAIN]
    assert lb["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert lb["spec"]["policyRef"] == {"name": by_kind["BalancerPolicy"]["metadata"]["name"]}
    assert lb["spec"]["ports"][0]["port"] == 8080  # what deploy/'s Service forwards port 80 to
    assert sorted_docs(kustomize(folder)) == sorted_docs(docs)


def test_seeds_workflow(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = steelyard("create", "service", "--name", "web", "--selector", "app=web", "--port", "80",
                               "--target-port", "8080", "--policy", "fast", "--dir", str(folder),
                               capsys=capsys)
    assert code == 0, err
    # The seeds create the service before its policy: a warning, not a refusal.
    assert "no BalancerPolicy 'fast'" in err and "steelyard create policy --name fast" in err
    assert "add it to that Service" in err  # port 80 is not where deploy/'s Service sends traffic
    code, out, err = steelyard("create", "policy", "--name", "fast", "--strategy", "WeightedRoundRobin",
                               "--health-path", "/healthz", "--retry-on", "connect-failure,502",
                               "--slow-start", "30s", "--dir", str(folder), capsys=capsys)
    assert code == 0, err
    assert err == ""
    docs = check_folder(folder)
    web = next(d for d in docs if d["kind"] == "LoadBalancer" and d["metadata"]["name"] == "web")
    assert web["spec"] == {
        "ports": [{"name": "http", "port": 80, "protocol": "HTTP", "targetPort": 8080}],
        "selector": {"matchLabels": {"app": "web"}}, "policyRef": {"name": "fast"}}
    fast = next(d for d in docs if d["kind"] == "BalancerPolicy" and d["metadata"]["name"] == "fast")
    assert fast["spec"]["strategy"] == {"type": "WeightedRoundRobin"}
    assert fast["spec"]["healthCheck"] == {"type": "HTTP", "path": "/healthz"}
    assert fast["spec"]["retries"] == {"on": ["connect-failure", "502"]}  # `on`, even as kubectl reads it
    assert fast["spec"]["slowStart"] == {"window": "30s"}
    assert sorted_docs(kustomize(folder)) == sorted_docs(docs)


def test_create_service_for_a_service_with_hosts_and_names(folder: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = steelyard("create", "service", "--name", "api", "--service", "api",
                             "--target-port", "http", "--host", "api.my-domain.com", "--path-prefix", "/v1",
                             "--protocol", "http", "--dir", str(folder), capsys=capsys)
    assert code == 0, err
    api = next(d for d in check_folder(folder) if d["metadata"]["name"] == "api")
    assert api["spec"]["service"] == {"name": "api"} and "selector" not in api["spec"]
    assert api["spec"]["ports"][0]["targetPort"] == "http"
    assert api["spec"]["hosts"] == ["api.my-domain.com"] and api["spec"]["pathPrefix"] == "/v1"


def test_hash_and_time_sliced_policies(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--name", "sticky", "--strategy", "ringhash", "--hash-cookie", "session"],
                 ["--name", "by-ip", "--strategy", "Maglev", "--hash-source-ip"],
                 ["--name", "slices", "--strategy", "TimeSlicedRoundRobin", "--time-slice", "500ms"],
                 ["--name", "two", "--strategy", "PowerOfTwoChoices", "--choices", "3"]):
        code, _, err = steelyard("create", "policy", *argv, "--dir", str(folder), capsys=capsys)
        assert code == 0, err
    docs = {d["metadata"]["name"]: d["spec"] for d in check_folder(folder) if d["kind"] == "BalancerPolicy"}
    assert docs["sticky"]["strategy"] == {"type": "RingHash", "hashOn": {"cookie": "session"}}
    assert docs["by-ip"]["strategy"] == {"type": "Maglev", "hashOn": {"sourceIP": {}}}
    assert docs["slices"]["strategy"]["timeSlice"] == "500ms"
    assert docs["two"]["strategy"]["choices"] == 3


def test_namespace_goes_to_the_kustomization(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "ns"
    code, _, err = steelyard("init", "--domain", DOMAIN, "--dir", str(target), "--namespace", "shop",
                             capsys=capsys)
    assert code == 0, err
    check_folder(target)
    assert {d["metadata"]["namespace"] for d in kustomize(target)} == {"shop"}


BAD_SERVICE = [
    (["--name", "Web", "--selector", "app=web"], "--name 'Web' is not a Kubernetes object name"),
    (["--name", "web", "--selector", "app"], "--selector 'app' is not KEY=VALUE"),
    (["--name", "web", "--selector", "app=we b"], "is not a label value"),
    (["--name", "web", "--selector", "app=web", "--port", "70000"], "--port: 70000 is too large"),
    (["--name", "web", "--selector", "app=web", "--port", "eighty"], "invalid int value: 'eighty'"),
    (["--name", "web", "--selector", "app=web", "--target-port", "99999"],
     "--target-port 99999 is not a port"),
    (["--name", "web", "--selector", "app=web", "--path-prefix", "v1"], "must start with '/'"),
    (["--name", "web", "--selector", "app=web", "--host", DOMAIN],
     "is already claimed by LoadBalancer"),
    (["--name", "web"], "one of the arguments --selector --service is required"),
    (["--name", "web", "--selector", "app=web", "--service", "s"], "not allowed with argument"),
]
BAD_POLICY = [
    (["--name", "p", "--strategy", "Fastest"], "'Fastest' is not a strategy: one of RoundRobin"),
    (["--name", "p", "--strategy", "TimeSlicedRoundRobin", "--time-slice", "5"],
     "--time-slice: '5' is not a duration"),
    (["--name", "p", "--time-slice", "1s"], "--time-slice goes with --strategy TimeSlicedRoundRobin"),
    (["--name", "p", "--strategy", "RingHash"], "--strategy RingHash needs what to hash"),
    (["--name", "p", "--hash-header", "x-user"], "go with --strategy RingHash or Maglev"),
    (["--name", "p", "--strategy", "PowerOfTwoChoices", "--choices", "1"], "--choices: 1 is too small"),
    (["--name", "p", "--health-interval", "2s"], "need --health-check or --health-path"),
    (["--name", "p", "--health-path", "/h", "--health-interval", "often"], "--health-interval: 'often'"),
    (["--name", "p", "--retries", "11"], "--retries: 11 is too large"),
    (["--name", "p", "--retry-on", "500"], "--retry-on: '500' is not one of connect-failure"),
    (["--name", "p", "--slow-start", "soon"], "--slow-start: 'soon' is not a duration"),
    (["--name", "my-domain-com"], "already exists (use --force to replace it)"),
]


@pytest.mark.parametrize(("kind", "argv", "message"),
                         [("service", a, m) for a, m in BAD_SERVICE]
                         + [("policy", a, m) for a, m in BAD_POLICY],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_refused_plainly(folder: Path, capsys: pytest.CaptureFixture[str],
                                      kind: str, argv: list[str], message: str) -> None:
    before = {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir()}
    try:
        code, _, err = steelyard("create", kind, *argv, "--dir", str(folder), capsys=capsys)
    except SystemExit as exc:  # argparse's own refusals
        code, err = int(exc.code or 0), capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir()} == before, "nothing is written"


def test_force_replaces(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = steelyard("create", "policy", "--name", "my-domain-com", "--strategy", "LeastConnections",
                             "--force", "--dir", str(folder), capsys=capsys)
    assert code == 0, err
    docs = check_folder(folder)
    strategies = [d["spec"]["strategy"]["type"] for d in docs if d["kind"] == "BalancerPolicy"]
    assert strategies == ["LeastConnections"]
    assert len(resource_files(folder)) == 2


def test_init_refuses_bad_domain_and_existing_folder(folder: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = steelyard("init", "--domain", DOMAIN, "--dir", str(folder), capsys=capsys)
    assert code == 2 and "already exists (use --force" in err
    for domain in ("localhost", "my_domain.com", "-x.com", "*.my-domain.com"):
        code, _, err = steelyard("init", f"--domain={domain}", "--dir", str(tmp_path / "d"), capsys=capsys)
        assert code == 2 and f"--domain {domain!r} is not a host name" in err
    assert not (tmp_path / "d").exists()
    code, _, err = steelyard("init", "--domain", DOMAIN, "--dir", str(tmp_path / "e"), "--namespace", "Bad",
                             capsys=capsys)
    assert code == 2 and "--namespace 'Bad'" in err


def test_create_needs_a_scaffolded_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = steelyard("create", "policy", "--name", "p", "--dir", str(tmp_path), capsys=capsys)
    assert code == 2 and "no such file; scaffold the folder first with `steelyard init" in err


def test_refusal_through_the_entry_point(folder: Path) -> None:
    done = subprocess.run([str(STEELYARD), "create", "service", "--name", "web", "--selector", "app=web",
                           "--port", "0", "--dir", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("steelyard create service: error:")
    assert "--port: 0 is too small" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", [["install"], ["deploy"], ["deploy", "DIR=somewhere"]])
def test_make_without_a_cluster_says_so(tmp_path: Path, target: list[str]) -> None:
    empty = tmp_path / "kubeconfig"
    empty.write_text("", encoding="utf-8")
    env = {**os.environ, "KUBECONFIG": str(empty), "HOME": str(tmp_path)}
    done = subprocess.run(["make", "-s", "-C", str(ROOT), *target], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode != 0
    expected = "kubectl is not installed" if KUBECTL is None else "no cluster configured"
    assert expected in done.stderr
    assert "kubectl apply" not in done.stdout
