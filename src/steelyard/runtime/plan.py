"""The listener plan: which sockets a new configuration needs bound, closed or kept; and what a change
does to the upstreams, in words for the reload log. Pure (no I/O).

Decide, then do: `plan_listeners` compares what is bound with what is desired and returns the I/O left
to do; `runtime.apply` performs it. A kept address:port whose protocol changed (HTTP <-> TCP) is rebound,
because the protocol factory is chosen per socket; a change of routes only is not, since routes are read
from the snapshot per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from steelyard.config.desired import DesiredState, Listener, Upstream

__all__ = ["ListenerKey", "ListenerPlan", "describe_changes", "plan_listeners"]

ListenerKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    to_bind: tuple[Listener, ...]  # new addresses, and kept ones whose protocol changed
    to_close: tuple[ListenerKey, ...]  # gone, or protocol changed (closed after the new socket is bound)
    to_keep: tuple[Listener, ...]  # same address and protocol: the socket stays, routes may differ

    @property
    def is_empty(self) -> bool:
        return not self.to_bind and not self.to_close


def plan_listeners(current: Mapping[ListenerKey, Listener], desired: Sequence[Listener]) -> ListenerPlan:
    """Diff bound listeners against desired ones. Orders follow `desired`, then `current`, so logs and
    tests are deterministic."""
    to_bind: list[Listener] = []
    to_close: list[ListenerKey] = []
    to_keep: list[Listener] = []
    wanted: dict[ListenerKey, Listener] = {}
    for listener in desired:
        wanted[listener.key] = listener
    for key, listener in wanted.items():
        bound = current.get(key)
        if bound is None:
            to_bind.append(listener)
        elif bound.protocol != listener.protocol:
            to_bind.append(listener)
            to_close.append(key)
        else:
            to_keep.append(listener)
    for key in current:
        if key not in wanted:
            to_close.append(key)
    return ListenerPlan(tuple(to_bind), tuple(to_close), tuple(to_keep))


def describe_changes(old: DesiredState | None, new: DesiredState) -> list[str]:
    """What a change does to the upstreams, one phrase each, for the reload log: upstreams added and
    removed; per kept upstream a new strategy, another policy, endpoints added, removed or reweighted."""
    if old is None:
        return []
    out = [f"+{key}" for key in new.upstreams if key not in old.upstreams]
    out += [f"-{key}" for key in old.upstreams if key not in new.upstreams]
    for key, upstream in new.upstreams.items():
        before = old.upstreams.get(key)
        if before is not None and before != upstream:
            out.append(f"{key}: {', '.join(_upstream_changes(before, upstream))}")
    return out


def _upstream_changes(old: Upstream, new: Upstream) -> list[str]:
    parts = []
    old_type, new_type = old.policy.strategy.type, new.policy.strategy.type
    if old_type != new_type:
        parts.append(f"strategy {old_type.value} -> {new_type.value}")
    elif old.policy != new.policy or old.policy_name != new.policy_name:
        parts.append("policy changed")
    before = {(e.host, e.port): e for e in old.endpoints}
    after = {(e.host, e.port): e for e in new.endpoints}
    parts += [f"+{h}:{p}" for (h, p) in after if (h, p) not in before]
    parts += [f"-{h}:{p}" for (h, p) in before if (h, p) not in after]
    parts += [f"{h}:{p} weight {before[h, p].weight} -> {e.weight}" for (h, p), e in after.items()
              if (h, p) in before and before[h, p].weight != e.weight]
    return parts or ["endpoints changed"]
