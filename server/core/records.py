"""Flow records: the stable record id and the validation of records pushed by collectors.

The record id is a hash of the flow window (flow log, five-tuple, direction, start, end), so the
same window always gets the same id and a retried write never duplicates. It is derived, not
stored, in the archive: the archive recomputes it on read with this same function.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from server.core.model import RECORD_VERSION, Action, Direction, FlowRecord, LogStatus, RuleKind
from server.core.rules import RULE_ID_CHARS, RULE_ID_MAX, SAMPLING_RATE_MAX, rule_id_problem

# The record's limits, in one place: the Python checks here and in server.core.ingest, the
# compiled path (server/native/_fastingest.c holds none of its own: server/native/fastpath.py
# hands it record_limits() at import) and the API's time fields (server.core.query,
# server.pipeline.tail) all use these.
# A record may start at most this far in the future of the server's clock (clock skew allowance).
MAX_FUTURE_MS = 5 * 60 * 1000
# ...and at most this far in the past (older records would fall outside any retention at once).
MAX_PAST_MS = 3650 * 86_400_000
# A flow window (end_time - start_time) lasts at most 24 hours.
MAX_WINDOW_MS = 86_400_000
# google.protobuf.Timestamp's valid range (0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z), in ms.
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999
MAX_U64 = 2**64 - 1
# Ports, protocol and TCP flags: what the backends' 32-bit (or narrower) columns store.
MAX_PORT = 65535
MAX_PROTOCOL = 255
MAX_TCP_FLAGS = 0xFFF
_RULE_KINDS = frozenset(int(k) for k in RuleKind)


def record_limits() -> dict[str, int | str]:
    """Every bound check_record applies, by name: what the compiled path is configured with."""
    return {
        "max_future_ms": MAX_FUTURE_MS,
        "max_past_ms": MAX_PAST_MS,
        "max_window_ms": MAX_WINDOW_MS,
        "max_port": MAX_PORT,
        "max_protocol": MAX_PROTOCOL,
        "max_tcp_flags": MAX_TCP_FLAGS,
        "rule_id_max": RULE_ID_MAX,
        "rule_id_chars": "".join(sorted(RULE_ID_CHARS)),
        "sampling_rate_max": SAMPLING_RATE_MAX,
        "rule_kind_max": max(_RULE_KINDS),
    }


def _span(ms: int) -> str:
    """A limit in words: "5 minutes", "24 hours", "3650 days"."""
    for unit, size in (("days", 86_400_000), ("hours", 3_600_000), ("minutes", 60_000), ("seconds", 1000)):
        if ms % size == 0 and ms >= size and (unit != "days" or ms // size > 1):
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def record_id(
    flow_log_id: str,
    src_addr: str,
    dst_addr: str,
    src_port: int,
    dst_port: int,
    protocol: int,
    direction: int,
    start_time: int,
    end_time: int,
) -> str:
    """32 hex characters (128 bits of BLAKE2b) over the fields that identify a flow window."""
    key = f"{flow_log_id}|{src_addr}|{dst_addr}|{src_port}|{dst_port}|{protocol}|{direction}|{start_time}|{end_time}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def record_ids(
    flow_log_id: str,
    src_addrs: Iterable[str],
    dst_addrs: Iterable[str],
    src_ports: Iterable[int],
    dst_ports: Iterable[int],
    protocols: Iterable[int],
    directions: Iterable[int],
    start_times: Iterable[int],
    end_times: Iterable[int],
) -> list[str]:
    """record_id() of many records of one flow log, column-wise (the same text, hashed the same
    way, without a Python call per record)."""
    # The flow log id is hashed once and the hash state copied per record: ~25% cheaper than a
    # new hasher over the whole text each time.
    copy = hashlib.blake2b(f"{flow_log_id}|".encode(), digest_size=16).copy
    out: list[str] = []
    append = out.append
    for a, b, c, d, e, f, g, h in zip(
        src_addrs, dst_addrs, src_ports, dst_ports, protocols, directions, start_times, end_times
    ):
        x = copy()
        x.update(f"{a}|{b}|{c}|{d}|{e}|{f}|{g}|{h}".encode())
        append(x.hexdigest())
    return out


ZONE_REFUSED = "zone identifiers ('%…') are not allowed: send the address alone"


@lru_cache(maxsize=65536)
def canonical_address(text: str) -> str:
    """The canonical text of an IP address ("" stays ""); raises ValueError when it is not one.

    Cached: collectors repeat the same few thousand addresses endlessly.
    """
    if text == "":
        return ""
    if len(text) > 45:
        raise ValueError("too long for an IP address")
    if "%" in text:
        # ipaddress takes "fe80::1%eth0" and keeps the text after '%' (any text: terminal escapes
        # included), and the same flow then gets another record_id per zone text.
        raise ValueError(ZONE_REFUSED)
    fast = _inet_canonical(text)
    return fast if fast is not None else ipaddress.ip_address(text).compressed


_pton, _ntop, _AF4, _AF6 = socket.inet_pton, socket.inet_ntop, socket.AF_INET, socket.AF_INET6


def _inet_canonical(text: str) -> str | None:
    """ipaddress' canonical text of an address by the C library's inet_pton/inet_ntop (~0.3 µs
    instead of ~2-7), or None when only ipaddress can say: anything inet_pton refuses (it is then
    ipaddress that accepts, e.g. a scoped "fe80::1%eth0", or raises) and IPv6 results written
    with a dotted IPv4 tail, which ipaddress writes in hex. For everything else the two agree:
    both refuse leading zeros in IPv4 octets and write IPv6 the RFC 5952 way (tests/unit/
    test_addresses.py compares them over generated addresses)."""
    try:
        if ":" not in text:
            return _ntop(_AF4, _pton(_AF4, text))
        out = _ntop(_AF6, _pton(_AF6, text))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    return None if "." in out else out


@dataclass(frozen=True)
class RecordProblem:
    field: str
    reason: str


def check_record(r: FlowRecord, now_ms: int) -> RecordProblem | None:
    """The first problem of a record pushed by a collector, or None when it is valid.

    Addresses must already be canonical (see canonical_address); the caller checks ownership of
    the flow log. Returns a problem instead of raising: one bad record never fails its batch.
    """
    if r.log_status not in (LogStatus.OK, LogStatus.NODATA, LogStatus.SKIPDATA):
        return RecordProblem("log_status", "must be LOG_STATUS_OK, LOG_STATUS_NODATA or LOG_STATUS_SKIPDATA")
    if r.start_time <= 0:
        return RecordProblem("start_time", "is required")
    if r.end_time < r.start_time:
        return RecordProblem("end_time", "must not be before start_time")
    if r.start_time > now_ms + MAX_FUTURE_MS:
        return RecordProblem(
            "start_time", f"is more than {_span(MAX_FUTURE_MS)} in the future; check the collector's clock"
        )
    if r.start_time < now_ms - MAX_PAST_MS:
        return RecordProblem("start_time", f"is more than {_span(MAX_PAST_MS)} in the past")
    if r.end_time - r.start_time > MAX_WINDOW_MS:
        return RecordProblem("end_time", f"a flow window may last at most {_span(MAX_WINDOW_MS)}")
    # Ranges hold for every record, NODATA ones too: the backends store ports, protocol and flags
    # in 32-bit (or narrower) columns, and a value one of them cannot store would be retried by
    # its sink forever, holding back every record spooled after it.
    if not 0 <= r.src_port <= MAX_PORT:
        return RecordProblem("src_port", f"must be 0-{MAX_PORT}")
    if not 0 <= r.dst_port <= MAX_PORT:
        return RecordProblem("dst_port", f"must be 0-{MAX_PORT}")
    if not 0 <= r.protocol <= MAX_PROTOCOL:
        return RecordProblem("protocol", f"must be an IANA protocol number 0-{MAX_PROTOCOL}")
    if not 0 <= r.tcp_flags <= MAX_TCP_FLAGS:
        return RecordProblem("tcp_flags", f"must fit in {MAX_TCP_FLAGS.bit_length()} bits")
    if not (0 <= r.packets <= MAX_U64 and 0 <= r.bytes <= MAX_U64):
        return RecordProblem("bytes", "out of range")
    if r.rule_id:
        problem = rule_id_problem(r.rule_id)
        if problem is not None:
            return RecordProblem("rule_id", problem)
    if r.rule_kind not in _RULE_KINDS:
        return RecordProblem(
            "rule_kind", "must be RULE_KIND_ACL, RULE_KIND_SECURITY_GROUP, RULE_KIND_DEFAULT or unspecified"
        )
    if not 0 <= r.sampling_rate <= SAMPLING_RATE_MAX:
        return RecordProblem("sampling_rate", f"must be 0-{SAMPLING_RATE_MAX} (0 or 1: unsampled)")
    if r.log_status == LogStatus.NODATA or (r.log_status == LogStatus.SKIPDATA and not r.src_addr and not r.dst_addr):
        # No flow: the five-tuple may be empty and action/direction unspecified, but not unknown.
        # A SKIPDATA record without addresses is the same: AWS writes skipped windows as
        # `- - - - - - - start end - SKIPDATA`; one with addresses is checked like any flow.
        if r.action not in (Action.UNSPECIFIED, Action.ACCEPT, Action.REJECT):
            return RecordProblem(
                "action", "must be ACTION_ACCEPT, ACTION_REJECT or unspecified on a NODATA or SKIPDATA record"
            )
        if r.direction not in (Direction.UNSPECIFIED, Direction.INGRESS, Direction.EGRESS):
            return RecordProblem(
                "direction", "must be DIRECTION_INGRESS, DIRECTION_EGRESS or unspecified on a NODATA or SKIPDATA record"
            )
        return None
    if r.src_addr == "" or r.dst_addr == "":
        return RecordProblem(
            "src_addr" if r.src_addr == "" else "dst_addr",
            "is required unless log_status is LOG_STATUS_NODATA (or SKIPDATA with no addresses)",
        )
    if (":" in r.src_addr) != (":" in r.dst_addr):
        return RecordProblem("dst_addr", "must be of the same IP version as src_addr")
    if r.packets > r.bytes:
        return RecordProblem("packets", "cannot exceed bytes (every packet has at least one byte)")
    if r.action not in (Action.ACCEPT, Action.REJECT):
        return RecordProblem("action", "must be ACTION_ACCEPT or ACTION_REJECT")
    # Unspecified is accepted: Ingest derives it from the resource's addresses first
    # (server.core.attribution) and keeps it unspecified when neither side is the resource's.
    if r.direction not in (Direction.UNSPECIFIED, Direction.INGRESS, Direction.EGRESS):
        return RecordProblem(
            "direction",
            "must be DIRECTION_INGRESS, DIRECTION_EGRESS or unspecified (derived from the resource's addresses)",
        )
    return None


def with_id(r: FlowRecord) -> FlowRecord:
    """The record with its stable record_id and the current version filled in."""
    rid = record_id(
        r.flow_log_id, r.src_addr, r.dst_addr, r.src_port, r.dst_port, r.protocol, r.direction, r.start_time, r.end_time
    )
    return r._replace(record_id=rid, version=RECORD_VERSION)
