"""SourceIPHash: the client's address picks the endpoint, consistently.

Algorithm: nginx's `ip_hash` / HAProxy's `balance source` idea (same client, same backend), but placed
on RingHash's consistent ring rather than hash modulo n, so removing one of n endpoints moves only about
1/n of the clients instead of nearly all. A ring rather than Maglev because it builds in milliseconds at
10,000 endpoints (see maglev.py). Only `context.client_ip` is hashed (`hashOn` is for RingHash and Maglev);
a pick without a client address (none known) goes round robin.

Cost: one hash of the address and a bisect, O(log ring); set_endpoints as RingHash.
"""

from __future__ import annotations

from steelyard.strategies.base import PickContext, register
from steelyard.strategies.ring_hash import RingHash


@register
class SourceIPHash(RingHash):
    name = "SourceIPHash"

    def key(self, context: PickContext) -> str | None:
        return context.client_ip
