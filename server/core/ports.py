"""Ports: the small interfaces the core needs, implemented by backends/ (adapters).

Each storage role is its own interface (Jaeger's habit): metadata, record search (the query
backend), object storage (under the archive). Each implementation says in its docstring exactly
when written data is durable.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

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
    def list_resources(self, account: str, *, region: str, type: ResourceType, network_id: str,
                       after: str, limit: int) -> list[Resource]: ...
    def insert_resource(self, resource: Resource) -> None: ...
    def delete_resource(self, account: str, resource_id: str) -> None: ...
    def count_resources(self, account: str) -> int: ...

    # LogStores
    def get_log_store(self, account: str, key: LogStoreKey) -> LogStore | None: ...
    def list_log_stores(self, account: str, *, region: str, project: str,
                        after: tuple[str, str, str] | None, limit: int) -> list[LogStore]: ...
    def insert_log_store(self, log_store: LogStore) -> None: ...
    def update_log_store(self, log_store: LogStore) -> None: ...
    def delete_log_store(self, account: str, key: LogStoreKey) -> None: ...
    def count_log_stores(self, account: str) -> int: ...

    # LogStores being purged (Tombstone)
    def insert_tombstone(self, account: str, key: LogStoreKey, deleted_ms: int) -> None: ...
    def tombstone_exists(self, account: str, key: LogStoreKey) -> bool: ...

    # flow logs
    def get_flow_log(self, account: str, flow_log_id: str) -> FlowLog | None: ...
    def list_flow_logs(self, account: str, *, region: str, resource_id: str, state: FlowLogState,
                       after: str, limit: int) -> list[FlowLog]: ...
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

        A store may also offer `write_table(table)`: the same write given the records as one
        Arrow table (server.core.columns.SCHEMA). The record pipeline uses it when present, so
        a store that converts rows to columns anyway skips the conversion."""
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
