"""The Elasticsearch layout on the real server: shared day indices with a bounded shard count, and
exact deletion and retention of single LogStores inside them (backends/elasticsearch/records.py).

The store is used directly (the gRPC layer adds nothing to these rules); the shard counts and the
documents left are read with raw requests (_cat/shards, _count, _resolve), and what a read must
return is computed here from the written records: a LogStore's records are visible from the start
of the first UTC day its retention keeps, none of a deleted LogStore's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import uuid
import warnings
from collections import Counter
from typing import Iterable, Iterator

import pytest

from backends.elasticsearch.config import ElasticsearchConfig
from backends.elasticsearch.filter_dsl import ENUM_FIELDS
from backends.elasticsearch.records import ElasticsearchRecordStore, ShardBudgetExceeded, log_store_base
from server.core import aggregate as agg
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import RecordQuery
from server.core.query import Scope
from tests.contract.conftest import ACCOUNT, DAY0_MS, DAY_MS, HOUR_MS, PROJECT, REGION, make_records

ALL = (DAY0_MS - 10 * DAY_MS, DAY0_MS + 10 * DAY_MS)


def key(name: str) -> LogStoreKey:
    return LogStoreKey(REGION, PROJECT, name)


def query(names: Iterable[str], start_ms: int = ALL[0], end_ms: int = ALL[1]) -> RecordQuery:
    return RecordQuery(ACCOUNT, REGION, PROJECT, tuple(names), start_ms, end_ms, limit=1_000_000)


def fetch(store: ElasticsearchRecordStore, q: RecordQuery) -> list[FlowRecord]:
    return [r for batch in store.search(q, batch_size=700) for r in batch]


def expected(records: Iterable[FlowRecord], q: RecordQuery) -> list[FlowRecord]:
    rows = [r for r in records if r.log_store in q.log_stores and q.start_ms <= r.start_time < q.end_ms]
    return sorted(rows, key=lambda r: (r.start_time, r.record_id), reverse=True)


def counts_by_log_store(store: ElasticsearchRecordStore, names: tuple[str, ...]) -> dict[str, int]:
    """Aggregate (group by log_store, count) as the server plans it."""
    q = agg.plan(
        Scope(ACCOUNT, REGION, PROJECT, names),
        start_ms=ALL[0],
        end_ms=ALL[1],
        filter_text="",
        group_by=["log_store"],
        interval_ms=None,
        metrics=["count"],
        order_by="",
        limit=1000,
        limits=agg.Limits(max_range_days=0),
    )
    res = agg.finish(q, store.aggregate(q))
    return {row.keys[0]: row.values[0] for row in res.rows}


@dataclasses.dataclass
class Es:
    store: ElasticsearchRecordStore
    prefix: str
    admin: object

    def raw(self, method: str, path: str, body: dict | None = None) -> dict:
        resp = self.admin.perform_request(  # type: ignore[attr-defined]
            method, path, headers={"accept": "application/json", "content-type": "application/json"}, body=body
        )
        return resp.body

    def shards(self) -> list[dict]:
        return self.raw("GET", f"/_cat/shards/{self.prefix}-*?format=json")

    def indices(self, pattern: str) -> list[str]:
        return sorted(i["name"] for i in self.raw("GET", f"/_resolve/index/{pattern}")["indices"])

    def docs_of(self, name: str) -> int:
        """Documents of the LogStore physically in the shared indices (hidden or not)."""
        body = {"query": {"term": {"log_store": name}}}
        return self.raw("POST", f"/{self.prefix}-flows-*/_count?allow_no_indices=true", body)["count"]


@contextlib.contextmanager
def _open(service: dict, **cfg: object) -> Iterator[Es]:
    from elasticsearch import Elasticsearch

    prefix = f"lay-{uuid.uuid4().hex[:10]}"
    store = ElasticsearchRecordStore(
        ElasticsearchConfig(url=service["url"], index_prefix=prefix, **cfg)  # type: ignore[arg-type]
    )
    admin = Elasticsearch(service["url"], request_timeout=60)
    try:
        yield Es(store, prefix, admin)
    finally:
        store.close()
        try:
            names = [i["name"] for i in admin.indices.resolve_index(name=f"{prefix}-*")["indices"]]
            for i in range(0, len(names), 20):
                admin.indices.delete(index=",".join(names[i : i + 20]), ignore_unavailable=True)
            admin.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-flows")
        except Exception as exc:  # noqa: BLE001 - the server may be gone at session end
            warnings.warn(f"could not delete the test indices {prefix}-*: {exc}")
        admin.close()


@pytest.fixture
def es(es_service) -> Iterator[Es]:
    with _open(es_service, sweep_interval_s=3600) as e:
        yield e


def test_500_log_stores_share_a_fixed_number_of_shards(es: Es):
    """500 LogStores with records on 3 UTC days: 3 day indices, 1 primary each, 0 replicas: 3 shards
    (the first layout made 1,500), 4 once retention or a deletion made the registry. Every
    LogStore reads back its own records, and its retention floor is its own."""
    names = tuple(f"ls-{i:03d}" for i in range(500))
    records = [
        r
        for i, n in enumerate(names)
        for r in make_records(ACCOUNT, REGION, PROJECT, n, 4, seed=i, first_ms=DAY0_MS, span_ms=3 * DAY_MS)
    ]
    assert {r.start_time // DAY_MS for r in records} == {DAY0_MS // DAY_MS + d for d in range(3)}
    for i in range(0, len(records), 1000):
        es.store.write(records[i : i + 1000])

    shards = es.shards()
    assert len(shards) == 3, shards
    assert all(s["prirep"] == "p" for s in shards)
    assert len(es.indices(f"{es.prefix}-flows-*")) == 3
    now = DAY0_MS + 2 * DAY_MS + HOUR_MS
    for n in names[:250]:  # half of them keep only today (day 2)
        es.store.enforce_retention(ACCOUNT, key(n), 0, now)
    used, bound = es.store.shard_usage()
    assert (used, bound) == (4, 900)
    health = es.raw("GET", f"/_cluster/health/{es.prefix}-*")
    assert health["active_shards"] == 4 and health["status"] == "green"
    assert len(es.shards()) == 4
    records = [r for r in records if r.log_store >= "ls-250" or r.start_time >= DAY0_MS + 2 * DAY_MS]

    assert es.store.count(query(names)) == len(records)
    for n in ("ls-000", "ls-137", "ls-499"):
        assert fetch(es.store, query((n,))) == expected(records, query((n,)))
    assert counts_by_log_store(es.store, names) == dict(Counter(r.log_store for r in records))


def test_the_shard_budget_refuses_a_new_day_index_with_a_message_naming_the_setting(es_service):
    with _open(es_service, max_shards=2) as e:
        day = [
            make_records(ACCOUNT, REGION, PROJECT, "ls-a", 5, seed=d, first_ms=DAY0_MS + d * DAY_MS, span_ms=DAY_MS)
            for d in range(3)
        ]
        e.store.write(day[0])
        e.store.write(day[1])  # 2 day indices: 2 shards, the bound
        with pytest.raises(ShardBudgetExceeded, match=r"elasticsearch\.max_shards = 2") as exc:
            e.store.write(day[2])
        assert "retention_days" in str(exc.value)
        e.store.write(day[0][:2])  # the existing day indices still take records
        assert len(e.shards()) == 2
        assert fetch(e.store, query(("ls-a",))) == expected(day[0] + day[1], query(("ls-a",)))


def test_deleting_one_log_store_of_a_shared_index_hides_it_at_once(es: Es):
    names = ("ls-a", "ls-b", "ls-c")
    records = {n: make_records(ACCOUNT, REGION, PROJECT, n, 150, seed=30 + i) for i, n in enumerate(names)}
    es.store.write([r for n in names for r in records[n]])
    day_indices = es.indices(f"{es.prefix}-flows-*")
    for index in day_indices:  # the three LogStores share each day index
        terms = es.raw("POST", f"/{index}/_search", {"size": 0, "aggs": {"s": {"terms": {"field": "log_store"}}}})
        assert {b["key"] for b in terms["aggregations"]["s"]["buckets"]} == set(names)

    es.store.drop_log_store(ACCOUNT, key("ls-b"))

    # Invisible at once to search, count and aggregate; the others intact, record for record.
    assert fetch(es.store, query(("ls-b",))) == []
    assert es.store.count(query(("ls-b",))) == 0
    assert es.store.count(query(names)) == 300
    assert counts_by_log_store(es.store, names) == {"ls-a": 150, "ls-c": 150}
    for n in ("ls-a", "ls-c"):
        assert fetch(es.store, query((n,))) == expected(records[n], query((n,)))
    # This distribution has no _delete_by_query: the documents are still there, hidden.
    assert es.store.delete_by_query_supported() is False
    assert es.docs_of("ls-b") == 150

    # A LogStore of the same name starts empty and sees only its own records.
    again = make_records(ACCOUNT, REGION, PROJECT, "ls-b", 20, seed=99)
    es.store.write(again)
    assert fetch(es.store, query(("ls-b",))) == expected(again, query(("ls-b",)))
    assert counts_by_log_store(es.store, names) == {"ls-a": 150, "ls-b": 20, "ls-c": 150}

    # Physical removal: nothing while a LogStore in a day index still shows records there...
    later = DAY0_MS + 30 * DAY_MS
    assert es.store.sweep(later) == []
    assert es.indices(f"{es.prefix}-flows-*") == day_indices
    # ...every day index once all its LogStores are past retention, and the marker goes with it.
    for n in names:
        es.store.enforce_retention(ACCOUNT, key(n), 1, later)
    assert es.store.sweep(later) == day_indices
    assert es.indices(f"{es.prefix}-flows-*") == []
    assert es.raw("GET", f"/{es.prefix}-logstores/_doc/{_ls_key('ls-b')}")["_source"]["deleted_ms"] == 0


def _ls_key(name: str) -> str:
    from backends.elasticsearch.records import ls_key

    return ls_key(ACCOUNT, REGION, PROJECT, name)


def test_retention_of_two_log_stores_in_one_index_is_exact(es: Es):
    """ls-short keeps 1 day, ls-long 3, both with records on the same 5 UTC days: each sees exactly
    the days its retention keeps, whatever the other's; a day index goes once both are past it."""
    short = make_records(ACCOUNT, REGION, PROJECT, "ls-short", 250, seed=50, first_ms=DAY0_MS, span_ms=5 * DAY_MS)
    long = make_records(ACCOUNT, REGION, PROJECT, "ls-long", 250, seed=51, first_ms=DAY0_MS, span_ms=5 * DAY_MS)
    es.store.write(short + long)
    now = DAY0_MS + 4 * DAY_MS + 10 * HOUR_MS
    assert es.store.enforce_retention(ACCOUNT, key("ls-short"), 1, now) == 3  # days 0, 1, 2
    assert es.store.enforce_retention(ACCOUNT, key("ls-long"), 3, now) == 1  # day 0
    assert es.store.enforce_retention(ACCOUNT, key("ls-long"), 30, now) == 0  # a floor never falls

    kept = [r for r in short if r.start_time >= DAY0_MS + 3 * DAY_MS] + [
        r for r in long if r.start_time >= DAY0_MS + 1 * DAY_MS
    ]
    both = ("ls-short", "ls-long")
    for names in (("ls-short",), ("ls-long",), both):
        assert fetch(es.store, query(names)) == expected(kept, query(names))
        assert es.store.count(query(names)) == len(expected(kept, query(names)))
    assert counts_by_log_store(es.store, both) == dict(Counter(r.log_store for r in kept))
    # A range that starts inside the hidden days, and the boundary instant itself.
    edge = query(both, DAY0_MS + 3 * DAY_MS - 1, DAY0_MS + 3 * DAY_MS + HOUR_MS)
    assert fetch(es.store, edge) == expected(kept, edge)

    # Only day 0 is past both retentions: its index alone is dropped.
    assert es.store.sweep(now) == [f"{es.prefix}-flows-2026.03.01"]
    assert len(es.indices(f"{es.prefix}-flows-*")) == 4
    for names in (("ls-short",), ("ls-long",), both):
        assert fetch(es.store, query(names)) == expected(kept, query(names))
    # A past day index left write-blocked (as by a sweep killed between block and delete) is
    # checked again by the next sweep: still needed here, so it is unblocked and takes records.
    day1 = f"{es.prefix}-flows-2026.03.02"
    es.raw("PUT", f"/{day1}/_settings", {"index.blocks.write": True})
    assert es.store.sweep(now) == []
    flat = es.raw("GET", f"/{day1}/_settings?flat_settings=true")[day1]["settings"]
    assert "index.blocks.write" not in flat, flat
    late = make_records(ACCOUNT, REGION, PROJECT, "ls-long", 5, seed=52, first_ms=DAY0_MS + DAY_MS, span_ms=DAY_MS)
    es.store.write(late)
    assert fetch(es.store, query(("ls-long",))) == expected(kept + late, query(("ls-long",)))


def test_records_of_the_first_layout_are_still_read_deleted_aged_out_and_migrated(es: Es, tmp_path):
    """Indices of the per-LogStore layout (written here by hand as the old store did) are read
    together with the shared ones, dropped with their LogStore and by retention."""
    old = make_records(ACCOUNT, REGION, PROJECT, "ls-old", 120, seed=60, first_ms=DAY0_MS, span_ms=3 * DAY_MS)
    other = make_records(ACCOUNT, REGION, PROJECT, "ls-other", 40, seed=61, first_ms=DAY0_MS, span_ms=3 * DAY_MS)
    _write_first_layout(es, old + other)
    new = make_records(ACCOUNT, REGION, PROJECT, "ls-old", 30, seed=62, first_ms=DAY0_MS, span_ms=3 * DAY_MS)
    es.store.write(new)
    both = old + new
    assert fetch(es.store, query(("ls-old",))) == expected(both, query(("ls-old",)))
    assert counts_by_log_store(es.store, ("ls-old", "ls-other")) == {"ls-old": 150, "ls-other": 40}

    now = DAY0_MS + 2 * DAY_MS + HOUR_MS
    base = log_store_base(es.prefix, ACCOUNT, key("ls-old"))
    assert len(es.indices(f"{base}-*")) == 3
    assert es.store.enforce_retention(ACCOUNT, key("ls-old"), 0, now) == 2
    assert es.indices(f"{base}-*") == [f"{base}-2026.03.03"]
    today = [r for r in both if r.start_time >= DAY0_MS + 2 * DAY_MS]
    assert fetch(es.store, query(("ls-old",))) == expected(today, query(("ls-old",)))

    es.store.drop_log_store(ACCOUNT, key("ls-old"))
    assert es.indices(f"{base}-*") == []
    assert fetch(es.store, query(("ls-old",))) == []
    assert fetch(es.store, query(("ls-other",))) == expected(other, query(("ls-other",)))

    # `flowlog-server --es-migrate` copies what is left of the old layout and deletes it.
    cfg = tmp_path / "flowlog.yaml"
    url = es.store._cfg.url
    cfg.write_text(f"query_backend: elasticsearch\nelasticsearch: {{url: '{url}', index_prefix: {es.prefix}}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "server.main", "--config", str(cfg), "--es-migrate"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "migrated 3 index(es) of the per-LogStore layout, 40 record(s)" in run.stderr
    assert es.indices(f"{es.prefix}-records-*") == []
    fresh = ElasticsearchRecordStore(ElasticsearchConfig(url=url, index_prefix=es.prefix))
    try:
        assert fetch(fresh, query(("ls-other",))) == expected(other, query(("ls-other",)))
        assert fetch(fresh, query(("ls-old",))) == []
    finally:
        fresh.close()


def _write_first_layout(es: Es, records: list[FlowRecord]) -> None:
    """Documents as the first layout stored them: one index per LogStore and UTC day, `_id` =
    record_id, no ls_key / ingested_ms."""
    from backends.elasticsearch.records import MAPPING, day_suffix

    props = {k: v for k, v in MAPPING["properties"].items() if k not in ("ls_key", "ingested_ms")}
    lines: list[dict] = []
    made: set[str] = set()
    for r in records:
        index = f"{log_store_base(es.prefix, r.account_id, key(r.log_store))}-{day_suffix(r.start_time // DAY_MS)}"
        if index not in made:
            body = {
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {"dynamic": "strict", "properties": props},
            }
            es.raw("PUT", f"/{index}", body)
            made.add(index)
        doc = {k: v for k, v in r._asdict().items() if k in props and not (k.endswith("_addr") and not v)}
        for f, names in _ENUMS.items():
            doc[f] = names[doc[f]]
        lines += [{"create": {"_index": index, "_id": r.record_id}}, doc]
    resp = es.admin.bulk(operations=lines, refresh=True)  # type: ignore[attr-defined]
    assert not resp["errors"], resp


_ENUMS = {f: {int(m): m.name for m in cls} for f, cls in ENUM_FIELDS.items()}


def test_aggregate_sees_another_replicas_deletion_and_retention_at_the_next_call(es_service):
    """Two stores on one cluster, as two replicas: Aggregate on one plans with the registry
    entries it read last and checks them in the same round trip, so a deletion or a retention
    floor set by the other before the call is applied by that very call."""
    with _open(es_service, sweep_interval_s=3600) as a:
        b = ElasticsearchRecordStore(ElasticsearchConfig(url=es_service["url"], index_prefix=a.prefix))
        try:
            names = ("ls-x", "ls-y")
            old = make_records(ACCOUNT, REGION, PROJECT, "ls-x", 120, seed=70, first_ms=DAY0_MS, span_ms=3 * DAY_MS)
            other = make_records(ACCOUNT, REGION, PROJECT, "ls-y", 80, seed=71, first_ms=DAY0_MS, span_ms=3 * DAY_MS)
            a.store.write(old + other)
            assert counts_by_log_store(a.store, names) == {"ls-x": 120, "ls-y": 80}
            assert counts_by_log_store(a.store, names) == {"ls-x": 120, "ls-y": 80}  # planned with what it read

            b.drop_log_store(ACCOUNT, key("ls-x"))
            assert counts_by_log_store(a.store, names) == {"ls-y": 80}
            again = make_records(ACCOUNT, REGION, PROJECT, "ls-x", 15, seed=72, first_ms=DAY0_MS, span_ms=3 * DAY_MS)
            b.write(again)
            assert counts_by_log_store(a.store, names) == {"ls-x": 15, "ls-y": 80}

            now = DAY0_MS + 2 * DAY_MS + HOUR_MS
            b.enforce_retention(ACCOUNT, key("ls-y"), 1, now)  # keeps days 1 and 2
            kept = [r for r in other if r.start_time >= DAY0_MS + DAY_MS]
            assert counts_by_log_store(a.store, names) == {"ls-x": 15, "ls-y": len(kept)}
            b.enforce_retention(ACCOUNT, key("ls-x"), 0, now + 2 * DAY_MS)  # every day of ls-x aged out
            b.enforce_retention(ACCOUNT, key("ls-y"), 0, now + 2 * DAY_MS)
            assert counts_by_log_store(a.store, names) == {}
        finally:
            b.close()
