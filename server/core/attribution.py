"""Which side of a flow is the resource's: the direction of a flow from the resource's addresses.

API.md ("Flows from real sources"): a flow belongs to a resource whose `addresses` (IPs or CIDRs)
contain its destination (DIRECTION_INGRESS) or its source (DIRECTION_EGRESS); when neither side is
the resource's it stays DIRECTION_UNSPECIFIED. Ingest derives a record's missing direction this
way, and the collector attributes the flows it decodes with the same rule, so both live here.

Pure (no I/O). `direction_for` is the plain entry point; `AddressMatcher` is the compiled form for
high rates (a collector or an Ingest stream asks about the same few thousand addresses again and
again): the resource's networks become integer ranges per IP version, looked up by bisection, and
each address's answer is remembered in a bounded cache.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from bisect import bisect_right
from typing import Iterable, Sequence

from server.core.model import Direction

_INGRESS = int(Direction.INGRESS)
_EGRESS = int(Direction.EGRESS)
_UNSPECIFIED = int(Direction.UNSPECIFIED)

_pton, _AF4, _AF6 = socket.inet_pton, socket.AF_INET, socket.AF_INET6


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sorted, non-overlapping (starts, ends) of inclusive integer ranges."""
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted(ranges):
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return tuple(starts), tuple(ends)


def _address_int(text: str) -> tuple[int, int] | None:
    """(IP version, integer) of an address text, or None when it is not one."""
    try:
        if ":" in text:
            return 6, int.from_bytes(_pton(_AF6, text), "big")
        return 4, int.from_bytes(_pton(_AF4, text), "big")
    except (OSError, ValueError):
        pass
    try:  # what inet_pton refuses but ipaddress takes (e.g. a scoped IPv6 address)
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


class AddressMatcher:
    """The resource's addresses compiled for lookups: `contains(address)` and
    `direction(src, dst)`. Entries that are not an IP or CIDR are ignored (the API validates
    resources; a matcher never raises on what it is given). Safe to share between threads (the
    cache is a dict: a racing fill computes the same answer)."""

    __slots__ = ("_cache", "_max_cache", "_ranges", "_packed", "size")

    def __init__(self, addresses: Iterable[str], max_cache: int = 65536) -> None:
        per_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        size = 0
        for text in addresses:
            try:
                net = ipaddress.ip_network(str(text).strip(), strict=False)
            except ValueError:
                continue
            per_version[net.version].append((int(net.network_address), int(net.broadcast_address)))
            size += 1
        self._ranges = {v: _merge(r) for v, r in per_version.items()}
        self.size = size
        self._cache: dict[str, bool] = {}
        self._max_cache = max_cache
        self._packed: tuple[bytes, bytes] | None = None

    def packed(self) -> tuple[bytes, bytes]:
        """The ranges as the compiled path reads them (server/native/_fastingest.c, `addrset`):
        IPv4 as native-order uint64 (start, end) pairs, IPv6 as (start high, start low, end high,
        end low) quadruples, sorted and disjoint, both ends inclusive."""
        if self._packed is None:
            m = 2**64 - 1
            starts4, ends4 = self._ranges[4]
            starts6, ends6 = self._ranges[6]
            v4 = b"".join(struct.pack("=QQ", s, e) for s, e in zip(starts4, ends4))
            v6 = b"".join(struct.pack("=QQQQ", s >> 64, s & m, e >> 64, e & m) for s, e in zip(starts6, ends6))
            self._packed = (v4, v6)
        return self._packed

    def _lookup(self, address: str) -> bool:
        parsed = _address_int(address) if address else None
        if parsed is None:
            return False
        version, value = parsed
        starts, ends = self._ranges[version]
        i = bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def contains(self, address: str) -> bool:
        """Whether the address (text) is one of the resource's (in one of its CIDRs)."""
        hit = self._cache.get(address)
        if hit is None:
            hit = self._lookup(address)
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            self._cache[address] = hit
        return hit

    def direction(self, src: str, dst: str) -> int:
        """DIRECTION_INGRESS (1) when dst is the resource's, else DIRECTION_EGRESS (2) when src
        is, else DIRECTION_UNSPECIFIED (0)."""
        if self.contains(dst):
            return _INGRESS
        if self.contains(src):
            return _EGRESS
        return _UNSPECIFIED

    def directions(self, srcs: Sequence[str], dsts: Sequence[str]) -> list[int]:
        """direction() of many flows, pairwise."""
        contains = self.contains
        return [_INGRESS if contains(d) else _EGRESS if contains(s) else _UNSPECIFIED for s, d in zip(srcs, dsts)]


def direction_for(resource_addresses: Iterable[str], src: str, dst: str) -> int:
    """The direction (a Direction number) of the flow src -> dst relative to a resource owning
    `resource_addresses` (IPs or CIDRs): INGRESS when dst is the resource's, EGRESS when src
    is, UNSPECIFIED when neither. For many flows of one resource build an AddressMatcher once."""
    return AddressMatcher(resource_addresses, max_cache=0).direction(src, dst)
