"""Which flow logs a decoded flow goes to, by the addresses of the account's resources.

A flow belongs to each resource whose `addresses` (single addresses or CIDR blocks) contain its
destination (as DIRECTION_INGRESS) or its source (as DIRECTION_EGRESS), and goes to every ACTIVE
flow log on that resource whose traffic type admits the flow's action (ALL: any; ALLOW: ACCEPT;
DENY: REJECT). A flow with both ends in one resource is recorded twice, once each way.

The index is built once per inventory snapshot (the collector rebuilds it when flow logs or
resources change); an address seen before costs one dict lookup.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from server.core.attribution import AddressMatcher
from server.core.model import Action, Direction, FlowLog, FlowLogState, Resource, TrafficType

INGRESS = int(Direction.INGRESS)
EGRESS = int(Direction.EGRESS)
_ACCEPT, _REJECT = int(Action.ACCEPT), int(Action.REJECT)


def admits(traffic_type: int, action: int) -> bool:
    """Whether a flow log of this traffic type records a flow with this action."""
    if traffic_type == TrafficType.ALLOW:
        return action == _ACCEPT
    if traffic_type == TrafficType.DENY:
        return action == _REJECT
    return True


_ADMITTED = {t: frozenset(a for a in (_ACCEPT, _REJECT) if admits(t, a)) for t in TrafficType}


class Group:
    """The flows going to one flow log, and the direction (a Direction number) of each there."""

    __slots__ = ("flows", "directions")

    def __init__(self) -> None:
        self.flows: list[tuple] = []
        self.directions = bytearray()

    def __len__(self) -> int:
        return len(self.flows)

    def extend(self, other: "Group") -> None:
        self.flows.extend(other.flows)
        self.directions.extend(other.directions)


class AccountIndex:
    """The ACTIVE flow logs of one account, findable by address.

    Containment is server.core.attribution's AddressMatcher (the rule Ingest derives a missing
    direction with): one matcher over every resource address of the account turns an address no
    resource holds away in one bisection (a port scan from the internet costs no more), and the
    resources' own matchers say which ones hold the others. Answers are cached per address."""

    MAX_CACHED = 200_000  # addresses remembered (then the cache starts over)

    def __init__(self, pairs: Iterable[tuple[FlowLog, Resource]]) -> None:
        self.pairs = list(pairs)  # what it was built from: an unchanged inventory keeps the index
        self.flow_logs: dict[str, FlowLog] = {}
        by_resource: dict[str, tuple[Resource, list[FlowLog]]] = {}
        for fl, resource in self.pairs:
            if fl.state != FlowLogState.ACTIVE:
                continue
            self.flow_logs[fl.id] = fl
            by_resource.setdefault(resource.id, (resource, []))[1].append(fl)
        self._any = AddressMatcher([a for r, _ in by_resource.values() for a in r.addresses], max_cache=0)
        self._resources = [(AddressMatcher(r.addresses, max_cache=0), tuple(fls)) for r, fls in by_resource.values()]
        self._targets: dict[str, tuple[tuple[str, frozenset[int]], ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.flow_logs)

    def flow_logs_of(self, address: str) -> tuple[FlowLog, ...]:
        """Every ACTIVE flow log of a resource whose addresses contain `address` (text)."""
        if not self._any.contains(address):
            return ()
        return tuple(fl for matcher, fls in self._resources if matcher.contains(address) for fl in fls)

    def attribute(self, flows: Sequence[tuple], groups: dict[str, Group]) -> int:
        """Add each flow (a server.sources.flows.Flow tuple, kept as it is: no row is built per
        flow) to groups[flow_log_id] with its direction, once per flow log it goes to; returns how
        many flows went nowhere."""
        cache = self._targets
        targets = self._targets_of
        missed = 0
        for f in flows:
            into = cache.get(f[1])
            if into is None:
                into = targets(f[1])
            out = cache.get(f[0])
            if out is None:
                out = targets(f[0])
            if not (into or out):
                missed += 1
                continue
            action = f[10]
            hit = False
            for fid, actions in into:
                if action in actions:
                    hit = True
                    g = groups.get(fid)
                    if g is None:
                        g = groups[fid] = Group()
                    g.flows.append(f)
                    g.directions.append(INGRESS)
            for fid, actions in out:
                if action in actions:
                    hit = True
                    g = groups.get(fid)
                    if g is None:
                        g = groups[fid] = Group()
                    g.flows.append(f)
                    g.directions.append(EGRESS)
            if not hit:
                missed += 1
        return missed

    def _targets_of(self, address: str) -> tuple[tuple[str, frozenset[int]], ...]:
        """(flow log id, the actions its traffic type admits) of every flow log holding address."""
        out = tuple((fl.id, _ADMITTED[fl.traffic_type]) for fl in self.flow_logs_of(address))
        if len(self._targets) >= self.MAX_CACHED:
            self._targets.clear()
        self._targets[address] = out
        return out
