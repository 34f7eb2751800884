"""A Kubernetes API server for tests: kmock's `KubernetesEmulator`, extended until it behaves like a real one
for everything Steelyard uses, served over real HTTP on 127.0.0.1 from a background thread.

kmock 0.8 (pinned: this reaches into its request parsing and discovery scaffold) serves the API over HTTP,
but out of the box it sets no uid/resourceVersion/generation, ignores label selectors, never answers 410,
does not split the status subresource, answers PUT with 404 and sends error bodies with a Content-Type
lightkube does not recognise. `ApiServer` keeps kmock's HTTP front end, request parsing and discovery
(`/api`, `/apis`, `/apis/GROUP/VERSION`), and replaces its object store for the resources registered in
`KINDS` with one that models:

- `metadata.uid`, `creationTimestamp`, `generateName`;
- one global, monotonically increasing `resourceVersion` (etcd's revision), on objects and on lists;
- `metadata.generation`: 1 on create, +1 when anything but metadata and status changes;
- label selectors (`=`, `==`, `!=`, `in`, `notin`, `k`, `!k`) and `metadata.name`/`metadata.namespace` field
  selectors on list and watch; a watcher sees ADDED/DELETED when an object starts/stops matching;
- watch from a resourceVersion (the events after it, from a bounded history), `timeoutSeconds`, and the
  real server's answer to a version older than the history: HTTP 200 with one `ERROR` event carrying a
  410 `Expired` Status. `expire_history()` forces that for every open and future watch from older versions;
  `drop_watches()` ends every open stream cleanly (the client must resume from its last version);
- the status subresource: writes to `/status` change only `.status`; writes to the main resource keep the
  stored `.status` (for kinds with a status subresource); POST ignores `.status` of those kinds, too;
- PUT (replace) with optimistic concurrency (a stale `metadata.resourceVersion` is 409 Conflict), and
  PATCH with `application/merge-patch+json` (RFC 7386; a `resourceVersion` in the patch is a precondition);
  strategic merge patch is refused with 415 for custom resources, as real servers do, and treated as a
  merge patch for built-in kinds (close enough for the flat fields Steelyard patches);
- deletion: an object with finalizers gets a `deletionTimestamp` and stays until they are removed; a Pod
  deleted with a grace period stays, terminating, until a delete with `gracePeriodSeconds=0` (the kubelet's
  final delete) — tests play the kubelet with `finish_pod_deletion`;
- error bodies as `Status` objects with `Content-Type: application/json` exactly (kmock's own errors too);
- the cluster-scoped `/api/v1/namespaces[/NAME]` paths, which kmock's path parser cannot read;
- paginated lists: `limit` and `continue` (every page from the first page's snapshot and version,
  `remainingItemCount`; a token from before a compaction, or one of the 64 oldest, is 410 `Expired`);
- watch bookmarks: with `allowWatchBookmarks=true`, a BOOKMARK carrying the current resourceVersion every
  `bookmark_interval` seconds of quiet (and whenever a test calls `send_bookmarks`); `compact()` drops
  the history as etcd's compaction does while open watches carry on;
- 429 Too Many Requests with `Retry-After` (and `details.retryAfterSeconds`) for the next N requests a test
  selects (`throttle`), as API priority and fairness answers when its queues are full;
- custom resources checked against their installed CRD's `openAPIV3Schema` on every write (the committed
  deploy/crds/ are installed by default): unknown fields pruned (a `Warning` header each; 400 with
  `fieldValidation=Strict`) unless `x-kubernetes-preserve-unknown-fields`, `default`s applied (a null in a
  non-nullable field is defaulted or dropped), then validated: 422 `Invalid` with `details.causes` naming
  each field (type, nullable, int-or-string, enum, pattern, bounds, lengths, item counts, required, and
  `metadata.name` as a DNS subdomain).

Not modelled (see docs/ARCHITECTURE.md, "Kubernetes provider"): controllers (no EndpointSlice controller,
no kubelet, no garbage collection by ownerReferences), CEL rules and formats in CRD schemas, admission
webhooks, server-side apply, JSON patch, RBAC and authentication.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import itertools
import json
import random
import re
import string
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import rendering

LOCALHOST = "127.0.0.1"
LB_API = "steelyard.dev/v1alpha1"  # our resources' apiVersion

# -- resources --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    kind: str
    namespaced: bool = True
    status: bool = False  # has a status subresource
    custom: bool = False  # a custom resource (no strategic merge patch)


KINDS: dict[tuple[str, str, str], Kind] = {
    ("", "v1", "pods"): Kind("Pod", status=True),
    ("", "v1", "services"): Kind("Service", status=True),
    ("", "v1", "events"): Kind("Event"),
    ("", "v1", "namespaces"): Kind("Namespace", namespaced=False, status=True),
    ("events.k8s.io", "v1", "events"): Kind("Event"),
    ("discovery.k8s.io", "v1", "endpointslices"): Kind("EndpointSlice"),
    ("coordination.k8s.io", "v1", "leases"): Kind("Lease"),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"):
        Kind("CustomResourceDefinition", namespaced=False, status=True),
    ("steelyard.dev", "v1alpha1", "loadbalancers"): Kind("LoadBalancer", status=True, custom=True),
    ("steelyard.dev", "v1alpha1", "balancerpolicies"): Kind("BalancerPolicy", status=True, custom=True),
}

CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")

PLURALS = {"LoadBalancer": "loadbalancers", "BalancerPolicy": "balancerpolicies", "Pod": "pods",
           "Service": "services", "EndpointSlice": "endpointslices", "Lease": "leases", "Event": "events",
           "Namespace": "namespaces"}


def api_path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
    """`('steelyard.dev/v1alpha1', 'LoadBalancer', 'default', 'web')` -> its URL path."""
    base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    plural = PLURALS.get(kind, kind.lower() + "s")
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class ApiStatus(Exception):
    """An error answer: a `Status` object with this code, reason and message."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message
        self.details = details
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        out = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
               "code": self.code, "reason": self.reason, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> aiohttp.web.Response:
    # Exactly `application/json`: lightkube raises ApiError only for that Content-Type.
    return aiohttp.web.Response(body=json.dumps(data).encode(), status=status,
                                headers={"Content-Type": "application/json", **(headers or {})})


def _error(exc: ApiStatus) -> aiohttp.web.Response:
    return _json(exc.body(), exc.code, exc.headers)


# -- label and field selectors ------------------------------------------------------------------------------


def _split_outside_parens(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


Requirement = Callable[[Mapping[str, str]], bool]


def parse_label_selector(text: str) -> list[Requirement]:
    """Kubernetes' label selector syntax (apimachinery `labels.Parse`); ValueError when malformed."""
    out: list[Requirement] = []
    for term in _split_outside_parens(text):
        words = term.split()
        if len(words) >= 2 and words[1] in ("in", "notin"):
            key, op = words[0], words[1]
            rest = term.split(None, 2)[2].strip()
            if not (rest.startswith("(") and rest.endswith(")")):
                raise ValueError(f"bad set in {term!r}")
            values = frozenset(v.strip() for v in rest[1:-1].split(",") if v.strip())
            if op == "in":
                out.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                out.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            out.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            out.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            key = term[1:].strip()
            out.append(lambda labels, k=key: k not in labels)
        elif term and " " not in term:
            out.append(lambda labels, k=term: k in labels)
        else:
            raise ValueError(f"cannot parse label selector term {term!r}")
    return out


def parse_field_selector(text: str) -> list[Callable[[Mapping[str, Any]], bool]]:
    out: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_outside_parens(text):
        negate = "!=" in term
        key, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        if key not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f"field label not supported: {key}")
        attr = key.split(".", 1)[1]
        out.append(lambda obj, a=attr, v=value, n=negate: (obj["metadata"].get(a) == v) != n)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- custom resources: structural schema pruning, defaulting and validation ------------------------------
#
# What apiextensions-apiserver does to a custom resource on every write, in its order: prune the fields the
# schema does not know (unless `x-kubernetes-preserve-unknown-fields`), apply `default`s (a null in a field
# that is not `nullable` is replaced by its default, or dropped when it has none), then validate. Written
# here from the Kubernetes documentation ("Specifying a structural schema", "Defaulting", "Validation"),
# not from the product's renderer, so a renderer bug shows as a disagreement.


@dataclass(frozen=True)
class Cause:
    """One `details.causes` entry of a 422 Invalid answer."""

    reason: str  # FieldValueRequired | FieldValueInvalid | FieldValueNotSupported | FieldValueTypeInvalid...
    field: str  # spec.ports[0].port
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _preserves(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields")
                or schema.get("x-kubernetes-int-or-string"))


def prune(schema: Mapping[str, Any], value: Any, path: str = "", pruned: list[str] | None = None) -> Any:
    """Drop what the structural schema does not specify; `pruned` collects the dropped fields' paths."""
    pruned = pruned if pruned is not None else []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if props is not None and key in props:
                out[key] = prune(props[key], item, _child(path, key), pruned)
            elif isinstance(extra, Mapping):
                out[key] = prune(extra, item, f"{path}[{key}]", pruned)
            elif _preserves(schema) or extra is True:
                out[key] = item
            else:
                pruned.append(_child(path, key))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(schema["items"], item, f"{path}[{i}]", pruned) for i, item in enumerate(value)]
    return value


def default(schema: Mapping[str, Any], value: Any) -> Any:
    """Apply `default`s top-down (a defaulted object gets its own properties' defaults too)."""
    if isinstance(value, dict):
        out = dict(value)
        for key, prop in (schema.get("properties") or {}).items():
            if out.get(key, _MISSING) is None and not prop.get("nullable"):
                del out[key]  # a null in a non-nullable field: defaulted, or pruned without a default
            if key not in out and "default" in prop:
                out[key] = copy.deepcopy(prop["default"])
            if key in out:
                out[key] = default(prop, out[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            out = {k: default(extra, v) for k, v in out.items()}
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [default(schema["items"], item) for item in value]
    return value


_MISSING = object()

_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def _show(value: Any) -> str:
    return json.dumps(value)


def validate(schema: Mapping[str, Any], value: Any, path: str = "") -> list[Cause]:
    """The causes a real API server would list for `value` under a structural schema (OpenAPI v3 subset
    the CRDs use: type, nullable, int-or-string, enum, pattern, bounds, lengths, item counts, required)."""
    where = path or "<root>"
    if value is None:
        if schema.get("nullable") or _preserves(schema) and "type" not in schema:
            return []
        return [Cause("FieldValueTypeInvalid", where, f'Invalid value: "null": {where} in body must be '
                      f'of type {schema.get("type", "object")}: "null"')]
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _TYPE_CHECKS["integer"](value)):
            return [Cause("FieldValueTypeInvalid", where, f"Invalid value: {_show(value)}: {where} in body "
                          "must be of type integer-or-string")]
    elif "type" in schema and not _TYPE_CHECKS[schema["type"]](value):
        return [Cause("FieldValueTypeInvalid", where, f"Invalid value: {_show(value)}: {where} in body "
                      f"must be of type {schema['type']}: {_show(type(value).__name__)}")]
    causes: list[Cause] = []
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_show(v) for v in schema["enum"])
        causes.append(Cause("FieldValueNotSupported", where,
                            f"Unsupported value: {_show(value)}: supported values: {supported}"))
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(Cause("FieldValueInvalid", where, f"Invalid value: {_show(value)}: {where} in body "
                                f"should match '{schema['pattern']}'"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(Cause("FieldValueInvalid", where, f"Invalid value: {_show(value)}: {where} in body "
                                f"should be at least {schema['minLength']} chars long"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(Cause("FieldValueTooLong", where,
                                f"Too long: may not be more than {schema['maxLength']} bytes"))
    if _TYPE_CHECKS["number"](value):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value <= low if schema.get("exclusiveMinimum") else value < low):
            than = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            causes.append(Cause("FieldValueInvalid", where, f"Invalid value: {_show(value)}: {where} in body "
                                f"should be {than} {low}"))
        if high is not None and (value >= high if schema.get("exclusiveMaximum") else value > high):
            than = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            causes.append(Cause("FieldValueInvalid", where, f"Invalid value: {_show(value)}: {where} in body "
                                f"should be {than} {high}"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(Cause("FieldValueInvalid", where, f"Invalid value: {len(value)}: {where} in body "
                                f"should have at least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(Cause("FieldValueTooMany", where,
                                f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
        if isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                causes += validate(schema["items"], item, f"{path}[{i}]")
    if isinstance(value, dict):
        for name in schema.get("required") or ():
            if name not in value:
                causes.append(Cause("FieldValueRequired", _child(path, name), "Required value"))
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                causes += validate(props[key], item, _child(path, key))
            elif isinstance(extra, Mapping):
                causes += validate(extra, item, f"{path}[{key}]")
    return causes


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiStatus:
    """The API server's 422: `<Kind>.<group> "<name>" is invalid: <field>: <message>[, ...]`."""
    texts = [f"{c.field}: {c.message}" for c in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified = f"{kind}.{group}" if group else kind
    return ApiStatus(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}',
                     details={"name": name, "group": group, "kind": kind,
                              "causes": [c.as_dict() for c in causes]})


def admit_custom_resource(schema: Mapping[str, Any], obj: dict[str, Any], *, kind: str, group: str,
                          strict: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Prune, default and validate one custom resource as the API server does on a write.
    Returns the object to store and the pruned fields (the server's "unknown field" warnings); raises the
    422 Invalid `ApiStatus` (or, with `fieldValidation=Strict`, 400 for unknown fields)."""
    meta = obj.get("metadata") or {}
    pruned: list[str] = []
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    root = {k: v for k, v in schema.items() if k != "properties"}
    root["properties"] = {k: v for k, v in (schema.get("properties") or {}).items()
                          if k not in ("apiVersion", "kind", "metadata")}
    body = prune(root, body, "", pruned)
    if strict and pruned:
        raise ApiStatus(400, "BadRequest", "strict decoding error: " +
                        ", ".join(f'unknown field "{p}"' for p in pruned))
    body = default(root, body)
    causes = validate(root, body)
    name = str(meta.get("name") or "")
    if name and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        causes.insert(0, Cause("FieldValueInvalid", "metadata.name", f"Invalid value: {_show(name)}: a "
                               "lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                               "characters, '-' or '.', and must start and end with an alphanumeric "
                               "character"))
    if causes:
        raise invalid(kind, group, name, causes)
    out = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    out.update(body)
    return out, pruned


CRD_DIR = Path(__file__).resolve().parent.parent / "deploy" / "crds"


def committed_crds() -> list[dict[str, Any]]:
    """The CRDs `make install` applies: the committed files under deploy/crds/."""
    return [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]


# -- the store -------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Watch:
    resource: tuple[str, str, str]
    namespace: str | None
    name: str | None
    labels: list[Requirement]
    fields: list[Callable[[Mapping[str, Any]], bool]]
    queue: asyncio.Queue[tuple[str, dict[str, Any] | None, dict[str, Any] | None] | None] = \
        field(default_factory=asyncio.Queue)
    bookmarks: bool = False  # asked for with allowWatchBookmarks=true

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        labels = meta.get("labels") or {}
        return all(r(labels) for r in self.labels) and all(f(obj) for f in self.fields)

    def event(self, old: dict[str, Any] | None, new: dict[str, Any] | None,
              kind: str) -> dict[str, Any] | None:
        """What this watcher sees of one change: an object leaving the selection is DELETED for it."""
        was, now = self.matches(old), self.matches(new)
        if kind == "DELETED":
            return {"type": "DELETED", "object": new} if was or now else None
        if was and now:
            return {"type": "MODIFIED", "object": new}
        if now:
            return {"type": "ADDED", "object": new}
        if was:
            return {"type": "DELETED", "object": new}
        return None


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ApiServer(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with a faithful object store (see the module's docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store: dict[tuple[tuple[str, str, str], str | None, str], dict[str, Any]] = {}
        self.rv = 0
        self.history: deque[tuple[int, tuple[str, str, str], str, dict[str, Any] | None,
                                  dict[str, Any]]] = deque(maxlen=2000)
        self.compacted_rv = 0  # a watch from a version older than this is answered with 410 Gone
        self.watches: set[_Watch] = set()
        self._warnings: list[str] = []
        self._strict = False
        # 429 Too Many Requests: (requests left to refuse, Retry-After seconds, which requests)
        self._throttle: tuple[int, int, Callable[[str, str, Mapping[str, str]], bool]] | None = None
        self.throttled: list[tuple[float, str, str]] = []  # (monotonic time, method, path) of every 429
        # Paginated lists: the snapshot each continue token reads from (bounded: old tokens expire).
        self._pages: dict[int, tuple[int, list[dict[str, Any]]]] = {}
        self._page_ids = itertools.count(1)
        self.lists: list[dict[str, str]] = []  # the query parameters of every list request
        self.before: Callable[[str, str, Mapping[str, str]], None] | None = None  # a test's hook
        self.bookmarks = True  # False: allowWatchBookmarks is ignored (it is only a hint to the server)
        self.bookmark_interval = 60.0  # seconds between bookmarks on a watch that asked (real: ~1 min)
        self.write_log: list[tuple[str, str, str]] = []  # (method, path, user agent) of every write
        for (group, version, plural), info in KINDS.items():
            self.resources[kmock.resource(group, version, plural)] = kmock.ResourceInfo(
                kind=info.kind, namespaced=info.namespaced, singular=info.kind.lower(),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources={"status"} if info.status else set())

    # -- test-facing operations (call on the server's loop) ----------------------------------------------

    def expire_history(self) -> None:
        """Compact: every version seen so far is too old; open watches get a 410 ERROR event and end."""
        self.rv += 1  # the compaction's own revision: a relist gets a version that is not too old
        self.compacted_rv = self.rv
        self.history.clear()
        for watch in list(self.watches):
            watch.queue.put_nowait(("GONE", None, None))

    def drop_watches(self) -> None:
        """End every open watch stream cleanly (as an API server restart or a load balancer timeout does)."""
        for watch in list(self.watches):
            watch.queue.put_nowait(None)

    def compact(self) -> None:
        """Compact as etcd does: versions older than the current one are gone (a watch or a continue token
        from them is 410 Expired), but open watches carry on, as the real watch cache's do."""
        self.compacted_rv = self.rv
        self.history.clear()

    def send_bookmarks(self) -> None:
        """A BOOKMARK now, carrying the current resourceVersion, on every open watch that asked for them."""
        for watch in list(self.watches):
            if watch.bookmarks:
                watch.queue.put_nowait(("BOOKMARK", None, {"metadata": {"resourceVersion": str(self.rv)}}))

    def throttle(self, count: int, retry_after: int = 1,
                 only: Callable[[str, str, Mapping[str, str]], bool] = lambda method, path, params: True,
                 ) -> None:
        """Answer the next `count` resource requests that `only(method, path, params)` selects with 429
        Too Many Requests and `Retry-After: retry_after`, as API priority and fairness does when a
        priority level's queues are full."""
        self._throttle = (count, retry_after, only)

    def _throttled(self, method: str, path: str, params: Mapping[str, str]) -> None:
        if self._throttle is None:
            return
        count, retry_after, only = self._throttle
        if not only(method, path, params):
            return
        self._throttle = (count - 1, retry_after, only) if count > 1 else None
        self.throttled.append((time.monotonic(), method, path))
        raise ApiStatus(429, "TooManyRequests", "Too many requests, please try again later.",
                        details={"retryAfterSeconds": retry_after},
                        headers={"Retry-After": str(retry_after)})

    # -- HTTP ------------------------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's path parser reads `/api/v1/namespaces[/NAME]` as a namespace prefix and fails: parse the
        Namespace resource's own paths here, everything else as kmock does."""
        parts = raw.path.strip("/").split("/")
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) > 5 or \
                len(parts) == 5 and parts[4] != "status":
            return await super().__call__(raw)
        body = await raw.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = rendering.Request(
            raw_request=raw, url=raw.url, method=raw.method, params=dict(raw.query),
            headers=dict(raw.headers), data=data, body=body, text=body.decode(errors="replace"),
            resource=kmock.resource("", "v1", "namespaces"), namespace=None,
            name=parts[3] if len(parts) > 3 else None, subresource=parts[4] if len(parts) > 4 else None)
        try:
            return await self._handle(request)
        except ApiStatus as exc:
            return _error(exc)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """kmock's own errors (unknown discovery paths, parse failures) with lightkube's Content-Type too."""
        if isinstance(exc, kmock.KubernetesError):
            status = ApiStatus(exc.status, exc.reason or type(exc).__name__, exc.message or repr(exc))
        else:
            status = ApiStatus(500, type(exc).__name__, repr(exc))
        return _json(status.body(), status.code)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        key = (res.group, res.version, res.plural) if res is not None else None
        if key is None or res.plural is None:  # discovery: kmock's scaffold answers from `resources`
            return await super()._handle(request)
        if key not in KINDS:
            return _json(ApiStatus(404, "NotFound", f"the server could not find the requested resource "
                                   f"({request.method} {request.url.path})").body(), 404)
        try:
            return await self._serve(request, key, KINDS[key])
        except ApiStatus as exc:
            return _error(exc)

    async def _serve(self, request: rendering.Request, key: tuple[str, str, str],
                     info: Kind) -> aiohttp.web.StreamResponse:
        method = str(request.method.value).upper()
        params = dict(request.params or {})
        if self.before is not None:
            self.before(method, request.url.path, params)
        self._throttled(method, request.url.path, params)
        self._warnings = []
        self._strict = params.get("fieldValidation") == "Strict"
        response = await self._serve_one(request, key, info, method, params)
        for warning in self._warnings:  # the API server's "unknown field" warnings (RFC 7234 299)
            response.headers.add("Warning", f'299 - "{warning}"')
        return response

    async def _serve_one(self, request: rendering.Request, key: tuple[str, str, str], info: Kind,
                         method: str, params: Mapping[str, str]) -> aiohttp.web.StreamResponse:
        if method != "GET":
            agent = (request.headers or {}).get("User-Agent", "")
            self.write_log.append((method, request.url.path, agent))
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, key, params)
        if method == "GET" and request.name is None:
            return _json(self._list(request, key, info, params))
        if request.subresource not in (None, "status"):
            raise ApiStatus(404, "NotFound", f"no subresource {request.subresource!r}")
        if request.subresource == "status" and not info.status:
            raise ApiStatus(404, "NotFound", f"{info.kind} has no status subresource")
        if method == "GET":
            return _json(self._get(key, request.namespace, request.name))
        if method == "POST" and request.name is None:
            return _json(self._create(key, info, request.namespace, request.data), 201)
        if method == "PUT" and request.name:
            return _json(self._replace(key, info, request))
        if method == "PATCH" and request.name:
            return _json(self._patch(key, info, request))
        if method == "DELETE" and request.name:
            return _json(self._delete(key, info, request.namespace, request.name, params))
        raise ApiStatus(405, "MethodNotAllowed", f"{method} is not supported here")

    # -- reads -----------------------------------------------------------------------------------------

    def _get(self, key: tuple[str, str, str], namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get((key, namespace, name))
        if obj is None:
            raise ApiStatus(404, "NotFound", f"{key[2]} {name!r} not found")
        return obj

    def _selection(self, request: rendering.Request, key: tuple[str, str, str],
                   params: Mapping[str, str]) -> _Watch:
        try:
            labels = parse_label_selector(params.get("labelSelector", ""))
            fields = parse_field_selector(params.get("fieldSelector", ""))
        except ValueError as exc:
            raise ApiStatus(400, "BadRequest", str(exc)) from exc
        return _Watch(key, request.namespace, request.name, labels, fields)

    def _list(self, request: rendering.Request, key: tuple[str, str, str], info: Kind,
              params: Mapping[str, str]) -> dict[str, Any]:
        """A list, whole or in pages: with `limit`, a `continue` token reads the rest of the same snapshot
        (the first page's resourceVersion); a token older than the compacted history is 410 Expired."""
        self.lists.append(dict(params))
        try:
            limit = int(params.get("limit") or 0)
        except ValueError as exc:
            raise ApiStatus(400, "BadRequest", f"invalid limit {params.get('limit')!r}") from exc
        token = params.get("continue")
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                page_id, rv, offset = int(decoded["id"]), int(decoded["rv"]), int(decoded["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ApiStatus(400, "BadRequest", "continue key is not valid") from exc
            if rv < self.compacted_rv or page_id not in self._pages:
                raise ApiStatus(410, "Expired", "The provided continue parameter is too old to display a "
                                "consistent list result. You can start a new list without the continue "
                                "parameter.")
            version, items = self._pages[page_id]
        else:
            selection = self._selection(request, key, params)
            ordered = sorted(self.store.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
            items = [obj for (k, _, _), obj in ordered if k == key and selection.matches(obj)]
            version, page_id, offset = self.rv, 0, 0
        meta: dict[str, Any] = {"resourceVersion": str(version)}
        page = items[offset:]
        if limit > 0 and len(page) > limit:
            if not page_id:
                page_id = next(self._page_ids)
                self._pages[page_id] = (version, items)
                for old in sorted(self._pages)[:-64]:  # the server keeps few snapshots: old tokens expire
                    del self._pages[old]
            end = offset + limit
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"id": page_id, "rv": version, "start": end}).encode()).decode()
            meta["remainingItemCount"] = len(items) - end
            page = items[offset:end]
        api_version = f"{key[0]}/{key[1]}" if key[0] else key[1]
        return {"apiVersion": api_version, "kind": f"{info.kind}List", "metadata": meta, "items": page}

    async def _watch(self, request: rendering.Request, key: tuple[str, str, str],
                     params: Mapping[str, str]) -> aiohttp.web.StreamResponse:
        watch = self._selection(request, key, params)
        watch.bookmarks = self.bookmarks and params.get("allowWatchBookmarks") == "true"
        info = KINDS[key]
        since = params.get("resourceVersion") or ""
        backlog: list[dict[str, Any]] = []
        gone = False
        # Snapshot and registration with no await in between: no event can fall in a gap.
        if since in ("", "0"):
            for (k, _, _), obj in sorted(self.store.items(), key=lambda kv: (kv[0][1] or "", kv[0][2])):
                if k == key and watch.matches(obj):
                    backlog.append({"type": "ADDED", "object": obj})
        elif not since.isdigit():
            raise ApiStatus(400, "BadRequest", f"invalid resourceVersion {since!r}")
        elif int(since) < self.compacted_rv:
            gone = True
        else:
            for rv, k, kind, old, new in self.history:
                if rv > int(since) and k == key:
                    event = watch.event(old, new, kind)
                    if event is not None:
                        backlog.append(event)
        self.watches.add(watch)
        raw = request._raw_request
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            if gone:
                await self._write_gone(response, since)
                return response
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            deadline = time.monotonic() + timeout if timeout else None
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                now = time.monotonic()
                left = None if deadline is None else max(0.0, deadline - now)
                if watch.bookmarks:
                    left = max(0.0, next_bookmark - now) if left is None else min(left, next_bookmark - now)
                try:
                    item = await asyncio.wait_for(watch.queue.get(), left)
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    # Quiet until the bookmark is due: every event up to now was delivered (commits queue
                    # synchronously), so the current version is safe to resume from.
                    item = ("BOOKMARK", None, {"metadata": {"resourceVersion": str(self.rv)}})
                if item is None:
                    break
                kind, old, new = item
                if kind == "GONE":
                    await self._write_gone(response, since)
                    break
                if kind == "BOOKMARK":
                    next_bookmark = time.monotonic() + self.bookmark_interval
                    assert new is not None
                    bookmark = {"kind": info.kind, "apiVersion": f"{key[0]}/{key[1]}" if key[0] else key[1],
                                "metadata": new["metadata"]}
                    line = json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n"
                    await response.write(line)
                    continue
                event = watch.event(old, new, kind)
                if event is not None:
                    await response.write(json.dumps(event).encode() + b"\n")
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
        finally:
            self.watches.discard(watch)
        return response

    @staticmethod
    async def _write_gone(response: aiohttp.web.StreamResponse, since: str) -> None:
        status = ApiStatus(410, "Expired", f"too old resource version: {since}").body()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
            await response.write_eof()

    # -- writes ----------------------------------------------------------------------------------------

    def _commit(self, key: tuple[str, str, str], kind: str, old: dict[str, Any] | None,
                new: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        ident = (key, new["metadata"].get("namespace"), new["metadata"]["name"])
        if kind == "DELETED":
            self.store.pop(ident, None)
        else:
            self.store[ident] = new
        if len(self.history) == self.history.maxlen:  # the oldest event falls out: its version is too old
            self.compacted_rv = max(self.compacted_rv, self.history[0][0])
        self.history.append((self.rv, key, kind, old, new))
        for watch in list(self.watches):
            if watch.resource == key:
                watch.queue.put_nowait((kind, old, new))
        return new

    def schema(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        """The openAPIV3Schema of the stored CRD serving `key`'s group, version and plural (None: none)."""
        group, version, plural = key
        crd = self.store.get((CRDS, None, f"{plural}.{group}"))
        for served in ((crd or {}).get("spec") or {}).get("versions") or ():
            if served.get("name") == version:
                found = (served.get("schema") or {}).get("openAPIV3Schema")
                return dict(found) if found else None
        return None

    def _admit(self, key: tuple[str, str, str], info: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """A custom resource whose CRD is installed is pruned, defaulted and validated against its schema."""
        if not info.custom:
            return obj
        schema = self.schema(key)
        if schema is None:
            return obj
        admitted, pruned = admit_custom_resource(schema, obj, kind=info.kind, group=key[0],
                                                 strict=getattr(self, "_strict", False))
        self._warnings.extend(f'unknown field "{p}"' for p in pruned)
        return admitted

    def _create(self, key: tuple[str, str, str], info: Kind, namespace: str | None,
                data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ApiStatus(400, "BadRequest", "the body must be a JSON object")
        obj = copy.deepcopy(data)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise ApiStatus(422, "Invalid", "metadata.name: Required value")
        if info.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise ApiStatus(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        ident = (key, meta.get("namespace"), meta["name"])
        if ident in self.store:
            raise ApiStatus(409, "AlreadyExists", f"{key[2]} {meta['name']!r} already exists")
        if info.status:
            obj.pop("status", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        for transient in ("deletionTimestamp", "resourceVersion"):
            meta.pop(transient, None)
        return self._commit(key, "ADDED", None, self._admit(key, info, obj))

    def _content_type(self, request: rendering.Request) -> str:
        headers = {k.lower(): v for k, v in (request.headers or {}).items()}
        return headers.get("content-type", "application/json").split(";")[0].strip()

    def _update(self, key: tuple[str, str, str], info: Kind, request: rendering.Request,
                new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        """Finish a replace or a patch: protected fields, the status split, generation, finalizers."""
        meta = new.setdefault("metadata", {})
        if meta.get("name", old["metadata"]["name"]) != old["metadata"]["name"]:
            raise ApiStatus(400, "BadRequest", "the name of the object does not match the URL")
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise ApiStatus(409, "Conflict", "Operation cannot be fulfilled: the object has been modified; "
                            "please apply your changes to the latest version and try again")
        if request.subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            result = self._admit(key, info, result)
        else:
            result = new
            if info.status:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            keep = ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp",
                    "deletionGracePeriodSeconds")
            for field_name in keep:
                if field_name in old["metadata"]:
                    result["metadata"][field_name] = old["metadata"][field_name]
                else:
                    result["metadata"].pop(field_name, None)
            result = self._admit(key, info, result)
            if _spec_part(result) != _spec_part(old):
                result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if result == old:
            return old  # a no-op write does not bump the resourceVersion (as the real server)
        released = result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers")
        committed = self._commit(key, "MODIFIED", old, result)
        if released:
            return self._commit(key, "DELETED", committed, copy.deepcopy(committed))
        return committed

    def _replace(self, key: tuple[str, str, str], info: Kind, request: rendering.Request) -> dict[str, Any]:
        old = self._get(key, request.namespace, request.name or "")
        if not isinstance(request.data, dict):
            raise ApiStatus(400, "BadRequest", "the body must be a JSON object")
        return self._update(key, info, request, copy.deepcopy(request.data), old)

    def _patch(self, key: tuple[str, str, str], info: Kind, request: rendering.Request) -> dict[str, Any]:
        old = self._get(key, request.namespace, request.name or "")
        content_type = self._content_type(request)
        if content_type == "application/strategic-merge-patch+json" and info.custom:
            raise ApiStatus(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                            "accepted media types include: application/json-patch+json, "
                            "application/merge-patch+json, application/apply-patch+yaml")
        if content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise ApiStatus(415, "UnsupportedMediaType", f"this emulator does not model {content_type}")
        if not isinstance(request.data, dict):
            raise ApiStatus(400, "BadRequest", "the patch must be a JSON object")
        patched = merge_patch(copy.deepcopy(old), request.data)
        # A resourceVersion in a merge patch is a precondition, not a change.
        wanted = (request.data.get("metadata") or {}).get("resourceVersion")
        patched["metadata"]["resourceVersion"] = wanted or old["metadata"]["resourceVersion"]
        return self._update(key, info, request, patched, old)

    def _delete(self, key: tuple[str, str, str], info: Kind, namespace: str | None, name: str,
                params: Mapping[str, str]) -> dict[str, Any]:
        old = self._get(key, namespace, name)
        grace = params.get("gracePeriodSeconds")
        meta = old["metadata"]
        graceful_pod = info.kind == "Pod" and grace != "0"
        if meta.get("finalizers") or graceful_pod:
            if meta.get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            if graceful_pod:
                new["metadata"]["deletionGracePeriodSeconds"] = int(grace or 30)
            return self._commit(key, "MODIFIED", old, new)
        return self._commit(key, "DELETED", old, copy.deepcopy(old))


# -- running it on 127.0.0.1 in a thread -----------------------------------------------------------------


class KubeApi:
    """An `ApiServer` on 127.0.0.1 served by a background thread's event loop.

    Tests talk to it over plain HTTP (`create`, `patch`, `get`, ...), as any client would.
    `go_away()`/`come_back()` close and reopen the listening socket on the same port, keeping the objects.
    With `crds=True` (the default) the committed CRDs (deploy/crds/) are installed first, as `make install`
    does, so LoadBalancers and BalancerPolicies are pruned, defaulted and validated against their schema.
    """

    def __init__(self, crds: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: ApiServer | None = None
        self._web: aiohttp.web.Server | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.port = 0
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="kube-api", daemon=True)
        self._thread.start()
        ready.wait(10)
        self.call(self._open)
        if crds:
            for definition in committed_crds():
                self.call(lambda d=definition: self.server._create(  # type: ignore[union-attr]
                    CRDS, KINDS[CRDS], None, d))

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` (a coroutine function or a plain one) on the server's loop; return its result."""

        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(15)

    async def _open(self) -> None:
        if self.server is None:
            self.server = ApiServer()
            await self.server.__aenter__()
        self._web = aiohttp.web.Server(self.server)
        self._listener = await self.loop.create_server(self._web, LOCALHOST, self.port, reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            assert self._web is not None
            self.server.drop_watches()  # type: ignore[union-attr]
            await self._web.shutdown(0.5)
            await self._listener.wait_closed()
            self._listener = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def go_away(self) -> None:
        """Stop serving: close the listening socket and every open connection (objects are kept)."""
        self.call(self._close)

    def come_back(self) -> None:
        self.call(self._open)

    def expire_history(self) -> None:
        self.call(lambda: self.server.expire_history())  # type: ignore[union-attr]

    def drop_watches(self) -> None:
        self.call(lambda: self.server.drop_watches())  # type: ignore[union-attr]

    def throttle(self, count: int, retry_after: int = 1,
                 only: Callable[[str, str, Mapping[str, str]], bool] = lambda method, path, params: True,
                 ) -> None:
        self.call(lambda: self.server.throttle(count, retry_after, only))  # type: ignore[union-attr]

    def list_requests(self) -> list[dict[str, str]]:
        """The query parameters of every list request so far."""
        return list(self.call(lambda: list(self.server.lists)))  # type: ignore[union-attr]

    def throttled(self) -> list[tuple[float, str, str]]:
        return list(self.call(lambda: list(self.server.throttled)))  # type: ignore[union-attr]

    def send_bookmarks(self) -> None:
        self.call(lambda: self.server.send_bookmarks())  # type: ignore[union-attr]

    def compact(self) -> None:
        self.call(lambda: self.server.compact())  # type: ignore[union-attr]

    def current_version(self) -> str:
        return str(self.call(lambda: self.server.rv))  # type: ignore[union-attr]

    def watch_count(self) -> int:
        return int(self.call(lambda: len(self.server.watches)))  # type: ignore[union-attr]

    def writes(self) -> list[tuple[str, str, str]]:
        return list(self.call(lambda: list(self.server.write_log)))  # type: ignore[union-attr]

    def close(self) -> None:
        async def stop() -> None:
            await self._close()
            if self.server is not None:
                await self.server.__aexit__(None, None, None)

        with contextlib.suppress(Exception):
            self.call(stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # -- plain HTTP, as a client would --------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        url = self.url + path
        if params:
            url += "?" + "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in params.items())
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read()
            return exc.code, json.loads(text) if text else None

    def _ok(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        status, answer = self.request(method, path, body, **kw)
        if status >= 300:
            raise AssertionError(f"{method} {path}: {status} {answer}")
        return dict(answer)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace", "default") if obj["kind"] != "Namespace" else None
        return self._ok("POST", api_path(obj["apiVersion"], obj["kind"], namespace), dict(obj))

    def get(self, api_version: str, kind: str, name: str,
            namespace: str = "default") -> dict[str, Any] | None:
        status, answer = self.request("GET", api_path(api_version, kind, namespace, name))
        return answer if status == 200 else None

    def list(self, api_version: str, kind: str, namespace: str | None = "default",
             labels: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": labels} if labels else None
        return list(self._ok("GET", api_path(api_version, kind, namespace), params=params)["items"])

    def patch(self, api_version: str, kind: str, name: str, patch: Mapping[str, Any],
              namespace: str = "default", subresource: str | None = None) -> dict[str, Any]:
        return self._ok("PATCH", api_path(api_version, kind, namespace, name, subresource), dict(patch),
                        content_type="application/merge-patch+json")

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self._ok("PUT", api_path(obj["apiVersion"], obj["kind"], meta.get("namespace", "default"),
                                        meta["name"]), dict(obj))

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "default",
               grace: int | None = None) -> dict[str, Any]:
        params = {"gracePeriodSeconds": str(grace)} if grace is not None else None
        return self._ok("DELETE", api_path(api_version, kind, namespace, name), params=params)

    def finish_pod_deletion(self, name: str, namespace: str = "default") -> None:
        """The kubelet's final delete of a terminating pod."""
        self.delete("v1", "Pod", name, namespace, grace=0)


@contextlib.contextmanager
def kube_api(crds: bool = True) -> Iterator[KubeApi]:
    api = KubeApi(crds)
    try:
        yield api
    finally:
        api.close()


# -- objects for tests -------------------------------------------------------------------------------------

_ids = itertools.count(1)


def load_balancer(name: str, *, port: int, selector: Mapping[str, str] | None = None,
                  service: str | None = None, policy: str | None = None, target_port: int | str | None = None,
                  hosts: tuple[str, ...] = (), namespace: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": port, "address": LOCALHOST}]}
    if target_port is not None:
        spec["ports"][0]["targetPort"] = target_port
    if selector is not None:
        spec["selector"] = {"matchLabels": dict(selector)}
    if service is not None:
        spec["service"] = {"name": service}
    if policy is not None:
        spec["policyRef"] = {"name": policy}
    if hosts:
        spec["hosts"] = list(hosts)
    return {"apiVersion": LB_API, "kind": "LoadBalancer",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def balancer_policy(name: str, strategy: str = "RoundRobin", namespace: str = "default",
                    **extra: Any) -> dict[str, Any]:
    return {"apiVersion": LB_API, "kind": "BalancerPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"strategy": {"type": strategy}, **extra}}


def pod(name: str, *, labels: Mapping[str, str], port: int | None = None,
        port_name: str = "http", weight: int | None = None, namespace: str = "default") -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "backend"}
    if port is not None:
        container["ports"] = [{"name": port_name, "containerPort": port}]
    annotations = {"steelyard.dev/weight": str(weight)} if weight is not None else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                         "annotations": annotations},
            "spec": {"containers": [container]}}


def pod_ready_status(ip: str = LOCALHOST, ready: bool = True) -> dict[str, Any]:
    return {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def endpoint_slice(service: str, endpoints: list[dict[str, Any]], *, port: int, port_name: str = "http",
                   name: str | None = None, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service}-{next(_ids)}", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}


def slice_endpoint(ip: str = LOCALHOST, *, ready: bool = True, serving: bool | None = None,
                   terminating: bool = False, pod: str | None = None) -> dict[str, Any]:
    serving = ready if serving is None else serving
    conditions = {"ready": ready, "serving": serving, "terminating": terminating}
    out: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "default"}
    return out


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """`wait_until` for async tests: poll without blocking the loop the code under test runs on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
