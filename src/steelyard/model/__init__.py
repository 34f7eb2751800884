"""Pure data: the resources Steelyard is configured with. No I/O here."""

from steelyard.model.addresses import check_endpoint_address, check_host, split_address
from steelyard.model.durations import (
    Duration,
    PositiveDuration,
    format_duration,
    parse_duration,
    parse_positive_duration,
)
from steelyard.model.resources import (
    API_GROUP,
    API_VERSION,
    HASH_STRATEGIES,
    KINDS,
    BalancerPolicy,
    BalancerPolicySpec,
    DynamicWeightMode,
    DynamicWeights,
    HashOn,
    HealthCheck,
    HealthCheckType,
    LabelSelector,
    LoadBalancer,
    LoadBalancerSpec,
    ObjectMeta,
    OutlierDetection,
    PolicyRef,
    PortSpec,
    Protocol,
    Resource,
    Retries,
    ServiceRef,
    SlowStart,
    StaticEndpoint,
    Strategy,
    StrategyType,
    Timeouts,
)

__all__ = [
    "API_GROUP", "API_VERSION", "HASH_STRATEGIES", "KINDS", "BalancerPolicy", "BalancerPolicySpec",
    "Duration", "DynamicWeightMode", "DynamicWeights", "HashOn", "HealthCheck", "HealthCheckType",
    "LabelSelector", "LoadBalancer", "LoadBalancerSpec", "ObjectMeta", "OutlierDetection", "PolicyRef",
    "PortSpec", "Protocol", "Resource", "Retries", "ServiceRef", "SlowStart", "StaticEndpoint", "Strategy",
    "StrategyType", "Timeouts", "format_duration", "parse_duration", "PositiveDuration",
    "parse_positive_duration", "check_endpoint_address", "check_host", "split_address",
]
