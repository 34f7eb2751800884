"""The strategy library: pure code, one module per algorithm, registered under its `strategy.type`.

Importing this package imports every strategy module, which registers it.
"""

from steelyard.strategies import (  # noqa: F401
    least_connections,
    maglev,
    peak_ewma,
    power_of_two_choices,
    ring_hash,
    round_robin,
    source_ip_hash,
    time_sliced_round_robin,
    weighted_random,
    weighted_round_robin,
)
from steelyard.strategies.base import (
    NO_CONTEXT,
    BalancingStrategy,
    Endpoint,
    Pick,
    PickContext,
    create,
    registered_names,
    strategy_class,
)

__all__ = [
    "NO_CONTEXT", "BalancingStrategy", "Endpoint", "Pick", "PickContext", "create", "registered_names",
    "strategy_class",
]
