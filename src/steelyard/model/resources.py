"""The two custom resources, `BalancerPolicy` and `LoadBalancer` (group `steelyard.dev`, v1alpha1).

These pydantic models are the single source of truth: the file provider validates against them, the
Kubernetes provider translates into them, and the CRD schemas are rendered from them. Field names are
the YAML (camelCase) names; Python attributes are snake_case.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from steelyard.model.addresses import check_endpoint_address, check_host
from steelyard.model.durations import PositiveDuration

# Port numbers: integers only (`port: true` would be port 1 in pydantic's lax mode; weights too, below).
PortNumber = Annotated[int, Field(strict=True, ge=1, le=65535)]


def _check_listen_address(value: str) -> str:
    """A listener binds an IP address (0.0.0.0 or :: for all): refused here, not at bind time."""
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address to listen on (e.g. 0.0.0.0, 127.0.0.1, ::)") \
            from None
    return value


def _check_probe_path(value: str) -> str:
    """The path goes into the probe's request line: absolute, no whitespace or control characters."""
    if not value.startswith("/") or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} must start with '/' and hold no spaces or control characters")
    return value


def _check_name(value: str) -> str:
    """Names are joined with '/' into upstream keys (namespace/name/port): no '/' in them."""
    if "/" in value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} must not contain '/' or whitespace")
    return value


Name = Annotated[str, AfterValidator(_check_name)]

TOKEN_PATTERN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"  # RFC 9110 §5.6.2 token (RE2 for the API server, too)
_TOKEN = re.compile(TOKEN_PATTERN)


def _check_token(value: str) -> str:
    """A header field name (RFC 9110 §5.1) or cookie name (RFC 6265 §4.1.1) is a token: a name with a
    space, colon or '=' in it can never match what a client sends, so it is refused, not ignored."""
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid header or cookie name: use letters, digits and "
                         "!#$%&'*+-.^_`|~, with no spaces, ':' or '='")
    return value


Token = Annotated[
    str, AfterValidator(_check_token), WithJsonSchema({"type": "string", "pattern": TOKEN_PATTERN})]

API_GROUP = "steelyard.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"


class _Spec(BaseModel):
    """camelCase in YAML, snake_case in Python, unknown fields refused, values immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, validate_default=True
    )


class StrategyType(StrEnum):
    ROUND_ROBIN = "RoundRobin"
    WEIGHTED_ROUND_ROBIN = "WeightedRoundRobin"
    LEAST_CONNECTIONS = "LeastConnections"
    TIME_SLICED_ROUND_ROBIN = "TimeSlicedRoundRobin"
    RANDOM = "Random"
    POWER_OF_TWO_CHOICES = "PowerOfTwoChoices"
    PEAK_EWMA = "PeakEWMA"
    RING_HASH = "RingHash"
    MAGLEV = "Maglev"
    SOURCE_IP_HASH = "SourceIPHash"


HASH_STRATEGIES = frozenset({StrategyType.RING_HASH, StrategyType.MAGLEV})


class SourceIP(_Spec):
    """Empty marker object: `sourceIP: {}`."""


class HashOn(_Spec):
    """What a hash strategy hashes: exactly one of a header, a cookie or the client's address."""

    header: Token | None = None
    cookie: Token | None = None
    source_ip: SourceIP | None = Field(default=None, alias="sourceIP")

    @model_validator(mode="after")
    def _exactly_one(self) -> HashOn:
        chosen = [n for n in ("header", "cookie", "source_ip") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError("hashOn takes exactly one of header, cookie or sourceIP")
        return self


class Strategy(_Spec):
    type: StrategyType = StrategyType.ROUND_ROBIN
    # TimeSlicedRoundRobin: how long each backend takes all traffic (scaled by its weight).
    time_slice: PositiveDuration = "1s"  # type: ignore[assignment]
    hash_on: HashOn | None = None
    choices: Annotated[int, Field(ge=2, le=10)] = 2


class SlowStart(_Spec):
    """Envoy's ramp: weight x max(minWeightPercent/100, (t/window)^(1/aggression))."""

    window: PositiveDuration
    aggression: Annotated[float, Field(gt=0)] = 1.0
    min_weight_percent: Annotated[float, Field(ge=0, le=100)] = 10.0


class DynamicWeightMode(StrEnum):
    OFF = "Off"
    LATENCY = "Latency"
    HEADER = "Header"


class DynamicWeights(_Spec):
    mode: DynamicWeightMode = DynamicWeightMode.OFF
    header: Token = "Steelyard-Weight"
    # Header mode: the bounds of a reported weight. Latency mode scales the configured weight by 5-100 %
    # (slower than the peers' median, or failing: lower) and does not use them.
    min: Annotated[int, Field(ge=0, le=1000)] = 1
    max: Annotated[int, Field(ge=1, le=1000)] = 1000
    # Header mode: how long a reported weight holds without a newer report; then the endpoint is back at
    # its configured weight (Envoy's weight expiration period, 3 minutes there too). Without it an
    # endpoint that reported 0 (with min 0) would never be sent the request that could report again.
    report_expiry: PositiveDuration = "3m"  # type: ignore[assignment]

    @model_validator(mode="after")
    def _ordered(self) -> DynamicWeights:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class HealthCheckType(StrEnum):
    HTTP = "HTTP"
    TCP = "TCP"
    NONE = "None"


class HealthCheck(_Spec):
    type: HealthCheckType = HealthCheckType.NONE
    path: Annotated[str, AfterValidator(_check_probe_path)] = "/healthz"
    interval: PositiveDuration = "5s"  # type: ignore[assignment]
    timeout: PositiveDuration = "1s"  # type: ignore[assignment]
    healthy_threshold: Annotated[int, Field(ge=1)] = 2
    unhealthy_threshold: Annotated[int, Field(ge=1)] = 3


class OutlierDetection(_Spec):
    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    base_ejection_time: PositiveDuration = "30s"  # type: ignore[assignment]
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] = 50


RetryOn = Literal["connect-failure", "reset", "502", "503", "504"]


class Retries(_Spec):
    attempts: Annotated[int, Field(ge=0, le=10)] = 2
    on: tuple[RetryOn, ...] = ("connect-failure", "reset")


class Timeouts(_Spec):
    """Every duration of a policy is longer than 0 (`PositiveDuration`): none of them reads 0 as "no
    limit", and a 0 connect/request/idle timeout would fail every request at once."""

    connect: PositiveDuration = "2s"  # type: ignore[assignment]
    request: PositiveDuration = "30s"  # type: ignore[assignment]  # request's end -> response head
    idle: PositiveDuration = "60s"  # type: ignore[assignment]  # no byte either way (an upload: 408)


class BalancerPolicySpec(_Spec):
    strategy: Strategy = Strategy()
    slow_start: SlowStart | None = None
    dynamic_weights: DynamicWeights = DynamicWeights()
    health_check: HealthCheck = HealthCheck()
    outlier_detection: OutlierDetection | None = None
    retries: Retries = Retries()
    timeouts: Timeouts = Timeouts()


class Protocol(StrEnum):
    HTTP = "HTTP"
    TCP = "TCP"


class PortSpec(_Spec):
    name: Name = "http"
    port: PortNumber
    protocol: Protocol = Protocol.HTTP
    target_port: int | str | None = None  # a number, or the name of a pod's port
    address: Annotated[str, AfterValidator(_check_listen_address)] = "0.0.0.0"

    @field_validator("target_port")
    @classmethod
    def _target_port_in_range(cls, value: int | str | None) -> int | str | None:
        # (a validator, not PortNumber: the CRD renders int-or-string only for two plain types)
        if isinstance(value, bool) or (isinstance(value, int) and not 1 <= value <= 65535):
            raise ValueError(f"{value!r} is not a port number (1-65535) or a port name")
        return value


class PolicyRef(_Spec):
    name: str


class ServiceRef(_Spec):
    name: str


class LabelSelectorRequirement(_Spec):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


class LabelSelector(_Spec):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()


Host = Annotated[str, AfterValidator(check_host)]
"""An exact host name (DNS name, IPv4 or bracketed IPv6), without a port and without wildcards."""

EndpointAddress = Annotated[str, AfterValidator(check_endpoint_address)]
"""`host:port`, `[v6]:port`, `host` (the port from targetPort) or a bare IPv6."""


class StaticEndpoint(_Spec):
    address: EndpointAddress
    weight: Annotated[int, Field(strict=True, ge=0, le=1000)] = 1
    name: str | None = None


class LoadBalancerSpec(_Spec):
    ports: Annotated[tuple[PortSpec, ...], Field(min_length=1)]
    hosts: tuple[Host, ...] = ()
    path_prefix: str = "/"
    policy_ref: PolicyRef | None = None
    selector: LabelSelector | None = None
    service: ServiceRef | None = None
    endpoints: tuple[StaticEndpoint, ...] = ()

    @field_validator("path_prefix")
    @classmethod
    def _path_prefix_is_absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        return value


class ObjectMeta(BaseModel):
    """The parts of Kubernetes' ObjectMeta Steelyard reads; the rest is kept, not checked."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)

    name: Annotated[Name, Field(min_length=1, max_length=253)]
    namespace: Name = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    resource_version: str | None = None
    uid: str | None = None


class _Resource(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    api_version: Literal["steelyard.dev/v1alpha1"]
    metadata: ObjectMeta
    status: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """`namespace/name`, the identity used everywhere inside Steelyard."""
        return f"{self.metadata.namespace}/{self.metadata.name}"


class BalancerPolicy(_Resource):
    kind: Literal["BalancerPolicy"]
    spec: BalancerPolicySpec = BalancerPolicySpec()


class LoadBalancer(_Resource):
    kind: Literal["LoadBalancer"]
    spec: LoadBalancerSpec


Resource = Annotated[LoadBalancer | BalancerPolicy, Field(discriminator="kind")]
KINDS = {"LoadBalancer": LoadBalancer, "BalancerPolicy": BalancerPolicy}
