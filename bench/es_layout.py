"""The Elasticsearch layouts side by side on the same records: `python -m bench.es_layout URL`;
and load_from_duckdb(), the fast way to put a benchmark data set into the shared layout
(`python -m bench.es_layout URL --load FILE.duckdb LOG_STORE [PREFIX]`).

Writes 20 LogStores x 10,000 records (one UTC day) twice into the cluster at URL: through the
store into the shared day indices, and by hand into the first layout (one index per LogStore and
day, `_id` = record_id, the same settings), then force-merges both and prints bytes per record,
and the median latency of one LogStore's newest 100 records and of its count: through the store
(registry read included), and as one hand-written search on each layout. Deletes what it made.
Reads and writes nothing else; the baseline is measured in the same run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from elasticsearch import Elasticsearch, helpers

from backends.elasticsearch.config import ElasticsearchConfig
from backends.elasticsearch.filter_dsl import ENUM_FIELDS
from backends.elasticsearch.records import (
    DAY_MS,
    MAPPING,
    ElasticsearchRecordStore,
    day_suffix,
    log_store_base,
    ls_key,
)
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import RecordQuery

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
    from tests.contract.conftest import ACCOUNT, DAY0_MS, PROJECT, REGION, make_records

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


# -- loading a benchmark data set fast ---------------------------------------------------------------

_LOAD_CHUNK = 10_000  # documents per bulk request (~6 MB)
_LOAD_IN_FLIGHT = 3  # bulk requests at once: Elasticsearch indexes while Python builds the next


def load_from_duckdb(url: str, prefix: str, source: Path, log_store: str) -> tuple[int, int, int]:
    """Bulk the records of an embedded records file (a DuckDB `records` table, as
    backends/embedded/records.py writes it; opened read-only) into the shared day indices of
    `prefix`, as the server would write them: the day indices are created by the store's own code
    (template, shard budget) and the documents are the store's own (ElasticsearchRecordStore._actions:
    same fields, `_id`, create-only), `ingested_ms` = now. Only the loading is faster than the
    server's write path: one NDJSON body per 10,000 documents, three in flight, the day indices'
    refresh off until the end (then set back to the template's and refreshed). Returns (records,
    first start_time, last start_time); raises if Elasticsearch refused any document other than
    as already stored (409: loading the same file again is a no-op)."""
    import duckdb

    from server.core.model import RECORD_FIELDS

    store = ElasticsearchRecordStore(ElasticsearchConfig(url=url, index_prefix=prefix, request_timeout_s=600))
    es = Elasticsearch(url, request_timeout=600)
    con = duckdb.connect(str(source), read_only=True)
    t0 = time.monotonic()
    try:
        where = "log_store = ?"
        total, lo, hi = con.execute(
            f"SELECT count(*), min(start_time), max(start_time) FROM records WHERE {where}", [log_store]
        ).fetchone()
        days = [
            d
            for (d,) in con.execute(
                f"SELECT DISTINCT start_time // {DAY_MS} FROM records WHERE {where}", [log_store]
            ).fetchall()
        ]
        store.ensure_template()
        store._ensure_days(days)
        indices = ",".join(store.index_name(d * DAY_MS) for d in days)
        es.indices.put_settings(index=indices, settings={"index.refresh_interval": "-1"})
        now_ms = time.time_ns() // 1_000_000
        cur = con.execute(f"SELECT {', '.join(RECORD_FIELDS)} FROM records WHERE {where}", [log_store])
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        refused: list[dict[str, Any]] = []
        sent = 0

        def body(rows: list[tuple[Any, ...]]) -> bytes:
            lines = []
            for a in store._actions([FlowRecord(*r) for r in rows], set(), now_ms):
                lines.append(dumps({"create": {"_index": a["_index"], "_id": a["_id"]}}))
                lines.append(dumps(a["_source"]))
            return ("\n".join(lines) + "\n").encode()

        def send(data: bytes) -> int:
            resp = es.bulk(operations=data, refresh=False, filter_path="errors,items.*.status,items.*.error")
            if resp.get("errors"):
                for item in resp["items"]:
                    result = next(iter(item.values()))
                    if result.get("status") not in (200, 201, 409):
                        refused.append(result)
            return data.count(b"\n") // 2

        with ThreadPoolExecutor(_LOAD_IN_FLIGHT) as pool:
            pending: list[Any] = []
            while True:
                rows = cur.fetchmany(_LOAD_CHUNK)
                if not rows:
                    break
                pending.append(pool.submit(send, body(rows)))
                while len(pending) >= _LOAD_IN_FLIGHT:
                    sent += pending.pop(0).result()
                if refused:
                    break
            for f in pending:
                sent += f.result()
        es.indices.put_settings(index=indices, settings={"index.refresh_interval": store._cfg.refresh_interval})
        es.indices.refresh(index=indices)
        if refused:
            raise RuntimeError(f"Elasticsearch refused {len(refused)} document(s); first: {refused[0]}")
        stored = int(es.count(index=indices, query={"term": {"log_store": log_store}})["count"])
        if stored != total:
            raise RuntimeError(f"{stored:,} documents of {log_store} in {indices} after loading {total:,} records")
        print(
            f"loaded {total:,} records of {log_store} from {source} in {time.monotonic() - t0:.0f} s", file=sys.stderr
        )
        return int(total), int(lo), int(hi)
    finally:
        con.close()
        es.close()
        store.close()


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[2] == "--load":
        load_from_duckdb(sys.argv[1], sys.argv[5] if len(sys.argv) > 5 else "flowlogq", Path(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit("usage: python -m bench.es_layout URL [--load FILE.duckdb LOG_STORE [PREFIX]]")
