"""Admin API, metrics and dashboard."""
