"""`steelyard.kube.translate`: golden YAML fixtures in (objects as the API serves them), desired state and
status reports out. `STEELYARD_UPDATE_GOLDEN=1 pytest tests/test_kube_translate.py` rewrites the expected
files; review the diff before committing it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from steelyard.config import load_texts  # type: ignore[attr-defined]
from steelyard.config.desired import BackendEndpoint, DesiredState
from steelyard.kube.translate import ClusterObjects, Translation, matches_selector, translate
from steelyard.model import LabelSelector

FIXTURES = Path(__file__).parent / "fixtures" / "kube"
CASES = sorted(p.stem for p in FIXTURES.glob("*.yaml") if not p.stem.endswith(".expected"))


def objects_from(path: Path) -> ClusterObjects:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    return ClusterObjects(load_balancers=by_kind.get("LoadBalancer", []),
                          policies=by_kind.get("BalancerPolicy", []), pods=by_kind.get("Pod", []),
                          endpoint_slices=by_kind.get("EndpointSlice", []),
                          services=by_kind.get("Service", []))


def _endpoint(e: BackendEndpoint) -> str:
    return f"{e.id} weight={e.weight} name={e.name}" + (" terminating" if e.terminating else "")


def render_state(state: DesiredState) -> dict[str, Any]:
    return {
        "upstreams": {
            key: {"strategy": u.policy.strategy.type.value, "policy": u.policy_name,
                  "protocol": u.protocol.value, "endpoints": [_endpoint(e) for e in u.endpoints]}
            for key, u in state.upstreams.items()},
        "listeners": [{"address": f"{x.address}:{x.port}", "protocol": x.protocol.value,
                       "routes": [f"{','.join(r.hosts) or '*'}{r.path_prefix} -> {r.upstream}"
                                  for r in x.routes]}
                      for x in state.listeners],
    }


def render(result: Translation) -> dict[str, Any]:
    return {
        **render_state(result.state),
        "loadBalancers": {
            key: {"ready": r.ready, "reason": r.reason, "message": r.message, "strategy": r.strategy,
                  "observedGeneration": r.generation, "endpoints": {"ready": r.ready_endpoints,
                                                                    "terminating": r.terminating_endpoints},
                  **({"warnings": list(r.warnings)} if r.warnings else {})}
            for key, r in sorted(result.load_balancers.items())},
        "policies": {key: {"valid": p.valid, "message": p.message, "usedBy": list(p.used_by)}
                     for key, p in sorted(result.policies.items())},
    }


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    got = render(translate(objects_from(FIXTURES / f"{case}.yaml")))
    expected_path = FIXTURES / f"{case}.expected.yaml"
    if os.environ.get("STEELYARD_UPDATE_GOLDEN") or not expected_path.exists():
        expected_path.write_text(yaml.safe_dump(got, sort_keys=False, width=120))
    assert got == yaml.safe_load(expected_path.read_text())


def test_same_state_as_the_file_provider_for_static_endpoints() -> None:
    text = """\
apiVersion: steelyard.dev/v1alpha1
kind: BalancerPolicy
metadata: {name: p}
spec: {strategy: {type: LeastConnections}}
---
apiVersion: steelyard.dev/v1alpha1
kind: LoadBalancer
metadata: {name: web}
spec:
  policyRef: {name: p}
  hosts: [my-domain.com]
  ports: [{name: http, port: 8080, address: 127.0.0.1}]
  endpoints: [{address: "127.0.0.1:9001", weight: 2}, {address: "127.0.0.1:9002"}]
"""
    from_file = load_texts([("lb.yaml", text)]).state
    docs = list(yaml.safe_load_all(text))
    from_kube = translate(ClusterObjects(policies=[docs[0]], load_balancers=[docs[1]])).state
    assert from_file is not None
    assert dict(from_kube.upstreams) == dict(from_file.upstreams)
    assert from_kube.listeners == from_file.listeners


def test_an_endpoint_leaving_and_a_pod_becoming_ready_change_only_that_upstream() -> None:
    base = objects_from(FIXTURES / "selector_pods.yaml")
    before = translate(base).state
    pods = [dict(p) for p in base.pods]
    for p in pods:
        if p["metadata"]["name"] == "web-b":
            p["status"] = {**p["status"], "conditions": [{"type": "Ready", "status": "True"}]}
    after = translate(ClusterObjects(base.load_balancers, base.policies, pods)).state
    (key,) = before.upstreams
    ids_before = {e.id for e in before.upstreams[key].endpoints}
    ids_after = {e.id for e in after.upstreams[key].endpoints}
    assert ids_after - ids_before == {"10.0.0.2:9002"}
    assert before.listeners == after.listeners


@pytest.mark.parametrize(("labels", "expected"), [
    ({"app": "web"}, True), ({"app": "web", "track": "canary"}, False), ({"app": "db"}, False),
    ({"app": "web", "tier": "a"}, True),
])
def test_label_selector_semantics(labels: dict[str, str], expected: bool) -> None:
    selector = LabelSelector.model_validate({
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "track", "operator": "NotIn", "values": ["canary"]},
                             {"key": "gone", "operator": "DoesNotExist"}]})
    assert matches_selector(selector, labels) is expected


def test_nothing_at_all_is_an_empty_state() -> None:
    result = translate(ClusterObjects())
    assert not result.state.upstreams and not result.state.listeners and result.state.source == "kubernetes"
