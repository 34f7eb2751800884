"""`steelyard validate`: every error and exit 1, or a one-line summary and exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from steelyard.cli import main
from steelyard.config import default_config_path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))

GOOD = """\
apiVersion: steelyard.dev/v1alpha1
kind: LoadBalancer
metadata: {name: web}
spec:
  ports: [{name: http, port: 8080, address: 127.0.0.1}]
  endpoints: [{address: "127.0.0.1:9001"}]
"""

BAD = """\
apiVersion: steelyard.dev/v1alpha1
kind: BalancerPolicy
metadata: {name: p}
spec:
  strategy: {type: RoundRobbin}
  healthCheck: {interval: soon}
---
apiVersion: steelyard.dev/v1alpha1
kind: LoadBalancer
metadata: {name: web}
spec:
  ports: [{name: http, port: 8080, address: 127.0.0.1}]
  policyRef: {name: missing}
  endpoints: [{address: "127.0.0.1:9001"}]
"""


def test_examples_and_default_validate_in_a_real_process() -> None:
    files = [*EXAMPLES, str(default_config_path())]
    assert len(EXAMPLES) == 11
    done = subprocess.run([sys.executable, "-m", "steelyard", "validate", *files],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 12 load balancers, 12 policies, 12 listeners in ")
    assert done.stdout.count("\n") == 1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: Path(p).name)
def test_each_example_validates(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", path]) == 0
    assert capsys.readouterr().out == f"ok: 1 load balancer, 1 policy, 1 listener in {path}\n"


def test_every_error_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.replace("8080", "8081").replace("web", "site"))
    assert main(["validate", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith(f"{bad}:5: BalancerPolicy/p: spec.strategy.type: 'RoundRobbin' is not one of ")
    assert lines[1] == (f"{bad}:6: BalancerPolicy/p: spec.healthCheck.interval: 'soon' is not a duration; "
                        "write it with a unit, like '500ms', '2s' or '1m'")
    assert lines[2] == (f"{bad}:13: LoadBalancer/web: spec.policyRef.name: no BalancerPolicy 'missing' in "
                        "namespace 'default'")
    assert lines[3] == f"3 errors in {good}, {bad}"
    assert "Traceback" not in captured.err


def test_summary_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.yaml"
    a.write_text(GOOD + "---\n" + GOOD.replace("web", "api").replace("8080", "8081"))
    assert main(["validate", str(a)]) == 0
    assert capsys.readouterr().out == f"ok: 2 load balancers, 0 policies, 2 listeners in {a}\n"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    nowhere = tmp_path / "nope.yaml"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00kind")
    done = subprocess.run([sys.executable, "-m", "steelyard", "validate", str(nowhere), str(binary)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == f"{nowhere}: no such file"
    assert lines[1].startswith(f"{binary}: cannot be read: ")
    assert "Traceback" not in done.stderr


def test_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: LoadBalancer\nspec:\n  ports: [\n  - x\n")
    assert main(["validate", str(broken)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"{broken}:") and "YAML syntax error" in first


def test_a_scaffolded_folder_validates_as_a_folder(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`steelyard validate DIR` (or DIR/kustomization.yaml) checks the resources the kustomization names."""
    folder = tmp_path / "site"
    assert main(["init", "--domain", "my-domain.com", "--dir", str(folder)]) == 0
    capsys.readouterr()
    assert main(["validate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 1 load balancer, 1 policy, 1 listener in ") and "kustomization" not in out
    assert main(["validate", str(folder / "kustomization.yaml")]) == 0
    capsys.readouterr()
    (folder / "loadbalancer-my-domain-com.yaml").write_text(
        (folder / "loadbalancer-my-domain-com.yaml").read_text().replace("port: 8080", "port: 80800"))
    assert main(["validate", str(folder)]) == 1
    assert "spec.ports[0].port: 80800 is too large" in capsys.readouterr().err


def test_a_folder_without_kustomization_takes_every_yaml(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for example in ("round-robin.yaml", "maglev.yaml"):
        (tmp_path / example).write_text((ROOT / "examples" / example).read_text())
    (tmp_path / "notes.txt").write_text("not yaml")
    assert main(["validate", str(tmp_path)]) == 0
    assert "2 load balancers" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", str(empty)]) == 1
    assert "no resource files in" in capsys.readouterr().err


REVIEW = """\
apiVersion: steelyard.dev/v1alpha1
kind: BalancerPolicy
metadata: {name: p}
spec:
  strategy: {type: RoundRobin, choices: 3}
  healthCheck: {path: /healthz, interval: 1s}
  timeouts: {connect: 0ms}
---
apiVersion: steelyard.dev/v1alpha1
kind: LoadBalancer
metadata: {name: web}
spec:
  ports: [{name: http, port: 8080, address: 127.0.0.1}]
  hosts: ["*.example.com", "example.com:8100"]
  policyRef: {name: missing}
  endpoints: [{address: "127.0.0.1:9001", weight: 1}, {address: "127.0.0.1:9001", weight: 5}]
---
apiVersion: steelyard.dev/v1alpha1
kind: LoadBalancer
metadata: {name: site}
spec:
  ports: [{name: http, port: 8081, address: 127.0.0.1}]
  endpoints: [{address: "127.0.0.1:9002"}]
  endpoints: [{address: "127.0.0.1:9003"}]
"""


def test_review_findings_all_reported_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A strategy parameter that does not apply, health check settings without a type, a zero timeout,
    wildcard and port hosts, a dangling policyRef, an endpoint listed twice, a key given twice: each a
    FILE:LINE: kind/name: field: why line, schema and reference errors in one run."""
    f = tmp_path / "review.yaml"
    f.write_text(REVIEW)
    assert main(["validate", str(f)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"{f}:5: BalancerPolicy/p: spec.strategy.choices: only used by PowerOfTwoChoices (this strategy is "
        "RoundRobin): remove it",
        f"{f}:6: BalancerPolicy/p: spec.healthCheck: healthCheck.path/interval set but type is None, so no "
        "checks run: set type: HTTP or TCP (or remove them)",
        f"{f}:7: BalancerPolicy/p: spec.timeouts.connect: '0ms' must be longer than 0 (0 does not mean "
        "'none' or 'no limit' here: it would expire at once); leave the field out for its default",
        f"{f}:14: LoadBalancer/web: spec.hosts[0]: '*.example.com': wildcards are not supported; list exact "
        "host names only",
        f"{f}:14: LoadBalancer/web: spec.hosts[1]: 'example.com:8100' has a port: a host is a name without a "
        "port (the listener's port is spec.ports[].port)",
        f"{f}:15: LoadBalancer/web: spec.policyRef.name: no BalancerPolicy 'missing' in namespace 'default'",
        f"{f}:16: LoadBalancer/web: spec.endpoints[1].address: '127.0.0.1:9001' is the same backend "
        "(127.0.0.1:9001) as spec.endpoints[0]: list each endpoint once, with one weight",
        f"{f}:24: LoadBalancer/site: spec.endpoints: key 'endpoints' is given twice in one mapping, on "
        "lines 23 and 24: keep one (YAML would silently take the last; Kubernetes refuses the object)",
        f"8 errors in {f}",
    ]
    assert "Traceback" not in "\n".join(lines)
