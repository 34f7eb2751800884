"""WeightedRoundRobin: nginx's smooth weighted round robin, with a cheap pick at any size.

Algorithm (nginx, `ngx_http_upstream_get_peer`, "smooth" weighted round robin since 1.3.0): every
endpoint carries a *current* weight. A pick adds each endpoint's weight to its current weight, takes the
endpoint with the largest current weight (the first in order on a tie) and subtracts the total weight
from it. Weights a:5 b:1 c:1 give `a a b a c a a`, then repeat: heavy endpoints are spread out instead of
served in bursts.

Cost: nginx scans every endpoint per pick, O(n). Here the same sequence is produced in blocks and a pick
replays the block, O(1) (an index and a compare):

- Endpoints of equal weight keep their relative order (they all gain the same amount each step), so a
  step only compares the best of each *weight class*, each class a heap: O(m + log n) per step for m
  distinct weights. With integer weights one block is a whole period, W / gcd(weights) picks for a
  total weight W, when that is at most 65,536; if the state after the block equals the state before
  (it does from nginx's all-zero start) the block is replayed forever with no further work.
- With more than 8 distinct weights (many endpoints in slow start, say) the class scan would cost too
  much, so the strategy switches to earliest-deadline-first scheduling (Envoy's `EdfScheduler`, stride
  scheduling): each endpoint's next deadline advances by 1/weight per pick; a pick is one heap update,
  O(log n). Its order is smooth and weighted but is not nginx's exact sequence; switching between the
  two modes restarts the cycle. Heap entries are plain ints, the deadline (in units of 2^-32) shifted
  left past the endpoint's index, so a heap step compares two ints instead of two tuples (a tie still
  goes to the lower index); a stride is 2^32 / weight rounded, within 1.2e-7 of it up to weight 1000.
  When `_picks` is built the heap lives in C (`EdfHeap`: one array, the same keys and order; a third
  of the cost at 10,000 endpoints); this list heap is the reference and the fallback.

State that survives `set_endpoints`: current weights (nginx mode) or deadlines (EDF mode) of endpoints
that stay; a newcomer starts at nginx's 0 (or at half a stride from now). Weight 0 is never picked.
"""

from __future__ import annotations

import math
import random
import time
import types
from collections import Counter
from collections.abc import Sequence
from heapq import heapify, heapreplace
from typing import TYPE_CHECKING

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies._common import usable
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext, register

if TYPE_CHECKING:
    from steelyard.strategies._picks import EdfHeap

_picks: types.ModuleType | None
try:  # the C picks (optional: setup.py builds them when a compiler is present)
    from steelyard.strategies import _picks
except ImportError:  # pragma: no cover - tests switch them off with monkeypatch instead
    _picks = None
_EdfHeap = None if _picks is None else _picks.EdfHeap

MAX_WEIGHT_CLASSES = 8  # above this many distinct weights, EDF mode
PERIOD_LIMIT = 1 << 16  # longest block (picks) computed at once
FLOAT_BLOCK = 4096  # block length when weights are not integers (no exact period to find)
EDF_SCALE = 1 << 32  # EDF mode: a deadline of 1.0 is 2^32 ticks


def smooth_sequence(weights: Sequence[float], current: list[float], steps: int) -> list[int]:
    """Run nginx's smooth WRR for `steps` picks from `current` (updated in place); the picked indices.

    Per step: the best endpoint of each weight class (a heap of (-base, index), where an endpoint's
    current weight is base + k * weight after k steps), compared across classes: O(m + log n).
    """
    total = sum(weights)
    classes: dict[float, list[tuple[float, int]]] = {}
    for i, w in enumerate(weights):
        classes.setdefault(w, []).append((-current[i], i))
    heaps = [(w, heap) for w, heap in classes.items()]
    for _, heap in heaps:
        heapify(heap)
    picked: list[int] = []
    append = picked.append
    if len(heaps) == 1:
        (w, heap), = heaps
        for _ in range(steps):
            neg_base, i = heap[0]
            heapreplace(heap, (neg_base + total, i))
            append(i)
    else:
        for k in range(1, steps + 1):
            best_heap = heaps[0][1]
            best_score = -1.0
            best_i = -1
            for w, heap in heaps:
                neg_base, i = heap[0]
                score = k * w - neg_base
                if best_i < 0 or score > best_score or (score == best_score and i < best_i):
                    best_score, best_i, best_heap = score, i, heap
            heapreplace(best_heap, (best_heap[0][0] + total, best_i))
            append(best_i)
    for w, heap in heaps:
        for neg_base, i in heap:
            current[i] = -neg_base + steps * w
    return picked


@register
class WeightedRoundRobin(BalancingStrategy):
    name = "WeightedRoundRobin"

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._weights: list[float] = []
        # nginx mode: a block of picks, the current weights before and after it, the position in it.
        self._block: list[Endpoint] = []
        self._block_indices: list[int] = []
        self._block_start: list[float] = []
        self._block_end: list[float] = []
        self._block_repeats = False
        self._pos = 0
        # EDF mode: a heap of (deadline << bits) | index; a pick moves the top's deadline on by its
        # stride (kept pre-shifted, so the pick adds one int).
        self._edf = False
        self._heap: list[int] = []
        self._queue: EdfHeap | None = None  # the same heap in C when built (then _heap stays empty)
        self._strides: list[int] = []
        self._bits = 1
        self._mask = 1

    def _current_weights(self) -> dict[str, float]:
        """nginx's current weights as of the next pick (O(n + position in block))."""
        if self._edf or not self._endpoints:
            return {}
        p = self._pos
        counts = Counter(self._block_indices[:p])
        total = sum(self._weights)
        return {e.id: self._block_start[i] + p * self._weights[i] - total * counts[i]
                for i, e in enumerate(self._endpoints)}

    def _deadlines(self) -> dict[str, tuple[int, int]]:
        """EDF mode: each endpoint's deadline and stride, in ticks."""
        bits, mask = self._bits, self._mask
        return {self._endpoints[key & mask].id: (key >> bits, self._strides[key & mask] >> bits)
                for key in self._edf_keys()}

    def _edf_keys(self) -> list[int]:
        """EDF mode: the heap's keys, (deadline << bits) | index, the smallest first."""
        return self._queue.keys() if self._queue is not None else self._heap

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        new = usable(endpoints)
        old_current = self._current_weights()
        old_deadlines = self._deadlines()
        keys = self._edf_keys()
        now = keys[0] >> self._bits if keys else 0
        self._endpoints = new
        self._weights = [e.weight for e in new]
        self._block, self._block_indices, self._pos, self._block_repeats = [], [], 0, False
        self._heap, self._strides, self._queue = [], [], None
        self._edf = len(set(self._weights)) > MAX_WEIGHT_CLASSES
        if not new:
            self._block_start = []
        elif self._edf:
            bits = max(1, len(new).bit_length())
            self._bits, self._mask = bits, (1 << bits) - 1
            strides = [max(1, round(EDF_SCALE / w)) for w in self._weights]
            heap = []
            for i, e in enumerate(new):
                stride = strides[i]
                old = old_deadlines.get(e.id)
                # Keep an endpoint's remaining wait (rescaled if its weight changed); a newcomer waits half
                # a stride, so equal newcomers interleave with the others instead of all coming first.
                if old is None:
                    deadline = now + stride // 2
                elif old[1] == stride:
                    deadline = old[0]
                else:
                    deadline = now + (old[0] - now) * stride // old[1]
                heap.append((deadline << bits) | i)
            heapify(heap)
            self._heap = heap
            self._strides = [stride << bits for stride in strides]
            if _EdfHeap is not None:
                try:
                    self._queue, self._heap = _EdfHeap(heap, self._strides, bits), []
                except ValueError:  # keys or strides beyond 64 bits (extreme weights): the list heap
                    self._queue = None
        else:
            self._block_start = [old_current.get(e.id, 0.0) for e in new]
            self._fill_block()

    def _fill_block(self) -> None:
        weights = self._weights
        # The sequence does not change when every weight (and current weight) is divided by the same
        # number, so integer weights are divided by their gcd: 1000/1000/1000 has a period of 3, not 3000.
        scale = math.gcd(*(int(w) for w in weights)) if all(w == int(w) for w in weights) else 0
        period = int(sum(weights)) // scale if scale else 0
        steps = period if 0 < period <= PERIOD_LIMIT else FLOAT_BLOCK
        unit = float(scale or 1)
        start = [c / unit for c in self._block_start]
        current = list(start)
        indices = smooth_sequence([w / unit for w in weights], current, steps)
        endpoints = self._endpoints
        self._block_indices = indices
        self._block = [endpoints[i] for i in indices]
        self._block_repeats = current == start
        self._block_end = [c * unit for c in current]
        self._pos = 0

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        pos = self._pos
        block = self._block
        if pos < len(block):
            self._pos = pos + 1
            return block[pos]
        if self._edf:  # here, not in _pick_slow: one Python call less per EDF pick (~15 %)
            queue = self._queue
            if queue is not None:  # the C heap: the same order, a third of the cost at 10,000
                return self._endpoints[queue.pop_push()]
            heap = self._heap
            key = heap[0]
            i = key & self._mask
            heapreplace(heap, key + self._strides[i])
            return self._endpoints[i]
        return self._pick_slow()

    def _pick_slow(self) -> Endpoint | None:
        if not self._endpoints:
            return None
        if not self._block_repeats:  # the next block starts where this one ended
            self._block_start = self._block_end
            self._fill_block()
        self._pos = 1
        return self._block[0]

    def describe(self) -> dict[str, object]:
        state: dict[str, object] = {"strategy": self.name, "mode": "edf" if self._edf else "nginx"}
        if self._edf:
            keys = self._edf_keys()
            state["next"] = self._endpoints[keys[0] & self._mask].id if keys else None
            return state
        block = self._block
        state["next"] = (block[self._pos].id if self._pos < len(block)
                         else block[0].id if block and self._block_repeats else None)
        state["period"] = len(block) if self._block_repeats else None
        if len(self._endpoints) <= 100:
            state["current_weights"] = self._current_weights()
        return state
