"""The Elasticsearch query backend: one index per LogStore and UTC day.

Why plain day indices: the test distribution (and many self-managed clusters) has no data
streams, ILM or _delete_by_query, so retention and LogStore deletion drop whole indices, and a
search names only the day indices its time range overlaps.

Index names: `<prefix>-records-<readable>.<hash>-<yyyy.mm.dd>`, where <readable> is
`<account>-<region>-<project>-<log_store>` lower-cased, with any other character than a-z, 0-9,
`-`, `_` replaced by `_`, truncated (index names are lower case and at most 255 bytes), and
<hash> is 16 hex digits of BLAKE2b over the exact, case-sensitive key. The readable part is for
people; the hash is what tells LogStores apart (`Web` vs `web`). Since neither the prefix nor
the readable part holds a dot, the first dot of an index name ends the readable part, so a
pattern `<base>-*` (or `<base>-2026.*`) of one LogStore can never match another's index, even
for names like `ls-a` and `ls-a-b`. Every query also filters on account/region/project/
log_store (belt and braces).

Mapping (the filter translator backends/elasticsearch/filter_dsl.py depends on it): every
FlowRecord field; src_addr/dst_addr `ip`, omitted from the document when empty (NODATA rows);
start_time/end_time `date` (epoch_millis); enum fields as `keyword` holding the prefix-less
enum name (filter_dsl.enum_name), rule_kind too; rule_id `keyword`; ports, protocol, tcp_flags,
version, sampling_rate `integer`; packets and bytes `long`. Indices made before rule_id,
rule_kind and sampling_rate existed get them when the store first writes (put_mapping on every
index of the prefix, ADDED_FIELDS); their older documents lack them and read back as "", 0, 0.

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

import hashlib
import logging
import re
import threading
import time
from datetime import date, timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence

from elasticsearch import ApiError, ConnectionTimeout, Elasticsearch, NotFoundError, helpers
from elasticsearch import ConnectionError as ESConnectionError

from backends.elasticsearch import aggregate as es_aggregate
from backends.elasticsearch.config import ElasticsearchConfig
from backends.elasticsearch.filter_dsl import ENUM_FIELDS, enum_name, enum_number, to_query
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
    },
}
# Fields added after the first release: put into the mapping of existing indices (see above).
ADDED_FIELDS = ("rule_id", "rule_kind", "sampling_rate")

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


def log_store_base(prefix: str, account_id: str, key: LogStoreKey) -> str:
    """`<prefix>-records-<readable>.<hash>`: the name of a LogStore's indices without the day."""
    exact = "\x1f".join((account_id, key.region, key.project, key.name))
    digest = hashlib.blake2b(exact.encode(), digest_size=_HASH_LEN // 2).hexdigest()
    readable = _UNSAFE.sub("_", f"{account_id}-{key.region}-{key.project}-{key.name}".lower())
    return f"{prefix}-records-{readable[:_READABLE_MAX]}.{digest}"


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

    # -- names ---------------------------------------------------------------------------------

    @property
    def template_name(self) -> str:
        return f"{self._cfg.index_prefix}-records"

    def index_name(self, account_id: str, key: LogStoreKey, start_ms: int) -> str:
        """The day index a record of the LogStore starting at start_ms belongs to."""
        return f"{log_store_base(self._cfg.index_prefix, account_id, key)}-{self._day(start_ms // DAY_MS)}"

    def _day(self, day: int) -> str:
        name = self._day_names.get(day)
        if name is None:
            name = self._day_names[day] = day_suffix(day)
        return name

    # -- writing -------------------------------------------------------------------------------

    def ensure_template(self) -> None:
        """Put (or update) the composable index template `<prefix>-records`; idempotent."""
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
                # Newest-first is the default query: segments sorted that way let a top-N
                # search stop early instead of visiting every matching document.
                settings["sort.field"] = ["start_time", "record_id"]
                settings["sort.order"] = ["desc", "desc"]
            with _translate_errors("put index template"):
                self._client.indices.put_index_template(
                    name=self.template_name,
                    index_patterns=[f"{cfg.index_prefix}-records-*"],
                    template={"settings": {"index": settings}, "mappings": MAPPING},
                    priority=100,
                    meta={"managed_by": "flowlog"},
                )
            with _translate_errors("put mapping"):
                # Indices made from an older template: the mapping is "strict", so documents with
                # the added fields would be refused there until the fields are mapped. Adding a
                # field is always compatible; a no-op where it is mapped already.
                self._client.indices.put_mapping(
                    index=f"{cfg.index_prefix}-records-*",
                    allow_no_indices=True,
                    properties={name: MAPPING["properties"][name] for name in ADDED_FIELDS},
                )
            self._template_ready = True

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
        touched: set[str] = set()
        actions = self._actions(records, touched)
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

    def _actions(self, records: Sequence[FlowRecord], touched: set[str]) -> Iterator[dict[str, Any]]:
        bases: dict[tuple[str, str, str, str], str] = {}
        prefix = self._cfg.index_prefix
        rt_names, act_names = _ENUM_NAMES["resource_type"], _ENUM_NAMES["action"]
        ls_names, dir_names = _ENUM_NAMES["log_status"], _ENUM_NAMES["direction"]
        kind_names = _ENUM_NAMES["rule_kind"]
        for r in records:
            k = (r.account_id, r.region, r.project, r.log_store)
            base = bases.get(k)
            if base is None:
                base = bases[k] = log_store_base(prefix, r.account_id, LogStoreKey(r.region, r.project, r.log_store))
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
            }
            if r.src_addr:
                doc["src_addr"] = r.src_addr
            if r.dst_addr:
                doc["dst_addr"] = r.dst_addr
            if r.packets > INT64_MAX:
                doc["packets"], doc["packets_u64"] = INT64_MAX, str(r.packets)
            if r.bytes > INT64_MAX:
                doc["bytes"], doc["bytes_u64"] = INT64_MAX, str(r.bytes)
            yield {"_op_type": "create", "_index": index, "_id": r.record_id, "_source": doc}

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
        indices = self._indices(query)
        if remaining <= 0 or not indices:
            return
        body_query = self._query(query, with_after=True)
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
        indices = self._indices(query)
        if not indices:
            return 0
        with _translate_errors("count"):
            resp = _while_shards_start(
                lambda: self._client.count(
                    index=indices,
                    query=self._query(query, with_after=False),
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )
            )
        return int(resp["count"])

    def aggregate(self, q: agg.AggregateQuery) -> agg.Groups:
        """RecordAggregation: a composite aggregation paged to its end (see
        backends/elasticsearch/aggregate.py), each page one search with size 0."""
        rq = q.query
        indices = self._indices(rq)
        if not indices:
            return agg.Groups([])
        body_query = self._query(rq, with_after=False)

        def search(aggs: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            with _translate_errors("aggregate"):
                resp = _while_shards_start(
                    lambda: self._client.options(request_timeout=timeout_s).search(
                        index=indices,
                        size=0,
                        query=body_query,
                        aggs=aggs,
                        track_total_hits=False,
                        ignore_unavailable=True,
                        allow_no_indices=True,
                        allow_partial_search_results=False,
                        filter_path=["aggregations"],
                    )
                )
            return resp.get("aggregations", {})

        return es_aggregate.run(q, search)

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

    def _indices(self, query: RecordQuery) -> str:
        """Comma-joined names/patterns of the day indices the query can touch ("" = none)."""
        start, end = self._bounds(query)
        stores = list(dict.fromkeys(query.log_stores))
        if start >= end or not stores:
            return ""
        first, last = start // DAY_MS, (end - 1) // DAY_MS
        bases = [
            log_store_base(self._cfg.index_prefix, query.account_id, LogStoreKey(query.region, query.project, s))
            for s in stores
        ]
        names = [p for b in bases for p in day_patterns(b, first, last)]
        joined = ",".join(names)
        if len(joined) > _MAX_INDEX_LIST:  # long ranges: every day index of the LogStores
            joined = ",".join(f"{b}-*" for b in bases)
        if len(joined) > _MAX_INDEX_LIST:
            # So many LogStores that even that is too long for a URL: the whole prefix, the
            # term filters on the LogStore fields keep the result exact.
            joined = f"{self._cfg.index_prefix}-records-*"
        return joined

    def _time_range(self, query: RecordQuery) -> dict[str, Any]:
        start, end = self._bounds(query)
        return {"range": {"start_time": {"gte": start, "lt": end, "format": "epoch_millis"}}}

    def _query(self, query: RecordQuery, *, with_after: bool) -> dict[str, Any]:
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
        return {"bool": {"filter": filters}}

    # -- deleting ------------------------------------------------------------------------------

    def _day_indices(self, account_id: str, key: LogStoreKey) -> dict[str, int]:
        """The LogStore's existing day indices -> their UTC day number."""
        base = log_store_base(self._cfg.index_prefix, account_id, key)
        with _translate_errors("list indices"):
            resp = self._client.indices.resolve_index(name=f"{base}-*", expand_wildcards="all")
        out = {}
        for entry in resp.get("indices", []):
            day = _day_of_index(base, entry["name"])
            if day is not None:
                out[entry["name"]] = day
        return out

    def _delete_indices(self, names: Iterable[str]) -> None:
        with _translate_errors("delete indices"):
            for chunk in _chunks(sorted(names)):
                self._client.indices.delete(index=chunk, ignore_unavailable=True)

    def drop_log_store(self, account_id: str, key: LogStoreKey) -> None:
        """Delete every day index of the LogStore (by exact name: no wildcard deletes)."""
        names = self._day_indices(account_id, key)
        if names:
            self._delete_indices(names)
            log.info("dropped %d day index(es) of %s (account %s)", len(names), key, account_id)

    def enforce_retention(self, account_id: str, key: LogStoreKey, retention_days: int, now_ms: int) -> int:
        """Delete the day indices of UTC days before (now - retention_days); returns how many."""
        cutoff_day = (now_ms - retention_days * DAY_MS) // DAY_MS
        old = [n for n, day in self._day_indices(account_id, key).items() if day < cutoff_day]
        if old:
            self._delete_indices(old)
            log.info("retention dropped %d day index(es) of %s (account %s)", len(old), key, account_id)
        return len(old)

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
            if exc.status_code != 503:
                raise
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

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and isinstance(exc, (ESConnectionError, ConnectionTimeout)):
            raise Unavailable(f"Elasticsearch is unreachable ({self.what}): {exc}") from exc
        if exc is not None and isinstance(exc, ApiError) and exc.status_code in (502, 503, 504):
            raise Unavailable(f"Elasticsearch is unavailable ({self.what}): {exc}") from exc
        return False
