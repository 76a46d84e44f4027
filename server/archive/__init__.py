"""The archive: flow records as Parquet objects in an ObjectStore (a local folder or any S3).

Bytes below, encoding above (Loki's habit): the ObjectStore ports only move bytes; this module
alone owns the key layout and the encoding, so every store holds the same archive and a new
store needs no archive code.

Layout (Hive-style, so Spark, Trino, Athena and DuckDB read the archive as one table):

    account=<a>/region=<r>/project=<p>/log_store=<l>/dt=YYYY-MM-DD/hour=HH/part-<batch_id>.parquet

- The account comes first: one account's whole archive is one prefix, so accounts are isolated
  by construction (a reader builds its prefix from the caller's account), a bucket policy or a
  lifecycle rule can target one account, and deleting an account is one prefix delete.
- dt/hour are the UTC date and hour of the record's start_time.
- Path values are percent-encoded outside [A-Za-z0-9_.~-] (the core already restricts names to
  [A-Za-z0-9_-], this is defence), and "" is written as Hive's `__HIVE_DEFAULT_PARTITION__`.
- One object per (account, region, project, log_store, hour) per batch: `part-<batch_id>`, so
  writing the same batch again overwrites its objects instead of adding duplicates.

Encoding: Parquet, zstd, one row group per object; rows sorted by (start_time, flow_log_id,
addresses, ports) because neighbouring rows then share values, which compresses best. The
partition values (account, region, project, log_store) live in the path, not in the file, and
record_id is not stored at all: it is 128 random-looking bits (most of the bytes of a row) and
is recomputed on read with server.core.records.record_id from the fields it hashes. Integer
columns use the widths of the proto fields (uint32 ports, uint64 counters): Parquet stores
every int up to 32 bits in the same physical INT32 with the same encodings, so narrower types
would save nothing on disk while turning an odd-but-legal value into a write that fails forever.
Times are timestamp[ms, UTC] with delta encoding.

Measured on realistic records (5 flow logs, public/private addresses, 60% of peers from a pool
of popular addresses, 40% random, common service ports, ephemeral ports, log-normal counters):
about 14.5 bytes per record with window-aligned times, about 19 with times at random
milliseconds, for 50,000-record objects.

The code in three files by job: layout.py (the key layout), parquet.py (the encoding) and
writer.py (`Archive`: writing, listing, reading, deleting). This package re-exports their names.
"""

from server.archive.layout import *  # noqa: F401,F403
from server.archive.layout import (
    _BATCH_ID,
    _DT,
    _EPOCH,
    _HOUR,
    _NULL_PARTITION,
    _PART,  # noqa: F401
    _day_index_of,
    _escape,
    _hour_index_of,
    _hour_parts,
)
from server.archive.parquet import *  # noqa: F401,F403
from server.archive.parquet import (
    _ADDED_COLUMNS,
    _COLUMNS,
    _IDX,
    _REQUIRED_COLUMNS,  # noqa: F401
    _identity,
    _start_filter,
    _to_records,
    _write_parquet,
)
from server.archive.writer import *  # noqa: F401,F403
from server.archive.writer import _DELETE_CHUNK, _MAX_HOUR_LISTINGS, _groups  # noqa: F401
