"""I/O side of the control path: providers, apply/plan, health checks, effective weights, workers."""
