"""The CRDs rendered from the models: structural, valid, committed as rendered, and accepting exactly the
resources the models accept (examples, the embedded default, bad ones refused)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from steelyard.config import build_state, default_config_path
from steelyard.kube import crds
from steelyard.model import BalancerPolicy, BalancerPolicySpec, LoadBalancer

ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = ROOT / "deploy" / "crds"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests promise to work on
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml")) + [default_config_path()]


def schema_of(kind: str) -> dict[str, Any]:
    return crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(crds.to_json_schema(schema_of(kind)))


@pytest.mark.parametrize("definition", crds.all_crds(), ids=lambda d: d["spec"]["names"]["kind"])
def test_committed_crd_is_the_rendered_one(definition: dict[str, Any]) -> None:
    path = CRD_DIR / crds.file_name(definition)
    assert path.is_file(), f"{path} is missing; regenerate with `{crds.REGENERATE}`"
    assert path.read_text(encoding="utf-8") == crds.to_yaml(definition), (
        f"{path.relative_to(ROOT)} has drifted from the models in steelyard.model; "
        f"regenerate with `{crds.REGENERATE}` and commit the result")


def test_no_stray_files_in_crd_dir() -> None:
    expected = {crds.file_name(d) for d in crds.all_crds()}
    assert {p.name for p in CRD_DIR.glob("*.yaml")} == expected


@pytest.mark.parametrize("kind", list(crds.KINDS))
def test_schema_is_structural(kind: str) -> None:
    assert list(crds.structural_problems(schema_of(kind))) == []


@pytest.mark.parametrize("definition", crds.all_crds(), ids=lambda d: d["spec"]["names"]["kind"])
def test_crd_is_a_valid_apiextensions_object(definition: dict[str, Any]) -> None:
    kubernetes_validate.validate(definition, K8S_VERSION, strict=True)


def test_names_subresource_and_columns() -> None:
    lb, bp = crds.crd("LoadBalancer"), crds.crd("BalancerPolicy")
    assert lb["metadata"]["name"] == "loadbalancers.steelyard.dev"
    assert bp["metadata"]["name"] == "balancerpolicies.steelyard.dev"
    for d, short in ((lb, "slb"), (bp, "sbp")):
        spec = d["spec"]
        assert spec["group"] == "steelyard.dev" and spec["scope"] == "Namespaced"
        assert short in spec["names"]["shortNames"] and "steelyard" in spec["names"]["categories"]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    lb_columns = {c["name"]: c["jsonPath"] for c in lb["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert lb_columns["Strategy"] == ".status.strategy"
    assert lb_columns["Endpoints"] == ".status.endpoints.ready"
    assert lb_columns["Age"] == ".metadata.creationTimestamp"
    bp_columns = {c["name"]: c["jsonPath"] for c in bp["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert bp_columns == {"Strategy": ".spec.strategy.type", "Age": ".metadata.creationTimestamp"}


def test_unions_enums_and_maps() -> None:
    lb = schema_of("LoadBalancer")["properties"]["spec"]
    port = lb["properties"]["ports"]["items"]["properties"]
    assert port["targetPort"] == {"x-kubernetes-int-or-string": True, "nullable": True}
    assert port["protocol"]["enum"] == ["HTTP", "TCP"] and port["protocol"]["default"] == "HTTP"
    assert lb["properties"]["policyRef"]["nullable"] is True
    assert lb["required"] == ["ports"] and lb["properties"]["ports"]["minItems"] == 1
    labels = lb["properties"]["selector"]["properties"]["matchLabels"]
    assert labels == {"type": "object", "additionalProperties": {"type": "string"}}
    bp = schema_of("BalancerPolicy")["properties"]["spec"]["properties"]
    aggression = bp["slowStart"]["properties"]["aggression"]
    assert aggression["minimum"] == 0 and aggression["exclusiveMinimum"] is True
    assert bp["strategy"]["properties"]["timeSlice"]["default"] == "1s"
    assert "WeightedRoundRobin" in bp["strategy"]["properties"]["type"]["enum"]


@pytest.mark.parametrize("kind", list(crds.KINDS))
def test_api_server_defaulting_matches_pydantic_defaults(kind: str) -> None:
    """An object defaulted by the API server under the CRD means what pydantic's defaults make of it."""
    spec_schema = schema_of(kind)["properties"]["spec"]
    minimal = {"ports": [{"port": 8080}], "selector": {"matchLabels": {"app": "web"}}} \
        if kind == "LoadBalancer" else {}
    filled = crds.apply_defaults(spec_schema, copy.deepcopy(minimal))
    model = LoadBalancer if kind == "LoadBalancer" else BalancerPolicy
    spec_model = model.model_fields["spec"].annotation
    assert isinstance(spec_model, type)
    assert spec_model.model_validate(filled) == spec_model.model_validate(minimal)
    if kind == "LoadBalancer":  # defaults reach the items of arrays too
        assert filled["ports"][0]["protocol"] == "HTTP"
        assert filled["ports"][0]["address"] == "0.0.0.0"
    if kind == "BalancerPolicy":
        assert BalancerPolicySpec.model_validate(crds.apply_defaults(spec_schema, {})) == BalancerPolicySpec()


def test_defaults_the_api_server_writes_are_not_taken_as_given() -> None:
    """The API server fills in `choices: 2`, `timeSlice: 1s` and the health check's path and interval on
    every BalancerPolicy; the checks for parameters that do not apply (strategy parameters, health check
    settings without a type) must not flag them in Kubernetes (partial) mode."""
    spec_schema = schema_of("BalancerPolicy")["properties"]["spec"]
    for strategy in ({}, {"type": "LeastConnections"}, {"type": "RingHash", "hashOn": {"header": "X-User"}}):
        filled = crds.apply_defaults(spec_schema, {"strategy": strategy, "healthCheck": {}})
        assert filled["strategy"]["choices"] == 2 and filled["healthCheck"]["path"] == "/healthz"
        policy = BalancerPolicy.model_validate(_bp(**filled))
        result = build_state([policy], "kubernetes", partial=True, require_endpoints=False)
        assert result.errors == (), [str(e) for e in result.errors]
    given = BalancerPolicy.model_validate(_bp(**crds.apply_defaults(spec_schema,
                                                                    {"strategy": {"choices": 3}})))
    flagged = build_state([given], "kubernetes", partial=True, require_endpoints=False).errors
    assert [e.field for e in flagged] == ["spec.strategy.choices"]


def _go_keys(value: Any) -> Any:
    """sigs.k8s.io/yaml (what kubectl reads YAML with) turns boolean keys into the strings "true"/"false"."""
    if isinstance(value, dict):
        return {(str(k).lower() if isinstance(k, bool) else k): _go_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_keys(v) for v in value]
    return value


def kubectl_load_all(text: str) -> list[Any]:
    """YAML as kubectl reads it: YAML 1.1 like go-yaml v2 (`on`, `yes`, `no` are booleans), then JSON keys.
    Steelyard's own loader reads YAML 1.2 booleans, so a file can mean more to it than to a cluster."""
    return [_go_keys(d) for d in yaml.safe_load_all(text) if d is not None]


# Documents that Steelyard's loader reads as meant but kubectl does not (not ours to edit here).
KUBECTL_READS_DIFFERENTLY: dict[str, str] = {}  # example -> why kubectl would read it otherwise


def _documents() -> list[Any]:
    out = []
    for path in EXAMPLES:
        for i, doc in enumerate(kubectl_load_all(path.read_text(encoding="utf-8"))):
            where = f"{path.name}#{i}"
            reason = KUBECTL_READS_DIFFERENTLY.get(where)
            marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
            out.append(pytest.param(where, doc, id=where, marks=marks))
    return out


@pytest.mark.parametrize(("where", "doc"), _documents())
def test_examples_and_default_match_the_crd_schema(where: str, doc: dict[str, Any]) -> None:
    errors = sorted(validator(doc["kind"]).iter_errors(doc), key=str)
    assert not errors, f"{where}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def _lb(**spec: Any) -> dict[str, Any]:
    base = {"ports": [{"port": 8080, "targetPort": "http"}], "selector": {"matchLabels": {"app": "web"}}}
    return {"apiVersion": "steelyard.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": "x"},
            "spec": {**base, **spec}}


def _bp(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "steelyard.dev/v1alpha1", "kind": "BalancerPolicy", "metadata": {"name": "p"},
            "spec": spec}


@pytest.mark.parametrize("doc", [
    _lb(ports=[]),
    _lb(ports=[{"port": 70000}]),
    _lb(ports=[{"port": 80, "protocol": "UDP"}]),
    _lb(ports=[{"port": 80, "targetPort": 1.5}]),
    _lb(hosts="example.com"),
    _lb(bogus=True),
    _lb(selector={"matchLabels": {"app": 1}}),
    _bp(strategy={"type": "Fastest"}),
    _bp(strategy={"timeSlice": "5"}),
    _bp(slowStart={"aggression": 1}),
    _bp(slowStart={"window": "10s", "aggression": 0}),
    _bp(retries={"on": ["500"]}),
    _bp(healthCheck={"interval": 5}),
    _bp(timeouts={"connect": "0ms"}),
    _bp(timeouts={"request": "0s", "idle": "0m0s"}),
    _bp(healthCheck={"type": "HTTP", "interval": "0.0s"}),
    _bp(strategy={"type": "TimeSlicedRoundRobin", "timeSlice": "0s"}),
    _bp(outlierDetection={"baseEjectionTime": "0s"}),
    _bp(slowStart={"window": "0ms"}),
], ids=lambda d: str(d["spec"])[:60])
def test_schema_refuses_what_the_model_refuses(doc: dict[str, Any]) -> None:
    assert list(validator(doc["kind"]).iter_errors(doc)), "the CRD schema accepted a bad resource"
    model = LoadBalancer if doc["kind"] == "LoadBalancer" else BalancerPolicy
    with pytest.raises(ValueError):
        model.model_validate(doc)


@pytest.mark.parametrize("doc", [
    _lb(ports=[{"port": 80, "targetPort": 8080}]),
    _lb(ports=[{"port": 80, "targetPort": None}]),
    _lb(policyRef=None, service={"name": "web"}, selector=None),
    _bp(strategy={"type": "RingHash", "hashOn": {"sourceIP": {}}}),
    _bp(retries={"on": ["502", 503, "reset"]}),
    _bp(slowStart={"window": "1m30s", "aggression": 0.5}),
    _bp(timeouts={"connect": "0.5s", "request": "0s100ms", "idle": "1h"}),
], ids=lambda d: str(d["spec"])[:60])
def test_schema_accepts_what_the_model_accepts(doc: dict[str, Any]) -> None:
    errors = list(validator(doc["kind"]).iter_errors(doc))
    assert not errors, [e.message for e in errors]
