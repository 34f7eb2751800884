"""Audit of configuration loading and validation (`steelyard validate`, `run -c`, hot reload).

The promise: an invalid configuration names the file, the field and why (no traceback), and the running
proxy keeps its last good configuration. Most tests began as strict xfails for bugs this audit found and
pass since their fixes; the others pin tricky cases verified to work.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from steelyard.cli import main
from steelyard.config import load_files, load_texts
from steelyard.config.desired import DesiredState
from steelyard.runtime.file_provider import FileProvider


def balancer(name: str = "a", *, ports: str = "[{name: http, port: 8080, address: 127.0.0.1}]",
             endpoints: str = '[{address: "127.0.0.1:9001"}]', extra: str = "") -> str:
    return ("apiVersion: steelyard.dev/v1alpha1\nkind: LoadBalancer\n"
            f"metadata: {{name: {name}}}\nspec:\n  ports: {ports}\n  endpoints: {endpoints}\n") + extra


def policy(spec: str) -> str:
    return "apiVersion: steelyard.dev/v1alpha1\nkind: BalancerPolicy\nmetadata: {name: p}\nspec:\n" + spec


def errors_of(text: str, name: str = "f.yaml") -> list[str]:
    result = load_texts([(name, text)])
    assert result.state is None, "the configuration was accepted"
    return [str(e) for e in result.errors]


def validate(path: Path, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steelyard", "validate", str(path)],
                          capture_output=True, text=True, timeout=timeout)


# --- crashes and hangs instead of an error -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["[LoadBalancer]", "{LoadBalancer: 1}"])
def test_a_kind_that_is_not_a_string_is_an_error_not_a_crash(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(balancer().replace("kind: LoadBalancer", f"kind: {kind}"))
    assert main(["validate", str(path)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"{path}:2: kind: ") and "is not one of LoadBalancer, BalancerPolicy" in first


def test_a_recursive_alias_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(balancer().replace("metadata: {name: a}", "metadata: {name: a, x: &x [*x]}"))
    done = validate(path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 1
    assert done.stderr.startswith(f"{path}:")


def test_deeply_nested_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(balancer(extra="  selector: " + "[" * 5000 + "]" * 5000 + "\n"))
    done = validate(path)
    assert "Traceback" not in done.stderr
    assert done.returncode == 1
    assert done.stderr.startswith(f"{path}:")


def _alias_bomb(levels: int) -> str:
    lines = ["  x0: &a0 [q, q, q, q, q, q, q, q, q]"]
    lines += [f"  x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return balancer().replace("metadata: {name: a}\n", "metadata:\n  name: a\n" + "\n".join(lines) + "\n")


def test_a_small_file_with_exponential_aliases_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))  # 9**9 leaves from under 1 KB (a "billion laughs")
    assert path.stat().st_size < 1500
    try:
        done = validate(path, timeout=2.5)
    except subprocess.TimeoutExpired:
        pytest.fail("steelyard validate still running after 2.5 s on a 1 KB file")
    assert done.returncode == 1
    assert done.stderr.startswith(f"{path}:")


# --- accepted by validate, wrong at run time ---------------------------------------------------------

@pytest.mark.parametrize("protocols", [("HTTP", "HTTP"), ("TCP", "TCP"), ("HTTP", "TCP")],
                         ids=lambda p: "+".join(p))
def test_one_load_balancer_with_the_same_port_twice_is_a_conflict(protocols: tuple[str, str]) -> None:
    one, two = protocols
    ports = (f"[{{name: one, port: 8080, address: 127.0.0.1, protocol: {one}}},\n"
             f"    {{name: two, port: 8080, address: 127.0.0.1, protocol: {two}}}]")
    text = balancer(ports=ports)
    assert load_texts([("f.yaml", text.replace("{name: two, port: 8080", "{name: two, port: 8081"))]).ok
    out = errors_of(text)
    assert any(e.startswith("f.yaml:6: LoadBalancer/a: spec.ports[1].port: ") for e in out), out


def test_two_load_balancers_never_share_an_upstream_by_a_name_with_a_slash() -> None:
    text = (balancer("'a/b'", endpoints='[{address: "127.0.0.1:9001"}]') + "---\n"
            + balancer("a", ports="[{name: b/http, port: 8081, address: 127.0.0.1}]",
                       endpoints='[{address: "127.0.0.1:9002"}]'))
    result = load_texts([("f.yaml", text)])
    if result.state is None:  # refused: it must say which name is not allowed
        assert any("metadata.name" in str(e) or ".name" in str(e) for e in result.errors)
        return
    listener = next(lst for lst in result.state.listeners if lst.port == 8080)
    upstream = result.state.upstreams[listener.routes[0].upstream]
    assert upstream.load_balancer == "default/a/b"
    assert [e.id for e in upstream.endpoints] == ["127.0.0.1:9001"]


@pytest.mark.parametrize("address", ["not an ip", "127.0.0.1:8080"])
def test_a_listener_address_that_cannot_be_bound_is_a_config_error(address: str, tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(balancer(ports=f'[{{name: http, port: 8080, address: "{address}"}}]'))
    done = validate(path)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith(f"{path}:5: LoadBalancer/a: spec.ports[0].address: ")


@pytest.mark.parametrize("target", [0, -5, 70000])
def test_a_target_port_out_of_range_is_an_error(target: int) -> None:
    text = balancer(ports=f"[{{name: http, port: 8080, address: 127.0.0.1, targetPort: {target}}}]",
                    endpoints='[{address: "127.0.0.1"}]')
    out = errors_of(text)
    assert any(e.startswith("f.yaml:5: LoadBalancer/a: spec.ports[0].targetPort: ") for e in out), out


@pytest.mark.parametrize("path", ["healthz", "/a b", "/h\\r\\nX-Injected: 1"],
                         ids=["no-slash", "space", "crlf"])
def test_a_health_check_path_that_makes_a_malformed_request_is_an_error(path: str) -> None:
    text = policy(f'  healthCheck: {{type: HTTP, path: "{path}"}}\n')
    out = errors_of(text)
    assert any(e.startswith("f.yaml:5: BalancerPolicy/p: spec.healthCheck.path: ") for e in out), out


@pytest.mark.parametrize("field", ["port", "weight"])
def test_a_boolean_where_a_number_is_expected_is_an_error(field: str) -> None:
    if field == "port":
        text = balancer(ports="[{name: http, port: true, address: 127.0.0.1}]")
        where = "f.yaml:5: LoadBalancer/a: spec.ports[0].port: "
    else:
        text = balancer(endpoints='[{address: "127.0.0.1:9001", weight: true}]')
        where = "f.yaml:6: LoadBalancer/a: spec.endpoints[0].weight: "
    out = errors_of(text)
    assert any(e.startswith(where) for e in out), out


# --- errors that do not point at the field or line -----------------------------------------------------

def test_a_relative_path_prefix_names_the_path_prefix_field_and_line() -> None:
    text = balancer(extra="  pathPrefix: api\n")
    [error] = errors_of(text)
    assert error.startswith("f.yaml:7: LoadBalancer/a: spec.pathPrefix: ") and "must start with '/'" in error


def test_an_unclosed_quote_names_the_line_where_it_opens() -> None:
    text = balancer().replace('"127.0.0.1:9001"', '"127.0.0.1:9001') + "# end\n# of\n# file\n"
    [error] = errors_of(text)
    assert error.startswith("f.yaml:6:25: YAML syntax error: "), error  # line and column of the quote


# --- verified tricky cases ------------------------------------------------------------------------------

def test_yaml_1_1_words_stay_strings_and_bad_scalars_name_the_field() -> None:
    out = errors_of(policy("  retries: {on: [no, yes]}\n  healthCheck: {type: TCP, interval: 1e3s}\n"))
    assert out == [
        "f.yaml:5: BalancerPolicy/p: spec.retries.on[0]: 'no' is not one of connect-failure, reset, 502, "
        "503, 504",
        "f.yaml:5: BalancerPolicy/p: spec.retries.on[1]: 'yes' is not one of connect-failure, reset, 502, "
        "503, 504",
        "f.yaml:6: BalancerPolicy/p: spec.healthCheck.interval: '1e3s' is not a duration; write it with a "
        "unit, like '500ms', '2s' or '1m'",
    ]


def test_durations_compound_forms_and_wrong_case_enums() -> None:
    ok = load_texts([("f.yaml", policy("  healthCheck: {type: TCP, interval: 1m30s, timeout: 1.5s}\n"))])
    assert ok.errors == ()
    out = errors_of(policy("  strategy: {type: roundrobin}\n  healthCheck: {interval: -1s}\n"))
    assert out[0].startswith("f.yaml:5: BalancerPolicy/p: spec.strategy.type: 'roundrobin' is not one of ")
    assert out[1].startswith("f.yaml:6: BalancerPolicy/p: spec.healthCheck.interval: '-1s' is not a duration")


def test_a_duplicate_name_in_a_second_file_names_that_file_and_line(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(balancer())
    second.write_text("# another copy\n" + balancer(ports="[{name: http, port: 8081, address: 127.0.0.1}]"))
    result = load_files([str(first), str(second)])
    assert [str(e) for e in result.errors] == [
        f"{second}:4: LoadBalancer/a: metadata.name: duplicate LoadBalancer 'default/a': another one has "
        "this name"]


def test_bom_tabs_and_non_mapping_documents(tmp_path: Path) -> None:
    assert load_texts([("f.yaml", "\ufeff" + balancer())]).errors == ()
    [tab] = errors_of(balancer().replace("  endpoints", "\tendpoints"))
    assert tab.startswith("f.yaml:6:1: YAML syntax error: ") and "'\\t'" in tab
    assert errors_of("- a\n") == ["f.yaml:1: a document must be a mapping with apiVersion, kind, metadata "
                                  "and spec"]
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    assert [str(e) for e in load_files([str(folder)]).errors] == [f"{folder}: is a directory, not a file"]


def test_a_reload_to_an_invalid_or_deleted_file_keeps_the_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(balancer())
    provider = FileProvider([str(path)])
    good = provider.accept(provider.load(), "start")
    assert isinstance(good, DesiredState) and provider.current is good
    path.write_text(balancer().replace("port: 8080", "port: 0"))
    bad = provider.load()
    assert bad.state is None and bad.errors == (
        f"{path}:5: LoadBalancer/a: spec.ports[0].port: 0 is too small: must be at least 1",)
    assert provider.accept(bad, "file changed") is None and provider.current is good
    path.unlink()
    gone = provider.load()
    assert gone.errors == (f"{path}: no such file",)
    assert provider.accept(gone, "file changed") is None and provider.current is good


def test_a_reload_to_a_configuration_with_nothing_in_it_keeps_the_last_good_state(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An emptied file (an editor caught mid-write, a truncation) would otherwise close every listener at
    the next poll: a reload to no resources at all keeps serving the last good configuration and says so.
    At start an empty configuration stays valid (it serves nothing)."""
    path = tmp_path / "lb.yaml"
    path.write_text(balancer())
    provider = FileProvider([str(path)])
    good = provider.accept(provider.load(), "start")
    assert isinstance(good, DesiredState) and good.listeners
    for emptied in ("", "# being edited\n", "---\n"):
        path.write_text(emptied)
        loaded = provider.load()
        assert loaded.state is not None and not loaded.state.listeners  # (valid in itself)
        assert provider.accept(loaded, "file changed") is None and provider.current is good
    assert "holds no resources (an empty or half-written file?)" in caplog.text
    fresh = FileProvider([str(path)])
    assert fresh.accept(fresh.load(), "start") is not None  # at start: nothing to keep


@pytest.mark.parametrize(("spec", "field", "name"), [
    ("  strategy: {type: Maglev, hashOn: {header: 'X User'}}\n", "spec.strategy.hashOn.header", "X User"),
    ("  strategy: {type: RingHash, hashOn: {header: 'X-User:'}}\n", "spec.strategy.hashOn.header", "X-User:"),
    ("  strategy: {type: RingHash, hashOn: {cookie: 'sid=1'}}\n", "spec.strategy.hashOn.cookie", "sid=1"),
    ("  dynamicWeights: {mode: Header, header: 'Weight Now'}\n", "spec.dynamicWeights.header", "Weight Now"),
])
def test_header_and_cookie_names_must_be_tokens(spec: str, field: str, name: str) -> None:
    """A name with a space, ':' or '=' can never match what a client or backend sends: refused by name."""
    [error] = errors_of(policy(spec))
    assert error.startswith(f"f.yaml:5: BalancerPolicy/p: {field}: {name!r} is not a valid header or cookie "
                            "name"), error


def test_unusual_but_valid_token_names_are_accepted() -> None:
    text = policy("  strategy: {type: RingHash, hashOn: {header: \"X-User_ID.v2~!#$%&'*+^`|\"}}\n")
    assert load_texts([("f.yaml", text)]).errors == ()


def test_a_selector_or_service_in_file_mode_is_said_to_be_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`steelyard run -c` on a manifest written for Kubernetes: the file is valid (kubectl applies it), but
    a selector or a service finds no backends without the Kubernetes provider. The run says so, naming
    the load balancer and what it serves instead, rather than answering 503 without a word."""
    path = tmp_path / "lb.yaml"
    path.write_text(balancer("web", endpoints="[]", extra="  selector: {matchLabels: {app: web}}\n")
                    + "---\n" + balancer("api", ports="[{name: http, port: 8081, address: 127.0.0.1}]",
                                          extra="  service: {name: api}\n")
                    + "---\n" + balancer("plain", ports="[{name: http, port: 8082, address: 127.0.0.1}]"))
    provider = FileProvider([str(path)])
    loaded = provider.load()
    assert loaded.errors == ()
    assert loaded.warnings == (
        "LoadBalancer/default/web: spec.selector finds backends only with --kubernetes; from a file it has "
        "no endpoints: every request to it gets 503",
        "LoadBalancer/default/api: spec.service finds backends only with --kubernetes; from a file it serves "
        "its 1 spec.endpoints only",
    )
    with caplog.at_level(logging.WARNING):
        assert provider.accept(loaded, "start") is not None
    assert "LoadBalancer/default/web: spec.selector finds backends only" in caplog.text
