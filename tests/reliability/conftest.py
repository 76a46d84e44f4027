"""Reliability harness: real flowlog-server processes (tests/e2e/conftest.start_server), real
Elasticsearch and S3 servers that the tests stop and start again (scripts/flowlog_services.py),
and clients that keep count of every record they sent and every record the server acknowledged.

The property all of tests/reliability checks: an acknowledged record is stored exactly once, in
the query backend and in the archive, whatever happened in between (backend outages, backend
errors, kill -9, SIGTERM, hostile input, load); and one account never sees another's data.
"""

from __future__ import annotations

import collections
import itertools
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import ingest_pb2, query_pb2, record_pb2
from flowlog.v1 import types_pb2 as t
from server.core.records import canonical_address, record_id
from tests.e2e.conftest import KEY_A, KEY_B, ServerProcess, Stubs, free_port, start_server  # noqa: F401
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
_SCRIPTS = str(ROOT / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

import flowlog_services as fs  # noqa: E402

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
QUERY_HEALTH = "flowlog.backend.query"
ARCHIVE_HEALTH = "flowlog.backend.archive"

# Settings every reliability server starts with: no generator (only records the test sends), the
# archive flushed quickly (so that the archive can be checked within a test), keys for two accounts.
BASE_SETTINGS = {
    "generator": {"enabled": False},
    "pipeline": {"archive_max_age_seconds": 1.0, "archive_max_records": 5000},
}


def wait_delivered(fetch, acked: set, timeout: float, what: str) -> list[str]:
    """Poll fetch() every second (an RpcError: the backend is not answering yet) until it holds every
    acknowledged id; returns that result."""
    return wait_for(
        fetch, f"{what}: every acknowledged record", timeout, 1.0,
        until=lambda got: acked <= set(got), ignoring=(grpc.RpcError,),
        describe=lambda got: f"{len(acked - set(got))} of {len(acked)} acknowledged records missing",
    )  # fmt: skip


# -- records with ids known in advance ----------------------------------------------------------

_SEQ = itertools.count(1)
_SEQ_LOCK = threading.Lock()


def next_indices(n: int) -> list[int]:
    with _SEQ_LOCK:
        return [next(_SEQ) for _ in range(n)]


def base_ms() -> int:
    """A start time a few minutes in the past, inside the current UTC day where possible (the
    ES backend keeps one index per day: one index is what the index-block test blocks)."""
    now = time.time_ns() // 1_000_000
    day = now - now % 86_400_000
    return max(day + 1000, now - 600_000)


def make_record(i: int, start_ms: int) -> record_pb2.FlowRecord:
    """Record number i: a unique five-tuple (so a unique record_id) for i < 2**24."""
    r = record_pb2.FlowRecord(
        src_addr=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
        dst_addr="203.0.113.11",
        src_port=1024 + i % 60000,
        dst_port=(443, 22, 80, 53)[i % 4],
        protocol=(6, 6, 6, 17)[i % 4],
        packets=1 + i % 50,
        bytes=64 * (1 + i % 50) + i % 7,
        action=t.ACTION_ACCEPT + i % 2,
        log_status=t.LOG_STATUS_OK,
        direction=t.DIRECTION_INGRESS,
        tcp_flags=i % 64,
    )
    r.start_time.FromMilliseconds(start_ms + i % 1000)
    r.end_time.FromMilliseconds(start_ms + i % 1000 + 999)
    return r


def expected_id(flow_log_id: str, r: record_pb2.FlowRecord) -> str:
    """The record_id the server gives r (server.core.records.record_id over the flow window)."""
    return record_id(
        flow_log_id,
        canonical_address(r.src_addr),
        canonical_address(r.dst_addr),
        r.src_port,
        r.dst_port,
        r.protocol,
        r.direction,
        r.start_time.ToMilliseconds(),
        r.end_time.ToMilliseconds(),
    )


def batch(flow_log_id: str, n: int, start_ms: int | None = None) -> tuple[ingest_pb2.IngestRequest, list[str]]:
    start_ms = base_ms() if start_ms is None else start_ms
    recs = [make_record(i, start_ms) for i in next_indices(n)]
    return ingest_pb2.IngestRequest(flow_log_id=flow_log_id, records=recs), [expected_id(flow_log_id, r) for r in recs]


# -- accounts, flow logs ------------------------------------------------------------------------


@dataclass
class Target:
    """A flow log and its LogStore (region bj, project proj) of one account."""

    stubs: Stubs
    flow_log_id: str
    project: str
    log_store: str
    region: str = "bj"


def create_target(stubs: Stubs, store: str | None = None, project: str = "proj", retention_days: int = 0) -> Target:
    """A flow log delivering to a new LogStore (retention 0: the server's default)."""
    store = store or "s" + uuid.uuid4().hex[:10]
    req = fl.CreateFlowLogRequest(
        region="bj",
        name="fl" + uuid.uuid4().hex[:8],
        resource_type=t.RESOURCE_TYPE_EIP,
        resource_id="eip-bj-01",
        network_id="vpc-bjdemo",
        traffic_type=t.TRAFFIC_TYPE_ALL,
        new_log_store=fl.NewLogStore(project=project, name=store, retention_days=retention_days),
    )
    f = stubs.flow_logs.CreateFlowLog(req, metadata=stubs.md, timeout=30)
    return Target(stubs, f.id, project, store)


def query_ids(
    target: Target,
    page: int = 5000,
    start_ms: int = 0,
    end_ms: int = 4_000_000_000_000,
    filter: str = "",
    log_stores: list[str] | None = None,
    timeout: float = 60,
) -> list[str]:
    """Every record_id the Query RPC returns for the LogStore (all pages, oldest first): a list,
    so that duplicates show."""
    out: list[str] = []
    token = ""
    for _ in range(10_000):
        req = query_pb2.QueryRequest(
            region=target.region,
            project=target.project,
            log_stores=log_stores or [target.log_store],
            filter=filter,
            limit=page,
            order=query_pb2.ORDER_OLDEST_FIRST,
            page_token=token,
        )
        req.start_time.FromMilliseconds(start_ms)
        req.end_time.FromMilliseconds(end_ms)
        summary = None
        for resp in target.stubs.query.Query(req, metadata=target.stubs.md, timeout=timeout):
            if resp.HasField("batch"):
                out.extend(r.record_id for r in resp.batch.records)
            else:
                summary = resp.summary
        assert summary is not None, "a Query stream ends with a summary"
        if not summary.next_page_token:
            return out
        token = summary.next_page_token
    raise AssertionError("Query paging did not end")


def check_exactly_once(stored: list[str], acked: set[str], sent: set[str], what: str) -> None:
    """Every acknowledged id stored exactly once; nothing stored that was not sent."""
    counts = collections.Counter(stored)
    dups = {k: v for k, v in counts.items() if v > 1}
    missing = acked - counts.keys()
    foreign = counts.keys() - sent
    assert not dups, f"{what}: {len(dups)} record(s) stored more than once, e.g. {list(dups.items())[:3]}"
    assert not missing, f"{what}: {len(missing)} acknowledged record(s) lost, e.g. {sorted(missing)[:3]}"
    assert not foreign, f"{what}: {len(foreign)} record(s) stored that were never sent, e.g. {sorted(foreign)[:3]}"


# -- a client that streams batches and keeps the books ------------------------------------------


@dataclass
class Books:
    sent: set = field(default_factory=set)
    acked: set = field(default_factory=set)
    calls: int = 0
    errors: list = field(default_factory=list)  # (monotonic time, code name, details)
    ack_times: list = field(default_factory=list)  # monotonic times of acknowledged calls
    acked_calls: list = field(default_factory=list)  # (monotonic time the call started, its ids)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Ingester(threading.Thread):
    """Sends Ingest calls of `messages` x `per_message` records until stopped; an Ingest call's
    records are acknowledged when the call returns OK with all of them accepted."""

    def __init__(
        self,
        target: Target,
        books: Books | None = None,
        *,
        per_message: int = 200,
        messages: int = 2,
        pause_s: float = 0.05,
        timeout_s: float = 30.0,
        max_calls: int = 100_000,
        keep_calls: bool = False,
    ) -> None:
        super().__init__(daemon=True, name="ingester")
        self.target = target
        self.books = books or Books()
        self.per_message = per_message
        self.messages = messages
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.max_calls = max_calls
        self.keep_calls = keep_calls
        self.stop_event = threading.Event()

    def one_call(self) -> bool:
        msgs, ids = [], []
        start = base_ms()
        for _ in range(self.messages):
            m, i = batch(self.target.flow_log_id, self.per_message, start)
            msgs.append(m)
            ids.extend(i)
        b = self.books
        with b.lock:
            b.sent.update(ids)
            b.calls += 1
        t_start = time.monotonic()
        try:
            resp = self.target.stubs.ingest.Ingest(iter(msgs), metadata=self.target.stubs.md, timeout=self.timeout_s)
        except grpc.RpcError as e:
            with b.lock:
                b.errors.append((time.monotonic(), e.code().name, e.details()))
            return False
        assert resp.accepted == len(ids) and resp.rejected == 0, (resp.accepted, resp.rejected, resp.rejections[:3])
        with b.lock:
            b.acked.update(ids)
            b.ack_times.append(time.monotonic())
            if self.keep_calls:
                b.acked_calls.append((t_start, ids))
        return True

    def run(self) -> None:
        for _ in range(self.max_calls):
            if self.stop_event.is_set():
                return
            try:
                self.one_call()
            except Exception as e:  # noqa: BLE001 - reported through the books
                with self.books.lock:
                    self.books.errors.append((time.monotonic(), type(e).__name__, str(e)))
            if self.stop_event.wait(self.pause_s):
                return

    def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "ingester did not stop"


# -- health -------------------------------------------------------------------------------------


def health(stubs: Stubs, service: str = "", timeout: float = 5) -> int | None:
    try:
        return stubs.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
    except grpc.RpcError:
        return None


class HealthWatch(threading.Thread):
    """Samples the health of one service every `interval_s`: [(monotonic time, status)]."""

    def __init__(self, stubs: Stubs, service: str, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True, name="health-watch")
        self.stubs, self.service, self.interval_s = stubs, service, interval_s
        self.samples: list[tuple[float, int | None]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self.samples.append((time.monotonic(), health(self.stubs, self.service, timeout=2)))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)

    def statuses_between(self, t0: float, t1: float) -> list[int | None]:
        return [s for t, s in self.samples if t0 <= t <= t1]


# -- memory -------------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.samples.append((time.monotonic() - t0, self.proc.memory_info().rss))
            except psutil.Error:
                return
            self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# -- servers --------------------------------------------------------------------------------------


def settings(**overrides) -> dict:
    out = {k: dict(v) for k, v in BASE_SETTINGS.items()}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


@pytest.fixture
def server_factory(tmp_path):
    """start(settings, data_dir=None, port=None) -> ServerProcess; every server started is
    stopped at the end of the test, whatever happened (SIGKILL if SIGTERM does not do it)."""
    started: list[ServerProcess] = []

    def start(
        cfg: dict | None = None, data_dir: Path | None = None, name: str = "srv", port: int | None = None
    ) -> ServerProcess:
        sp = start_server(tmp_path / f"{name}-{len(started)}", settings(**(cfg or {})), data_dir=data_dir, port=port)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        sp.stop(timeout=30)


class ExternalService:
    """A dedicated ES or S3 server that a test may crash and bring back on the same port and data
    dir (scripts/flowlog_services.py restart support)."""

    def __init__(self, kind: str) -> None:
        self.info = fs.start(kind, owner_pid=os.getpid())
        self.up = True

    def down(self, kill: bool = True) -> None:
        fs.stop(self.info, keep_data=True, kill=kill)
        self.up = False

    def start_again(self) -> float:
        t0 = time.monotonic()
        self.info = fs.start(
            self.info["service"],
            owner_pid=os.getpid(),
            data_dir=self.info["data_dir"],
            port=int(self.info["port"]),
            transport_port=self.info.get("transport_port"),
        )
        self.up = True
        return time.monotonic() - t0

    def close(self) -> None:
        fs.stop(self.info)


def _dedicated(name: str, what: str):
    try:
        svc = ExternalService(name)
    except fs.ServiceError as e:
        pytest.fail(f"could not start a dedicated {what}: {e}\nTo get it: {fs.how_to_get(name)}", pytrace=False)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def dedicated_es():
    yield from _dedicated("es", "Elasticsearch")


@pytest.fixture(scope="module")
def dedicated_s3():
    yield from _dedicated("s3", "S3 server")


def report(record_property, name: str, **values) -> None:
    """Numbers a test measured: printed (pytest -s / -rA) and attached to the junit report."""
    line = f"[{name}] " + ", ".join(f"{k}={v}" for k, v in values.items())
    print(line)
    for k, v in values.items():
        record_property(f"{name}.{k}", v)
