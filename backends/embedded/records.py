"""The embedded query backend: flow records in one DuckDB database file.

Why DuckDB and not SQLite: on flow records it answers the time-range + REJECT + CIDR questions
50-200x faster and stores a third of the bytes (ARCHITECTURE.md, "Records"), as long as it is
fed whole Arrow tables rather than row-by-row inserts.

Layout: one table `records` holding every FlowRecord field as a column of the same name (enums as
proto numbers, times as epoch ms), plus `src_ip`/`dst_ip`: the 16-byte big-endian form of the
address (IPv4 as IPv4-mapped, NULL on NODATA rows) so that CIDR filters are range filters. The
filter translator (backends/embedded/filter_sql.py) depends on exactly this schema.

There is deliberately no index: an ART index (e.g. a unique record_id) slows inserts badly.
Rows arrive roughly in start_time order, so DuckDB's per-row-group min/max (zone maps) on
start_time already prune most of the table for a time-range query; idempotency is an anti-join
against the rows of the batch's time range instead of a unique constraint.

Durability: write() returns after DuckDB has committed the batch, i.e. appended it to the
write-ahead log and fsynced it. A background thread folds the WAL into the database file
(CHECKPOINT) every `checkpoint_interval_s`, or sooner once `checkpoint_rows` rows were written
since the last one, never on the write path; a crash before a checkpoint loses nothing, DuckDB
replays the WAL on open. (Rows appended since the last checkpoint are held in memory uncompressed,
~280 bytes each: the row bound keeps a fast ingest from growing the server by that much per row.)
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from backends.embedded.aggregate_sql import aggregate_sql, fast_path, top_sql, totals_sql
from backends.embedded.filter_sql import ip_to_blob, to_sql
from server.core import aggregate as agg
from server.core import columns
from server.core.model import RECORD_FIELDS, FlowRecord, LogStoreKey
from server.core.ports import RecordQuery

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# How long DuckDB keeps `aggregate_threads` after the last Aggregate (EmbeddedRecordStore.__init__).
_THREADS_LINGER_S = 1.0

# SQL types of the columns, FlowRecord field order; their Arrow types are server.core.columns.SCHEMA
# (what the pipeline hands over). Then the two derived address blobs.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("record_id", "VARCHAR NOT NULL"),
    ("version", "INTEGER"),
    ("account_id", "VARCHAR NOT NULL"),
    ("flow_log_id", "VARCHAR"),
    ("region", "VARCHAR NOT NULL"),
    ("project", "VARCHAR NOT NULL"),
    ("log_store", "VARCHAR NOT NULL"),
    ("resource_type", "INTEGER"),
    ("resource_id", "VARCHAR"),
    ("network_id", "VARCHAR"),
    ("src_addr", "VARCHAR"),
    ("dst_addr", "VARCHAR"),
    ("src_port", "INTEGER"),
    ("dst_port", "INTEGER"),
    ("protocol", "INTEGER"),
    ("packets", "UBIGINT"),
    ("bytes", "UBIGINT"),
    ("start_time", "BIGINT NOT NULL"),
    ("end_time", "BIGINT"),
    ("action", "INTEGER"),
    ("log_status", "INTEGER"),
    ("direction", "INTEGER"),
    ("tcp_flags", "INTEGER"),
    ("rule_id", "VARCHAR"),
    ("rule_kind", "INTEGER"),
    ("sampling_rate", "INTEGER"),
)
# Columns added after the first release, with what rows stored before them hold: a records.duckdb
# made by an older server gets them on open (ALTER TABLE ... ADD COLUMN). Inserts name columns
# (INSERT ... BY NAME), so the column order of such a table (added ones last) does not matter.
_ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rule_id", "VARCHAR DEFAULT ''"),
    ("rule_kind", "INTEGER DEFAULT 0"),
    ("sampling_rate", "INTEGER DEFAULT 0"),
)
assert tuple(c[0] for c in _COLUMNS) == RECORD_FIELDS, "schema must follow FlowRecord"

_SCHEMA = pa.schema(list(columns.SCHEMA) + [pa.field("src_ip", pa.binary()), pa.field("dst_ip", pa.binary())])

_CREATE = (
    "CREATE TABLE IF NOT EXISTS records ("
    + ", ".join(f"{name} {sql}" for name, sql in _COLUMNS)
    + ", src_ip BLOB, dst_ip BLOB)"
)

_SELECT_FIELDS = ", ".join(RECORD_FIELDS)
_KEY_COLUMNS = ("account_id", "region", "project", "log_store", "record_id")
_KEY = ", ".join(_KEY_COLUMNS)

# The most rows one keyset query of search() asks for, in batches: bounds memory (DuckDB's
# ORDER BY + LIMIT keeps a top-N heap of that many rows) while sparing most re-scans.
_MAX_BATCHES_PER_QUERY = 4
_MAX_ARROW_BATCHES_PER_QUERY = 32


@functools.lru_cache(maxsize=65536)
def _blob(addr: str) -> bytes | None:
    """ip_to_blob, cached: collectors repeat the same few thousand addresses endlessly."""
    return ip_to_blob(addr) if addr else None


def day_start(ms: int) -> int:
    """Start (epoch ms) of the UTC day holding `ms`."""
    return ms - ms % DAY_MS


def retention_cutoff(retention_days: int, now_ms: int) -> int:
    """Records starting before this instant are past retention: the start of the UTC day
    `retention_days` days before now. Shared rule of every backend (whole days are dropped)."""
    return day_start(now_ms - retention_days * DAY_MS)


class EmbeddedRecordStore:
    """RecordStore on one DuckDB file: the default query backend, needs no other service.

    Thread-safe. Writes (and deletes) are serialised by one lock on one connection; each search
    and count runs on its own cursor (DuckDB MVCC), so a slow reader never blocks a writer.
    """

    name = "embedded"

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str | None = None,
        threads: int | None = None,
        aggregate_threads: int | None = None,
        checkpoint_interval_s: float = 30.0,
        checkpoint_rows: int = 100_000,
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        config: dict[str, str | bool | int | float | list[str]] = {
            # Checkpoints belong to the background thread; this is only a safety net if it keeps
            # failing (e.g. a reader holding a snapshot for a long time).
            "checkpoint_threshold": "1GB",
        }
        if memory_limit:
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = threads
        self._con = duckdb.connect(str(path), config=config)
        self._con.execute(_CREATE)
        for name, sql in _ADDED_COLUMNS:
            self._con.execute(f"ALTER TABLE records ADD COLUMN IF NOT EXISTS {name} {sql}")
        self._lock = threading.Lock()
        # DuckDB's thread count is one setting of the database: `aggregate_threads` while at least
        # one aggregate() runs (EmbeddedConfig.aggregate_threads says why), `threads` again
        # _THREADS_LINGER_S after the last one (off the call's path: lowering joins DuckDB's
        # worker, ~2.5 ms; and the next Aggregate of a burst finds it running).
        self._threads = threads or 0
        self._aggregate_threads = aggregate_threads or 0
        self._aggregates = 0
        self._raised = False
        self._lowering: threading.Timer | None = None
        self._threads_lock = threading.Lock()
        self._dirty = False
        self._closed = threading.Event()
        self._checkpoint_rows = checkpoint_rows
        self._rows_since_checkpoint = 0
        self._checkpoint_due = threading.Event()  # wakes the checkpointer early
        self._checkpointer: threading.Thread | None = None
        if checkpoint_interval_s > 0:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop,
                args=(checkpoint_interval_s,),
                name="embedded-records-checkpoint",
                daemon=True,
            )
            self._checkpointer.start()

    # -- writing -------------------------------------------------------------------------------

    def write(self, records: Sequence[FlowRecord]) -> None:
        """Store the records; durable (committed to the fsynced WAL) and searchable on return.

        Idempotent by (LogStore, record_id): duplicates inside the batch are dropped, and rows
        already stored are skipped (see _insert: the record id covers start_time, so an earlier
        copy can only be in the batch's start_time range).
        """
        if records:
            self._insert(_to_arrow(_dedupe(records)))

    def write_table(self, table: pa.Table) -> None:
        """write() of records given as one Arrow table (server.core.columns.SCHEMA), the form
        the record pipeline hands over: no conversion here but the address blobs."""
        if table.num_rows == 0:
            return
        if table.schema != columns.SCHEMA:
            raise ValueError(f"write_table needs server.core.columns.SCHEMA, not {table.schema}")
        if pc.count_distinct(table.column("record_id")).as_py() != table.num_rows:
            table = columns.without_repeats(table, _KEY_COLUMNS)  # keeps the first copy, as write() does
        self._insert(_with_blobs(table))

    def _insert(self, table: pa.Table) -> None:
        bounds = pc.min_max(table.column("start_time"))
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        with self._lock:
            self._check_open()
            self._con.register("incoming", table)
            try:
                # Rows already stored can only be in the batch's start_time range (the record id
                # covers start_time), but that range holds every LogStore's recent records. So
                # first look for the batch's record ids there, hashing the batch (small), not
                # the range (an anti-join against the range built a hash table of all of it on
                # every write: 20-30% slower once a million records overlap). Only a batch that
                # repeats stored records (a collector's retry) pays for the anti-join.
                again = (
                    "FROM records WHERE start_time BETWEEN ? AND ? AND record_id IN (SELECT record_id FROM incoming)"
                )
                if self._con.execute(f"SELECT 1 {again} LIMIT 1", [lo, hi]).fetchone() is None:
                    self._con.execute("INSERT INTO records BY NAME SELECT * FROM incoming")
                else:
                    self._con.execute(
                        f"INSERT INTO records BY NAME SELECT i.* FROM incoming i ANTI JOIN "
                        f"(SELECT {_KEY} {again}) r USING ({_KEY})",
                        [lo, hi],
                    )
            finally:
                self._con.unregister("incoming")
            self._dirty = True
            self._rows_since_checkpoint += table.num_rows
            if self._rows_since_checkpoint >= self._checkpoint_rows:
                self._checkpoint_due.set()

    # -- reading -------------------------------------------------------------------------------

    def search(self, query: RecordQuery, batch_size: int = 1000) -> Iterator[list[FlowRecord]]:
        """Matching records in (start_time, record_id) order, in batches of <= batch_size.

        Reads in keyset chunks (ORDER BY ... LIMIT a few batches, then continue after the last
        row), all inside one read transaction: every chunk sees the same snapshot, the first
        batch comes after one small top-N query, and memory stays bounded whatever the limit.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        remaining = query.limit
        if remaining <= 0 or query.start_ms >= query.end_ms or not query.log_stores:
            return
        where, params = _where(query)
        order = "DESC" if query.newest_first else "ASC"
        cur = self._cursor()
        try:
            cur.begin()
            after = query.after
            chunk = batch_size
            while remaining > 0:
                want = min(remaining, chunk)
                kw, kp = _keyset(query, after)
                cur.execute(
                    f"SELECT {_SELECT_FIELDS} FROM records WHERE {where}{kw} "
                    f"ORDER BY start_time {order}, record_id {order} LIMIT ?",
                    params + kp + [want],
                )
                got = 0
                last: FlowRecord | None = None
                while got < want:
                    rows = cur.fetchmany(min(batch_size, want - got))
                    if not rows:
                        break
                    batch = list(map(FlowRecord._make, rows))
                    got += len(batch)
                    last = batch[-1]
                    yield batch
                remaining -= got
                if got < want or last is None:
                    return
                after = (last.start_time, last.record_id)
                chunk = min(chunk * 2, batch_size * _MAX_BATCHES_PER_QUERY)
        finally:
            _release(cur)

    def search_arrow(self, query: RecordQuery, batch_size: int = 1000) -> Iterator[pa.Table]:
        """search(), as Arrow tables of whole batches (a multiple of batch_size rows, except the
        last): the same records in the same order, without a Python object per record.

        The first table holds one batch (a fast first batch); later keyset chunks double up to
        _MAX_ARROW_BATCHES_PER_QUERY batches. Every later chunk is also bounded to a time window
        sized from the density of the rows read so far (1.5x what should hold the chunk), so
        DuckDB reads only the row groups of that window instead of the whole rest of the range.
        The window only narrows the search: when it holds fewer rows than the chunk wants, the
        chunk is read again with a 4x wider window (finally without one), so the result is
        exactly search()'s.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        remaining = query.limit
        if remaining <= 0 or query.start_ms >= query.end_ms or not query.log_stores:
            return
        where, params = _where(query)
        order = "DESC" if query.newest_first else "ASC"
        cur = self._cursor()
        try:
            cur.begin()
            after = query.after
            chunk = batch_size
            window: int | None = None  # ms of start_time expected to hold the next chunk
            while remaining > 0:
                want = min(remaining, chunk)
                kw, kp = _keyset(query, after)
                bound, bp = "", []
                if window is not None and after is not None:
                    if query.newest_first and after[0] - window > query.start_ms:
                        bound, bp = " AND start_time >= ?", [after[0] - window]
                    elif not query.newest_first and after[0] + window < query.end_ms:
                        bound, bp = " AND start_time <= ?", [after[0] + window]
                # The relation API hands the result to Arrow without the extra copy a DB-API
                # result makes; it runs inside the cursor's transaction like execute().
                table = cur.sql(
                    f"SELECT {_SELECT_FIELDS} FROM records WHERE {where}{kw}{bound} "
                    f"ORDER BY start_time {order}, record_id {order} LIMIT ?",
                    params=params + kp + bp + [want],
                ).to_arrow_table()
                got = table.num_rows
                if got < want and bound:
                    window = window * 4  # type: ignore[operator]
                    continue
                if got:
                    yield table
                remaining -= got
                if got < want:
                    return
                starts = table.column("start_time")
                first, last = starts[0].as_py(), starts[got - 1].as_py()
                after = (last, table.column("record_id")[got - 1].as_py())
                chunk = min(chunk * 2, batch_size * _MAX_ARROW_BATCHES_PER_QUERY)
                window = int((abs(last - first) + 1) * min(chunk, remaining) / got * 1.5) + 1
        finally:
            _release(cur)

    def count(self, query: RecordQuery) -> int:
        if query.start_ms >= query.end_ms or not query.log_stores:
            return 0
        where, params = _where(query)
        cur = self._cursor()
        try:
            row = cur.execute(f"SELECT count(*) FROM records WHERE {where}", params).fetchone()
            return int(row[0]) if row else 0
        finally:
            _release(cur)

    def aggregate(self, q: agg.AggregateQuery) -> agg.Groups:
        """RecordAggregation: one GROUP BY statement (backends/embedded/aggregate_sql.py) on its
        own cursor. DuckDB's memory_limit bounds what the grouping holds (it spills beyond);
        the statement returns at most max_groups + 1 groups, and is interrupted at the deadline."""
        budget = agg.Budget(q)
        budget.check_time()
        rq = q.query
        if rq.start_ms >= rq.end_ms or not rq.log_stores:
            return agg.Groups([])
        where, params = _where(rq)
        fast = fast_path(q)
        cur = self._cursor()
        timer = threading.Timer(max(budget.remaining(), 0.0), cur.interrupt)
        timer.daemon = True
        timer.start()
        more_threads = bool(self._threads) and self._aggregate_threads > self._threads
        try:
            if more_threads:
                self._aggregate_started(cur)
            if fast:
                cur.begin()  # one snapshot for both statements
                top = cur.execute(top_sql(q, where), params).fetchall()
                totals = cur.execute(totals_sql(q, where), params).fetchone()
                cur.commit()
            else:
                rows = cur.execute(aggregate_sql(q, where), params).fetchall()
        except duckdb.InterruptException:
            raise agg.timed_out(q) from None
        finally:
            timer.cancel()
            if more_threads:
                self._aggregate_ended()
            _release(cur)
        # An interrupt that lands before DuckDB starts the statement is lost (each statement
        # clears it): an answer that came after the deadline is out of time all the same.
        budget.check_time()
        address = [k.kind is agg.FieldKind.ADDRESS for k in q.group_by]
        n = len(q.group_by)
        if fast:
            # (its count per group is not computed: 1 stands in, finish() never shows it)
            rows = [(0, row[0], *row[1 : 1 + n], 1, *row[1 + n :]) for row in top[: q.limit]]
            sums = totals or (0, 0, 0)
            matched = int(sums[0] or 0)
            if len(top) > q.limit:  # some group was folded: other = totals - top N
                total = {"count": matched, "bytes": int(sums[1] or 0), "packets": int(sums[2] or 0)}
                folded: list[int] = []
                for j, m in enumerate(q.metrics):
                    if m.op == "count_distinct":
                        folded.append(0)
                    else:
                        whole = total["count" if m.op == "count" else m.field]
                        folded.append(whole - sum(int(row[3 + n + j]) for row in rows))
                rows.append((1, None, *([None] * n), 0, *folded))
            rows.append((2, None, *([None] * n), matched, *([None] * len(q.metrics))))
        groups = []
        other: tuple[int, ...] | None = None
        matched = 0
        for row in rows:
            part, bucket, values = row[0], row[1], row[3 + n :]
            if part == 0:
                keys = tuple(_address_key(v) if a else v for v, a in zip(row[2 : 2 + n], address))
                groups.append(agg.Group(bucket, keys, (int(row[2 + n]), *(int(v) for v in values))))
            elif part == 1:
                other = tuple(int(v) for v in values)
            else:
                matched = int(row[2 + n] or 0)
        budget.check_groups(len(groups))
        return agg.Groups(groups, ranked=True, other=other, matched=matched)

    def _aggregate_started(self, cur: duckdb.DuckDBPyConnection) -> None:
        with self._threads_lock:
            self._aggregates += 1
            if self._lowering is not None:
                self._lowering.cancel()
                self._lowering = None
            if not self._raised:
                cur.execute(f"SET threads = {int(self._aggregate_threads)}")
                self._raised = True

    def _aggregate_ended(self) -> None:
        with self._threads_lock:
            self._aggregates -= 1
            if self._aggregates == 0 and self._raised:
                if self._lowering is not None:
                    self._lowering.cancel()
                self._lowering = threading.Timer(_THREADS_LINGER_S, self._lower_threads)
                self._lowering.daemon = True
                self._lowering.start()

    def _lower_threads(self) -> None:
        try:
            cur = self._cursor()  # before _threads_lock: it waits for a write in progress
        except RuntimeError:  # closed
            return
        try:
            with self._threads_lock:
                if self._aggregates:
                    return  # the last one to end schedules another
                self._lowering = None
                if not self._raised:
                    return
                cur.execute(f"SET threads = {int(self._threads)}")
                self._raised = False
        except duckdb.Error as exc:  # e.g. the store closed meanwhile
            log.info("could not set DuckDB's threads back to %d: %s", self._threads, exc)
        finally:
            _release(cur)

    # -- deleting ------------------------------------------------------------------------------

    def drop_log_store(self, account_id: str, key: LogStoreKey) -> None:
        """Delete every record of the LogStore (committed when this returns). DuckDB reuses the
        space of deleted rows after a checkpoint; the file does not shrink."""
        with self._lock:
            self._check_open()
            self._con.execute(
                "DELETE FROM records WHERE account_id = ? AND region = ? AND project = ? AND log_store = ?",
                [account_id, key.region, key.project, key.name],
            )
            self._dirty = True

    def enforce_retention(self, account_id: str, key: LogStoreKey, retention_days: int, now_ms: int) -> int:
        """Delete the LogStore's records of whole UTC days before (now - retention_days) and
        return how many distinct days had records (the partitions dropped)."""
        cutoff = retention_cutoff(retention_days, now_ms)
        args = [account_id, key.region, key.project, key.name, cutoff]
        cond = "account_id = ? AND region = ? AND project = ? AND log_store = ? AND start_time < ?"
        with self._lock:
            self._check_open()
            self._con.begin()
            try:
                row = self._con.execute(
                    f"SELECT count(DISTINCT start_time // {DAY_MS}) FROM records WHERE {cond}", args
                ).fetchone()
                days = int(row[0]) if row else 0
                if days:
                    self._con.execute(f"DELETE FROM records WHERE {cond}", args)
                self._con.commit()
            except BaseException:
                self._con.rollback()
                raise
            if days:
                self._dirty = True
        if days:
            log.info("retention dropped %d day(s) of %s (account %s) before %d", days, key, account_id, cutoff)
        return days

    # -- lifecycle -----------------------------------------------------------------------------

    def healthy(self) -> bool:
        try:
            cur = self._cursor()
        except Exception:  # noqa: BLE001 - any failure means not healthy
            return False
        try:
            cur.execute("SELECT 1").fetchone()
            return True
        except Exception:  # noqa: BLE001
            return False
        finally:
            _release(cur)

    def checkpoint(self) -> None:
        """Fold the WAL into the database file now (what the background thread does)."""
        with self._lock:
            self._check_open()
            self._con.execute("CHECKPOINT")
            self._dirty = False
            self._rows_since_checkpoint = 0

    def close(self) -> None:
        """Checkpoint and close; idempotent. Open search generators must be closed first."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._checkpoint_due.set()
        with self._threads_lock:
            if self._lowering is not None:
                self._lowering.cancel()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        with self._lock:
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error as exc:  # the WAL is replayed on next open: nothing is lost
                log.warning("checkpoint on close failed: %s", exc)
            self._con.close()

    def _checkpoint_loop(self, interval_s: float) -> None:
        while True:
            self._checkpoint_due.wait(interval_s)
            self._checkpoint_due.clear()
            if self._closed.is_set():
                return
            if not self._dirty:
                continue
            try:
                with self._lock:
                    if self._closed.is_set():
                        return
                    started = time.monotonic()
                    self._con.execute("CHECKPOINT")
                    self._dirty = False
                    self._rows_since_checkpoint = 0
                log.debug("checkpoint took %.0f ms", (time.monotonic() - started) * 1000)
            except duckdb.Error as exc:  # e.g. a long read transaction; try again next time
                log.info("background checkpoint postponed: %s", exc)

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            self._check_open()
            return self._con.cursor()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeError("EmbeddedRecordStore is closed")


def _release(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.close()
    except duckdb.Error:  # the store may already be closed
        pass


def _address_key(value: bytes | int | None) -> int | None:
    """An address key from the statement (a 16-byte blob, or an integer when masked) as the
    core's key integer."""
    if value is None or isinstance(value, int):
        return value
    return int.from_bytes(value, "big")


def _dedupe(records: Sequence[FlowRecord]) -> Sequence[FlowRecord]:
    """The batch without repeated (LogStore, record_id), keeping the first copy."""
    ids = [r.record_id for r in records]
    if len(set(ids)) == len(ids):
        return records
    seen: set[tuple[str, str, str, str, str]] = set()
    out = []
    for r in records:
        k = (r.account_id, r.region, r.project, r.log_store, r.record_id)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _blobs(addresses: pa.Array) -> pa.Array:
    """The ip_to_blob column of an address column: converted once per distinct address of the
    batch (a batch repeats its few hundred addresses), then spread with a C-level take."""
    encoded = pc.dictionary_encode(addresses)
    return pa.array(list(map(_blob, encoded.dictionary.to_pylist())), type=pa.binary()).take(encoded.indices)


def _to_arrow(records: Sequence[FlowRecord]) -> pa.Table:
    """The records as the `records` table holds them."""
    return _with_blobs(columns.table_of(records))


def _with_blobs(table: pa.Table) -> pa.Table:
    """The table as the `records` table holds it: the record columns, then src_ip and dst_ip."""
    table = table.combine_chunks()
    return pa.Table.from_arrays(
        table.columns + [_blobs(table.column("src_addr").chunk(0)), _blobs(table.column("dst_addr").chunk(0))],
        schema=_SCHEMA,
    )


def _where(query: RecordQuery) -> tuple[str, list[object]]:
    """The WHERE clause of a query without its keyset condition, and its parameters."""
    stores = list(dict.fromkeys(query.log_stores))
    sql = (
        "account_id = ? AND region = ? AND project = ? AND log_store IN ("
        + ", ".join("?" * len(stores))
        + ") AND start_time >= ? AND start_time < ?"
    )
    params: list[object] = [query.account_id, query.region, query.project, *stores, query.start_ms, query.end_ms]
    if query.filter is not None:
        fsql, fparams = to_sql(query.filter)  # type: ignore[arg-type]
        if fsql:
            sql += f" AND ({fsql})"
            params.extend(fparams)
    return sql, params


def _keyset(query: RecordQuery, after: tuple[int, str] | None) -> tuple[str, list[object]]:
    """Strictly after (start_time, record_id) in the query's order. The plain bound on
    start_time is redundant but lets DuckDB skip row groups by their min/max."""
    if after is None:
        return "", []
    t, rid = after
    if query.newest_first:
        return " AND start_time <= ? AND (start_time < ? OR record_id < ?)", [t, t, rid]
    return " AND start_time >= ? AND (start_time > ? OR record_id > ?)", [t, t, rid]
