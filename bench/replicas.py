"""Replica benchmark: gRPC Ingest records/s through 1, 2 and 3 replicas of one deployment (metadata on
PostgreSQL, records in Elasticsearch, archive on S3: "Running several replicas" in the README), and
the figures of a capacity model: CPU per record of each process kind, bytes per record in each store.

    .venv/bin/python -m bench.replicas [--records N] [--replicas 1,2,3] [--quick] [--write-results-md]

For each replica count k, a fresh database, index prefix and bucket; k flowlog-server processes;
8 flow logs created through replica 0; the collector messages (batches of 1,000 records, made
before anything is timed) dealt round-robin to the replicas, each fed by its own client process
over 2 streams. Times: `acked` = until every Ingest call is acknowledged (records durable in the
replicas' spools); `stored` = until Elasticsearch counts every record AND the S3 archive holds
every one (Parquet footers). CPU: user+system seconds of the flowlog replicas, of Elasticsearch's
JVM and of PostgreSQL's processes over the timed run, per record.

On a machine with fewer cores than processes (2 cores here: the replicas, Elasticsearch,
PostgreSQL, the S3 server and the clients all share them) more replicas cannot go faster: the
numbers show the cost of running several (more processes, more context switches, more ES bulk
requests), not a speed-up. The speed-up of a real deployment follows from the CPU per record
(see the capacity model in bench/RESULTS.md). Results: bench/results/replicas-<timestamp>.json
and, with --write-results-md, the "Replicas" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import dataset
from bench.common import Server, Services, log, machine, rmtree, start_server
from bench.ingest import ArchiveCounter, _es_stats, grpc_count, wait_until
from bench.workers import Worker

BENCH_DIR = Path(__file__).resolve().parent
STREAMS_PER_REPLICA = 2
MSGS_PER_CALL = 10


def _tree_cpu(pid: int) -> float:
    """User+system CPU seconds of a process and its live children."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _create_database(pg: dict) -> str:
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = "bench_rep_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(pg["dsn"], dbname=name)


def _database_bytes(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def run(k: int, n: int, repeats: int, services: Services, workdir: Path) -> dict[str, Any]:
    pg, es, s3 = services.get("postgres"), services.get("es"), services.get("s3")
    tag = uuid.uuid4().hex[:6]
    prefix, bucket = f"benchrep{k}{tag}", f"bench-rep{k}-{tag}"
    dsn = _create_database(pg)
    settings = {
        "metadata_backend": "postgres",
        "postgres": {"dsn": dsn},
        "query_backend": "elasticsearch",
        "elasticsearch": {"url": es["url"], "index_prefix": prefix},
        "archive_backend": "minio",
        "minio": {
            "endpoint": s3["endpoint"],
            "access_key": s3["access_key"],
            "secret_key": s3["secret_key"],
            "bucket": bucket,
            "region": s3["region"],
        },
        "flow_log_quota": 100,
        "pipeline": {"archive_max_age_seconds": 2.0},
    }
    log(f"replicas/{k}: starting {k} replica(s) on {dsn.split('dbname=')[-1]}, ES prefix {prefix}, bucket {bucket}")
    servers: list[Server] = [start_server(workdir / f"r{k}-{i}", settings) for i in range(k)]
    workers = [Worker(f"ingest-r{i}") for i in range(k)]
    result: dict[str, Any] = {"replicas": k, "records": n, "streams_per_replica": STREAMS_PER_REPLICA, "runs": []}
    try:

        def one_round(round_tag: str, count: int, timed: bool) -> dict[str, Any] | None:
            fls = dataset.create_flow_logs(servers[0].address, round_tag)
            records = dataset.take(fls, count, dataset.start_for(fls, count))
            frames = dataset.ingest_messages(records)
            for i, w in enumerate(workers):
                path = workdir / f"{round_tag}-{i}.frames"
                dataset.write_frames(path, frames[i::k])
                w.call("load_frames", path=str(path))
                path.unlink()
            counter = ArchiveCounter(s3, bucket, round_tag)
            cpu0 = [_tree_cpu(s.proc.pid) for s in servers]
            es_cpu0, pg_cpu0 = _tree_cpu(int(es["pid"])), _tree_cpu(int(pg["pid"]))
            answers: list[Any] = [None] * k
            t0 = time.monotonic()

            def feed(i: int) -> None:
                answers[i] = workers[i].call(
                    "ingest", address=servers[i].address, streams=STREAMS_PER_REPLICA, msgs_per_call=MSGS_PER_CALL
                )

            threads = [threading.Thread(target=feed, args=(i,)) for i in range(k)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            t_acked = time.monotonic()
            t_search, got = wait_until(lambda: grpc_count(servers[-1].address, round_tag), count, timeout=900)
            t_arch, archived = wait_until(counter.count, count, timeout=900, poll=0.25)
            t_done = max(t_search, t_arch)
            cpu = [_tree_cpu(s.proc.pid) - c for s, c in zip(servers, cpu0)]
            es_cpu, pg_cpu = _tree_cpu(int(es["pid"])) - es_cpu0, _tree_cpu(int(pg["pid"])) - pg_cpu0
            accepted = sum(a["accepted"] for a in answers if a)
            if accepted != count or got != count or archived != count:
                raise RuntimeError(
                    f"replicas/{k}: sent {count}, accepted {accepted}, searchable {got}, archived {archived}"
                )
            if not timed:
                return None
            run_ = {
                "acked_rps": count / (t_acked - t0),
                "stored_rps": count / (t_done - t0),
                "flowlog_cpu_us_per_record": sum(cpu) / count * 1e6,
                "es_cpu_us_per_record": es_cpu / count * 1e6,
                "pg_cpu_us_per_record": pg_cpu / count * 1e6,
                "archive_bytes_per_record": sum(counter.sizes.values()) / max(1, sum(counter.rows.values())),
                "cpu_s_per_replica": [round(c, 1) for c in cpu],
            }
            log(
                f"replicas/{k} {round_tag}: acked {run_['acked_rps']:,.0f} rec/s, stored {run_['stored_rps']:,.0f} "
                f"rec/s; CPU µs/rec flowlog {run_['flowlog_cpu_us_per_record']:.1f}, ES "
                f"{run_['es_cpu_us_per_record']:.1f}, PG {run_['pg_cpu_us_per_record']:.2f}"
            )
            return run_

        one_round(f"warm{tag}", min(20_000, n), timed=False)
        for r in range(repeats):
            result["runs"].append(one_round(f"rep{r}{tag}", n, timed=True))
        runs = result["runs"]
        for key in (
            "acked_rps",
            "stored_rps",
            "flowlog_cpu_us_per_record",
            "es_cpu_us_per_record",
            "pg_cpu_us_per_record",
            "archive_bytes_per_record",
        ):
            vals = sorted(x[key] for x in runs)
            result[key] = vals[len(vals) // 2]
        docs, size = _es_stats(es, f"{prefix}*")
        result["es_bytes_per_record"] = size / max(docs, 1)
        result["es_docs"] = docs
        result["pg_database_bytes"] = _database_bytes(dsn)
        total = min(20_000, n) + repeats * n
        result["spool_bytes_per_record"] = (
            sum(sum(f.stat().st_size for f in s.data_dir.glob("spool.db*")) for s in servers) / total
        )
    finally:
        for w in workers:
            w.close()
        for s in servers:
            code = s.stop()
            if code not in (0, None):
                log(f"replica exited with {code}:\n{s.log_tail()}")
    rmtree(workdir)
    return result


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"### Replicas: gRPC Ingest through 1-{max(r['replicas'] for r in report['results'])} replicas "
        f"({report['started']} UTC)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}; `uptime` before: "
        f"`{report['uptime_before']}`; after: `{report['uptime_after']}`  ",
        f"Each run: {report['records']:,} records in batches of 1,000, {STREAMS_PER_REPLICA} Ingest streams per "
        "replica from one client process per replica, metadata on PostgreSQL, records in Elasticsearch, archive "
        "on S3 (all on this machine); median of the repeats.",
        "",
        "| replicas | acked rec/s (durable in the spools) | stored rec/s (in ES and S3) | flowlog CPU µs/rec | "
        "ES CPU µs/rec | PG CPU µs/rec | ES bytes/rec | S3 bytes/rec | spool bytes/rec |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['replicas']} | {r['acked_rps']:,.0f} | {r['stored_rps']:,.0f} | "
            f"{r['flowlog_cpu_us_per_record']:.1f} | {r['es_cpu_us_per_record']:.1f} | "
            f"{r['pg_cpu_us_per_record']:.2f} | {r['es_bytes_per_record']:.0f} | "
            f"{r['archive_bytes_per_record']:.0f} | {r['spool_bytes_per_record']:.0f} |"
        )
    lines += [
        "",
        f"On {m['nproc']} cores, shared by every process of the deployment and the clients, more replicas cannot go "
        "faster: read the rows as the overhead of running several, not as a speed-up (the CPU per record is what "
        "carries over to a real deployment; see the capacity model).",
        "",
    ]
    return "\n".join(lines)


def write_results_md(text: str) -> None:
    path = BENCH_DIR / "RESULTS.md"
    current = path.read_text()
    start = current.find("### Replicas: gRPC Ingest")
    if start >= 0:
        end = current.find("\n### ", start + 1)
        end2 = current.find("\n## ", start + 1)
        stops = [x for x in (end, end2) if x >= 0]
        stop = min(stops) + 1 if stops else len(current)
        current = current[:start] + text + current[stop:]
    else:
        marker = "## Replicas"
        at = current.find(marker)
        if at < 0:
            current = current.rstrip("\n") + "\n\n" + marker + "\n\n" + text
        else:
            nl = current.find("\n\n", at)
            current = current[: nl + 2] + text + "\n" + current[nl + 2 :]
    path.write_text(current)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--records", type=int, default=200_000, help="records per timed run (default 200,000)")
    ap.add_argument("--replicas", default="1,2,3", help="replica counts to run, comma-separated")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per replica count")
    ap.add_argument("--quick", action="store_true", help="50,000 records")
    ap.add_argument("--write-results-md", action="store_true")
    a = ap.parse_args(argv)
    n = 50_000 if a.quick else a.records
    counts = [int(x) for x in a.replicas.split(",") if x.strip()]
    services = Services()
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": "python -m bench.replicas " + " ".join(argv or __import__("sys").argv[1:]),
        "machine": machine(),
        "uptime_before": _uptime(),
        "records": n,
        "results": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="flowlog-bench-replicas-") as tmp:
            for k in counts:
                report["results"].append(run(k, n, a.repeat, services, Path(tmp) / f"k{k}"))
    finally:
        services.stop_all()
    report["uptime_after"] = _uptime()
    out = BENCH_DIR / "results" / f"replicas-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    text = render(report)
    print(text)
    log(f"wrote {out}")
    if a.write_results_md:
        write_results_md(text)
        log("updated bench/RESULTS.md (Replicas)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
