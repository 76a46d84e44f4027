"""Security-rule evaluation: ascending priority, first match wins, no match is REJECT."""

from __future__ import annotations

import pytest

from server.core.model import Action, Direction, ResourceType, SecurityRule
from server.core.security import (
    PROTO_ESP,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    CompiledRules,
    compile_rules,
    decide,
    default_rules,
    effective_rules,
)

IN, OUT = Direction.INGRESS, Direction.EGRESS
ACC, REJ = Action.ACCEPT, Action.REJECT


def rule(
    priority: int,
    action: Action = ACC,
    protocol: int = 0,
    peer: str = "",
    port_from: int = 0,
    port_to: int = 0,
    direction: Direction = IN,
) -> SecurityRule:
    return SecurityRule(priority, direction, action, protocol, peer, port_from, port_to)


RULES = (
    rule(10, ACC, PROTO_TCP, "", 443, 443),
    rule(20, ACC, PROTO_TCP, "10.0.0.0/8", 22, 22),
    rule(25, ACC, PROTO_TCP, "2001:db8::/32", 22, 22),
    rule(30, REJ, PROTO_TCP, "203.0.113.0/24"),  # a blocked network, every port
    rule(40, ACC, PROTO_TCP, "203.0.113.7", 8000, 8080),  # never reached for 203.0.113.7: 30 wins
    rule(50, ACC, PROTO_TCP, "", 8000, 8080),
    rule(60, ACC, PROTO_UDP, "", 53, 53),
    rule(70, ACC, PROTO_ICMP),
    rule(71, ACC, PROTO_ICMPV6),
    rule(10, ACC, 0, "", 0, 0, OUT),
)


@pytest.mark.parametrize(
    "direction,protocol,peer,port,expected",
    [
        (IN, PROTO_TCP, "198.51.100.1", 443, ACC),
        (IN, PROTO_TCP, "2400:cb00::1", 443, ACC),  # "" matches either family
        (IN, PROTO_TCP, "198.51.100.1", 444, REJ),  # no rule: REJECT
        (IN, PROTO_UDP, "198.51.100.1", 443, REJ),  # protocol must match
        (IN, PROTO_TCP, "10.1.2.3", 22, ACC),
        (IN, PROTO_TCP, "11.1.2.3", 22, REJ),  # outside the CIDR
        (IN, PROTO_TCP, "2001:db8:5::9", 22, ACC),  # IPv6 CIDR
        (IN, PROTO_TCP, "2001:db9::1", 22, REJ),
        (IN, PROTO_TCP, "::ffff:10.1.2.3", 22, REJ),  # an IPv6 address never matches an IPv4 CIDR
        (IN, PROTO_TCP, "203.0.113.7", 443, ACC),  # priority 10 before the block at 30
        (IN, PROTO_TCP, "203.0.113.7", 8080, REJ),  # the block at 30 before the accept at 40
        (IN, PROTO_TCP, "203.0.113.8", 22, REJ),
        (IN, PROTO_TCP, "198.51.100.1", 7999, REJ),  # range is inclusive at both ends
        (IN, PROTO_TCP, "198.51.100.1", 8000, ACC),
        (IN, PROTO_TCP, "198.51.100.1", 8080, ACC),
        (IN, PROTO_TCP, "198.51.100.1", 8081, REJ),
        (IN, PROTO_UDP, "198.51.100.1", 53, ACC),
        (IN, PROTO_ICMP, "198.51.100.1", 0, ACC),  # port range 0-0 = any
        (IN, PROTO_ICMPV6, "2400:cb00::1", 0, ACC),
        (IN, PROTO_ESP, "198.51.100.1", 0, REJ),
        (OUT, PROTO_TCP, "198.51.100.1", 51000, ACC),  # egress rule: any
        (OUT, PROTO_ESP, "2400:cb00::1", 0, ACC),
    ],
)
def test_rule_table(direction, protocol, peer, port, expected):
    assert decide(RULES, direction, protocol, peer, port) is expected
    assert compile_rules(RULES).decide(direction, protocol, peer, port) is expected


def test_order_is_priority_not_position():
    rules = (rule(20, ACC, PROTO_TCP), rule(10, REJ, PROTO_TCP, "", 22, 22))
    assert decide(rules, IN, PROTO_TCP, "198.51.100.1", 22) is REJ
    assert decide(rules, IN, PROTO_TCP, "198.51.100.1", 23) is ACC
    assert decide(tuple(reversed(rules)), IN, PROTO_TCP, "198.51.100.1", 22) is REJ


def test_equal_priorities_keep_their_order():
    rules = (rule(10, REJ), rule(10, ACC))
    assert decide(rules, IN, PROTO_TCP, "198.51.100.1", 80) is REJ


def test_no_rules_rejects_and_direction_must_match():
    assert decide((), IN, PROTO_TCP, "198.51.100.1", 443) is REJ
    only_ingress = (rule(10, ACC),)
    assert decide(only_ingress, IN, PROTO_UDP, "198.51.100.1", 1) is ACC
    assert decide(only_ingress, OUT, PROTO_UDP, "198.51.100.1", 1) is REJ
    assert decide(only_ingress, Direction.UNSPECIFIED, PROTO_UDP, "198.51.100.1", 1) is REJ


def test_single_address_and_backwards_range():
    rules = (rule(10, ACC, PROTO_TCP, "192.0.2.5", 8443, 0),)  # port_to < port_from: just 8443
    assert decide(rules, IN, PROTO_TCP, "192.0.2.5", 8443) is ACC
    assert decide(rules, IN, PROTO_TCP, "192.0.2.5", 8444) is REJ
    assert decide(rules, IN, PROTO_TCP, "192.0.2.6", 8443) is REJ
    port_zero_up = (rule(10, ACC, PROTO_UDP, "", 0, 100),)
    assert decide(port_zero_up, IN, PROTO_UDP, "192.0.2.6", 100) is ACC
    assert decide(port_zero_up, IN, PROTO_UDP, "192.0.2.6", 101) is REJ


def test_unparseable_cidr_matches_nothing():
    rules = (rule(10, ACC, 0, "not-a-cidr"), rule(20, ACC, PROTO_TCP, "", 80, 80))
    assert decide(rules, IN, PROTO_TCP, "192.0.2.6", 443) is REJ
    assert decide(rules, IN, PROTO_TCP, "192.0.2.6", 80) is ACC


def test_compiled_once_and_integer_form_agrees():
    assert compile_rules(RULES) is compile_rules(list(RULES))
    compiled = compile_rules(RULES)
    assert isinstance(compiled, CompiledRules) and compile_rules(compiled) is compiled
    import ipaddress

    for peer in ("10.9.9.9", "203.0.113.7", "2001:db8::1"):
        ip = ipaddress.ip_address(peer)
        for port in (22, 443, 8080):
            assert compiled.decide_int(1, PROTO_TCP, ip.version, int(ip), port) == decide(
                RULES, IN, PROTO_TCP, peer, port
            )


@pytest.mark.parametrize("rt", [t for t in ResourceType if t != ResourceType.UNSPECIFIED])
def test_default_rules_accept_and_reject_something(rt):
    rules = default_rules(rt)
    assert rules and effective_rules(rt, ()) == rules
    assert decide(rules, OUT, PROTO_TCP, "198.51.100.1", 40000) is ACC  # egress is open
    assert decide(rules, IN, PROTO_ICMP, "198.51.100.1", 0) is ACC  # ping answers
    assert decide(rules, IN, PROTO_ICMPV6, "2400:cb00::1", 0) is ACC
    assert decide(rules, IN, PROTO_TCP, "198.51.100.1", 23) is REJ  # telnet never
    assert decide(rules, IN, 132, "10.1.1.1", 3868) is REJ


def test_default_rules_per_type():
    eip = default_rules(ResourceType.EIP)
    assert decide(eip, IN, PROTO_TCP, "198.51.100.1", 443) is ACC
    assert decide(eip, IN, PROTO_TCP, "198.51.100.1", 3389) is REJ
    vpn = default_rules(ResourceType.SSL_VPN_GATEWAY)
    assert decide(vpn, IN, PROTO_UDP, "198.51.100.1", 500) is ACC
    assert decide(vpn, IN, PROTO_UDP, "198.51.100.1", 4500) is ACC
    assert decide(vpn, IN, PROTO_ESP, "198.51.100.1", 0) is ACC
    assert decide(vpn, IN, PROTO_TCP, "10.0.0.5", 3389) is ACC
    assert decide(vpn, IN, PROTO_TCP, "198.51.100.1", 3389) is REJ
    peering = default_rules(ResourceType.PEERING_CONNECTION)
    assert decide(peering, IN, PROTO_TCP, "10.3.0.5", 3306) is ACC
    assert decide(peering, IN, PROTO_TCP, "192.168.3.5", 3306) is REJ  # MySQL from 10/8 only
    assert decide(peering, IN, PROTO_TCP, "fd12::5", 3306) is ACC
    own = (rule(1, REJ),)
    assert effective_rules(ResourceType.EIP, own) == own
