"""Pure configuration: loading YAML resources, validating them, and building the desired state."""

from steelyard.config.desired import BackendEndpoint, ConfigError, DesiredState, Listener, Route, Upstream
from steelyard.config.loader import (
    LoadResult,
    build_state,
    default_config_path,
    file_mode_warnings,
    load_files,
    load_texts,
    parse_documents,
    split_address,
)

__all__ = [
    "BackendEndpoint", "ConfigError", "DesiredState", "Listener", "LoadResult", "Route", "Upstream",
    "build_state", "default_config_path", "file_mode_warnings", "load_files", "load_texts", "parse_documents",
    "split_address",
]
