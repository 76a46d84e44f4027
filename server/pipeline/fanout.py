"""Fan-out: one worker thread per sink copies spooled batches to the query backend / archive.

Each worker follows its own durable offset in the spool, so a slow or failing sink delays only
itself: the other sink and ingestion go on (ingestion until the spool's byte bound). A failed
write is logged, marks the sink unhealthy and is retried with exponential backoff (0.2 s to
30 s, with jitter) forever: a batch is never skipped. When the backend's health probe sees it
come back, retry_now() ends the pause at once. Offsets advance only after the sink's
write has returned (durable there), so a crash redelivers at most the batches in flight, which
the sinks' idempotent writes absorb.

Dropped LogStores: Pipeline.drop_log_store() marks the spool's batches skipped, registers the
drop in the shared DropFence and waits until no write that could still carry those records is
in flight. Every write attempt (retries included) re-filters its batches through the fence, so
after that wait no worker can bring the dropped records back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from server.core import columns
from server.core.model import FlowRecord
from server.core.ports import ArchiveTableWriter, RecordArchive, RecordStore, TableWriter
from server.pipeline.spool import BatchKey, Spool, SpoolBatch

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 30.0


# The archive sink's target: server.core.ports.RecordArchive (server.archive.Archive).
ArchiveWriter = RecordArchive


def batch_records(batches: Sequence[SpoolBatch]) -> list[FlowRecord]:
    """The batches' records, in order."""
    out: list[FlowRecord] = []
    for b in batches:
        out.extend(b.records)
    return out


def batch_table(batches: Sequence[SpoolBatch]) -> object:
    """The batches' records as one Arrow table: the tables the spool made at append, chunk by
    chunk (no copy); batches read back from the file are decoded straight into tables
    (SpoolBatch.arrow)."""
    return columns.concat(b.arrow() for b in batches)


def batch_writer(
    rows: Callable[[list[FlowRecord]], object], table: Callable[[object], object] | None
) -> Callable[[list[SpoolBatch]], object]:
    """How a sink hands batches to its target: as one table when the target takes tables
    (`table` is its write_table), else as records; also as records when some value does not fit
    the table's types, so that the target's own rules decide (the archive keeps ports and flags
    as uint32, for one) instead of a conversion failing on every retry."""

    def write_rows(batches: list[SpoolBatch]) -> object:
        return rows(batch_records(batches))

    if table is None:
        return write_rows

    def write_table(batches: list[SpoolBatch]) -> object:
        try:
            whole = batch_table(batches)
        except ValueError:
            return write_rows(batches)
        return table(whole)

    return write_table


@dataclass(frozen=True)
class SinkStatus:
    name: str
    healthy: bool
    last_error: str
    lag_records: int  # spooled, not yet stored by this sink
    lag_bytes: int
    lag_batches: int
    delivered_seq: int

    @property
    def message(self) -> str:
        lag = f"{self.lag_records} records ({self.lag_batches} batches) waiting"
        return f"{self.last_error}; {lag}" if self.last_error else lag


class DropFence:
    """The LogStores dropped while this process runs, with the spool head at the drop: a batch
    of such a LogStore with seq <= that head must not reach a sink any more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dropped: dict[BatchKey, int] = {}
        self.generation = 0

    def add(self, key: BatchKey, through_seq: int) -> int:
        with self._lock:
            self._dropped[key] = max(through_seq, self._dropped.get(key, 0))
            self.generation += 1
            return self.generation

    def keep(self, batch: SpoolBatch) -> bool:
        through = self._dropped.get(batch.key)
        return through is None or batch.seq > through


class SinkWorker:
    """The loop, retry and shutdown shared by both sinks; subclasses say what one delivery is."""

    def __init__(
        self,
        name: str,
        spool: Spool,
        fence: DropFence | None = None,
        *,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.name = name
        self.spool = spool
        self.fence = fence or DropFence()
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._thread = threading.Thread(target=self._main, name=f"flowlog-sink-{name}", daemon=True)
        self._draining = threading.Event()  # stop() was called: deliver what is spooled, then exit
        self._abort = threading.Event()  # the drain deadline passed: exit now
        self._wake = threading.Event()  # ends a backoff pause early: abort, or retry_now()
        self._deadline = float("inf")
        self._healthy = True
        self._last_error = ""
        self._failing_since = 0.0
        self._cond = threading.Condition()
        self._attempt_gen: int | None = None  # fence generation of the write in flight
        self.delivered_seq = spool.sink_offset(name).seq

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def begin_stop(self, deadline: float) -> None:
        """Ask the worker to deliver what is spooled by `deadline` (time.monotonic()), then exit."""
        self._deadline = deadline
        self._draining.set()
        self.spool.wake()

    def join(self, deadline: float) -> bool:
        """Wait for the worker until deadline; past it, make it give up (its offset stays where
        the last durable write left it). True when it exited having delivered everything."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abort.set()
            self._wake.set()
            self._thread.join(1.0)
            if self._thread.is_alive():
                log.warning("sink worker still inside a write at shutdown; leaving it", extra={"sink": self.name})
        return not self._thread.is_alive() and self.delivered_seq >= self.spool.head_seq

    def stop(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self.begin_stop(deadline)
        return self.join(deadline)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- status -------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    def status(self) -> SinkStatus:
        records, nbytes = self.spool.backlog(self.name)
        delivered = self.spool.sink_offset(self.name).seq
        return SinkStatus(
            self.name,
            self._healthy,
            self._last_error,
            records,
            nbytes,
            max(0, self.spool.head_seq - delivered),
            delivered,
        )

    def retry_now(self) -> None:
        """The backend is reachable again (its health probe recovered): end the current backoff
        pause now instead of after up to backoff_max_s, so delivery resumes within a health
        interval of the backend's return."""
        if not self._healthy:
            self._wake.set()

    # -- fence ------------------------------------------------------------------------------

    def wait_writes_before(self, generation: int, timeout: float) -> bool:
        """Wait until no write that started before fence generation `generation` is in flight."""
        with self._cond:
            return self._cond.wait_for(lambda: self._attempt_gen is None or self._attempt_gen >= generation, timeout)

    # -- delivery -----------------------------------------------------------------------------

    def _stopping_now(self) -> bool:
        return self._abort.is_set() or (self._draining.is_set() and time.monotonic() >= self._deadline)

    def _deliver(self, batches: list[SpoolBatch], write: Callable[[list[SpoolBatch]], object]) -> bool:
        """Write the batches (minus empty ones and dropped LogStores) until it succeeds. False
        when the shutdown deadline passed first (nothing is acknowledged then)."""
        delay = self.backoff_min_s
        while True:
            with self._cond:
                self._attempt_gen = self.fence.generation
            try:
                kept = [b for b in batches if b.records and self.fence.keep(b)]
                if kept:
                    write(kept)
            except Exception as e:  # noqa: BLE001 - any backend error: retry, never skip
                now = time.monotonic()
                if self._healthy:
                    self._failing_since = now
                self._healthy = False
                self._last_error = f"{type(e).__name__}: {e}"[:500]
                self.spool.sink_notes[self.name] = f"failing for {now - self._failing_since:.0f}s: {self._last_error}"
                log.warning(
                    "sink write failed; will retry",
                    extra={
                        "sink": self.name,
                        "error": self._last_error,
                        "first_seq": batches[0].seq,
                        "last_seq": batches[-1].seq,
                        "records": sum(len(b.records) for b in batches),
                        "retry_in_s": round(delay, 2),
                    },
                )
            else:
                if not self._healthy:
                    log.info(
                        "sink recovered",
                        extra={"sink": self.name, "after_s": round(time.monotonic() - self._failing_since, 1)},
                    )
                self._healthy = True
                self._last_error = ""
                self.spool.sink_notes.pop(self.name, None)
                return True
            finally:
                with self._cond:
                    self._attempt_gen = None
                    self._cond.notify_all()
            if self._stopping_now():
                return False
            pause = delay * random.uniform(0.5, 1.0)
            if self._draining.is_set():
                pause = min(pause, max(0.0, self._deadline - time.monotonic()))
            if self._wake.wait(pause) and not self._abort.is_set():
                delay = self.backoff_min_s  # retry_now(): the backend is back, start over
            else:
                delay = min(delay * 2, self.backoff_max_s)
            self._wake.clear()

    def _commit(self, seq: int) -> None:
        self.spool.commit_offset(self.name, seq)
        self.delivered_seq = seq

    def _main(self) -> None:
        try:
            self._loop()
        except Exception:  # noqa: BLE001 - e.g. the spool closed under us
            if not (self._draining.is_set() or self._abort.is_set()):
                self._healthy = False
                self._last_error = "sink worker crashed; see the server log"
                log.exception("sink worker crashed", extra={"sink": self.name})
        log.info(
            "sink worker stopped",
            extra={"sink": self.name, "delivered_seq": self.delivered_seq, "head_seq": self.spool.head_seq},
        )

    def _loop(self) -> None:
        raise NotImplementedError


class RecordSinkWorker(SinkWorker):
    """Copies the spool to the query backend (RecordStore.write is idempotent by record_id and
    durable + searchable on return), coalescing up to `coalesce_records` per write."""

    def __init__(
        self,
        name: str,
        spool: Spool,
        store: RecordStore,
        fence: DropFence | None = None,
        *,
        coalesce_records: int = 20_000,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        super().__init__(name, spool, fence, backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s)
        self.store = store
        self.coalesce_records = coalesce_records
        self._write = batch_writer(store.write, store.write_table if isinstance(store, TableWriter) else None)

    def _loop(self) -> None:
        offset = self.delivered_seq
        while not self._abort.is_set():
            batches = self.spool.read_after(offset, self.coalesce_records)
            if not batches:
                if self._draining.is_set():
                    return
                self.spool.wait_for(offset, 0.5)  # woken by the next commit, or by stop()
                continue
            if not self._deliver(batches, self._write):
                return
            offset = batches[-1].seq
            self._commit(offset)


class ArchiveSinkWorker(SinkWorker):
    """Copies the spool to the archive in large objects.

    A range is written when the backlog after the offset reaches max_records, when its oldest
    batch is older than max_age_s, or on shutdown. Before writing, the range's end is stored
    durably as `pending_to`; the batch id is derived from the range alone
    (`<writer_id>-<first seq>-<last seq>`), so after a crash the same range is rewritten under
    the same id: same object names, overwritten, no duplicates. writer_id (the spool's id) keeps
    two servers sharing one bucket from overwriting each other's objects.
    """

    def __init__(
        self,
        name: str,
        spool: Spool,
        archive: ArchiveWriter,
        fence: DropFence | None = None,
        *,
        max_records: int = 50_000,
        max_age_s: float = 60.0,
        writer_id: str | None = None,
        poll_s: float = 0.2,
        clock_ms: Callable[[], int] | None = None,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        super().__init__(name, spool, fence, backoff_min_s=backoff_min_s, backoff_max_s=backoff_max_s)
        self.archive = archive
        self._write_table = archive.write_table if isinstance(archive, ArchiveTableWriter) else None
        self.max_records = max_records
        self.max_age_s = max_age_s
        self.writer_id = writer_id or spool.spool_id
        self._poll_s = poll_s
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def batch_id(self, offset: int, last_seq: int) -> str:
        return f"{self.writer_id}-{offset + 1:012d}-{last_seq:012d}"

    def _flush(self, offset: int, last_seq: int) -> bool:
        batches = self.spool.read_after(offset, None, upto=last_seq)
        batch_id = self.batch_id(offset, last_seq)
        write_table = self._write_table
        write = batch_writer(
            lambda records: self.archive.write_batch(batch_id, records),
            (lambda table: write_table(batch_id, table)) if write_table is not None else None,
        )
        if batches and not self._deliver(batches, write):
            return False
        self._commit(last_seq)
        return True

    def _due(self, offset: int) -> bool:
        if self._draining.is_set():
            return True
        records, _ = self.spool.backlog(self.name)
        if records == 0 or records >= self.max_records:
            return True  # 0: only dropped batches to step over
        oldest = self.spool.oldest_undelivered_ms(offset)
        return oldest is None or self._clock_ms() - oldest >= self.max_age_s * 1000

    def _loop(self) -> None:
        pending = self.spool.sink_offset(self.name).pending_to
        offset = self.delivered_seq
        if pending is not None and pending > offset:
            log.info(
                "rewriting the archive range interrupted by a crash",
                extra={"sink": self.name, "batch_id": self.batch_id(offset, pending)},
            )
            if not self._flush(offset, pending):
                return
            offset = pending
        while not self._abort.is_set():
            if self.spool.head_seq <= offset:
                if self._draining.is_set():
                    return
                self.spool.wait_for(offset, 0.5)
                continue
            if not self._due(offset):
                self._draining.wait(self._poll_s)
                continue
            last = self.spool.plan_range(offset, self.max_records)
            if last <= offset:
                continue
            self.spool.set_pending(self.name, last)
            if not self._flush(offset, last):
                return
            offset = last
