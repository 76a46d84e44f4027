"""Query latency through the gRPC Query RPC (client in a separate process): time to the first batch
and to completion (the summary, which carries the matched count), p50/p99, for typical filters
over 1M and 10M stored records. Baseline: the equivalent hand-written query sent straight to the
backend (DuckDB SQL on a copy of the same database file / an Elasticsearch search), fetching the
same rows in batches of 1,000 and the matched count. Baseline and gRPC runs alternate.

Datasets are loaded straight into the backend before the server starts (embedded) or through the
store's own writer (Elasticsearch), then the LogStore is created through the API.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bench import dataset
from bench.common import ACCOUNT, PROJECT, REGION, Services, log, pct, rmtree, start_server
from bench.ingest import query_request
from bench.workers import Worker

HOUR = 3_600_000
ES_PREFIX = "flowlogq"  # the query datasets' indices (the ingest phase writes flowlog-*)
CIDR = "203.0.113.0/24"  # the bj EIPs' public addresses

# name -> (filter, limit, time range: "1h" (the last hour of the data) or "all")
QUERIES: dict[str, tuple[str, int, str]] = {
    "cidr_reject": (f"addr = {CIDR} AND action = REJECT", 1000, "1h"),
    "bytes_gt_1m": ("bytes > 1000000", 1000, "1h"),
    "admin_ports": ("dst_port IN (22, 3389)", 1000, "1h"),
    "stream_100k": ("", 100_000, "all"),
}


# -- datasets ------------------------------------------------------------------------------------------


def _gen_part(args) -> str:
    """Worker (spawned): generate windows [w0, w1) of the flow logs, write Arrow IPC to path."""
    path, log_store, start_ms, w0, w1, seed = args
    import pyarrow as pa

    from backends.embedded.records import _SCHEMA, _to_arrow

    fls = dataset.local_flow_logs(log_store)
    gen = dataset.windows(fls, start_ms + w0 * dataset.WINDOW_MS, seed)
    n = 0
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, _SCHEMA) as w:
        buf: list = []
        for _ in range(w1 - w0):
            buf.extend(next(gen))
            if len(buf) >= 50_000:
                w.write_table(_to_arrow(buf))
                n += len(buf)
                buf = []
        if buf:
            w.write_table(_to_arrow(buf))
            n += len(buf)
    return path


def build_embedded(path: Path, log_store: str, n: int, tmp: Path) -> tuple[int, int, int]:
    """A DuckDB records file holding about n generated records of bench/<log_store> (generated in
    two processes in parallel). Returns (records, first start_time, last start_time)."""
    import multiprocessing as mp

    import duckdb
    import pyarrow as pa

    from backends.embedded.records import EmbeddedRecordStore

    fls = dataset.local_flow_logs(log_store)
    per = dataset.records_per_window(fls)
    n_windows = max(1, int(n / per) + 1)
    start = dataset.start_for(fls, n)
    half = n_windows // 2
    # The second part over-generates (the estimate is rough); the insert stops at exactly n.
    parts = [
        (str(tmp / f"{log_store}-0.arrows"), log_store, start, 0, half, dataset.SEED),
        (str(tmp / f"{log_store}-1.arrows"), log_store, start, half, int(n_windows * 1.3) + 2, dataset.SEED),
    ]
    t0 = time.monotonic()
    with mp.get_context("spawn").Pool(2) as pool:
        files = pool.map(_gen_part, parts)
    EmbeddedRecordStore(path, checkpoint_interval_s=0).close()  # creates the table
    con = duckdb.connect(str(path))
    total = 0
    for f in files:
        with pa.OSFile(f, "rb") as src:
            reader = pa.ipc.open_stream(src)
            for batch in reader:
                if total >= n:
                    break
                t = pa.Table.from_batches([batch]).slice(0, n - total)
                con.register("incoming", t)
                con.execute("INSERT INTO records SELECT * FROM incoming")
                con.unregister("incoming")
                total += t.num_rows
        Path(f).unlink()
    lo, hi = con.execute("SELECT min(start_time), max(start_time) FROM records").fetchone()
    con.execute("CHECKPOINT")
    con.close()
    log(
        f"query dataset {log_store}: {total:,} records in {time.monotonic() - t0:.0f}s "
        f"({path.stat().st_size / 2**20:.0f} MB)"
    )
    return total, lo, hi


def build_elasticsearch(es: dict, log_store: str, n: int) -> tuple[int, int, int]:
    from elasticsearch import helpers

    from backends.elasticsearch.config import ElasticsearchConfig
    from backends.elasticsearch.records import ElasticsearchRecordStore

    store = ElasticsearchRecordStore(ElasticsearchConfig(url=es["url"], index_prefix=ES_PREFIX))
    store.ensure_template()
    fls = dataset.local_flow_logs(log_store)
    start = dataset.start_for(fls, n)
    total = 0
    lo = hi = None
    t0 = time.monotonic()
    gen = dataset.windows(fls, start)
    while total < n:
        batch = next(gen)[: n - total]
        lo = batch[0].start_time if lo is None else lo
        hi = max(r.start_time for r in batch)
        helpers.bulk(
            store._client, store._actions(batch, set(), int(time.time() * 1000)), chunk_size=2000, refresh=False
        )
        total += len(batch)
    store._client.indices.refresh(index=f"{ES_PREFIX}-flows-*")
    store.close()
    log(f"query dataset {log_store} (elasticsearch): {total:,} records in {time.monotonic() - t0:.0f}s")
    return total, lo, hi


# -- baselines -----------------------------------------------------------------------------------------


def _range(kind: str, lo: int, hi: int) -> tuple[int, int]:
    return (hi - HOUR + 1, hi + 1) if kind == "1h" else (lo, hi + 1)


class DuckDBBaseline:
    """Hand-written SQL on a copy of the server's database file."""

    def __init__(self, path: Path, log_store: str) -> None:
        import duckdb

        self.con = duckdb.connect(str(path), read_only=True, config={"memory_limit": "1GB"})
        self.log_store = log_store
        import ipaddress

        from backends.embedded.filter_sql import ip_to_blob

        net = ipaddress.ip_network(CIDR)
        self.cidr = (ip_to_blob(str(net.network_address)), ip_to_blob(str(net.broadcast_address)))

    def where(self, name: str) -> tuple[str, list]:
        base = "account_id = ? AND region = ? AND project = ? AND log_store = ? AND start_time >= ? AND start_time < ?"
        if name == "cidr_reject":
            return base + (" AND ((src_ip BETWEEN ? AND ?) OR (dst_ip BETWEEN ? AND ?)) AND action = 2"), list(
                self.cidr
            ) * 2
        if name == "bytes_gt_1m":
            return base + " AND bytes > 1000000", []
        if name == "admin_ports":
            return base + " AND dst_port IN (22, 3389)", []
        return base, []

    def run(self, name: str, limit: int, t0: int, t1: int) -> tuple[float, float, int, int]:
        from server.core.model import RECORD_FIELDS

        where, extra = self.where(name)
        params = [ACCOUNT, REGION, PROJECT, self.log_store, t0, t1] + extra
        cur = self.con.cursor()
        start = time.monotonic()
        cur.execute(
            f"SELECT {', '.join(RECORD_FIELDS)} FROM records WHERE {where} "
            f"ORDER BY start_time DESC, record_id DESC LIMIT {limit}",
            params,
        )
        first = None
        n = 0
        while True:
            rows = cur.fetchmany(1000)
            if not rows:
                break
            if first is None:
                first = time.monotonic()
            n += len(rows)
        matched = cur.execute(f"SELECT count(*) FROM records WHERE {where}", params).fetchone()[0]
        end = time.monotonic()
        cur.close()
        return (first or end) - start, end - start, n, matched

    def close(self) -> None:
        self.con.close()


class ESBaseline:
    """Hand-written search: the DSL a user would write, sorted newest first, 1,000 hits per
    request (point in time + search_after beyond one page), then _count."""

    def __init__(self, es: dict, log_store: str) -> None:
        from elasticsearch import Elasticsearch

        self.client = Elasticsearch(es["url"], request_timeout=120)
        from backends.elasticsearch.records import shared_base

        self.index = shared_base(ES_PREFIX) + "-*"  # the shared day indices; the query filters the LogStore
        self.log_store = log_store

    def query(self, name: str, t0: int, t1: int) -> dict:
        f: list[dict] = [
            {"term": {"log_store": self.log_store}},
            {"range": {"start_time": {"gte": t0, "lt": t1, "format": "epoch_millis"}}},
        ]
        if name == "cidr_reject":
            f += [
                {"bool": {"should": [{"term": {"src_addr": CIDR}}, {"term": {"dst_addr": CIDR}}]}},
                {"term": {"action": "REJECT"}},
            ]
        elif name == "bytes_gt_1m":
            f.append({"range": {"bytes": {"gt": 1000000}}})
        elif name == "admin_ports":
            f.append({"terms": {"dst_port": [22, 3389]}})
        return {"bool": {"filter": f}}

    def run(self, name: str, limit: int, t0: int, t1: int) -> tuple[float, float, int, int]:
        q = self.query(name, t0, t1)
        sort = [{"start_time": "desc"}, {"record_id": "desc"}]
        start = time.monotonic()
        first = None
        n = 0
        if limit <= 1000:
            resp = self.client.search(index=self.index, query=q, sort=sort, size=limit, track_total_hits=False)
            first = time.monotonic()
            n = len(resp["hits"]["hits"])
        else:
            pit = self.client.open_point_in_time(index=self.index, keep_alive="1m")["id"]
            after = None
            while n < limit:
                kw = {"search_after": after} if after else {}
                resp = self.client.search(
                    pit={"id": pit, "keep_alive": "1m"},
                    query=q,
                    sort=sort,
                    size=min(1000, limit - n),
                    track_total_hits=False,
                    **kw,
                )
                hits = resp["hits"]["hits"]
                if first is None:
                    first = time.monotonic()
                if not hits:
                    break
                n += len(hits)
                after = hits[-1]["sort"]
            self.client.close_point_in_time(id=pit)
        matched = self.client.count(index=self.index, query=q)["count"]
        end = time.monotonic()
        return (first or end) - start, end - start, n, matched

    def close(self) -> None:
        self.client.close()


# -- the phase -------------------------------------------------------------------------------------------


def _summarise(samples: list[tuple[float, float, int, int]]) -> dict[str, Any]:
    first = [s[0] * 1000 for s in samples]
    total = [s[1] * 1000 for s in samples]
    n = samples[0][2]
    return {
        "first_p50_ms": pct(first, 50),
        "first_p99_ms": pct(first, 99),
        "total_p50_ms": pct(total, 50),
        "total_p99_ms": pct(total, 99),
        "records": n,
        "matched": samples[0][3],
        "records_per_s": n / (pct(total, 50) / 1000) if n else 0.0,
    }


def _measure(
    address: str, worker: Worker, baseline, log_store: str, lo: int, hi: int, reps: int, label: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (flt, limit, kind) in QUERIES.items():
        t0, t1 = _range(kind, lo, hi)
        req = query_request([log_store], t0, t1, filter=flt, limit=limit).SerializeToString()
        r = max(3, reps // 4) if limit > 1000 else reps
        # Warm both paths.
        worker.call("query", address=address, request=req, reps=2)
        baseline.run(name, limit, t0, t1)
        g, b = [], []
        for _ in range(r):
            b.append(baseline.run(name, limit, t0, t1))
            g.extend(worker.call("query", address=address, request=req, reps=1))
        gs, bs = _summarise(g), _summarise(b)
        if gs["records"] != bs["records"] or gs["matched"] != bs["matched"]:
            log(
                f"WARNING {label}/{name}: gRPC returned {gs['records']} / matched {gs['matched']}, baseline "
                f"{bs['records']} / {bs['matched']}"
            )
        out[name] = {"filter": flt, "limit": limit, "range": kind, "reps": r, "grpc": gs, "baseline": bs}
        log(
            f"query {label}/{name}: first {gs['first_p50_ms']:.1f}/{gs['first_p99_ms']:.1f} ms, total "
            f"{gs['total_p50_ms']:.1f}/{gs['total_p99_ms']:.1f} ms (p50/p99), {gs['records']} rec; baseline first "
            f"{bs['first_p50_ms']:.1f}, total {bs['total_p50_ms']:.1f} ms"
        )
    return out


def _measure_server(
    srv, base, log_store: str, total: int, lo: int, hi: int, reps: int, label: str, wd: Path
) -> dict[str, Any]:
    """Every query against the running server and the baseline, plus the dataset's figures; then
    stops the server and removes its folder."""
    worker = Worker("query")
    try:
        dataset.create_log_store(srv.address, log_store)
        srv.rss.reset()
        res = _measure(srv.address, worker, base, log_store, lo, hi, reps, label)
        res["_dataset"] = {
            "records": total,
            "span_h": round((hi - lo) / HOUR, 2),
            "peak_rss_mb": round(srv.rss.peak / 2**20, 1),
        }
    finally:
        base.close()
        worker.close()
        srv.stop()
        rmtree(wd)
    return res


def run_embedded(n: int, reps: int, workdir: Path, label: str) -> dict[str, Any]:
    wd = workdir / f"query-{label}"
    data = wd / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_store = f"q{label}"
    total, lo, hi = build_embedded(data / "records.duckdb", log_store, n, wd)
    shutil.copy(data / "records.duckdb", wd / "baseline.duckdb")
    srv = start_server(wd, {"query_backend": "embedded", "archive_backend": "embedded"}, data_dir=data)
    return _measure_server(
        srv, DuckDBBaseline(wd / "baseline.duckdb", log_store), log_store, total, lo, hi, reps, f"embedded-{label}", wd
    )


def run_elasticsearch(n: int, reps: int, services: Services, workdir: Path, label: str) -> dict[str, Any]:
    es = services.get("es")
    log_store = f"q{label}"
    total, lo, hi = build_elasticsearch(es, log_store, n)
    wd = workdir / f"query-es-{label}"
    srv = start_server(
        wd,
        {
            "query_backend": "elasticsearch",
            "archive_backend": "none",
            "elasticsearch": {"url": es["url"], "index_prefix": ES_PREFIX},
        },
    )
    return _measure_server(srv, ESBaseline(es, log_store), log_store, total, lo, hi, reps, f"elasticsearch-{label}", wd)
