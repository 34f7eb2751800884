"""The test API server (`kube_support.ApiServer`) on its own, with plain HTTP requests: it must behave like a
Kubernetes API server for everything Steelyard relies on, or the provider's tests prove nothing."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from kube_support import LB_API, KubeApi, api_path, balancer_policy, kube_api, load_balancer, pod

POLICIES = api_path(LB_API, "BalancerPolicy", "default")


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
    with_status = api.patch(LB_API, "BalancerPolicy", "p",
                            {"status": {"ready": 1}, "spec": {"strategy": {"type": "Random"}}},
                            subresource="status")
    assert with_status["status"] == {"ready": 1}
    assert with_status["spec"]["strategy"]["type"] == "RoundRobin"
    assert with_status["metadata"]["generation"] == 1
    main = api.patch(LB_API, "BalancerPolicy", "p",
                     {"status": {"ready": 99}, "spec": {"strategy": {"type": "Maglev"}}})
    assert main["status"] == {"ready": 1} and main["spec"]["strategy"]["type"] == "Maglev"
    replaced = api.replace({**main, "status": {"ready": 5}})
    assert replaced["status"] == {"ready": 1}
    status, answer = api.request("PUT", api_path(LB_API, "BalancerPolicy", "default", "p", "status"),
                                 {**replaced, "status": {"ready": 7}})
    assert status == 200 and answer["status"] == {"ready": 7}
    assert answer["spec"]["strategy"]["type"] == "Maglev"


def test_put_replaces_and_a_stale_resource_version_conflicts(api: KubeApi) -> None:
    created = api.create(balancer_policy("p"))
    first = api.replace({**created, "spec": {"strategy": {"type": "Maglev"}}})
    assert first["spec"]["strategy"]["type"] == "Maglev" and first["metadata"]["generation"] == 2
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
    assert patched["spec"]["strategy"]["type"] == "RingHash" and "hashOn" not in patched["spec"]["strategy"]
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
           "metadata": {"name": "widgets.example.dev"}, "spec": {"group": "example.dev"}}
    status, created = api.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert status == 201 and created["metadata"]["generation"] == 1
    status, fetched = api.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.dev")
    assert status == 200 and fetched["spec"] == {"group": "example.dev"}


def test_kmocks_own_errors_carry_exactly_application_json(api: KubeApi) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("GET", "/apis/nosuch.group/v1")
    response = conn.getresponse()
    assert response.status == 404 and response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read())["kind"] == "Status"


# -- custom resources: schema validation, defaulting and pruning (the committed CRDs are installed) ----------

LBS = api_path(LB_API, "LoadBalancer", "default")


def test_an_invalid_custom_resource_is_422_invalid_with_causes_naming_the_fields(api: KubeApi) -> None:
    bad = load_balancer("web", port=70000, selector={"app": "web"})
    bad["spec"]["ports"].append({"name": "tcp", "protocol": "UDP"})  # no port, unsupported protocol
    status, answer = api.request("POST", LBS, bad)
    assert (status, answer["kind"], answer["reason"], answer["code"]) == (422, "Status", "Invalid", 422)
    details = answer["details"]
    assert (details["kind"], details["group"], details["name"]) == ("LoadBalancer", "steelyard.dev", "web")
    causes = {c["field"]: c for c in details["causes"]}
    assert causes.keys() == {"spec.ports[0].port", "spec.ports[1].protocol", "spec.ports[1].port"}
    assert causes["spec.ports[0].port"]["reason"] == "FieldValueInvalid"
    assert "less than or equal to 65535" in causes["spec.ports[0].port"]["message"]
    assert causes["spec.ports[1].protocol"]["reason"] == "FieldValueNotSupported"
    assert causes["spec.ports[1].port"]["reason"] == "FieldValueRequired"
    assert answer["message"].startswith('LoadBalancer.steelyard.dev "web" is invalid: [')
    assert api.get(LB_API, "LoadBalancer", "web") is None  # nothing stored
    status, answer = api.request("POST", POLICIES, balancer_policy("p", "Fastest"))
    assert status == 422 and answer["details"]["causes"][0]["field"] == "spec.strategy.type"
    assert '"RoundRobin"' in answer["details"]["causes"][0]["message"]  # lists the supported values
    status, answer = api.request("POST", LBS, {**load_balancer("x", port=80), "spec": {"ports": []}})
    assert status == 422 and "at least 1 items" in answer["message"]
    status, answer = api.request("POST", LBS, {"apiVersion": LB_API, "kind": "LoadBalancer",
                                               "metadata": {"name": "Not_A_Name"}, "spec": {}})
    fields = [c["field"] for c in answer["details"]["causes"]]
    assert status == 422 and fields == ["metadata.name", "spec.ports"]


def test_types_int_or_string_and_patterns(api: KubeApi) -> None:
    for i, (target, ok) in enumerate((("http", True), (8080, True), (1.5, False), ([80], False))):
        lb = load_balancer(f"t{i}", port=80, target_port=target)  # type: ignore[arg-type]
        status, answer = api.request("POST", LBS, lb)
        assert (status == 201) is ok, (target, answer)
        if not ok:
            assert answer["details"]["causes"][0]["reason"] == "FieldValueTypeInvalid"
    status, _ = api.request("POST", POLICIES, balancer_policy("r", retries={"on": [502, "503", "reset"]}))
    assert status == 201
    status, answer = api.request("POST", POLICIES, balancer_policy("s", retries={"on": [500]}))
    assert status == 422 and answer["details"]["causes"][0]["field"] == "spec.retries.on[0]"
    status, answer = api.request("POST", POLICIES, balancer_policy("t", timeouts={"connect": "soon"}))
    assert status == 422 and "should match" in answer["details"]["causes"][0]["message"]
    status, answer = api.request("POST", POLICIES, balancer_policy("u", strategy={"type": 3}))
    assert status == 422


def test_an_invalid_update_is_refused_and_changes_nothing(api: KubeApi) -> None:
    created = api.create(balancer_policy("p"))
    status, answer = api.request("PATCH", api_path(LB_API, "BalancerPolicy", "default", "p"),
                                 {"spec": {"healthCheck": {"interval": "often"}}},
                                 content_type="application/merge-patch+json")
    assert status == 422 and answer["details"]["causes"][0]["field"] == "spec.healthCheck.interval"
    status, answer = api.request("PUT", api_path(LB_API, "BalancerPolicy", "default", "p"),
                                 {**created, "spec": {"strategy": {"type": "Nope"}}})
    assert status == 422
    assert api.get(LB_API, "BalancerPolicy", "p") == created


def test_schema_defaults_are_applied_as_the_products_renderer_expects(api: KubeApi) -> None:
    from steelyard.kube.crds import apply_defaults, crd

    lb = api.create(load_balancer("web", port=80, selector={"app": "web"}))
    assert lb["spec"]["ports"] == [{"name": "http", "port": 80, "address": "127.0.0.1", "protocol": "HTTP"}]
    assert (lb["spec"]["hosts"], lb["spec"]["pathPrefix"], lb["spec"]["endpoints"]) == ([], "/", [])
    assert lb["spec"]["selector"] == {"matchLabels": {"app": "web"}, "matchExpressions": []}
    policy = api.create(balancer_policy("p", "RingHash"))
    assert policy["spec"]["strategy"]["timeSlice"] == "1s"
    assert policy["spec"]["healthCheck"] == {"type": "None", "path": "/healthz", "interval": "5s",
                                             "timeout": "1s", "healthyThreshold": 2, "unhealthyThreshold": 3}
    assert policy["spec"]["retries"] == {"attempts": 2, "on": ["connect-failure", "reset"]}
    assert "outlierDetection" not in policy["spec"]  # nullable, no default
    # The product's own model of defaulting (it decides when a default renders as `{}`) agrees with the
    # server's on objects; it does not descend into arrays (harmless there: it only renders fuller defaults).
    schema = crd("BalancerPolicy")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert apply_defaults(schema, balancer_policy("p", "RingHash")["spec"]) == policy["spec"]
    # A null in a non-nullable field is defaulted; a null in a nullable one is kept.
    nulls = api.create({**balancer_policy("n"), "spec": {"strategy": None, "slowStart": None}})
    assert nulls["spec"]["strategy"]["type"] == "RoundRobin" and nulls["spec"]["slowStart"] is None


def test_unknown_fields_are_pruned_with_a_warning_or_refused_when_strict(api: KubeApi) -> None:
    lb = load_balancer("web", port=80, selector={"app": "web"})
    lb["spec"]["ports"][0]["bogus"] = 1
    lb["spec"]["weight"] = 3
    lb["unknownTop"] = True
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    conn.request("POST", LBS, json.dumps(lb), {"Content-Type": "application/json"})
    response = conn.getresponse()
    stored = json.loads(response.read())
    assert response.status == 201
    assert "bogus" not in stored["spec"]["ports"][0] and "weight" not in stored["spec"]
    assert "unknownTop" not in stored
    warnings = response.headers.get_all("Warning") or []
    assert sorted(warnings) == ['299 - "unknown field "spec.ports[0].bogus""',
                                '299 - "unknown field "spec.weight""', '299 - "unknown field "unknownTop""']
    status, answer = api.request("POST", LBS, {**lb, "metadata": {"name": "strict"}},
                                 params={"fieldValidation": "Strict"})
    assert status == 400 and 'unknown field "spec.weight"' in answer["message"]
    # Status is `x-kubernetes-preserve-unknown-fields`: whatever the leader writes is kept.
    written = api.patch(LB_API, "LoadBalancer", "web", {"status": {"anything": {"goes": 1}}},
                        subresource="status")
    assert written["status"] == {"anything": {"goes": 1}}
    # Selector labels are a map (additionalProperties): every key is kept, values must be strings.
    labelled = api.patch(LB_API, "LoadBalancer", "web",
                         {"spec": {"selector": {"matchLabels": {"tier": "1"}}}})
    assert labelled["spec"]["selector"]["matchLabels"] == {"app": "web", "tier": "1"}
    status, answer = api.request("PATCH", api_path(LB_API, "LoadBalancer", "default", "web"),
                                 {"spec": {"selector": {"matchLabels": {"n": 1}}}},
                                 content_type="application/merge-patch+json")
    assert status == 422 and answer["details"]["causes"][0]["field"] == "spec.selector.matchLabels[n]"


def test_every_example_is_accepted_unchanged_but_for_defaults() -> None:
    import pathlib

    import yaml

    with kube_api() as server:
        examples = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.yaml"))
        assert examples
        for path in examples:
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") not in ("LoadBalancer", "BalancerPolicy"):
                    continue
                doc.setdefault("metadata", {}).setdefault("namespace", "default")
                status, answer = server.request("POST", api_path(LB_API, doc["kind"], "default"), doc)
                assert status == 201, (path.name, answer)
                assert not server.call(lambda: server.server._warnings), path.name  # type: ignore


def test_without_the_crd_installed_nothing_is_checked() -> None:
    with kube_api(crds=False) as server:
        status, answer = server.request("POST", POLICIES, {**balancer_policy("p"), "spec": {"x": 1}})
        assert status == 201 and answer["spec"] == {"x": 1}


def test_throttle_answers_the_next_requests_429_with_retry_after(api: KubeApi) -> None:
    api.create(balancer_policy("p"))
    api.throttle(2, retry_after=3, only=lambda method, path, params: method == "GET")
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    for _ in range(2):
        conn.request("GET", POLICIES)
        response = conn.getresponse()
        body = json.loads(response.read())
        assert (response.status, response.getheader("Retry-After")) == (429, "3")
        assert (body["reason"], body["details"]["retryAfterSeconds"]) == ("TooManyRequests", 3)
    assert api.create(balancer_policy("q"))  # a POST is not selected
    assert len(api.list(LB_API, "BalancerPolicy")) == 2  # the third GET is served
    assert [(method, path) for _, method, path in api.throttled()] == [("GET", POLICIES)] * 2


def test_lists_are_paginated_from_one_snapshot_and_old_continue_tokens_expire(api: KubeApi) -> None:
    for i in range(1, 6):
        api.create(balancer_policy(f"p{i}"))
    first = api._ok("GET", POLICIES, params={"limit": "2"})
    version = first["metadata"]["resourceVersion"]
    assert [p["metadata"]["name"] for p in first["items"]] == ["p1", "p2"]
    assert first["metadata"]["remainingItemCount"] == 3 and first["metadata"]["continue"]
    api.create(balancer_policy("p0"))  # after the snapshot: in no page
    api.delete(LB_API, "BalancerPolicy", "p5")  # after the snapshot: still in the last page
    second = api._ok("GET", POLICIES, params={"limit": "2", "continue": first["metadata"]["continue"]})
    third = api._ok("GET", POLICIES, params={"limit": "2", "continue": second["metadata"]["continue"]})
    assert [p["metadata"]["name"] for p in second["items"] + third["items"]] == ["p3", "p4", "p5"]
    assert second["metadata"]["resourceVersion"] == third["metadata"]["resourceVersion"] == version
    assert "continue" not in third["metadata"]
    whole = api._ok("GET", POLICIES, params={"limit": "10"})
    assert len(whole["items"]) == 5 and "continue" not in whole["metadata"]
    status, answer = api.request("GET", POLICIES, params={"continue": "garbage"})
    assert (status, answer["reason"]) == (400, "BadRequest")
    api.expire_history()  # compaction: the snapshot's version is gone
    status, answer = api.request("GET", POLICIES,
                                 params={"limit": "2", "continue": first["metadata"]["continue"]})
    assert (status, answer["reason"]) == (410, "Expired")


def test_bookmarks_carry_the_current_version_to_watches_that_ask(api: KubeApi) -> None:
    since = api._ok("GET", POLICIES)["metadata"]["resourceVersion"]
    asked = Watch(api, POLICIES, resourceVersion=since, allowWatchBookmarks="true")
    plain = Watch(api, POLICIES, resourceVersion=since, timeoutSeconds="1")
    try:
        api.create(pod("a", labels={"app": "web"}))  # another kind: the version moves, no event here
        api.send_bookmarks()
        bookmark = asked.next()
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["kind"] == "BalancerPolicy"
        assert bookmark["object"]["metadata"]["resourceVersion"] == api.current_version()
        assert int(api.current_version()) > int(since)
        assert plain.ended()  # nothing but the timeout for the watch that did not ask
    finally:
        asked.close()
        plain.close()
    api.call(lambda: setattr(api.server, "bookmark_interval", 0.2))
    periodic = Watch(api, POLICIES, resourceVersion=since, allowWatchBookmarks="true")
    try:
        assert periodic.next()["type"] == "BOOKMARK"  # after 0.2 s of quiet, unprompted
    finally:
        periodic.close()


def test_compaction_keeps_open_watches_but_expires_old_versions(api: KubeApi) -> None:
    since = api._ok("GET", POLICIES)["metadata"]["resourceVersion"]
    watch = Watch(api, POLICIES, resourceVersion=since)
    try:
        api.create(pod("a", labels={"app": "web"}))
        api.compact()
        api.create(balancer_policy("p"))
        assert watch.next()["type"] == "ADDED"  # the open watch carries on
    finally:
        watch.close()
    old = Watch(api, POLICIES, resourceVersion=since)
    try:
        assert old.next()["object"]["code"] == 410
    finally:
        old.close()
