"""The record generator: plausible flow records for one flow log over one aggregation window.

Pure and deterministic: no I/O, no threads, no clock. Everything random comes from one
`random.Random` seeded with a BLAKE2b hash of (resource id, window start, window length, seed),
so the same inputs always give the same records (and, records ids being derived from the
fields, the same record ids: a regenerated window never duplicates in storage).

The traffic is seeded by the *resource*, not by the flow log: two flow logs on one resource
see the same flows and differ only by their `traffic_type` filter, so ALL = ALLOW + DENY, as it
would be with a real capture. Every flow draws the same random numbers whether or not the
filter keeps it, which is what keeps that property.

What the traffic looks like, per resource type (see `_TYPE_PROFILES`):
- the local side is one of the resource's addresses (a host inside it when it is a CIDR);
  the peer is of the same IP family;
- internet-facing types (EIP, NAT gateway, IPv6 gateway) talk to public peers: a few repeated
  "top talkers", a pool of regulars, fresh addresses, and now and then a scanner sweeping ports
  or hosts (mostly REJECTed); the internal types (peering, dedicated gateway, CSN, mostly SSL VPN)
  talk to private networks (10/8, 172.16/12, 192.168/16, fd00::/8) other than their own;
- protocols and ports that real traffic has (HTTPS, HTTP, SSH, RDP, databases, DNS, NTP, IKE,
  NAT-T, ICMP/ICMPv6, rarely GRE, ESP, SCTP), clients on ephemeral ports 32768-60999;
- heavy-tailed packet counts, byte counts between 40 and 1500 bytes per packet, TCP flags that
  match the outcome (full connections, resets, long-lived flows, lone SYNs for REJECTs);
- ACCEPT/REJECT decided by the resource's ACL and security-group rules (`server.core.security`),
  the type's `default_rules` when it has none; every record names the rule that decided it
  (`rule_id`, `rule_kind`; `default-deny` / RULE_KIND_DEFAULT when no rule matched).
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from bisect import bisect
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any, Callable, Iterator

from server.core.model import (
    RECORD_VERSION,
    Action,
    Direction,
    FlowLog,
    FlowRecord,
    LogStatus,
    Resource,
    ResourceType,
    TrafficType,
)
from server.core.records import record_id, with_id
from server.core.security import (
    PROTO_ESP,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    CompiledRules,
    compile_rules,
    default_rules,
    effective_rules,
)

__all__ = ["default_rules", "generate_window", "nodata_record"]

_ACCEPT = int(Action.ACCEPT)
_REJECT = int(Action.REJECT)
_INGRESS = int(Direction.INGRESS)
_EGRESS = int(Direction.EGRESS)
_OK = int(LogStatus.OK)

# TCP flag bits.
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_FLAGS_FULL = SYN | ACK | PSH | FIN  # a whole connection inside the window
_FLAGS_RESET = SYN | ACK | PSH | RST  # ... torn down by a reset
_FLAGS_ONGOING = ACK | PSH  # a long-lived connection, neither opened nor closed here
_FLAGS_EMPTY = SYN | ACK | FIN  # health checks: open and close, no data
_FLAGS_PROBE_OPEN = SYN | ACK | RST  # a scanner that found an open port and reset

EPHEMERAL_LO, EPHEMERAL_HI = 32768, 60999
_EPHEMERAL_SPAN = EPHEMERAL_HI - EPHEMERAL_LO + 1
# Packets per millisecond a single flow may reach (50k pps): caps the heavy tail.
_MAX_PPS_PER_MS = 50

# Share of windows with no traffic at all (at intensity 1; less at higher intensities).
IDLE_PROBABILITY = 0.02

# Traffic by hour of day (UTC+8: the product's regions live there), applied to the flow count.
_DIURNAL = (
    0.55,
    0.45,
    0.4,
    0.35,
    0.35,
    0.4,
    0.5,
    0.7,
    0.9,
    1.05,
    1.15,
    1.2,
    1.2,
    1.2,
    1.25,
    1.25,
    1.2,
    1.15,
    1.15,
    1.25,
    1.35,
    1.35,
    1.1,
    0.8,
)


@dataclass(frozen=True)
class _Service:
    """What one kind of flow looks like on the wire."""

    protocol: int
    port: int
    size_lo: int  # bytes per packet, lowest average
    size_hi: int  # ... highest average
    alpha: float  # Pareto shape of the packet count: lower = heavier tail
    min_packets: int
    same_port: bool = False  # IKE/NAT-T: both sides use the service port


_SVC = {
    "https": _Service(PROTO_TCP, 443, 300, 1400, 1.1, 4),
    "http": _Service(PROTO_TCP, 80, 200, 1300, 1.2, 4),
    "ssh": _Service(PROTO_TCP, 22, 80, 600, 1.3, 6),
    "rdp": _Service(PROTO_TCP, 3389, 100, 1200, 1.3, 6),
    "mysql": _Service(PROTO_TCP, 3306, 80, 900, 1.3, 5),
    "postgres": _Service(PROTO_TCP, 5432, 80, 900, 1.3, 5),
    "redis": _Service(PROTO_TCP, 6379, 60, 400, 1.3, 4),
    "http-alt": _Service(PROTO_TCP, 8080, 200, 1300, 1.2, 4),
    "bgp": _Service(PROTO_TCP, 179, 60, 200, 2.0, 3),
    "dns": _Service(PROTO_UDP, 53, 60, 300, 3.0, 1),
    "ntp": _Service(PROTO_UDP, 123, 76, 76, 6.0, 1),
    "ike": _Service(PROTO_UDP, 500, 150, 700, 2.0, 2, same_port=True),
    "nat-t": _Service(PROTO_UDP, 4500, 100, 1400, 1.3, 2, same_port=True),
    "openvpn": _Service(PROTO_UDP, 1194, 100, 1300, 1.3, 4),
    "icmp": _Service(PROTO_ICMP, 0, 64, 84, 2.5, 1),
    "gre": _Service(PROTO_GRE, 0, 100, 1476, 1.2, 2),
    "esp": _Service(PROTO_ESP, 0, 100, 1450, 1.2, 2),
    "sctp": _Service(PROTO_SCTP, 3868, 80, 500, 1.5, 2),
}

_MIXES: dict[str, dict[str, float]] = {
    "internet-in": {
        "https": 30,
        "http": 12,
        "ssh": 6,
        "rdp": 4,
        "http-alt": 3,
        "mysql": 2,
        "postgres": 1,
        "redis": 1,
        "icmp": 5,
        "dns": 2,
        "ntp": 1,
        "ike": 1,
        "nat-t": 1,
        "gre": 0.2,
        "esp": 0.2,
        "sctp": 0.1,
    },
    "internet-out": {
        "https": 45,
        "http": 10,
        "dns": 15,
        "ntp": 4,
        "ssh": 2,
        "icmp": 3,
        "http-alt": 2,
        "nat-t": 0.3,
        "gre": 0.1,
        "esp": 0.1,
        "sctp": 0.05,
    },
    "private-in": {
        "https": 15,
        "http": 8,
        "ssh": 8,
        "mysql": 10,
        "postgres": 8,
        "redis": 8,
        "http-alt": 8,
        "rdp": 3,
        "dns": 6,
        "ntp": 2,
        "icmp": 6,
        "gre": 0.3,
        "esp": 0.3,
        "sctp": 0.2,
    },
    "private-out": {
        "https": 20,
        "http": 8,
        "ssh": 6,
        "mysql": 10,
        "postgres": 8,
        "redis": 8,
        "http-alt": 6,
        "dns": 10,
        "ntp": 3,
        "icmp": 5,
        "gre": 0.2,
        "esp": 0.2,
        "sctp": 0.2,
    },
    "vpn-internet-in": {
        "ike": 15,
        "nat-t": 25,
        "esp": 10,
        "https": 15,
        "openvpn": 10,
        "ssh": 2,
        "rdp": 2,
        "icmp": 4,
        "http": 2,
    },
    "vpn-private-in": {
        "ssh": 15,
        "rdp": 12,
        "https": 15,
        "http": 6,
        "mysql": 6,
        "postgres": 4,
        "redis": 2,
        "dns": 8,
        "icmp": 6,
        "http-alt": 4,
        "esp": 0.5,
        "sctp": 0.1,
    },
    "dcgw-private-in": {
        "https": 15,
        "http": 8,
        "ssh": 8,
        "mysql": 10,
        "postgres": 8,
        "redis": 6,
        "http-alt": 6,
        "dns": 6,
        "ntp": 2,
        "icmp": 6,
        "gre": 4,
        "bgp": 2,
        "rdp": 2,
        "esp": 0.3,
        "sctp": 0.2,
    },
}


@dataclass(frozen=True)
class _TypeProfile:
    flows_per_minute: float  # at intensity 1, before the hour-of-day and per-window jitter
    p_private: float  # share of flows with a private peer, on a public local address
    p_private_inside: float  # ... on a private local address (a VPC range: the inside of a NAT/VPN)
    p_egress: float  # share of flows the resource initiates
    p_scan: float  # chance that a scanner shows up in a window
    internet_in: str
    internet_out: str
    private_in: str
    private_out: str


_IN, _OUT, _PIN, _POUT = "internet-in", "internet-out", "private-in", "private-out"
_TYPE_PROFILES: dict[ResourceType, _TypeProfile] = {
    # flows/min, p_private, p_private_inside, p_egress, p_scan, then the four service mixes
    ResourceType.EIP: _TypeProfile(120, 0.0, 0.9, 0.45, 0.35, _IN, _OUT, _PIN, _POUT),
    ResourceType.NAT_GATEWAY: _TypeProfile(180, 0.0, 0.95, 0.8, 0.3, _IN, _OUT, _PIN, _POUT),
    ResourceType.IPV6_GATEWAY: _TypeProfile(60, 0.0, 0.9, 0.5, 0.2, _IN, _OUT, _PIN, _POUT),
    ResourceType.PEERING_CONNECTION: _TypeProfile(80, 1.0, 1.0, 0.5, 0.03, _IN, _OUT, _PIN, _POUT),
    ResourceType.DEDICATED_GATEWAY: _TypeProfile(100, 0.97, 0.97, 0.5, 0.03, _IN, _OUT, "dcgw-private-in", _POUT),
    ResourceType.SSL_VPN_GATEWAY: _TypeProfile(
        40, 0.0, 1.0, 0.4, 0.15, "vpn-internet-in", _OUT, "vpn-private-in", _POUT
    ),
    ResourceType.CSN: _TypeProfile(100, 1.0, 1.0, 0.5, 0.03, _IN, _OUT, _PIN, _POUT),
}
_FALLBACK_PROFILE = _TYPE_PROFILES[ResourceType.EIP]

# Ports scanners knock on first.
_SCAN_PORTS = (
    21,
    22,
    23,
    25,
    53,
    80,
    110,
    135,
    139,
    143,
    443,
    445,
    993,
    995,
    1433,
    1521,
    2375,
    3306,
    3389,
    5432,
    5900,
    6379,
    8080,
    8443,
    9200,
    11211,
    27017,
)
_SWEEP_PORTS = (22, 23, 445, 3389, 6379, 2375)

# First octets of public IPv4 space: everything in 1-223 except ranges that hold private or
# special-purpose blocks (0, 10, 100.64/10, 127, 169.254, 172.16/12, 192.0.0/24, 192.0.2,
# 192.168, 198.18/15, 198.51.100, 203.0.113), dropped whole for speed.
_PUBLIC_V4_FIRST = tuple(o for o in range(1, 224) if o not in (10, 100, 127, 169, 172, 192, 198, 203))
# /32s of well-known IPv6 allocations (CDNs, clouds, carriers): all inside 2000::/3, none of
# them special-purpose.
_PUBLIC_V6_PREFIXES = (
    0x2400CB00,
    0x24046800,
    0x240E0000,
    0x24088000,
    0x24098000,
    0x2A001450,
    0x2A032880,
    0x26064700,
    0x26001F18,
    0x20014860,
    0x2A020000,
    0x28040000,
)

# Address entries: (canonical text, integer value, IP version).
_Addr = tuple[str, int, int]
# Local address entries add the share of flows with a private peer on that address.
_Local = tuple[str, int, int, float]

# The ranges VPCs are built from. Documentation ranges (TEST-NET, 2001:db8::/32) are not among
# them on purpose: demo inventories use them to stand for public addresses.
_VPC_RANGES = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def _is_vpc_range(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(net.version == v.version and net.subnet_of(v) for v in _VPC_RANGES)  # type: ignore[arg-type]


def _v4_text(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _v6_text(n: int) -> str:
    return ipaddress.IPv6Address(n).compressed


def _fresh_public(rnd: random.Random, version: int) -> _Addr:
    r = rnd.random
    if version == 4:
        n = (_PUBLIC_V4_FIRST[int(r() * len(_PUBLIC_V4_FIRST))] << 24) | (int(r() * 65536) << 8) | (1 + int(r() * 254))
        return _v4_text(n), n, 4
    prefix = _PUBLIC_V6_PREFIXES[int(r() * len(_PUBLIC_V6_PREFIXES))]
    n = (prefix << 96) | (rnd.getrandbits(32) << 64) | rnd.getrandbits(64) | 1
    return _v6_text(n), n, 6


class _Net:
    """A network the peers live in, able to produce host addresses cheaply."""

    __slots__ = ("base", "size", "version")

    def __init__(self, base: int, size: int, version: int) -> None:
        self.base, self.size, self.version = base, size, version

    def host(self, rnd_random: Callable[[], float]) -> _Addr:
        n = self.base + 1 + int(rnd_random() * (self.size - 2))
        return (_v4_text(n) if self.version == 4 else _v6_text(n)), n, self.version


class _Family:
    """Peers of one IP family for one resource: top talkers, regulars, scanners, private nets."""

    __slots__ = ("private_hosts", "private_nets", "regular", "scanners", "top", "version")

    def __init__(self, version: int, rnd: random.Random, local_nets: list[Any]) -> None:
        self.version = version
        self.top = [_fresh_public(rnd, version) for _ in range(8)]
        self.regular = [_fresh_public(rnd, version) for _ in range(256)]
        self.scanners = [_fresh_public(rnd, version) for _ in range(16)]
        self.private_nets = _private_nets(rnd, version, local_nets)
        self.private_hosts = [net.host(rnd.random) for net in self.private_nets for _ in range(48)]


def _private_nets(rnd: random.Random, version: int, local_nets: list[Any]) -> list[_Net]:
    """The private networks the resource's private peers live in: for IPv4 one in each of 10/8,
    172.16/12 and 192.168/16 (so rules that trust only some of them have something to refuse),
    for IPv6 three in fd00::/8; none overlapping the resource's own addresses (a peered VPC
    never shares the local range)."""

    def candidates() -> Iterator[Callable[[], ipaddress.IPv4Network | ipaddress.IPv6Network]]:
        if version == 4:
            yield lambda: ipaddress.IPv4Network((10 << 24 | rnd.randrange(256) << 16, 16))
            yield lambda: ipaddress.IPv4Network(
                ((172 << 24) | ((16 + rnd.randrange(16)) << 16) | (rnd.randrange(16) << 12), 20)
            )
            yield lambda: ipaddress.IPv4Network((192 << 24 | 168 << 16 | rnd.randrange(256) << 8, 24))
        else:
            for _ in range(3):
                yield lambda: ipaddress.IPv6Network(
                    ((0xFD << 120) | (rnd.getrandbits(40) << 80) | (rnd.getrandbits(16) << 64), 64)
                )

    nets: list[_Net] = []
    own = [local for local in local_nets if local.version == version]
    for make in candidates():
        for _ in range(20):
            net = make()
            if not any(net.overlaps(local) for local in own):
                nets.append(_Net(int(net.network_address), net.num_addresses, version))
                break
    return nets


def _local_hosts(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network, rnd: random.Random, tp: _TypeProfile
) -> list[_Local]:
    """The local hosts flows use inside one of the resource's addresses (a lone IP is itself).

    A private local address (the inside of a NAT or VPN gateway) talks to private peers; a
    public one to the internet, as its resource type says.
    """
    p_private = tp.p_private_inside if _is_vpc_range(net) else tp.p_private
    if net.num_addresses <= 2:
        ints = [int(net.network_address) + i for i in range(net.num_addresses)]
    else:
        first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
        count = min(16, last - first + 1)
        ints = sorted({first + rnd.randrange(last - first + 1) for _ in range(count)})
    return [(ipaddress.ip_address(n).compressed, n, net.version, p_private) for n in ints]


# How the client side picks its port, per service.
_CLIENT_EPHEMERAL, _CLIENT_SAME_PORT, _CLIENT_NO_PORTS = 0, 1, 2


def _kinds(mix: dict[str, float], version: int) -> tuple[tuple[Any, ...], list[float], float]:
    """A weighted table of services for one IP family, sampled with one random number and a
    bisect: (service tuples, cumulative weights, total weight). ICMP becomes ICMPv6 for IPv6."""
    items: list[tuple[Any, ...]] = []
    cum: list[float] = []
    total = 0.0
    for name, weight in mix.items():
        s = _SVC[name]
        total += weight
        cum.append(total)
        proto, size_lo, size_hi = s.protocol, s.size_lo, s.size_hi
        if proto == PROTO_ICMP and version == 6:
            proto, size_lo, size_hi = PROTO_ICMPV6, 64, 104
        if proto in (PROTO_TCP, PROTO_UDP, PROTO_SCTP):
            mode = _CLIENT_SAME_PORT if s.same_port else _CLIENT_EPHEMERAL
        else:
            mode = _CLIENT_NO_PORTS  # ICMP (type/code are not carried), GRE, ESP
        items.append((proto, s.port, size_lo, size_hi - size_lo, -1.0 / s.alpha, s.min_packets, mode))
    return tuple(items), cum, total


class _Profile:
    """Everything about a resource that does not change between windows, computed once."""

    __slots__ = ("families", "locals", "rules", "tables", "type")

    def __init__(self, resource: Resource) -> None:
        rnd = random.Random(_stable_int("profile", resource.id))
        self.type = tp = _TYPE_PROFILES.get(resource.type, _FALLBACK_PROFILE)
        self.rules: CompiledRules = compile_rules(effective_rules(resource.type, resource.rules))
        nets = []
        for text in resource.addresses:
            try:
                nets.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                continue  # not an address: the API validates; the generator just skips it
        self.locals: list[list[_Local]] = [_local_hosts(net, rnd, tp) for net in nets]
        self.families: dict[int, _Family] = {v: _Family(v, rnd, nets) for v in sorted({net.version for net in nets})}
        # version -> [service table] indexed by private * 2 + egress
        mixes = (tp.internet_in, tp.internet_out, tp.private_in, tp.private_out)
        self.tables = {v: [_kinds(_MIXES[m], v) for m in mixes] for v in (4, 6)}


@lru_cache(maxsize=4096)
def _profile(resource: Resource) -> _Profile:
    return _Profile(resource)


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from the parts, the same in every process (unlike hash())."""
    key = "|".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def nodata_record(flow_log: FlowLog, window_start_ms: int, window_ms: int) -> FlowRecord:
    """The one LOG_STATUS_NODATA record that stands for a window without (kept) traffic."""
    return with_id(
        FlowRecord(
            "",
            RECORD_VERSION,
            flow_log.account_id,
            flow_log.id,
            flow_log.region,
            flow_log.project,
            flow_log.log_store,
            int(flow_log.resource_type),
            flow_log.resource_id,
            flow_log.network_id,
            "",
            "",
            0,
            0,
            0,
            0,
            0,
            window_start_ms,
            window_start_ms + window_ms - 1,
            int(Action.UNSPECIFIED),
            int(LogStatus.NODATA),
            int(Direction.UNSPECIFIED),
            0,
            "",
            0,
            0,
        )
    )


_START_TIME = itemgetter(17)


def generate_window(
    flow_log: FlowLog, resource: Resource, window_start_ms: int, window_ms: int, seed: int, intensity: float = 1.0
) -> list[FlowRecord]:
    """The flow records of one flow log for the window [window_start_ms, +window_ms).

    Deterministic for (resource, window, seed, intensity); record ids follow from the fields.
    Returns exactly one NODATA record when the window was idle (always at intensity 0) or when
    the flow log's traffic_type kept none of its flows. Records are ordered by start_time.
    Flows per window scale with the window length and `intensity` (~20-200 a minute at 1).
    """
    if window_ms <= 0:
        raise ValueError("window_ms must be positive")
    if window_start_ms <= 0:
        raise ValueError("window_start_ms must be a positive epoch-millisecond time")
    profile = _profile(resource)
    if intensity <= 0 or not profile.locals:
        return [nodata_record(flow_log, window_start_ms, window_ms)]

    rnd = random.Random(_stable_int("window", resource.id, window_start_ms, window_ms, seed))
    r = rnd.random
    tp = profile.type
    idle = IDLE_PROBABILITY if intensity <= 1 else IDLE_PROBABILITY / intensity
    if r() < idle:
        return [nodata_record(flow_log, window_start_ms, window_ms)]

    hour = (window_start_ms // 3_600_000 + 8) % 24
    expected = tp.flows_per_minute * (window_ms / 60_000) * intensity * _DIURNAL[hour] * (0.7 + 0.6 * r())
    n_flows = int(expected)
    if r() < expected - n_flows:
        n_flows += 1

    traffic = flow_log.traffic_type
    keep_accept = traffic != TrafficType.DENY
    keep_reject = traffic != TrafficType.ALLOW
    out: list[FlowRecord] = []
    seen: set[str] = set()
    ctx = _Window(flow_log, window_start_ms, window_ms, keep_accept, keep_reject, out, seen)
    _flows(ctx, profile, rnd, n_flows)
    if r() < tp.p_scan:
        _scan(ctx, profile, rnd, max(5, int(n_flows * (0.1 + 0.3 * r()))))

    if not out:
        return [nodata_record(flow_log, window_start_ms, window_ms)]
    out.sort(key=_START_TIME)
    return out


class _Window:
    """Per-call constants and the output, handed to the flow makers."""

    __slots__ = (
        "fl",
        "head",
        "keep_accept",
        "keep_reject",
        "last",
        "max_packets",
        "out",
        "seen",
        "wms",
        "ws",
    )

    def __init__(
        self, fl: FlowLog, ws: int, wms: int, keep_accept: bool, keep_reject: bool, out: list[Any], seen: set[Any]
    ) -> None:
        self.fl, self.ws, self.wms, self.last = fl, ws, wms, ws + wms - 1
        self.keep_accept, self.keep_reject = keep_accept, keep_reject
        self.out, self.seen = out, seen
        self.max_packets = max(100, wms * _MAX_PPS_PER_MS)
        # The constant leading fields of every record of this flow log.
        self.head = (
            fl.account_id,
            fl.id,
            fl.region,
            fl.project,
            fl.log_store,
            int(fl.resource_type),
            fl.resource_id,
            fl.network_id,
        )


def _flows(ctx: _Window, profile: _Profile, rnd: random.Random, n: int) -> None:
    """Ordinary traffic: n flows, each drawing the same random numbers whether kept or not.

    The hot loop of the generator: everything it touches is bound to a local first.
    """
    r = rnd.random
    locals_ = profile.locals
    n_locals = len(locals_)
    tp = profile.type
    p_egress = tp.p_egress
    per_version = {}
    for ver, fam in profile.families.items():
        per_version[ver] = (
            fam.top,
            len(fam.top),
            fam.regular,
            len(fam.regular),
            fam.private_hosts,
            len(fam.private_hosts),
            fam.private_nets,
            len(fam.private_nets),
            profile.tables[ver],
            bool(fam.private_nets),
        )
    decide = profile.rules.decision_int
    ws, wms, last = ctx.ws, ctx.wms, ctx.last
    keep_accept, keep_reject = ctx.keep_accept, ctx.keep_reject
    out_append, seen, seen_add = ctx.out.append, ctx.seen, ctx.seen.add
    max_packets = ctx.max_packets
    acct, flid, region, project, store, rtype, res_id, net_id = ctx.head
    new = FlowRecord
    version = RECORD_VERSION
    first_octets, n_first = _PUBLIC_V4_FIRST, len(_PUBLIC_V4_FIRST)

    for _ in range(n):
        hosts = locals_[int(r() * n_locals)] if n_locals > 1 else locals_[0]
        ltext, _lint, ver, p_private = hosts[int(r() * len(hosts))]
        (
            top,
            n_top,
            regular,
            n_regular,
            private_hosts,
            n_private_hosts,
            private_nets,
            n_private_nets,
            tables,
            has_private,
        ) = per_version[ver]
        private = r() < p_private and has_private
        egress = r() < p_egress
        items, cum, total = tables[2 * private + egress]
        proto, port, size_lo, size_span, neg_inv_alpha, min_packets, client_mode = items[bisect(cum, r() * total)]
        # The peer.
        u = r()
        if private:
            if u < 0.8:
                ptext, pint, _v = private_hosts[int(r() * n_private_hosts)]
            else:
                ptext, pint, _v = private_nets[int(r() * n_private_nets)].host(r)
        elif u < 0.3:
            ptext, pint, _v = top[int(n_top * r() ** 2)]  # a few talk the most
        elif u < 0.75:
            ptext, pint, _v = regular[int(r() * n_regular)]
        elif ver == 4:
            a, b, c, d = first_octets[int(r() * n_first)], int(r() * 256), int(r() * 256), 1 + int(r() * 254)
            ptext, pint = f"{a}.{b}.{c}.{d}", (a << 24) | (b << 16) | (c << 8) | d
        else:
            ptext, pint, _v = _fresh_public(rnd, 6)
        if client_mode == 0:
            client_port = EPHEMERAL_LO + int(r() * _EPHEMERAL_SPAN)
        elif client_mode == 1:
            client_port = port
        else:
            client_port = 0
        if egress:
            direction = _EGRESS
            src, dst, sport, dport = ltext, ptext, client_port, port
            # rules match the destination (service) port
            action, rule_id, rule_kind = decide(_EGRESS, proto, ver, pint, port)
        else:
            direction = _INGRESS
            src, dst, sport, dport = ptext, ltext, client_port, port
            action, rule_id, rule_kind = decide(_INGRESS, proto, ver, pint, port)

        # Always the same draws, kept or not.
        u_start, u_pk, u_size, u_style, u_dur = r(), r(), r(), r(), r()
        if action == 1:  # ACCEPT
            if not keep_accept:
                continue
            packets = int(min_packets * (1.0 - u_pk) ** neg_inv_alpha)
            packets = min(packets, max_packets)
            flags = 0
            start = ws + int(u_start * wms)
            end = 0
            if proto == 6:  # TCP
                if u_style < 0.08:  # long-lived: spans the window, neither opened nor closed here
                    flags = _FLAGS_ONGOING
                    start = ws + int(u_start * 1000) if wms > 1000 else ws
                    end = last
                    packets = min(packets * 8, max_packets)
                elif u_style < 0.15:
                    flags = _FLAGS_RESET
                elif u_style < 0.2:
                    flags, packets = _FLAGS_EMPTY, 4
                else:
                    flags = _FLAGS_FULL
            nbytes = int(packets * (size_lo + u_size * size_span))
            if not end:
                end = start + int(packets * (1 + u_dur * 30))
        else:
            if not keep_reject:
                continue
            packets = 1 + int(u_pk * 3)  # the first try and a retry or two, then it gives up
            if proto == 6:
                flags = SYN
                nbytes = packets * (60 if ver == 4 else 80)
            else:
                flags = 0
                nbytes = int(packets * (size_lo + u_size * size_span))
            start = ws + int(u_start * wms)
            end = start + (packets - 1) * 1000 + int(u_dur * 50)
        end = min(end, last)
        rid = record_id(flid, src, dst, sport, dport, proto, direction, start, end)
        if rid in seen:
            continue
        seen_add(rid)
        out_append(
            new(
                rid,
                version,
                acct,
                flid,
                region,
                project,
                store,
                rtype,
                res_id,
                net_id,
                src,
                dst,
                sport,
                dport,
                proto,
                packets,
                nbytes,
                start,
                end,
                action,
                1,
                direction,
                flags,
                rule_id,
                rule_kind,
                0,
            )
        )


def _scan(ctx: _Window, profile: _Profile, rnd: random.Random, n: int) -> None:
    """A scanner in this window: a port sweep of one local host or a sweep of one port (or
    ping) across the local hosts, from one of the resource's recurring scanner addresses (or a
    private host, for internal resources: lateral movement)."""
    r = rnd.random
    hosts = profile.locals[int(r() * len(profile.locals))]
    target_text, _, ver, p_private = hosts[int(r() * len(hosts))]
    fam = profile.families[ver]
    if p_private >= 0.9 and fam.private_hosts:
        ptext, pint, _ = fam.private_hosts[int(r() * len(fam.private_hosts))]
    else:
        ptext, pint, _ = fam.scanners[int(r() * len(fam.scanners))]
    port_sweep = r() < 0.6
    sweep_port = _SWEEP_PORTS[int(r() * len(_SWEEP_PORTS))]
    ping = (not port_sweep) and r() < 0.2
    ws, last = ctx.ws, ctx.last
    t = ws + int(r() * ctx.wms * 0.5)
    gap = ctx.wms / (2.0 * n)
    decide = profile.rules.decision_int
    keep_accept, keep_reject = ctx.keep_accept, ctx.keep_reject
    acct, flid, region, project, store, rtype, res_id, net_id = ctx.head
    seen = ctx.seen
    icmp = PROTO_ICMP if ver == 4 else PROTO_ICMPV6
    for i in range(n):
        u_port, u_host, u_eph, u_pk = r(), r(), r(), r()
        start = t + int(i * gap)
        if start > last:
            break
        if port_sweep:
            dst = target_text
            if u_port < 0.5:  # the usual suspects first, then anything
                port = _SCAN_PORTS[int(u_port * 2 * len(_SCAN_PORTS))]
            else:
                port = 1 + int((u_port - 0.5) * 2 * 65535)
        else:
            dst = hosts[int(u_host * len(hosts))][0]
            port = sweep_port
        if ping:
            proto, sport, port = icmp, 0, 0
        else:
            proto, sport = PROTO_TCP, EPHEMERAL_LO + int(u_eph * _EPHEMERAL_SPAN)
        action, rule_id, rule_kind = decide(_INGRESS, proto, ver, pint, port)
        if action == _ACCEPT:
            if not keep_accept:
                continue
            if ping:
                packets, nbytes, flags = 1, 84 if ver == 4 else 104, 0
            else:
                packets, nbytes, flags = 3, 3 * (52 if ver == 4 else 72), _FLAGS_PROBE_OPEN
        else:
            if not keep_reject:
                continue
            packets = 1 + (u_pk < 0.2)
            if ping:
                nbytes, flags = packets * (84 if ver == 4 else 104), 0
            else:
                nbytes, flags = packets * (44 if ver == 4 else 64), SYN
        end = start + int(u_pk * 5)
        end = min(end, last)
        rid = record_id(flid, ptext, dst, sport, port, proto, _INGRESS, start, end)
        if rid in seen:
            continue
        seen.add(rid)
        ctx.out.append(
            FlowRecord(
                rid,
                RECORD_VERSION,
                acct,
                flid,
                region,
                project,
                store,
                rtype,
                res_id,
                net_id,
                ptext,
                dst,
                sport,
                port,
                proto,
                packets,
                nbytes,
                start,
                end,
                action,
                _OK,
                _INGRESS,
                flags,
                rule_id,
                rule_kind,
                0,
            )
        )


def expected_flows_per_minute(resource_type: ResourceType | int) -> float:
    """The base flow rate of a resource type at intensity 1 (before hour-of-day and jitter)."""
    return _TYPE_PROFILES.get(ResourceType(resource_type), _FALLBACK_PROFILE).flows_per_minute
