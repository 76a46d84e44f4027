"""Aggregate latency through the gRPC Aggregate RPC, next to the hand-written equivalent run on
the same data in the same run: DuckDB SQL on a copy of the server's database file, and a plain
Elasticsearch aggregation (terms / date_histogram / cardinality: what a user would write, which
is approximate where flowlog's answer is exact). Baseline and gRPC calls alternate. Peak server
RSS over the phase.

Questions (issue 16): the top 10 talkers by bytes over the whole data set, a 1-minute time series
per action over (up to) the last day, and scanners: sources of REJECTs by distinct destinations.
Datasets are bench/query.py's (same generator, same loaders).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from bench import dataset
from bench.common import ACCOUNT, API_KEY, PROJECT, REGION, Services, log, pct, rmtree, start_server
from bench.query import ES_PREFIX, HOUR, build_elasticsearch, build_embedded

DAY = 24 * HOUR

# name -> (group_by, metrics, filter, interval ms, limit, range: "all" | "day")
QUESTIONS: dict[str, tuple[list[str], list[str], str, int, int, str]] = {
    "top10_talkers": (["src_addr"], ["sum(bytes)"], "", 0, 10, "all"),
    "timeseries_1m_day": (["action"], ["sum(bytes)", "count"], "", 60_000, 10, "day"),
    "scanners": (["src_addr"], ["count_distinct(dst_addr)"], "action = REJECT", 0, 10, "all"),
}


def _range(kind: str, lo: int, hi: int) -> tuple[int, int]:
    return (max(lo, hi + 1 - DAY), hi + 1) if kind == "day" else (lo, hi + 1)


class DuckDBBaseline:
    """Hand-written SQL on a copy of the server's database file (same DuckDB, same layout, same
    memory limit, as many threads as the server's DuckDB takes for an Aggregate: every core)."""

    def __init__(self, path: Path, log_store: str) -> None:
        import duckdb

        from backends.embedded.config import EmbeddedConfig

        threads = EmbeddedConfig().duckdb_aggregate_threads()
        self.con = duckdb.connect(str(path), read_only=True, config={"memory_limit": "256MB", "threads": threads})
        self.log_store = log_store

    def run(self, name: str, t0: int, t1: int) -> int:
        base = "account_id = ? AND region = ? AND project = ? AND log_store = ? AND start_time >= ? AND start_time < ?"
        params = [ACCOUNT, REGION, PROJECT, self.log_store, t0, t1]
        if name == "top10_talkers":
            sql = f"SELECT src_ip, sum(bytes) s FROM records WHERE {base} GROUP BY src_ip ORDER BY s DESC LIMIT 10"
        elif name == "timeseries_1m_day":
            # grouped by the minute's number, not by start_time - start_time % 60000: the same
            # buckets at half the CPU (the form flowlog's statement uses, so the ratio is fair)
            sql = (
                f"SELECT start_time // 60000 * 60000 AS b, action, sum(bytes), count(*) FROM records "
                f"WHERE {base} GROUP BY start_time // 60000, action ORDER BY b"
            )
        else:
            sql = (
                f"SELECT src_ip, count(DISTINCT dst_ip) c FROM records WHERE {base} AND action = 2 "
                f"GROUP BY src_ip ORDER BY c DESC LIMIT 10"
            )
        cur = self.con.cursor()
        rows = cur.execute(sql, params).fetchall()
        cur.close()
        return len(rows)

    def close(self) -> None:
        self.con.close()


class ESBaseline:
    """The hand-written Elasticsearch equivalent doing the same exact work as flowlog's answer:
    - top10_talkers: a terms aggregation (top 11 by sum, ties by key), a `missing` aggregation
      (records without an address) and the totals (for `other`): exact as it is when the search
      read one shard (the response's _shards.total; one day index of one primary, as the bench's
      data sets are), else asked again with a shard_size that lets every shard send all its
      groups, exact when doc_count_error_upper_bound is 0 (checked); when a shard cut its list,
      composite pages of every source (flowlog's plans in the same order);
    - timeseries_1m_day: date_histogram 1m > terms action > sum (exact: every shard sends its
      two or three actions);
    - scanners: a composite aggregation over (src_addr, dst_addr) paged to its end, the distinct
      destinations counted per source here, top 10 (cardinality is HyperLogLog, not exact).
    reference(): what a user would write without caring for exactness (terms size 10 ordered by
    the metric, cardinality): a floor, approximate for talkers and scanners."""

    def __init__(self, es: dict, log_store: str) -> None:
        from elasticsearch import Elasticsearch

        from backends.elasticsearch.records import shared_base

        self.client = Elasticsearch(es["url"], request_timeout=300)
        self.index = shared_base(ES_PREFIX) + "-*"  # the shared day indices; the query filters the LogStore
        self.log_store = log_store

    def _filters(self, t0: int, t1: int) -> list[dict]:
        return [
            {"term": {"log_store": self.log_store}},
            {"range": {"start_time": {"gte": t0, "lt": t1, "format": "epoch_millis"}}},
        ]

    def _search(self, f: list[dict], aggs: dict, with_shards: bool = False) -> dict:
        resp = self.client.search(
            index=self.index, size=0, query={"bool": {"filter": f}}, aggs=aggs, track_total_hits=False
        )
        if with_shards:
            return {**resp["aggregations"], "_shards": resp["_shards"]["total"]}
        return resp["aggregations"]

    def run(self, name: str, t0: int, t1: int) -> int:
        f = self._filters(t0, t1)
        if name == "top10_talkers":
            b = {"b": {"sum": {"field": "bytes"}}}

            def talkers(shard_size: int | None) -> dict:
                terms: dict[str, Any] = {"field": "src_addr", "size": 11, "order": [{"b": "desc"}, {"_key": "asc"}]}
                if shard_size:
                    terms["shard_size"] = shard_size
                aggs = {
                    "t": {"terms": terms, "aggs": b},
                    "m": {"missing": {"field": "src_addr"}, "aggs": b},
                    "n": {"filter": {"match_all": {}}, "aggs": b},
                }
                return self._search(f, aggs, with_shards=True)

            # one shard read (one day index of one primary, as here): its top 11 is exact as it is
            r = talkers(None)
            if r["_shards"] > 1 and r["t"]["doc_count_error_upper_bound"] != 0:
                r = talkers(500_000)  # several shards: exact when no shard cut its list
            if r["_shards"] <= 1 or r["t"]["doc_count_error_upper_bound"] == 0:
                return min(len(r["t"]["buckets"]) + (r["m"]["doc_count"] > 0), 10)
            # not exact (a shard cut its list): every group, by composite pages, ranked here
            sums = self._paged(f, [{"s": {"terms": {"field": "src_addr", "missing_bucket": True}}}], b)
            return len(heapq.nsmallest(10, sums, key=lambda kv: (-kv[1], kv[0])))
        if name == "timeseries_1m_day":
            aggs = {
                "t": {
                    "date_histogram": {"field": "start_time", "fixed_interval": "1m"},
                    "aggs": {"a": {"terms": {"field": "action"}, "aggs": {"b": {"sum": {"field": "bytes"}}}}},
                }
            }
            return len(self._search(f, aggs)["t"]["buckets"])
        f.append({"term": {"action": "REJECT"}})
        counts = self._paged(
            f,
            [
                {"s": {"terms": {"field": "src_addr", "missing_bucket": True}}},
                {"d": {"terms": {"field": "dst_addr", "missing_bucket": True}}},
            ],
            None,
        )
        return len(heapq.nsmallest(10, counts, key=lambda kv: (-kv[1], kv[0])))

    def _paged(self, f: list[dict], sources: list[dict], subs: dict | None) -> list[tuple[str, float]]:
        """A composite aggregation paged to its end (pages of 50,000 buckets, as flowlog's): per
        source, the sum of sub-aggregation `b`, or (a second source) its number of values."""
        out: dict[str, float] = {}
        after = None
        while True:
            comp: dict[str, Any] = {"size": 50_000, "sources": sources}
            if after is not None:
                comp["after"] = after
            g = self._search(f, {"g": {"composite": comp, **({"aggs": subs} if subs else {})}})["g"]
            for bucket in g["buckets"]:
                src = bucket["key"]["s"] or ""
                if subs:
                    out[src] = out.get(src, 0) + bucket["b"]["value"]
                else:
                    out[src] = out.get(src, 0) + (bucket["key"]["d"] is not None)
            after = g.get("after_key")
            if not g["buckets"] or after is None:
                break
        return list(out.items())

    def reference(self, name: str, t0: int, t1: int) -> int:
        f = self._filters(t0, t1)
        if name == "top10_talkers":
            aggs = {
                "t": {
                    "terms": {"field": "src_addr", "size": 10, "order": {"b": "desc"}},
                    "aggs": {"b": {"sum": {"field": "bytes"}}},
                }
            }
        elif name == "timeseries_1m_day":
            return self.run(name, t0, t1)
        else:
            # terms size 10 ordered by cardinality(dst_addr) would be the approximate one: on the
            # benchmark's 512 MB Elasticsearch it trips the parent circuit breaker at 1M records
            # (a HyperLogLog per source) and leaves the heap full for the next requests
            raise RuntimeError("not run: terms + cardinality trips a 512 MB Elasticsearch's circuit breaker")
        return len(self._search(f, aggs)["t"]["buckets"])

    def close(self) -> None:
        self.client.close()


def _measure(
    address: str, baseline, log_store: str, lo: int, hi: int, reps: int, label: str, server_pid: int | None = None
) -> dict[str, Any]:
    """Also CPU time per call, which a loaded machine does not stretch as it stretches wall
    time (DuckDB runs as many threads in both): the server process's for the gRPC call (its whole
    work: RPC, scope, statement), this process's for the hand-written DuckDB statement."""
    import psutil

    from clients.client import FlowLogClient

    server = psutil.Process(server_pid) if server_pid else None

    out: dict[str, Any] = {}
    with FlowLogClient(address, API_KEY, timeout=300) as client:
        for name, (group_by, metrics, flt, interval, limit, kind) in QUESTIONS.items():
            t0, t1 = _range(kind, lo, hi)
            req = client.build_aggregate(
                region=REGION,
                project=PROJECT,
                log_stores=[log_store],
                start=_ts(t0),
                end=_ts(t1),
                filter=flt,
                group_by=group_by,
                metrics=metrics,
                interval=interval / 1000 if interval else None,
                limit=limit,
            )

            def grpc_call() -> int:
                return len(client.aggregate(req).rows)

            def base_call() -> int:
                return baseline.run(name, t0, t1)

            load = os.getloadavg()  # other work on the machine: the same-run ratio is the figure to trust
            reference = getattr(baseline, "reference", None)

            ref_error: list[str] = []

            def ref_call() -> int:
                if reference is None or ref_error:
                    return 0
                try:
                    return reference(name, t0, t1)
                except Exception as e:  # noqa: BLE001 - a reference only: say why it is missing
                    ref_error.append(str(e)[:200])
                    log(f"aggregate {label}/{name}: the approximate reference failed: {ref_error[0]}")
                    return 0

            grpc_call()  # warm them all
            base_call()
            ref_call()
            g: list[float] = []
            b: list[float] = []
            ref: list[float] = []
            rows = 0
            g_cpu: list[float] = []
            b_cpu: list[float] = []
            for _ in range(reps):
                c0 = time.process_time()
                b.append(_time(base_call)[0])
                b_cpu.append((time.process_time() - c0) * 1000)
                s0 = sum(server.cpu_times()[:2]) if server else 0.0
                ms, rows = _time(grpc_call)
                g.append(ms)
                if server:
                    g_cpu.append((sum(server.cpu_times()[:2]) - s0) * 1000)
                if reference is not None and not ref_error:
                    ref.append(_time(ref_call)[0])
            out[name] = {
                "reps": reps,
                "rows": rows,
                "grpc_p50_ms": pct(g, 50),
                "grpc_p99_ms": pct(g, 99),
                "baseline_p50_ms": pct(b, 50),
                "baseline_p99_ms": pct(b, 99),
                "ratio": pct(g, 50) / max(pct(b, 50), 1e-9),
                "grpc_server_cpu_p50_ms": pct(g_cpu, 50) if g_cpu else None,
                "baseline_cpu_p50_ms": pct(b_cpu, 50),
                "reference_p50_ms": pct(ref, 50) if ref and not ref_error else None,
                "reference_error": ref_error[0] if ref_error else None,
                "load": [round(x, 1) for x in load],
                "load_after": [round(x, 1) for x in os.getloadavg()],
            }
            log(
                f"aggregate {label}/{name}: gRPC {pct(g, 50):.1f}/{pct(g, 99):.1f} ms p50/p99, baseline "
                f"{pct(b, 50):.1f}/{pct(b, 99):.1f} ms ({out[name]['ratio']:.2f}x), load {load[0]:.1f}; CPU ms p50: "
                f"server {_ms(out[name]['grpc_server_cpu_p50_ms'])}, baseline {pct(b_cpu, 50):.1f}"
            )
    return out


def _ts(ms: int):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def _time(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.monotonic()
    n = fn()
    return (time.monotonic() - start) * 1000, n


def _measure_server(
    srv, base, log_store: str, total: int, lo: int, hi: int, reps: int, label: str, wd: Path
) -> dict[str, Any]:
    try:
        dataset.create_log_store(srv.address, log_store)
        srv.rss.reset()
        res = _measure(srv.address, base, log_store, lo, hi, reps, label, srv.proc.pid)
        res["_dataset"] = {
            "records": total,
            "span_h": round((hi - lo) / HOUR, 2),
            "peak_rss_mb": round(srv.rss.peak / 2**20, 1),
        }
    finally:
        base.close()
        srv.stop()
        rmtree(wd)
    return res


def run_embedded(n: int, reps: int, workdir: Path, label: str, cache: Path | None = None) -> dict[str, Any]:
    """`cache`: a folder keeping the generated records file per size (and its time span), reused by
    later runs with the same size and label (generating 10M records takes minutes)."""
    wd = workdir / f"aggregate-{label}"
    data = wd / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_store = f"a{label}"
    cached = cache / f"aggregate-{label}-{n}.duckdb" if cache else None
    if cached is not None and cached.exists():
        shutil.copy(cached, data / "records.duckdb")
        total, lo, hi = json.loads(cached.with_suffix(".json").read_text())
        log(f"aggregate dataset {log_store}: {total:,} records from {cached}")
    else:
        total, lo, hi = build_embedded(data / "records.duckdb", log_store, n, wd)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / "records.duckdb", cached)
            cached.with_suffix(".json").write_text(json.dumps([total, lo, hi]))
    shutil.copy(data / "records.duckdb", wd / "baseline.duckdb")
    srv = start_server(
        wd,
        {"query_backend": "embedded", "archive_backend": "embedded", "limits": {"aggregate_max_range_days": 0}},
        data_dir=data,
    )
    return _measure_server(
        srv, DuckDBBaseline(wd / "baseline.duckdb", log_store), log_store, total, lo, hi, reps, f"embedded-{label}", wd
    )


def run_elasticsearch(
    n: int, reps: int, services: Services, workdir: Path, label: str, cache: Path | None = None
) -> dict[str, Any]:
    """`cache` with an external Elasticsearch (FLOWLOG_BENCH_ES_URL): the records an earlier run
    loaded there are used again when the LogStore still holds exactly n of them. With `cache`
    holding the embedded data set of this size (run_embedded's file), its records are bulked
    into the shared day indices as the server writes them (bench/es_layout.py load_from_duckdb:
    10M in minutes, where the generator path below took ~20 min per 1M on a loaded machine), so
    both backends answer on the same records."""
    es = services.get("es")
    log_store = f"a{label}"
    cached = cache / f"aggregate-es-{label}-{n}.json" if cache and es.get("external") else None
    source = cache / f"aggregate-{label}-{n}.duckdb" if cache else None
    if cached is not None and cached.exists() and _es_count(es, log_store) == n:
        total, lo, hi = json.loads(cached.read_text())
        log(f"aggregate dataset {log_store} (elasticsearch): {total:,} records already loaded")
    elif source is not None and source.exists():  # create-only: a half-loaded LogStore is completed
        from bench.es_layout import load_from_duckdb

        total, lo, hi = load_from_duckdb(es["url"], ES_PREFIX, source, log_store)
        log(f"aggregate dataset {log_store} (elasticsearch): {total:,} records bulked from {source}")
        if cached is not None:
            cached.write_text(json.dumps([total, lo, hi]))
    else:
        total, lo, hi = build_elasticsearch(es, log_store, n)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps([total, lo, hi]))
    cache_setting = os.environ.get("FLOWLOG_BENCH_ES_REQUEST_CACHE", "")
    if cache_setting in ("0", "1"):
        _request_cache(es, cache_setting == "1")
    wd = workdir / f"aggregate-es-{label}"
    srv = start_server(
        wd,
        {
            "query_backend": "elasticsearch",
            "archive_backend": "none",
            "limits": {"aggregate_max_range_days": 0},
            "elasticsearch": {"url": es["url"], "index_prefix": ES_PREFIX},
        },
    )
    try:
        res = _measure_server(
            srv, ESBaseline(es, log_store), log_store, total, lo, hi, reps, f"elasticsearch-{label}", wd
        )
    finally:
        if cache_setting in ("0", "1"):
            _request_cache(es, None)
    res["_dataset"]["request_cache"] = {"0": "off", "1": "on"}.get(cache_setting, "index default (on)")
    return res


def render(res: dict[str, Any]) -> list[str]:
    """The rows of RESULTS.md's Aggregate table."""
    lines = [
        "| dataset | question | gRPC Aggregate ms p50/p99 | hand-written ms p50/p99 | ratio | rows | peak RSS MB "
        "| approximate hand-written ms p50 | CPU ms p50: server / hand-written | load avg 1/5/15 min before → after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, qs in res.items():
        meta = qs.get("_dataset", {})
        for name, r in qs.items():
            if name.startswith("_"):
                continue
            lines.append(
                f"| {ds} ({meta.get('records', 0):,} rec) | {name} | {r['grpc_p50_ms']:.1f} / "
                f"{r['grpc_p99_ms']:.1f} | {r['baseline_p50_ms']:.1f} / {r['baseline_p99_ms']:.1f} | "
                f"{r['ratio']:.2f}x | {r['rows']} | {meta.get('peak_rss_mb', '-')} | "
                f"{_ref(r)} | {_ms(r.get('grpc_server_cpu_p50_ms'))} / {_ms(r.get('baseline_cpu_p50_ms'))} | "
                f"{_load(r.get('load'))} → {_load(r.get('load_after'))} |"
            )
    return lines


def _ref(r: dict[str, Any]) -> str:
    if r.get("reference_error"):
        return f"failed: {r['reference_error'][:90]}"
    return _ms(r.get("reference_p50_ms"))


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _load(values: list[float] | None) -> str:
    return " / ".join(f"{x:.1f}" for x in values) if values else "-"


def _request_cache(es: dict, on: bool | None) -> None:
    """FLOWLOG_BENCH_ES_REQUEST_CACHE=0|1: the shard request cache of the data set's day indices
    off (every call does the aggregation's work; the default caches size-0 results, so repeated
    small answers, like a 1-minute series, are a cache lookup for flowlog and baseline alike) or on."""
    from elasticsearch import Elasticsearch

    from backends.elasticsearch.records import shared_base

    with Elasticsearch(es["url"], request_timeout=60) as client:
        index = shared_base(ES_PREFIX) + "-*"
        client.indices.put_settings(index=index, settings={"index.requests.cache.enable": on})
        client.indices.clear_cache(index=index, request=True)
    state = {True: "on", False: "off", None: "back to the index default"}[on]
    log(f"aggregate (elasticsearch): shard request cache {state} (FLOWLOG_BENCH_ES_REQUEST_CACHE)")


def _es_count(es: dict, log_store: str) -> int:
    from elasticsearch import Elasticsearch

    from backends.elasticsearch.records import shared_base

    with Elasticsearch(es["url"], request_timeout=60) as client:
        resp = client.options(ignore_status=404).count(
            index=shared_base(ES_PREFIX) + "-*", query={"term": {"log_store": log_store}}
        )
    return int(resp.get("count", -1))
