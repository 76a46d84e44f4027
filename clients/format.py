"""Human-facing forms of flowlog values: rendering what the server returns (the CLI's output),
with the parsing of what people type re-exported from clients/values.py.

Kept free of gRPC and argparse so the client library, the CLI and the tests share one
definition of "what does `nat-gateway` mean" and "how is a record shown", with no
dependency beyond protobuf.

- Enums: friendly names (`eip`, `nat-gateway`, `allow`, `ACCEPT`) <-> proto enum numbers.
- Times: durations (`15m`, `2h`, `1d`, `1h30m`), RFC 3339 and `now` -> aware UTC datetimes;
  Timestamps -> `2024-05-01T12:00:00Z`.
- Tables: plain-text columns sized to their content (East Asian wide characters count as
  two cells, since names may be Chinese), and a streaming variant for records.
- JSON: json_format with proto field names; one document for objects and lists, one line
  per message for streams.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

# Parsing what people type lives in clients/values.py (the client library uses it too);
# re-exported here for the CLI.
from clients.values import (
    PROTOCOL_NAMES,
    _enum_prefix,
    enum_choices,
    enum_name,
    parse_duration,  # noqa: F401
    parse_enum,
    parse_protocol,
    parse_time,
    protocol_name,
    to_timestamp,
)
from flowlog.v1 import flow_log_pb2, log_store_pb2, record_pb2, resource_pb2, types_pb2


def format_time(value: Timestamp | datetime | None) -> str:
    """UTC ISO form, `2024-05-01T12:00:00Z`; unset -> ``.

    Exact: the fraction is printed when present, with as few digit groups as it needs
    (.250, .250001, .250000001), so a printed time can be passed back (e.g. as --start with
    a page token) and mean the same instant.
    """
    if value is None:
        return ""
    if isinstance(value, Timestamp):
        if value.seconds == 0 and value.nanos == 0:
            return ""
        seconds, nanos = value.seconds, value.nanos
    else:
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        seconds = int(dt.timestamp() // 1)
        nanos = dt.microsecond * 1000
    base = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return base + "Z"
    if nanos % 1_000_000 == 0:
        return f"{base}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{base}.{nanos // 1000:06d}Z"
    return f"{base}.{nanos:09d}Z"


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def display_width(text: str) -> int:
    """Terminal cells: wide/full-width characters (CJK) take two, combining marks none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _pad(text: str, width: int, align: str) -> str:
    gap = max(0, width - display_width(text))
    return " " * gap + text if align == "right" else text + " " * gap


def _clean(value: Any) -> str:
    """One cell is one line: newlines and tabs in descriptions must not break the grid."""
    return re.sub(r"[\r\n\t]+", " ", "" if value is None else str(value))


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    align: Sequence[str] | None = None,
    gap: str = "  ",
) -> str:
    """Plain columns sized to their widest cell; `align[i]` is "left" (default) or "right".

    Trailing spaces are stripped so output diffs and pastes cleanly. Ends with a newline.
    """
    cells = [[_clean(c) for c in row] for row in rows]
    aligns = list(align) if align else ["left"] * len(headers)
    widths = [display_width(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], display_width(cell))
    lines = [gap.join(_pad(h, widths[i], aligns[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append(gap.join(_pad(c, widths[i], aligns[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines) + "\n"


def render_fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """A single object as `label:  value` lines, labels aligned; empty values are kept so
    the shape of every object of a type is the same. An empty label continues the previous
    field on another line (a list such as security rules)."""
    width = max((display_width(label) for label, _ in pairs), default=0) + 1
    lines = [
        (_pad(label + ":" if label else "", width, "left") + "  " + _clean(value)).rstrip() for label, value in pairs
    ]
    return "\n".join(lines) + "\n"


class StreamTable:
    """A table printed row by row while records stream in, so output starts immediately.

    Column widths start at a sensible minimum and only grow, so an unusually long value
    (an IPv6 address) shifts later rows instead of buffering the whole stream.
    """

    def __init__(
        self, out: TextIO, headers: Sequence[str], min_widths: Sequence[int], align: Sequence[str], gap: str = "  "
    ):
        self._out = out
        self._headers = list(headers)
        self._widths = [max(w, display_width(h)) for w, h in zip(min_widths, headers)]
        self._align = list(align)
        self._gap = gap
        self._header_done = False
        self.rows = 0

    def _line(self, cells: Sequence[str]) -> str:
        return self._gap.join(_pad(c, self._widths[i], self._align[i]) for i, c in enumerate(cells)).rstrip()

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Writes rows (and the header before the first one) and flushes, once per batch."""
        cells = [[_clean(c) for c in row] for row in rows]
        if not cells:
            return
        if not self._header_done:
            for row in cells:
                for i, cell in enumerate(row):
                    self._widths[i] = max(self._widths[i], display_width(cell))
            self._out.write(self._line(self._headers) + "\n")
            self._header_done = True
        for row in cells:
            for i, cell in enumerate(row):
                self._widths[i] = max(self._widths[i], display_width(cell))
            self._out.write(self._line(row) + "\n")
            self.rows += 1
        self._out.flush()


# --------------------------------------------------------------------------------------------
# Views of the API's messages
# --------------------------------------------------------------------------------------------


def _join(values: Iterable[str]) -> str:
    return ",".join(values)


def rule_text(rule: resource_pb2.SecurityRule) -> str:
    """`100 ingress ACCEPT tcp 0.0.0.0/0 22-22 SECURITY_GROUP sg-ssh`: one rule, the same words
    as --rule, then its kind and id when it has them."""
    ports = "any" if rule.port_from == 0 and rule.port_to == 0 else f"{rule.port_from}-{rule.port_to}"
    proto = "any" if rule.protocol == 0 else protocol_name(rule.protocol)
    words = [
        str(rule.priority),
        enum_name(types_pb2.Direction, rule.direction) or "any",
        enum_name(types_pb2.Action, rule.action) or "-",
        proto,
        rule.peer_cidr or "any",
        ports,
    ]
    if rule.kind:
        words.append(enum_name(types_pb2.RuleKind, rule.kind))
    if rule.id:
        words.append(rule.id)
    return " ".join(words)


# How a record's rule_kind reads in a table (short: the column is narrow).
_RULE_KIND_SHORT = {
    types_pb2.RULE_KIND_ACL: "ACL",
    types_pb2.RULE_KIND_SECURITY_GROUP: "SG",
    types_pb2.RULE_KIND_DEFAULT: "DEFAULT",
}


def record_rule(r: record_pb2.FlowRecord) -> str:
    """`ACL acl-bastion-no-http`, `SG sg-web-https`, `DEFAULT default-deny`: which rule decided
    the record's action ("-" when the record does not say, e.g. from a collector)."""
    kind = _RULE_KIND_SHORT.get(r.rule_kind, "")
    text = " ".join(x for x in (kind, r.rule_id) if x)
    return text or "-"


RESOURCE_HEADERS = ["ID", "TYPE", "REGION", "NETWORK", "NAME", "ADDRESSES", "RULES", "CREATED"]


def resource_row(r: resource_pb2.Resource) -> list[str]:
    return [
        r.id,
        enum_name(types_pb2.ResourceType, r.type),
        r.region,
        r.network_id,
        r.name,
        _join(r.addresses),
        str(len(r.rules)),
        format_time(r.create_time),
    ]


def resource_fields(r: resource_pb2.Resource) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("id", r.id),
        ("type", enum_name(types_pb2.ResourceType, r.type)),
        ("region", r.region),
        ("network_id", r.network_id),
        ("name", r.name),
        ("addresses", _join(r.addresses)),
        ("create_time", format_time(r.create_time)),
    ]
    if not r.rules:
        pairs.append(("rules", ""))
    # In evaluation order: ACL rules first, then security-group rules, each by priority.
    for i, rule in enumerate(sorted(r.rules, key=lambda x: (x.kind != types_pb2.RULE_KIND_ACL, x.priority))):
        pairs.append(("rules" if i == 0 else "", rule_text(rule)))
    return pairs


LOG_STORE_HEADERS = ["REGION", "PROJECT", "NAME", "RETENTION_DAYS", "DESCRIPTION", "CREATED"]
LOG_STORE_ALIGN = ["left", "left", "left", "right", "left", "left"]


def log_store_row(s: log_store_pb2.LogStore) -> list[str]:
    return [s.region, s.project, s.name, str(s.retention_days), s.description, format_time(s.create_time)]


def log_store_fields(s: log_store_pb2.LogStore) -> list[tuple[str, Any]]:
    return [
        ("region", s.region),
        ("project", s.project),
        ("name", s.name),
        ("retention_days", s.retention_days),
        ("description", s.description),
        ("create_time", format_time(s.create_time)),
        ("update_time", format_time(s.update_time)),
    ]


FLOW_LOG_HEADERS = ["ID", "REGION", "NAME", "RESOURCE", "NETWORK", "TRAFFIC", "DESTINATION", "STATE", "CREATED"]


def _destination(f: flow_log_pb2.FlowLog) -> str:
    d = f.destination
    return f"{d.project}/{d.log_store}" if (d.project or d.log_store) else ""


def flow_log_row(f: flow_log_pb2.FlowLog) -> list[str]:
    kind = enum_name(types_pb2.ResourceType, f.resource_type)
    return [
        f.id,
        f.region,
        f.name,
        f"{kind}:{f.resource_id}" if kind else f.resource_id,
        f.network_id,
        enum_name(types_pb2.TrafficType, f.traffic_type),
        _destination(f),
        enum_name(types_pb2.FlowLogState, f.state),
        format_time(f.create_time),
    ]


def flow_log_fields(f: flow_log_pb2.FlowLog) -> list[tuple[str, Any]]:
    return [
        ("id", f.id),
        ("region", f.region),
        ("name", f.name),
        ("resource_type", enum_name(types_pb2.ResourceType, f.resource_type)),
        ("resource_id", f.resource_id),
        ("network_id", f.network_id),
        ("traffic_type", enum_name(types_pb2.TrafficType, f.traffic_type)),
        ("destination", _destination(f)),
        ("description", f.description),
        ("state", enum_name(types_pb2.FlowLogState, f.state)),
        ("create_time", format_time(f.create_time)),
        ("update_time", format_time(f.update_time)),
    ]


RECORD_HEADERS = ["TIME", "SRC", "DST", "SPORT", "DPORT", "PROTO", "PACKETS", "BYTES", "ACTION", "RULE", "LOG_STORE"]
RECORD_ALIGN = ["left", "left", "left", "right", "right", "left", "right", "right", "left", "left", "left"]
# Sized for IPv4 so the common case lines up from the first row; IPv6 grows the column.
RECORD_MIN_WIDTHS = [20, 15, 15, 5, 5, 5, 7, 8, 6, 16, 9]


def record_row(r: record_pb2.FlowRecord) -> list[str]:
    """One record as a table row. A NODATA/SKIPDATA record carries no traffic, so its
    ACTION column shows the log status instead of an empty cell."""
    action = enum_name(types_pb2.Action, r.action)
    if r.log_status not in (types_pb2.LOG_STATUS_UNSPECIFIED, types_pb2.LOG_STATUS_OK):
        action = enum_name(types_pb2.LogStatus, r.log_status)
    return [
        format_time(r.start_time),
        r.src_addr or "-",
        r.dst_addr or "-",
        str(r.src_port),
        str(r.dst_port),
        protocol_name(r.protocol),
        f"{r.packets:,}",
        f"{r.bytes:,}",
        action or "-",
        record_rule(r),
        r.log_store,
    ]


def record_table(out: TextIO) -> StreamTable:
    return StreamTable(out, RECORD_HEADERS, RECORD_MIN_WIDTHS, RECORD_ALIGN)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def to_dict(message: Message) -> dict[str, Any]:
    """The proto JSON mapping, tuned for people and jq:

    - proto field names (`src_addr`, not `srcAddr`), in declaration order;
    - zero values included, so every object of a type has the same keys;
    - 64-bit counters (packets, bytes) as JSON numbers where exact, not strings;
    - enum names in their proto form (`ACTION_ACCEPT`), so output parses back with
      json_format: `flowlog query --json` output is valid `flowlog ingest` input.
    """
    data = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return _in_field_order(message, data)


def _in_field_order(message: Message, data: dict[str, Any]) -> dict[str, Any]:
    """MessageToDict lists set fields before defaulted ones; declaration order reads better.
    Well-known types (Timestamp, FieldMask...) are already scalars here and pass through."""
    ordered: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        sub = field.message_type
        if sub is not None and isinstance(value, dict) and not sub.GetOptions().map_entry:
            value = _in_field_order(getattr(message, field.name), value)
        elif sub is not None and isinstance(value, list) and field.is_repeated:
            items = getattr(message, field.name)
            value = [_in_field_order(m, v) if isinstance(v, dict) else v for m, v in zip(items, value)]
        ordered[field.name] = value
    for key, value in data.items():  # anything else (extensions): keep, at the end
        ordered.setdefault(key, value)
    return ordered


def to_json(value: Message | Sequence[Message] | dict[str, Any] | list[Any]) -> str:
    """One indented JSON document for one object or a whole list."""
    if isinstance(value, Message):
        data: Any = to_dict(value)
    elif isinstance(value, (list, tuple)):
        data = [to_dict(v) if isinstance(v, Message) else v for v in value]
    else:
        data = value
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def to_json_line(message: Message) -> str:
    """One compact line per message, for streams (JSON lines)."""
    return json.dumps(to_dict(message), ensure_ascii=False, separators=(",", ":")) + "\n"


_RECORD_ENUMS: dict[str, Any] = {
    "resource_type": types_pb2.ResourceType,
    "resourceType": types_pb2.ResourceType,
    "action": types_pb2.Action,
    "log_status": types_pb2.LogStatus,
    "logStatus": types_pb2.LogStatus,
    "direction": types_pb2.Direction,
    "rule_kind": types_pb2.RuleKind,
    "ruleKind": types_pb2.RuleKind,
}


def parse_record_json(line: str) -> record_pb2.FlowRecord:
    """One JSON-lines row -> FlowRecord.

    The proto JSON form (what `--json` prints) parses as is; beyond it, enums may use the
    friendly names (`"action": "REJECT"`, `"resource_type": "eip"`) and `protocol` a name
    (`"tcp"`), as hand-written or converted files tend to. Unknown fields are errors: a
    misspelt field silently dropped would be a silently wrong record. Raises ValueError
    with a one-line message.
    """
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    for key, enum_type in _RECORD_ENUMS.items():
        value = data.get(key)
        if isinstance(value, str) and not value.isdigit():
            data[key] = enum_type.Name(parse_enum(enum_type, value, allow_unspecified=True))
    if isinstance(data.get("protocol"), str) and not data["protocol"].isdigit():
        data["protocol"] = parse_protocol(data["protocol"])
    record = record_pb2.FlowRecord()
    try:
        json_format.ParseDict(data, record)
    except json_format.ParseError as e:
        raise ValueError(str(e).splitlines()[0]) from None
    return record


# --------------------------------------------------------------------------------------------
# Aggregate answers (flowlog aggregate / flowlog top)
# --------------------------------------------------------------------------------------------

SPARK = "▁▂▃▄▅▆▇█"
_TIME_METRICS = ("min(start_time)", "max(end_time)")


def human_bytes(n: int) -> str:
    """1536 -> `1.5 KiB`; exact below 1 KiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def sparkline(values: Sequence[float]) -> str:
    """One block character per value, scaled to the largest (zero is the lowest block)."""
    top = max(values, default=0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values)


def _ms_time(ms: int) -> str:
    return format_time(datetime.fromtimestamp(ms / 1000, timezone.utc))


def key_cell(group: str, key: str) -> str:
    """A group key for people: protocol numbers get their name, NODATA addresses say so."""
    field = group.split("/", 1)[0]
    if field == "protocol" and key.isdigit():
        name = protocol_name(int(key))
        return name if name == key else f"{key} ({name})"
    if field in ("src_addr", "dst_addr") and key == "":
        return "(no address)"
    return key


def metric_cell(metric: str, value: int) -> str:
    if metric in _TIME_METRICS:
        return _ms_time(value) if value else ""
    if metric == "sum(bytes)":
        return human_bytes(value)
    return f"{value:,}"


def aggregate_table(resp: Any, *, extra: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """An AggregateResponse as a table: bucket (with an interval), keys, metrics, and the
    `other` row last. `extra`: more columns (header, one cell per row)."""
    bucketed = any(r.HasField("bucket_start") for r in resp.rows)
    headers = (["bucket"] if bucketed else []) + list(resp.group_by) + list(resp.metrics) + [h for h, _ in extra]
    align = (["left"] if bucketed else []) + ["left"] * len(resp.group_by) + ["right"] * len(resp.metrics)
    align += ["left"] * len(extra)
    rows = []
    for i, r in enumerate(resp.rows):
        cells = [format_time(r.bucket_start)] if bucketed else []
        cells += [key_cell(g, k) for g, k in zip(resp.group_by, r.keys)]
        cells += [metric_cell(m, v) for m, v in zip(resp.metrics, r.values)]
        cells += [col[i] for _, col in extra]
        rows.append(cells)
    if resp.HasField("other"):
        # (with no group_by there is one group per bucket: never an `other`)
        cells = ([""] if bucketed else []) + ["(other)"] + [""] * (len(resp.group_by) - 1)
        cells += [
            "" if m.startswith("count_distinct") else metric_cell(m, v) for m, v in zip(resp.metrics, resp.other.values)
        ]
        cells += [""] * len(extra)
        rows.append(cells)
    return render_table(headers, rows, align=align)


def aggregate_footer(resp: Any) -> str:
    note = f"{resp.matched:,} records matched"
    if resp.HasField("other"):
        bucketed = any(r.HasField("bucket_start") for r in resp.rows)
        note += (
            "; (other) folds the groups past the limit of each bucket"
            if bucketed
            else f"; (other) folds the groups past the top {len(resp.rows)}"
        )
    if resp.approximate:
        note += "; APPROXIMATE: the backend could not compute every value exactly"
    return note + "\n"


def timeline_chart(resp: Any, start_ms: int, end_ms: int, interval_ms: int) -> str:
    """One sparkline per key (action) over every bucket of the range, empty buckets as zero."""
    first = start_ms - start_ms % interval_ms
    n = max(1, (end_ms - 1 - first) // interval_ms + 1)
    series: dict[str, list[int]] = {}
    for r in resp.rows:
        key = r.keys[0] if r.keys else "all"
        i = (r.bucket_start.seconds * 1000 + r.bucket_start.nanos // 1_000_000 - first) // interval_ms
        if 0 <= i < n:
            series.setdefault(key, [0] * n)[i] += r.values[0]
    metric = resp.metrics[0] if resp.metrics else ""
    show = human_bytes if metric == "sum(bytes)" else (lambda v: f"{v:,}")
    lines = [
        f"{_ms_time(first)} .. {_ms_time(first + n * interval_ms)}, one character per "
        f"{format_duration(interval_ms)}, {metric}"
    ]
    width = max((len(k) for k, values in series.items() if any(values) or len(series) == 1), default=0)
    for key in sorted(series):
        values = series[key]
        if not any(values) and len(series) > 1:
            continue  # e.g. NODATA rows (no action) under sum(bytes): nothing to draw
        peak = max(range(n), key=lambda j: values[j])
        line = sparkline(values)  # each line scaled to its own peak (printed after it)
        lines.append(
            f"{key:<{width}}  {line}  total {show(sum(values))}, peak {show(values[peak])} at "
            f"{_ms_time(first + peak * interval_ms)}"
        )
    if not series:
        lines.append("(no records)")
    return "\n".join(lines) + "\n"


def format_duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# --------------------------------------------------------------------------------------------
# Terminal safety
# --------------------------------------------------------------------------------------------

# Characters a terminal acts on instead of showing: C0 controls but the newline, DEL, C1
# controls (ESC sequences: colours, cursor moves, window titles, OSC 8 links) and the Unicode
# bidirectional overrides and isolates, which reorder what is shown ("Trojan Source").
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str, *, json_style: bool = False) -> str:
    """`text` with every character a terminal would act on written as an escape: `\\x1b` (or
    `\\u001b` where the text is JSON, which stays valid JSON: such characters only ever occur
    inside its strings). Tabs are escaped too: data never lays out our columns."""

    def esc(m: re.Match[str]) -> str:
        c = ord(m.group())
        if json_style or c > 0xFF:
            return f"\\u{c:04x}"
        return f"\\x{c:02x}"

    return _UNSAFE.sub(esc, text)


class SafeWriter:
    """A text stream that escapes what escape_controls escapes in everything written through
    it. The CLI writes all it prints (tables, fields, JSON, errors) through one, so no record,
    resource name or server message can drive the user's terminal."""

    def __init__(self, stream: TextIO, *, json_style: bool = False) -> None:
        self._stream = stream
        self.json_style = json_style

    def write(self, text: str) -> int:
        return self._stream.write(escape_controls(text, json_style=self.json_style))

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
