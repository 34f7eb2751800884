"""Config loading: errors a person can act on (file, line, object, field) and the desired state built."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from steelyard.config import (
    BackendEndpoint,
    build_state,
    default_config_path,
    load_files,
    load_texts,
    parse_documents,
)
from steelyard.config.yaml_source import read_documents
from steelyard.model import Protocol, StrategyType

ROOT = Path(__file__).resolve().parent.parent


def policy(name: str = "p", strategy: str = "RoundRobin", extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: steelyard.dev/v1alpha1
        kind: BalancerPolicy
        metadata:
          name: {name}
        spec:
          strategy:
            type: {strategy}
        """) + extra


def balancer(name: str = "lb", port: int = 8080, *, protocol: str = "HTTP", address: str = "127.0.0.1",
             hosts: str = "[]", prefix: str = "/", policy_ref: str | None = "p",
             endpoints: str = '[{address: "127.0.0.1:9001"}]', target: str = "") -> str:
    ref = f"  policyRef:\n    name: {policy_ref}\n" if policy_ref else ""
    tp = f", targetPort: {target}" if target else ""
    return textwrap.dedent(f"""\
        apiVersion: steelyard.dev/v1alpha1
        kind: LoadBalancer
        metadata:
          name: {name}
        spec:
          ports:
            - {{name: http, port: {port}, protocol: {protocol}, address: {address}{tp}}}
          hosts: {hosts}
          pathPrefix: {prefix}
          endpoints: {endpoints}
        """) + ref


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def messages(text: str, name: str = "f.yaml") -> list[str]:
    result = load_texts([(name, text)])
    assert result.state is None
    return [str(e) for e in result.errors]


def line_of(text: str, needle: str, nth: int = 1) -> int:
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == nth:
                return number
    raise AssertionError(needle)


def test_unknown_strategy_lists_the_allowed_values_on_its_line() -> None:
    text = docs(policy(strategy="RoundRobbin"), balancer())
    [msg, ref] = messages(text)
    allowed = ", ".join(s.value for s in StrategyType)
    assert msg == f"f.yaml:{line_of(text, 'RoundRobbin')}: BalancerPolicy/p: spec.strategy.type: " \
                  f"'RoundRobbin' is not one of {allowed}"
    assert ref.endswith("LoadBalancer/lb: spec.policyRef.name: BalancerPolicy 'default/p' has errors "
                        "(see above)")


def test_list_index_missing_field_and_range() -> None:
    text = textwrap.dedent("""\
        apiVersion: steelyard.dev/v1alpha1
        kind: LoadBalancer
        metadata:
          name: lb
        spec:
          ports:
            - name: http
              port: 8080
            - name: other
              port: 70000
            - name: third
          endpoints: [{address: "127.0.0.1:9001", weight: 1001}]
        """)
    assert messages(text) == [
        "f.yaml:10: LoadBalancer/lb: spec.ports[1].port: 70000 is too large: must be at most 65535",
        "f.yaml:11: LoadBalancer/lb: spec.ports[2].port: is required",
        "f.yaml:12: LoadBalancer/lb: spec.endpoints[0].weight: 1001 is too large: must be at most 1000",
    ]


def test_duration_unknown_field_and_target_port_messages() -> None:
    text = docs(policy(extra="  healthCheck:\n    type: HTTP\n    interval: 5\n    tiemout: 1s\n"),
                balancer(target="[1]"))
    out = messages(text)
    assert out[0] == (f"f.yaml:{line_of(text, 'interval')}: BalancerPolicy/p: spec.healthCheck.interval: "
                      "5 is not a duration; write it with a unit, like '500ms', '2s' or '1m'")
    assert out[1] == f"f.yaml:{line_of(text, 'tiemout')}: BalancerPolicy/p: spec.healthCheck.tiemout: " \
                     "is not a known field"
    assert out[2] == (f"f.yaml:{line_of(text, 'targetPort')}: LoadBalancer/lb: spec.ports[0].targetPort: "
                      "must be a port number (1-65535) or a port name")


def test_unknown_kind_and_api_version() -> None:
    text = docs(policy().replace("BalancerPolicy", "BalancerPolice"),
                balancer(policy_ref=None).replace("v1alpha1", "v2"))
    assert messages(text) == [
        "f.yaml:2: kind: 'BalancerPolice' is not one of LoadBalancer, BalancerPolicy",
        f"f.yaml:{line_of(text, 'v2')}: LoadBalancer/lb: apiVersion: 'steelyard.dev/v2' is not "
        "steelyard.dev/v1alpha1",
    ]


def test_yaml_syntax_error_has_a_line_and_other_files_still_report() -> None:
    bad = "apiVersion: steelyard.dev/v1alpha1\nkind: [LoadBalancer\nmetadata: {}\n"
    result = load_texts([("bad.yaml", bad), ("good.yaml", docs(policy(strategy="Nope"), balancer()))])
    assert result.state is None
    out = [str(e) for e in result.errors]
    assert out[0].startswith("bad.yaml:3:9: YAML syntax error:")  # `metadata:` inside the open [ ]
    assert out[1].startswith("good.yaml:7: BalancerPolicy/p: spec.strategy.type: 'Nope' is not one of")


def test_empty_documents_are_skipped_and_on_is_not_a_boolean() -> None:
    retries = "  retries:\n    on: [reset, 503]\n"
    text = "---\n# nothing\n---\n" + docs(policy(extra=retries), balancer()) + "---\n"
    result = load_texts([("f.yaml", text)])
    assert result.errors == ()
    assert result.state is not None
    assert result.state.upstreams["default/lb/http"].policy.retries.on == ("reset", "503")


@pytest.mark.parametrize(("scalar", "value"), [
    ("010", 10), ("0o17", 15), ("0x1F", 31), ("-5", -5), ("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5),
    ("1_000", "1_000"), ("1:30", "1:30"), ("0b101", "0b101"), ("yes", "yes"), ("true", True),
])
def test_plain_scalars_are_read_as_yaml_1_2(scalar: str, value: object) -> None:
    """PyYAML follows YAML 1.1, where `010` is eight, `1_000` a thousand and `1:30` ninety; YAML 1.2 (and
    JSON, and a person reading the file) sees ten, and two strings."""
    [doc], errors = read_documents("f.yaml", f"a: {scalar}\n")
    assert errors == []
    assert doc.data["a"] == value and type(doc.data["a"]) is type(value)


def test_a_yaml_1_1_number_is_refused_by_name_not_read_as_another_number() -> None:
    text = docs(policy(), balancer(port="8_080"))  # type: ignore[arg-type]
    assert messages(text) == [f"f.yaml:{line_of(text, '8_080')}: LoadBalancer/lb: spec.ports[0].port: "
                              "'8_080' is not a whole number"]
    result = load_texts([("f.yaml", docs(policy(), balancer(port="010")))])  # type: ignore[arg-type]
    assert result.state is not None and [listener.port for listener in result.state.listeners] == [10]


def test_missing_policy_and_duplicates() -> None:
    text = docs(policy(), policy(), balancer(policy_ref="nope"), balancer())
    assert messages(text) == [
        f"f.yaml:{line_of(text, 'name: p', 2)}: BalancerPolicy/p: metadata.name: duplicate BalancerPolicy "
        "'default/p': another one has this name",
        f"f.yaml:{line_of(text, 'name: nope')}: LoadBalancer/lb: spec.policyRef.name: no BalancerPolicy "
        "'nope' in namespace 'default'",
        f"f.yaml:{line_of(text, 'name: lb', 2)}: LoadBalancer/lb: metadata.name: duplicate LoadBalancer "
        "'default/lb': another one has this name",
    ]


def test_policy_in_another_namespace_does_not_count() -> None:
    text = docs(policy().replace("name: p", "name: p\n  namespace: other"), balancer())
    [msg] = messages(text)
    assert "spec.policyRef.name: no BalancerPolicy 'p' in namespace 'default'" in msg


def test_hash_strategy_needs_hash_on() -> None:
    text = docs(policy(strategy="Maglev"), balancer())
    [msg, _ref] = messages(text)
    assert msg == (f"f.yaml:{line_of(text, 'strategy:')}: BalancerPolicy/p: spec.strategy.hashOn: "
                   "is required for Maglev: give {header: NAME}, {cookie: NAME} or {sourceIP: {}}")


def test_host_and_path_conflict_on_one_listener() -> None:
    text = docs(policy(), balancer("a", hosts="[My-Domain.com]"),
                balancer("b", hosts="[x.org, my-domain.com]"),
                balancer("c"), balancer("d"), balancer("e", prefix="/api"))
    out = messages(text)
    assert out == [
        f"f.yaml:{line_of(text, 'hosts: [x.org')}: LoadBalancer/b: spec.hosts: my-domain.com with pathPrefix "
        "'/' on 127.0.0.1:8080 is already claimed by LoadBalancer 'default/a'",
        f"f.yaml:{line_of(text, 'pathPrefix: /', 4)}: LoadBalancer/d: spec.pathPrefix: any host with "
        "pathPrefix '/' on 127.0.0.1:8080 is already claimed by LoadBalancer 'default/c'",
    ]


@pytest.mark.parametrize("first_address", ["127.0.0.1", "0.0.0.0"])
def test_one_port_two_protocols(first_address: str) -> None:
    text = docs(policy(), balancer("a", address=first_address), balancer("b", protocol="TCP"))
    [msg] = messages(text)
    assert msg == (f"f.yaml:{line_of(text, 'protocol: TCP')}: LoadBalancer/b: spec.ports[0].port: "
                   f"127.0.0.1:8080 is TCP but {first_address}:8080 (HTTP) is already used by another "
                   "protocol on this port")


def test_tcp_listener_serves_one_load_balancer() -> None:
    text = docs(policy(), balancer("a", protocol="TCP"), balancer("b", protocol="TCP", hosts="[x]"))
    [msg] = messages(text)
    assert msg.endswith("LoadBalancer/b: spec.ports[0].port: TCP listener 127.0.0.1:8080 is already used by "
                        "LoadBalancer 'default/a': a TCP listener serves one load balancer")


def test_static_endpoint_addresses() -> None:
    bad = '[{address: "h:99999"}, {address: "b/c"}, {address: "host"}]'
    text = docs(policy(), balancer("a", endpoints=bad),
                balancer("b", port=8081, endpoints='[{address: "host"}]', target="8000"),
                balancer("c", port=8082, endpoints="[]"))
    out = messages(text)
    ep_line = line_of(text, 'address: "h:99999"')
    assert out == [
        f"f.yaml:{ep_line}: LoadBalancer/a: spec.endpoints[0].address: 'h:99999' is not host:port or host "
        "('h:99999': port '99999' is not a number from 1 to 65535)",
        f"f.yaml:{ep_line}: LoadBalancer/a: spec.endpoints[1].address: 'b/c' is not host:port or host "
        "('b/c' is not host:port or host)",
        f"f.yaml:{ep_line}: LoadBalancer/a: spec.endpoints[2].address: 'host' has no port, so "
        "spec.ports[0].targetPort must be a port number",
        f"f.yaml:{line_of(text, 'endpoints: []')}: LoadBalancer/c: spec.endpoints: is required in file mode "
        "(no selector or service to find backends): list them as [{address: 'host:port'}]",
    ]


def test_partial_mode_drops_only_the_broken_load_balancer() -> None:
    text = docs(policy(), balancer("a", hosts="[a.com]"), balancer("b", hosts="[a.com]"),
                balancer("c", port=9000, policy_ref="missing"), balancer("d", hosts="[d.com]"))
    sources, syntax = read_documents("k8s", text)
    assert syntax == []
    resources, errors, origin = parse_documents(sources)
    assert errors == []
    result = build_state(resources, "kubernetes", partial=True, origin=origin)
    assert result.state is not None
    assert sorted(result.state.upstreams) == ["default/a/http", "default/d/http"]
    assert [e.name for e in result.state.errors] == ["b", "c"]
    [listener] = result.state.listeners
    assert [r.upstream for r in listener.routes] == ["default/a/http", "default/d/http"]
    strict = build_state(resources, "file", origin=origin)
    assert strict.state is None and len(strict.errors) == 2


def test_routes_most_specific_first_and_hosts_normalised() -> None:
    text = docs(policy(), balancer("any"), balancer("api", prefix="/api/v1"), balancer("short", prefix="/a"),
                balancer("host", hosts="['Example.COM.']"), balancer("hostapi", hosts="[example.com]",
                                                                          prefix="/api"))
    result = load_texts([("f.yaml", text)])
    assert result.errors == ()
    assert result.state is not None
    [listener] = result.state.listeners
    assert [(r.hosts, r.path_prefix, r.upstream) for r in listener.routes] == [
        (("example.com",), "/api", "default/hostapi/http"),
        (("example.com",), "/", "default/host/http"),
        ((), "/api/v1", "default/api/http"),
        ((), "/a", "default/short/http"),
        ((), "/", "default/any/http"),
    ]


def test_demo_default_state() -> None:
    result = load_files([str(default_config_path())])
    assert result.errors == ()
    state = result.state
    assert state is not None
    [listener] = state.listeners
    assert (listener.address, listener.port, listener.protocol) == ("127.0.0.1", 8080, Protocol.HTTP)
    [route] = listener.routes
    assert route.hosts == ("my-domain.com",) and route.path_prefix == "/"
    upstream = state.upstreams[route.upstream]
    assert upstream.key == "default/demo/http" and upstream.policy_name == "default/demo"
    assert upstream.policy.strategy.type == StrategyType.WEIGHTED_ROUND_ROBIN
    check = upstream.policy.health_check
    assert check.type.value == "HTTP" and check.path == "/healthz"
    assert upstream.endpoints == (BackendEndpoint("127.0.0.1", 9001, 5, "a"),
                                  BackendEndpoint("127.0.0.1", 9002, 1, "b"),
                                  BackendEndpoint("127.0.0.1", 9003, 1, "c"))


def test_target_port_fills_in_a_bare_host_and_no_policy_means_defaults() -> None:
    text = balancer(policy_ref=None, endpoints='[{address: "localhost", weight: 0}, {address: "[::1]:81"}]',
                    target="8000")
    result = load_texts([("f.yaml", text)])
    assert result.errors == () and result.state is not None
    upstream = result.state.upstreams["default/lb/http"]
    assert upstream.policy_name is None and upstream.policy.strategy.type == StrategyType.ROUND_ROBIN
    assert upstream.endpoints == (BackendEndpoint("localhost", 8000, 0), BackendEndpoint("::1", 81, 1))


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    result = load_files([str(path)])
    assert result.errors == ()
    assert result.state is not None and len(result.state.listeners) == 1
    for listener in result.state.listeners:
        assert listener.address == "127.0.0.1"
    for upstream in result.state.upstreams.values():
        assert upstream.endpoints and all(e.host == "127.0.0.1" for e in upstream.endpoints)


def test_one_example_per_strategy() -> None:
    used = set()
    for path in (ROOT / "examples").glob("*.yaml"):
        state = load_files([str(path)]).state
        assert state is not None
        used |= {u.policy.strategy.type for u in state.upstreams.values()}
    assert used == set(StrategyType)


def test_missing_file(tmp_path: Path) -> None:
    result = load_files([str(tmp_path / "nope.yaml"), str(tmp_path)])
    assert result.state is None
    assert [str(e) for e in result.errors] == [f"{tmp_path / 'nope.yaml'}: no such file",
                                               f"{tmp_path}: is a directory, not a file"]


def test_non_mapping_documents_and_namespaced_names() -> None:
    text = "- a list\n---\n" + balancer(policy_ref=None).replace("name: lb", "name: lb\n  namespace: prod") \
        .replace("hosts: []", "hosts: 5")
    assert messages(text) == [
        "f.yaml:1: a document must be a mapping with apiVersion, kind, metadata and spec",
        f"f.yaml:{line_of(text, 'hosts: 5')}: LoadBalancer/prod/lb: spec.hosts: 5 is not a list",
    ]


def test_hash_on_takes_exactly_one() -> None:
    text = docs(policy(strategy="RingHash", extra="    hashOn: {header: X-User, cookie: s}\n"), balancer())
    [msg, _ref] = messages(text)
    assert msg == (f"f.yaml:{line_of(text, 'hashOn')}: BalancerPolicy/p: spec.strategy.hashOn: hashOn takes "
                   "exactly one of header, cookie or sourceIP")


# -- the operator's review: errors that used to pass silently ------------------------------------------


def test_a_key_given_twice_is_an_error_naming_it_and_both_lines() -> None:
    text = balancer(policy_ref=None) + '  endpoints: [{address: "127.0.0.1:9002"}]\n'
    first, again = line_of(text, "endpoints:"), line_of(text, "endpoints:", 2)
    assert messages(text) == [
        f"f.yaml:{again}: LoadBalancer/lb: spec.endpoints: key 'endpoints' is given twice in one mapping, on "
        f"lines {first} and {again}: keep one (YAML would silently take the last; Kubernetes refuses the "
        "object)",
    ]
    nested = docs(policy(extra="  retries:\n    attempts: 1\n    attempts: 3\n"), balancer())
    out = messages(nested)
    assert out[0].startswith(f"f.yaml:{line_of(nested, 'attempts: 3')}: BalancerPolicy/p: "
                             "spec.retries.attempts: key 'attempts' is given twice")
    # the policy is refused as a whole, so the load balancer using it says so
    assert out[1].endswith("LoadBalancer/lb: spec.policyRef.name: BalancerPolicy 'default/p' has errors "
                           "(see above)")


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = balancer(policy_ref=None, endpoints='[{<<: {weight: 2}, address: "127.0.0.1:9001"}]')
    result = load_texts([("f.yaml", text)])
    assert result.errors == () and result.state is not None
    assert result.state.upstreams["default/lb/http"].endpoints[0].weight == 2


def test_the_same_endpoint_twice_is_refused_naming_the_first() -> None:
    text = docs(policy(), balancer(endpoints='[{address: "127.0.0.1:9001", weight: 1}, '
                                             '{address: "127.0.0.1:9002"}, '
                                             '{address: "127.0.0.1:9001", weight: 5}]'),
                balancer("b", port=8081, target="9001",
                         endpoints='[{address: "LocalHost"}, {address: "localhost:9001"}]'))
    assert messages(text) == [
        f"f.yaml:{line_of(text, 'weight: 5')}: LoadBalancer/lb: spec.endpoints[2].address: "
        "'127.0.0.1:9001' is the same backend (127.0.0.1:9001) as spec.endpoints[0]: "
        "list each endpoint once, with one weight",
        f"f.yaml:{line_of(text, 'LocalHost')}: LoadBalancer/b: spec.endpoints[1].address: "
        "'localhost:9001' is the same backend (localhost:9001) as spec.endpoints[0]: "
        "list each endpoint once, with one weight",
    ]


ZERO_DURATIONS = [
    ("timeouts", "connect", "0ms"), ("timeouts", "request", "0s"), ("timeouts", "idle", "0m"),
    ("healthCheck", "interval", "0s"), ("healthCheck", "timeout", "0.0s"), ("slowStart", "window", "0s"),
    ("outlierDetection", "baseEjectionTime", "0s"), ("strategy", "timeSlice", "0ms0s"),
]


@pytest.mark.parametrize(("block", "name", "value"), ZERO_DURATIONS, ids=lambda v: str(v))
def test_durations_that_must_be_positive_refuse_zero(block: str, name: str, value: str) -> None:
    strategy = "TimeSlicedRoundRobin" if name == "timeSlice" else "RoundRobin"
    body = ("    type: TCP\n" if block == "healthCheck" else "") + f"    {name}: {value}\n"
    extra = "" if block == "strategy" else f"  {block}:\n{body}"
    text = docs(policy(strategy=strategy, extra=extra) + (body if block == "strategy" else ""), balancer())
    out = messages(text)
    assert out[0] == (f"f.yaml:{line_of(text, f'{name}: {value}')}: BalancerPolicy/p: spec.{block}.{name}: "
                      f"{value!r} must be longer than 0 (0 does not mean 'none' or 'no limit' here: it would "
                      "expire at once); leave the field out for its default")
    fixed = text.replace(f"{name}: {value}", f"{name}: 1ms")
    assert load_texts([("f.yaml", fixed)]).errors == ()


@pytest.mark.parametrize(("host", "why"), [
    ("'*.example.com'", "'*.example.com': wildcards are not supported; list exact host names only"),
    ("'example.com:8100'", "'example.com:8100' has a port: a host is a name without a port (the listener's "
                           "port is spec.ports[].port)"),
    ("'bad host!'", "'bad host!' is not a DNS name, an IPv4 address or a bracketed IPv6 address"),
    ("'-bad.example.com'",
     "'-bad.example.com' is not a DNS name, an IPv4 address or a bracketed IPv6 address"),
    ("'::1'", "'::1': write an IPv6 address in brackets, as in a Host header: [::1]"),
    ("'[::1]:8080'", "'[::1]:8080' has a port or is not closed: a host is a name without a port (the "
                     "listener's port is spec.ports[].port); write an IPv6 address as [::1]"),
    ("'300.1.1.1'", "'300.1.1.1' is not an IPv4 address"),
])
def test_hosts_are_exact_names_without_a_port(host: str, why: str) -> None:
    text = docs(policy(), balancer(hosts=f"[ok.example.com, {host}]"))
    assert messages(text) == [f"f.yaml:{line_of(text, 'hosts:')}: LoadBalancer/lb: spec.hosts[1]: {why}"]


def test_hosts_accept_names_ipv4_and_bracketed_ipv6() -> None:
    text = docs(policy(), balancer(hosts="[My-Domain.COM, example.com., 10.0.0.1, '[::1]', localhost]"))
    result = load_texts([("f.yaml", text)])
    assert result.errors == () and result.state is not None
    [listener] = result.state.listeners
    assert listener.routes[0].hosts == ("10.0.0.1", "[::1]", "example.com", "localhost", "my-domain.com")


def test_health_check_settings_without_a_type_are_an_error() -> None:
    text = docs(policy(extra="  healthCheck: {path: /healthz, interval: 1s}\n"), balancer())
    out = messages(text)
    assert out[0] == (f"f.yaml:{line_of(text, 'healthCheck')}: BalancerPolicy/p: spec.healthCheck: "
                      "healthCheck.path/interval set but type is None, so no checks run: set type: HTTP "
                      "or TCP (or remove them)")
    explicit = docs(policy(extra="  healthCheck:\n    type: None\n    timeout: 2s\n"), balancer())
    assert messages(explicit)[0] == (
        f"f.yaml:{line_of(explicit, 'type: None')}: BalancerPolicy/p: spec.healthCheck.type: "
        "healthCheck.timeout set but type is None, so no checks run: set type: HTTP or TCP (or remove them)")
    for fine in ("  healthCheck: {type: None}\n", "  healthCheck: {type: TCP, interval: 1s}\n"):
        assert load_texts([("f.yaml", docs(policy(extra=fine), balancer()))]).errors == ()


def _strategy(kind: str, params: str) -> str:
    return docs(policy(strategy=kind, extra=params), balancer())


@pytest.mark.parametrize(("kind", "param", "why"), [
    ("RoundRobin", "choices: 2", "spec.strategy.choices: only used by PowerOfTwoChoices (this strategy is "
                                 "RoundRobin): remove it"),
    ("PeakEWMA", "choices: 3", "spec.strategy.choices: only used by PowerOfTwoChoices (this strategy is "
                               "PeakEWMA): remove it"),
    ("WeightedRoundRobin", "timeSlice: 1s", "spec.strategy.timeSlice: only used by TimeSlicedRoundRobin "
                                            "(this strategy is WeightedRoundRobin): remove it"),
    ("LeastConnections", "hashOn: {header: X-User}", "spec.strategy.hashOn: only used by RingHash and Maglev "
                                                     "(this strategy is LeastConnections): remove it"),
    ("SourceIPHash", "hashOn: {cookie: s}", "spec.strategy.hashOn: SourceIPHash always hashes the client's "
                                            "address: to hash a header or a cookie use RingHash or Maglev"),
])
def test_strategy_parameters_that_do_not_apply_are_errors(kind: str, param: str, why: str) -> None:
    text = _strategy(kind, f"    {param}\n")
    out = messages(text)
    assert out[0] == f"f.yaml:{line_of(text, param)}: BalancerPolicy/p: {why}"


def test_strategy_parameters_that_apply_or_are_defaults_pass() -> None:
    for kind, param in (("PowerOfTwoChoices", "choices: 3"), ("TimeSlicedRoundRobin", "timeSlice: 2s"),
                        ("RingHash", "hashOn: {cookie: s}"), ("SourceIPHash", "hashOn: {sourceIP: {}}")):
        result = load_texts([("f.yaml", _strategy(kind, f"    {param}\n"))])
        assert result.errors == (), (kind, param)


def test_kubernetes_mode_does_not_flag_what_the_api_server_defaulted() -> None:
    """The API server writes the CRD's defaults (choices: 2, timeSlice: 1s, healthCheck.path ...) into every
    object: in partial (Kubernetes) mode only values other than the defaults count as written."""
    text = _strategy("RoundRobin", "    choices: 2\n    timeSlice: 1s\n  healthCheck:\n    path: /healthz\n"
                                   "    interval: 5s\n")
    sources, syntax = read_documents("k8s", text)
    resources, errors, origin = parse_documents(sources)
    assert syntax == [] and errors == []
    result = build_state(resources, "kubernetes", partial=True, origin=origin)
    assert result.errors == ()
    file_mode = build_state(resources, "file", origin=origin).errors
    assert [e.field for e in file_mode if e.kind == "BalancerPolicy"] == [
        "spec.strategy.choices", "spec.strategy.timeSlice", "spec.healthCheck"]
    changed = parse_documents(read_documents("k8s", text.replace("choices: 2", "choices: 4"))[0])[0]
    kube = build_state(changed, "kubernetes", partial=True)
    assert [e.field for e in kube.errors if e.kind == "BalancerPolicy"] == ["spec.strategy.choices"]


def test_schema_errors_and_reference_errors_in_one_run() -> None:
    """A load balancer with a schema error still gets its reference and endpoint checks in the same run."""
    text = docs(policy("other"), textwrap.dedent("""\
        apiVersion: steelyard.dev/v1alpha1
        kind: LoadBalancer
        metadata:
          name: lb
        spec:
          ports:
            - {name: http, port: 99999}
          policyRef: {name: missing}
          endpoints:
            - {address: "10.0.0.1"}
            - {address: "10.0.0.2:99999"}
            - {address: "10.0.0.3:80"}
            - {address: "10.0.0.3:80", weight: 5}
          bogus: 1
        """))
    assert messages(text) == [
        f"f.yaml:{line_of(text, 'port: 99999')}: LoadBalancer/lb: spec.ports[0].port: 99999 is too large: "
        "must be at most 65535",
        f"f.yaml:{line_of(text, 'missing')}: LoadBalancer/lb: spec.policyRef.name: no BalancerPolicy "
        "'missing' in namespace 'default'",
        f"f.yaml:{line_of(text, '10.0.0.1')}: LoadBalancer/lb: spec.endpoints[0].address: '10.0.0.1' has no "
        "port, so spec.ports[0].targetPort must be a port number",
        f"f.yaml:{line_of(text, '10.0.0.2')}: LoadBalancer/lb: spec.endpoints[1].address: "
        "'10.0.0.2:99999' is not host:port or host ('10.0.0.2:99999': port '99999' is not a number from 1 "
        "to 65535)",
        f"f.yaml:{line_of(text, 'weight: 5')}: LoadBalancer/lb: spec.endpoints[3].address: "
        "'10.0.0.3:80' is the same backend (10.0.0.3:80) as spec.endpoints[2]: "
        "list each endpoint once, with one weight",
        f"f.yaml:{line_of(text, 'bogus')}: LoadBalancer/lb: spec.bogus: is not a known field",
    ]
