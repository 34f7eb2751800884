"""The one module that talks to the Kubernetes API (lightkube, async); everything else sees plain dicts.

`KubeClient` offers what the provider, the leader election and the status writer need: list, watch from a
resourceVersion, get, create, replace, merge-patch of the status subresource, and Events. Objects go in and
come out as the API's own JSON (camelCase dicts), so `steelyard.kube.translate` stays pure and testable
with YAML fixtures. Errors become `KubeError` (with the HTTP code); 410 Gone is `Gone`, so an informer
knows to relist; anything that is not an answer from the server (refused, reset, timeout) is
`KubeUnavailable`.

Custom resources are patched with `PatchType.MERGE` (RFC 7386): real API servers refuse the strategic
merge patch lightkube uses by default for custom resources.

429 Too Many Requests (API priority and fairness) is `TooManyRequests`, with the server's `Retry-After`
in seconds, so callers wait as long as they are told. Lists are paginated (`limit`/`continue`,
`page_size` objects a page), so a big cluster is not one giant response. Watches are read here rather
than by lightkube's watch loop: they ask for bookmarks (`allowWatchBookmarks`), which carry only a
resourceVersion (lightkube would try to decode them as whole objects and fail on kinds with required
fields, such as EndpointSlice), a stream the server ends cleanly simply ends (the informer resumes it),
and an error answer's body is read before it is reported.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import AsyncClient, KubeConfig, operators
from lightkube.core.exceptions import ApiError
from lightkube.core.selector import build_selector
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Pod, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from steelyard.model import API_GROUP

__all__ = ["Gone", "KubeClient", "KubeError", "KubeUnavailable", "ResourceKind", "TooManyRequests"]

ALL_NAMESPACES = "*"

logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request would drown the log


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """A kind Steelyard reads or writes, by name; the lightkube class stays inside this module."""

    name: str  # "LoadBalancer", "Pod", ...

    def __str__(self) -> str:
        return self.name


LOAD_BALANCERS = ResourceKind("LoadBalancer")
BALANCER_POLICIES = ResourceKind("BalancerPolicy")
PODS = ResourceKind("Pod")
SERVICES = ResourceKind("Service")
ENDPOINT_SLICES = ResourceKind("EndpointSlice")
LEASES = ResourceKind("Lease")
EVENTS = ResourceKind("Event")

_LoadBalancer = create_namespaced_resource(API_GROUP, "v1alpha1", "LoadBalancer", "loadbalancers")
_BalancerPolicy = create_namespaced_resource(API_GROUP, "v1alpha1", "BalancerPolicy", "balancerpolicies")

_CLASSES: dict[str, Any] = {
    "LoadBalancer": _LoadBalancer,
    "BalancerPolicy": _BalancerPolicy,
    "Pod": Pod,
    "Service": Service,
    "EndpointSlice": EndpointSlice,
    "Lease": Lease,
    "Event": Event,
}
_STATUS: dict[str, Any] = {"LoadBalancer": _LoadBalancer.Status, "BalancerPolicy": _BalancerPolicy.Status}


class KubeError(Exception):
    """An error answer from the API server."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class Gone(KubeError):
    """410 Gone: the resourceVersion is too old (compacted); relist."""


class TooManyRequests(KubeError):
    """429: the server sheds load; wait `retry_after` seconds (None: it did not say) before asking again."""

    def __init__(self, code: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(code, reason, message)
        self.retry_after = retry_after


class KubeUnavailable(Exception):
    """No answer from the API server (refused, reset, timed out, stream broken)."""


def _retry_after(header: str | None, details: Any) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds), else from the Status' `retryAfterSeconds`."""
    for value in (header, (details or {}).get("retryAfterSeconds") if isinstance(details, dict) else None):
        try:
            if value is not None and float(value) >= 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _status_error(code: int, reason: str, message: str, retry_after: float | None = None) -> KubeError:
    if code == 410:
        return Gone(code, reason, message)
    if code == 429:
        return TooManyRequests(code, reason, message, retry_after)
    return KubeError(code, reason, message)


def _error(exc: BaseException) -> BaseException:
    if isinstance(exc, ApiError):
        status = exc.status
        header = exc.response.headers.get("Retry-After") if exc.response is not None else None
        details = status.details.to_dict() if status.details is not None else None
        return _status_error(int(status.code or 0), str(status.reason or ""), str(status.message or ""),
                             _retry_after(header, details))
    if isinstance(exc, httpx2.HTTPStatusError):
        response = exc.response
        try:
            text = response.text[:200]
        except httpx2.ResponseNotRead:  # a streamed answer nobody read
            text = ""
        return _status_error(response.status_code, response.reason_phrase, text,
                             _retry_after(response.headers.get("Retry-After"), None))
    if isinstance(exc, (httpx2.HTTPError, OSError)):
        return KubeUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


def _event_error(status: Mapping[str, Any]) -> KubeError:
    """A watch stream's ERROR event (a Status object) as an exception."""
    details = status.get("details")
    return _status_error(int(status.get("code") or 0), str(status.get("reason") or ""),
                         str(status.get("message") or ""), _retry_after(None, details))


def _plain(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict())


def _namespace(namespace: str | None) -> str:
    return ALL_NAMESPACES if namespace is None else namespace


def _labels(selector: Mapping[str, str | None] | None) -> dict[str, Any] | None:
    """`{key: value}` is key=value; `{key: None}` is "the label exists"."""
    if not selector:
        return None
    return {k: operators.exists() if v is None else v for k, v in selector.items()}


class KubeClient:
    """An async lightkube client; `namespace=None` in calls means all namespaces."""

    def __init__(self, config: Any, field_manager: str = "steelyard", page_size: int = 500) -> None:
        self._client = AsyncClient(config, timeout=httpx2.Timeout(10.0), field_manager=field_manager,
                                   trust_env=False)
        self.page_size = page_size  # objects per list page (`limit`); the rest follows by `continue`

    @classmethod
    def from_server(cls, url: str, token: str | None = None) -> KubeClient:
        """A client for an API server URL (tests, `kubectl proxy`). lightkube's `from_server` insists on a
        user, so the config is built from a dict with a token user."""
        config = KubeConfig.from_dict({
            "clusters": [{"name": "api", "cluster": {"server": url}}],
            "users": [{"name": "steelyard", "user": {"token": token or "none"}}],
            "contexts": [{"name": "api", "context": {"cluster": "api", "user": "steelyard"}}],
            "current-context": "api",
        })
        return cls(config)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        """In a pod: the service account; else `kubeconfig`, `$KUBECONFIG` or `~/.kube/config`."""
        if kubeconfig:
            return cls(KubeConfig.from_file(os.path.expanduser(kubeconfig)))
        return cls(KubeConfig.from_env())

    async def close(self) -> None:
        await self._client.close()

    # -- reads -----------------------------------------------------------------------------------------

    async def list(self, kind: ResourceKind, namespace: str | None,
                   labels: Mapping[str, str | None] | None = None) -> tuple[list[dict[str, Any]], str]:
        """Every object (of `namespace`, or all); with the list's resourceVersion to watch from. Read in
        pages of `page_size`: every page is from the first page's snapshot (an expired `continue` is 410
        `Gone`: list again)."""
        try:
            found = self._client.list(_CLASSES[kind.name], namespace=_namespace(namespace),
                                      labels=_labels(labels), chunk_size=self.page_size or None)
            items = [_plain(obj) async for obj in found]
            return items, str(found.resourceVersion)
        except Exception as exc:
            raise _error(exc) from exc

    async def watch(self, kind: ResourceKind, namespace: str | None, resource_version: str,
                    labels: Mapping[str, str | None] | None = None, *, bookmarks: bool = True,
                    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Events after `resource_version` as (ADDED|MODIFIED|DELETED, object), and with `bookmarks`
        (BOOKMARK, {"metadata": {"resourceVersion": ...}}). The iteration ends when the server ends the
        stream (resume from the last version seen); errors are raised (`Gone` means relist)."""
        cls = _CLASSES[kind.name]
        generic = self._client._client  # lightkube's request builder; its watch loop is not used
        selector = _labels(labels)
        request = generic.prepare_request("list", res=cls, namespace=_namespace(namespace), watch=True,
                                          params={
            "resourceVersion": resource_version,
            "labelSelector": build_selector(selector) if selector else None,
            "allowWatchBookmarks": "true" if bookmarks else None,
        })
        http: Any = generic
        try:
            response = await http.send(generic._client.build_request(
                request.method, request.url, params=request.params, timeout=generic._watch_timeout),
                stream=True)
        except Exception as exc:
            raise _error(exc) from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                http.raise_for_status(response)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                event_type, raw = str(event.get("type")), event.get("object") or {}
                if event_type == "ERROR":
                    raise _event_error(raw)
                if event_type == "BOOKMARK":
                    version = (raw.get("metadata") or {}).get("resourceVersion")
                    yield event_type, {"metadata": {"resourceVersion": str(version)}}
                    continue
                yield event_type, _plain(cls.from_dict(raw))
        except KubeError:
            raise
        except Exception as exc:
            raise _error(exc) from exc
        finally:
            await response.aclose()

    async def get(self, kind: ResourceKind, name: str, namespace: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return _plain(await self._client.get(_CLASSES[kind.name], name, namespace=namespace))
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise _error(exc) from exc
        except Exception as exc:
            raise _error(exc) from exc

    # -- writes ----------------------------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        cls = _CLASSES[str(obj["kind"])]
        try:
            created = await self._client.create(cls.from_dict(dict(obj)))  # namespace: the object's
            return _plain(created)
        except Exception as exc:
            raise _error(exc) from exc

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the object's resourceVersion: 409 (`KubeError.code`) when someone else wrote first."""
        cls = _CLASSES[str(obj["kind"])]
        meta = obj["metadata"]
        try:
            replaced = await self._client.replace(cls.from_dict(dict(obj)), meta["name"],
                                                  namespace=meta.get("namespace"))
            return _plain(replaced)
        except Exception as exc:
            raise _error(exc) from exc

    async def patch_status(self, kind: ResourceKind, name: str, namespace: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch `.status` through the status subresource."""
        try:
            patched = await self._client.patch(_STATUS[kind.name], name, {"status": dict(status)},
                                               namespace=namespace, patch_type=PatchType.MERGE)
            return _plain(patched)
        except Exception as exc:
            raise _error(exc) from exc

    async def delete(self, kind: ResourceKind, name: str, namespace: str) -> None:
        try:
            await self._client.delete(_CLASSES[kind.name], name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise _error(exc) from exc
        except Exception as exc:
            raise _error(exc) from exc
