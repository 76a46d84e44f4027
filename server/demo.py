"""The demo inventory: a few resources of every type in two regions, so a newcomer can create a
flow log the moment the server starts. Addresses are from the documentation ranges (RFC 5737,
RFC 3849) so nothing here points at a real host.

Both kinds of rule are here, so "was it the ACL or the security group?" has an answer on the
demo data: the bastion EIP's ACL refuses plain HTTP (acl-bastion-no-http) that its security
group would accept (sg-web-http), and the private resources' ACL refuses MySQL from
192.168.0.0/16 (acl-no-mysql-from-192-168) that their security group accepts
(sg-private-mysql-192-168). Flows no rule matches show up as default-deny."""

from __future__ import annotations

from server.core.model import Action, Direction, Resource, ResourceType, RuleKind, SecurityRule

_I, _E = Direction.INGRESS, Direction.EGRESS
_A, _R = Action.ACCEPT, Action.REJECT
_ACL, _SG = RuleKind.ACL, RuleKind.SECURITY_GROUP

WEB_RULES = (
    SecurityRule(10, _I, _A, 6, "", 443, 443, "sg-web-https", _SG),
    SecurityRule(20, _I, _A, 6, "", 80, 80, "sg-web-http", _SG),
    SecurityRule(30, _I, _A, 6, "10.0.0.0/8", 22, 22, "sg-web-ssh-internal", _SG),
    SecurityRule(40, _I, _A, 1, "", 0, 0, "sg-web-icmp", _SG),
    SecurityRule(50, _I, _A, 17, "", 53, 53, "sg-web-dns", _SG),
    SecurityRule(900, _I, _R, 0, "", 0, 0, "sg-web-deny-rest", _SG),
    SecurityRule(10, _E, _A, 0, "", 0, 0, "sg-web-egress", _SG),
)
# The bastion serves SSH, not web pages: its subnet ACL refuses HTTP before the (shared, web)
# security group, which would accept it, is consulted.
BASTION_RULES = (
    SecurityRule(100, _I, _R, 6, "", 80, 80, "acl-bastion-no-http", _ACL),
    *WEB_RULES,
)
PRIVATE_RULES = (
    SecurityRule(100, _I, _R, 6, "192.168.0.0/16", 3306, 3306, "acl-no-mysql-from-192-168", _ACL),
    SecurityRule(10, _I, _A, 0, "10.0.0.0/8", 0, 0, "sg-private-from-10", _SG),
    SecurityRule(20, _I, _A, 0, "172.16.0.0/12", 0, 0, "sg-private-from-172-16", _SG),
    SecurityRule(30, _I, _A, 6, "192.168.0.0/16", 3306, 3306, "sg-private-mysql-192-168", _SG),
    SecurityRule(900, _I, _R, 0, "", 0, 0, "sg-private-deny-rest", _SG),
    SecurityRule(10, _E, _A, 0, "", 0, 0, "sg-private-egress", _SG),
)
# No catch-all REJECT here: what neither rule accepts falls to the default deny.
V6_RULES = (
    SecurityRule(10, _I, _A, 6, "", 443, 443, "sg-v6-https", _SG),
    SecurityRule(20, _I, _A, 58, "", 0, 0, "sg-v6-icmpv6", _SG),
    SecurityRule(10, _E, _A, 0, "", 0, 0, "sg-v6-egress", _SG),
)


def _region(region: str, n: int) -> list[Resource]:
    vpc = f"vpc-{region}demo"
    return [
        Resource(
            f"eip-{region}-01", ResourceType.EIP, region, vpc, "web frontend EIP", (f"203.0.113.{10 + n}",), WEB_RULES
        ),
        Resource(
            f"eip-{region}-02", ResourceType.EIP, region, vpc, "bastion EIP", (f"203.0.113.{20 + n}",), BASTION_RULES
        ),
        Resource(
            f"nat-{region}-01",
            ResourceType.NAT_GATEWAY,
            region,
            vpc,
            "egress NAT",
            (f"198.51.100.{10 + n}", f"10.{n}.0.1"),
            WEB_RULES,
        ),
        Resource(
            f"ip6gw-{region}-01",
            ResourceType.IPV6_GATEWAY,
            region,
            vpc,
            "IPv6 gateway",
            (f"2001:db8:{n}::/64",),
            V6_RULES,
        ),
        Resource(
            f"peer-{region}-01",
            ResourceType.PEERING_CONNECTION,
            region,
            vpc,
            "peering to shared services",
            (f"10.{n}.8.0/24",),
            PRIVATE_RULES,
        ),
        Resource(
            f"dcgw-{region}-01",
            ResourceType.DEDICATED_GATEWAY,
            region,
            vpc,
            "dedicated line to IDC",
            (f"10.{n}.16.0/24",),
            PRIVATE_RULES,
        ),
        Resource(
            f"vpn-{region}-01",
            ResourceType.SSL_VPN_GATEWAY,
            region,
            vpc,
            "SSL VPN for staff",
            (f"198.51.100.{30 + n}", f"10.{n}.32.0/24"),
            WEB_RULES,
        ),
        Resource(
            f"csn-{region}-01",
            ResourceType.CSN,
            region,
            "csn-demo",
            "Cloud Smart Network attachment",
            (f"10.{n}.64.0/20",),
            PRIVATE_RULES,
        ),
    ]


def demo_resources() -> list[Resource]:
    """Regions 'bj' and 'gz', every resource type in each."""
    return _region("bj", 1) + _region("gz", 2)


# Flow logs that `make run` (no config file: `demo_flow_logs`) creates in the local account on a
# fresh data dir, so the web console opens on flow logs with traffic. Project "sample", so the
# README's own examples (project "demo") never collide with them.
DEMO_FLOW_LOGS = (
    # region, name, resource, traffic type (1 ALL, 2 ALLOW, 3 DENY), LogStore, description
    ("bj", "web-frontend", "eip-bj-01", 1, "web", "public web EIP: all traffic"),
    ("bj", "egress-nat", "nat-bj-01", 1, "nat", "NAT gateway: all traffic"),
    ("bj", "vpn-denied", "vpn-bj-01", 3, "vpn", "SSL VPN gateway: only what the rules reject"),
    ("gz", "web-frontend", "eip-gz-01", 1, "web", "public web EIP: all traffic"),
)


def demo_flow_logs(regions) -> list:
    """CreateFlowLog requests (each with a new LogStore) for the demo flow logs in `regions`."""
    from server.core.service import CreateFlowLog, NewLogStoreSpec

    by_id = {r.id: r for r in demo_resources()}
    out = []
    for region, name, rid, traffic, store, description in DEMO_FLOW_LOGS:
        r = by_id[rid]
        if region not in regions:
            continue
        out.append(
            CreateFlowLog(
                region=region,
                name=name,
                resource_type=int(r.type),
                resource_id=rid,
                network_id=r.network_id,
                traffic_type=traffic,
                destination=NewLogStoreSpec(project="sample", name=store),
                description=description,
            )
        )
    return out
