"""Ports: the small interfaces the core needs, implemented by backends/ (adapters).

Each storage role is its own interface (Jaeger's habit): metadata, record search (the query
backend), the archive and the object storage under it, the record pipeline the use cases hand
records to. Each implementation says in its docstring exactly when written data is durable.

Abilities a backend may or may not have are small declared Protocols of their own
(`TableWriter`, `ArrowSearch`, `RecordAggregation`, `ArchiveTableWriter`, `CompiledIngest`): the
composition root (server.app) or the object that uses one checks `isinstance(x, Ability)` once
when it is wired, never with hasattr/getattr on the hot path.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, runtime_checkable

from server.core.model import FlowLog, FlowLogState, FlowRecord, LogStore, LogStoreKey, Resource, ResourceType


@dataclass(frozen=True)
class Tombstone:
    """A deleted LogStore whose records are not yet purged from every backend. It is invisible to
    every API from the moment it is written; the purger removes it once the purge is done, and
    until then the name cannot be used again (so a new LogStore never sees old records)."""

    account_id: str
    key: LogStoreKey
    deleted_ms: int
    attempts: int = 0
    last_error: str = ""


class MetadataTx(Protocol):
    """One transaction on the metadata store. Reads inside see writes made before them in it.

    Every method is scoped to one account: another account's objects are invisible.
    List methods return up to `limit` items strictly after `after` in the store's stable order
    (resources and flow logs by id; LogStores by (region, project, name)).
    """

    # resources
    def get_resource(self, account: str, resource_id: str) -> Resource | None: ...
    def list_resources(
        self, account: str, *, region: str, type: ResourceType, network_id: str, after: str, limit: int
    ) -> list[Resource]: ...
    def insert_resource(self, resource: Resource) -> None: ...
    def delete_resource(self, account: str, resource_id: str) -> None: ...
    def count_resources(self, account: str) -> int: ...

    # LogStores
    def get_log_store(self, account: str, key: LogStoreKey) -> LogStore | None: ...
    def list_log_stores(
        self, account: str, *, region: str, project: str, after: tuple[str, str, str] | None, limit: int
    ) -> list[LogStore]: ...
    def insert_log_store(self, log_store: LogStore) -> None: ...
    def update_log_store(self, log_store: LogStore) -> None: ...
    def delete_log_store(self, account: str, key: LogStoreKey) -> None: ...
    def count_log_stores(self, account: str) -> int: ...

    # LogStores being purged (Tombstone)
    def insert_tombstone(self, account: str, key: LogStoreKey, deleted_ms: int) -> None: ...
    def tombstone_exists(self, account: str, key: LogStoreKey) -> bool: ...

    # flow logs
    def get_flow_log(self, account: str, flow_log_id: str) -> FlowLog | None: ...
    def list_flow_logs(
        self, account: str, *, region: str, resource_id: str, state: FlowLogState, after: str, limit: int
    ) -> list[FlowLog]: ...
    def count_flow_logs(self, account: str, region: str) -> int: ...
    def flow_logs_using_resource(self, account: str, resource_id: str) -> list[str]: ...
    def flow_logs_delivering_to(self, account: str, key: LogStoreKey) -> list[str]: ...
    def flow_log_name_taken(self, account: str, region: str, name: str, exclude_id: str = "") -> bool: ...
    def insert_flow_log(self, flow_log: FlowLog) -> None: ...
    def update_flow_log(self, flow_log: FlowLog) -> None: ...
    def delete_flow_log(self, account: str, flow_log_id: str) -> None: ...

    # idempotency of CreateFlowLog (rule 9)
    def get_client_token(self, account: str, token: str) -> tuple[str, str] | None:
        """(request fingerprint, flow log id) stored for the token, if any."""
        ...

    def put_client_token(self, account: str, token: str, fingerprint: str, flow_log_id: str) -> None: ...


class MetadataStore(Protocol):
    def transaction(self) -> AbstractContextManager[MetadataTx]:
        """A serialisable read-write transaction: commits on normal exit, rolls back on error.

        Concurrent transactions are serialised, so check-then-insert (quota, unique names) is
        exact under any concurrency.
        """
        ...

    def all_flow_logs(self) -> list[FlowLog]:
        """Every flow log of every account (for the record generator and the pipeline)."""
        ...

    def all_log_stores(self) -> list[LogStore]:
        """Every LogStore of every account (for retention)."""
        ...

    def resource_of(self, account: str, resource_id: str) -> Resource | None:
        """The account's resource, outside any transaction (for the record generator)."""
        ...

    def setting(self, key: str, default: bytes) -> bytes:
        """A server-wide setting kept with the metadata (e.g. the page token secret): its stored
        value, or `default`, stored first when the key has none (the first caller's value wins)."""
        ...

    def generation(self) -> int:
        """A number that changes after every committed change to a flow log, a LogStore or a
        tombstone. Open Ingest and Tail streams compare it per message (a read of a counter, no
        query) and re-read their flow log / LogStores only when it moved: that is how a pause or
        a deletion reaches a stream already open."""
        ...

    def tombstones(self) -> list[Tombstone]:
        """Every LogStore awaiting its purge, oldest deletion first."""
        ...

    def purge_failed(self, account: str, key: LogStoreKey, error: str) -> None:
        """Count a failed purge attempt and keep its error (for the log and health)."""
        ...

    def remove_tombstone(self, account: str, key: LogStoreKey) -> None:
        """The purge is done everywhere: the name may be used again."""
        ...

    def regions_in_use(self) -> dict[str, int]:
        """Objects (resources, LogStores, flow logs) per region, over every account."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RecordQuery:
    """What a query backend is asked: records of some LogStores of one project and region.

    `start_ms <= start_time < end_ms`. `filter` is a server.core.filter expression (or None).
    Order is by (start_time, record_id), descending when `newest_first`. `after` is the
    (start_time, record_id) of the last record already returned: results continue strictly
    after it in the chosen order.
    """

    account_id: str
    region: str
    project: str
    log_stores: tuple[str, ...]
    start_ms: int
    end_ms: int
    filter: object | None = None
    newest_first: bool = True
    after: tuple[int, str] | None = None
    limit: int = 1000


class RecordStore(Protocol):
    """The query backend (embedded DuckDB, Elasticsearch): keeps records, answers queries."""

    name: str

    def write(self, records: Sequence[FlowRecord]) -> None:
        """Store records. Idempotent by record_id: writing a record again never duplicates it.

        When this returns, the records are durable in the backend and searchable.

        A store may also be a `TableWriter`: the same write given the records as one Arrow
        table (server.core.columns.SCHEMA). The record pipeline uses it when present, so a store
        that converts rows to columns anyway skips the conversion."""
        ...

    def search(self, query: RecordQuery, batch_size: int = 1000) -> Iterator[list[FlowRecord]]:
        """Yield the matching records in order, in batches of at most batch_size, up to
        query.limit records in all. Reads lazily: the first batch comes before later ones are
        read, and memory stays bounded by a few batches."""
        ...

    def count(self, query: RecordQuery) -> int:
        """How many records match, ignoring `after` and `limit`."""
        ...

    def drop_log_store(self, account_id: str, key: LogStoreKey) -> None:
        """Delete every record of the LogStore."""
        ...

    def enforce_retention(self, account_id: str, key: LogStoreKey, retention_days: int, now_ms: int) -> int:
        """Drop records of whole days older than retention_days before now (UTC days). Returns
        the number of days (indices/partitions) dropped."""
        ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore(Protocol):
    """Bytes below, encoding above (Loki's habit): a byte-level object store.

    put() is durable when it returns (the local folder writes a temp file, fsyncs and renames;
    S3 returns after the object is stored)."""

    name: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...
    def delete(self, keys: Iterable[str]) -> None: ...
    def healthy(self) -> bool: ...
    def close(self) -> None: ...


@runtime_checkable
class RecordAggregation(Protocol):
    """Optional ability of a RecordStore: Aggregate pushed down to where the records are.

    aggregate() returns every group of the request (server.core.aggregate.AggregateQuery: its
    group keys per time bucket, with [count] + one value per metric, keys in the canonical form
    that module's docstring fixes); server.core.aggregate.finish() ranks them and keeps the top
    N. Every exact value equals server.core.aggregate.evaluate()'s over the same records. It
    holds at most `max_groups` groups (more: ResourceExhausted naming
    limits.aggregate_max_groups) and gives up at `deadline` (ResourceExhausted naming
    limits.aggregate_timeout_seconds): never memory or time without bound.
    """

    def aggregate(self, query: Any) -> Any: ...


@runtime_checkable
class TableWriter(Protocol):
    """Optional ability of a RecordStore: RecordStore.write given one Arrow table
    (server.core.columns.SCHEMA), with the same durability."""

    def write_table(self, table: Any) -> None: ...


@runtime_checkable
class ArrowSearch(Protocol):
    """Optional ability of a RecordStore: RecordStore.search yielding Arrow tables (the columns
    of server.core.columns.SCHEMA) instead of FlowRecord lists, same order, batching and limit."""

    def search_arrow(self, query: RecordQuery, batch_size: int = 1000) -> Iterator[Any]: ...


class RecordArchive(Protocol):
    """The archive role (server.archive.Archive over an ObjectStore): large objects of records
    laid out by account/region/project/log_store/day/hour. write_batch is durable on return and
    idempotent by batch_id (the same batch id and records write the same objects)."""

    @property
    def name(self) -> str: ...

    def write_batch(self, batch_id: str, records: Sequence[FlowRecord]) -> list[str]: ...

    def delete_log_store(self, account_id: str, key: LogStoreKey) -> int: ...

    def enforce_retention(self, account_id: str, key: LogStoreKey, retention_days: int, now_ms: int) -> int: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


@runtime_checkable
class ArchiveTableWriter(Protocol):
    """Optional ability of a RecordArchive: write_batch given one Arrow table."""

    def write_table(self, batch_id: str, table: Any) -> list[str]: ...


class TailEvents(Protocol):
    """A Tail session: yields (kind, payload, cursor) events, kind "records" (payload: the
    records of one batch, or, from another replica, those records already encoded as a
    flowlog.v1.RecordBatch: `bytes`) or "heartbeat"; close() ends it (and wakes a reader waiting
    in it)."""

    def __iter__(self) -> Iterator[tuple[str, Any, str]]: ...

    def __next__(self) -> tuple[str, Any, str]: ...

    def close(self) -> None: ...


class RecordPipeline(Protocol):
    """Where the use cases hand records (server.pipeline.Pipeline): the durable spool in front of
    the backends, and the live Tail over it."""

    def submit(
        self,
        records: Sequence[FlowRecord],
        prepared: tuple[bytes, Any] | None = None,
        admit: Callable[[], object] | None = None,
    ) -> int:
        """Spool the records; durable when this returns (Ingest acknowledges after it).
        `prepared` is (spool payload, Arrow table) of the records when already made; `admit`
        is called once the submit is in flight and refuses it by raising."""
        ...

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
    ) -> TailEvents:
        """A Tail session over LogStores the caller has checked; `check` raises to end it.
        `predicate` is `filter_text` compiled (replicas apply the text at their source)."""
        ...


@runtime_checkable
class CompiledIngest(Protocol):
    """Optional: the compiled Ingest path (server/native/_fastingest.c, built when a C compiler is
    there). It reads an IngestRequest's bytes (or the collector's decoded flows) and takes only
    batches in which every record passes every check; anything else it declines (None) and the
    Python path decides."""

    def split(self, message: bytes) -> tuple[str, int] | None:
        """(flow_log_id, number of records) of the message, or None: not for the compiled path."""
        ...

    def accept(
        self,
        message: bytes,
        head: tuple[Any, ...],
        record_type: type,
        now_ms: int,
        want_columns: bool = False,
        matcher: tuple[bytes, bytes] | None = None,
    ) -> tuple[list[FlowRecord], bytes, Any] | None:
        """(records, spool payload, Arrow buffers) when every record passes, else None. `matcher`:
        the resource's addresses (AddressMatcher.packed()), which derive a missing direction."""
        ...

    def accept_flows(
        self, flows: list[tuple[Any, ...]], directions: bytes, head: tuple[Any, ...], record_type: type, now_ms: int
    ) -> tuple[list[FlowRecord], bytes, Any] | None:
        """The collector's flows (server.sources.flows.Flow tuples) of one flow log, with one
        Direction number per flow: (records, spool payload, Arrow buffers) when every one passes
        the Ingest checks as an OK record without a rule, else None."""
        ...


# -- several replicas on one metadata store (issue 19; owner pg) -------------------------------


@runtime_checkable
class SharedMetadata(Protocol):
    """Optional: a metadata store shared by several replicas (metadata_backend: postgres). The
    embedded store lacks it: one process owns its file, and nothing needs coordinating."""

    def exclusive(self, name: str, wait: bool = True) -> AbstractContextManager[bool]:
        """Hold the cluster-wide lock `name` for a block. wait=False yields False at once when
        another replica holds it (then skip the work: another replica is doing it). Released at
        the end of the block, or by the store when the holder dies."""
        ...

    def put_setting(self, key: str, value: bytes) -> None:
        """Store a server-wide setting, replacing its value (setting() reads it)."""
        ...

    def purge_ack(self, account: str, key: LogStoreKey, replica_id: str) -> None:
        """Replica `replica_id` has done its own steps of the LogStore's purge (ended its Tails,
        dropped its spooled batches); removed with the tombstone."""
        ...

    def purge_acks(self, account: str, key: LogStoreKey) -> set[str]:
        """The replicas that have done their own steps of the LogStore's purge."""
        ...


# -- replicas (owner: tail, issue 19) ---------------------------------------------------------


@dataclass(frozen=True)
class ReplicaInfo:
    """One flowlog-server process sharing the metadata store: its id is its spool's id (stable
    across restarts of the same data dir), `address` is where the other replicas reach its
    ReplicaService, and `heartbeat_age_ms` how long ago it last said it was alive (measured by the
    directory's own clock, so the replicas' clocks need not agree)."""

    replica_id: str
    address: str
    heartbeat_age_ms: int
    started_ms: int = 0


@dataclass(frozen=True)
class ReplicaSnapshot:
    """The directory as read at `read_ms` (the reader's clock, taken BEFORE the read): a replica
    that registered before read_ms is in `replicas`, so a replica missing from a snapshot stored
    nothing before its read_ms (give or take the clocks' skew)."""

    read_ms: int
    replicas: tuple[ReplicaInfo, ...]


class ReplicaDirectory(Protocol):
    """The replicas of one deployment, in the shared metadata store (PostgreSQL). Absent (None)
    with metadata_backend embedded: one process, one spool.

    A replica registers (heartbeat) BEFORE it spools anything and then every few seconds; list()
    returns the replicas heard from within `forget_ms` (down ones included: their spools are
    durable and their records arrive when they return)."""

    def heartbeat(self, replica_id: str, address: str, started_ms: int) -> None:
        """Insert or refresh this replica's row (its address may change between restarts)."""
        ...

    def list(self, forget_ms: int) -> list[ReplicaInfo]:
        """Every replica whose last heartbeat is at most forget_ms old, by replica id."""
        ...

    def remove(self, replica_id: str) -> None:
        """Forget a replica at once (an operator retiring its data dir)."""

    def close(self) -> None:
        """Release its connections (the server is stopping)."""


# -- GeneratorLeases (issue 19.3: several replicas; owner: lease) ------------------------------


@dataclass(frozen=True)
class Lease:
    """One replica's right to generate one flow log (server.core.leases says the rules)."""

    flow_log_id: str
    owner: str  # the replica id: the spool id of the replica's data dir
    epoch: int  # the fencing token: a new value at every claim, so a former owner's commit fails
    next_window_ms: int  # start of the next window owed; 0: none generated yet
    expires_ms: int  # live until then (exclusive), unless renewed


@dataclass(frozen=True)
class LeaseView:
    """What the lease store says at the start of a generator tick."""

    mine: tuple[Lease, ...]  # this replica's leases, just renewed
    unowned: tuple[str, ...]  # active flow logs with no live lease (new, released or expired)
    live_replicas: int  # replicas whose heartbeat has not expired, this one included


class GeneratorLeases(Protocol):
    """Leases on the generator's work, kept with the metadata when several replicas share it
    (backends/postgres/leases.py). Absent (None) with the embedded metadata store: one process
    generates every flow log, as before.

    Times are the caller's clock in epoch milliseconds (`now_ms`), the clock the windows are cut
    with; replicas need synchronised clocks (NTP) anyway, since records carry their times. Each
    call is one transaction, durable when it returns.
    """

    def sync(self, replica_id: str, active: Sequence[str], now_ms: int, ttl_ms: int) -> LeaseView:
        """The tick's heartbeat: mark the replica live until now + ttl, renew its leases, drop
        the leases of flow logs not in `active` (paused or deleted: a resumed flow log starts
        afresh) that are this replica's or expired, and say which active flow logs are unowned
        and how many replicas are live."""
        ...

    def claim(self, replica_id: str, flow_log_ids: Sequence[str], now_ms: int, ttl_ms: int) -> list[Lease]:
        """Take those of the flow logs that have no live lease, each with a new epoch, keeping
        its stored next window; the ones another replica holds are left out. Concurrent claimers
        never both get one flow log."""
        ...

    def commit(self, replica_id: str, windows: Sequence[tuple[str, int, int]], now_ms: int, ttl_ms: int) -> set[str]:
        """Store (flow_log_id, epoch, next_window_ms) for each window the sink accepted, only
        where this replica still holds that lease with that epoch (fenced), and renew it.
        Returns the flow log ids committed; the others' leases were lost."""
        ...

    def release(self, replica_id: str, flow_log_ids: Sequence[str]) -> None:
        """Give leases up at once (fair share, shutdown), keeping their next window."""
        ...

    def leave(self, replica_id: str) -> None:
        """The replica stops generating: release all its leases and its heartbeat."""
        ...

    def close(self) -> None: ...
