"""AWS VPC Flow Logs -> FlowRecords: text lines (default v2 or any custom format) and Parquet rows.

Text files delivered to S3 start with a header line naming their fields (`version account-id
interface-id srcaddr ...`), in the order of the flow log's format; the same names, with `_`
for `-`, are the columns of AWS's Parquet files. A file without a header (e.g. lines exported
from CloudWatch Logs) must be in the default format. A header may also appear mid-stream (files
concatenated on standard input): from there on, lines follow it.

What maps where (everything else AWS writes is read and skipped, see SKIPPED_FIELDS):
  srcaddr/dstaddr -> src_addr/dst_addr      srcport/dstport -> src_port/dst_port
  protocol -> protocol                      packets/bytes -> packets/bytes
  start/end (epoch seconds) -> start_time/end_time
  action ACCEPT|REJECT -> ACTION_*          log-status OK|NODATA|SKIPDATA -> LOG_STATUS_*
  tcp-flags -> tcp_flags                    flow-direction ingress|egress -> DIRECTION_*
`-` is an absent value: 0 for numbers, empty for addresses, unspecified for enums. Without a
flow-direction field (the default format) direction stays DIRECTION_UNSPECIFIED and the server
derives it from the resource's addresses. NODATA and SKIPDATA lines have no addresses, ports or
counters: they become records with only times and log_status.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from clients.importers import Items, LineError
from flowlog.v1 import record_pb2, types_pb2

DEFAULT_FIELDS: tuple[str, ...] = (
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
)

# The fields flowlog stores, AWS name -> FlowRecord field.
MODELED_FIELDS: dict[str, str] = {
    "srcaddr": "src_addr",
    "dstaddr": "dst_addr",
    "srcport": "src_port",
    "dstport": "dst_port",
    "protocol": "protocol",
    "packets": "packets",
    "bytes": "bytes",
    "start": "start_time",
    "end": "end_time",
    "action": "action",
    "log-status": "log_status",
    "tcp-flags": "tcp_flags",
    "flow-direction": "direction",
}

# Fields AWS documents that flowlog reads past: the account, region, VPC, subnet, interface and
# resource come from the flow log the records are imported into; the rest has no FlowRecord
# field. Names not listed here are skipped too (AWS adds fields over time); the list only helps
# tell a header line from a data line and documents the mapping.
SKIPPED_FIELDS: frozenset[str] = frozenset(
    (
        "version",
        "account-id",
        "interface-id",
        "vpc-id",
        "subnet-id",
        "instance-id",
        "type",
        "pkt-srcaddr",
        "pkt-dstaddr",
        "region",
        "az-id",
        "sublocation-type",
        "sublocation-id",
        "pkt-src-aws-service",
        "pkt-dst-aws-service",
        "traffic-path",
        "ecs-cluster-arn",
        "ecs-cluster-name",
        "ecs-container-instance-arn",
        "ecs-container-instance-id",
        "ecs-container-id",
        "ecs-second-container-id",
        "ecs-service-name",
        "ecs-task-definition-arn",
        "ecs-task-arn",
        "ecs-task-id",
        "reject-reason",
        "resource-id",
        "encryption-status",
    )
)
KNOWN_FIELDS = frozenset(MODELED_FIELDS) | SKIPPED_FIELDS
REQUIRED_FIELDS = ("start", "end")

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_ACTIONS = {"ACCEPT": types_pb2.ACTION_ACCEPT, "REJECT": types_pb2.ACTION_REJECT}
_STATUSES = {
    "OK": types_pb2.LOG_STATUS_OK,
    "NODATA": types_pb2.LOG_STATUS_NODATA,
    "SKIPDATA": types_pb2.LOG_STATUS_SKIPDATA,
}
_DIRECTIONS = {"ingress": types_pb2.DIRECTION_INGRESS, "egress": types_pb2.DIRECTION_EGRESS}
_FlowRecord = record_pb2.FlowRecord


def field_name(text: str) -> str:
    """A header token or Parquet column as AWS's documented name: `log_status` and
    `${log-status}` -> `log-status`."""
    name = text.strip()
    if name.startswith("${") and name.endswith("}"):
        name = name[2:-1]
    return name.lower().replace("_", "-")


def header_fields(tokens: Sequence[str]) -> list[str] | None:
    """The field names when `tokens` is a header line, else None (a data line).

    A header is made of field-name-shaped words, at least one of them a field AWS documents;
    data lines always hold something else (numbers, addresses, `-`, upper-case ACCEPT/OK).
    """
    names = [field_name(t) for t in tokens]
    if not names or not all(_NAME.match(n) for n in names):
        return None
    return names if any(n in KNOWN_FIELDS for n in names) else None


class RecordFormat:
    """Where each stored field sits in a row of one format (a header line or Parquet schema)."""

    def __init__(self, fields: Sequence[str], origin: str) -> None:
        self.fields = list(fields)
        self.origin = origin  # "the header (line 1)", "the default format", "the Parquet schema"
        index: dict[str, int] = {}
        for i, name in enumerate(self.fields):
            index.setdefault(name, i)
        self.index = index
        self.missing = [f for f in REQUIRED_FIELDS if f not in index]
        self.build = _builder(index)
        self.build_fast = _fast_builder(index)


def _fast_builder(index: dict[str, int]) -> Callable[[Sequence[str]], _FlowRecord]:
    """A row -> FlowRecord function for the common line of one format (every value present and
    well formed, log-status OK), compiled from source once per format: one constructor call with
    the values at fixed positions, no per-field function calls. It raises (ValueError, KeyError)
    on anything else, and the line then goes through the careful builder, which says what is
    wrong or handles `-` values. 3-4 times faster than the careful builder on AWS's lines."""
    args = []
    checks = []
    for aws_name, target in (("srcaddr", "src_addr"), ("dstaddr", "dst_addr")):
        if aws_name in index:
            args.append(f"{target}=row[{index[aws_name]}]")
            checks.append(f"row[{index[aws_name]}] == '-'")
    for aws_name, target in (
        ("srcport", "src_port"),
        ("dstport", "dst_port"),
        ("protocol", "protocol"),
        ("packets", "packets"),
        ("bytes", "bytes"),
        ("tcp-flags", "tcp_flags"),
    ):
        if aws_name in index:
            args.append(f"{target}=int(row[{index[aws_name]}])")
    if "action" in index:
        args.append(f"action=ACTIONS[row[{index['action']}]]")
    if "flow-direction" in index:
        args.append(f"direction=DIRECTIONS[row[{index['flow-direction']}]]")
    status = f"OK_ONLY[row[{index['log-status']}]]" if "log-status" in index else "OK"
    args.append(f"log_status={status}")
    for aws_name, target in (("start", "start_time"), ("end", "end_time")):
        if aws_name in index:
            args.append(f"{target}={{'seconds': int(row[{index[aws_name]}])}}")
    source = "def build(row):\n"
    if checks:
        source += f"    if {' or '.join(checks)}:\n        raise ValueError\n"
    source += f"    return FlowRecord({', '.join(args)})\n"
    namespace: dict[str, Any] = {
        "FlowRecord": _FlowRecord,
        "ACTIONS": _ACTIONS,
        "DIRECTIONS": _DIRECTIONS,
        "OK_ONLY": {"OK": types_pb2.LOG_STATUS_OK},
        "OK": types_pb2.LOG_STATUS_OK,
    }
    exec(compile(source, f"<aws fast builder {sorted(index)}>", "exec"), namespace)  # noqa: S102 - our own text
    return namespace["build"]


def _absent(value: Any) -> bool:
    return value is None or value == "-" or value == ""


def _builder(index: dict[str, int]) -> Callable[[Sequence[Any]], _FlowRecord]:
    """A function row -> FlowRecord for one layout; raises _Bad naming the field at fault."""
    get = index.get
    i_src, i_dst, i_sport, i_dport = get("srcaddr"), get("dstaddr"), get("srcport"), get("dstport")
    i_proto, i_pkts, i_bytes = get("protocol"), get("packets"), get("bytes")
    i_start, i_end, i_action, i_status = get("start"), get("end"), get("action"), get("log-status")
    i_flags, i_dir = get("tcp-flags"), get("flow-direction")
    ints = [
        (name, i)
        for name, i in (
            ("srcport", i_sport),
            ("dstport", i_dport),
            ("protocol", i_proto),
            ("packets", i_pkts),
            ("bytes", i_bytes),
            ("tcp-flags", i_flags),
        )
        if i is not None
    ]
    targets = {
        "srcport": "src_port",
        "dstport": "dst_port",
        "protocol": "protocol",
        "packets": "packets",
        "bytes": "bytes",
        "tcp-flags": "tcp_flags",
    }

    def build(row: Sequence[Any]) -> _FlowRecord:
        kwargs: dict[str, Any] = {}
        for name, i in ints:
            value = row[i]
            if not _absent(value):
                kwargs[targets[name]] = _whole(name, value)
        status: int = types_pb2.LOG_STATUS_OK
        if i_status is not None and not _absent(row[i_status]):
            status = _enum("log-status", row[i_status], _STATUSES)
        kwargs["log_status"] = status
        if i_action is not None and not _absent(row[i_action]):
            kwargs["action"] = _enum("action", row[i_action], _ACTIONS)
        if i_dir is not None and not _absent(row[i_dir]):
            kwargs["direction"] = _enum("flow-direction", row[i_dir], _DIRECTIONS)
        if i_src is not None and not _absent(row[i_src]):
            kwargs["src_addr"] = str(row[i_src])
        if i_dst is not None and not _absent(row[i_dst]):
            kwargs["dst_addr"] = str(row[i_dst])
        start = _seconds("start", row[i_start]) if i_start is not None else 0
        end = _seconds("end", row[i_end]) if i_end is not None else 0
        return _FlowRecord(start_time=Timestamp(seconds=start), end_time=Timestamp(seconds=end), **kwargs)

    return build


class _Bad(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _whole(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _Bad(name, f"{str(value)[:40]!r} is not a whole number") from None
    if number < 0:
        raise _Bad(name, f"{number} is negative")
    if number > 2**64 - 1:
        raise _Bad(name, f"{number} is too large")
    return number


def _seconds(name: str, value: Any) -> int:
    if _absent(value):
        raise _Bad(name, "is required (epoch seconds); the line has '-'")
    number = _whole(name, value)
    if number > 2**40:
        raise _Bad(name, f"{number} is not epoch seconds")
    return number


def _enum(name: str, value: Any, choices: Mapping[str, int]) -> int:
    key = str(value)
    number = choices.get(key)
    if number is None:
        number = choices.get(key.upper()) or choices.get(key.lower())
    if number is None:
        raise _Bad(name, f"{str(value)[:40]!r} is not one of {', '.join(choices)}")
    return number


def parse_lines(lines: Iterable[str], source: str, fields: Sequence[str] | None = None) -> Items:
    """Text lines of one file (or stream) -> items; see the package docstring. `fields` is the
    format of lines before any header line (a custom format exported without its header, as
    CloudWatch Logs does); without it such lines must be in the default format."""
    fmt: RecordFormat | None = RecordFormat([field_name(f) for f in fields], "--aws-fields") if fields else None
    default: RecordFormat | None = None
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        if fmt is None or not _is_data(tokens):
            names = header_fields(tokens)
            if names is not None:
                fmt = RecordFormat(names, f"the header (line {number})")
                continue
            if fmt is None:
                default = default or RecordFormat(DEFAULT_FIELDS, "the default format")
                if len(tokens) != len(DEFAULT_FIELDS):
                    yield LineError(
                        source,
                        number,
                        f"has {len(tokens)} fields and the file has no header line: "
                        f"without one, lines must be in the default format "
                        f"({len(DEFAULT_FIELDS)} fields)",
                    )
                    continue
                fmt = default
        yield _row_item(fmt, tokens, source, number)


def _is_data(tokens: Sequence[str]) -> bool:
    """Cheap test used once a format is known: a data line starts with a value, not a name.

    Header detection is costly, so it runs only when the first token could be a field name."""
    first = tokens[0]
    return not (first[:1].isalpha() and first[:1].islower() and header_fields(tokens) is not None)


def _row_item(fmt: RecordFormat, row: Sequence[Any], source: str, number: int) -> Any:
    if fmt.missing:
        return LineError(
            source,
            number,
            f"{fmt.origin} has no {' or '.join(fmt.missing)} field: flowlog needs "
            "each record's start and end (epoch seconds)",
        )
    if len(row) != len(fmt.fields):
        return LineError(source, number, f"has {len(row)} fields, {fmt.origin} names {len(fmt.fields)}")
    try:
        return number, fmt.build_fast(row)
    except (ValueError, KeyError, TypeError):
        pass  # a `-`, a NODATA line, or a real problem: the careful builder says which
    try:
        return number, fmt.build(row)
    except _Bad as e:
        return LineError(source, number, e.reason, e.field)
    except ValueError as e:  # protobuf's own range checks
        return LineError(source, number, str(e))


def parse_parquet(file: Any, source: str, batch_rows: int = 8192) -> Items:
    """Rows of an AWS Parquet flow-log file (a path or binary file object) -> items, with the
    1-based row number in place of a line number. Reads a batch of rows at a time."""
    import pyarrow.parquet as pq  # only Parquet users pay for the import

    try:
        parquet = pq.ParquetFile(file)
        columns = parquet.schema_arrow.names
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError/...: the file is not usable at all
        yield LineError(source, 0, f"not a readable Parquet file: {e}")
        return
    wanted = [c for c in columns if field_name(c) in MODELED_FIELDS]
    fmt = RecordFormat([field_name(c) for c in wanted], "the Parquet schema")
    if fmt.missing:
        yield LineError(source, 0, f"the Parquet schema has no {' or '.join(fmt.missing)} column")
        return
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
            for row in zip(*(column.to_pylist() for column in batch.columns)):
                number += 1
                yield _row_item(fmt, row, source, number)
    except Exception as e:
        yield LineError(source, number + 1, f"cannot read further: {e}")
