"""ACL / security-group evaluation: does a resource's rule set ACCEPT or REJECT a flow, and which
rule decided?

Semantics (protos/flowlog/v1/resource.proto, SecurityRule; API.md "Records say which rule
decided"): the ACL rules (RULE_KIND_ACL: stateless, each direction judged on its own) are tried
first, in ascending priority, and the first that matches decides; when none matches, the
security-group rules are tried the same way; a flow that no rule matches is REJECTed by the
implicit default deny (rule_kind RULE_KIND_DEFAULT, rule_id "default-deny").
A rule matches when its direction equals the flow's (DIRECTION_UNSPECIFIED on a rule matches
either, so a malformed rule never crashes evaluation), its protocol is 0 or equal, its
peer_cidr is "" or contains the remote address (an address of the other IP family never
matches), and its local port range is 0-0 or contains the flow's local port (ingress: the
destination port; egress: the source port — the contract speaks of the *local* port).

The generator evaluates rules for every flow it invents (hundreds of thousands a second), so
rules are compiled once per rule set into plain tuples of integers (`compile_rules`, cached)
and evaluated against integer addresses (`CompiledRules.decide_int`, `CompiledRules.decision_int`
for the deciding rule too); `decide` is the convenient text-address entry point over the same
code.

Every rule has an id unique within its resource: `complete_rule_ids` gives the rules registered
without one `acl-N` / `sg-N` (N: the rule's position among the rules of its kind, bumped past
ids already taken), deterministically, so a resource loaded again gets the same ids.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import NamedTuple

from server.core.model import DEFAULT_DENY_RULE_ID, Action, Direction, ResourceType, RuleKind, SecurityRule

log = logging.getLogger(__name__)

# IANA protocol numbers the domain talks about.
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_GRE = 47
PROTO_ESP = 50
PROTO_ICMPV6 = 58
PROTO_SCTP = 132

_ACCEPT = int(Action.ACCEPT)
_REJECT = int(Action.REJECT)
_INGRESS = int(Direction.INGRESS)
_EGRESS = int(Direction.EGRESS)

# What decided a flow: (action, rule_id, rule_kind), as plain values for the record.
Decision = tuple[int, str, int]
DEFAULT_DENY: Decision = (_REJECT, DEFAULT_DENY_RULE_ID, int(RuleKind.DEFAULT))
_ID_PREFIX = {RuleKind.ACL: "acl", RuleKind.SECURITY_GROUP: "sg"}


def rule_kind_of(rule: SecurityRule) -> RuleKind:
    """The rule's kind; anything but ACL (unspecified included) is a security-group rule."""
    return RuleKind.ACL if rule.kind == RuleKind.ACL else RuleKind.SECURITY_GROUP


def complete_rule_ids(rules: Sequence[SecurityRule]) -> tuple[SecurityRule, ...]:
    """The rules with every empty id filled in ("acl-N", "sg-N") and every kind made ACL or
    SECURITY_GROUP. Ids already given are kept (the caller checks they are unique); a generated
    id never repeats one of them."""
    taken = {r.id for r in rules if r.id}
    counts = {RuleKind.ACL: 0, RuleKind.SECURITY_GROUP: 0}
    out = []
    for rule in rules:
        kind = rule_kind_of(rule)
        counts[kind] += 1
        rid = rule.id
        if not rid:
            n = counts[kind]
            rid = f"{_ID_PREFIX[kind]}-{n}"
            while rid in taken:
                n += 1
                rid = f"{_ID_PREFIX[kind]}-{n}"
            taken.add(rid)
        out.append(rule if (rid == rule.id and kind == rule.kind) else replace(rule, id=rid, kind=kind))
    return tuple(out)


class _Compiled(NamedTuple):
    """One rule as integers: cheap to test in a tight loop."""

    decision: Decision  # (action, rule id, kind)
    action: int
    protocol: int  # 0 = any
    version: int  # 0 = any address, else 4 or 6
    lo: int  # first address of peer_cidr as an integer
    hi: int  # last address of peer_cidr as an integer
    port_lo: int
    port_hi: int


def _compile_one(rule: SecurityRule) -> _Compiled | None:
    """The integer form of a rule, or None when its peer_cidr cannot be parsed.

    An unparseable CIDR makes the rule match nothing rather than everything: a broken ACCEPT
    must not open the resource, and a broken REJECT falls through to the final REJECT anyway
    unless a later rule accepts, which is what the user wrote.
    """
    version = lo = hi = 0
    if rule.peer_cidr:
        try:
            net = ipaddress.ip_network(rule.peer_cidr.strip(), strict=False)
        except ValueError:
            log.warning(
                "security rule ignored: peer_cidr %r is not an IP or CIDR",
                rule.peer_cidr,
                extra={"priority": rule.priority},
            )
            return None
        version = net.version
        lo = int(net.network_address)
        hi = int(net.broadcast_address)
    if rule.port_from == 0 and rule.port_to == 0:
        port_lo, port_hi = 0, 65535
    else:
        port_lo = rule.port_from
        # A range written backwards (or with only port_from) means the single port_from.
        port_hi = max(rule.port_to, rule.port_from)
    decision = (int(rule.action), rule.id, int(rule_kind_of(rule)))
    return _Compiled(decision, int(rule.action), int(rule.protocol), version, lo, hi, port_lo, port_hi)


class CompiledRules:
    """A rule set compiled for fast evaluation, split by direction, ACL rules before
    security-group rules, each sorted by priority."""

    __slots__ = ("_egress", "_ingress", "size")

    def __init__(self, rules: Iterable[SecurityRule]) -> None:
        rules = complete_rule_ids(list(rules))
        # ACLs first, then by priority; sorted() is stable: equal priorities keep their order.
        ordered = sorted(rules, key=lambda r: (rule_kind_of(r) != RuleKind.ACL, r.priority))
        ingress: list[_Compiled] = []
        egress: list[_Compiled] = []
        for rule in ordered:
            compiled = _compile_one(rule)
            if compiled is None:
                continue
            if rule.direction in (Direction.INGRESS, Direction.UNSPECIFIED):
                ingress.append(compiled)
            if rule.direction in (Direction.EGRESS, Direction.UNSPECIFIED):
                egress.append(compiled)
        self._ingress = tuple(ingress)
        self._egress = tuple(egress)
        self.size = len(ordered)

    def decide_int(self, direction: int, protocol: int, version: int, peer: int, local_port: int) -> int:
        """ACCEPT (1) or REJECT (2) as a plain int, for an address given as (version, integer)."""
        return self.decision_int(direction, protocol, version, peer, local_port)[0]

    def decision_int(self, direction: int, protocol: int, version: int, peer: int, local_port: int) -> Decision:
        """(action, rule_id, rule_kind) of the rule that decides the flow (DEFAULT_DENY when
        none matches), for an address given as (version, integer)."""
        if direction == _INGRESS:
            rules = self._ingress
        elif direction == _EGRESS:
            rules = self._egress
        else:
            return DEFAULT_DENY
        for decision, _action, proto, ver, lo, hi, port_lo, port_hi in rules:
            if proto and proto != protocol:
                continue
            if ver and (ver != version or peer < lo or peer > hi):
                continue
            if local_port < port_lo or local_port > port_hi:
                continue
            return decision
        return DEFAULT_DENY

    def decide(self, direction: Direction | int, protocol: int, peer_addr: str, local_port: int) -> Action:
        """Action for a flow whose remote side is `peer_addr` (IP text, IPv4 or IPv6)."""
        ip = _parse_address(peer_addr)
        return Action(self.decide_int(int(direction), protocol, ip.version, int(ip), local_port))

    def decision(self, direction: Direction | int, protocol: int, peer_addr: str, local_port: int) -> Decision:
        """(action, rule_id, rule_kind) for a flow whose remote side is `peer_addr`."""
        ip = _parse_address(peer_addr)
        return self.decision_int(int(direction), protocol, ip.version, int(ip), local_port)


@lru_cache(maxsize=65536)
def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@lru_cache(maxsize=4096)
def _compile_cached(rules: tuple[SecurityRule, ...]) -> CompiledRules:
    return CompiledRules(rules)


def compile_rules(rules: Sequence[SecurityRule] | CompiledRules) -> CompiledRules:
    """The compiled form of a rule set, cached: a resource's rules are parsed once, not per flow."""
    if isinstance(rules, CompiledRules):
        return rules
    return _compile_cached(tuple(rules))


def decide(
    rules: Sequence[SecurityRule] | CompiledRules,
    direction: Direction | int,
    protocol: int,
    peer_addr: str,
    local_port: int,
) -> Action:
    """ACCEPT or REJECT for one flow: first matching rule by ascending priority, else REJECT.

    `peer_addr` is the remote side of the flow (the source of an ingress flow, the destination
    of an egress flow); `local_port` is the flow's destination (service) port: the resource's own
    port for ingress, the remote port for egress, as security groups match them.
    """
    return compile_rules(rules).decide(direction, protocol, peer_addr, local_port)


# ---------------------------------------------------------------------------------------------
# Default rule sets: what a resource registered without rules is assumed to have, so that the
# generator has something to decide with and "all traffic" logs show both ACCEPT and REJECT.

_PRIVATE_CIDRS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")


def _in(
    priority: int, protocol: int = 0, port: int = 0, port_to: int = 0, peer: str = "", action: Action = Action.ACCEPT
) -> SecurityRule:
    return SecurityRule(priority, Direction.INGRESS, action, protocol, peer, port, port_to or port)


_EGRESS_ALL = SecurityRule(1000, Direction.EGRESS, Action.ACCEPT)
_PING = (_in(900, PROTO_ICMP), _in(901, PROTO_ICMPV6))


def _private_only(priority: int, protocol: int, port: int, port_to: int = 0) -> tuple[SecurityRule, ...]:
    return tuple(_in(priority + i, protocol, port, port_to, cidr) for i, cidr in enumerate(_PRIVATE_CIDRS))


def _internal_rules() -> tuple[SecurityRule, ...]:
    """Peering / CSN / dedicated gateway: a VPC exposing its services to other private networks.

    MySQL only from 10/8 (and fc00::/7), so peers from 172.16/12 or 192.168/16 are refused:
    the kind of misconfiguration flow logs exist to reveal.
    """
    return (
        _in(100, PROTO_TCP, 22),
        _in(110, PROTO_TCP, 80),
        _in(120, PROTO_TCP, 443),
        _in(130, PROTO_TCP, 3306, peer="10.0.0.0/8"),
        _in(131, PROTO_TCP, 3306, peer="fc00::/7"),
        _in(140, PROTO_TCP, 5432),
        _in(150, PROTO_TCP, 6379),
        _in(160, PROTO_TCP, 8000, 8080),
        _in(170, PROTO_UDP, 53),
        _in(180, PROTO_UDP, 123),
        *_PING,
        _EGRESS_ALL,
    )


def default_rules(resource_type: ResourceType | int) -> tuple[SecurityRule, ...]:
    """The rule set assumed for a resource registered with no rules of its own: security-group
    rules with ids "sg-1", "sg-2", ... in the order below.

    Ingress is accepted only on what the resource type plausibly serves (plus ICMP), egress is
    accepted; everything else falls through to REJECT (default-deny).
    """
    return complete_rule_ids(_default_rules(resource_type))


def _default_rules(resource_type: ResourceType | int) -> tuple[SecurityRule, ...]:
    rt = ResourceType(resource_type)
    if rt == ResourceType.EIP:
        return (_in(100, PROTO_TCP, 443), _in(110, PROTO_TCP, 80), _in(120, PROTO_TCP, 22), *_PING, _EGRESS_ALL)
    if rt == ResourceType.NAT_GATEWAY:
        # Outbound NAT; inbound only a DNAT'ed HTTPS service and ping.
        return (_in(100, PROTO_TCP, 443), *_PING, _EGRESS_ALL)
    if rt == ResourceType.IPV6_GATEWAY:
        return (_in(100, PROTO_TCP, 443), _in(110, PROTO_TCP, 80), *_PING, _EGRESS_ALL)
    if rt == ResourceType.SSL_VPN_GATEWAY:
        return (
            _in(100, PROTO_UDP, 500),
            _in(110, PROTO_UDP, 4500),
            _in(120, PROTO_ESP),
            _in(130, PROTO_TCP, 443),
            _in(140, PROTO_UDP, 1194),
            *_private_only(200, PROTO_TCP, 22),
            *_private_only(210, PROTO_TCP, 3389),
            *_PING,
            _EGRESS_ALL,
        )
    if rt == ResourceType.DEDICATED_GATEWAY:
        return (_in(50, PROTO_GRE), _in(60, PROTO_TCP, 179), *_internal_rules())
    if rt in (ResourceType.PEERING_CONNECTION, ResourceType.CSN):
        return _internal_rules()
    return (*_PING, _EGRESS_ALL)


def effective_rules(resource_type: ResourceType | int, rules: Sequence[SecurityRule]) -> tuple[SecurityRule, ...]:
    """The resource's own rules, or the type's defaults when it has none (security-group rules
    "sg-1", "sg-2", ...)."""
    return tuple(rules) if rules else default_rules(resource_type)
