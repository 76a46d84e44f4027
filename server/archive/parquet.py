"""The archive's encoding: Parquet with zstd, one row group per object, rows sorted so that
neighbours share values; record_id is not stored but recomputed on read; objects written by an
older format read back with the newer columns' defaults (see server/archive/__init__.py).
"""

from __future__ import annotations

import io
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from server.archive.layout import HOUR_MS  # noqa: F401
from server.core.model import FlowRecord, LogStoreKey, record_columns
from server.core.records import record_id

# The columns stored in every object, in file order. Everything a FlowRecord has except
# record_id (derived) and the partition values (in the path).
SCHEMA = pa.schema(
    [
        pa.field("start_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("end_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("flow_log_id", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("version", pa.uint32(), nullable=False),
        pa.field("resource_type", pa.int32(), nullable=False),
        pa.field("resource_id", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("network_id", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("src_addr", pa.string()),  # null on NODATA rows ("" in the domain)
        pa.field("dst_addr", pa.string()),
        pa.field("src_port", pa.uint32(), nullable=False),
        pa.field("dst_port", pa.uint32(), nullable=False),
        pa.field("protocol", pa.uint32(), nullable=False),
        pa.field("packets", pa.uint64(), nullable=False),
        pa.field("bytes", pa.uint64(), nullable=False),
        pa.field("action", pa.int32(), nullable=False),
        pa.field("log_status", pa.int32(), nullable=False),
        pa.field("direction", pa.int32(), nullable=False),
        pa.field("tcp_flags", pa.uint32(), nullable=False),
        pa.field("rule_id", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("rule_kind", pa.int32(), nullable=False),
        pa.field("sampling_rate", pa.uint32(), nullable=False),
    ],
    metadata={"flowlog.archive.format": "2"},
)
_COLUMNS = tuple(SCHEMA.names)
# Columns added in format 2: objects written before them lack them, and read back with these
# values (FlowRecord's defaults). Every other column is required.
_ADDED_COLUMNS: dict[str, pa.Scalar] = {
    "rule_id": pa.scalar("", pa.string()),
    "rule_kind": pa.scalar(0, pa.int32()),
    "sampling_rate": pa.scalar(0, pa.uint32()),
}
_REQUIRED_COLUMNS = tuple(c for c in _COLUMNS if c not in _ADDED_COLUMNS)
_TIME_COLUMNS = ("start_time", "end_time")
_INT_COLUMNS = (
    "version",
    "resource_type",
    "src_port",
    "dst_port",
    "protocol",
    "packets",
    "bytes",
    "action",
    "log_status",
    "direction",
    "tcp_flags",
    "rule_kind",
    "sampling_rate",
)
_STR_COLUMNS = ("flow_log_id", "resource_id", "network_id", "rule_id")
_ADDR_COLUMNS = ("src_addr", "dst_addr")
_F = FlowRecord._fields
_IDX = {name: _F.index(name) for name in _COLUMNS}


_SORT_COLUMNS = (
    "start_time",
    "flow_log_id",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "direction",
    "end_time",
)


def _identity(r: FlowRecord) -> tuple:
    """The fields record_id hashes: two records with the same identity are the same record."""
    return (
        r.flow_log_id,
        r.src_addr,
        r.dst_addr,
        r.src_port,
        r.dst_port,
        r.protocol,
        r.direction,
        r.start_time,
        r.end_time,
    )


class CorruptObject(ValueError):
    """An object that is not a readable archive Parquet file (torn, foreign, wrong schema)."""


def encode(records: Sequence[FlowRecord]) -> bytes:
    """One Parquet object for records of one LogStore and hour. Raises ValueError (naming the
    field) when a value cannot be represented, e.g. a negative port."""
    by_field = record_columns(records)
    arrays: list[pa.Array] = []
    for field in SCHEMA:
        values = by_field[_IDX[field.name]]
        try:
            if field.name in _TIME_COLUMNS:
                arr = pa.array(values, pa.int64()).cast(field.type)
            elif field.name in _ADDR_COLUMNS:
                arr = pa.array([v or None for v in values], pa.string())
            elif field.name in _STR_COLUMNS:
                arr = pa.array(values, pa.string())
            else:
                arr = pa.array(values, field.type)
        except (pa.ArrowException, OverflowError, TypeError) as e:
            raise ValueError(f"archive cannot store {field.name}: {e}") from e
        arrays.append(arr)
    return _write_parquet(pa.Table.from_arrays(arrays, names=list(_COLUMNS)))


def encode_table(table: pa.Table) -> bytes:
    """encode() of records given as one Arrow table (server.core.columns.SCHEMA): the same bytes."""
    arrays: list[pa.Array] = []
    for field in SCHEMA:
        col = table.column(field.name)
        try:
            if field.name in _TIME_COLUMNS:
                arr = col.cast(field.type)
            elif field.name in _ADDR_COLUMNS:
                arr = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
            elif field.name in _STR_COLUMNS:
                arr = col
            else:
                arr = col.cast(field.type)
        except (pa.ArrowException, OverflowError, TypeError) as e:
            raise ValueError(f"archive cannot store {field.name}: {e}") from e
        arrays.append(arr)
    return _write_parquet(pa.Table.from_arrays(arrays, names=list(_COLUMNS)).combine_chunks())


def _write_parquet(table: pa.Table) -> bytes:
    # Sorted rows put equal values next to each other: that is what makes the columns compress.
    table = table.take(pc.sort_indices(table, sort_keys=[(c, "ascending") for c in _SORT_COLUMNS]))
    table = table.cast(SCHEMA)
    buf = io.BytesIO()
    # Delta encoding for the times (sorted start times, end times near them); dictionaries for
    # the rest, which Parquet drops by itself per column chunk when a column has too many values.
    pq.write_table(
        table,
        buf,
        compression="zstd",
        compression_level=3,
        use_dictionary=[c for c in _COLUMNS if c not in _TIME_COLUMNS],
        column_encoding={c: "DELTA_BINARY_PACKED" for c in _TIME_COLUMNS},
        row_group_size=max(len(table), 1),
        write_statistics=True,
    )
    return buf.getvalue()


def decode_table(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """The object's table; raises CorruptObject for anything that is not one of ours."""
    try:
        table = pq.read_table(io.BytesIO(data), columns=list(columns) if columns else None)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for torn files
        raise CorruptObject(f"not a readable Parquet file: {e}") from e
    wanted = columns or _COLUMNS
    missing = [c for c in wanted if c not in table.column_names and c not in _ADDED_COLUMNS]
    if missing:
        raise CorruptObject(f"missing columns {missing}")
    for name in wanted:  # an object written before the column existed: its default throughout
        if name not in table.column_names:
            table = table.append_column(name, pa.repeat(_ADDED_COLUMNS[name], table.num_rows))
    return table


def _start_filter(table: pa.Table, start_ms: int, end_ms: int) -> pa.Table:
    st = table.column("start_time").cast(pa.int64())
    mask = pc.and_(pc.greater_equal(st, start_ms), pc.less(st, end_ms))
    return table.filter(mask)


def _to_records(table: pa.Table, account_id: str, key: LogStoreKey) -> list[FlowRecord]:
    cols: dict[str, list] = {}
    for name in _COLUMNS:
        col = table.column(name)
        if name in _TIME_COLUMNS:
            col = col.cast(pa.int64())
        if name in _INT_COLUMNS or name in _TIME_COLUMNS:
            col = pc.fill_null(col, 0)
            cols[name] = col.to_pylist()
        else:
            cols[name] = [v or "" for v in col.to_pylist()]
    acc, region, project, store = account_id, key.region, key.project, key.name
    out: list[FlowRecord] = []
    append = out.append
    for st, et, fl, ver, rt, rid, net, src, dst, sp, dp, proto, pk, by, act, ls, dr, flags, rule, kind, sampling in zip(
        *(cols[c] for c in _COLUMNS)
    ):
        append(
            FlowRecord(
                record_id(fl, src, dst, sp, dp, proto, dr, st, et),
                ver,
                acc,
                fl,
                region,
                project,
                store,
                rt,
                rid,
                net,
                src,
                dst,
                sp,
                dp,
                proto,
                pk,
                by,
                st,
                et,
                act,
                ls,
                dr,
                flags,
                rule,
                kind,
                sampling,
            )
        )
    return out
