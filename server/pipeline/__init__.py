"""The record pipeline: durable spool, fan-out to the query backend and the archive, live Tail.

    submit(records) ──> Spool (SQLite WAL, group commit) ── durable: submit returns ──┐
                          │ on commit, in seq order                                    │
                          ▼                                                            │
                        Hub ──> TailSession (replay from the spool, then live)         │
                          RecordSinkWorker  ──> query backend  (own offset, retries) <─┤
                          ArchiveSinkWorker ──> archive        (own offset, retries) <─┘

`submit()` returning is the durability point: Ingest acknowledges after it. The backends
receive the records asynchronously, each at its own pace; `wait_delivered()` tells when they
have them (the query backend within milliseconds when healthy, the archive when its object is
due: archive_max_records or archive_max_age_s).

Backpressure: while a healthy sink is further behind than the spool keeps in memory, submit()
first waits (up to pace_max_s) for it to catch up. Past that window a sink reads each batch
back from the spool file and decodes it, CPU that ingestion needs too: on 2 cores, letting the
backlog run ahead made the whole server slower (bench, embedded: acknowledged 260k records/s but
searchable 168k; paced: 195k searchable). A failing sink is never waited for (the spool holds
its backlog up to max_spool_bytes), and no submit waits longer than pace_max_s.

Columns: when a sink's target takes Arrow tables (the TableWriter and ArchiveTableWriter abilities
of server.core.ports, checked once here),
the spool makes each batch's table once at append, from the columns it builds for its own
encoding, and the sinks hand those tables over chunk by chunk: one row-to-column conversion per
record in all, instead of one in each sink.

Nothing here imports gRPC or a particular backend: the query store (server.core.ports.
RecordStore) and the archive (server.archive.Archive) are injected.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, cast

from server.core.errors import Unavailable
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import ArchiveTableWriter, RecordArchive, RecordStore, TableWriter
from server.pipeline.fanout import ArchiveSinkWorker, DropFence, RecordSinkWorker, SinkStatus, SinkWorker
from server.pipeline.hub import Hub
from server.pipeline.replicated import MergedTailSession, ReplicaTails
from server.pipeline.spool import BatchKey, Spool
from server.pipeline.tail import CursorCodec, TailSession

__all__ = ["Pipeline", "SinkStatus", "TailSession"]

log = logging.getLogger(__name__)

QUERY_SINK = "query"
ARCHIVE_SINK = "archive"


class Pipeline:
    """Wires spool, hub and sink workers. start() before use; stop() drains and closes."""

    def __init__(
        self,
        data_dir: Path | str,
        query_store: RecordStore,
        archive: RecordArchive | None = None,
        *,
        cursor_secret: bytes,
        max_spool_bytes: int = 2 * 1024**3,
        tail_retention_s: float = 3600.0,
        tail_retention_bytes: int = 1024**3,
        archive_max_records: int = 50_000,
        archive_max_age_s: float = 60.0,
        tail_buffer_records: int = 50_000,
        heartbeat_s: float = 15.0,
        coalesce_records: int = 20_000,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 30.0,
        pace_max_s: float = 0.25,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.query_store = query_store
        self.archive = archive
        self._cursor_secret = cursor_secret
        self.max_spool_bytes = max_spool_bytes
        self.tail_retention_s = tail_retention_s
        self.tail_retention_bytes = tail_retention_bytes
        self._archive_max_records = archive_max_records
        self._archive_max_age_s = archive_max_age_s
        self._heartbeat_s = heartbeat_s
        self._coalesce_records = coalesce_records
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self.hub = Hub(max_records=tail_buffer_records)
        self.fence = DropFence()
        self.spool: Spool | None = None
        self.workers: dict[str, SinkWorker] = {}
        self._codec: CursorCodec | None = None
        # Set by attach_replicas() when replicas share the metadata store (None: one process).
        self.replicas: ReplicaTails | None = None
        self._state_lock = threading.Condition()
        self._accepting = False
        self._inflight = 0
        # Submits in flight per epoch (see _barrier): a LogStore's drop waits for those that
        # started before it, so none of them can spool records behind the drop.
        self._epoch = 0
        self._inflight_by_epoch: dict[int, int] = {}
        self._drop_lock = threading.Lock()
        self.pace_max_s = pace_max_s
        self._pace_records = 0
        self.paced_calls = 0  # submits held back by _pace, and for how long in all
        self.paced_seconds = 0.0
        self._paced_logged = float("-inf")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool and start the sink workers. They resume from their durable offsets
        (a pending archive range is rewritten first)."""
        # The spool keeps the latest records in memory for the sinks: enough for a whole archive
        # range plus a query write, so that sinks keeping up never read back and decode the file;
        # submit() paces ingestion to keep healthy sinks inside it.
        archive_range = self._archive_max_records if self.archive is not None else 0
        memory_records = max(50_000, 2 * archive_range, 2 * self._coalesce_records)
        self._pace_records = memory_records - self._coalesce_records
        spool = Spool(
            self.data_dir / "spool.db",
            max_spool_bytes=self.max_spool_bytes,
            tail_retention_s=self.tail_retention_s,
            tail_retention_bytes=self.tail_retention_bytes,
            on_commit=self.hub.publish,
            memory_records=memory_records,
            tables=isinstance(self.query_store, TableWriter) or isinstance(self.archive, ArchiveTableWriter),
        )
        self.spool = spool
        self.hub.last_seq = spool.head_seq
        sinks = [QUERY_SINK] + ([ARCHIVE_SINK] if self.archive is not None else [])
        spool.register_sinks(sinks)
        self._codec = CursorCodec(self._cursor_secret, spool.spool_id)
        self.workers[QUERY_SINK] = RecordSinkWorker(
            QUERY_SINK,
            spool,
            self.query_store,
            self.fence,
            coalesce_records=self._coalesce_records,
            backoff_min_s=self._backoff_min_s,
            backoff_max_s=self._backoff_max_s,
        )
        if self.archive is not None:
            self.workers[ARCHIVE_SINK] = ArchiveSinkWorker(
                ARCHIVE_SINK,
                spool,
                self.archive,
                self.fence,
                max_records=self._archive_max_records,
                max_age_s=self._archive_max_age_s,
                backoff_min_s=self._backoff_min_s,
                backoff_max_s=self._backoff_max_s,
            )
        for w in self.workers.values():
            w.start()
        with self._state_lock:
            self._accepting = True
        log.info("pipeline started", extra={"head_seq": spool.head_seq, "sinks": sinks})

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop accepting, let the sinks deliver what is spooled (the archive writes its last
        object) within `timeout` seconds, close Tail sessions and the spool. Records not
        delivered by then stay in the spool and are delivered at the next start. Returns True
        when every sink got everything."""
        deadline = time.monotonic() + timeout
        with self._state_lock:
            self._accepting = False
            self._state_lock.wait_for(lambda: self._inflight == 0, max(0.0, deadline - time.monotonic()))
        self.hub.close()
        for w in self.workers.values():
            w.begin_stop(deadline)
        drained = all([w.join(deadline) for w in self.workers.values()])
        if self.spool is not None:
            head = self.spool.head_seq
            behind = {n: o.seq for n, o in self.spool.sink_offsets().items() if o.seq < head}
            if behind:
                log.warning(
                    "stopping with records not yet delivered; they stay spooled for the next start",
                    extra={"head_seq": head, "sinks_behind": behind},
                )
            self.spool.close()
        log.info("pipeline stopped", extra={"drained": drained})
        return drained

    # -- ingestion ----------------------------------------------------------------------------

    def submit(
        self,
        records: Sequence[FlowRecord],
        prepared: tuple[bytes, object] | None = None,
        admit: Callable[[], object] | None = None,
    ) -> int:
        """Spool the records (complete, validated, with record_id); durable when this returns.
        Returns the highest seq given to them (for wait_delivered). Raises ResourceExhausted
        when a backend is too far behind (spool bound), Unavailable when stopping. `prepared`:
        see Spool.append_batches.

        `admit` (optional) is called once the submit counts as in flight, before anything is
        spooled; whatever it raises refuses the submit. Callers check there that their flow log
        still exists and is ACTIVE: a LogStore's drop (drop_log_store) first waits for the
        submits in flight, so a check passed in `admit` can never let records land behind it."""
        with self._state_lock:
            if not self._accepting or self.spool is None:
                raise Unavailable("the record pipeline is not running (the server is starting or stopping)")
            self._inflight += 1
            epoch = self._epoch
            self._inflight_by_epoch[epoch] = self._inflight_by_epoch.get(epoch, 0) + 1
        try:
            if admit is not None:
                admit()
            self._pace()
            return self.spool.append(records, prepared)
        finally:
            with self._state_lock:
                self._inflight -= 1
                n = self._inflight_by_epoch[epoch] - 1
                if n:
                    self._inflight_by_epoch[epoch] = n
                else:
                    del self._inflight_by_epoch[epoch]
                self._state_lock.notify_all()

    def _barrier(self, timeout: float) -> bool:
        """Wait until every submit that was in flight when this was called has finished (later
        submits do not hold it up). True unless `timeout` passed first."""
        with self._state_lock:
            self._epoch += 1
            epoch = self._epoch
            return self._state_lock.wait_for(lambda: all(e >= epoch for e in self._inflight_by_epoch), timeout)

    def _pace(self) -> None:
        """Hold a submit back while a healthy sink is further behind than the spool keeps in
        memory (minus one query write), until it is not or pace_max_s has passed."""
        spool = cast(Spool, self.spool)  # submit() found it open
        limit = self._pace_records
        behind = [n for n, w in self.workers.items() if w.healthy and spool.backlog(n)[0] > limit]
        if not behind or self.pace_max_s <= 0:
            return
        t0 = time.monotonic()
        spool.wait_backlog(limit, behind, self.pace_max_s)
        waited = time.monotonic() - t0
        with self._state_lock:
            self.paced_calls += 1
            self.paced_seconds += waited
            report = t0 - self._paced_logged >= 60.0
            if report:
                self._paced_logged = t0
        if report:  # at most once a minute: a backend slower than the clients paces every call
            log.info(
                "ingestion paced: a backend is further behind than the spool keeps in memory",
                extra={
                    "sinks": {n: spool.backlog(n)[0] for n in behind},
                    "limit_records": limit,
                    "waited_s": round(waited, 3),
                    "paced_calls": self.paced_calls,
                    "paced_seconds": round(self.paced_seconds, 1),
                },
            )

    def wait_delivered(self, seq: int, timeout: float, sinks: Sequence[str] | None = None) -> bool:
        """Wait until the sinks (default: all) have stored everything through seq."""
        assert self.spool is not None
        return self.spool.wait_offsets(seq, sinks, timeout)

    # -- tail -----------------------------------------------------------------------------------

    def tail(
        self,
        account_id: str,
        region: str,
        project: str,
        log_stores: Sequence[str],
        predicate: Callable[[FlowRecord], bool] | None = None,
        *,
        start_ms: int | None = None,
        cursor: str | None = None,
        heartbeat_s: float | None = None,
        check: Callable[[], object] | None = None,
        filter_text: str = "",
    ) -> TailSession | MergedTailSession:
        """A Tail session over LogStores of one project (see server.pipeline.tail). The caller
        has checked that the LogStores exist and belong to the account; `predicate` is the
        compiled filter (server.core.filter.compile_predicate) of `filter_text`. With replicas
        (attach_replicas), a session over every replica's spool (server.pipeline.replicated)."""
        if self.spool is None or self._codec is None or not self._accepting:
            raise Unavailable("the record pipeline is not running (the server is starting or stopping)")
        hb = self._heartbeat_s if heartbeat_s is None else heartbeat_s
        if self.replicas is None:
            return TailSession(
                self.spool,
                self.hub,
                self._codec,
                account_id,
                region,
                project,
                log_stores,
                predicate,
                start_ms=start_ms,
                cursor=cursor,
                heartbeat_s=hb,
                buffer_records=self.hub.default_max_records,
                check=check,
            )
        spool, hub, codec = self.spool, self.hub, self._codec
        r = self.replicas

        def open_local(position: tuple[int, int] | None, start_ms: int | None) -> TailSession:
            return TailSession(
                spool,
                hub,
                codec,
                account_id,
                region,
                project,
                log_stores,
                predicate,
                start_ms=start_ms,
                position=position,
                heartbeat_s=max(0.2, hb / 2),
                buffer_records=hub.default_max_records,
                check=check,
            )

        return MergedTailSession(
            local_spool_id=spool.spool_id,
            open_local=open_local,
            peers=r.peers,
            snapshot=r.snapshot,
            live_ms=r.live_ms,
            codec=r.codec,
            account_id=account_id,
            region=region,
            project=project,
            log_stores=log_stores,
            scope=CursorCodec.scope(region, project, log_stores),
            filter_text=filter_text,
            start_ms=start_ms,
            cursor=cursor,
            heartbeat_s=hb,
            skew_ms=r.skew_ms,
        )

    def attach_replicas(self, replicas: "ReplicaTails") -> None:
        """From now on Tail sessions follow every replica's spool (server.pipeline.replicated)."""
        self.replicas = replicas

    def spool_stream(
        self,
        account_id: str,
        region: str,
        project: str,
        log_stores: Sequence[str],
        predicate: Callable[[FlowRecord], bool] | None,
        *,
        position: tuple[int, int] | None,
        start_ms: int | None,
        heartbeat_s: float,
    ) -> TailSession:
        """This replica's spool from a raw position (or a stored-since time) for another
        replica's merged Tail (ReplicaService.StreamSpool): the Tail logic without cursors."""
        if self.spool is None or not self._accepting:
            raise Unavailable("the record pipeline is not running (the server is starting or stopping)")
        return TailSession(
            self.spool,
            self.hub,
            None,
            account_id,
            region,
            project,
            log_stores,
            predicate,
            start_ms=start_ms,
            position=position,
            heartbeat_s=heartbeat_s,
            buffer_records=self.hub.default_max_records,
        )

    # -- health, deletion -----------------------------------------------------------------------

    def sink_status(self) -> dict[str, SinkStatus]:
        return {name: w.status() for name, w in self.workers.items()}

    def retry_now(self, sink: str) -> None:
        """Tell a failing sink that its backend is reachable again (SinkWorker.retry_now)."""
        worker = self.workers.get(sink)
        if worker is not None:
            worker.retry_now()

    def health(self) -> dict[str, tuple[bool, str]]:
        """(healthy, detail) per sink ("query", "archive"): unhealthy while its writes fail."""
        return {name: (s.healthy, s.message) for name, s in self.sink_status().items()}

    def end_tails(self, account_id: str, key: LogStoreKey, error: Exception) -> int:
        """End every open Tail that reads the LogStore: its next event raises `error` (the
        LogStore was deleted). Returns how many were ended."""
        return self.hub.end_key(BatchKey(account_id, key.region, key.project, key.name), error)

    def drop_log_store(self, account_id: str, key: LogStoreKey, timeout: float = 30.0) -> None:
        """Forget the LogStore's spooled records: first waits for the submits in flight (see
        submit's `admit`), then marks its batches skipped (their records are deleted from the
        spool), then waits until no sink write that could still carry them is in flight, so
        that the caller's following delete in the query backend and the archive is final.
        Raises Unavailable if a submit or a sink write does not finish within `timeout`.
        Idempotent: the purger runs it again after a failure or a restart."""
        if self.spool is None:
            raise Unavailable("the record pipeline is not running")
        bkey = BatchKey(account_id, key.region, key.project, key.name)
        with self._drop_lock:
            deadline = time.monotonic() + timeout
            if not self._barrier(timeout):
                raise Unavailable("an Ingest call in flight is slow to finish; retry the deletion")
            through = self.spool.mark_dropped(bkey)
            generation = self.fence.add(bkey, through)
            for w in self.workers.values():
                if not w.wait_writes_before(generation, max(0.0, deadline - time.monotonic())):
                    raise Unavailable(f"the {w.name} backend is slow to finish a write; retry the deletion")
