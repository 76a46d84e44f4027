"""A pcap file of known flows, written with plain struct packing (Ethernet, IPv4/IPv6, TCP/UDP/
ICMP/ICMPv6), and the flow records an exporter should make of it: the test's oracle.

Each Flow is a conversation with packets both ways (or one way for ICMP scans); the expected
records are one per direction that has packets, with packets and bytes (IP length, as NetFlow
counts) summed from the packets written."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

ETH_SRC = bytes.fromhex("020000000001")
ETH_DST = bytes.fromhex("020000000002")


@dataclass
class Conv:
    """A conversation: `a` talks to `b` on (proto, sport, dport); `payloads` are (direction, size):
    direction 0 = a -> b, 1 = b -> a."""

    a: str
    b: str
    proto: int
    sport: int
    dport: int
    payloads: list[tuple[int, int]]
    start_s: float = 0.0  # offset of the first packet from the capture start
    gap_s: float = 0.01


@dataclass
class Expected:
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    packets: int = 0
    octets: int = 0
    first_ms: int = 0
    last_ms: int = 0
    times: list = field(default_factory=list)

    conv: Conv | None = None

    def key(self) -> tuple:
        return (self.src, self.dst, self.sport, self.dport, self.proto, self.packets, self.octets)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _l4(proto: int, sport: int, dport: int, payload: bytes, v6: bool, seq: int, flags: int) -> bytes:
    if proto == 6:
        return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload
    if proto == 17:
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    # ICMP / ICMPv6 echo request: type 8 / 128; the "ports" NetFlow reports are type/code in dport
    icmp_type = 128 if v6 else 8
    return struct.pack("!BBHHH", icmp_type, 0, 0, 1, seq) + payload


def packet(src: str, dst: str, proto: int, sport: int, dport: int, size: int, seq: int = 0, flags: int = 0x18) -> bytes:
    """An Ethernet frame of one IP packet of `size` payload bytes."""
    v6 = ":" in src
    payload = bytes(size)
    l4 = _l4(proto, sport, dport, payload, v6, seq, flags)
    if v6:
        ip = struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(l4),
            proto,
            64,
            socket.inet_pton(socket.AF_INET6, src),
            socket.inet_pton(socket.AF_INET6, dst),
        )
        return ETH_DST + ETH_SRC + b"\x86\xdd" + ip + l4
    total = 20 + len(l4)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, seq & 0xFFFF, 0, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return ETH_DST + ETH_SRC + b"\x08\x00" + hdr + l4


def ip_length(frame: bytes) -> int:
    return len(frame) - 14


def write(path: str, convs: list[Conv], t0_s: float) -> list[Expected]:
    """Write the conversations to a pcap (microsecond timestamps from t0_s) and return the
    expected per-direction records (sorted by first packet time)."""
    events = []  # (time, frame, expected key)
    expected: dict[tuple, Expected] = {}
    conv_times: dict[int, list[float]] = {}
    for conv in convs:
        t = t0_s + conv.start_s
        for i, (direction, size) in enumerate(conv.payloads):
            if direction == 0:
                src, dst, sport, dport = conv.a, conv.b, conv.sport, conv.dport
            else:
                src, dst, sport, dport = conv.b, conv.a, conv.dport, conv.sport
            frame = packet(src, dst, conv.proto, sport, dport, size, seq=i + 1)
            if conv.proto in (1, 58):  # flowlog records keep no ports for ICMP
                sport = dport = 0
            k = (src, dst, sport, dport, conv.proto)
            e = expected.setdefault(k, Expected(src, dst, sport, dport, conv.proto, conv=conv))
            e.packets += 1
            e.octets += ip_length(frame)
            e.times.append(t)
            conv_times.setdefault(id(conv), []).append(t)
            events.append((t, frame))
            t += conv.gap_s
    events.sort(key=lambda ev: ev[0])
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, frame in events:
            sec = int(t)
            usec = int(round((t - sec) * 1_000_000))
            if usec == 1_000_000:
                sec, usec = sec + 1, 0
            fh.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    for e in expected.values():  # exporters keep one flow both ways: its times are the conversation's
        e.first_ms = int(min(conv_times[id(e.conv)]) * 1000)
        e.last_ms = int(max(conv_times[id(e.conv)]) * 1000)
    return sorted(expected.values(), key=lambda e: (e.first_ms, e.key()))


def standard_flows(n: int = 90) -> list[Conv]:
    """IPv4 and IPv6; TCP, UDP, ICMP, ICMPv6; both directions and one-way. The local side is in
    10.n.0.0/24 and 2001:db8:n::/64 (n: 1-254, one per test so that tests do not share flows);
    frames stay within a 1500-byte MTU (tcpreplay onto a veth sends nothing larger)."""
    v4, v6 = f"10.{n}.0", f"2001:db8:{n:x}:"
    return [
        Conv(
            f"{v4}.10",
            "198.51.100.20",
            6,
            40001,
            443,
            [(0, 0), (1, 0), (0, 0), (0, 300), (1, 1200), (1, 1200), (0, 0)],
            start_s=0.0,
        ),
        Conv(f"{v4}.11", "192.0.2.53", 17, 53001, 53, [(0, 40), (1, 120)], start_s=0.2),
        Conv("203.0.113.9", f"{v4}.10", 6, 51515, 22, [(0, 0), (0, 0), (0, 0)], start_s=0.4),
        Conv(f"{v4}.12", "198.51.100.99", 1, 0, 0, [(0, 56), (0, 56), (0, 56)], start_s=0.6, gap_s=0.2),
        Conv(f"{v6}:10", "2001:db8:ffff::1", 6, 40002, 443, [(0, 0), (1, 0), (0, 500), (1, 1400)], start_s=0.8),
        Conv("2001:db8:ffff::53", f"{v6}:11", 17, 5353, 53000, [(0, 90), (1, 60)], start_s=1.0),
        Conv(f"{v6}:12", "2001:db8:ffff::2", 58, 0, 0, [(0, 32), (0, 32)], start_s=1.2, gap_s=0.1),
    ]


def local_networks(n: int) -> list[str]:
    """The resource addresses standard_flows(n) talks from."""
    return [f"10.{n}.0.0/24", f"2001:db8:{n:x}::/64"]
