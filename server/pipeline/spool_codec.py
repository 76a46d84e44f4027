"""The spool's storage format: one batch of one LogStore's records as one blob (marshal'd value
columns, zstd), its encoders (from records, columns or the compiled Ingest path's marshalled
bytes) and decoders (to records, or straight to an Arrow table), and the batch types the rest of
the spool hands around. No SQLite, no threads: server/pipeline/spool.py stores these blobs.
"""

from __future__ import annotations

import logging
import marshal
import operator
from collections import abc
from typing import Any, NamedTuple, Sequence

from server.core.columns import table_of, table_of_columns
from server.core.model import FlowRecord, record_columns

log = logging.getLogger("server.pipeline.spool")

# Payload format (the first byte of every payload). 1: the 19 value columns of FlowRecord up to
# tcp_flags; 2: + rule_id, rule_kind, sampling_rate. Payloads of every format listed in
# _FORMAT_COLUMNS are read (a data dir spooled by an older server still drains after an upgrade);
# new payloads are written in FORMAT_VERSION.
FORMAT_VERSION = 2
_FORMAT = bytes([FORMAT_VERSION])
# Records of one LogStore per batch, at most this many (bigger appends are split): keeps reads,
# Tail chunks and archive ranges granular.
MAX_BATCH_RECORDS = 10_000
_MAX_IDLE_READERS = 8
# Batches deleted per trim transaction at most: appends wait behind it.
_TRIM_CHUNK = 200

# Positions in FlowRecord of the LogStore key: constant within a batch, so kept in the batch
# row instead of in every record of the blob.
_KEY_IDX = (
    FlowRecord._fields.index("account_id"),
    FlowRecord._fields.index("region"),
    FlowRecord._fields.index("project"),
    FlowRecord._fields.index("log_store"),
)
_VALUE_IDX = tuple(i for i in range(len(FlowRecord._fields)) if i not in _KEY_IDX)
_ENUM_IDX = tuple(
    FlowRecord._fields.index(f) for f in ("resource_type", "action", "log_status", "direction", "rule_kind")
)
# Value columns per payload format, and what the columns a format lacks hold (FlowRecord's defaults).
_FORMAT_COLUMNS = {1: 19, 2: len(_VALUE_IDX)}
_MISSING_DEFAULTS = tuple(FlowRecord._field_defaults[FlowRecord._fields[i]] for i in _VALUE_IDX[19:])
_key_of = operator.itemgetter(*_KEY_IDX)
_make = FlowRecord._make


class BatchKey(NamedTuple):
    """The LogStore a batch belongs to (one account's)."""

    account_id: str
    region: str
    project: str
    log_store: str


class SpoolBatch(NamedTuple):
    seq: int
    stored_ms: int
    key: BatchKey
    # Empty when the LogStore was dropped after the batch was spooled (skipped).
    records: Sequence[FlowRecord]
    nbytes: int
    skipped: bool = False
    # The same records as one Arrow table (server.core.columns), made at append when the spool
    # was asked to (Spool(tables=True)); None for batches read back from the file.
    table: object = None

    def arrow(self):
        """The records as one Arrow table: the one made at append, or from the payload's columns
        for a batch read back from the file (no FlowRecords made), or from the records."""
        if self.table is not None:
            return self.table
        if isinstance(self.records, StoredRecords):
            return self.records.table()
        return table_of(self.records)


class SpoolCorrupt(Exception):
    """A payload this version cannot read (unknown format byte)."""


# -- encoding ---------------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        return v
    return int(v) if isinstance(v, int) else str(v)


_codec_cache: list = []


def _zstd():
    """pyarrow's zstd codec, made on first use (importing pyarrow is not free)."""
    if not _codec_cache:
        import pyarrow as pa

        _codec_cache.append(pa.Codec("zstd", compression_level=1))
    return _codec_cache[0]


def encode(records: Sequence[FlowRecord]) -> bytes:
    """encode_columns() of the records."""
    return encode_columns(record_columns(records))


def encode_columns(cols: list[Any]) -> bytes:
    """The payload of records given column by column (record_columns()); the enum columns are
    replaced in `cols` by plain ints.

    Format byte, uint32 raw length, zstd(level 1) of marshal (version 2) of the value columns.

    Columnar because zip(*records) is one C call and it drops the LogStore columns for free.
    marshal version 2 (no back-references) is the fastest to write; marshal refuses int/str
    subclasses: the enum columns are always made plain ints (cheap), anything else odd takes a
    slower per-value path. zstd-1 costs ~0.2 ms per
    1,000 records and makes the blob ~5x smaller (~40 bytes/record instead of ~190): less to
    fsync, and the spool's byte bound holds 5x more backlog.
    """
    for i in _ENUM_IDX:  # IntEnum members (what the generator builds) -> plain ints, in C
        cols[i] = list(map(int, cols[i]))
    values = tuple(cols[i] for i in _VALUE_IDX)
    try:
        raw = marshal.dumps(values, 2)
    except ValueError:
        raw = marshal.dumps(tuple(tuple(map(_plain, c)) for c in values), 2)
    return encode_marshalled(raw)


def encode_marshalled(raw: bytes) -> bytes:
    """The payload of value columns already marshalled as encode_columns() does (the Ingest
    fast path writes them so: server/native/_fastingest.c)."""
    return _FORMAT + len(raw).to_bytes(4, "little") + _zstd().compress(raw, asbytes=True)


def _value_columns(data: bytes) -> tuple:
    fmt = data[0] if data else None
    if fmt not in _FORMAT_COLUMNS:
        raise SpoolCorrupt(f"spool payload format {data[:1]!r} is not one of {sorted(_FORMAT_COLUMNS)}")
    size = int.from_bytes(data[1:5], "little")
    raw = _zstd().decompress(memoryview(data)[5:], decompressed_size=size, asbytes=True)
    cols = marshal.loads(raw)
    if fmt != FORMAT_VERSION:  # an older payload: the columns it predates hold their defaults
        n = len(cols[0]) if cols else 0
        have = _FORMAT_COLUMNS[fmt]
        cols = tuple(cols) + tuple([d] * n for d in _MISSING_DEFAULTS[have - 19 :])
    return cols


def _all_columns(data: bytes, key: BatchKey) -> list[list]:
    """Every FlowRecord column of a payload: its value columns with the LogStore's put back."""
    cols = list(_value_columns(data))
    n = len(cols[0]) if cols else 0
    for pos, value in zip(_KEY_IDX, key):
        cols.insert(pos, [value] * n)
    return cols


def decode(data: bytes, key: BatchKey) -> list[FlowRecord]:
    cols = _all_columns(data, key)
    return list(map(_make, zip(*cols))) if cols and cols[0] else []


def decode_table(data: bytes, key: BatchKey):
    """The payload as an Arrow table (server.core.columns), straight from its columns: no
    FlowRecord per record."""
    cols = _all_columns(data, key)
    return table_of_columns(cols) if cols and cols[0] else table_of([])


class StoredRecords(abc.Sequence):
    """The records of a batch read back from the spool file, decoded when first used. A sink
    that writes Arrow tables takes table() from the payload's columns and never makes the
    FlowRecords: a sink catching up reads 20,000-50,000 records at a time, and making them
    as tuples only to turn them into columns again cost CPU and most of the server's peak
    memory while ingesting (bench: ~800k short-lived Python objects)."""

    __slots__ = ("_data", "_key", "_n", "_rows")

    def __init__(self, data: bytes, key: BatchKey, n: int) -> None:
        self._data, self._key, self._n = data, key, n
        self._rows: list[FlowRecord] | None = None

    def _decoded(self) -> list[FlowRecord]:
        if self._rows is None:
            self._rows = decode(self._data, self._key)
        return self._rows

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        return self._decoded()[i]

    def __iter__(self):
        return iter(self._decoded())

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, abc.Sequence) else other)

    def table(self):
        return decode_table(self._data, self._key)


def group_by_log_store(records: Sequence[FlowRecord]) -> list[tuple[BatchKey, list[FlowRecord]]]:
    """Split records into batches of one LogStore each, at most MAX_BATCH_RECORDS each, in
    first-seen order. The common case (one LogStore) costs one C-level pass."""
    keys = set(map(_key_of, records))
    if len(keys) == 1:
        groups = {next(iter(keys)): list(records)}
    else:
        groups = {}
        for r in records:
            k = _key_of(r)
            g = groups.get(k)
            if g is None:
                groups[k] = [r]
            else:
                g.append(r)
    out: list[tuple[BatchKey, list[FlowRecord]]] = []
    for k, rs in groups.items():
        bk = BatchKey(*k)
        for i in range(0, len(rs), MAX_BATCH_RECORDS):
            out.append((bk, rs[i : i + MAX_BATCH_RECORDS] if len(rs) > MAX_BATCH_RECORDS else rs))
    return out
