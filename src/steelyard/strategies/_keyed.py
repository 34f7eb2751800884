"""What RingHash, SourceIPHash and Maglev share: a pick by request key, remembered per endpoint set.

A pick hashes `key(context)` to an endpoint through the subclass's structure (`_lookup`: a ring or a
table). For RingHash and Maglev the key is hashOn's value (the header, the cookie, or the client address
for `sourceIP`); a request without it (no such header or cookie) goes round robin, as HAProxy's
`balance hdr()` does, never to a hash of the client address. SourceIPHash's key is the client address.
Clients and sessions repeat, and a dict lookup costs a fraction of hashing and searching, so answers are
memoised: a new dict per endpoint set, emptied when full (no LRU bookkeeping).
"""

from __future__ import annotations

import random
import time

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies.base import NO_CONTEXT, BalancingStrategy, Clock, Endpoint, PickContext

MEMO_LIMIT = 1 << 14


class KeyedStrategy(BalancingStrategy):
    """Base of the hash strategies; subclasses set `_endpoints`, reset `_memo` and define `_lookup`."""

    def __init__(self, spec: StrategySpec, clock: Clock = time.monotonic, rng: random.Random | None = None):
        super().__init__(spec, clock, rng)
        self._endpoints: list[Endpoint] = []
        self._next = 0  # round robin when a pick has no key
        self._memo: dict[str, Endpoint] = {}  # key -> endpoint for the current endpoint set

    def key(self, context: PickContext) -> str | None:
        """The value to hash, None for round robin: `hash_key` as the proxy extracted it per hashOn (for
        `sourceIP` it is the client address already); a missing header or cookie gives None."""
        return context.hash_key

    def _lookup(self, key: str) -> Endpoint:
        """The endpoint for a key not in the memo (the endpoint set is not empty)."""
        raise NotImplementedError

    def pick(self, context: PickContext = NO_CONTEXT) -> Endpoint | None:
        endpoints = self._endpoints
        if not endpoints:
            return None
        key = self.key(context)
        if key is None:
            index = self._next % len(endpoints)
            self._next = index + 1
            return endpoints[index]
        memo = self._memo
        chosen = memo.get(key)
        if chosen is None:
            chosen = self._lookup(key)
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            memo[key] = chosen
        return chosen
