"""Pure configuration: loading YAML resources, validating them, and building the desired state."""

from steelyard.config.desired import BackendEndpoint, ConfigError, DesiredState, Listener, Route, Upstream

__all__ = ["BackendEndpoint", "ConfigError", "DesiredState", "Listener", "Route", "Upstream"]
