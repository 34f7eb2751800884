"""The C picks (`_picks`) choose exactly what the Python picks choose, and leave the same state.

PowerOfTwoChoices and PeakEWMA hand their ticket-table pick to C when it is built; the Python pick is the
reference. Each sequence below runs twice from the same seed, once with the C pick and once without,
and must give the same endpoints in the same order and the same in-flight counts and estimates. `make
test` requires the extension to be built (a silently missing build would void the benchmark figures).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies import Endpoint, create, peak_ewma, power_of_two_choices

NATIVE = {"PowerOfTwoChoices": (power_of_two_choices, "_two_choices_native"),
          "PeakEWMA": (peak_ewma, "_peak_ewma_native")}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(kind: str, ops: list[tuple[Any, ...]], weights: list[float], *, native: bool,
        monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Any, int]:
    module, name = NATIVE[kind]
    real = getattr(module, name)
    assert real is not None, "the C extension is not built (pip install -e . with a compiler)"
    decided = 0

    def counting(*args: Any) -> int:
        nonlocal decided
        best: int = real(*args)
        decided += best >= 0
        return best

    monkeypatch.setattr(module, name, counting if native else None)
    clock = Clock()
    strategy = create(StrategySpec.model_validate({"type": kind}), clock=clock, rng=random.Random(7))
    endpoints = [Endpoint(f"10.0.0.{i}:80", w) for i, w in enumerate(weights)]
    strategy.set_endpoints(endpoints)
    picked: list[str] = []
    in_flight: list[Endpoint] = []
    for op in ops:
        if op[0] == "pick":
            e = strategy.pick()
            assert e is not None
            picked.append(e.id)
            in_flight.append(e)
        elif op[0] == "done" and in_flight:
            e = in_flight.pop(op[1] % len(in_flight))
            strategy.on_done(e, op[2], op[3])
        elif op[0] == "time":
            clock.now += op[1]
        elif op[0] == "set":
            strategy.set_endpoints([e for i, e in enumerate(endpoints) if i % 4 != op[1] % 4] or endpoints)
    monkeypatch.setattr(module, name, real)
    return picked, strategy.describe(), decided


operations = st.lists(st.one_of(
    st.tuples(st.just("pick")),
    st.tuples(st.just("done"), st.integers(0, 50), st.floats(0.0, 2.0), st.booleans()),
    st.tuples(st.just("time"), st.floats(0.0, 5.0)),
    st.tuples(st.just("set"), st.integers(0, 3)),
), min_size=1, max_size=120)


@pytest.mark.parametrize("kind", sorted(NATIVE))
@settings(max_examples=120, deadline=None)
@given(ops=operations, weights=st.lists(st.integers(1, 20).map(float), min_size=2, max_size=12))
def test_the_same_picks_and_state_as_the_python_pick(kind: str, ops: list[tuple[Any, ...]],
                                                     weights: list[float]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        native = run(kind, ops, weights, native=True, monkeypatch=monkeypatch)
        python = run(kind, ops, weights, native=False, monkeypatch=monkeypatch)
    assert native[:2] == python[:2]


@pytest.mark.parametrize("kind", sorted(NATIVE))
def test_the_c_pick_decides_most_picks(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a long run with completions (PeakEWMA's estimates all measured), C decides nearly every pick:
    the parity test above is not passing because the C path never runs."""
    ops: list[tuple[Any, ...]] = []
    rng = random.Random(3)
    for _ in range(3000):
        ops.append(("pick",))
        if rng.random() < 0.9:
            ops.append(("done", rng.randrange(50), rng.uniform(0.001, 0.2), rng.random() < 0.95))
    weights = [float(1 + i % 5) for i in range(40)]
    picked, state, decided = run(kind, ops, weights, native=True, monkeypatch=monkeypatch)
    assert decided > 0.9 * len(picked)
    assert (picked, state) == run(kind, ops, weights, native=False, monkeypatch=monkeypatch)[:2]


def test_unexpected_values_are_left_to_the_python() -> None:
    from steelyard.strategies._picks import peak_ewma as native_ewma
    from steelyard.strategies._picks import two_choices

    slots, bounds = [0, 0, 1, 1], [0, 2, 2, 2]
    counts = [0, 0]
    cases: list[tuple[Callable[..., int], tuple[Any, ...]]] = [
        (two_choices, (slots, bounds, counts, [1, 1], 0.3)),  # int weights
        (two_choices, (slots, bounds, [0, 2**60], [1.0, 1.0], 0.3)),  # a count beyond exact doubles
        (two_choices, (slots, bounds, counts, [1.0], 0.3)),  # weights and counts disagree
        (two_choices, ([0, 5], [0, 1, 1, 1], counts, [1.0, 1.0], 0.3)),  # a slot beyond the endpoints
        (two_choices, (slots, [0, 4, 2, 2], counts, [1.0, 1.0], 0.3)),  # a span of the whole table
        (two_choices, (slots, [0, 2], counts, [1.0, 1.0], 0.3)),  # bounds for fewer endpoints
        (native_ewma, (slots, bounds, [0, 0], [0.1, None], 0.3)),  # one measured: the clock is needed
        (native_ewma, (slots, bounds, [0, 0], [0.1, 1], 0.3)),  # an int key
        (native_ewma, (slots, bounds, [0, 0], [0.1], 0.3)),  # keys and in-flight counts disagree
    ]
    for function, args in cases:
        before = repr(args)
        assert function(*args) == -1
        assert repr(args) == before  # nothing counted
    assert two_choices(slots, bounds, counts, [1.0, 1.0], 0.3) in (0, 1) and sum(counts) == 1


def edf_run(ops: list[tuple[Any, ...]], weights: list[float], *, native: bool,
            monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[dict[str, tuple[int, int]]]]:
    from steelyard.strategies import weighted_round_robin as wrr

    real = wrr._EdfHeap
    assert real is not None, "the C extension is not built (pip install -e . with a compiler)"
    monkeypatch.setattr(wrr, "_EdfHeap", real if native else None)
    strategy = create(StrategySpec.model_validate({"type": "WeightedRoundRobin"}), rng=random.Random(7))
    assert isinstance(strategy, wrr.WeightedRoundRobin)
    endpoints = [Endpoint(f"10.0.0.{i}:80", w) for i, w in enumerate(weights)]
    strategy.set_endpoints(endpoints)
    assert strategy._edf and (strategy._queue is not None) == native
    picked: list[str] = []
    deadlines = []
    for op in ops:
        if op[0] == "pick":
            e = strategy.pick()
            assert e is not None
            picked.append(e.id)
        elif op[0] == "set":  # drop a quarter, or change one weight (deadlines carry over, rescaled)
            changed = [Endpoint(e.id, e.weight * (1.5 if i == op[1] else 1.0))
                       for i, e in enumerate(endpoints)]
            strategy.set_endpoints([e for i, e in enumerate(changed) if i % 4 != op[1] % 4] or changed)
            deadlines.append(strategy._deadlines())
    deadlines.append(strategy._deadlines())
    monkeypatch.setattr(wrr, "_EdfHeap", real)
    return picked, deadlines


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.one_of(st.tuples(st.just("pick")), st.tuples(st.just("set"), st.integers(0, 11))),
                    min_size=1, max_size=200),
       weights=st.lists(st.floats(0.05, 50.0), min_size=9, max_size=12, unique=True))
def test_the_edf_heap_gives_the_python_heaps_order(ops: list[tuple[Any, ...]], weights: list[float]) -> None:
    """More than 8 distinct weights: EDF mode. The same picks and the same deadlines, native or not."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert edf_run(ops, weights, native=True, monkeypatch=monkeypatch) == edf_run(
            ops, weights, native=False, monkeypatch=monkeypatch)


def test_the_edf_heap_renormalizes_instead_of_overflowing() -> None:
    """Strides of ~2^56 pass 2^63 within a few hundred picks: the keys it reports stay exact."""
    import copy
    import heapq

    from steelyard.strategies._picks import EdfHeap

    bits = 4
    strides = [((1 << 52) + i * 977) << bits for i in range(9)]
    python = [(((1 << 50) + i) << bits) | i for i in range(9)]
    heapq.heapify(python)
    native = EdfHeap(python, strides, bits)
    for step in range(5000):
        key = python[0]
        heapq.heapreplace(python, key + strides[key & 15])
        assert native.pop_push() == key & 15, step
    assert python[0] > 1 << 64  # far past what 64 bits hold
    assert sorted(native.keys()) == sorted(python)
    twin = copy.deepcopy(native)  # explain's copy of a strategy
    assert [twin.pop_push() for _ in range(50)] == [native.pop_push() for _ in range(50)]
    with pytest.raises(ValueError):
        EdfHeap([0, 1 << 70], [16, 16], bits)  # keys too far apart for one array
    with pytest.raises(ValueError):
        EdfHeap([0, 1], [16, 17], bits)  # a stride that would change the index bits
