"""The one interface every balancing strategy implements, and the pick/done guard around it.

A strategy sees only *usable* endpoints with their *effective* weights (health, ejection, drain, slow
start and dynamic weights are applied outside, in `steelyard.runtime`). It keeps whatever state its
algorithm needs (counters, in-flight counts, EWMA, lookup tables) keyed by endpoint id, so that state
survives `set_endpoints` for endpoints that stay. A pick never blocks and never raises; `None` means
"no backend", which the proxy turns into a 503 with a plain reason. Every pick gets exactly one
`on_done` (gRPC's Done callback), which `Balancer.pick()` guarantees with a `Pick` handle.

Clock and randomness are injected so tests script them instead of sleeping.
"""

from __future__ import annotations

import copy
import random
import time
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from steelyard.model import Strategy as StrategySpec

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A usable backend as a strategy sees it. `id` is stable across config changes (`host:port`)."""

    id: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class PickContext:
    """What a strategy may look at for one request. `hash_key` is already extracted per `hashOn`."""

    client_ip: str | None = None
    hash_key: str | None = None


NO_CONTEXT = PickContext()


class BalancingStrategy(ABC):
    """Base class of all strategies. Subclasses set `name` to their `strategy.type` value."""

    name: ClassVar[str]
    # Attributes holding immutable lookup tables (rings, Maglev tables): `explain` picks on a deep copy,
    # which shares these instead of copying a million entries.
    shared_on_copy: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        self.spec = spec
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()

    @abstractmethod
    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the usable set. Keep per-endpoint state for ids that stay; drop the rest."""

    @abstractmethod
    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        """Choose an endpoint for one request or connection, or None when none is usable."""

    def on_done(self, endpoint: Endpoint, latency: float, ok: bool) -> None:  # noqa: B027 - optional hook
        """Exactly once per pick: how long it took (seconds) and whether it succeeded."""

    def note_pick(self, endpoint: Endpoint) -> bool:
        """A request now in flight on `endpoint` that this strategy did not pick (a retry, chosen among
        the endpoints not yet tried). A strategy that counts picks in flight counts it and returns True:
        it then gets that request's `on_done` like its own. The default returns False and never hears of
        it."""
        return False

    def pick_among(self, candidates: Sequence[Endpoint]) -> Endpoint | None:
        """A retry's pick among `candidates` (the usable endpoints not yet tried) by this strategy's own
        rule, counted like its own picks (its `on_done` follows). None when the strategy has no such
        rule (the default: a retry is then a weighted random draw, told through `note_pick`)."""
        return None

    def describe(self) -> dict[str, object]:
        """Strategy state for `explain` and the admin API; override to show more."""
        return {"strategy": self.name}

    def __deepcopy__(self, memo: dict[int, object]) -> BalancingStrategy:
        cls = type(self)
        clone = cls.__new__(cls)
        memo[id(self)] = clone
        shared = cls.shared_on_copy
        bound = {}
        for key, value in self.__dict__.items():
            owner = getattr(value, "__self__", None)
            if isinstance(value, types.BuiltinMethodType) and not isinstance(owner, types.ModuleType):
                bound[key] = value  # a cached `rng.random`, say: rebind it to the copied rng below
            else:
                clone.__dict__[key] = value if key in shared else copy.deepcopy(value, memo)
        for key, method in bound.items():
            clone.__dict__[key] = getattr(copy.deepcopy(method.__self__, memo), method.__name__)
        return clone


_REGISTRY: dict[str, type[BalancingStrategy]] = {}


def register(cls: type[BalancingStrategy]) -> type[BalancingStrategy]:
    """Class decorator: make a strategy available under its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def strategy_class(name: str) -> type[BalancingStrategy]:
    from steelyard import strategies  # noqa: F401  (import registers every module)

    return _REGISTRY[name]


def registered_names() -> list[str]:
    from steelyard import strategies  # noqa: F401

    return sorted(_REGISTRY)


def create(
    spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None
) -> BalancingStrategy:
    """Build the strategy a policy asks for."""
    return strategy_class(spec.type.value)(spec, clock=clock, rng=rng)


class Pick:
    """One pick's handle: `done()` reports the outcome once; later calls are ignored."""

    __slots__ = ("endpoint", "_strategy", "_started", "_clock", "finished")

    def __init__(self, strategy: BalancingStrategy, endpoint: Endpoint, clock: Clock):
        self.endpoint = endpoint
        self._strategy = strategy
        self._clock = clock
        self._started = clock()
        self.finished = False

    def done(self, ok: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self._strategy.on_done(self.endpoint, self._clock() - self._started, ok)

    def __enter__(self) -> Pick:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.done(ok=exc_type is None)
