"""Which flow logs a decoded flow goes to, by the addresses of the account's resources.

A flow belongs to each resource whose `addresses` (single addresses or CIDR blocks) contain its
destination (as DIRECTION_INGRESS) or its source (as DIRECTION_EGRESS), and goes to every ACTIVE
flow log on that resource whose traffic type admits the flow's action (ALL: any; ALLOW: ACCEPT;
DENY: REJECT). A flow with both ends in one resource is recorded twice, once each way.

The index is built once per inventory snapshot (the collector rebuilds it when flow logs or
resources change) so that a flow costs a few dict lookups: one per distinct prefix length in
use, and an address seen before costs one.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable, Sequence

from server.core.model import Action, Direction, FlowLog, FlowLogState, Resource, TrafficType

INGRESS = int(Direction.INGRESS)
EGRESS = int(Direction.EGRESS)
_ACCEPT, _REJECT = int(Action.ACCEPT), int(Action.REJECT)


_pton, _AF4, _AF6 = socket.inet_pton, socket.AF_INET, socket.AF_INET6


def admits(traffic_type: int, action: int) -> bool:
    """Whether a flow log of this traffic type records a flow with this action."""
    if traffic_type == TrafficType.ALLOW:
        return action == _ACCEPT
    if traffic_type == TrafficType.DENY:
        return action == _REJECT
    return True


_ADMITTED = {t: frozenset(a for a in (_ACCEPT, _REJECT) if admits(t, a)) for t in TrafficType}


class AccountIndex:
    """The ACTIVE flow logs of one account, findable by address."""

    MAX_CACHED = 200_000  # addresses remembered (then the cache starts over)

    def __init__(self, pairs: Iterable[tuple[FlowLog, Resource]]) -> None:
        # prefix length -> version -> network int -> flow logs of the resources holding it
        by_len: dict[tuple[int, int], dict[int, list[FlowLog]]] = {}
        self.flow_logs: dict[str, FlowLog] = {}
        for fl, resource in pairs:
            if fl.state != FlowLogState.ACTIVE:
                continue
            self.flow_logs[fl.id] = fl
            for text in resource.addresses:
                try:
                    net = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    continue
                bucket = by_len.setdefault((net.version, net.prefixlen), {})
                logs = bucket.setdefault(int(net.network_address), [])
                if fl not in logs:
                    logs.append(fl)
        self._levels = [(version, (1 << (32 if version == 4 else 128)) - (1 << ((32 if version == 4 else 128) - plen)),
                         bucket) for (version, plen), bucket in sorted(by_len.items(), key=lambda kv: -kv[0][1])]
        self._cache: dict[str, tuple[FlowLog, ...]] = {}
        self._targets: dict[str, tuple[tuple[str, frozenset[int]], ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.flow_logs)

    def flow_logs_of(self, address: str) -> tuple[FlowLog, ...]:
        """Every ACTIVE flow log of a resource whose addresses contain `address` (text)."""
        hit = self._cache.get(address)
        if hit is not None:
            return hit
        try:
            if ":" in address:
                value, version = int.from_bytes(_pton(_AF6, address), "big"), 6
            else:
                value, version = int.from_bytes(_pton(_AF4, address), "big"), 4
        except (OSError, ValueError):
            return ()
        found: list[FlowLog] = []
        for v, mask, bucket in self._levels:
            if v == version:
                for fl in bucket.get(value & mask, ()):
                    if fl not in found:
                        found.append(fl)
        out = tuple(found)
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[address] = out
        return out

    def attribute(self, flows: Sequence[tuple], groups: dict[str, list], status_ok: int = 1) -> int:
        """Append each flow's Ingest row (server.core.ingest.accept's 16 fields, and the sampling
        rate last) to groups[flow_log_id]; returns how many flows went nowhere."""
        cache = self._targets
        targets = self._targets_of
        missed = 0
        for (src, dst, sport, dport, proto, pkts, octets, start, end, flags, action, rate) in flows:
            hit = False
            into = cache.get(dst)
            if into is None:
                into = targets(dst)
            if into:
                for fid, actions in into:
                    if action in actions:
                        hit = True
                        rows = groups.get(fid)
                        if rows is None:
                            rows = groups[fid] = []
                        rows.append(("", "", "", src, dst, sport, dport, proto, pkts, octets, start, end, action,
                                     status_ok, INGRESS, flags, rate))
            out = cache.get(src)
            if out is None:
                out = targets(src)
            if out:
                for fid, actions in out:
                    if action in actions:
                        hit = True
                        rows = groups.get(fid)
                        if rows is None:
                            rows = groups[fid] = []
                        rows.append(("", "", "", src, dst, sport, dport, proto, pkts, octets, start, end, action,
                                     status_ok, EGRESS, flags, rate))
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
