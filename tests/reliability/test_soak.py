"""Soak: a bounded run (about 2.5 minutes, loopback only) of the embedded default under many
concurrent streams: 8 ingest streams, 4 query threads, 20 tails.

Asserts: no errors anywhere; every acknowledged record stored exactly once; every tail got each
record at most once, and every record acknowledged by a call that started after the tail was
live (a tail that falls behind reconnects with its resume cursor, as documented: that is not an
error, and it must lose nothing); the server's memory is flat (RSS sampled every second: the
highest value of the last minute within 1.3x of the highest of the first minute after warm-up).
Prints throughput, latencies and memory (pytest -s, or -rA; also in the junit properties).
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import threading
import time

import grpc
import pytest

from flowlog.v1 import query_pb2
from tests.reliability.conftest import (
    KEY_A,
    Books,
    Ingester,
    RssSampler,
    Stubs,
    Target,
    check_exactly_once,
    create_target,
    query_ids,
    report,
)
from tests.waiting import poll, wait_for

pytestmark = pytest.mark.slow

DURATION_S = float(os.environ.get("FLOWLOG_SOAK_SECONDS", "150"))
WARMUP_S = 30.0
INGEST_STREAMS, QUERY_THREADS, TAILS = 8, 4, 20
# Each ingest stream sends 2 x 125 records, then pauses 1 s: at most ~2,000 records/s in all, which
# the server sustains on 2 cores while feeding 20 tails (each record goes out 20 times) and 4
# query threads. A soak checks that a sustainable load stays stable (memory, backend lag), not how
# much load it takes to saturate the machine.
PER_MESSAGE, MESSAGES, PAUSE_S = 125, 2, 1.0
FILTERS = [
    "",
    "action = REJECT",
    "dst_port IN (22, 443)",
    "src_addr = 10.0.0.0/16",
    "protocol = udp AND bytes > 100",
    "NOT port = 80 AND direction = INGRESS",
    "addr IN (203.0.113.11, 10.1.2.3)",
]


class LagSampler(threading.Thread):
    """Every few seconds, how many spooled records the query backend has not stored yet, read
    from the server's spool file (SQLite WAL: a read-only reader never blocks the server)."""

    def __init__(self, spool_path, interval_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.path, self.interval_s = spool_path, interval_s
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.wait(self.interval_s):
            try:
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
                try:
                    off = con.execute("SELECT seq FROM sink_offsets WHERE sink = 'query'").fetchone()
                    lag = con.execute(
                        "SELECT COALESCE(sum(n), 0) FROM batches WHERE seq > ? AND skipped = 0", (off[0] if off else 0,)
                    ).fetchone()[0]
                finally:
                    con.close()
            except sqlite3.Error:
                continue
            self.samples.append((time.monotonic() - t0, int(lag)))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


class Querier(threading.Thread):
    def __init__(self, target: Target, stop: threading.Event, seed: int) -> None:
        super().__init__(daemon=True)
        self.target, self.stop_event, self.rng = target, stop, random.Random(seed)
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.records = 0

    def run(self) -> None:
        s = self.target.stubs
        while not self.stop_event.is_set():
            now = time.time_ns() // 1_000_000
            req = query_pb2.QueryRequest(
                region="bj",
                project=self.target.project,
                log_stores=[self.target.log_store],
                filter=self.rng.choice(FILTERS),
                limit=self.rng.choice([100, 1000, 5000]),
                order=self.rng.choice([query_pb2.ORDER_NEWEST_FIRST, query_pb2.ORDER_OLDEST_FIRST]),
            )
            req.start_time.FromMilliseconds(now - 20 * 60_000)
            req.end_time.FromMilliseconds(now + 60_000)
            t0 = time.monotonic()
            try:
                token = ""
                for resp in s.query.Query(req, metadata=s.md, timeout=30):
                    if resp.HasField("batch"):
                        self.records += len(resp.batch.records)
                    else:
                        token = resp.summary.next_page_token
                if token and self.rng.random() < 0.5:  # and the next page
                    req.page_token = token
                    for resp in s.query.Query(req, metadata=s.md, timeout=30):
                        self.records += len(resp.batch.records)
                self.latencies.append(time.monotonic() - t0)
            except grpc.RpcError as e:
                self.errors.append(f"{e.code().name}: {e.details()}")
            self.stop_event.wait(0.05)


class Tailer(threading.Thread):
    """Follows the LogStore; on RESOURCE_EXHAUSTED ("fell behind") reconnects with its cursor."""

    def __init__(self, target: Target, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target, self.stop_event = target, stop
        self.seen: set[str] = set()
        self.duplicates = 0
        self.reconnects = 0
        self.errors: list[str] = []
        self.live_since: float | None = None
        self.call = None
        self.lock = threading.Lock()

    def run(self) -> None:
        s = self.target.stubs
        cursor = ""
        while not self.stop_event.is_set():
            req = query_pb2.TailRequest(
                region="bj", project=self.target.project, log_stores=[self.target.log_store], resume_cursor=cursor
            )
            with self.lock:
                if self.stop_event.is_set():
                    return
                self.call = s.query.Tail(req, metadata=s.md, timeout=DURATION_S + 120)
            try:
                for resp in self.call:
                    if self.live_since is None:
                        self.live_since = time.monotonic()
                    cursor = resp.cursor
                    for r in resp.batch.records:
                        if r.record_id in self.seen:
                            self.duplicates += 1
                        else:
                            self.seen.add(r.record_id)
                return
            except grpc.RpcError as e:
                if self.stop_event.is_set() and e.code() == grpc.StatusCode.CANCELLED:
                    return
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and cursor:
                    self.reconnects += 1  # the documented way to catch up: resume from the cursor
                    continue
                self.errors.append(f"{e.code().name}: {e.details()}")
                return

    def cancel(self) -> None:
        with self.lock:
            if self.call is not None:
                self.call.cancel()


def test_soak(server_factory, record_property):
    sp = server_factory({"log_level": "WARNING"}, name="soak")
    stubs = [Stubs(sp.address, KEY_A) for _ in range(4)]  # a few connections, as real clients would have
    target = create_target(stubs[0])
    targets = [Target(st, target.flow_log_id, target.project, target.log_store) for st in stubs]
    stop = threading.Event()
    books = Books()
    ingesters = [
        Ingester(
            targets[i % 4],
            books,
            per_message=PER_MESSAGE,
            messages=MESSAGES,
            pause_s=PAUSE_S,
            timeout_s=30,
            keep_calls=True,
        )
        for i in range(INGEST_STREAMS)
    ]
    queriers = [Querier(targets[i % 4], stop, seed=i) for i in range(QUERY_THREADS)]
    tailers = [Tailer(targets[i % 4], stop) for i in range(TAILS)]
    rss = RssSampler(sp.proc.pid, interval_s=1.0)
    rss.start()
    lag = LagSampler(sp.data_dir / "spool.db")
    lag.start()
    for th in tailers:
        th.start()
    # Each tail counts as live from its first message.
    wait_for(lambda: all(t.live_since is not None for t in tailers), "every tail's first message", 60, 0.2)
    t0 = time.monotonic()
    for th in ingesters + queriers:
        th.start()
    try:
        while time.monotonic() - t0 < DURATION_S:
            time.sleep(1.0)  # a soak runs for DURATION_S by design; once a second, check the server lives
            assert sp.proc.poll() is None, f"the server died:\n{sp.log_tail()}"
    finally:
        elapsed = time.monotonic() - t0
        for ing in ingesters:
            ing.stop_event.set()
        stop.set()
        for ing in ingesters:
            ing.stop()
        for q in queriers:
            q.join(30)
        lag.stop()
    rss_samples = list(rss.samples)
    lag_samples = [n for t, n in lag.samples if t >= WARMUP_S]
    acked, sent = books.acked, books.sent
    try:
        # Everything acknowledged is in the query backend, once.
        t_drain = time.monotonic()
        wait_for(
            lambda: len(query_ids(targets[0], page=50_000)) >= len(acked), "the query backend to catch up", 30, 1.0
        )
        drain_s = time.monotonic() - t_drain
        stored = query_ids(targets[0], page=50_000)
        check_exactly_once(stored, acked, sent, "soak query backend")
        # Every tail: nothing twice, nothing acknowledged after it went live missing. The tails
        # take the last batches (each waited for, as for the query backend above).
        # (no failure here: what is still missing after 30 s is counted and judged below).
        due = {
            t: {i for started, ids in books.acked_calls if started > t.live_since + 0.5 for i in ids} for t in tailers
        }
        poll(lambda: all(due[t] <= t.seen for t in tailers), 30, 0.5)
    finally:
        for t in tailers:
            t.cancel()
        for t in tailers:
            t.join(10)
        rss.stop()
    tail_missing = []
    for t in tailers:
        assert t.live_since is not None, "a tail never got a message"
        due = {i for started, ids in books.acked_calls if started > t.live_since + 0.5 for i in ids}
        tail_missing.append(len(due - t.seen))
        assert t.seen <= sent
    ingest_errors = books.errors
    query_errors = [e for q in queriers for e in q.errors]
    tail_errors = [e for t in tailers for e in t.errors]
    duplicates = sum(t.duplicates for t in tailers)
    lat = sorted(x for q in queriers for x in q.latencies)

    # Memory: after warm-up, the last minute's peak within 1.3x of the first minute's peak.
    after = [(t, r) for t, r in rss_samples if t >= WARMUP_S]
    first = [r for t, r in after if t < WARMUP_S + 60]
    last = [r for t, r in after if t >= max(WARMUP_S + 60, after[-1][0] - 60)] if after else []
    mib = 2**20
    numbers = dict(
        duration_s=round(elapsed),
        records_acked=len(acked),
        ingest_records_per_s=round(len(acked) / elapsed),
        ingest_calls=books.calls,
        ingest_errors=len(ingest_errors),
        queries=len(lat),
        query_errors=len(query_errors),
        query_p50_ms=round(statistics.median(lat) * 1000) if lat else None,
        query_p99_ms=round(lat[int(len(lat) * 0.99)] * 1000) if lat else None,
        query_records=sum(q.records for q in queriers),
        tails=TAILS,
        tail_records=sum(len(t.seen) for t in tailers),
        tail_reconnects=sum(t.reconnects for t in tailers),
        tail_errors=len(tail_errors),
        tail_duplicates=duplicates,
        tail_missing=sum(tail_missing),
        drain_after_stop_s=round(drain_s, 1),
        query_backend_lag_records_max=max(lag_samples, default=None),
        query_backend_lag_records_last=lag_samples[-1] if lag_samples else None,
        rss_start_mib=round(rss_samples[0][1] / mib) if rss_samples else None,
        rss_first_min_max_mib=round(max(first) / mib) if first else None,
        rss_last_min_max_mib=round(max(last) / mib) if last else None,
        rss_max_mib=round(max(r for _, r in rss_samples) / mib) if rss_samples else None,
    )
    report(record_property, "soak", **numbers)
    assert not ingest_errors, f"Ingest errors: {ingest_errors[:5]}"
    assert not query_errors, f"Query errors: {query_errors[:5]}"
    assert not tail_errors, f"Tail errors: {tail_errors[:5]}"
    assert duplicates == 0, "a tail received a record twice"
    assert sum(tail_missing) == 0, f"tails missed records acknowledged while they were live: {tail_missing}"
    assert lag_samples and max(lag_samples[-3:]) < 20_000, (
        f"the query backend falls behind a sustainable load: lag samples {lag_samples}"
    )
    assert first and last, "not enough memory samples"
    assert max(last) <= 1.3 * max(first), (
        f"server memory grew: first-minute peak {max(first) / mib:.0f} MiB, last-minute peak {max(last) / mib:.0f} MiB"
    )
    assert sp.stop() == 0, sp.log_tail()
