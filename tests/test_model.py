import re

import pytest
from pydantic import ValidationError

from steelyard.model import BalancerPolicy, format_duration, parse_duration
from steelyard.model.durations import POSITIVE_DURATION_PATTERN, parse_positive_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1m30s", 90.0), ("1h", 3600.0)]
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 s", "s", "1d", "2s3", 5])
def test_durations_need_a_unit(text: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.5, 2.0, 60.0, 90.0, 0.001])
def test_durations_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def _policy(spec: dict) -> BalancerPolicy:
    return BalancerPolicy.model_validate(
        {"apiVersion": "steelyard.dev/v1alpha1", "kind": "BalancerPolicy", "metadata": {"name": "p"},
         "spec": spec}
    )


def test_policy_defaults_are_round_robin_with_sane_timeouts() -> None:
    p = _policy({})
    assert p.spec.strategy.type == "RoundRobin"
    assert p.spec.timeouts.connect == 2.0
    assert p.spec.dynamic_weights.header == "Steelyard-Weight"


def test_hash_on_takes_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        _policy({"strategy": {"type": "RingHash", "hashOn": {"header": "x", "cookie": "y"}}})


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="stratgy"):
        _policy({"stratgy": {}})


@pytest.mark.parametrize("field", [("timeouts", "connect"), ("timeouts", "request"), ("timeouts", "idle"),
                                   ("healthCheck", "interval"), ("healthCheck", "timeout"),
                                   ("outlierDetection", "baseEjectionTime"), ("strategy", "timeSlice")])
def test_zero_durations_are_refused_where_zero_would_fire_at_once(field: tuple[str, str]) -> None:
    block, name = field
    with pytest.raises(ValidationError, match="must be longer than 0"):
        _policy({block: {name: "0s"}})
    assert _policy({block: {name: "1ms"}})


@pytest.mark.parametrize(("text", "positive"), [
    ("0s", False), ("0ms", False), ("0.0s", False), ("00m0s", False), ("0ms0s", False),
    ("1ms", True), ("0.5s", True), ("10s", True), ("0s1ms", True), ("1m0s", True), ("0.001s", True),
    ("1h30m", True), ("1.50s", True),
])
def test_positive_duration_pattern_agrees_with_the_validator(text: str, positive: bool) -> None:
    """The CRD pattern (what the API server checks) accepts exactly the durations the model accepts."""
    assert bool(re.match(POSITIVE_DURATION_PATTERN, text)) is positive
    if positive:
        assert parse_positive_duration(text) > 0
    else:
        with pytest.raises(ValueError, match="must be longer than 0"):
            parse_positive_duration(text)
