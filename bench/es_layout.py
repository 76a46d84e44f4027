"""The Elasticsearch layouts side by side on the same records: `python -m bench.es_layout URL`.

Writes 20 LogStores x 10,000 records (one UTC day) twice into the cluster at URL: through the
store into the shared day indices, and by hand into the first layout (one index per LogStore and
day, `_id` = record_id, the same settings), then force-merges both and prints bytes per record,
and the median latency of one LogStore's newest 100 records and of its count: through the store
(registry read included), and as one hand-written search on each layout. Deletes what it made.
Reads and writes nothing else; the baseline is measured in the same run.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from typing import Any, Callable, Iterator

from elasticsearch import Elasticsearch, helpers

from backends.elasticsearch.config import ElasticsearchConfig
from backends.elasticsearch.filter_dsl import ENUM_FIELDS
from backends.elasticsearch.records import MAPPING, ElasticsearchRecordStore, day_suffix, log_store_base, ls_key
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import RecordQuery
from tests.contract.conftest import ACCOUNT, DAY0_MS, DAY_MS, PROJECT, REGION, make_records

STORES, PER_STORE = 20, 10_000
_NAMES = {f: {int(m): m.name for m in cls} for f, cls in ENUM_FIELDS.items()}


def _median_ms(fn: Callable[[], Any], n: int = 60) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _first_layout(es: Elasticsearch, prefix: str, records: list[FlowRecord]) -> Iterator[dict[str, Any]]:
    props = {k: v for k, v in MAPPING["properties"].items() if k not in ("ls_key", "ingested_ms")}
    settings = {
        "number_of_shards": 1,
        "number_of_replicas": 0,
        "codec": "best_compression",
        "sort.field": ["start_time", "record_id"],
        "sort.order": ["desc", "desc"],
    }
    made: set[str] = set()
    for r in records:
        base = log_store_base(prefix, r.account_id, LogStoreKey(r.region, r.project, r.log_store))
        index = f"{base}-{day_suffix(r.start_time // DAY_MS)}"
        if index not in made:
            es.indices.create(
                index=index, settings={"index": settings}, mappings={"dynamic": "strict", "properties": props}
            )
            made.add(index)
        doc = {k: v for k, v in r._asdict().items() if k in props and not (k.endswith("_addr") and not v)}
        for f, names in _NAMES.items():
            doc[f] = names[doc[f]]
        yield {"_op_type": "create", "_index": index, "_id": r.record_id, "_source": doc}


def main(url: str) -> None:
    es = Elasticsearch(url, request_timeout=600)
    prefix = "bl" + uuid.uuid4().hex[:6]
    store = ElasticsearchRecordStore(ElasticsearchConfig(url=url, index_prefix=prefix))
    records = [
        r
        for i in range(STORES)
        for r in make_records(ACCOUNT, REGION, PROJECT, f"ls-{i}", PER_STORE, seed=i, first_ms=DAY0_MS, span_ms=DAY_MS)
    ]
    try:
        store.ensure_template()
        for name, actions in (
            ("shared", store._actions(records, set(), time.time_ns() // 1_000_000)),
            ("first", _first_layout(es, prefix, records)),
        ):
            t = time.monotonic()
            helpers.bulk(es, actions, chunk_size=5000, refresh=True)
            print(f"{name} layout: bulk of {len(records):,} records {time.monotonic() - t:.1f} s")
        for pattern in (f"{prefix}-flows-*", f"{prefix}-records-*"):
            es.indices.forcemerge(index=pattern, max_num_segments=1)
            st = es.indices.stats(index=pattern, metric="store,docs")["_all"]["primaries"]
            n_idx = len(es.indices.resolve_index(name=pattern)["indices"])
            per = st["store"]["size_in_bytes"] / st["docs"]["count"]
            print(f"{pattern}: {n_idx} indices, {st['docs']['count']:,} docs, {per:.1f} bytes/record")
        q = RecordQuery(ACCOUNT, REGION, PROJECT, ("ls-3",), DAY0_MS - DAY_MS, DAY0_MS + 2 * DAY_MS, limit=100)
        print(f"store.search newest 100 of ls-3: {_median_ms(lambda: list(store.search(q))):.1f} ms")
        print(f"store.count ls-3: {_median_ms(lambda: store.count(q)):.1f} ms")
        key = ls_key(ACCOUNT, REGION, PROJECT, "ls-3")
        print(f"registry read alone: {_median_ms(lambda: store.registry.get([key])):.1f} ms")
        body = {
            "bool": {
                "filter": [
                    {"term": {"account_id": ACCOUNT}},
                    {"term": {"region": REGION}},
                    {"term": {"project": PROJECT}},
                    {"term": {"log_store": "ls-3"}},
                    {"range": {"start_time": {"gte": q.start_ms, "lt": q.end_ms}}},
                ]
            }
        }
        sort = [{"start_time": {"order": "desc"}}, {"record_id": {"order": "desc"}}]
        first = log_store_base(prefix, ACCOUNT, LogStoreKey(REGION, PROJECT, "ls-3")) + "-*"
        for name, index in (("first layout", first), ("shared layout", f"{prefix}-flows-*")):

            def search(index: str = index) -> None:
                es.search(index=index, query=body, sort=sort, size=100, track_total_hits=False)

            print(f"hand-written search, {name}, newest 100 of ls-3: {_median_ms(search):.1f} ms")
    finally:
        store.close()
        names = [i["name"] for i in es.indices.resolve_index(name=f"{prefix}-*")["indices"]]
        for i in range(0, len(names), 20):
            es.indices.delete(index=",".join(names[i : i + 20]), ignore_unavailable=True)
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-flows")
        es.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.es_layout http://127.0.0.1:9200")
    main(sys.argv[1])
