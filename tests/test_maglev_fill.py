"""The C Maglev build (`_maglev_fill`) gives exactly the pure-Python reference's table, slot for slot.

`make test` requires the extension to be built (setup.py builds it whenever a compiler is present): a
silently missing build would leave large Maglev upstreams ten times slower than the figures say.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies import Endpoint, _maglev_numpy, maglev
from steelyard.strategies._maglev_fill import fill
from test_maglev_numpy import addresses, draw_weights, endpoint_ids


def c_build(ids: list[str], weights: list[float], m: int) -> list[int]:
    assert maglev._maglev_fill is not None, "the C extension is not built (pip install -e . with a compiler)"
    return maglev.build_table(ids, weights, m)


@settings(max_examples=200, deadline=None)
@given(ids=endpoint_ids, m=st.sampled_from([2, 7, 13, 101, 1009, 65537]), data=st.data())
def test_the_same_table_as_the_reference(ids: list[str], m: int, data: st.DataObject) -> None:
    weights = draw_weights(len(ids), data)
    assert c_build(ids, weights, m) == maglev.build_table_reference(ids, weights, m)


@pytest.mark.parametrize("weights", ["equal", "integers", "skewed"])
def test_the_same_table_as_numpy_at_10000_endpoints(weights: str) -> None:
    """The benchmark's size (M = 1,000,003), where the reference would take seconds: NumPy is tested
    against the reference at 2,000 (tests/test_maglev_numpy.py)."""
    n = 10_000
    w = {"equal": [1.0] * n, "integers": [float(1 + i % 5) for i in range(n)],
         "skewed": [50.0] + [1.0] * (n - 1)}[weights]
    m = maglev.table_size(n)
    table = c_build(addresses(n), w, m)
    assert table == _maglev_numpy.build_table_numpy(addresses(n), w, m).tolist()
    assert len(set(map(id, table))) == n  # one int object per endpoint, shared by its slots


@pytest.mark.parametrize("weights", [
    [1000.0] + [1.0] * 29,  # one heavy endpoint: most rounds give one turn
    [1.0] * 10 + [1000.0, 300.0, 300.0] + [2.0, 2.0, 7.5] * 5 + [1000.0] * 2,  # several shares fire together
    # two heavy shares with endpoints interleaved by index among many light ones: turns merged by index
    [1.0] * 10 + [1000.0] + [1.0] * 9 + [300.0] + [1.0] * 29 + [1000.0] + [1.0] * 9 + [300.0] + [1.0] * 40,
    [1.0 + i / 40 for i in range(40)] + [900.0],  # every share distinct, and a heavy one
])
def test_skewed_weights_give_the_references_table(weights: list[float]) -> None:
    """The C walks only the endpoints whose share earned a turn (grouped by share): the same turns."""
    ids = addresses(len(weights))
    assert c_build(ids, weights, 10007) == maglev.build_table_reference(ids, weights, 10007)


def test_the_strategy_keeps_hashes_only_for_current_endpoints() -> None:
    strategy = maglev.Maglev(StrategySpec.model_validate({"type": "Maglev", "hashOn": {"sourceIP": {}}}))
    strategy.set_endpoints([Endpoint(f"10.0.0.{i}:80", 1.0) for i in range(5)])
    first = strategy._table
    strategy.set_endpoints([Endpoint(f"10.0.0.{i}:80", 1.0) for i in range(1, 6)])
    assert set(strategy._hashes) == {f"10.0.0.{i}:80" for i in range(1, 6)}
    assert strategy._table == maglev.build_table_reference([f"10.0.0.{i}:80" for i in range(1, 6)],
                                                           [1.0] * 5, len(first))


@pytest.mark.parametrize(("args", "message"), [
    (([0, 1], [1], None, 7), "as many skips"),
    (([0], [0], None, 7), "skip of 0"),
    (([9], [1], None, 7), "below the table size"),
    (([0, 1], [1, 2], [0.5, 0.5], 7), "largest share"),
    (([0, 1], [1, 2], [1.0, float("nan")], 7), r"\(0, 1\]"),
    (([0], [1], None, 1), "table size"),
])
def test_bad_arguments_are_errors_not_crashes(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fill(*args)
