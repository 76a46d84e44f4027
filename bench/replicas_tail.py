"""Tail across replicas: what following another replica's spool costs a Tail, against following
its own (same run, same machine: the local path is the baseline).

    .venv/bin/python -m bench.replicas_tail [--messages N] [--burst N] [--quick]

Two replicas (PostgreSQL metadata, Elasticsearch, S3: "Running several replicas" in the README),
one Tail on replica 0, and one client ingesting 1,000-record messages at a steady rate, one
Ingest call each, alternately through replica 0 (local: the Tail's own spool) and replica 1
(remote: replica 1 serves its spool to replica 0 over ReplicaService.StreamSpool). Every record
of message k starts at base + k ms, which matches a Tail event to its message and so to its
acknowledgement. Latency = acknowledgement -> arrival on the Tail, per message, split by path.

Throughput: a burst of `--burst` records through replica 1 only, sent as fast as one client
can (4 streams), and the time until the Tail on replica 0 holds all of them; then the same
burst through replica 0. On 2 cores shared by two replicas, Elasticsearch, PostgreSQL, the S3
server and the client, both figures show the cost of the extra hop, not a deployment's speed.
Results: bench/results/replicas-tail-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import dataset
from bench.common import MD, PROJECT, REGION, Services, log, machine, pct, rmtree, start_server

BENCH_DIR = Path(__file__).resolve().parent


class TailClient(threading.Thread):
    """One Tail; keeps (arrival time, min start, max start, records) per event."""

    def __init__(self, address: str, log_store: str) -> None:
        super().__init__(daemon=True)
        import grpc

        from flowlog.v1 import query_pb2, query_pb2_grpc

        self.channel = grpc.insecure_channel(address)
        req = query_pb2.TailRequest(region=REGION, project=PROJECT, log_stores=[log_store])
        self.call = query_pb2_grpc.QueryServiceStub(self.channel).Tail(req, metadata=MD)
        self.events: list[tuple[float, int, int, int]] = []
        self.records = 0
        self.first = threading.Event()

    def run(self) -> None:
        try:
            for resp in self.call:
                self.first.set()
                recs = resp.batch.records
                if recs:
                    starts = [r.start_time.seconds * 1000 + r.start_time.nanos // 1_000_000 for r in recs]
                    self.events.append((time.monotonic(), min(starts), max(starts), len(recs)))
                    self.records += len(recs)
        except Exception:  # noqa: BLE001 - cancelled at the end
            pass

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def _ingest(address: str, frames: list[bytes]) -> float:
    """One Ingest call per frame; returns the monotonic time of the acknowledgement."""
    import grpc

    with grpc.insecure_channel(address) as ch:
        call = ch.stream_unary(
            "/flowlog.v1.IngestService/Ingest", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        call(iter(frames), metadata=MD, timeout=60)
    return time.monotonic()


def run(n_msgs: int, burst: int, services: Services, workdir: Path) -> dict[str, Any]:
    pg, es, s3 = services.get("postgres"), services.get("es"), services.get("s3")
    from bench.replicas import _create_database

    tag = uuid.uuid4().hex[:6]
    settings = {
        "metadata_backend": "postgres",
        "postgres": {"dsn": _create_database(pg)},
        "query_backend": "elasticsearch",
        "elasticsearch": {"url": es["url"], "index_prefix": f"benchtail{tag}"},
        "archive_backend": "minio",
        "minio": {
            "endpoint": s3["endpoint"],
            "access_key": s3["access_key"],
            "secret_key": s3["secret_key"],
            "bucket": f"bench-tail-{tag}",
            "region": s3["region"],
        },
        "flow_log_quota": 100,
        "limits": {"tail_heartbeat_seconds": 1.0},
        "replica": {"heartbeat_seconds": 1.0},
    }
    servers = [start_server(workdir / f"r{i}", settings) for i in range(2)]
    result: dict[str, Any] = {"messages": n_msgs, "burst": burst}
    try:
        store = f"tail{tag}"
        fls = dataset.create_flow_logs(servers[0].address, store, count=1)
        tail = TailClient(servers[0].address, store)
        tail.start()
        base = time.time_ns() // 1_000_000 - 60_000
        recs = dataset.take(fls, n_msgs * 1000, base - 3_600_000)
        frames = []
        for k in range(n_msgs):
            chunk = [
                r._replace(start_time=base + k, end_time=base + k + (r.end_time - r.start_time))
                for r in recs[k * 1000 : (k + 1) * 1000]
            ]
            frames.extend(dataset.ingest_messages(chunk, batch=1000))
        time.sleep(2.0)  # the Tail's sources are connected (its first heartbeat is 1 s)
        acks: dict[int, float] = {}
        for k, frame in enumerate(frames):  # 20 messages/s, alternating replicas
            acks[k] = _ingest(servers[k % 2].address, [frame])
            time.sleep(0.05)
        deadline = time.monotonic() + 120
        while tail.records < n_msgs * 1000 and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered: dict[int, float] = {}
        for t, lo, hi, _ in tail.events:
            for k in range(lo - base, hi - base + 1):
                delivered[k] = max(delivered.get(k, 0.0), t)
        for path, parity in (("local", 0), ("remote", 1)):
            lat = [(delivered[k] - acks[k]) * 1000 for k in acks if k % 2 == parity and k in delivered]
            result[f"{path}_p50_ms"] = pct(lat, 50)
            result[f"{path}_p99_ms"] = pct(lat, 99)
            result[f"{path}_missing"] = sum(1 for k in acks if k % 2 == parity and k not in delivered)
            log(f"replicas-tail {path}: ack -> tail p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms")

        # Throughput: a burst through one replica, until the tail on replica 0 has it all.
        for path, i in (("remote", 1), ("local", 0)):
            base2 = base + 1_000_000 + i * 100_000
            brecs = dataset.take(fls, burst, base2 - 3_600_000)
            bframes = dataset.ingest_messages(brecs, batch=1000)
            have = tail.records
            t0 = time.monotonic()
            threads = [threading.Thread(target=_ingest, args=(servers[i].address, bframes[j::4])) for j in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            t_acked = time.monotonic()
            deadline = time.monotonic() + 300
            while tail.records < have + burst and time.monotonic() < deadline:
                time.sleep(0.02)
            t_tail = time.monotonic()
            got = tail.records - have
            result[f"{path}_burst_acked_rps"] = burst / (t_acked - t0)
            result[f"{path}_burst_tail_rps"] = got / (t_tail - t0)
            result[f"{path}_burst_received"] = got
            log(
                f"replicas-tail {path} burst of {burst}: acked {burst / (t_acked - t0):,.0f} rec/s, "
                f"tail received {got} at {got / (t_tail - t0):,.0f} rec/s"
            )
        tail.close()
    finally:
        for s in servers:
            s.stop()
    rmtree(workdir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas_tail", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=200, help="paced messages of 1,000 records (latency)")
    p.add_argument("--burst", type=int, default=100_000, help="records of each burst (throughput)")
    p.add_argument("--quick", action="store_true", help="40 messages, bursts of 20,000")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.burst = 40, 20_000
    import tempfile

    services = Services()
    try:
        with tempfile.TemporaryDirectory(prefix="flowlog-bench-tail-") as tmp:
            result = run(args.messages, args.burst, services, Path(tmp) / "work")
    finally:
        services.stop_all()
    report = {"machine": machine(), "result": result}
    out = BENCH_DIR / "results" / f"replicas-tail-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
