"""Azure flow logs (JSON) -> FlowRecords: VNet flow logs, and the older NSG flow logs (v1, v2).

VNet flow log blobs (`insights-logs-flowlogflowevent/.../PT1H.json`) hold
`records[].flowRecords.flows[].flowGroups[].flowTuples[]`; NSG flow logs hold
`records[].properties.flows[].flows[].flowTuples[]`. A flow tuple is one comma-separated string:
  VNet (flowLogVersion 4): time ms, src, dst, sport, dport, protocol number, I|O, state, encryption,
                           packets src->dst, bytes src->dst, packets dst->src, bytes dst->src
  NSG v2:                  time s, src, dst, sport, dport, T|U, I|O, A|D, state, the same 4 counters
  NSG v1:                  time s, src, dst, sport, dport, T|U, I|O, A|D
State B (flow began), C (continuing), E (ended); VNet's D means denied. Direction I/O is seen
from the network interface: I -> DIRECTION_INGRESS, O -> DIRECTION_EGRESS.

A tuple counts both ways of a connection; a FlowRecord counts one way. So a tuple becomes
- a record src -> dst with the src->dst counters and the tuple's direction, and
- when the dst->src counters are not zero, a record dst -> src (ports swapped) with them and the
  opposite direction.
A denied tuple (VNet state D, NSG decision D) is one ACTION_REJECT record (its counters are 0).
An allowed tuple in state B has no counters (Azure sends them in the flow's C and E tuples): it is
skipped, and counted as such. Start and end time are both the tuple's time.

The flow group's (VNet) or flow's (NSG) `rule` is the rule that decided: its name becomes
`rule_id` (when it fits rule_id's characters: letters, digits, `-_.:/`, up to 128), with
`rule_kind` RULE_KIND_DEFAULT for Azure's catch-all `DefaultRule_DenyAll*` rules (nothing else
matched) and RULE_KIND_SECURITY_GROUP for any other (network security group and security admin
rules). The encryption flag, MAC address and ACL id are not stored.

A document that ends early (Azure appends to the hour's blob, so a copy of the current hour can
stop mid-record) still gives its complete records, then one LineError where it stops.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from clients.importers import Item, Items, LineError, Skipped
from flowlog.v1 import record_pb2, types_pb2

_PROTOCOLS = {"T": 6, "U": 17}
_DIRECTIONS = {"I": types_pb2.DIRECTION_INGRESS, "O": types_pb2.DIRECTION_EGRESS}
_OPPOSITE = {
    types_pb2.DIRECTION_INGRESS: types_pb2.DIRECTION_EGRESS,
    types_pb2.DIRECTION_EGRESS: types_pb2.DIRECTION_INGRESS,
}
_FlowRecord = record_pb2.FlowRecord
_RULE_ID = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_BEGIN_SKIPPED = "flow-begin tuple: no counters (the flow's C and E tuples carry them)"


class _Bad(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class _Lines:
    """Line numbers of tuples in the document text. Tuples are found in document order, so one
    forward search per tuple, counting newlines as it goes, is linear in the document."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1

    def of(self, value: str) -> int:
        at = self._text.find(f'"{value}"', self._pos)
        if at < 0:  # written with JSON escapes: no line, the path in the message says where
            return 0
        self._line += self._text.count("\n", self._pos, at)
        self._pos = at
        return self._line


def parse_document(data: bytes | str, source: str) -> Items:
    """One Azure flow-log JSON document (a PT1H.json blob) -> items; see the module docstring.

    `line` is the document line the flow tuple is written on; messages name the tuple's JSON
    path too, since Azure writes a blob on few lines."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        yield LineError(source, 0, f"not UTF-8 text: {e}")
        return
    truncated: json.JSONDecodeError | None = None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        salvaged, truncated = _complete_records(text)
        if salvaged is None:
            yield LineError(source, e.lineno, f"not JSON: {e.msg} (column {e.colno})")
            return
        doc = {"records": salvaged}
        truncated = truncated or e
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        records = doc["records"]
    elif isinstance(doc, list):
        records = doc
    elif isinstance(doc, dict) and ("flowRecords" in doc or "properties" in doc):
        records = [doc]
    else:
        yield LineError(source, 1, "not an Azure flow log: expected an object with a 'records' list")
        return
    lines = _Lines(text)
    for i, record in enumerate(records):
        yield from _record_items(record, f"records[{i}]", source, lines)
    if truncated is not None:
        complete = f"{len(records)} complete record{'' if len(records) == 1 else 's'}"
        yield LineError(
            source,
            truncated.lineno,
            f"not JSON from here: {truncated.msg} (column {truncated.colno}); "
            f"the {complete} before it are imported (a blob Azure is still "
            "writing ends early: import it again once complete)",
        )


_RECORDS_START = re.compile(r'\s*\{\s*"records"\s*:\s*\[')
_BETWEEN = re.compile(r"[\s,]*")


def _complete_records(text: str) -> tuple[list | None, json.JSONDecodeError | None]:
    """The records of a `{"records": [...` document that ends early (Azure appends to an hour's
    blob as the hour goes, so a copy of the current hour may stop mid-record): every record
    that is complete, and the error where decoding stopped. (None, None) when the document is
    not of that shape at all."""
    start = _RECORDS_START.match(text)
    if start is None:
        return None, None
    decoder = json.JSONDecoder()
    records: list = []
    pos = start.end()
    while True:
        pos = _BETWEEN.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text) or text[pos] == "]":
            return records, None
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return records, e
        records.append(record)


def _record_items(record: Any, path: str, source: str, lines: _Lines) -> Items:
    if not isinstance(record, dict):
        yield LineError(source, 0, f"{path}: not an object")
        return
    if isinstance(record.get("flowRecords"), dict):  # VNet flow log
        for j, flow in enumerate(_list(record["flowRecords"].get("flows"))):
            for k, group in enumerate(_list(_get(flow, "flowGroups"))):
                where = f"{path}.flowRecords.flows[{j}].flowGroups[{k}].flowTuples"
                rule = _rule(_get(group, "rule"))
                for t, tup in enumerate(_list(_get(group, "flowTuples"))):
                    yield from _tuple_items(tup, f"{where}[{t}]", source, lines, rule, vnet=True)
    elif isinstance(record.get("properties"), dict):  # NSG flow log, v1 or v2
        for j, group in enumerate(_list(record["properties"].get("flows"))):
            rule = _rule(_get(group, "rule"))
            for k, flow in enumerate(_list(_get(group, "flows"))):
                where = f"{path}.properties.flows[{j}].flows[{k}].flowTuples"
                for t, tup in enumerate(_list(_get(flow, "flowTuples"))):
                    yield from _tuple_items(tup, f"{where}[{t}]", source, lines, rule, vnet=False)
    else:
        yield LineError(
            source, 0, f"{path}: has neither flowRecords (VNet flow log) nor properties.flows (NSG flow log)"
        )


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _rule(name: Any) -> dict[str, Any]:
    """FlowRecord fields of a flow group's rule (none when it has no usable name)."""
    if not isinstance(name, str) or not _RULE_ID.match(name):
        return {}
    kind = types_pb2.RULE_KIND_DEFAULT if name.startswith("DefaultRule_DenyAll") else types_pb2.RULE_KIND_SECURITY_GROUP
    return {"rule_id": name, "rule_kind": kind}


def _tuple_items(
    tup: Any, path: str, source: str, lines: _Lines, rule: dict[str, Any], *, vnet: bool
) -> Iterator[Item]:
    if not isinstance(tup, str):
        yield LineError(source, 0, f"{path}: a flow tuple must be a string")
        return
    line = lines.of(tup)
    try:
        yield from _records(tup.split(","), source, line, rule, vnet)
    except _Bad as e:
        yield LineError(source, line, f"{path} {tup[:120]!r}: {e.reason}", e.field)
    except ValueError as e:  # protobuf's own range checks
        yield LineError(source, line, f"{path} {tup[:120]!r}: {e}")


def _records(f: list[str], source: str, line: int, rule: dict[str, Any], vnet: bool) -> Iterator[Item]:
    """The record(s) of one tuple's fields; raises _Bad before yielding anything."""
    if vnet and len(f) != 13:
        raise _Bad("", f"has {len(f)} fields; a VNet flow tuple has 13")
    if not vnet and len(f) not in (8, 13):
        raise _Bad("", f"has {len(f)} fields; an NSG flow tuple has 8 (version 1) or 13 (version 2)")
    ts = _number("time", f[0])
    ms = ts if vnet else ts * 1000
    src, dst = f[1].strip(), f[2].strip()
    if not src or not dst:
        raise _Bad("src_addr" if not src else "dst_addr", "is empty")
    sport, dport = _number("src_port", f[3]), _number("dst_port", f[4])
    protocol = _number("protocol", f[5]) if vnet else _PROTOCOLS.get(f[5])
    if protocol is None:
        raise _Bad("protocol", f"{f[5]!r} is not T or U")
    direction = _DIRECTIONS.get(f[6])
    if direction is None:
        raise _Bad("direction", f"{f[6]!r} is not I or O")
    if vnet:
        state = f[7]
        if state not in ("B", "C", "E", "D"):
            raise _Bad("state", f"{state!r} is not B, C, E or D")
        denied = state == "D"
    else:
        if f[7] not in ("A", "D"):
            raise _Bad("action", f"{f[7]!r} is not A or D")
        denied = f[7] == "D"
        state = f[8] if len(f) == 13 else "E"
        if state not in ("B", "C", "E"):
            raise _Bad("state", f"{state!r} is not B, C or E")
    counters = [_number(name, v) for name, v in zip(("packets", "bytes", "packets", "bytes"), f[9:13])] or [0] * 4
    if state == "B" and not denied:
        yield Skipped(source, line, _BEGIN_SKIPPED)
        return
    when = Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)
    action = types_pb2.ACTION_REJECT if denied else types_pb2.ACTION_ACCEPT
    common = dict(
        protocol=protocol, start_time=when, end_time=when, action=action, log_status=types_pb2.LOG_STATUS_OK, **rule
    )
    forward = _FlowRecord(
        src_addr=src,
        dst_addr=dst,
        src_port=sport,
        dst_port=dport,
        packets=counters[0],
        bytes=counters[1],
        direction=direction,
        **common,
    )
    reverse = None
    if counters[2] or counters[3]:
        reverse = _FlowRecord(
            src_addr=dst,
            dst_addr=src,
            src_port=dport,
            dst_port=sport,
            packets=counters[2],
            bytes=counters[3],
            direction=_OPPOSITE[direction],
            **common,
        )
    yield line, forward
    if reverse is not None:
        yield line, reverse


def _number(field: str, text: str) -> int:
    text = text.strip()
    if text == "":
        return 0
    if not text.isdigit():
        raise _Bad(field, f"{text[:40]!r} is not a whole number")
    return int(text)
