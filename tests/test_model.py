import pytest
from pydantic import ValidationError

from steelyard.model import BalancerPolicy, format_duration, parse_duration


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
