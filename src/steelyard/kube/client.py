"""The one module that talks to the Kubernetes API (lightkube, async); everything else sees plain dicts.

`KubeClient` offers what the provider, the leader election and the status writer need: list, watch from a
resourceVersion, get, create, replace, merge-patch of the status subresource, and Events. Objects go in and
come out as the API's own JSON (camelCase dicts), so `steelyard.kube.translate` stays pure and testable
with YAML fixtures. Errors become `KubeError` (with the HTTP code); 410 Gone is `Gone`, so an informer
knows to relist; anything that is not an answer from the server (refused, reset, timeout) is
`KubeUnavailable`.

Custom resources are patched with `PatchType.MERGE` (RFC 7386): real API servers refuse the strategic
merge patch lightkube uses by default for custom resources.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import AsyncClient, KubeConfig, operators
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Pod, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from steelyard.model import API_GROUP

__all__ = ["Gone", "KubeClient", "KubeError", "KubeUnavailable", "ResourceKind"]

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


class KubeUnavailable(Exception):
    """No answer from the API server (refused, reset, timed out, stream broken)."""


def _error(exc: BaseException) -> BaseException:
    if isinstance(exc, ApiError):
        status = exc.status
        code = int(status.code or 0)
        cls = Gone if code == 410 else KubeError
        return cls(code, str(status.reason or ""), str(status.message or ""))
    if isinstance(exc, httpx2.HTTPStatusError):
        code = exc.response.status_code
        cls = Gone if code == 410 else KubeError
        return cls(code, exc.response.reason_phrase, exc.response.text[:200])
    if isinstance(exc, (httpx2.HTTPError, OSError)):
        return KubeUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


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

    def __init__(self, config: Any, field_manager: str = "steelyard") -> None:
        self._client = AsyncClient(config, timeout=httpx2.Timeout(10.0), field_manager=field_manager,
                                   trust_env=False)

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
        """Every object (of `namespace`, or all); with the list's resourceVersion to watch from."""
        try:
            found = self._client.list(_CLASSES[kind.name], namespace=_namespace(namespace),
                                      labels=_labels(labels))
            items = [_plain(obj) async for obj in found]
            return items, str(found.resourceVersion)
        except Exception as exc:
            raise _error(exc) from exc

    async def watch(self, kind: ResourceKind, namespace: str | None, resource_version: str,
                    labels: Mapping[str, str | None] | None = None,
                    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Events after `resource_version` as (ADDED|MODIFIED|DELETED, object). A stream the server ends
        is resumed from the last version seen; errors are raised (`Gone` means relist)."""
        stream = self._client.watch(_CLASSES[kind.name], namespace=_namespace(namespace),
                                    labels=_labels(labels), resource_version=resource_version)
        try:
            async for event_type, obj in stream:
                yield str(event_type), _plain(obj)
        except Exception as exc:
            raise _error(exc) from exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator

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
