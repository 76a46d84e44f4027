"""Tail: delivery latency from the Ingest acknowledgement to the record's arrival on a Tail stream,
with 1, 10 and 100 concurrent tails (all in one client process, grpc.aio, each on its own
connection as separate subscribers are; and 10 sharing one connection), while another client
process ingests 1,000-record messages at a steady rate, one Ingest call per message. Every
record of message k carries start_time = base + k ms, which is how a tail event is matched to
the message (and so to its acknowledgement time). Unfiltered tails (no sampling, no filter).

Reference figure measured in the same run: the Ingest call's own latency (send -> ack).

Throughput: one tail while a client ingests 100,000 records/s (4 streams, paced); the tail keeps
up when it receives everything, without being disconnected for falling behind, at that rate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from bench import dataset
from bench.common import PROJECT, REGION, Services, log, pct, pyspy, rmtree, server_settings, start_server
from bench.workers import Worker
from flowlog.v1 import query_pb2


def _messages(fls, n_msgs: int, base: int, per_msg: int = 1000) -> list[bytes]:
    """n_msgs IngestRequests of per_msg records, message k's records all starting at base + k."""
    start = base - 3_600_000
    recs = dataset.take(fls[:1], n_msgs * per_msg, start)
    out = []
    for k in range(n_msgs):
        chunk = []
        for r in recs[k * per_msg : (k + 1) * per_msg]:
            st = base + k
            chunk.append(r._replace(start_time=st, end_time=st + (r.end_time - r.start_time)))
        out.extend(dataset.ingest_messages(chunk, batch=per_msg))
    return out


def _tail_request(log_store: str) -> bytes:
    return query_pb2.TailRequest(region=REGION, project=PROJECT, log_stores=[log_store]).SerializeToString()


def _latencies(acks: list, events: list[list], n_msgs: int, which: int = 1) -> tuple[list[float], int]:
    """(ack -> delivery in ms (which=1; send -> delivery: which=0) for every (tail, message),
    messages never delivered)."""
    ack_at = {}
    for ack in acks:
        count, first = ack[2], ack[3]
        for k in range(first, first + count):
            ack_at[k] = ack[which]
    out: list[float] = []
    missing = 0
    for ev in events:
        delivered: dict[int, float] = {}
        for t, a, b, _n in ev:
            for k in range(a, b + 1):
                if delivered.get(k, 0.0) < t:
                    delivered[k] = t
        for k in range(n_msgs):
            if k in delivered and k in ack_at:
                out.append((delivered[k] - ack_at[k]) * 1000)
            else:
                missing += 1
    return out, missing


# (tails, Ingest calls per second of 1,000 records, all tails on one connection): the same load for
# 1, 10 and 100 tails, then 100 tails at a tenth of it (100 tails x 20,000 records/s is 2M records/s
# to deliver, more than these two cores can encode, send and (in the client process) parse).
# 10 tails also share one connection once: one client multiplexing its tails (see README).
CONFIGS: tuple[tuple[int, float, bool], ...] = (
    (1, 20.0, False),
    (10, 20.0, False),
    (10, 20.0, True),
    (100, 20.0, False),
    (100, 2.0, False),
)


def run_key(n_tails: int, rate: float, shared: bool, base_rate: float) -> str:
    """The key of a configuration's figures in the results: "10", "100@2/s", "10 on one connection"
    (the rate is named when it is not the first configuration's, `base_rate`)."""
    key = str(n_tails) if rate == base_rate else f"{n_tails}@{rate:g}/s"
    return key + (" on one connection" if shared else "")


def _wait_tail(tailer: Worker, records: int, deadline: float, poll_s: float) -> None:
    """Until the (first) tail has `records` records, reports an error, or the deadline passes."""
    while time.monotonic() < deadline:
        got, errors = tailer.call("tail_progress")
        if got[0] >= records or errors:
            return
        time.sleep(poll_s)


def run(
    services: Services,
    workdir: Path,
    configs: tuple[tuple[int, float, bool], ...] = CONFIGS,
    seconds: float = 10.0,
    throughput_records: int = 500_000,
    throughput_rate: float = 100_000,
) -> dict[str, Any]:
    log(f"tail: (tails, calls/s) {configs}, 1,000 records per call, {seconds:.0f}s each")
    wd = workdir / "tail"
    srv = start_server(wd, server_settings("embedded", services, flow_log_quota=100))
    ingester = Worker("tail-ingest")
    tailer = Worker("tail-clients")
    result: dict[str, Any] = {"records_per_msg": 1000, "seconds": seconds, "runs": {}}
    try:
        for n_tails, rate, shared in configs:
            tag = f"tail{n_tails}x{int(rate)}" + ("-shared" if shared else "")
            fls = dataset.create_flow_logs(srv.address, tag, count=1)
            n_msgs = int(rate * seconds)
            base = time.time_ns() // 1_000_000 - 600_000
            frames = _messages(fls, n_msgs, base)
            fpath = wd / f"{tag}.frames"
            dataset.write_frames(fpath, frames)
            ingester.call("load_frames", path=str(fpath))
            tailer.call(
                "tail_start",
                address=srv.address,
                tails=n_tails,
                request=_tail_request(tag),
                base_ms=base,
                shared=shared,
            )
            srv.rss.reset()
            with pyspy(srv.proc.pid, tag):
                r = ingester.call("ingest", address=srv.address, streams=1, msgs_per_call=1, rate_msgs=rate)
                # Let the last deliveries arrive.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and min(tailer.call("tail_records")) < n_msgs * 1000:
                    time.sleep(0.1)
            s = tailer.call("tail_stop")
            lat, missing = _latencies(r["acks"], s["events"], n_msgs)
            lat_sent, _ = _latencies(r["acks"], s["events"], n_msgs, which=0)
            ingest_lat = [(a - b) * 1000 for b, a, _, _ in r["acks"]]
            run_ = {
                "tails": n_tails,
                "connections": 1 if shared else n_tails,
                "rate_msgs_per_s": rate,
                "messages": n_msgs,
                "delivered_p50_ms": pct(lat, 50),
                "delivered_p99_ms": pct(lat, 99),
                "delivered_max_ms": max(lat) if lat else float("nan"),
                "sent_p50_ms": pct(lat_sent, 50),
                "sent_p99_ms": pct(lat_sent, 99),
                "missing": missing,
                "errors": s["errors"][:3],
                "n_errors": len(s["errors"]),
                "ingest_ack_p50_ms": pct(ingest_lat, 50),
                "ingest_ack_p99_ms": pct(ingest_lat, 99),
                "peak_rss_mb": round(srv.rss.peak / 2**20, 1),
                "send_rate_msgs_per_s": n_msgs / max(1e-9, r["t_acked"] - r["t0"]),
            }
            result["runs"][run_key(n_tails, rate, shared, configs[0][1])] = run_
            log(
                f"tail x{n_tails} on {run_['connections']} connection(s) at {rate:g} calls/s: ack->delivery p50 "
                f"{run_['delivered_p50_ms']:.1f} ms, p99 {run_['delivered_p99_ms']:.1f} ms (send->delivery p99 "
                f"{run_['sent_p99_ms']:.1f} ms), missing {missing}, errors {len(s['errors'])}; ingest ack p50 "
                f"{run_['ingest_ack_p50_ms']:.1f} ms"
            )
            fpath.unlink()

        # Throughput: one tail while a client ingests at `throughput_rate` records/s (4 streams).
        tag = "tailmax"
        fls = dataset.create_flow_logs(srv.address, tag, count=1)
        n_msgs = throughput_records // 1000
        base = time.time_ns() // 1_000_000 - 600_000
        frames = _messages(fls, n_msgs, base)
        fpath = wd / f"{tag}.frames"
        dataset.write_frames(fpath, frames)
        ingester.call("load_frames", path=str(fpath))
        tailer.call("tail_start", address=srv.address, tails=1, request=_tail_request(tag), base_ms=base)
        with pyspy(srv.proc.pid, "tail-throughput"):
            r = ingester.call(
                "ingest", address=srv.address, streams=4, msgs_per_call=5, rate_msgs=throughput_rate / 1000
            )
            _wait_tail(tailer, n_msgs * 1000, time.monotonic() + 60, 0.05)
        s = tailer.call("tail_stop")
        ev = s["events"][0]
        got = s["records"][0]
        last = max((e[0] for e in ev), default=r["t0"])
        result["throughput"] = {
            "target_rps": throughput_rate,
            "records": n_msgs * 1000,
            "received": got,
            "errors": s["errors"][:3],
            "ingest_rps": n_msgs * 1000 / (r["t_acked"] - r["t0"]),
            "tail_rps": got / max(1e-9, last - r["t0"]),
            "kept_up": got == n_msgs * 1000 and not s["errors"],
        }
        # Kept up: everything received, never disconnected, at (about) the ingest rate.
        t = result["throughput"]
        log(
            f"tail throughput: {t['tail_rps']:,.0f} rec/s delivered to one tail (ingest {t['ingest_rps']:,.0f} "
            f"rec/s), received {got:,}/{n_msgs * 1000:,}, errors {s['errors'][:1]}"
        )
        fpath.unlink()

        # Capacity of one tail on its own: replay those records from the spool (start_time before
        # the ingest), with no ingest going on.
        req = query_pb2.TailRequest(
            region=REGION, project=PROJECT, log_stores=[tag], start_time=Timestamp(seconds=int(r["wall_t0"]) - 2)
        ).SerializeToString()
        t0 = time.monotonic()
        tailer.call("tail_start", address=srv.address, tails=1, request=req, base_ms=base, settle=0.0)
        _wait_tail(tailer, n_msgs * 1000, t0 + 120, 0.02)
        s = tailer.call("tail_stop")
        ev = s["events"][0]
        n = s["records"][0]
        result["replay"] = {
            "records": n,
            "errors": s["errors"][:3],
            "tail_rps": n / max(1e-9, ev[-1][0] - t0) if ev else 0.0,
        }
        log(
            f"tail replay: one tail received {n:,} stored records at {result['replay']['tail_rps']:,.0f} rec/s "
            f"(no ingest meanwhile), errors {s['errors'][:1]}"
        )
    finally:
        ingester.close()
        tailer.close()
        srv.stop()
        rmtree(wd)
    return result
