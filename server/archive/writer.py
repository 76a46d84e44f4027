"""The archive writer and reader: `Archive` groups records by LogStore and hour, writes one
object per group and batch (idempotent by batch id), lists, reads, counts and deletes objects,
over a byte-level ObjectStore (see server/archive/__init__.py).
"""

from __future__ import annotations

import io
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import compress, repeat
from operator import eq, floordiv, itemgetter
from typing import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from server.archive.layout import (
    _BATCH_ID,
    _PART,
    DAY_MS,
    HOUR_MS,  # noqa: F401
    _day_index_of,
    _escape,
    _hour_index_of,
    _hour_parts,
)
from server.archive.parquet import (
    _F,
    _REQUIRED_COLUMNS,
    CorruptObject,
    _identity,
    _start_filter,  # noqa: F401
    _to_records,
    decode_table,
    encode,
    encode_table,
)
from server.core.columns import records_of, without_repeats
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import ObjectInfo, ObjectStore
from server.core.records import record_id

log = logging.getLogger("server.archive")

# Beyond this many hours, one listing of the whole LogStore beats one listing per hour.
_MAX_HOUR_LISTINGS = 48
_DELETE_CHUNK = 1000


_LOG_STORE_OF = itemgetter(_F.index("account_id"), _F.index("region"), _F.index("project"), _F.index("log_store"))
_START_OF = itemgetter(_F.index("start_time"))
_ID_OF = itemgetter(_F.index("record_id"))


def _groups(records: Sequence[FlowRecord]) -> dict[tuple[str, str, str, str, int], list[FlowRecord]]:
    """The records by (account, region, project, log_store, UTC hour), each group without repeats:
    one record per record_id (or identity, without one), the last copy, at the first copy's place.

    A batch of one LogStore spanning a few hours (the normal case) is split column-wise, without
    a Python step per record; anything else goes record by record, with the same result."""
    if records:
        stores = set(map(_LOG_STORE_OF, records))
        ids = list(map(_ID_OF, records))
        hours = list(map(floordiv, map(_START_OF, records), repeat(HOUR_MS)))
        distinct = set(hours)
        if len(stores) == 1 and len(distinct) <= 4 and all(ids):
            ((account, region, project, log_store),) = stores
            out = {}
            for hour in sorted(distinct):
                if len(distinct) == 1:
                    pairs = zip(ids, records)
                else:
                    keep = list(map(eq, hours, repeat(hour)))
                    pairs = zip(compress(ids, keep), compress(records, keep))
                out[(account, region, project, log_store, hour)] = list(dict(pairs).values())
            return out
    # Keyed by record_id (made from the identity fields; see _check_ids) to drop repeats.
    groups: dict[tuple[str, str, str, str, int], dict[object, FlowRecord]] = defaultdict(dict)
    for r in records:
        group_key = (r.account_id, r.region, r.project, r.log_store, r.start_time // HOUR_MS)
        groups[group_key][r.record_id or _identity(r)] = r
    return {k: list(v.values()) for k, v in groups.items()}


@dataclass(frozen=True)
class ArchivedObject:
    """One object of a LogStore, with the hour its path names."""

    key: str
    size: int
    hour_index: int  # hours since the epoch (UTC)

    @property
    def start_ms(self) -> int:
        return self.hour_index * HOUR_MS


class Archive:
    """Writes and reads flow records in an ObjectStore; owns the key layout and the encoding.

    Thread-safe as far as the store is (both stores here are): no mutable state of its own.
    """

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @property
    def name(self) -> str:
        return self.store.name

    # -- layout -----------------------------------------------------------------------------

    @staticmethod
    def log_store_prefix(account_id: str, key: LogStoreKey) -> str:
        for what, value in (("region", key.region), ("project", key.project), ("log_store", key.name)):
            if not value:
                raise ValueError(f"archive path needs a {what}")
        return (
            f"account={_escape(account_id)}/region={_escape(key.region)}/"
            f"project={_escape(key.project)}/log_store={_escape(key.name)}/"
        )

    @classmethod
    def hour_prefix(cls, account_id: str, key: LogStoreKey, hour_index: int) -> str:
        dt, hh = _hour_parts(hour_index)
        return f"{cls.log_store_prefix(account_id, key)}dt={dt}/hour={hh}/"

    @classmethod
    def object_key(cls, account_id: str, key: LogStoreKey, hour_index: int, batch_id: str) -> str:
        return f"{cls.hour_prefix(account_id, key, hour_index)}part-{batch_id}.parquet"

    # -- writing ----------------------------------------------------------------------------

    def write_table(self, batch_id: str, table: pa.Table) -> list[str]:
        """write_batch() of records given as one Arrow table (server.core.columns.SCHEMA), the
        form the record pipeline hands over: split by hour and encoded column-wise, with the
        same objects as a result. Repeats of a record_id keep the last copy, as write_batch()
        does; a table spanning several LogStores (rare: the sink writes ranges of the spool,
        whose batches are one LogStore each) goes through write_batch()."""
        if not _BATCH_ID.match(batch_id):
            raise ValueError(f"batch_id {batch_id!r} must be 1-200 of [A-Za-z0-9_.-], not starting with '.'")
        if table.num_rows == 0:
            return []
        store_cols = [table.column(c) for c in ("account_id", "region", "project", "log_store")]
        ids = table.column("record_id")
        if (
            any(pc.count_distinct(c).as_py() != 1 for c in store_cols)
            or pc.min(table.column("start_time")).as_py() < 0
            or pc.any(pc.equal(ids, "")).as_py()
        ):
            return self.write_batch(batch_id, records_of(table))
        if pc.count_distinct(ids).as_py() != table.num_rows:
            # One LogStore: a record_id names one start_time, so one hour; the rows are sorted
            # by their identity before writing, so which place the copy kept had is moot.
            table = without_repeats(table, ("record_id",), keep="last")
        n = table.num_rows
        account, region, project, log_store = (c[0].as_py() for c in store_cols)
        hours = pc.divide(table.column("start_time"), HOUR_MS)
        keys: list[str] = []
        total = 0
        t0 = time.monotonic()
        distinct = sorted(pc.unique(hours).to_pylist())
        for hour in distinct:
            group = table if len(distinct) == 1 else table.filter(pc.equal(hours, hour))
            self._check_ids(records_of(group.slice(0, 1))[0])
            okey = self.object_key(account, LogStoreKey(region, project, log_store), hour, batch_id)
            data = encode_table(group)
            self.store.put(okey, data)
            keys.append(okey)
            total += len(data)
        log.info(
            "archived batch",
            extra={
                "batch_id": batch_id,
                "records": n,
                "objects": len(keys),
                "bytes": total,
                "seconds": round(time.monotonic() - t0, 3),
            },
        )
        return keys

    def write_batch(self, batch_id: str, records: Sequence[FlowRecord]) -> list[str]:
        """Write records as one object per (account, LogStore, UTC hour); return the keys.

        Durable when it returns: every object is durable in the store (ObjectStore.put). When it
        raises, some objects may already be written; writing the same batch_id again with the
        same records, or a superset of them, overwrites every one of those objects, so a retry
        never duplicates. Records repeated inside the batch (same record_id fields) are stored
        once. Across different batch_ids the archive does not deduplicate (that would need a
        read before every write): readers that care dedupe by record_id.
        """
        if not _BATCH_ID.match(batch_id):
            raise ValueError(f"batch_id {batch_id!r} must be 1-200 of [A-Za-z0-9_.-], not starting with '.'")
        keys: list[str] = []
        total = 0
        t0 = time.monotonic()
        for (account, region, project, log_store, hour), group in sorted(_groups(records).items()):
            self._check_ids(group[0])
            okey = self.object_key(account, LogStoreKey(region, project, log_store), hour, batch_id)
            data = encode(group)
            self.store.put(okey, data)
            keys.append(okey)
            total += len(data)
        if keys:
            log.info(
                "archived batch",
                extra={
                    "batch_id": batch_id,
                    "records": len(records),
                    "objects": len(keys),
                    "bytes": total,
                    "seconds": round(time.monotonic() - t0, 3),
                },
            )
        return keys

    @staticmethod
    def _check_ids(r: FlowRecord) -> None:
        """Readers recompute record_id; warn if the writer's ids were made some other way."""
        if r.record_id and r.record_id != record_id(*_identity(r)):
            log.warning(
                "record_id differs from server.core.records.record_id; the archive will return the recomputed id",
                extra={"record_id": r.record_id, "flow_log_id": r.flow_log_id},
            )

    # -- listing ----------------------------------------------------------------------------

    def objects(
        self, account_id: str, key: LogStoreKey, start_ms: int | None = None, end_ms: int | None = None
    ) -> Iterator[ArchivedObject]:
        """The LogStore's objects whose hour overlaps [start_ms, end_ms), in hour order.

        Lists only the overlapping hour prefixes when there are at most 48 of them, otherwise the
        LogStore's prefix once (retention bounds it) and keeps the overlapping hours.
        """
        prefix = self.log_store_prefix(account_id, key)
        if start_ms is not None and end_ms is not None:
            if start_ms >= end_ms:
                return
            h0, h1 = start_ms // HOUR_MS, (end_ms - 1) // HOUR_MS
            if h1 - h0 < _MAX_HOUR_LISTINGS:
                for h in range(h0, h1 + 1):
                    for info in self.store.list(self.hour_prefix(account_id, key, h)):
                        obj = self._parse(prefix, info)
                        if obj is not None and obj.hour_index == h:
                            yield obj
                return
        lo = start_ms // HOUR_MS if start_ms is not None else None
        hi = (end_ms - 1) // HOUR_MS if end_ms is not None else None
        for info in self.store.list(prefix):
            obj = self._parse(prefix, info)
            if obj is None or (lo is not None and obj.hour_index < lo) or (hi is not None and obj.hour_index > hi):
                continue
            yield obj

    @staticmethod
    def _parse(prefix: str, info: ObjectInfo) -> ArchivedObject | None:
        rest = info.key[len(prefix) :].split("/")
        if len(rest) != 3 or not _PART.match(rest[2]):
            log.warning("ignoring an object that is not laid out as an archive part", extra={"key": info.key})
            return None
        hour = _hour_index_of(rest[0], rest[1])
        if hour is None:
            log.warning("ignoring an object with a malformed dt=/hour= path", extra={"key": info.key})
            return None
        return ArchivedObject(info.key, info.size, hour)

    # -- reading ----------------------------------------------------------------------------

    def read(
        self, account_id: str, key: LogStoreKey, start_ms: int, end_ms: int, batch_size: int = 10_000
    ) -> Iterator[list[FlowRecord]]:
        """Yield the LogStore's records with start_ms <= start_time < end_ms, in batches of at
        most batch_size.

        Order: hour by hour ascending; inside an hour object by object (key order), and inside
        an object by start_time. Lazy: one object is fetched at a time. region, project,
        log_store and account_id come from the request (which named the path); record_id is
        recomputed. An object that cannot be parsed is logged and skipped, never fatal; a store
        that cannot be reached raises.
        """
        for obj in self.objects(account_id, key, start_ms, end_ms):
            table = self._load(obj.key)
            if table is None:
                continue
            table = _start_filter(table, start_ms, end_ms)
            for offset in range(0, table.num_rows, batch_size):
                try:
                    batch = _to_records(table.slice(offset, batch_size), account_id, key)
                except Exception as e:  # noqa: BLE001 - a foreign file with odd types
                    log.warning("skipping unreadable archive object", extra={"key": obj.key, "error": str(e)})
                    break
                yield batch

    def count(self, account_id: str, key: LogStoreKey, start_ms: int, end_ms: int) -> int:
        """How many records read() would return (objects whose whole hour is inside the range
        are counted from the Parquet footer without decoding rows)."""
        n = 0
        for obj in self.objects(account_id, key, start_ms, end_ms):
            whole = start_ms <= obj.start_ms and obj.start_ms + HOUR_MS <= end_ms
            try:
                data = self.store.get(obj.key)
            except KeyError:  # deleted since listed
                continue
            try:
                if whole:
                    meta = pq.read_metadata(io.BytesIO(data))
                    if not set(_REQUIRED_COLUMNS) <= set(meta.schema.names):
                        raise CorruptObject("missing columns")
                    n += meta.num_rows
                else:
                    table = decode_table(data, ["start_time"])
                    n += _start_filter(table, start_ms, end_ms).num_rows
            except Exception as e:  # noqa: BLE001
                log.warning("skipping unreadable archive object", extra={"key": obj.key, "error": str(e)})
        return n

    def _load(self, okey: str) -> pa.Table | None:
        try:
            data = self.store.get(okey)
        except KeyError:  # deleted (retention) between list and get
            return None
        try:
            return decode_table(data)
        except CorruptObject as e:
            log.warning("skipping unreadable archive object", extra={"key": okey, "error": str(e)})
            return None

    # -- deleting ---------------------------------------------------------------------------

    def delete_log_store(self, account_id: str, key: LogStoreKey) -> int:
        """Delete every object of the LogStore; returns how many. Durable when it returns."""
        return self._delete(info.key for info in self.store.list(self.log_store_prefix(account_id, key)))

    def enforce_retention(self, account_id: str, key: LogStoreKey, retention_days: int, now_ms: int) -> int:
        """Delete whole UTC days whose every moment is more than retention_days before now, i.e.
        days before (today - retention_days); returns how many days were dropped. So a record
        is never dropped before it is retention_days old, and at most one day later."""
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        first_kept = now_ms // DAY_MS - retention_days
        prefix = self.log_store_prefix(account_id, key)
        days: set[int] = set()
        doomed: list[str] = []
        for info in self.store.list(prefix):
            seg = info.key[len(prefix) :].split("/", 1)[0]
            day = _day_index_of(seg)
            if day is None or day >= first_kept:
                continue
            days.add(day)
            doomed.append(info.key)
        self._delete(doomed)
        if days:
            log.info(
                "archive retention dropped days", extra={"prefix": prefix, "days": len(days), "objects": len(doomed)}
            )
        return len(days)

    def _delete(self, keys: Iterable[str]) -> int:
        n = 0
        chunk: list[str] = []
        for k in keys:
            chunk.append(k)
            if len(chunk) >= _DELETE_CHUNK:
                self.store.delete(chunk)
                n += len(chunk)
                chunk = []
        if chunk:
            self.store.delete(chunk)
            n += len(chunk)
        return n

    def healthy(self) -> bool:
        return self.store.healthy()

    def close(self) -> None:
        self.store.close()
