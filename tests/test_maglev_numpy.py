"""The NumPy Maglev build gives exactly the pure-Python reference's table, slot for slot."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.strategies import _maglev_numpy, maglev


def same(ids: list[str], weights: list[float], m: int) -> None:
    fast = _maglev_numpy.build_table_numpy(ids, weights, m).tolist()
    assert fast == maglev.build_table_reference(ids, weights, m)


endpoint_ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40, unique=True)
integer_weights = st.integers(1, 1000).map(float)
float_weights = st.floats(0.01, 10.0, allow_nan=False)  # e.g. slow start ramps


def draw_weights(n: int, data: st.DataObject) -> list[float]:
    """Weights for n endpoints: all equal, integers, floats, or a few values shared by several."""
    kind = data.draw(st.sampled_from(["equal", "integers", "floats", "few"]))
    if kind == "equal":
        return [1.0] * n
    if kind == "integers":
        return data.draw(st.lists(integer_weights, min_size=n, max_size=n))
    if kind == "floats":
        return data.draw(st.lists(float_weights, min_size=n, max_size=n))
    return data.draw(st.lists(st.sampled_from([0.1, 1 / 3, 1.0, 2.5, 7.0]), min_size=n, max_size=n))


@settings(max_examples=150, deadline=None)
@given(ids=endpoint_ids, m=st.sampled_from([7, 13, 101, 1009]), data=st.data())
def test_the_same_table_as_the_reference(ids: list[str], m: int, data: st.DataObject) -> None:
    same(ids, draw_weights(len(ids), data), m)


def addresses(n: int) -> list[str]:
    return [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080" for i in range(n)]


@pytest.mark.parametrize(("n", "weights"), [
    (3, [5.0, 1.0, 1.0]),
    (3, [1.0, 1.0, 1.0]),
    (100, [float(1 + i % 5) for i in range(100)]),
    (100, [1.0 + (i % 97) / 97 for i in range(100)]),  # 97 distinct float weights
    (100, [1000.0] + [1.0] * 99),  # skewed: rounds with few turns
])
def test_the_same_table_at_the_default_size(n: int, weights: list[float]) -> None:
    same(addresses(n), weights, 65537)


def test_many_distinct_shares_take_the_lockstep_path() -> None:
    n = _maglev_numpy.LOCKSTEP_SHARES * 3
    same(addresses(n), [1.0 + i / n for i in range(n)], 10007)


def test_the_same_table_with_2000_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """The size from which build_table hands over to NumPy when the C build is missing (the reference
    needs seconds at 10,000)."""
    m = maglev.table_size(2000)
    assert m == 200_003 and maglev.NUMPY_MIN_ENDPOINTS <= 2000
    ids, weights = addresses(2000), [float(1 + i % 5) for i in range(2000)]
    reference = maglev.build_table_reference(ids, weights, m)
    assert _maglev_numpy.build_table_numpy(ids, weights, m).tolist() == reference
    monkeypatch.setattr(maglev, "_maglev_fill", None)
    assert maglev.build_table(ids, weights, m) == reference


def test_the_same_table_with_skewed_weights_at_1000_endpoints() -> None:
    """One heavy endpoint among many light ones: most rounds have a turn or two (the reference walks every
    endpoint every round, so its cost grows with the skew; 1,000 endpoints keep it about a second)."""
    same(addresses(1000), [100.0] + [1.0] * 999, maglev.table_size(1000))
