"""Hand-built NetFlow v5 / v9 / IPFIX datagrams for the tests, packed field by field with struct
straight from RFC 3954 and RFC 7011 (written independently of server.sources)."""

from __future__ import annotations

import socket
import struct
from typing import Sequence

VAR = 65535


def v5(records: Sequence[dict], *, uptime: int, secs: int, nsecs: int = 0, sampling: int = 0, seq: int = 0) -> bytes:
    """records: dicts with src, dst, pkts, octets, first, last (sysUpTime ms), sport, dport, flags, proto."""
    out = struct.pack("!HHIIIIBBH", 5, len(records), uptime, secs, nsecs, seq, 0, 0, sampling)
    for r in records:
        out += struct.pack(
            "!4s4s4sHHIIIIHHBBBBHHBBH",
            socket.inet_aton(r["src"]),
            socket.inet_aton(r["dst"]),
            b"\0" * 4,
            1,
            2,
            r["pkts"],
            r["octets"],
            r["first"],
            r["last"],
            r["sport"],
            r["dport"],
            0,
            r.get("flags", 0),
            r["proto"],
            0,
            0,
            0,
            24,
            24,
            0,
        )
    return out


def field_spec(fields: Sequence[tuple]) -> bytes:
    """(ie, length) or (ie, length, enterprise) -> IPFIX field specifiers."""
    out = b""
    for f in fields:
        if len(f) == 3:
            out += struct.pack("!HHI", f[0] | 0x8000, f[1], f[2])
        else:
            out += struct.pack("!HH", f[0], f[1])
    return out


def ipfix_template(tid: int, fields: Sequence[tuple]) -> bytes:
    return struct.pack("!HH", tid, len(fields)) + field_spec(fields)


def ipfix_options_template(tid: int, scope: Sequence[tuple], fields: Sequence[tuple]) -> bytes:
    return struct.pack("!HHH", tid, len(scope) + len(fields), len(scope)) + field_spec(list(scope) + list(fields))


def ipfix_set(set_id: int, body: bytes, pad: int = 0) -> bytes:
    body += b"\0" * pad
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def ipfix(sets: Sequence[bytes], *, export_time: int, domain: int = 0, seq: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_time, seq, domain) + body


def v9_template(tid: int, fields: Sequence[tuple]) -> bytes:
    return struct.pack("!HH", tid, len(fields)) + b"".join(struct.pack("!HH", ie, n) for ie, n in fields)


def v9_options_template(tid: int, scope: Sequence[tuple], fields: Sequence[tuple]) -> bytes:
    return struct.pack("!HHH", tid, 4 * len(scope), 4 * len(fields)) + b"".join(
        struct.pack("!HH", t, n) for t, n in list(scope) + list(fields)
    )


def v9(flowsets: Sequence[bytes], *, uptime: int, secs: int, source_id: int = 0, seq: int = 0) -> bytes:
    return struct.pack("!HHIIII", 9, len(flowsets), uptime, secs, seq, source_id) + b"".join(flowsets)


def varlen(data: bytes) -> bytes:
    """An IPFIX variable-length value (RFC 7011 section 7)."""
    if len(data) < 255:
        return bytes([len(data)]) + data
    return b"\xff" + struct.pack("!H", len(data)) + data


def a4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def a6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def ntp(ms: int) -> int:
    """Epoch ms -> 64-bit NTP timestamp (seconds since 1900 . fraction)."""
    secs, rem = divmod(ms, 1000)
    return ((secs + 2_208_988_800) << 32) | ((rem << 32) // 1000 + 1)
