"""The Elasticsearch query backend: records of every LogStore share one index per UTC day.

Layout (why: one index per LogStore and day, the first layout, met Elasticsearch's budget of
1,000 shards per node at about 140 LogStores kept a week, after which the sink stalled):
- `<prefix>-flows-<yyyy.mm.dd>`: the records whose start_time falls on that UTC day, of every
  account, region, project and LogStore, made from the index template `<prefix>-flows` with
  `shards` primaries and `replicas` replicas each. Flowlog's shard count is then
  days kept x shards x (1 + replicas) + 1 (the registry), whatever the number of LogStores or
  accounts; `shards` is how the layout grows with volume (aim for 10-50 GB per shard).
  Why per day and not per account and day, or rolled over by size: per account would make the
  count grow with the number of accounts; rollover needs an alias per write target and
  gives indices that straddle days, so retention could not drop whole indices by date, and the
  test distribution has no ILM to drive it. A day index is still the unit of physical removal.
- The LogStore is a field: account_id, region, project and log_store are keywords every query
  filters on, plus `ls_key` (16 hex digits of BLAKE2b over the exact, case-sensitive key, so
  `Web` and `web` differ) which the maintenance aggregates on.
- `_id` = `<record_id>.<ls_key>`: create-only bulk writes keep writes idempotent by record_id
  within a LogStore (a retry is a 409, which is success), while two LogStores may hold the same
  record_id, as before.
- `ingested_ms` (date): the writer's clock when the record was indexed; deletion markers compare
  against it.
- `<prefix>-logstores`: the registry (backends/elasticsearch/registry.py) of per-LogStore
  retention floors and deletion markers that every read applies, so deletion and retention are
  exact at once, for Query, count and Aggregate alike.
- Physical removal (sweep(), run by enforce_retention at most every sweep_interval_s): a day
  index is dropped when every LogStore with records in it is past its floor or deleted (checked
  again under a write block before the delete, so a record written meanwhile is refused and
  retried by the sink into a new index instead of being lost); where the cluster has
  _delete_by_query (detected once; the test distribution has none) deletion and retention also
  delete the hidden documents at once.
- The shard budget: before it creates a day index the store counts flowlog's shards (cluster
  health over its indices); past `max_shards` the write fails with a message naming the setting
  (the sink retries it, health shows it), and from 80% on it logs a warning.

Migration from the per-LogStore layout (`<prefix>-records-<readable>.<hash>-<yyyy.mm.dd>`, see
log_store_base): nothing to do. New records go to the shared indices; as long as any old index
exists (checked at start and every 10 minutes) reads also name the old indices of the queried
LogStores, deletion drops them and retention drops their old days as before, so they disappear
with their retention.

Mapping (the filter translator backends/elasticsearch/filter_dsl.py depends on it): every
FlowRecord field; src_addr/dst_addr `ip`, omitted from the document when empty (NODATA rows);
start_time/end_time `date` (epoch_millis); enum fields as `keyword` holding the prefix-less
enum name (filter_dsl.enum_name), rule_kind too; rule_id `keyword`; ports, protocol, tcp_flags,
version, sampling_rate `integer`; packets and bytes `long`. Old-layout indices made before
rule_id, rule_kind and sampling_rate existed read those back as "", 0, 0.

uint64: packets/bytes are uint64 in the API but `long` is signed and the test distribution has
no `unsigned_long`. Values above 2**63-1 are indexed as 2**63-1 (so range filters, which the
filter language caps at 2**63-1 too, still order them correctly) and their exact value is kept
in `packets_u64`/`bytes_u64` (keyword, not indexed, present only then), from which reads restore
it: records round-trip exactly. Only `bytes = 9223372036854775807` cannot tell them apart.

Durability: write() returns after Elasticsearch acknowledged the bulk request, which it does
only once every document is in the translog of the primary (and of the in-sync replicas, if
any) and the translog is fsynced (index.translog.durability=request, the default) - and after
the touched indices were refreshed, so the records are also searchable when write() returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import threading
import time
from datetime import date, timedelta
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from elasticsearch import ApiError, ConnectionTimeout, Elasticsearch, NotFoundError, helpers
from elasticsearch import ConnectionError as ESConnectionError

from backends.elasticsearch import aggregate as es_aggregate
from backends.elasticsearch.config import ElasticsearchConfig
from backends.elasticsearch.filter_dsl import ENUM_FIELDS, enum_name, enum_number, to_query
from backends.elasticsearch.registry import Entry, Registry
from backends.elasticsearch.registry import entry_of as _registry_entry
from server.core import aggregate as agg
from server.core.errors import Unavailable
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import RecordQuery

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
INT64_MAX = 2**63 - 1
_EPOCH = date(1970, 1, 1)
_HASH_LEN = 16
_READABLE_MAX = 120
_UNSAFE = re.compile(r"[^a-z0-9_-]")
_DAY_SUFFIX = re.compile(r"-(\d{4})\.(\d{2})\.(\d{2})$")
# Longest comma-joined index list we put in a URL (ES refuses request lines over 4 KiB).
_MAX_INDEX_LIST = 3000
# How often to look again whether any index of the first layout is left.
_LEGACY_RECHECK_S = 600.0
# Elasticsearch's default index.max_result_window caps `size` too.
_MAX_PAGE = 10_000

_KEYWORD = {"type": "keyword"}
_INTEGER = {"type": "integer"}
_LONG = {"type": "long"}
_DATE = {"type": "date", "format": "epoch_millis"}
_EXACT_U64 = {"type": "keyword", "index": False, "doc_values": False}

MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "record_id": _KEYWORD,
        "version": _INTEGER,
        "account_id": _KEYWORD,
        "flow_log_id": _KEYWORD,
        "region": _KEYWORD,
        "project": _KEYWORD,
        "log_store": _KEYWORD,
        "resource_type": _KEYWORD,
        "resource_id": _KEYWORD,
        "network_id": _KEYWORD,
        "src_addr": {"type": "ip"},
        "dst_addr": {"type": "ip"},
        "src_port": _INTEGER,
        "dst_port": _INTEGER,
        "protocol": _INTEGER,
        "packets": _LONG,
        "bytes": _LONG,
        "packets_u64": _EXACT_U64,
        "bytes_u64": _EXACT_U64,
        "start_time": _DATE,
        "end_time": _DATE,
        "action": _KEYWORD,
        "log_status": _KEYWORD,
        "direction": _KEYWORD,
        "tcp_flags": _INTEGER,
        "rule_id": _KEYWORD,
        "rule_kind": _KEYWORD,
        "sampling_rate": _INTEGER,
        "ls_key": _KEYWORD,
        "ingested_ms": _DATE,
    },
}

_ENUM_NAMES = {f: {int(m): m.name for m in cls} for f, cls in ENUM_FIELDS.items()}


class RecordWriteError(RuntimeError):
    """Elasticsearch refused some documents of a write (other than "already there")."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(
            f"{len(errors)} record(s) refused by Elasticsearch; first: "
            f"status {first.get('status')} {first.get('error')}"
        )


def ls_key(account_id: str, region: str, project: str, log_store: str) -> str:
    """16 hex digits of BLAKE2b over the exact, case-sensitive LogStore key."""
    exact = "\x1f".join((account_id, region, project, log_store))
    return hashlib.blake2b(exact.encode(), digest_size=_HASH_LEN // 2).hexdigest()


def shared_base(prefix: str) -> str:
    """`<prefix>-flows`: the shared day indices' names without the day (and their template)."""
    return f"{prefix}-flows"


def registry_name(prefix: str) -> str:
    return f"{prefix}-logstores"


def log_store_base(prefix: str, account_id: str, key: LogStoreKey) -> str:
    """The FIRST layout (one index per LogStore and day, still read and dropped, no longer
    written): `<prefix>-records-<readable>.<hash>`, the name of a LogStore's indices without the
    day. <readable> is `<account>-<region>-<project>-<log_store>` lower-cased, any character other
    than a-z, 0-9, `-`, `_` replaced by `_`, truncated; <hash> is ls_key(). Since neither the
    prefix nor the readable part holds a dot, `<base>-*` of one LogStore never matches another's."""
    digest = ls_key(account_id, key.region, key.project, key.name)
    readable = _UNSAFE.sub("_", f"{account_id}-{key.region}-{key.project}-{key.name}".lower())
    return f"{prefix}-records-{readable[:_READABLE_MAX]}.{digest}"


def legacy_pattern(prefix: str) -> str:
    return f"{prefix}-records-*"


def day_suffix(day: int) -> str:
    """The `yyyy.mm.dd` of a UTC day number (days since 1970-01-01)."""
    return (_EPOCH + timedelta(days=day)).strftime("%Y.%m.%d")


def _day_of_index(base: str, index: str) -> int | None:
    """The UTC day number of one of the LogStore's day indices, or None if it is not one."""
    if not index.startswith(base + "-"):
        return None
    m = _DAY_SUFFIX.search(index)
    if m is None or m.start() != len(base):
        return None
    return (date(int(m[1]), int(m[2]), int(m[3])) - _EPOCH).days


def day_patterns(base: str, first_day: int, last_day: int) -> list[str]:
    """Index names/patterns covering exactly the days first_day..last_day: whole years as
    `base-yyyy.*`, whole months as `base-yyyy.mm.*`, other days by exact name."""
    out: list[str] = []
    d = _EPOCH + timedelta(days=first_day)
    last = _EPOCH + timedelta(days=last_day)
    while d <= last:
        if d.month == 1 and d.day == 1 and date(d.year, 12, 31) <= last:
            out.append(f"{base}-{d.year:04d}.*")
            d = date(d.year + 1, 1, 1)
        elif d.day == 1 and _month_end(d) <= last:
            out.append(f"{base}-{d.year:04d}.{d.month:02d}.*")
            d = _month_end(d) + timedelta(days=1)
        else:
            out.append(f"{base}-{d.strftime('%Y.%m.%d')}")
            d += timedelta(days=1)
    return out


# Stored records start after the epoch (start_time > 0 is required) and long before the year
# 9999; a query's range is cut to these bounds so that the day arithmetic (Python dates end at
# 9999-12-31) and Elasticsearch's date parsing only ever see representable days.
_MIN_MS = 0
_MAX_MS = (date(9999, 1, 1) - _EPOCH).days * DAY_MS


def _clamp(start_ms: int, end_ms: int) -> tuple[int, int]:
    return max(start_ms, _MIN_MS), min(end_ms, _MAX_MS)


def _month_end(d: date) -> date:
    nxt = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


class _NothingToRead(Exception):
    """The registry hides every day the Aggregate's range could touch: no index to read."""


class ShardBudgetExceeded(RuntimeError):
    """Creating a day index would take flowlog's shards past elasticsearch.max_shards."""


class ElasticsearchRecordStore:
    """RecordStore on Elasticsearch 9 through the official client. Thread-safe (the client is).

    Nothing is requested at construction: the index template is put on the first write, so a
    server can start while the cluster is still down (healthy() says so meanwhile).
    """

    name = "elasticsearch"

    def __init__(self, config: ElasticsearchConfig, client: Elasticsearch | None = None) -> None:
        config.check()
        self._cfg = config
        self._client = client if client is not None else _make_client(config)
        self._own_client = client is None
        self._template_lock = threading.Lock()
        self._template_ready = False
        self._day_names: dict[int, str] = {}
        self._base = shared_base(config.index_prefix)
        self.registry = Registry(self._client, registry_name(config.index_prefix), config.replicas)
        self._known: set[str] = set()  # day indices known to exist (created or seen by this store)
        self._index_lock = threading.Lock()
        self._legacy: tuple[float, bool] | None = None  # (when checked, any first-layout index)
        self._dbq: bool | None = None  # whether the cluster has _delete_by_query
        self._sweep_lock = threading.Lock()
        self._last_sweep = float("-inf")
        self._groups: dict[str, tuple[int, dict[str, int]]] = {}  # index -> (docs, ls_key -> max ingested)
        # ls_key -> its registry entry as last read (None: it had none). Only a guess: Aggregate
        # plans with it and checks it in the same round trip (_checked_search), never trusts it.
        self._seen: dict[str, Entry | None] = {}
        self._timeouts: dict[int, Elasticsearch] = {}  # tenths of a second -> the client with that timeout

    # -- names ---------------------------------------------------------------------------------

    @property
    def template_name(self) -> str:
        return self._base

    def index_name(self, start_ms: int) -> str:
        """The shared day index a record starting at start_ms belongs to."""
        return f"{self._base}-{self._day(start_ms // DAY_MS)}"

    def _day(self, day: int) -> str:
        name = self._day_names.get(day)
        if name is None:
            name = self._day_names[day] = day_suffix(day)
        return name

    def _has_legacy(self) -> bool:
        """Whether any index of the first layout is left (checked at most every 10 minutes: once
        none is left, none comes back, since nothing writes that layout any more)."""
        now = time.monotonic()
        if self._legacy is not None and now - self._legacy[0] < _LEGACY_RECHECK_S:
            return self._legacy[1]
        with _translate_errors("list indices"):
            resp = self._client.indices.resolve_index(
                name=legacy_pattern(self._cfg.index_prefix), expand_wildcards="all"
            )
        found = bool(resp.get("indices"))
        self._legacy = (now, found)
        return found

    # -- writing -------------------------------------------------------------------------------

    def ensure_template(self) -> None:
        """Put (or update) the composable index template `<prefix>-flows`; idempotent."""
        with self._template_lock:
            if self._template_ready:
                return
            cfg = self._cfg
            settings: dict[str, Any] = {
                "number_of_shards": cfg.shards,
                "number_of_replicas": cfg.replicas,
                "refresh_interval": cfg.refresh_interval,
                "codec": cfg.codec,
            }
            if cfg.index_sort:
                # Each LogStore's records contiguous, newest first: the default query (some
                # LogStores, newest first) then reads a few runs of neighbouring documents. Sorted
                # by time alone, one LogStore's newest 100 were scattered over as many compressed
                # stored-field blocks: 88 ms against 10 ms this way (20 LogStores x 10k records in
                # one index, this 2-core machine under load; README "Elasticsearch: shared ...").
                settings["sort.field"] = ["ls_key", "start_time", "record_id"]
                settings["sort.order"] = ["asc", "desc", "desc"]
            with _translate_errors("put index template"):
                self._client.indices.put_index_template(
                    name=self.template_name,
                    index_patterns=[f"{self._base}-*"],
                    template={"settings": {"index": settings}, "mappings": MAPPING},
                    priority=100,
                    meta={"managed_by": "flowlog"},
                )
            # The registry is created by its first entry (a retention floor or a deletion), not
            # here: the first write of a new deployment waits for one index creation, not two.
            self._template_ready = True

    def _ensure_days(self, days: Iterable[int]) -> None:
        """Create the day indices that do not exist yet, within the shard budget."""
        names = {f"{self._base}-{self._day(d)}" for d in days} - self._known
        if not names:
            return
        with self._index_lock, _translate_errors("create day index"):
            for name in sorted(names - self._known):
                if not self._client.indices.exists(index=name):
                    self._check_budget(name)
                    try:
                        # Waits for the primary to start, so the first search of the day does
                        # not meet an unassigned shard.
                        self._client.indices.create(index=name)
                    except ApiError as exc:
                        if exc.error != "resource_already_exists_exception":
                            raise
                    log.info("created day index %s", name)
                self._known.add(name)

    def shard_usage(self) -> tuple[int, int]:
        """(shards of flowlog's indices on the cluster, primaries and replicas, assigned or not;
        the configured bound elasticsearch.max_shards)."""
        prefix = self._cfg.index_prefix
        with _translate_errors("cluster health"):
            h = self._client.cluster.health(
                index=f"{self._base}-*,{legacy_pattern(prefix)},{registry_name(prefix)}*",
                expand_wildcards="all",
            )
        used = int(h["active_shards"]) + int(h["initializing_shards"]) + int(h["unassigned_shards"])
        return used, self._cfg.max_shards

    def _check_budget(self, name: str) -> None:
        used, bound = self.shard_usage()
        need = self._cfg.shards * (1 + self._cfg.replicas)
        if used + need > bound:
            msg = (
                f"creating the day index {name} needs {need} shard(s) and flowlog's indices hold {used}: that "
                f"would pass elasticsearch.max_shards = {bound}. Lower the LogStores' retention_days, raise "
                "elasticsearch.max_shards (keep it under the cluster's cluster.max_shards_per_node x data nodes), "
                "or lower elasticsearch.shards / elasticsearch.replicas"
            )
            log.error(msg)
            raise ShardBudgetExceeded(msg)
        if used + need >= 0.8 * bound:
            log.warning(
                "flowlog's Elasticsearch indices will hold %d of their %d shards (elasticsearch.max_shards) "
                "after creating %s",
                used + need,
                bound,
                name,
            )

    def write(self, records: Sequence[FlowRecord]) -> None:
        """Index the records with create-only bulk requests, `_id` = record_id.

        Idempotent: a record already in its day index comes back as a 409 conflict, which is
        success. Any other refused document raises RecordWriteError naming the reason; nothing
        is silently dropped (documents of the same bulk that were accepted stay: writing the
        batch again is safe). Durable and searchable when this returns (see module docstring).
        """
        if not records:
            return
        self.ensure_template()
        self._ensure_days({r.start_time // DAY_MS for r in records})
        touched: set[str] = set()
        actions = self._actions(records, touched, _now_ms())
        errors: list[dict[str, Any]] = []
        refresh: Any = "wait_for" if self._cfg.refresh == "wait_for" else False
        with _translate_errors("bulk write"):
            for ok, item in helpers.streaming_bulk(
                self._client,
                actions,
                chunk_size=self._cfg.bulk_chunk_size,
                raise_on_error=False,
                raise_on_exception=True,
                max_retries=3,
                initial_backoff=0.5,
                yield_ok=False,
                refresh=refresh,
            ):
                if ok:
                    continue
                result = next(iter(item.values()))
                if result.get("status") == 409:  # already stored: this write is a retry
                    continue
                errors.append(result)
            if self._cfg.refresh == "true" and touched:
                for chunk in _chunks(sorted(touched)):
                    self._client.indices.refresh(index=chunk, ignore_unavailable=True)
        if errors:
            log.error("bulk write refused %d of %d record(s): %s", len(errors), len(records), errors[:3])
            raise RecordWriteError(errors)

    def _actions(self, records: Sequence[FlowRecord], touched: set[str], now_ms: int) -> Iterator[dict[str, Any]]:
        keys: dict[tuple[str, str, str, str], str] = {}
        base = self._base
        rt_names, act_names = _ENUM_NAMES["resource_type"], _ENUM_NAMES["action"]
        ls_names, dir_names = _ENUM_NAMES["log_status"], _ENUM_NAMES["direction"]
        kind_names = _ENUM_NAMES["rule_kind"]
        for r in records:
            k = (r.account_id, r.region, r.project, r.log_store)
            lk = keys.get(k)
            if lk is None:
                lk = keys[k] = ls_key(*k)
            index = f"{base}-{self._day(r.start_time // DAY_MS)}"
            touched.add(index)
            doc: dict[str, Any] = {
                "record_id": r.record_id,
                "version": r.version,
                "account_id": r.account_id,
                "flow_log_id": r.flow_log_id,
                "region": r.region,
                "project": r.project,
                "log_store": r.log_store,
                "resource_type": rt_names.get(r.resource_type) or enum_name("resource_type", r.resource_type),
                "resource_id": r.resource_id,
                "network_id": r.network_id,
                "src_port": r.src_port,
                "dst_port": r.dst_port,
                "protocol": r.protocol,
                "packets": r.packets,
                "bytes": r.bytes,
                "start_time": r.start_time,
                "end_time": r.end_time,
                "action": act_names.get(r.action) or enum_name("action", r.action),
                "log_status": ls_names.get(r.log_status) or enum_name("log_status", r.log_status),
                "direction": dir_names.get(r.direction) or enum_name("direction", r.direction),
                "tcp_flags": r.tcp_flags,
                "rule_id": r.rule_id,
                "rule_kind": kind_names.get(r.rule_kind) or enum_name("rule_kind", r.rule_kind),
                "sampling_rate": r.sampling_rate,
                "ls_key": lk,
                "ingested_ms": now_ms,
            }
            if r.src_addr:
                doc["src_addr"] = r.src_addr
            if r.dst_addr:
                doc["dst_addr"] = r.dst_addr
            if r.packets > INT64_MAX:
                doc["packets"], doc["packets_u64"] = INT64_MAX, str(r.packets)
            if r.bytes > INT64_MAX:
                doc["bytes"], doc["bytes_u64"] = INT64_MAX, str(r.bytes)
            yield {"_op_type": "create", "_index": index, "_id": f"{r.record_id}.{lk}", "_source": doc}

    # -- reading -------------------------------------------------------------------------------

    def search(self, query: RecordQuery, batch_size: int = 1000) -> Iterator[list[FlowRecord]]:
        """Matching records in (start_time, record_id) order, one search request per batch.

        A result that fits in one batch is one plain search. A longer one opens a point in time
        (a consistent view of the indices for the whole call) and pages with search_after; the
        PIT is closed when the generator finishes, fails or is closed early. Never from+size.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        remaining = query.limit
        if remaining <= 0:
            return
        hidden, floor = self._visibility(query)
        indices = self._indices(query, floor)
        if not indices:
            return
        body_query = self._query(query, hidden, with_after=True)
        order = "desc" if query.newest_first else "asc"
        sort = [{"start_time": {"order": order}}, {"record_id": {"order": order}}]
        size = min(batch_size, remaining, _MAX_PAGE)
        common: dict[str, Any] = dict(
            query=body_query,
            sort=sort,
            track_total_hits=False,
            allow_partial_search_results=False,
            filter_path=["pit_id", "hits.hits._source", "hits.hits.sort"],
        )
        if remaining <= size:  # one page: no point in time needed
            with _translate_errors("search"):
                resp = _while_shards_start(
                    lambda: self._client.search(
                        index=indices, size=size, ignore_unavailable=True, allow_no_indices=True, **common
                    )
                )
            hits = resp.get("hits", {}).get("hits", [])
            if hits:
                yield [_record(h["_source"]) for h in hits]
            return
        with _translate_errors("open point in time"):
            pit_id = _while_shards_start(
                lambda: self._client.open_point_in_time(
                    index=indices,
                    keep_alive=self._cfg.pit_keep_alive,
                    ignore_unavailable=True,
                    index_filter=self._time_range(query),
                )
            )["id"]
        try:
            search_after: list[Any] | None = None
            while remaining > 0:
                size = min(batch_size, remaining, _MAX_PAGE)
                extra: dict[str, Any] = {} if search_after is None else {"search_after": search_after}
                with _translate_errors("search"):
                    resp = self._client.search(
                        pit={"id": pit_id, "keep_alive": self._cfg.pit_keep_alive}, size=size, **common, **extra
                    )
                pit_id = resp.get("pit_id", pit_id)
                hits = resp.get("hits", {}).get("hits", [])
                if not hits:
                    return
                remaining -= len(hits)
                search_after = hits[-1]["sort"]
                yield [_record(h["_source"]) for h in hits]
                if len(hits) < size:
                    return
        finally:
            self._close_pit(pit_id)

    def count(self, query: RecordQuery) -> int:
        hidden, floor = self._visibility(query)
        indices = self._indices(query, floor)
        if not indices:
            return 0
        with _translate_errors("count"):
            resp = _while_shards_start(
                lambda: self._client.count(
                    index=indices,
                    query=self._query(query, hidden, with_after=False),
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )
            )
        return int(resp["count"])

    def aggregate(self, q: agg.AggregateQuery) -> agg.Groups:
        """RecordAggregation: the terms top N or composite pages (backends/elasticsearch/aggregate.py),
        each step one search with size 0.

        One round trip for the usual call, with the registry as exact as a read of its own: the
        query is planned with the registry entries this store last read for the LogStores (a
        guess), and the first search goes out as an _msearch that also reads those entries (a
        search of the registry by id, which sees every change made before the call began: the
        registry's writes refresh before they return). If what it read differs from the guess
        (another replica deleted the LogStore or raised its floor meanwhile), the answer is
        discarded and the query planned again with what was read, as the two-request way did."""
        rq = q.query
        keys = self._keys(rq)
        guess = self._guess(keys)
        if guess is not None and self._indices(rq, self._rules(keys, guess)[1]):
            plan: list[Any] = [guess, False]  # entries, checked
        else:  # nothing seen yet, or a guess that names no index: read the registry first
            plan = [self._read_registry(keys), True]

        made: list[Any] = [None, "", {}]  # the entries planned with, their indices and query

        def search(aggs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            if made[0] is not plan[0]:
                hidden, floor = self._rules(keys, plan[0])
                made[:] = [plan[0], self._indices(rq, floor), self._query(rq, hidden, with_after=False)]
            indices, body_query = made[1], made[2]
            body = {"size": 0, "query": body_query, "aggs": aggs, "track_total_hits": False}
            if not plan[1]:
                plan[1] = True
                read, answer = self._checked_search(keys, indices, body, timeout_s)
                if read == plan[0] and answer is not None:
                    return answer
                if read != plan[0]:
                    plan[0] = read
                    return search(aggs, timeout_s)
            if not indices:
                raise _NothingToRead
            with _translate_errors("aggregate"):
                resp = _while_shards_start(
                    lambda: self._timed(timeout_s).search(
                        index=indices,
                        ignore_unavailable=True,
                        allow_no_indices=True,
                        allow_partial_search_results=False,
                        filter_path=["aggregations", "_shards.total"],
                        **body,
                    )
                )
            return {**resp.get("aggregations", {}), "_shards": resp.get("_shards", {}).get("total", 0)}

        try:
            return es_aggregate.run(q, search, one_shard=self._one_shard(rq, plan[0], keys))
        except _NothingToRead:
            return agg.Groups([])

    def _timed(self, timeout_s: float) -> Elasticsearch:
        """The client with a request timeout of timeout_s rounded up to the next 0.1 s (a made
        client is kept: Elasticsearch.options() costs ~0.5 ms, a tenth of a small aggregation)."""
        key = math.ceil(timeout_s * 10)
        client = self._timeouts.get(key)
        if client is None:
            if len(self._timeouts) > 1000:
                self._timeouts.clear()
            client = self._timeouts[key] = self._client.options(request_timeout=key / 10)
        return client

    def _checked_search(
        self, keys: dict[str, str], indices: str, body: dict[str, Any], timeout_s: float
    ) -> tuple[dict[str, Entry], dict[str, Any] | None]:
        """One _msearch: the registry entries of `keys` and the search `body` on `indices`.
        Returns (the entries read, the search's aggregations or None if it failed: the caller
        then runs it alone, which raises or retries as a plain search does)."""
        searches: list[dict[str, Any]] = [
            {"index": self.registry.name, "ignore_unavailable": True, "allow_no_indices": True},
            {"size": len(keys), "query": {"ids": {"values": list(keys)}}},
            {
                "index": indices,
                "ignore_unavailable": True,
                "allow_no_indices": True,
                "allow_partial_search_results": False,
            },
            body,
        ]
        with _translate_errors("aggregate"):
            resp = self._timed(timeout_s).msearch(
                searches=searches,
                filter_path=[
                    "responses.hits.hits._id",
                    "responses.hits.hits._source",
                    "responses.aggregations",
                    "responses.error.type",
                    "responses._shards.failed",
                    "responses._shards.total",
                ],
            )
        registry, answer = resp["responses"]
        if "error" in registry:
            return self._read_registry(keys), None
        read = {h["_id"]: _registry_entry(h["_source"]) for h in registry.get("hits", {}).get("hits", [])}
        self._remember(keys, read)
        if "error" in answer or answer.get("_shards", {}).get("failed", 0):
            return read, None
        return read, {**answer.get("aggregations", {}), "_shards": answer.get("_shards", {}).get("total", 0)}

    def _one_shard(self, rq: RecordQuery, entries: dict[str, Entry], keys: dict[str, str]) -> bool:
        """Whether the aggregation is expected to read one shard: one primary per day index, and
        one day index named (a range within one UTC day, no first-layout index left). Only an
        expectation: the plan checks the shard count each response reports."""
        indices = self._indices(rq, self._rules(keys, entries)[1])
        return self._cfg.shards == 1 and "," not in indices and "*" not in indices

    def _keys(self, query: RecordQuery) -> dict[str, str]:
        """ls_key -> LogStore name of the queried LogStores."""
        return {ls_key(query.account_id, query.region, query.project, s): s for s in dict.fromkeys(query.log_stores)}

    def _guess(self, keys: dict[str, str]) -> dict[str, Entry] | None:
        """The entries last read for keys (None: some key was never read)."""
        seen = self._seen
        if any(k not in seen for k in keys):
            return None
        return {k: e for k in keys if (e := seen[k]) is not None}

    def _remember(self, keys: dict[str, str], entries: dict[str, Entry]) -> None:
        if len(self._seen) > 100_000:
            self._seen.clear()
        for k in keys:
            self._seen[k] = entries.get(k)

    def _read_registry(self, keys: dict[str, str]) -> dict[str, Entry]:
        with _translate_errors("read the LogStore registry"):
            entries = self.registry.get(keys)
        self._remember(keys, entries)
        return entries

    def _rules(self, keys: dict[str, str], entries: dict[str, Entry]) -> tuple[list[dict[str, Any]], int]:
        """Clauses that exclude the hidden records of entries, and the earliest start_time any of
        the LogStores can show."""
        hidden: list[dict[str, Any]] = []
        for e in entries.values():
            hidden += _hidden_clauses(e, term={"log_store": e.log_store})
        floors = [entries[k].floor_ms if k in entries else 0 for k in keys]
        return hidden, min(floors, default=0)

    def _close_pit(self, pit_id: str) -> None:
        try:
            self._client.close_point_in_time(id=pit_id)
        except NotFoundError:
            pass  # expired already
        except Exception as exc:  # noqa: BLE001 - never mask the error that ended the search
            log.warning("could not close point in time: %s (it expires after %s)", exc, self._cfg.pit_keep_alive)

    def _bounds(self, query: RecordQuery) -> tuple[int, int]:
        """[start, end) of start_time, narrowed by `after` (everything beyond it is excluded)."""
        start, end = _clamp(query.start_ms, query.end_ms)
        if query.after is not None:
            t = query.after[0]
            if query.newest_first:
                end = min(end, t + 1)
            else:
                start = max(start, t)
        return start, end

    def _visibility(self, query: RecordQuery) -> tuple[list[dict[str, Any]], int]:
        """The registry's rules for the queried LogStores (registry.py), read now: clauses that
        exclude their hidden records, and the earliest start_time any of them can show (so the
        indices of days every one of them has aged out of are not even named)."""
        keys = self._keys(query)
        return self._rules(keys, self._read_registry(keys))

    def _indices(self, query: RecordQuery, floor: int = 0) -> str:
        """Comma-joined names/patterns of the indices the query can touch ("" = none): the
        shared day indices of its range, and, while any is left, the first layout's day indices
        of its LogStores."""
        start, end = self._bounds(query)
        start = max(start, floor)
        stores = list(dict.fromkeys(query.log_stores))
        if start >= end or not stores:
            return ""
        first, last = start // DAY_MS, (end - 1) // DAY_MS
        joined = ",".join(day_patterns(self._base, first, last))
        if len(joined) > _MAX_INDEX_LIST // 3:
            joined = f"{self._base}-*"
        if not self._has_legacy():
            return joined
        room = _MAX_INDEX_LIST - len(joined) - 1
        prefix = self._cfg.index_prefix
        bases = [log_store_base(prefix, query.account_id, LogStoreKey(query.region, query.project, s)) for s in stores]
        legacy = ",".join(p for b in bases for p in day_patterns(b, first, last))
        if len(legacy) > room:  # long ranges: every day index of the LogStores
            legacy = ",".join(f"{b}-*" for b in bases)
        if len(legacy) > room:
            # So many LogStores that even that is too long for a URL: the whole first layout, the
            # term filters on the LogStore fields keep the result exact.
            legacy = legacy_pattern(prefix)
        return f"{joined},{legacy}"

    def _time_range(self, query: RecordQuery) -> dict[str, Any]:
        start, end = self._bounds(query)
        return {"range": {"start_time": {"gte": start, "lt": end, "format": "epoch_millis"}}}

    def _query(self, query: RecordQuery, hidden: list[dict[str, Any]], *, with_after: bool) -> dict[str, Any]:
        stores = list(dict.fromkeys(query.log_stores))
        filters: list[dict[str, Any]] = [
            {"term": {"account_id": query.account_id}},
            {"term": {"region": query.region}},
            {"term": {"project": query.project}},
            {"terms": {"log_store": stores}},
        ]
        if with_after and query.after is not None:
            filters.append(self._time_range(query))
            t, rid = query.after
            op = "lt" if query.newest_first else "gt"
            filters.append(
                {
                    "bool": {
                        "minimum_should_match": 1,
                        "should": [
                            {"range": {"start_time": {op: t, "format": "epoch_millis"}}},
                            {"range": {"record_id": {op: rid}}},
                        ],
                    }
                }
            )
        else:
            start, end = _clamp(query.start_ms, query.end_ms)
            filters.append({"range": {"start_time": {"gte": start, "lt": end, "format": "epoch_millis"}}})
        if query.filter is not None:
            filters.append(to_query(query.filter))  # type: ignore[arg-type]
        if hidden:
            return {"bool": {"filter": filters, "must_not": hidden}}
        return {"bool": {"filter": filters}}

    # -- deleting ------------------------------------------------------------------------------

    def _day_indices(self, account_id: str, key: LogStoreKey) -> dict[str, int]:
        """The LogStore's existing day indices of the FIRST layout -> their UTC day number."""
        base = log_store_base(self._cfg.index_prefix, account_id, key)
        with _translate_errors("list indices"):
            resp = self._client.indices.resolve_index(name=f"{base}-*", expand_wildcards="all")
        out = {}
        for entry in resp.get("indices", []):
            day = _day_of_index(base, entry["name"])
            if day is not None:
                out[entry["name"]] = day
        return out

    def _shared_indices(self) -> dict[str, int]:
        """The existing shared day indices -> their UTC day number."""
        with _translate_errors("list indices"):
            resp = self._client.indices.resolve_index(name=f"{self._base}-*", expand_wildcards="all")
        out = {}
        for entry in resp.get("indices", []):
            day = _day_of_index(self._base, entry["name"])
            if day is not None:
                out[entry["name"]] = day
        return out

    def _delete_indices(self, names: Iterable[str]) -> None:
        with _translate_errors("delete indices"):
            for chunk in _chunks(sorted(names)):
                self._client.indices.delete(index=chunk, ignore_unavailable=True)
        self._known.difference_update(names)

    def _entry(self, account_id: str, key: LogStoreKey) -> Entry:
        return Entry(
            ls_key(account_id, key.region, key.project, key.name), account_id, key.region, key.project, key.name
        )

    def drop_log_store(self, account_id: str, key: LogStoreKey) -> None:
        """Hide every record of the LogStore at once (a deletion marker in the registry: reads
        exclude what was ingested before it), drop its first-layout indices, and delete its
        documents where the cluster has _delete_by_query; otherwise the shared day indices lose
        them when they age out (sweep). Returns only once the clock has passed the marker, so a
        LogStore of the same name created afterwards writes records that are newer."""
        entry = self._entry(account_id, key)
        with _translate_errors("mark the LogStore deleted"):
            mark = self.registry.mark_deleted(entry, _now_ms())
        if self._has_legacy():
            names = self._day_indices(account_id, key)
            if names:
                self._delete_indices(names)
                log.info("dropped %d first-layout day index(es) of %s (account %s)", len(names), key, account_id)
        if self.delete_by_query_supported():
            self._delete_by_query(_hidden_clauses(dataclasses.replace(entry, deleted_ms=mark), term=None)[0], entry)
        while _now_ms() <= mark:
            time.sleep(0.001)
        log.info("LogStore %s (account %s) hidden from reads (deletion marker %d)", key, account_id, mark)

    def enforce_retention(self, account_id: str, key: LogStoreKey, retention_days: int, now_ms: int) -> int:
        """Hide the records of UTC days before (now - retention_days): the LogStore's floor in the
        registry rises to the start of the first day kept (never falls), first-layout day indices
        before it are dropped, and the documents are deleted where the cluster can; then, at most
        every sweep_interval_s, the sweep drops whole shared day indices. Returns the number of
        days that held records of the LogStore and were dropped now."""
        floor = (now_ms - retention_days * DAY_MS) // DAY_MS * DAY_MS
        dropped: set[int] = set()
        if self._has_legacy():
            old = {n: day for n, day in self._day_indices(account_id, key).items() if day * DAY_MS < floor}
            if old:
                self._delete_indices(old)
                dropped |= set(old.values())
                log.info(
                    "retention dropped %d first-layout day index(es) of %s (account %s)", len(old), key, account_id
                )
        entry = self._entry(account_id, key)
        with _translate_errors("retention"):
            current = self.registry.get([entry.ls_key]).get(entry.ls_key)
            before = current.floor_ms if current is not None else 0
            if floor > before:
                dropped |= self._days_with_records(current or entry, before, floor)
                self.registry.raise_floor(entry, floor)
                if self.delete_by_query_supported():
                    rule = {"range": {"start_time": {"lt": floor, "format": "epoch_millis"}}}
                    self._delete_by_query(rule, entry)
        self.maybe_sweep(now_ms)
        return len(dropped)

    def _days_with_records(self, entry: Entry, start_ms: int, end_ms: int) -> set[int]:
        """The UTC days in [start_ms, end_ms) on which the LogStore has records not yet hidden."""
        first, last = start_ms // DAY_MS, (end_ms - 1) // DAY_MS
        index = ",".join(day_patterns(self._base, first, last))
        if len(index) > _MAX_INDEX_LIST:
            index = f"{self._base}-*"
        resp = self._client.search(
            index=index,
            size=0,
            query={
                "bool": {
                    "filter": [
                        {"term": {"ls_key": entry.ls_key}},
                        {"range": {"start_time": {"gte": start_ms, "lt": end_ms, "format": "epoch_millis"}}},
                    ],
                    "must_not": _hidden_clauses(entry, term=None),
                }
            },
            aggs={
                "days": {"date_histogram": {"field": "start_time", "fixed_interval": f"{DAY_MS}ms", "min_doc_count": 1}}
            },
            ignore_unavailable=True,
            allow_no_indices=True,
            track_total_hits=False,
        )
        return {int(b["key"]) // DAY_MS for b in resp.get("aggregations", {}).get("days", {}).get("buckets", [])}

    def delete_by_query_supported(self) -> bool:
        """Whether the cluster has _delete_by_query (the reindex module), asked once with a query
        that matches nothing; the test distribution answers 400 "no handler found"."""
        if self._dbq is None:
            self.registry.ensure()
            try:
                self._client.delete_by_query(index=self.registry.name, query={"match_none": {}})
                self._dbq = True
            except ApiError as exc:
                if exc.status_code not in (400, 404, 405):
                    raise
                self._dbq = False
            log.info(
                "Elasticsearch %s _delete_by_query: deleted and aged-out records %s",
                "has" if self._dbq else "has no",
                "are deleted at once" if self._dbq else "stay hidden until their whole day index is dropped",
            )
        return self._dbq

    def _delete_by_query(self, rule: dict[str, Any], entry: Entry) -> None:
        with _translate_errors("delete by query"):
            self._client.delete_by_query(
                index=f"{self._base}-*",
                query={"bool": {"filter": [{"term": {"ls_key": entry.ls_key}}, rule]}},
                conflicts="proceed",
                refresh=True,
                wait_for_completion=True,
                allow_no_indices=True,
                ignore_unavailable=True,
            )

    def maybe_sweep(self, now_ms: int) -> None:
        """sweep(), unless one ran less than sweep_interval_s ago or runs right now."""
        if time.monotonic() - self._last_sweep < self._cfg.sweep_interval_s:
            return
        if not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._last_sweep = time.monotonic()
            self._sweep(now_ms)
        except Exception:  # noqa: BLE001 - the next round tries again; reads are exact meanwhile
            log.exception("sweep of the shared day indices failed")
        finally:
            self._sweep_lock.release()

    def sweep(self, now_ms: int) -> list[str]:
        """Physical removal: drop every shared day index of a past UTC day in which every
        LogStore is hidden (past its floor, or deleted before its records there were written),
        and remove the deletion markers that hide nothing any more. Returns the dropped indices.

        Each candidate is checked again under a write block (index.blocks.write) right before the
        delete: a record written to it meanwhile is refused (the sink retries it, into a new index
        of that day) or makes the check fail, never lost with the index. A write block on a past
        day index is taken for one a killed sweep left: checked again, and dropped or lifted."""
        with self._sweep_lock:
            self._last_sweep = time.monotonic()
            return self._sweep(now_ms)

    def _sweep(self, now_ms: int) -> list[str]:
        entries = {e.ls_key: e for e in self.registry.all()}
        today = now_ms // DAY_MS
        past = {n: d for n, d in self._shared_indices().items() if d < today}
        if not past and not any(e.deleted_ms for e in entries.values()):
            return []
        docs, blocked = self._index_states(list(past))
        dropped = []
        for name, day in sorted(past.items(), key=lambda x: x[1]):
            # A past day index left write-blocked (a sweep killed between block and delete) is
            # checked again here, which drops or unblocks it.
            if name in blocked or _all_hidden(self._groups_of(name, docs.get(name, -1)), entries, day):
                if self._drop_if_hidden(name, day):
                    dropped.append(name)
        for e in entries.values():
            if e.deleted_ms and self._count_before_marker(e) == 0 and self.registry.clear_marker(e):
                log.info(
                    "deletion marker of %s/%s/%s (account %s) removed: nothing left to hide",
                    e.region,
                    e.project,
                    e.log_store,
                    e.account_id,
                )
        if dropped:
            log.info("sweep dropped %d shared day index(es): %s", len(dropped), ", ".join(dropped))
        return dropped

    def _index_states(self, names: list[str]) -> tuple[dict[str, int], set[str]]:
        """(documents per index, the indices with a write block), two requests for all."""
        if not names:
            return {}, set()
        pattern = f"{self._base}-*"
        with _translate_errors("index stats"):
            stats = self._client.indices.stats(index=pattern, metric="docs", expand_wildcards="all")
            settings = self._client.indices.get_settings(index=pattern, name="index.blocks.write", flat_settings=True)
        docs = {n: int(v["primaries"].get("docs", {}).get("count", 0)) for n, v in stats.get("indices", {}).items()}
        blocked = {n for n, v in settings.items() if str(v.get("settings", {}).get("index.blocks.write")) == "true"}
        return docs, blocked & set(names)

    def _groups_of(self, index: str, docs: int = -1) -> dict[str, int]:
        """ls_key -> the latest ingested_ms of its records in the index (one composite
        aggregation, kept while the index's document count, `docs`, stays the same; -1: do not
        use the kept one)."""
        hit = self._groups.get(index)
        if docs >= 0 and hit is not None and hit[0] == docs:
            return hit[1]
        groups: dict[str, int] = {}
        after: dict[str, Any] | None = None
        while True:
            comp: dict[str, Any] = {"size": 1000, "sources": [{"k": {"terms": {"field": "ls_key"}}}]}
            if after is not None:
                comp["after"] = after
            with _translate_errors("aggregate"):
                resp = self._client.search(
                    index=index,
                    size=0,
                    aggs={"g": {"composite": comp, "aggs": {"m": {"max": {"field": "ingested_ms"}}}}},
                    track_total_hits=False,
                    ignore_unavailable=True,
                )
            g = resp.get("aggregations", {}).get("g", {})
            for bucket in g.get("buckets", []):
                groups[bucket["key"]["k"]] = int(bucket["m"]["value"] or 0)
            after = g.get("after_key")
            if not g.get("buckets") or after is None:
                break
        if docs >= 0:
            self._groups[index] = (docs, groups)
        return groups

    def _drop_if_hidden(self, name: str, day: int) -> bool:
        with _translate_errors("block writes"):
            self._client.indices.put_settings(index=name, settings={"index.blocks.write": True})
        deleted = False
        try:
            with _translate_errors("refresh"):
                self._client.indices.refresh(index=name)
            groups = self._groups_of(name)
            with _translate_errors("read the LogStore registry"):
                entries = self.registry.get(groups)
            if _all_hidden(groups, entries, day):
                self._delete_indices([name])
                self._groups.pop(name, None)
                deleted = True
        finally:
            if not deleted:
                with _translate_errors("unblock writes"):
                    self._client.indices.put_settings(index=name, settings={"index.blocks.write": None})
        return deleted

    def _count_before_marker(self, e: Entry) -> int:
        with _translate_errors("count"):
            resp = self._client.count(
                index=f"{self._base}-*",
                query={
                    "bool": {
                        "filter": [
                            {"term": {"ls_key": e.ls_key}},
                            {"range": {"ingested_ms": {"lt": e.deleted_ms, "format": "epoch_millis"}}},
                        ]
                    }
                },
                ignore_unavailable=True,
                allow_no_indices=True,
            )
        return int(resp["count"])

    # -- migration -----------------------------------------------------------------------------

    def migrate_first_layout(self, batch_size: int = 5000) -> tuple[int, int]:
        """Copy every index of the first layout into the shared day indices, then delete it
        (once its document count matches what was copied). Idempotent: writes are create-only,
        so a run interrupted half way is simply run again. Run it while no LogStore is being
        deleted (a copy racing a purge could bring the deleted records back under a new
        LogStore of the same name). Returns (indices migrated, records copied)."""
        with _translate_errors("list indices"):
            resp = self._client.indices.resolve_index(
                name=legacy_pattern(self._cfg.index_prefix), expand_wildcards="open"
            )
        names = sorted(i["name"] for i in resp.get("indices", []))
        copied_total = 0
        for name in names:
            copied = 0
            with _translate_errors("open point in time"):
                pit_id = self._client.open_point_in_time(index=name, keep_alive=self._cfg.pit_keep_alive)["id"]
            try:
                after: list[Any] | None = None
                while True:
                    extra: dict[str, Any] = {} if after is None else {"search_after": after}
                    with _translate_errors("search"):
                        page = self._client.search(
                            pit={"id": pit_id, "keep_alive": self._cfg.pit_keep_alive},
                            size=batch_size,
                            sort=["_shard_doc"],
                            track_total_hits=False,
                            **extra,
                        )
                    pit_id = page.get("pit_id", pit_id)
                    hits = page["hits"]["hits"]
                    if not hits:
                        break
                    self.write([_record(h["_source"]) for h in hits])
                    copied += len(hits)
                    after = hits[-1]["sort"]
            finally:
                self._close_pit(pit_id)
            with _translate_errors("count"):
                left = int(self._client.count(index=name)["count"])
            if left != copied:
                raise RuntimeError(f"{name}: copied {copied} of {left} documents (written to meanwhile?); run again")
            self._delete_indices([name])
            copied_total += copied
            log.info("migrated %s: %d record(s) into the shared day indices", name, copied)
        self._legacy = None  # look again at the next read
        return len(names), copied_total

    # -- lifecycle -----------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Whether the cluster answers and is not red, within about health_timeout_s."""
        t = self._cfg.health_timeout_s
        try:
            resp = self._client.options(request_timeout=t, max_retries=0).cluster.health()
        except Exception as exc:  # noqa: BLE001 - any failure means not healthy
            log.debug("elasticsearch health check failed: %s", exc)
            return False
        return resp.get("status") in ("green", "yellow")

    def close(self) -> None:
        if self._own_client:
            self._client.close()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _hidden_clauses(e: Entry, term: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A must_not clause matching the records entry hides (none: []), limited to `term` (the
    LogStore's name inside a query already filtered on account, region and project) if given."""
    should: list[dict[str, Any]] = []
    if e.floor_ms > 0:
        should.append({"range": {"start_time": {"lt": e.floor_ms, "format": "epoch_millis"}}})
    if e.deleted_ms > 0:
        should.append({"range": {"ingested_ms": {"lt": e.deleted_ms, "format": "epoch_millis"}}})
        # first-layout documents have no ingested_ms: all of them predate any marker
        should.append({"bool": {"must_not": {"exists": {"field": "ingested_ms"}}}})
    if not should:
        return []
    clause: dict[str, Any] = {"should": should, "minimum_should_match": 1}
    if term is not None:
        clause["filter"] = [{"term": term}]
    return [{"bool": clause}]


def _all_hidden(groups: dict[str, int], entries: dict[str, Entry], day: int) -> bool:
    """Whether every LogStore with records in a day index hides all of them."""
    end = (day + 1) * DAY_MS
    for key, latest in groups.items():
        e = entries.get(key)
        if e is None or not (e.floor_ms >= end or e.deleted_ms > latest):
            return False
    return True


def _make_client(cfg: ElasticsearchConfig) -> Elasticsearch:
    kwargs: dict[str, Any] = dict(
        hosts=list(cfg.hosts),
        request_timeout=cfg.request_timeout_s,
        max_retries=cfg.max_retries,
        retry_on_timeout=False,
        verify_certs=cfg.verify_certs,
    )
    if cfg.username:
        kwargs["basic_auth"] = (cfg.username, cfg.password)
    if cfg.api_key:
        kwargs["api_key"] = cfg.api_key
    if cfg.ca_file:
        kwargs["ca_certs"] = cfg.ca_file
    return Elasticsearch(**kwargs)


def _record(src: dict[str, Any]) -> FlowRecord:
    packets = int(src["packets_u64"]) if "packets_u64" in src else src["packets"]
    nbytes = int(src["bytes_u64"]) if "bytes_u64" in src else src["bytes"]
    return FlowRecord(
        src["record_id"],
        src["version"],
        src["account_id"],
        src["flow_log_id"],
        src["region"],
        src["project"],
        src["log_store"],
        _enum("resource_type", src["resource_type"]),
        src["resource_id"],
        src["network_id"],
        src.get("src_addr", ""),
        src.get("dst_addr", ""),
        src["src_port"],
        src["dst_port"],
        src["protocol"],
        packets,
        nbytes,
        src["start_time"],
        src["end_time"],
        _enum("action", src["action"]),
        _enum("log_status", src["log_status"]),
        _enum("direction", src["direction"]),
        src["tcp_flags"],
        src.get("rule_id", ""),
        _enum("rule_kind", src["rule_kind"]) if "rule_kind" in src else 0,
        src.get("sampling_rate", 0),
    )


_ENUM_NUMBERS = {f: {m.name: int(m) for m in cls} for f, cls in ENUM_FIELDS.items()}


def _enum(field: str, name: str) -> int:
    number = _ENUM_NUMBERS[field].get(name)
    return number if number is not None else enum_number(field, name)


_SHARD_START_WAITS = (0.1, 0.2, 0.4, 0.8, 1.5)


def _while_shards_start(call: Callable[[], Any]) -> Any:
    """call(), retried for about 3 s while it fails with 503 because a shard is not started yet.

    The sink's bulk write creates a LogStore's day index (its first records, and every new UTC
    day); until the new primary is STARTED, a search that names the index fails as a whole ("all
    shards failed" / "missing shards", 503), although that index cannot hold a delivered record
    yet. A fresh shard starts within a second, so a short wait turns that into a normal answer;
    any other error, and a shard that stays down, still fail at once / after the waits.
    """
    for pause in _SHARD_START_WAITS:
        try:
            return call()
        except ApiError as exc:
            if exc.status_code != 503 or "circuit_breaking_exception" in str(exc.body):
                raise  # a full heap is no shard starting: waiting would not help
            log.info("a shard is not started yet; retrying the search in %.1fs: %s", pause, exc)
            time.sleep(pause)
    return call()


def _chunks(names: list[str]) -> Iterator[str]:
    """Comma-joined groups of index names short enough for a URL."""
    group: list[str] = []
    size = 0
    for n in names:
        if group and size + len(n) + 1 > _MAX_INDEX_LIST:
            yield ",".join(group)
            group, size = [], 0
        group.append(n)
        size += len(n) + 1
    if group:
        yield ",".join(group)


class _translate_errors:
    """Turns "the cluster is unreachable" into the domain's Unavailable (the API maps it to
    UNAVAILABLE, which clients retry); API errors (a bug, a bad request) pass unchanged."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is not None and isinstance(exc, (ESConnectionError, ConnectionTimeout)):
            raise Unavailable(f"Elasticsearch is unreachable ({self.what}): {exc}") from exc
        if exc is not None and isinstance(exc, ApiError) and exc.status_code in (502, 503, 504):
            raise Unavailable(f"Elasticsearch is unavailable ({self.what}): {exc}") from exc
        return False
