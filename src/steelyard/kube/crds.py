"""The `LoadBalancer` and `BalancerPolicy` CustomResourceDefinitions, rendered from the pydantic models.

Pure: values in, dicts out. pydantic's JSON schema is not a structural schema as Kubernetes wants it
(apiextensions.k8s.io/v1, "Specifying a structural schema"), so it is rewritten:

- every `$ref` is inlined and `$defs`, `title` and `const` go;
- `X | None` (pydantic's `anyOf: [X, {type: null}]`) becomes X with `nullable: true`;
- `int | str` becomes `x-kubernetes-int-or-string: true` (no `type`, as the rules require);
- `additionalProperties: false` is dropped: the API server prunes unknown fields instead (and a client
  using server-side field validation, kubectl's default, is told about them);
- `additionalProperties: true` becomes `x-kubernetes-preserve-unknown-fields: true`;
- JSON Schema 2020-12's numeric `exclusiveMinimum: N` becomes OpenAPI 3.0's `minimum: N` +
  `exclusiveMinimum: true`;
- a default that is a whole object is written as `{}` when the nested defaults rebuild it exactly (the
  API server applies nested defaults after the parent's), else as the object without its nulls;
  `null` defaults are dropped.

Status is not modelled: it is written by the elected leader, `x-kubernetes-preserve-unknown-fields`.
The fields the printer columns read (and which the status writer is expected to fill):

- `LoadBalancer.status.strategy`: the strategy in effect (the policy's `spec.strategy.type`);
- `LoadBalancer.status.endpoints.{ready,terminating,ejected}`: endpoint counts (integers);
- `LoadBalancer.status.conditions[]`: `Ready` and `Degraded` conditions (`type`, `status`, `reason`,
  `message`, `lastTransitionTime`), and `status.observedGeneration`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from steelyard.model import API_GROUP, BalancerPolicy, LoadBalancer, parse_duration

VERSION = "v1alpha1"
CATEGORIES = ["steelyard"]
REGENERATE = "steelyard manifests crds --write deploy/crds"

# kind -> (model, plural, short names, printer columns)
_Column = dict[str, Any]
_AGE: _Column = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
KINDS: dict[str, tuple[type[BaseModel], str, list[str], list[_Column]]] = {
    "LoadBalancer": (LoadBalancer, "loadbalancers", ["slb"], [
        {"name": "Strategy", "type": "string", "jsonPath": ".status.strategy",
         "description": "the balancing strategy in effect"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
         "description": "whether the load balancer serves its configuration"},
        {"name": "Endpoints", "type": "integer", "jsonPath": ".status.endpoints.ready",
         "description": "endpoints taking new requests"},
        {"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts", "priority": 1},
        _AGE,
    ]),
    "BalancerPolicy": (BalancerPolicy, "balancerpolicies", ["sbp"], [
        {"name": "Strategy", "type": "string", "jsonPath": ".spec.strategy.type"},
        _AGE,
    ]),
}

# The config loader accepts unquoted status codes (`on: [502, 503]`) and turns them into strings, so the
# CRD accepts both spellings too: the same YAML applies to a cluster and runs from a file.
_INT_OR_STRING_ENUMS = {("spec", "retries", "on", "[]")}


class SchemaError(ValueError):
    """The model uses a JSON schema construct this renderer cannot express structurally."""


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """Inline a top-level `$ref`, keeping the sibling keys (a field's default, description)."""
    out = dict(node)
    while "$ref" in out:
        ref = out.pop("$ref")
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith("#/$defs/") or name not in defs:
            raise SchemaError(f"cannot resolve {ref!r}")
        out = {**defs[name], **out}
    return out


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """What the API server's defaulting makes of `value` under a rendered (structural) schema: objects'
    missing properties get their defaults, top-down, and so do the items of arrays."""
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for name, prop in schema["properties"].items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        if name in out:
            out[name] = apply_defaults(prop, out[name])
    return out


def _structural(node: Mapping[str, Any], defs: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = _resolve(node, defs)
    nullable = False
    if "anyOf" in node:
        members = [_resolve(m, defs) for m in node["anyOf"]]
        if any(m.get("type") == "null" for m in members):
            nullable = True
            members = [m for m in members if m.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        types = sorted(str(m.get("type")) for m in members)
        if len(members) == 1:
            node = {**members[0], **rest}
        elif types == ["integer", "string"] and all(set(m) == {"type"} for m in members):
            node = {**rest, "x-kubernetes-int-or-string": True}
        else:
            raise SchemaError(f"{'.'.join(path) or 'root'}: a union of {types} has no structural form")
    if "allOf" in node or "oneOf" in node or "not" in node:
        raise SchemaError(f"{'.'.join(path) or 'root'}: allOf/oneOf/not are not rendered")

    out: dict[str, Any] = {}
    if node.get("description"):
        out["description"] = node["description"]
    if "type" in node:
        out["type"] = node["type"]
    if node.get("x-kubernetes-int-or-string"):
        out["x-kubernetes-int-or-string"] = True
    if "const" in node:
        out["enum"] = [node["const"]]
    if "enum" in node:
        out["enum"] = list(node["enum"])
    for key in ("format", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems",
                "maxItems", "uniqueItems", "multipleOf"):
        if key in node:
            out[key] = node[key]
    if "exclusiveMinimum" in node:
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if "items" in node:
        out["items"] = _structural(node["items"], defs, (*path, "[]"))
    if "properties" in node:
        out["properties"] = {name: _structural(prop, defs, (*path, name))
                             for name, prop in node["properties"].items()}
        if node.get("required"):
            out["required"] = list(node["required"])
    extra = node.get("additionalProperties")
    if extra is True or (out.get("type") == "object" and "properties" not in out and extra is None):
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        out["additionalProperties"] = _structural(extra, defs, (*path, "{}"))
    if node.get("type") == "object" and "properties" not in node and extra is False:
        out["properties"] = {}  # an empty marker object such as `sourceIP: {}`
    if nullable:
        out["nullable"] = True
    if path in _INT_OR_STRING_ENUMS:
        out.pop("type", None)
        out["x-kubernetes-int-or-string"] = True
        out["enum"] = out["enum"] + [int(v) for v in out["enum"] if str(v).isdigit()]
    if node.get("default") is not None:
        out["default"] = _default(out, node["default"])
    return out


def _default(schema: Mapping[str, Any], value: Any) -> Any:
    value = _strip_nulls(value)
    if isinstance(value, dict) and _same(apply_defaults(schema, {}), value):
        return {}
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal, counting two spellings of one duration (`60s`, `1m`) as equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            return parse_duration(a) == parse_duration(b)
        except ValueError:
            return False
    return bool(a == b)


def _root_schema(model: type[BaseModel]) -> dict[str, Any]:
    source = model.model_json_schema(by_alias=True, mode="validation")
    defs = source.get("$defs", {})
    props = source["properties"]
    spec = _structural(props["spec"], defs, ("spec",))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    if "spec" in source.get("required", ()):
        schema["required"] = ["spec"]
    return schema


def crd(kind: str) -> dict[str, Any]:
    """One CustomResourceDefinition as a plain dict, ready for YAML."""
    model, plural, short_names, columns = KINDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "steelyard", "app.kubernetes.io/part-of": "steelyard"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short_names),
                "categories": list(CATEGORIES),
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": copy.deepcopy(columns),
                "schema": {"openAPIV3Schema": _root_schema(model)},
            }],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]


def file_name(definition: Mapping[str, Any]) -> str:
    """`loadbalancers.steelyard.dev.yaml`: the file under deploy/crds/ holding this CRD."""
    return f"{definition['metadata']['name']}.yaml"


def to_yaml(definition: Mapping[str, Any]) -> str:
    header = f"# Rendered from steelyard.model by `{REGENERATE}`; do not edit.\n"
    return header + yaml.safe_dump(dict(definition), sort_keys=False, width=110, allow_unicode=True)


def structural_problems(schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """Where a rendered schema breaks the structural rules this renderer promises (for tests)."""
    here = path or "<root>"
    for key in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const"):
        if key in schema:
            yield f"{here}: has {key}"
    escape = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in schema and not escape:
        yield f"{here}: has no type"
    if schema.get("x-kubernetes-int-or-string") and "type" in schema:
        yield f"{here}: int-or-string with a type"
    if schema.get("additionalProperties") is False or schema.get("additionalProperties") is True:
        yield f"{here}: additionalProperties is a boolean"
    if "properties" in schema and isinstance(schema.get("additionalProperties"), dict):
        yield f"{here}: both properties and additionalProperties"
    for name, prop in schema.get("properties", {}).items():
        yield from structural_problems(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        yield from structural_problems(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield from structural_problems(schema["additionalProperties"], f"{path}{{}}")


def to_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) accepting what the API server accepts under a rendered structural
    schema: `nullable` allows null, int-or-string allows both, OpenAPI 3.0's boolean `exclusiveMinimum`
    becomes numeric. Unknown fields are refused, as server-side strict field validation refuses them
    (pruning would drop them silently). For tests and tools; the API server needs no such thing."""
    out: dict[str, Any] = {}
    types: list[str] = []
    if schema.get("x-kubernetes-int-or-string"):
        types = ["integer", "string"]
    elif "type" in schema:
        types = [schema["type"]]
    if types and schema.get("nullable"):
        types.append("null")
    if types:
        out["type"] = types if len(types) > 1 else types[0]
    if "enum" in schema:
        out["enum"] = list(schema["enum"]) + ([None] if schema.get("nullable") else [])
    for key in ("pattern", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "multipleOf"):
        if key in schema:
            out[key] = schema[key]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if bound in schema:
            out[exclusive if schema.get(exclusive) else bound] = schema[bound]
    if "items" in schema:
        out["items"] = to_json_schema(schema["items"])
    if "properties" in schema:
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
        if schema.get("required"):
            out["required"] = list(schema["required"])
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    elif isinstance(schema.get("additionalProperties"), Mapping):
        out["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    return out
