"""Durations as people write them in YAML (`500ms`, `2s`, `1m`, `1h30m`), held as float seconds.

Go's `time.ParseDuration` syntax (which Kubernetes users already know), minus the micro/nano units
nobody configures a load balancer in.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h))+$"


def parse_duration(value: Any) -> float:
    """Turn `1m30s` into 90.0. Bare numbers are rejected: a unit is never guessed."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration; write it with a unit, like '500ms', '2s' or '1m'")
    text = value.strip()
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration; write it with a unit, like '500ms', '2s' or '1m'")
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.5 -> '500ms', 90 -> '90s', 120 -> '2m'."""
    ms = round(seconds * 1000)
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]


def parse_positive_duration(value: Any) -> float:
    """A duration that must be longer than zero: a timeout, an interval, a window."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than 0 (0 does not mean 'none' or 'no limit' here: "
                         "it would expire at once); leave the field out for its default")
    return seconds


# At least one part of the duration has a non-zero digit (RE2, as the API server checks patterns).
POSITIVE_DURATION_PATTERN = (r"^(0+(\.0+)?(ms|s|m|h))*(\d*[1-9]\d*(\.\d+)?|\d+\.\d*[1-9]\d*)(ms|s|m|h)"
                             r"(\d+(\.\d+)?(ms|s|m|h))*$")

PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_positive_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": POSITIVE_DURATION_PATTERN}),
]
"""A `Duration` longer than zero; 0 is refused (a zero timeout or interval fires at once)."""
