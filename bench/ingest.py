"""Ingest throughput: collector batches of 1,000 records through the gRPC Ingest RPC, from a separate
client process, until the records are durable and searchable (the query backend's count equals
what was sent; with the S3 archive, also until every record is in an archive object). Baseline:
the same records written straight to the backend with its own client, in batches of 1,000.

Each repeat uses fresh flow logs (new record ids), so nothing is ever a duplicate write.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from bench import dataset
from bench.common import (
    ACCOUNT,
    MD,
    PROJECT,
    REGION,
    Server,
    Services,
    log,
    median,
    pyspy,
    server_settings,
    start_server,
)
from bench.workers import Worker

STREAMS = 4  # concurrent Ingest streams from the client process
MSGS_PER_CALL = 10  # messages (of 1,000 records) per Ingest call: the client gets an ack per 10,000


def query_request(
    log_stores: list[str], start_ms: int, end_ms: int, *, filter: str = "", limit: int = 1, newest_first: bool = True
):
    from google.protobuf.timestamp_pb2 import Timestamp

    from flowlog.v1 import query_pb2

    return query_pb2.QueryRequest(
        region=REGION,
        project=PROJECT,
        log_stores=log_stores,
        start_time=Timestamp(seconds=start_ms // 1000, nanos=start_ms % 1000 * 1_000_000),
        end_time=Timestamp(seconds=end_ms // 1000, nanos=end_ms % 1000 * 1_000_000),
        filter=filter,
        limit=limit,
        order=query_pb2.ORDER_NEWEST_FIRST if newest_first else query_pb2.ORDER_OLDEST_FIRST,
    )


def grpc_count(address: str, log_store: str) -> int:
    """What the query backend holds for the LogStore (QuerySummary.matched, over all time)."""
    import grpc

    from flowlog.v1 import query_pb2_grpc

    now = time.time_ns() // 1_000_000
    req = query_request([log_store], 1, now + 86_400_000, limit=1)
    with grpc.insecure_channel(address) as ch:
        for resp in query_pb2_grpc.QueryServiceStub(ch).Query(req, metadata=MD, timeout=120):
            if resp.HasField("summary"):
                return int(resp.summary.matched)
    return -1


class ArchiveCounter:
    """Rows in the S3 archive objects of one LogStore (from the Parquet footers; objects are
    immutable once named, except a crashed range's rewrite, which this benchmark never has)."""

    def __init__(self, s3: dict, bucket: str, log_store: str) -> None:
        from minio import Minio

        self.client = Minio(
            s3["endpoint"], access_key=s3["access_key"], secret_key=s3["secret_key"], secure=False, region=s3["region"]
        )
        self.bucket = bucket
        self.prefix = f"account={ACCOUNT}/region={REGION}/project={PROJECT}/log_store={log_store}/"
        self.rows: dict[str, int] = {}
        self.sizes: dict[str, int] = {}

    def count(self) -> int:
        import pyarrow.parquet as pq

        if not self.client.bucket_exists(self.bucket):
            return 0
        for obj in self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True):
            key = obj.object_name
            if key in self.rows or not key.endswith(".parquet"):
                continue
            resp = self.client.get_object(self.bucket, key)
            try:
                data = resp.read()
            finally:
                resp.close()
                resp.release_conn()
            self.rows[key] = pq.read_metadata(io.BytesIO(data)).num_rows
            self.sizes[key] = len(data)
        return sum(self.rows.values())


def wait_until(fn, target: int, timeout: float, poll: float = 0.05) -> tuple[float, int]:
    deadline = time.monotonic() + timeout
    got = fn()
    while got < target and time.monotonic() < deadline:
        time.sleep(poll)
        got = fn()
    return time.monotonic(), got


# -- baselines ---------------------------------------------------------------------------------------


class EmbeddedBaseline:
    def __init__(self, path: Path) -> None:
        from backends.embedded.records import EmbeddedRecordStore

        self.store = EmbeddedRecordStore(path, memory_limit="1GB", checkpoint_interval_s=0)

    def prepare(self, records: list) -> Any:
        return records

    def run(self, prepared: list) -> float:
        t0 = time.monotonic()
        for chunk in dataset.chunks(prepared, 1000):
            self.store.write(chunk)  # durable (fsynced WAL) and searchable on return
        return time.monotonic() - t0

    def close(self) -> None:
        self.store.close()


class ElasticsearchBaseline:
    """helpers.bulk of the same documents (the store's own mapping and day indices, another index
    prefix), 1,000 per bulk request, then one refresh: durable (translog fsync per request) and
    searchable."""

    def __init__(self, es: dict) -> None:
        from backends.elasticsearch.config import ElasticsearchConfig
        from backends.elasticsearch.records import ElasticsearchRecordStore

        self.store = ElasticsearchRecordStore(ElasticsearchConfig(url=es["url"], index_prefix="baseline"))
        self.store.ensure_template()

    def prepare(self, records: list) -> Any:
        return list(self.store._actions(records, set(), int(time.time() * 1000)))

    def run(self, actions: list) -> float:
        from elasticsearch import helpers

        client = self.store._client
        t0 = time.monotonic()
        ok, errors = helpers.bulk(client, actions, chunk_size=1000, raise_on_error=False, refresh=False)
        client.indices.refresh(index="baseline-flows-*")
        dt = time.monotonic() - t0
        if errors:
            raise RuntimeError(f"baseline bulk errors: {errors[:2]}")
        return dt

    def close(self) -> None:
        self.store.close()


class S3Baseline:
    """put_object of the same Parquet bytes the archive writes (encoded beforehand, untimed),
    one object per (LogStore, hour) of each 1,000-record batch: the records written straight
    to S3 in the batches the gRPC client sends, as the other baselines write them (DuckDB: a
    write per 1,000; Elasticsearch: a bulk request per 1,000).

    Reference figures of the same run: run_ranges() puts the archive's own object size (the
    records cut into 50,000-record ranges, which the baseline of runs before 2026-11-26 used:
    ~1,000x fewer requests, and none of the encoding); encode_and_put() also encodes."""

    def __init__(self, s3: dict) -> None:
        from minio import Minio

        self.client = Minio(
            s3["endpoint"], access_key=s3["access_key"], secret_key=s3["secret_key"], secure=False, region=s3["region"]
        )
        self.bucket = "flowlog-baseline"
        self.s3 = s3
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)
        self.n = 0

    def _objects(self, records: list, size: int) -> list[tuple[str, bytes]]:
        from collections import defaultdict

        from server.archive import HOUR_MS, Archive, encode
        from server.core.model import LogStoreKey

        out = []
        self.n += 1
        for i, chunk in enumerate(dataset.chunks(records, size)):
            groups: dict[tuple, list] = defaultdict(list)
            for r in chunk:
                groups[(r.account_id, r.region, r.project, r.log_store, r.start_time // HOUR_MS)].append(r)
            for (acc, reg, proj, ls, hour), rs in sorted(groups.items()):
                key = Archive.object_key(acc, LogStoreKey(reg, proj, ls), hour, f"base{self.n}-{size}-{i}")
                out.append((key, encode(rs)))
        return out

    def prepare(self, records: list) -> Any:
        return {"batches": self._objects(records, 1000), "ranges": self._objects(records, 50_000)}

    def _put(self, objects: list) -> float:
        t0 = time.monotonic()
        for key, data in objects:
            self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type="application/octet-stream"
            )
        return time.monotonic() - t0

    def run(self, prepared: dict) -> float:
        return self._put(prepared["batches"])

    def run_ranges(self, prepared: dict) -> float:
        return self._put(prepared["ranges"])

    def encode_and_put(self, records: list) -> float:
        """Second reference: the archive's own encoder + put (Archive.write_batch on the same S3
        store, 50,000-record ranges), timed: what any writer of this archive format pays."""
        from backends.minio.objects import S3ObjectStore
        from server.archive import Archive

        store = S3ObjectStore(
            self.s3["endpoint"], self.s3["access_key"], self.s3["secret_key"], self.bucket, region=self.s3["region"]
        )
        archive = Archive(store)
        self.n += 1
        t0 = time.monotonic()
        for i, chunk in enumerate(dataset.chunks(records, 50_000)):
            archive.write_batch(f"direct{self.n}-{i}", chunk)
        dt = time.monotonic() - t0
        store.close()
        return dt

    def close(self) -> None:
        pass


# -- the phase ---------------------------------------------------------------------------------------


def _es_stats(es: dict, pattern: str) -> tuple[int, int]:
    """(documents, primary store bytes) of the indices matching pattern, after a flush."""
    import json
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{es['url']}/{pattern}/_flush", method="POST"), timeout=120).read()
    data = json.loads(urllib.request.urlopen(f"{es['url']}/{pattern}/_stats/docs,store", timeout=60).read())
    p = data["_all"]["primaries"]
    return int(p["docs"]["count"]), int(p["store"]["size_in_bytes"])


def run(backend: str, n_records: int, repeats: int, services: Services, workdir: Path) -> dict[str, Any]:
    import psutil

    log(f"ingest/{backend}: {n_records:,} records x {repeats} repeat(s)")
    settings = server_settings(backend, services, flow_log_quota=100, pipeline={"archive_max_age_seconds": 2.0})
    wd = workdir / f"ingest-{backend}"
    srv: Server = start_server(wd, settings)
    worker = Worker("ingest")
    baseline: Any = None
    result: dict[str, Any] = {
        "backend": backend,
        "records": n_records,
        "streams": STREAMS,
        "records_per_message": 1000,
        "messages_per_call": MSGS_PER_CALL,
        "runs": [],
    }
    try:
        s3 = services.get("s3") if backend == "s3" else None
        es = services.get("es") if backend == "elasticsearch" else None
        if backend == "embedded":
            baseline = EmbeddedBaseline(wd / "baseline.duckdb")
        elif backend == "elasticsearch":
            baseline = ElasticsearchBaseline(es)
        else:
            baseline = S3Baseline(s3)
        result["server_rss_idle_mb"] = round(srv.rss.last / 2**20, 1)
        proc = psutil.Process(srv.proc.pid)

        def one_round(tag: str, n: int, timed: bool) -> dict[str, Any] | None:
            fls = dataset.create_flow_logs(srv.address, tag)
            start = dataset.start_for(fls, n)
            records = dataset.take(fls, n, start)
            frames = dataset.ingest_messages(records)
            fpath = wd / f"{tag}.frames"
            dataset.write_frames(fpath, frames)
            worker.call("load_frames", path=str(fpath))
            prepared = baseline.prepare(records)
            # Baseline first (server idle), then the same records through gRPC.
            base_s = baseline.run(prepared)
            ranges_s = baseline.run_ranges(prepared) if isinstance(baseline, S3Baseline) else None
            del prepared
            base2_s = baseline.encode_and_put(records) if isinstance(baseline, S3Baseline) else None
            counter = ArchiveCounter(s3, settings["minio"]["bucket"], tag) if s3 else None
            srv.rss.reset()
            cpu0 = sum(proc.cpu_times()[:2])
            with pyspy(srv.proc.pid, f"ingest-{backend}-{tag}"):
                r = worker.call("ingest", address=srv.address, streams=STREAMS, msgs_per_call=MSGS_PER_CALL)
                t_search, got = wait_until(lambda: grpc_count(srv.address, tag), n, timeout=900)
            t_done = t_search
            archived = None
            if counter is not None:
                t_arch, archived = wait_until(counter.count, n, timeout=900, poll=0.25)
                t_done = max(t_search, t_arch)
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            fpath.unlink()
            if r["accepted"] != n or got != n or (archived is not None and archived != n):
                raise RuntimeError(
                    f"ingest/{backend}: sent {n}, accepted {r['accepted']} (rejected {r['rejected']}: "
                    f"{r['first_rejection']}), searchable {got}, archived {archived}"
                )
            if not timed:
                return None
            acks = r["acks"]
            lat = sorted(a - s for s, a, _, _ in acks)
            run_ = {
                "grpc_s": t_done - r["t0"],
                "acked_s": r["t_acked"] - r["t0"],
                "baseline_s": base_s,
                "grpc_rps": n / (t_done - r["t0"]),
                "acked_rps": n / (r["t_acked"] - r["t0"]),
                "baseline_rps": n / base_s,
                "ack_latency_p50_ms": lat[len(lat) // 2] * 1000,
                "server_cpu_s": cpu,
                "peak_rss_mb": round(srv.rss.peak / 2**20, 1),
            }
            if ranges_s is not None:
                run_["baseline_ranges_rps"] = n / ranges_s
            if base2_s is not None:
                run_["baseline_encode_put_rps"] = n / base2_s
                run_["ratio_encode_put"] = run_["grpc_rps"] / run_["baseline_encode_put_rps"]
            if counter is not None:
                run_["archive_objects"] = len(counter.rows)
                run_["archive_bytes"] = sum(counter.sizes.values())
            run_["ratio"] = run_["grpc_rps"] / run_["baseline_rps"]
            log(
                f"ingest/{backend} {tag}: grpc {run_['grpc_rps']:,.0f} rec/s (acked {run_['acked_rps']:,.0f}), "
                f"baseline {run_['baseline_rps']:,.0f} rec/s, ratio {run_['ratio']:.2f}, "
                f"server cpu {cpu:.1f}s, peak rss {run_['peak_rss_mb']} MB"
            )
            return run_

        # Warm up (JIT, caches, index creation) with a small round, untimed.
        one_round("warmup", min(50_000, n_records), timed=False)
        for i in range(repeats):
            result["runs"].append(one_round(f"ingest{i + 1}", n_records, timed=True))
        runs = result["runs"]
        result["grpc_rps"] = median([x["grpc_rps"] for x in runs])
        result["baseline_rps"] = median([x["baseline_rps"] for x in runs])
        result["ratio"] = median([x["ratio"] for x in runs])
        result["acked_rps"] = median([x["acked_rps"] for x in runs])
        result["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs)
        if "baseline_ranges_rps" in runs[0]:
            result["baseline_ranges_rps"] = median([x["baseline_ranges_rps"] for x in runs])
        if "baseline_encode_put_rps" in runs[0]:
            result["baseline_encode_put_rps"] = median([x["baseline_encode_put_rps"] for x in runs])
            result["ratio_encode_put"] = median([x["ratio_encode_put"] for x in runs])
        result["server_cpu_us_per_record"] = median([x["server_cpu_s"] for x in runs]) / n_records * 1e6
        total = min(50_000, n_records) + repeats * n_records
        # Bytes on disk per million records.
        if backend == "elasticsearch":
            docs, size = _es_stats(es, "flowlog-flows-*")
            result["disk"] = {
                "what": "ES primary store (flowlog-flows-*), after flush",
                "records": docs,
                "bytes": size,
                "bytes_per_record": size / max(docs, 1),
            }
        elif backend == "s3":
            counter = ArchiveCounter(s3, settings["minio"]["bucket"], "ingest1")
            counter.count()
            size, rows = sum(counter.sizes.values()), sum(counter.rows.values())
            result["disk"] = {
                "what": "S3 archive objects (Parquet zstd) of one 1M LogStore",
                "records": rows,
                "bytes": size,
                "bytes_per_record": size / max(rows, 1),
                "objects": len(counter.rows),
            }
    finally:
        worker.close()
        if baseline is not None:
            baseline.close()
        code = srv.stop()
        if code not in (0, None):
            log(f"server exited with {code}:\n{srv.log_tail()}")
    if backend == "embedded":
        db = srv.data_dir / "records.duckdb"
        size = db.stat().st_size + (Path(str(db) + ".wal").stat().st_size if Path(str(db) + ".wal").exists() else 0)
        result["disk"] = {
            "what": "records.duckdb after the server's closing checkpoint",
            "records": total,
            "bytes": size,
            "bytes_per_record": size / total,
        }
    from bench.common import rmtree

    rmtree(wd)
    return result
