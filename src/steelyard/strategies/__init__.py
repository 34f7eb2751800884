"""The strategy library: pure code, one module per algorithm, registered under its `strategy.type`.

Importing this package imports every strategy module, which registers it.
"""

from steelyard.strategies import round_robin  # noqa: F401
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
