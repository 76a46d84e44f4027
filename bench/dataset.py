"""Realistic flow records for the benchmark, from the server's own generator (server.core.generator):
the demo inventory's resources in region bj, one flow log each, 60-second windows at a high
intensity, records ordered by time. Deterministic for a seed.

Also: the flow logs and LogStores the benchmark creates through the gRPC API, and the collector
messages (IngestRequest, serialised once, before anything is timed).
"""

from __future__ import annotations

import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from bench.common import ACCOUNT, MD, PROJECT, REGION

WINDOW_MS = 60_000
INTENSITY = 100.0
SEED = 20251125


def bj_resources():
    from server.demo import demo_resources

    return [r for r in demo_resources() if r.region == REGION]


def local_flow_logs(log_store: str, n: int | None = None, region_mix: bool = False):
    """(FlowLog, Resource) pairs built locally (for in-process phases: no server needed)."""
    from server.core.model import FlowLog, TrafficType
    from server.demo import demo_resources

    res = demo_resources() if region_mix else bj_resources()
    res = res[:n] if n else res
    return [
        (
            FlowLog(
                id=f"fl-bench{i:05d}",
                region=r.region,
                name=f"bench-{i}",
                resource_type=r.type,
                resource_id=r.id,
                network_id=r.network_id,
                traffic_type=TrafficType.ALL,
                project=PROJECT,
                log_store=log_store,
                account_id=ACCOUNT,
            ),
            r,
        )
        for i, r in enumerate(res)
    ]


def create_flow_logs(address: str, log_store: str, count: int = 8):
    """Create `count` flow logs (one per bj demo resource) delivering to bench/<log_store>, through
    the API. Returns [(FlowLog, Resource)] as the server stored them."""
    import grpc

    from flowlog.v1 import flow_log_pb2, flow_log_pb2_grpc
    from server.core.model import FlowLog, ResourceType, TrafficType

    out = []
    with grpc.insecure_channel(address) as ch:
        stub = flow_log_pb2_grpc.FlowLogServiceStub(ch)
        for i, r in enumerate(bj_resources()[:count]):
            req = flow_log_pb2.CreateFlowLogRequest(
                region=REGION,
                name=f"{log_store}-{i}",
                resource_type=int(r.type),
                resource_id=r.id,
                network_id=r.network_id,
                traffic_type=int(TrafficType.ALL),
            )
            if i == 0:
                req.new_log_store.project = PROJECT
                req.new_log_store.name = log_store
                req.new_log_store.retention_days = 3650
            else:
                req.existing_log_store.project = PROJECT
                req.existing_log_store.name = log_store
            fl = stub.CreateFlowLog(req, metadata=MD)
            out.append(
                (
                    FlowLog(
                        id=fl.id,
                        region=fl.region,
                        name=fl.name,
                        resource_type=ResourceType(fl.resource_type),
                        resource_id=fl.resource_id,
                        network_id=fl.network_id,
                        traffic_type=TrafficType(fl.traffic_type),
                        project=fl.destination.project,
                        log_store=fl.destination.log_store,
                        account_id=ACCOUNT,
                    ),
                    r,
                )
            )
    return out


def create_log_store(address: str, name: str) -> None:
    import grpc

    from flowlog.v1 import log_store_pb2, log_store_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        log_store_pb2_grpc.LogStoreServiceStub(ch).CreateLogStore(
            log_store_pb2.CreateLogStoreRequest(
                log_store=log_store_pb2.LogStore(region=REGION, project=PROJECT, name=name, retention_days=3650)
            ),
            metadata=MD,
        )


def windows(flow_logs, start_ms: int, seed: int = SEED, intensity: float = INTENSITY) -> Iterator[list]:
    """The records of consecutive windows (all flow logs per window), forever."""
    from server.core.generator import generate_window

    w = start_ms - start_ms % WINDOW_MS
    while True:
        out = []
        for fl, res in flow_logs:
            out.extend(generate_window(fl, res, w, WINDOW_MS, seed, intensity))
        yield out
        w += WINDOW_MS


def records_per_window(flow_logs, intensity: float = INTENSITY) -> float:
    """About how many records one window of all the flow logs holds (from a few sample windows)."""
    gen = windows(flow_logs, 1_700_000_000_000, seed=1, intensity=intensity)
    return sum(len(next(gen)) for _ in range(3)) / 3


def start_for(flow_logs, n: int, end_margin_ms: int = 10 * 60_000, intensity: float = INTENSITY) -> int:
    """A start time such that n records end about end_margin_ms before now."""
    per = records_per_window(flow_logs, intensity)
    span = int(n / per * 1.1 + 2) * WINDOW_MS
    now = time.time_ns() // 1_000_000
    return now - end_margin_ms - span


def take(flow_logs, n: int, start_ms: int, seed: int = SEED) -> list:
    """Exactly n records (FlowRecord, with record_id), in window order."""
    out: list = []
    for recs in windows(flow_logs, start_ms, seed):
        out.extend(recs)
        if len(out) >= n:
            return out[:n]
    return out


def chunks(records: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(records), size):
        yield records[i : i + size]


# -- collector messages ---------------------------------------------------------------------------


def _pb_record(r, ts_cls, rec_cls):
    s, e = r.start_time, r.end_time
    # What a collector sends: no record_id (the server computes it), no identity fields (they
    # come from the flow log).
    return rec_cls(
        src_addr=r.src_addr,
        dst_addr=r.dst_addr,
        src_port=r.src_port,
        dst_port=r.dst_port,
        protocol=r.protocol,
        packets=r.packets,
        bytes=r.bytes,
        start_time=ts_cls(seconds=s // 1000, nanos=(s % 1000) * 1_000_000),
        end_time=ts_cls(seconds=e // 1000, nanos=(e % 1000) * 1_000_000),
        action=r.action,
        log_status=r.log_status,
        direction=r.direction,
        tcp_flags=r.tcp_flags,
    )


def ingest_messages(records: Iterable, batch: int = 1000) -> list[bytes]:
    """Serialised IngestRequest messages of `batch` records of one flow log each, in the order the
    records come (per flow log; a flow log's leftovers are sent when it reaches `batch`)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from flowlog.v1 import ingest_pb2, record_pb2

    rec_cls = record_pb2.FlowRecord
    pending: dict[str, list] = {}
    out: list[bytes] = []
    for r in records:
        buf = pending.setdefault(r.flow_log_id, [])
        buf.append(_pb_record(r, Timestamp, rec_cls))
        if len(buf) >= batch:
            out.append(ingest_pb2.IngestRequest(flow_log_id=r.flow_log_id, records=buf).SerializeToString())
            pending[r.flow_log_id] = []
    for fid, buf in pending.items():
        if buf:
            out.append(ingest_pb2.IngestRequest(flow_log_id=fid, records=buf).SerializeToString())
    return out


def write_frames(path: Path, frames: Sequence[bytes]) -> None:
    with open(path, "wb") as f:
        for b in frames:
            f.write(struct.pack("<I", len(b)))
            f.write(b)


def read_frames(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    out = []
    i = 0
    while i < len(data):
        (n,) = struct.unpack_from("<I", data, i)
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def retag(records: Sequence, log_store: str) -> list:
    """The same records for another LogStore (e.g. the baseline's own copy)."""
    return [r._replace(log_store=log_store) for r in records]


def restamp(flow_log, records: Sequence):
    """Records with the flow log's identity fields (what the server derives on Ingest)."""
    fl = flow_log
    return [
        r._replace(
            account_id=fl.account_id, flow_log_id=fl.id, region=fl.region, project=fl.project, log_store=fl.log_store
        )
        for r in records
    ]


__all__ = ["create_flow_logs", "create_log_store", "local_flow_logs", "take", "ingest_messages", "replace"]
