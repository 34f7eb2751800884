"""The test API server (`kube_support.ApiServer`) on its own, with plain HTTP requests: it must behave like a
Kubernetes API server for everything Steelyard relies on, or the provider's tests prove nothing."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from kube_support import KubeApi, api_path, balancer_policy, kube_api, pod

LB_API = "steelyard.dev/v1alpha1"
POLICIES = api_path(LB_API, "BalancerPolicy", "default")


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with kube_api() as server:
        yield server


class Watch:
    """A raw watch stream read line by line over one HTTP connection."""

    def __init__(self, api: KubeApi, path: str, **params: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
        query = "&".join(f"{k}={v}" for k, v in {"watch": "true", **params}.items())
        self.conn.request("GET", f"{path}?{query}")
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type") == "application/json"

    def next(self) -> dict[str, Any]:
        line = self.response.readline()
        assert line, "the stream ended"
        return dict(json.loads(line))

    def ended(self) -> bool:
        return self.response.readline() == b""

    def close(self) -> None:
        self.conn.close()


def test_create_sets_uid_resource_version_generation_and_timestamp(api: KubeApi) -> None:
    a = api.create(balancer_policy("a"))
    b = api.create(balancer_policy("b"))
    assert a["metadata"]["uid"] and a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["generation"] == 1
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert a["metadata"]["creationTimestamp"].endswith("Z")
    status, answer = api.request("POST", POLICIES, balancer_policy("a"))
    assert (status, answer["kind"], answer["reason"]) == (409, "Status", "AlreadyExists")
    listed = api._ok("GET", POLICIES)
    assert listed["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]
    generated = api.create({**balancer_policy(""), "metadata": {"generateName": "gen-"}})
    assert generated["metadata"]["name"].startswith("gen-") and len(generated["metadata"]["name"]) == 9


def test_generation_moves_on_spec_changes_only(api: KubeApi) -> None:
    api.create(balancer_policy("p"))
    labelled = api.patch(LB_API, "BalancerPolicy", "p", {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 1
    changed = api.patch(LB_API, "BalancerPolicy", "p", {"spec": {"strategy": {"type": "Random"}}})
    assert changed["metadata"]["generation"] == 2
    assert int(changed["metadata"]["resourceVersion"]) > int(labelled["metadata"]["resourceVersion"])
    same = api.patch(LB_API, "BalancerPolicy", "p", {"spec": {"strategy": {"type": "Random"}}})
    assert same["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]  # a no-op


def test_status_subresource_is_split_from_the_main_resource(api: KubeApi) -> None:
    created = api.create({**balancer_policy("p"), "status": {"ignored": True}})
    assert "status" not in created
    with_status = api.patch(LB_API, "BalancerPolicy", "p", {"status": {"ready": 1}, "spec": {"x": 1}},
                            subresource="status")
    assert with_status["status"] == {"ready": 1} and "x" not in with_status["spec"]
    assert with_status["metadata"]["generation"] == 1
    main = api.patch(LB_API, "BalancerPolicy", "p", {"status": {"ready": 99}, "spec": {"x": 2}})
    assert main["status"] == {"ready": 1} and main["spec"]["x"] == 2
    replaced = api.replace({**main, "status": {"ready": 5}})
    assert replaced["status"] == {"ready": 1}
    status, answer = api.request("PUT", api_path(LB_API, "BalancerPolicy", "default", "p", "status"),
                                 {**replaced, "status": {"ready": 7}})
    assert status == 200 and answer["status"] == {"ready": 7} and answer["spec"]["x"] == 2


def test_put_replaces_and_a_stale_resource_version_conflicts(api: KubeApi) -> None:
    created = api.create(balancer_policy("p"))
    first = api.replace({**created, "spec": {"strategy": {"type": "Maglev"}}})
    assert first["spec"] == {"strategy": {"type": "Maglev"}} and first["metadata"]["generation"] == 2
    assert first["metadata"]["uid"] == created["metadata"]["uid"]
    status, answer = api.request("PUT", api_path(LB_API, "BalancerPolicy", "default", "p"),
                                 {**created, "spec": {}})
    assert (status, answer["reason"]) == (409, "Conflict")
    status, answer = api.request("PATCH", api_path(LB_API, "BalancerPolicy", "default", "p"),
                                 {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}},
                                 content_type="application/merge-patch+json")
    assert status == 409


def test_merge_patch_removes_with_null_and_strategic_patch_is_refused_for_crs(api: KubeApi) -> None:
    ring = {"strategy": {"type": "RingHash", "hashOn": {"header": "h"}}}
    api.create({**balancer_policy("p"), "spec": ring})
    patched = api.patch(LB_API, "BalancerPolicy", "p", {"spec": {"strategy": {"hashOn": None}}})
    assert patched["spec"] == {"strategy": {"type": "RingHash"}}
    status, answer = api.request("PATCH", api_path(LB_API, "BalancerPolicy", "default", "p"), {"spec": {}},
                                 content_type="application/strategic-merge-patch+json")
    assert status == 415 and answer["kind"] == "Status"


def test_errors_are_status_objects_with_exactly_application_json(api: KubeApi) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("GET", api_path(LB_API, "LoadBalancer", "default", "missing"))
    response = conn.getresponse()
    assert response.status == 404
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read())["code"] == 404


def test_label_and_field_selectors_on_list(api: KubeApi) -> None:
    for name, labels in [("a", {"app": "web", "tier": "1"}), ("b", {"app": "web"}), ("c", {"app": "db"})]:
        api.create(pod(name, labels=labels))

    def names(selector: str) -> list[str]:
        return [p["metadata"]["name"] for p in api.list("v1", "Pod", labels=selector)]

    assert names("app=web") == ["a", "b"]
    assert names("app==web,tier") == ["a"]
    assert names("app!=web") == ["c"]
    assert names("app in (db, cache)") == ["c"]
    assert names("app notin (db),!tier") == ["b"]
    listed = api._ok("GET", api_path("v1", "Pod", "default"), params={"fieldSelector": "metadata.name=b"})
    assert [p["metadata"]["name"] for p in listed["items"]] == ["b"]
    assert api.list("v1", "Pod", namespace="other") == []
    assert len(api.list("v1", "Pod", namespace=None)) == 3  # all namespaces


def test_watch_from_a_version_replays_later_events_with_selector_transitions(api: KubeApi) -> None:
    api.create(pod("a", labels={"app": "web"}))
    since = api._ok("GET", api_path("v1", "Pod", "default"))["metadata"]["resourceVersion"]
    api.create(pod("b", labels={"app": "web"}))
    api.patch("v1", "Pod", "a", {"metadata": {"labels": {"app": "db"}}})  # leaves the selection
    watch = Watch(api, api_path("v1", "Pod", "default"), resourceVersion=since, labelSelector="app=web")
    try:
        first, second = watch.next(), watch.next()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "b")
        assert (second["type"], second["object"]["metadata"]["name"]) == ("DELETED", "a")
        api.patch("v1", "Pod", "a", {"metadata": {"labels": {"app": "web"}}})  # comes back: live
        live = watch.next()
        assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "a")
        assert int(live["object"]["metadata"]["resourceVersion"]) > int(since)
        api.create(pod("c", labels={"app": "db"}))  # not selected: nothing
        api.patch("v1", "Pod", "b", {"spec": {"nodeName": "n1"}})
        modified = watch.next()
        assert (modified["type"], modified["object"]["metadata"]["name"]) == ("MODIFIED", "b")
    finally:
        watch.close()


def test_watch_without_a_version_starts_with_the_current_objects(api: KubeApi) -> None:
    api.create(balancer_policy("p"))
    watch = Watch(api, POLICIES, resourceVersion="0")
    try:
        event = watch.next()
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "p")
    finally:
        watch.close()


def test_a_too_old_version_is_410_gone_and_tests_can_force_it(api: KubeApi) -> None:
    api.create(balancer_policy("p"))
    current = api._ok("GET", POLICIES)["metadata"]["resourceVersion"]
    watch = Watch(api, POLICIES, resourceVersion=current)
    api.expire_history()
    try:
        gone = watch.next()
        assert gone["type"] == "ERROR" and gone["object"]["code"] == 410
        assert gone["object"]["reason"] == "Expired"
        assert watch.ended()
    finally:
        watch.close()
    again = Watch(api, POLICIES, resourceVersion="1")
    try:
        assert again.next()["object"]["code"] == 410
    finally:
        again.close()
    fresh = Watch(api, POLICIES, resourceVersion=api._ok("GET", POLICIES)["metadata"]["resourceVersion"])
    try:
        api.create(balancer_policy("q"))
        assert fresh.next()["type"] == "ADDED"
    finally:
        fresh.close()


def test_dropped_watches_end_cleanly_and_timeout_seconds_is_honoured(api: KubeApi) -> None:
    watch = Watch(api, POLICIES, resourceVersion="0")
    api.drop_watches()
    try:
        assert watch.ended()
    finally:
        watch.close()
    timed = Watch(api, POLICIES, resourceVersion="0", timeoutSeconds="1")
    try:
        assert timed.ended()
    finally:
        timed.close()


def test_delete_with_finalizers_sets_deletion_timestamp_until_they_are_removed(api: KubeApi) -> None:
    api.create({**balancer_policy("p"), "metadata": {"name": "p", "finalizers": ["test/hold"]}})
    deleting = api.delete(LB_API, "BalancerPolicy", "p")
    assert deleting["metadata"]["deletionTimestamp"]
    assert api.get(LB_API, "BalancerPolicy", "p") is not None
    api.patch(LB_API, "BalancerPolicy", "p", {"metadata": {"finalizers": None}})
    assert api.get(LB_API, "BalancerPolicy", "p") is None


def test_a_deleted_pod_terminates_until_the_kubelets_final_delete(api: KubeApi) -> None:
    api.create(pod("a", labels={"app": "web"}))
    terminating = api.delete("v1", "Pod", "a")
    assert terminating["metadata"]["deletionTimestamp"]
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 30
    assert api.get("v1", "Pod", "a") is not None
    api.finish_pod_deletion("a")
    assert api.get("v1", "Pod", "a") is None


def test_discovery_lists_groups_and_resources(api: KubeApi) -> None:
    status, groups = api.request("GET", "/apis")
    assert status == 200 and "steelyard.dev" in {g["name"] for g in groups["groups"]}
    status, resources = api.request("GET", "/apis/steelyard.dev/v1alpha1")
    names = {r["name"] for r in resources["resources"]}
    assert {"loadbalancers", "loadbalancers/status", "balancerpolicies"} <= names
    status, core = api.request("GET", "/api/v1")
    assert status == 200 and "pods" in {r["name"] for r in core["resources"]}


def test_the_server_goes_away_and_comes_back_on_the_same_port_with_its_objects(api: KubeApi) -> None:
    api.create(balancer_policy("p"))
    port = api.port
    api.go_away()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/version")
    api.come_back()
    assert api.port == port
    assert api.get(LB_API, "BalancerPolicy", "p") is not None


def test_cluster_scoped_namespaces_and_crds(api: KubeApi) -> None:
    namespace = api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    assert "namespace" not in namespace["metadata"]
    status, listed = api.request("GET", "/api/v1/namespaces")
    assert status == 200 and [n["metadata"]["name"] for n in listed["items"]] == ["shop"]
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "loadbalancers.steelyard.dev"}, "spec": {"group": "steelyard.dev"}}
    status, created = api.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert status == 201 and created["metadata"]["generation"] == 1
    status, fetched = api.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/loadbalancers.steelyard.dev")
    assert status == 200 and fetched["spec"] == {"group": "steelyard.dev"}


def test_kmocks_own_errors_carry_exactly_application_json(api: KubeApi) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("GET", "/apis/nosuch.group/v1")
    response = conn.getresponse()
    assert response.status == 404 and response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read())["kind"] == "Status"
