"""The durable spool: every acknowledged record is here before anything else happens to it.

One SQLite file (`spool.db` under the data dir) in WAL mode with synchronous=FULL. It stores
BATCHES, not rows: one row per (append, LogStore) holding the records as one blob, which is
what makes SQLite fast here (an append-only table with no per-record index).

Durability: `append()` returns only after the transaction holding the records has committed
and the WAL has been fsynced. That is the point where Ingest may acknowledge. A process killed
with SIGKILL (or a power cut) after `append()` returned loses nothing; one killed before it
returned may or may not have the records (the caller never saw an acknowledgement, and the
record ids make a collector's retry harmless).

Group commit: one writer thread owns the write connection. Callers encode their records in
their own thread, queue the work and wait; the writer takes everything queued, writes it in ONE
transaction (one fsync), then wakes every caller. With 8 concurrent callers most commits carry
several appends.

Order: seq numbers are assigned by the writer in commit order and never reused (the highest
trimmed seq is remembered). `on_commit` is called by the writer, after the commit, with the
new batches in seq order, before the appenders are woken: the live hub sees batches in seq
order, which is what makes Tail cursors monotonic.

Sinks (the query backend, the archive) each have a durable offset in `sink_offsets`: the
highest seq they have stored. Redelivery after a crash is safe because their writes are
idempotent. Batches are trimmed once every sink has them AND they are older than the tail
retention (or the delivered part exceeds `tail_retention_bytes`), so Tail can replay the recent
past. The undelivered backlog is bounded by `max_spool_bytes`: beyond it `append()` refuses with
ResourceExhausted naming the backend that is behind; acknowledged records are never dropped.

The spool in four files by job: this one (the SQLite file, the group-commit writer, appending,
reading for the sinks, dropping and trimming), spool_codec.py (the batch blob format),
spool_offsets.py (the sinks' durable offsets and backlogs) and spool_scan.py (Tail's replay read).
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from server.core.columns import table_of_columns
from server.core.errors import DomainError, ResourceExhausted, Unavailable
from server.core.model import FlowRecord, record_columns
from server.pipeline.spool_codec import (
    _ENUM_IDX,
    _FORMAT,
    _FORMAT_COLUMNS,
    _KEY_IDX,
    _MAX_IDLE_READERS,  # noqa: F401
    _MISSING_DEFAULTS,
    _TRIM_CHUNK,
    _VALUE_IDX,
    FORMAT_VERSION,
    MAX_BATCH_RECORDS,
    BatchKey,
    SpoolBatch,
    SpoolCorrupt,
    StoredRecords,
    _all_columns,
    _key_of,
    _value_columns,
    decode,
    decode_table,
    encode,
    encode_columns,
    encode_marshalled,
    group_by_log_store,
)
from server.pipeline.spool_offsets import SinkOffset, SinkOffsets  # noqa: F401
from server.pipeline.spool_scan import CursorExpired, ScanResult, TailScan  # noqa: F401

log = logging.getLogger(__name__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    stored_ms INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    region TEXT NOT NULL,
    project TEXT NOT NULL,
    log_store TEXT NOT NULL,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    skipped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_stored_ms ON batches (stored_ms);
CREATE TABLE IF NOT EXISTS payloads (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sink_offsets (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL, pending_to INTEGER);
"""
# -- the writer's work items ------------------------------------------------------------------


class _Op:
    __slots__ = ("fn", "appends", "result", "error", "done")

    def __init__(self, fn: Callable[[sqlite3.Connection], object], appends: bool = False) -> None:
        self.fn = fn
        self.appends = appends  # result is a list of new batches to hand to on_commit
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def wait(self, writer: threading.Thread) -> object:
        while not self.done.wait(1.0):
            if not writer.is_alive():  # queued just after the spool closed
                raise Unavailable("the spool is closed: the server is stopping")
        if self.error is not None:
            raise self.error
        return self.result


_STOP = object()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Spool(SinkOffsets, TailScan):
    """See the module docstring. Thread-safe: any thread may append, read and wait."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_spool_bytes: int = 2 * 1024**3,
        tail_retention_s: float = 3600.0,
        tail_retention_bytes: int = 1024**3,
        on_commit: Callable[[list[SpoolBatch]], None] | None = None,
        trim_interval_s: float = 1.0,
        memory_records: int = 50_000,
        clock_ms: Callable[[], int] = _now_ms,
        tables: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_spool_bytes = max_spool_bytes
        self.tail_retention_s = tail_retention_s
        self.tail_retention_bytes = tail_retention_bytes
        self.on_commit = on_commit
        self._trim_interval_s = trim_interval_s
        self._clock_ms = clock_ms
        self.tables = tables
        # Why a sink is behind, set by its worker; quoted when ingestion is refused.
        self.sink_notes: dict[str, str] = {}

        # One process per spool: a second server on the same data dir would assign the same seqs.
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise RuntimeError(
                f"the spool {self.path} is in use by another process: two servers cannot share one data dir"
            ) from None
        self._wconn = self._connect()
        self._wconn.executescript(_SCHEMA)
        row = self._wconn.execute("SELECT v FROM meta WHERE k = 'spool_id'").fetchone()
        if row is None:
            self.spool_id = secrets.token_hex(8)
            self._wconn.execute(
                "INSERT INTO meta VALUES ('spool_id', ?), ('format', ?)", (self.spool_id, FORMAT_VERSION)
            )
        else:
            self.spool_id = str(row[0])
        self._load_state()
        self._publish_view()
        # The most recent committed batches, by seq, as appended (records not re-decoded):
        # sinks that keep up read from here instead of from the file. Bounded by
        # memory_records; evicted oldest first, so it always holds a contiguous seq range.
        self.memory_records = memory_records
        self._recent: dict[int, SpoolBatch] = {}
        self._recent_records = 0
        self._recent_lo = self._w_head + 1
        self._after_commit: list[Callable[[], None]] = []

        self._idle_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._cond = threading.Condition()
        self._wakes = 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._last_trim = time.monotonic()
        self._writer = threading.Thread(target=self._run, name="flowlog-spool-writer", daemon=True)
        self._writer.start()
        log.info(
            "spool open",
            extra={
                "path": str(self.path),
                "head_seq": self.head_seq,
                "spool_id": self.spool_id,
                "sinks": dict(self._v_offsets),
            },
        )

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute(f"PRAGMA journal_size_limit={64 * 2**20}")  # WAL shrinks back after a burst
        return conn

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read connection from a small pool (not one per thread: Tail streams run on
        hundreds of threads, and every SQLite connection holds three file descriptors)."""
        with self._readers_lock:
            if self._closed:
                raise Unavailable("the spool is closed: the server is stopping")
            conn = self._idle_readers.pop() if self._idle_readers else None
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
        try:
            yield conn
        finally:
            with self._readers_lock:
                if not self._closed and len(self._idle_readers) < _MAX_IDLE_READERS:
                    self._idle_readers.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    # -- state ----------------------------------------------------------------------------------
    # The writer keeps a tentative copy (_w_*) that ops change inside a transaction; after the
    # commit it is copied to the committed view (_v_*) that other threads read. A failed commit
    # reloads the tentative copy from the file.

    def _load_state(self) -> None:
        c = self._wconn
        meta = dict(c.execute("SELECT k, v FROM meta").fetchall())
        self._w_trimmed = int(meta.get("trimmed_through", 0))
        self._w_trimmed_ms = int(meta.get("trimmed_stored_ms", 0))
        max_seq, max_ms = c.execute("SELECT max(seq), max(stored_ms) FROM batches").fetchone()
        self._w_head = max(max_seq or 0, self._w_trimmed)
        self._w_last_ms = max(max_ms or 0, self._w_trimmed_ms)
        self._w_total = c.execute("SELECT COALESCE(sum(bytes), 0) FROM batches WHERE skipped = 0").fetchone()[0]
        self._w_offsets: dict[str, list] = {}
        self._w_backlog: dict[str, list[int]] = {}
        for sink, seq, pending in c.execute("SELECT sink, seq, pending_to FROM sink_offsets").fetchall():
            self._w_offsets[sink] = [seq, pending]
            self._w_backlog[sink] = list(
                c.execute(
                    "SELECT COALESCE(sum(n), 0), COALESCE(sum(bytes), 0) FROM batches WHERE seq > ? AND skipped = 0",
                    (seq,),
                ).fetchone()
            )

    def _publish_view(self) -> None:
        self.head_seq = self._w_head
        self.trimmed_through = self._w_trimmed
        self.trimmed_stored_ms = self._w_trimmed_ms
        self._v_offsets = {k: SinkOffset(v[0], v[1]) for k, v in self._w_offsets.items()}
        self._v_backlog = {k: (v[0], v[1]) for k, v in self._w_backlog.items()}
        self._v_total = self._w_total

    @property
    def total_bytes(self) -> int:
        return self._v_total

    # -- the writer ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[[sqlite3.Connection], object], appends: bool = False) -> object:
        if self._closed:
            raise Unavailable("the spool is closed: the server is stopping")
        op = _Op(fn, appends)
        self._queue.put(op)
        return op.wait(self._writer)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            ops: list[_Op] = []
            while True:
                if item is _STOP:
                    stop = True
                else:
                    ops.append(item)  # type: ignore[arg-type]
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if ops:
                self._execute(ops)
            if time.monotonic() - self._last_trim >= self._trim_interval_s and not stop:
                op = _Op(self._op_trim)
                self._execute([op])
                # A full chunk means more is due: trim again after the next appends.
                self._last_trim = 0.0 if op.result == _TRIM_CHUNK else time.monotonic()
        # Anything queued after the stop marker: refuse it rather than leave a caller waiting.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Op):
                item.error = Unavailable("the spool is closed: the server is stopping")
                item.done.set()

    def _execute(self, ops: list[_Op]) -> None:
        c = self._wconn
        committed: list[SpoolBatch] = []
        try:
            c.execute("BEGIN IMMEDIATE")
            for op in ops:
                try:
                    op.result = op.fn(c)
                except DomainError as e:  # refused before writing anything (e.g. spool full)
                    op.error = e
                else:
                    if op.appends:
                        committed.extend(op.result)  # type: ignore[arg-type]
            c.execute("COMMIT")
        except Exception as e:  # noqa: BLE001 - disk full, I/O error: fail this group, keep going
            self._after_commit.clear()
            log.error("spool write failed", extra={"error": repr(e), "ops": len(ops)})
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._load_state()
            for op in ops:
                op.error = Unavailable(f"the spool could not be written ({e}); nothing was acknowledged, retry later")
                op.done.set()
            return
        # The committed view (head_seq) moves BEFORE the hub hears of the batches: a Tail that
        # subscribes and then reads head_seq can never miss a batch between the two. The
        # memory copy is filled before head_seq moves, so seqs up to head are found there.
        if committed:
            self._remember(committed)
        for hook in self._after_commit:
            hook()
        self._after_commit.clear()
        self._publish_view()
        if committed and self.on_commit is not None:
            try:
                self.on_commit(committed)
            except Exception:  # noqa: BLE001 - a broken subscriber must not stop ingestion
                log.exception("spool on_commit callback failed")
        for op in ops:
            op.done.set()
        with self._cond:
            self._cond.notify_all()

    # -- appending ----------------------------------------------------------------------------

    def append(self, records: Sequence[FlowRecord], prepared: tuple[bytes, object] | None = None) -> int:
        """Spool the records; returns the highest seq given to them. Durable when it returns.

        Raises ResourceExhausted when the undelivered backlog is over max_spool_bytes, and
        Unavailable when the spool cannot be written or is closed (nothing acknowledged)."""
        batches = self.append_batches(records, prepared)
        return batches[-1].seq if batches else self.head_seq

    def append_batches(
        self, records: Sequence[FlowRecord], prepared: tuple[bytes, object] | None = None
    ) -> list[SpoolBatch]:
        """append(), returning the committed batches (one per LogStore, in seq order).

        `prepared`: (the marshalled value columns, the Arrow table) of records that are all of
        one LogStore, made by the caller as encode_columns() and table_of_columns() would make
        them (the Ingest fast path); then the records are one batch and nothing is re-encoded."""
        if not records:
            return []
        if self._closed:
            raise Unavailable("the spool is closed: the server is stopping")
        if prepared is not None and len(records) <= MAX_BATCH_RECORDS:
            raw, table = prepared
            encoded = [
                (BatchKey(*_key_of(records[0])), records, encode_marshalled(raw), table if self.tables else None)
            ]
        else:
            encoded = [self._encode(key, rs) for key, rs in group_by_log_store(records)]

        def append_op(c: sqlite3.Connection) -> list[SpoolBatch]:
            return self._op_append(c, encoded)

        return self._submit(append_op, appends=True)  # type: ignore[return-value]

    def _encode(self, key: BatchKey, records: list[FlowRecord]) -> tuple[BatchKey, list[FlowRecord], bytes, object]:
        """(key, records, payload, table): the payload and, with tables=True, the Arrow table,
        both from the one transposition of the records into columns."""
        cols = record_columns(records)
        payload = encode_columns(cols)
        table = None
        if self.tables:
            try:
                table = table_of_columns(cols)
            except ValueError:  # a value outside the table's types: the sinks take the rows
                log.debug("no Arrow table for a spooled batch", exc_info=True)
        return key, records, payload, table

    def _refusal(self, need: int) -> ResourceExhausted | None:
        if not self._w_backlog:
            return None
        sink, (_, behind) = max(self._w_backlog.items(), key=lambda kv: kv[1][1])
        if behind == 0 or behind + need <= self.max_spool_bytes:
            return None
        note = self.sink_notes.get(sink, "")
        return ResourceExhausted(
            f"ingestion is paused: {behind / 2**20:.0f} MiB of acknowledged records are waiting for the "
            f"'{sink}' backend, which is behind{' (' + note + ')' if note else ''}; the spool holds at most "
            f"max_spool_bytes={self.max_spool_bytes}. Retry later: ingestion resumes as soon as it catches up"
        )

    def _op_append(
        self, c: sqlite3.Connection, encoded: list[tuple[BatchKey, Sequence[FlowRecord], bytes, object]]
    ) -> list[SpoolBatch]:
        need = sum(len(p) for _, _, p, _ in encoded)
        refusal = self._refusal(need)
        if refusal is not None:
            raise refusal
        stored_ms = max(self._clock_ms(), self._w_last_ms)  # monotonic: start_ms replay is a prefix cut
        seq = self._w_head
        rows, payloads, out = [], [], []
        n_total = 0
        for key, rs, payload, table in encoded:
            seq += 1
            rows.append((seq, stored_ms, *key, len(rs), len(payload)))
            payloads.append((seq, payload))
            out.append(SpoolBatch(seq, stored_ms, key, rs, len(payload), table=table))
            n_total += len(rs)
        c.executemany(
            "INSERT INTO batches (seq, stored_ms, account_id, region, project, log_store, n, bytes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        c.executemany("INSERT INTO payloads (seq, data) VALUES (?, ?)", payloads)
        self._w_head = seq
        self._w_last_ms = stored_ms
        self._w_total += need
        for b in self._w_backlog.values():
            b[0] += n_total
            b[1] += need
        return out

    # -- reading ------------------------------------------------------------------------------

    def _remember(self, batches: list[SpoolBatch]) -> None:
        recent = self._recent
        for b in batches:
            recent[b.seq] = b
            self._recent_records += len(b.records)
        while self._recent_records > self.memory_records and recent:
            old = recent.pop(self._recent_lo, None)
            if old is not None:
                self._recent_records -= len(old.records)
            self._recent_lo += 1

    def _forget_dropped(self, key: BatchKey, through: int) -> None:
        for seq, b in list(self._recent.items()):
            if b.key == key and seq <= through and not b.skipped:
                self._recent[seq] = b._replace(records=[], nbytes=0, skipped=True, table=None)
                self._recent_records -= len(b.records)

    def _forget_through(self, seq: int) -> None:
        while self._recent_lo <= seq:
            old = self._recent.pop(self._recent_lo, None)
            if old is not None:
                self._recent_records -= len(old.records)
            self._recent_lo += 1

    def read_after(self, after_seq: int, max_records: int | None, *, upto: int | None = None) -> list[SpoolBatch]:
        """Batches with after_seq < seq <= upto (default: the committed head), in seq order,
        whole batches up to about max_records records (at least one batch; None = no limit).
        Batches of dropped LogStores are included, with no records, so offsets move past them."""
        head = self.head_seq if upto is None else min(upto, self.head_seq)
        if head <= after_seq:
            return []
        out: list[SpoolBatch] = []
        n = 0
        recent = self._recent
        seq = after_seq + 1
        while seq <= head:
            b = recent.get(seq)
            if b is None:  # not (or no longer) in memory: the rest comes from the file
                break
            out.append(b)
            n += len(b.records)
            if max_records is not None and n >= max_records:
                return out
            seq += 1
        if seq > head:
            return out
        more = None if max_records is None else max_records - n
        return out + self._read_file(seq - 1, head, more)

    def _read_file(self, after_seq: int, head: int, max_records: int | None) -> list[SpoolBatch]:
        raw = []
        n = 0
        with self._reading() as conn:
            cur = conn.execute(
                "SELECT b.seq, b.stored_ms, b.account_id, b.region, b.project, b.log_store, b.n, b.skipped, p.data "
                "FROM batches b LEFT JOIN payloads p ON p.seq = b.seq WHERE b.seq > ? AND b.seq <= ? ORDER BY b.seq",
                (after_seq, head),
            )
            for row in cur:
                raw.append(row)
                if not row[7]:
                    n += row[6]
                if max_records is not None and n >= max_records:
                    break
            cur.close()
        return [self._batch(r) for r in raw]

    @staticmethod
    def _batch(row: tuple) -> SpoolBatch:
        seq, stored_ms, account, region, project, log_store, n, skipped, data = row
        key = BatchKey(account, region, project, log_store)
        if skipped or data is None:
            return SpoolBatch(seq, stored_ms, key, [], 0, True)
        return SpoolBatch(seq, stored_ms, key, StoredRecords(data, key, n), len(data))

    def oldest_undelivered_ms(self, after_seq: int) -> int | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT stored_ms FROM batches WHERE seq > ? AND skipped = 0 ORDER BY seq LIMIT 1", (after_seq,)
            ).fetchone()
        return row[0] if row else None

    def plan_range(self, after_seq: int, max_records: int) -> int:
        """The last seq of the range after after_seq holding about max_records records (whole
        batches, at least one); after_seq when there is nothing after it."""
        last = after_seq
        n = 0
        with self._reading() as conn:
            cur = conn.execute(
                "SELECT seq, n, skipped FROM batches WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after_seq, self.head_seq),
            )
            for seq, k, skipped in cur:
                last = seq
                if not skipped:
                    n += k
                if n >= max_records:
                    break
            cur.close()
        return last

    def wait_for(self, after_seq: int, timeout: float) -> bool:
        """Wait until a batch after after_seq is committed (or timeout, wake(), close)."""
        with self._cond:
            wakes = self._wakes
            return self._cond.wait_for(
                lambda: self.head_seq > after_seq or self._closed or self._wakes != wakes, timeout
            )

    def wake(self) -> None:
        """Wake every thread blocked in wait_for() (e.g. so that a sink notices a stop)."""
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()

    # -- sinks --------------------------------------------------------------------------------

    # -- dropping and trimming ----------------------------------------------------------------

    def mark_dropped(self, key: BatchKey) -> int:
        """Mark every spooled batch of the LogStore skipped and delete its records; returns the
        head seq at that moment (later batches of a re-created LogStore are not affected).
        Durable when it returns."""

        def drop_op(c: sqlite3.Connection) -> int:
            rows = c.execute(
                "SELECT seq, n, bytes FROM batches WHERE account_id = ? AND region = ? AND project = ? "
                "AND log_store = ? AND skipped = 0 AND seq <= ?",
                (*key, self._w_head),
            ).fetchall()
            if rows:
                c.executemany("DELETE FROM payloads WHERE seq = ?", [(r[0],) for r in rows])
                c.executemany("UPDATE batches SET skipped = 1, bytes = 0 WHERE seq = ?", [(r[0],) for r in rows])
                for sink, b in self._w_backlog.items():
                    off = self._w_offsets[sink][0]
                    for seq, n, nbytes in rows:
                        if seq > off:
                            b[0] -= n
                            b[1] -= nbytes
                self._w_total -= sum(r[2] for r in rows)
            through = self._w_head
            self._after_commit.append(lambda: self._forget_dropped(key, through))
            return through

        through = self._submit(drop_op)
        log.info("spool dropped LogStore", extra={"log_store": "/".join(key), "through_seq": through})
        return through  # type: ignore[return-value]

    def trim(self) -> int:
        """Delete batches every sink has stored that are past the tail retention (age, or the
        delivered part over tail_retention_bytes). Returns how many batches were deleted."""
        total = 0
        while True:
            n: int = self._submit(self._op_trim)  # type: ignore[assignment]
            total += n
            if n < _TRIM_CHUNK:
                return total

    def _op_trim(self, c: sqlite3.Connection, max_batches: int = _TRIM_CHUNK) -> int:
        delivered = min((o[0] for o in self._w_offsets.values()), default=self._w_head)
        if delivered <= self._w_trimmed:
            return 0
        cut_ms = self._clock_ms() - int(self.tail_retention_s * 1000)
        row = c.execute("SELECT max(seq) FROM batches WHERE stored_ms < ? AND seq <= ?", (cut_ms, delivered)).fetchone()
        cut = row[0] or 0
        behind = max((b[1] for b in self._w_backlog.values()), default=0)
        excess = (self._w_total - behind) - self.tail_retention_bytes
        if excess > 0:  # delivered data over the byte budget: drop the oldest regardless of age
            freed = 0
            cur = c.execute("SELECT seq, bytes FROM batches WHERE seq <= ? ORDER BY seq", (delivered,))
            for seq, nbytes in cur:
                cut = max(cut, seq)
                freed += nbytes
                if freed >= excess:
                    break
            cur.close()
        if cut <= self._w_trimmed:
            return 0
        # Bound one transaction's work: appends wait behind it.
        row = c.execute(
            "SELECT seq FROM batches WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?", (self._w_trimmed, max_batches - 1)
        ).fetchone()
        if row is not None:
            cut = min(cut, row[0])
        count, nbytes, last_ms = c.execute(
            "SELECT count(*), COALESCE(sum(bytes), 0), max(stored_ms) FROM batches WHERE seq <= ?", (cut,)
        ).fetchone()
        c.execute("DELETE FROM payloads WHERE seq <= ?", (cut,))
        c.execute("DELETE FROM batches WHERE seq <= ?", (cut,))
        c.executemany(
            "INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)",
            [("trimmed_through", cut), ("trimmed_stored_ms", last_ms or self._w_trimmed_ms)],
        )
        self._w_trimmed = cut
        self._w_trimmed_ms = last_ms or self._w_trimmed_ms
        self._after_commit.append(lambda: self._forget_through(cut))
        self._w_total -= nbytes
        if count:
            log.debug("spool trimmed", extra={"through_seq": cut, "batches": count, "bytes": nbytes})
        return count

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Let queued work finish, stop the writer and close every connection. Everything that
        append() acknowledged is already durable; closing adds nothing to that."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        with self._cond:
            self._cond.notify_all()
        try:
            self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("spool checkpoint at close failed", extra={"error": repr(e)})
        self._wconn.close()
        with self._readers_lock:
            idle, self._idle_readers = self._idle_readers, []
        for conn in idle:
            conn.close()
        os.close(self._lock_fd)
