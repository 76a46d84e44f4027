"""A template compiled once into a record layout: how to cut records out of a data set and make
flows of them, without a Python call or a dict per field.

A template with fixed-length fields becomes one struct.Struct that skips ('x') every field
flowlog does not use, so `Struct.iter_unpack` returns per record a tuple of just the used
fields; a generated comprehension (built from integer slot numbers only, never from exporter
text) turns those tuples into flows in one pass. A template with variable-length fields
(RFC 7011 section 7) is read field by field into the same tuples and goes through the same
comprehension.

Information elements (IANA IPFIX numbers; NetFlow v9 uses the same numbers for these):
addresses 8/12 (IPv4), 27/28 (IPv6); ports 7/11; protocol 4; tcpControlBits 6; octets 1/85
(delta/total) and packets 2/86, any reduced size of 1-8 bytes (ICMP and ICMPv6 flows get ports 0,
whatever the exporter put there: softflowd's v5 and pmacct write type/code in the destination
port); times flowStart/EndSysUpTime
22/21 (NetFlow v9: relative to the header's sysUpTime; IPFIX: to systemInitTimeMilliseconds
160), flowStart/EndSeconds 150/151, -Milliseconds 152/153, -Microseconds 154/155 and
-Nanoseconds 156/157 (NTP format), flowStart/EndDeltaMicroseconds 158/159, flowDuration-
Milliseconds 161 and -Microseconds 162; forwardingStatus 89 (status 2 = dropped -> REJECT);
sampling: samplingInterval 34, samplerRandomInterval 50, samplingPacketInterval 305 and
samplingPacketSpace 306, samplerId 48 / selectorId 302 (looked up in the sampling options).
"""

from __future__ import annotations

import socket
import struct
from functools import partial
from typing import Any, Callable, NamedTuple

VARIABLE = 65535  # template field length meaning "variable length" (RFC 7011 section 7)

# Used IEs and the kind of value each is: "a4"/"a16" addresses, "n" unsigned integers.
ADDRESS_IES = {8: 4, 12: 4, 27: 16, 28: 16}
NUMBER_IES = frozenset(
    {
        1,
        2,
        4,
        6,
        7,
        11,
        21,
        22,
        34,
        48,
        50,
        85,
        86,
        89,
        150,
        151,
        152,
        153,
        154,
        155,
        156,
        157,
        158,
        159,
        160,
        161,
        162,
        302,
        305,
        306,
    }
)
_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 to 1970-01-01


class Field(NamedTuple):
    ie: int  # information element id (enterprise bit cleared)
    length: int  # bytes, or VARIABLE
    enterprise: int  # 0 for IANA elements; -1 for NetFlow v9 scope fields (another number space)


def used(f: Field) -> bool:
    """Whether flowlog reads this field (an IANA element it knows, at a length it can read)."""
    if f.enterprise != 0 or f.length == VARIABLE:
        return False
    if f.ie in ADDRESS_IES:
        return f.length == ADDRESS_IES[f.ie]
    return f.ie in NUMBER_IES and 1 <= f.length <= 8


class Layout:
    """One template's compiled form. `slots` maps a used IE to its index in the record tuples."""

    __slots__ = ("fields", "struct", "size", "variable", "slots", "extract", "ipfix", "native")

    def __init__(self, fields: tuple[Field, ...], ipfix: bool) -> None:
        self.fields = fields
        self.ipfix = ipfix
        self.variable = any(f.length == VARIABLE for f in fields)
        self.slots: dict[int, int] = {}
        fmt = ["!"]
        for f in fields:
            if f.length == VARIABLE:
                continue
            if used(f) and f.ie not in self.slots:
                self.slots[f.ie] = len(self.slots)
                fmt.append(_CODES.get(f.length, f"{f.length}s") if f.ie not in ADDRESS_IES else f"{f.length}s")
            else:
                fmt.append(f"{f.length}x")
        # Only meaningful without variable fields; with them, `size` is the fixed part's minimum.
        self.struct = struct.Struct("".join(fmt))
        self.size = (
            self.struct.size
            if not self.variable
            else sum(f.length for f in fields if f.length != VARIABLE) + sum(1 for f in fields if f.length == VARIABLE)
        )
        self.extract: Callable[..., list] | None = _compile_extract(self.slots, fields, ipfix)
        # The same extraction in C (server/native/_fastingest.c, extract) for fixed-length records:
        # where each used element sits in a record, as NATIVE_ROLES lists them.
        self.native: bytes | None = None
        if self.extract is not None and not self.variable:
            self.native = _native_spec(fields, self.size, ipfix)

    def records(self, body: memoryview) -> list[tuple] | Any:
        """The record tuples of one data set's body (trailing padding ignored); raises ValueError
        when a variable-length record runs past the end of the set."""
        if not self.variable:
            n = len(body) // self.size
            return self.struct.iter_unpack(body[: n * self.size]) if n else ()
        return list(self._variable_records(body))

    def _variable_records(self, body: memoryview):
        end = len(body)
        off = 0
        fields = self.fields
        slots = self.slots
        while end - off >= self.size:
            values: list = [None] * len(slots)
            seen: set[int] = set()
            for f in fields:
                n = f.length
                if n == VARIABLE:
                    if off >= end:
                        raise ValueError("variable-length field past the end of its set")
                    n = body[off]
                    off += 1
                    if n == 255:
                        if off + 2 > end:
                            raise ValueError("variable-length field past the end of its set")
                        n = (body[off] << 8) | body[off + 1]
                        off += 2
                    off += n  # flowlog reads no variable-length element
                    if off > end:
                        raise ValueError("variable-length field past the end of its set")
                    continue
                if off + n > end:
                    raise ValueError("record past the end of its set")
                if f.ie in slots and f.ie not in seen and used(f):
                    seen.add(f.ie)
                    raw = bytes(body[off : off + n])
                    keep_bytes = f.ie in ADDRESS_IES or n not in _CODES
                    values[slots[f.ie]] = raw if keep_bytes else int.from_bytes(raw, "big")
                off += n
            yield tuple(values)


_n4 = partial(socket.inet_ntop, socket.AF_INET)
_n6 = partial(socket.inet_ntop, socket.AF_INET6)


def _ntp_ms(v: int) -> int:
    return ((v >> 32) - NTP_EPOCH_OFFSET_S) * 1000 + (((v & 0xFFFFFFFF) * 1000) >> 32)


def _u(v: Any) -> int:
    """A reduced-size unsigned integer read as bytes (lengths 3, 5, 6, 7)."""
    return int.from_bytes(v, "big")


# The elements the compiled extract reads, in the order of its spec (the R_* roles of
# server/native/_fastingest.c): addresses, ports, protocol, counters, flags, forwardingStatus,
# sampling, systemInitTime, then start, end and duration in each representation.
NATIVE_ROLES: tuple[int, ...] = (8, 27, 12, 28, 7, 11, 4, 2, 86, 1, 85, 6, 89, 34, 50, 305, 306, 302, 48, 160)
NATIVE_ROLES += (152, 150, 154, 156, 22, 158, 153, 151, 155, 157, 21, 159, 161, 162)
_SPEC = struct.Struct(f"=ii{len(NATIVE_ROLES)}i{len(NATIVE_ROLES)}i")


def _native_spec(fields: tuple[Field, ...], size: int, ipfix: bool) -> bytes:
    """The compiled extract's spec: record size, IPFIX or not, then the offset (-1: absent) and the
    length of each NATIVE_ROLES element: its first used occurrence, as `slots` takes it."""
    where: dict[int, tuple[int, int]] = {}
    off = 0
    for f in fields:
        if used(f) and f.ie not in where:
            where[f.ie] = (off, f.length)
        off += f.length
    offsets = [where[ie][0] if ie in where else -1 for ie in NATIVE_ROLES]
    lengths = [where[ie][1] if ie in where else 0 for ie in NATIVE_ROLES]
    return _SPEC.pack(size, int(ipfix), *offsets, *lengths)


ICMP = frozenset({1, 58})
_NAMESPACE = {"n4": _n4, "n6": _n6, "ntp": _ntp_ms, "u": _u, "ACCEPT": 1, "REJECT": 2, "ICMP": ICMP}


def _compile_extract(slots: dict[int, int], fields: tuple[Field, ...], ipfix: bool) -> Callable[..., list] | None:
    """The comprehension that turns record tuples into flow tuples, or None when the template
    has no addresses (not a flow template: options, or layer 2 only).

    It is called as extract(rows, E, U, I, S, SM): E export time (epoch ms), U the header's
    sysUpTime (NetFlow v9), I the exporter's systemInitTimeMilliseconds (IPFIX; 0 = unknown),
    S the sampling interval in force, SM sampler id -> interval."""
    lengths = {f.ie: f.length for f in reversed(fields) if used(f)}

    def v(ie: int) -> str:
        s = f"t[{slots[ie]}]"
        return s if lengths[ie] in _CODES or ie in ADDRESS_IES else f"u({s})"

    has = slots.__contains__
    if has(8) and has(27):
        src = f"(n6({v(27)}) if {v(8)} == b'\\0\\0\\0\\0' else n4({v(8)}))"
    elif has(8):
        src = f"n4({v(8)})"
    elif has(27):
        src = f"n6({v(27)})"
    else:
        return None
    if has(12) and has(28):
        dst = f"(n6({v(28)}) if {v(12)} == b'\\0\\0\\0\\0' else n4({v(12)}))"
    elif has(12):
        dst = f"n4({v(12)})"
    elif has(28):
        dst = f"n6({v(28)})"
    else:
        return None
    proto = v(4) if has(4) else "0"
    sport = v(7) if has(7) else "0"
    dport = v(11) if has(11) else "0"
    if has(4):  # ICMP and ICMPv6 have no ports: 0, as cloud flow logs write them (some exporters put type/code there)
        sport = f"(0 if {proto} in ICMP else {sport})" if has(7) else sport
        dport = f"(0 if {proto} in ICMP else {dport})" if has(11) else dport
    packets = v(2) if has(2) else v(86) if has(86) else "0"
    octets = v(1) if has(1) else v(85) if has(85) else "0"
    flags = f"({v(6)} & 0xFFF)" if has(6) else "0"
    action = f"(REJECT if ({v(89)} & 0xFF) >> 6 == 2 else ACCEPT)" if has(89) else "ACCEPT"
    if has(34):
        sampling = v(34)
    elif has(50):
        sampling = v(50)
    elif has(305):
        sampling = f"(({v(305)} + {v(306)}) // {v(305)} if {v(305)} else 0)" if has(306) else v(305)
    elif has(302):
        sampling = f"SM.get({v(302)}, S)"
    elif has(48):
        sampling = f"SM.get({v(48)}, S)"
    else:
        sampling = "S"

    init = v(160) if has(160) else "I"

    def when(abs_ms: int, abs_s: int, micro: int, nano: int, uptime: int, delta: int) -> str | None:
        if has(abs_ms):
            return v(abs_ms)
        if has(micro):
            return f"ntp({v(micro)})"
        if has(nano):
            return f"ntp({v(nano)})"
        if has(abs_s):
            return f"{v(abs_s)} * 1000"
        if has(uptime):
            if not ipfix:  # NetFlow v9: ms of sysUpTime; the difference to the header's, signed 32 bits
                return f"(E - (((U - {v(uptime)} + 0x80000000) & 0xFFFFFFFF) - 0x80000000))"
            return f"({init} + {v(uptime)})"
        if has(delta):
            return f"(E - {v(delta)} // 1000)"
        return None

    start = when(152, 150, 154, 156, 22, 158)
    end = when(153, 151, 155, 157, 21, 159)
    duration = v(161) if has(161) else f"{v(162)} // 1000" if has(162) else None
    start_from_uptime = has(22) and not any(has(ie) for ie in (152, 154, 156, 150))
    end_from_uptime = has(21) and not any(has(ie) for ie in (153, 155, 157, 151))
    if ipfix and not has(160) and start_from_uptime and end_from_uptime:
        # Relative to a system init time the exporter has not told (yet): end at the export time.
        start = f"(({start}) if I else (E - {v(21)} + {v(22)}))"
        end = f"(({end}) if I else E)"
    if start is None and end is None:
        start = end = "E"
    elif start is None:
        start = f"({end} - {duration})" if duration else end
    elif end is None:
        end = f"({start} + {duration})" if duration else start
    code = (
        f"def extract(rows, E, U, I, S, SM):\n"
        f"    return [({src}, {dst}, {sport}, {dport}, {proto}, {packets}, {octets}, {start}, {end}, {flags}, "
        f"{action}, {sampling}) for t in rows]\n"
    )
    ns: dict[str, Any] = dict(_NAMESPACE)
    exec(compile(code, "<flowlog template>", "exec"), ns)  # noqa: S102 - code made of slot numbers only
    return ns["extract"]
