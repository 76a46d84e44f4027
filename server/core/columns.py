"""Flow records as one Arrow table: the form the query store and the archive both write.

Ingest spools records a batch at a time, and both the embedded query store (DuckDB) and the
archive (Parquet) want them as columns. Turning rows into Arrow arrays is most of what those
writes cost in Python, so the spool makes the table once per batch, from the columns it already
builds for its own encoding, and both sinks write that same table (concatenated per write):
one conversion instead of one per sink, and no transposing rows back into columns.

The schema is FlowRecord's, field for field and in its order, with the narrowest Arrow type that
holds every value the domain allows (ports, enums and flags in int32, counters in uint64, times
as epoch milliseconds in int64). pyarrow is a data-layout library: nothing here does I/O.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from server.core.model import RECORD_FIELDS, FlowRecord, record_columns

_TYPES: dict[str, pa.DataType] = {
    "record_id": pa.string(),
    "version": pa.int32(),
    "account_id": pa.string(),
    "flow_log_id": pa.string(),
    "region": pa.string(),
    "project": pa.string(),
    "log_store": pa.string(),
    "resource_type": pa.int32(),
    "resource_id": pa.string(),
    "network_id": pa.string(),
    "src_addr": pa.string(),
    "dst_addr": pa.string(),
    "src_port": pa.int32(),
    "dst_port": pa.int32(),
    "protocol": pa.int32(),
    "packets": pa.uint64(),
    "bytes": pa.uint64(),
    "start_time": pa.int64(),
    "end_time": pa.int64(),
    "action": pa.int32(),
    "log_status": pa.int32(),
    "direction": pa.int32(),
    "tcp_flags": pa.int32(),
    "rule_id": pa.string(),
    "rule_kind": pa.int32(),
    "sampling_rate": pa.int32(),
}
SCHEMA = pa.schema([pa.field(name, _TYPES[name]) for name in RECORD_FIELDS])
assert tuple(SCHEMA.names) == RECORD_FIELDS, "SCHEMA must follow FlowRecord"


def _array(values: Sequence[object], typ: pa.DataType) -> pa.Array:
    # A column holding one value throughout (account, region, project, LogStore, flow log, ...:
    # constant within a batch of one flow log) is made from that value alone.
    first = values[0]
    if type(first) in (str, int) and values[-1] == first and values.count(first) == len(values):
        return pa.repeat(pa.scalar(first, typ), len(values))
    return pa.array(values, type=typ)


def table_of_columns(columns: Sequence[Sequence[object]]) -> pa.Table:
    """The table of records given column by column (one sequence per FlowRecord field, all of
    the same length). Raises ValueError naming the field for a value its type cannot hold (the
    pipeline only spools validated records; a port above 2**31 is legal in the proto, not here)."""
    if not columns[0]:
        return SCHEMA.empty_table()
    arrays = []
    for col, field in zip(columns, SCHEMA):
        try:
            arrays.append(_array(col, field.type))
        except (pa.ArrowException, OverflowError, TypeError) as e:
            raise ValueError(f"{field.name}: {e}") from e
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


# The FlowRecord fields whose values a batch of one flow log shares (version .. network_id), and the
# varying ones, in the order of table_of_buffers' buffers (after record_id, src_addr, dst_addr).
_SHARED = RECORD_FIELDS[1:10]
_FIXED_WIDTH = (
    "src_port",
    "dst_port",
    "protocol",
    "packets",
    "bytes",
    "start_time",
    "end_time",
    "action",
    "log_status",
    "direction",
    "tcp_flags",
)
_TRAILING = ("rule_kind", "sampling_rate")  # fixed-width buffers after rule_id's


def table_of_buffers(n: int, shared: Sequence[object], buffers: Sequence[bytes]) -> pa.Table:
    """The table of n records of one flow log given as Arrow buffers (the Ingest fast path,
    server/native/_fastingest.c, writes them): `shared` holds the values of version .. network_id,
    the same for every record; `buffers` the little-endian offsets and data of record_id,
    src_addr and dst_addr, then one buffer per fixed-width field src_port .. tcp_flags, then the
    offsets and data of rule_id, then rule_kind and sampling_rate."""
    if n == 0:
        return SCHEMA.empty_table()
    cols: dict[str, pa.Array] = {}
    strings = (("record_id", 0), ("src_addr", 2), ("dst_addr", 4), ("rule_id", 6 + len(_FIXED_WIDTH)))
    for name, k in strings:
        cols[name] = pa.Array.from_buffers(
            pa.string(), n, [None, pa.py_buffer(buffers[k]), pa.py_buffer(buffers[k + 1])]
        )
    nf = len(_FIXED_WIDTH)
    for name, buf in zip(_FIXED_WIDTH + _TRAILING, (*buffers[6 : 6 + nf], *buffers[8 + nf :])):
        cols[name] = pa.Array.from_buffers(_TYPES[name], n, [None, pa.py_buffer(buf)])
    for name, value in zip(_SHARED, shared):
        cols[name] = pa.repeat(pa.scalar(value, _TYPES[name]), n)
    return pa.Table.from_arrays([cols[name] for name in RECORD_FIELDS], schema=SCHEMA)


def table_of(records: Sequence[FlowRecord]) -> pa.Table:
    """The table of the records, in their order."""
    return table_of_columns(record_columns(records)) if records else SCHEMA.empty_table()


def concat(tables: Iterable[pa.Table]) -> pa.Table:
    """One table of several (no copy: the result holds each table's arrays as chunks)."""
    tables = list(tables)
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def without_repeats(table: pa.Table, keys: Sequence[str], keep: str = "first") -> pa.Table:
    """The table with one row per distinct value of `keys`: the first (or, keep="last", the
    last) row of each, in the table's order. Done by Arrow (group by, then take), for the batch
    that repeats records, e.g. a collector's retry landing in the same write as the original."""
    if table.num_rows < 2:
        return table
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', not {keep!r}")
    fn = "min" if keep == "first" else "max"
    positions = table.select(list(keys)).append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    chosen = positions.group_by(list(keys), use_threads=False).aggregate([("__row", fn)]).column(f"__row_{fn}")
    return table.take(pc.take(chosen, pc.array_sort_indices(chosen)))


def records_of(table: pa.Table) -> list[FlowRecord]:
    """The table back as FlowRecords (the slow direction: for the rare batch a store has to take
    record by record)."""
    make = FlowRecord._make
    return list(map(make, zip(*(table.column(name).to_pylist() for name in RECORD_FIELDS))))
