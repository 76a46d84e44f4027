"""What the shared record indices cannot say by themselves: per LogStore, the retention floor and
the deletion marker, kept in a small Elasticsearch index `<prefix>-logstores` (one document per
LogStore that ever had retention enforced or was deleted; `_id` = the LogStore's key digest).

Why: records of many LogStores share one index per UTC day (backends/elasticsearch/records.py),
so neither retention nor a deletion can drop "the LogStore's indices" any more, and the test
distribution has no _delete_by_query. Every read (search, count, aggregate) fetches the entries
of the LogStores it asks for (one realtime mget, so a change made by any replica a moment ago is
seen) and excludes:
- records with start_time < floor_ms (retention: the start of the oldest UTC day kept; it only
  ever rises, like days dropped from the embedded store never come back), and
- records with ingested_ms < deleted_ms (a deleted LogStore: its old records stay hidden from a
  new LogStore of the same name, which writes after the deletion).
Physical removal comes later (records.ElasticsearchRecordStore.sweep): a whole day index is
dropped once every LogStore in it is hidden, and a marker is removed once no hidden record of its
LogStore is left anywhere.

Concurrent writers (several replicas) update an entry with optimistic concurrency (if_seq_no),
retried on conflict, so a floor never goes down and a marker never moves back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from elasticsearch import ApiError, ConflictError, Elasticsearch, NotFoundError

log = logging.getLogger(__name__)

_KEYWORD = {"type": "keyword"}
_LONG = {"type": "long"}
MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "ls_key": _KEYWORD,
        "account_id": _KEYWORD,
        "region": _KEYWORD,
        "project": _KEYWORD,
        "log_store": _KEYWORD,
        "floor_ms": _LONG,
        "deleted_ms": _LONG,
    },
}
_RETRIES = 20


@dataclass(frozen=True)
class Entry:
    """A LogStore's visibility rules (0 = none)."""

    ls_key: str
    account_id: str
    region: str
    project: str
    log_store: str
    floor_ms: int = 0
    deleted_ms: int = 0

    def doc(self) -> dict[str, Any]:
        return {
            "ls_key": self.ls_key,
            "account_id": self.account_id,
            "region": self.region,
            "project": self.project,
            "log_store": self.log_store,
            "floor_ms": self.floor_ms,
            "deleted_ms": self.deleted_ms,
        }


class Registry:
    """The `<prefix>-logstores` index. Thread-safe (the client is)."""

    def __init__(self, client: Elasticsearch, name: str, replicas: int) -> None:
        self._client = client
        self.name = name
        self._replicas = replicas
        self._ready = False

    def ensure(self) -> None:
        """Create the index if it is missing (1 primary shard: it holds one small document per
        LogStore); idempotent, also when another replica creates it at the same moment."""
        if self._ready or self._client.indices.exists(index=self.name):
            self._ready = True
            return
        try:
            self._client.indices.create(
                index=self.name,
                settings={"index": {"number_of_shards": 1, "number_of_replicas": self._replicas}},
                mappings=MAPPING,
            )
        except ApiError as exc:
            if exc.error != "resource_already_exists_exception":
                raise
        self._ready = True

    def get(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The entries of these LogStore keys that exist (realtime: the latest write is seen)."""
        ids = list(dict.fromkeys(keys))
        if not ids:
            return {}
        try:
            resp = self._client.mget(index=self.name, ids=ids, realtime=True)
        except NotFoundError:  # no registry yet: nothing was ever deleted or aged out
            return {}
        out = {}
        for d in resp["docs"]:
            if d.get("found"):
                out[d["_id"]] = entry_of(d["_source"])
        return out

    def all(self) -> Iterator[Entry]:
        """Every entry, paged by ls_key."""
        after: list[Any] | None = None
        while True:
            extra: dict[str, Any] = {} if after is None else {"search_after": after}
            try:
                resp = self._client.search(
                    index=self.name, size=1000, sort=[{"ls_key": "asc"}], query={"match_all": {}}, **extra
                )
            except NotFoundError:
                return
            hits = resp["hits"]["hits"]
            for h in hits:
                yield entry_of(h["_source"])
            if len(hits) < 1000:
                return
            after = hits[-1]["sort"]

    def raise_floor(self, base: Entry, floor_ms: int) -> int:
        """Set the LogStore's floor to floor_ms unless it is higher already; returns the floor
        it had before (0: none)."""

        def change(old: Entry | None) -> Entry | None:
            if old is None:
                return Entry(**{**base.__dict__, "floor_ms": floor_ms, "deleted_ms": 0})
            if old.floor_ms >= floor_ms:
                return None
            return Entry(**{**old.__dict__, "floor_ms": floor_ms})

        before = self._update(base.ls_key, change)
        return before.floor_ms if before is not None else 0

    def mark_deleted(self, base: Entry, deleted_ms: int) -> int:
        """Hide every record of the LogStore ingested before deleted_ms, and reset its floor (a
        new LogStore of that name starts with no retention history). Returns the marker set."""
        result = [deleted_ms]

        def change(old: Entry | None) -> Entry | None:
            mark = max(deleted_ms, old.deleted_ms if old is not None else 0)
            result[0] = mark
            return Entry(**{**base.__dict__, "floor_ms": 0, "deleted_ms": mark})

        self._update(base.ls_key, change)
        return result[0]

    def clear_marker(self, entry: Entry) -> bool:
        """Remove the deletion marker of entry if it is still exactly that one (no newer
        deletion, no floor set since); True if removed."""

        def change(old: Entry | None) -> Entry | None:
            if old is None or old.deleted_ms != entry.deleted_ms:
                return None
            return Entry(**{**old.__dict__, "deleted_ms": 0})

        before = self._update(entry.ls_key, change, drop_empty=True)
        return before is not None and before.deleted_ms == entry.deleted_ms

    def _update(self, ls_key: str, change: Any, drop_empty: bool = False) -> Entry | None:
        """Read-modify-write of one entry with optimistic concurrency; returns the entry before."""
        self.ensure()
        for _ in range(_RETRIES):
            try:
                got = self._client.get(index=self.name, id=ls_key, realtime=True)
                old: Entry | None = entry_of(got["_source"])
                seq: dict[str, Any] = {"if_seq_no": got["_seq_no"], "if_primary_term": got["_primary_term"]}
            except NotFoundError:
                old, seq = None, {}
            new = change(old)
            if new is None:
                return old
            try:
                if drop_empty and new.floor_ms == 0 and new.deleted_ms == 0 and seq:
                    self._client.delete(index=self.name, id=ls_key, refresh=True, **seq)
                elif seq:
                    self._client.index(index=self.name, id=ls_key, document=new.doc(), refresh=True, **seq)
                else:
                    self._client.index(index=self.name, id=ls_key, document=new.doc(), op_type="create", refresh=True)
                return old
            except ConflictError:
                continue  # another writer changed it in between: read again
        raise RuntimeError(f"could not update the LogStore registry entry {ls_key}: too many concurrent changes")


def entry_of(src: dict[str, Any]) -> Entry:
    """An entry from its document's _source."""
    return Entry(
        src["ls_key"],
        src["account_id"],
        src["region"],
        src["project"],
        src["log_store"],
        int(src.get("floor_ms", 0)),
        int(src.get("deleted_ms", 0)),
    )
