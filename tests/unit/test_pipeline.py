"""The record pipeline with real parts: the SQLite spool, the embedded DuckDB query store and
the archive on a local folder. Failures are injected by wrapping the real store (our own port),
crashes by SIGKILLing a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from backends.embedded.objects import LocalObjectStore
from backends.embedded.records import EmbeddedRecordStore
from server.archive import Archive
from server.core.errors import ResourceExhausted, Unavailable
from server.core.model import Action, Direction, FlowRecord, LogStatus, LogStoreKey
from server.core.ports import RecordQuery
from server.core.records import with_id
from server.pipeline import Pipeline
from server.pipeline.fanout import ArchiveSinkWorker, DropFence
from server.pipeline.hub import Hub, SubscriptionOverflow
from server.pipeline.spool import MAX_BATCH_RECORDS, BatchKey, Spool, decode, encode, group_by_log_store
from tests.waiting import DEADLINE_S, finishes, wait_for

REPO = Path(__file__).resolve().parents[2]
ACCOUNT, REGION, PROJECT = "acct-1", "ap-guangzhou", "proj"
SECRET = b"s" * 32
BASE_MS = 1_700_000_000_000
FOREVER = 2**62


def make_records(n: int, start: int = 0, log_store: str = "web", account: str = ACCOUNT) -> list[FlowRecord]:
    """n distinct records; record i has start_time BASE_MS + i*1000 (so a distinct record_id)."""
    out = []
    for i in range(start, start + n):
        r = FlowRecord(
            "",
            0,
            account,
            "fl-abcdefgh",
            REGION,
            PROJECT,
            log_store,
            1,
            "eip-1",
            "vpc-1",
            f"10.0.{i % 250}.{i % 200 + 1}",
            "203.0.113.7",
            1024 + i % 60000,
            (22, 80, 443)[i % 3],
            6,
            1 + i % 50,
            100 + i,
            BASE_MS + i * 1000,
            BASE_MS + i * 1000 + 60_000,
            Action.ACCEPT if i % 4 else Action.REJECT,
            LogStatus.OK,
            Direction.INGRESS,
            2,
        )
        out.append(with_id(r))
    return out


def count_query(store: EmbeddedRecordStore, log_store: str = "web", account: str = ACCOUNT) -> int:
    return store.count(RecordQuery(account, REGION, PROJECT, (log_store,), 0, FOREVER))


def count_archive(archive: Archive, log_store: str = "web", account: str = ACCOUNT) -> int:
    return archive.count(account, LogStoreKey(REGION, PROJECT, log_store), 0, FOREVER)


class FlakyStore:
    """The real query store, failing on purpose while `down` is set (or for the first
    `fail_first` calls): our own port wrapped, not an imitation of a backend."""

    def __init__(self, store: EmbeddedRecordStore, fail_first: int = 0) -> None:
        self.store = store
        self.name = store.name
        self.down = threading.Event()
        self.fail_first = fail_first
        self.calls = 0

    def _attempt(self) -> None:
        self.calls += 1
        if self.down.is_set() or self.calls <= self.fail_first:
            raise ConnectionError("backend down (injected)")

    def write(self, records):
        self._attempt()
        self.store.write(records)

    def write_table(self, table):  # what the pipeline calls: the store takes tables
        self._attempt()
        self.store.write_table(table)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
def store(tmp_path):
    s = EmbeddedRecordStore(tmp_path / "records.duckdb", checkpoint_interval_s=0)
    yield s
    s.close()


@pytest.fixture
def archive(tmp_path):
    return Archive(LocalObjectStore(tmp_path / "archive"))


def make_pipeline(tmp_path, store, archive=None, **kw) -> Pipeline:
    kw.setdefault("backoff_min_s", 0.02)
    kw.setdefault("backoff_max_s", 0.1)
    kw.setdefault("archive_max_age_s", 0.2)
    p = Pipeline(tmp_path / "data", store, archive, cursor_secret=SECRET, **kw)
    p.start()
    return p


# -- encoding -------------------------------------------------------------------------------------


def test_payload_roundtrip_keeps_every_field_and_type():
    recs = make_records(50)
    key = BatchKey(ACCOUNT, REGION, PROJECT, "web")
    back = decode(encode(recs), key)
    assert back == recs
    assert all(type(r) is FlowRecord for r in back)
    # IntEnum values (what the generator builds) take the slower path and come back as ints.
    assert isinstance(recs[0].action, Action)
    assert type(back[0].action) is int


def test_spooled_batches_carry_their_arrow_table(tmp_path):
    """With tables=True each appended batch carries the same records as an Arrow table (what the
    sinks write), made from the spool's own columns; batches read back from the file have none
    and the sinks convert their records instead."""
    from server.core.columns import SCHEMA, records_of, table_of
    from server.pipeline.fanout import batch_table

    recs = make_records(30, log_store="a") + make_records(20, start=30, log_store="b")
    spool = Spool(tmp_path / "spool.db", tables=True)
    try:
        batches = spool.append_batches(recs)
        assert [b.key.log_store for b in batches] == ["a", "b"]
        for b in batches:
            assert b.table.schema == SCHEMA and records_of(b.table) == list(b.records)
            assert b.table.equals(table_of(b.records))
        back = spool.read_after(0, None)
        assert records_of(batch_table(back)) == recs
    finally:
        spool.close()
    reopened = Spool(tmp_path / "spool.db", tables=True)
    try:
        cold = reopened.read_after(0, None)
        assert [b.table for b in cold] == [None, None]
        whole = batch_table(cold)
        assert whole.schema == SCHEMA and records_of(whole) == recs
        # ... decoded straight from the payload's columns: no FlowRecord was made for them
        assert [b.records._rows for b in cold] == [None, None] and [len(b.records) for b in cold] == [30, 20]
        assert list(cold[0].records) == recs[:30] and cold[1].records == recs[30:]
    finally:
        reopened.close()


def test_a_prepared_batch_is_spooled_as_given_and_reads_back_the_same(tmp_path):
    """append(records, prepared): the caller's marshalled columns and table (the Ingest fast
    path) are spooled as one batch; the file holds what encode() would have written. Records of
    more than one batch's worth take the ordinary path."""
    import marshal

    from server.core.columns import table_of
    from server.core.model import record_columns
    from server.pipeline.spool import _ENUM_IDX, _VALUE_IDX

    recs = make_records(40, log_store="a")
    cols = record_columns(recs)
    for i in _ENUM_IDX:  # what the fast path writes: plain ints
        cols[i] = list(map(int, cols[i]))
    raw = marshal.dumps(tuple(cols[i] for i in _VALUE_IDX), 2)
    table = table_of(recs)
    spool = Spool(tmp_path / "spool.db", tables=True)
    try:
        [b] = spool.append_batches(recs, (raw, table))
        assert b.table is table and list(b.records) == recs and b.nbytes == len(encode(recs))
        big = make_records(MAX_BATCH_RECORDS + 1, start=100, log_store="a")
        assert len(spool.append_batches(big, (b"unused", None))) == 2
    finally:
        spool.close()
    reopened = Spool(tmp_path / "spool.db")
    try:
        back = reopened.read_after(0, None)
        assert list(back[0].records) == recs and [len(x.records) for x in back] == [40, MAX_BATCH_RECORDS, 1]
    finally:
        reopened.close()


def test_grouping_splits_by_log_store_and_size():
    recs = make_records(3, log_store="a") + make_records(2, log_store="b") + make_records(1, start=10, log_store="a")
    groups = group_by_log_store(recs)
    assert [(k.log_store, len(rs)) for k, rs in groups] == [("a", 4), ("b", 2)]
    big = group_by_log_store(make_records(MAX_BATCH_RECORDS + 5))
    assert [len(rs) for _, rs in big] == [MAX_BATCH_RECORDS, 5]


# -- spool ------------------------------------------------------------------------------------------


def test_concurrent_appends_share_commits_and_keep_every_record(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    spool.register_sinks(["q"])
    seqs: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(20):
            s = spool.append(make_records(100, start=(k * 20 + i) * 100))
            with lock:
                seqs.append(s)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 161))
    batches = spool.read_after(0, None)
    assert [b.seq for b in batches] == list(range(1, 161))
    starts = sorted(r.start_time for b in batches for r in b.records)
    assert starts == [BASE_MS + i * 1000 for i in range(16_000)]
    assert spool.backlog("q") == (16_000, sum(b.nbytes for b in batches))
    spool.close()


def test_reads_from_memory_and_from_the_file_agree(tmp_path):
    spool = Spool(tmp_path / "spool.db", memory_records=2500)  # keeps only the last ~2 batches
    spool.register_sinks(["q"])
    for i in range(6):
        spool.append(make_records(1000, start=i * 1000))
    from_both = spool.read_after(0, None)
    assert spool._recent_lo > 1 and len(spool._recent) >= 2
    spool.close()
    reopened = Spool(tmp_path / "spool.db")  # nothing in memory: all from the file
    from_file = reopened.read_after(0, None)
    assert [(b.seq, list(b.records)) for b in from_both] == [(b.seq, list(b.records)) for b in from_file]
    assert [b.seq for b in reopened.read_after(2, 2500)] == [3, 4, 5]  # whole batches, about max_records
    reopened.close()


def test_one_process_per_spool(tmp_path):
    spool = Spool(tmp_path / "spool.db")
    with pytest.raises(RuntimeError, match="in use by another process"):
        Spool(tmp_path / "spool.db")
    spool.close()
    Spool(tmp_path / "spool.db").close()


CHILD_SPOOL = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.unit.test_pipeline import make_records
from server.pipeline.spool import Spool
spool = Spool({path!r})
spool.register_sinks(["q"])
for i in range(20):
    seq = spool.append(make_records(500, start=i * 500))
    print("acked", seq, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_spool_survives_sigkill(tmp_path):
    path = tmp_path / "spool.db"
    out = subprocess.run(
        [sys.executable, "-c", CHILD_SPOOL.format(repo=str(REPO), path=str(path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    acked = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("acked")]
    assert acked == list(range(1, 21))
    spool = Spool(path)
    assert spool.head_seq == 20
    assert spool.sink_offset("q").seq == 0
    recs = [r for b in spool.read_after(0, None) for r in b.records]
    assert recs == make_records(10_000)
    assert spool.append(make_records(1, start=99_999)) == 21  # seq numbering continues
    spool.close()


CHILD_PIPELINE = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from tests.unit.test_pipeline import make_records, SECRET
from backends.embedded.records import EmbeddedRecordStore
from backends.embedded.objects import LocalObjectStore
from server.archive import Archive
from server.pipeline import Pipeline
from pathlib import Path
d = Path({dir!r})
p = Pipeline(d / "data", EmbeddedRecordStore(d / "records.duckdb"), Archive(LocalObjectStore(d / "archive")),
             cursor_secret=SECRET, archive_max_records=3000, archive_max_age_s=0.05)
p.start()
for i in range(30):
    seq = p.submit(make_records(1000, start=i * 1000))
    print("acked", seq, flush=True)
    if i == 10:
        p.wait_delivered(seq, 10)  # some delivered, the rest in flight or queued at the kill
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_pipeline_resumes_after_sigkill_and_delivers_exactly_once(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", CHILD_PIPELINE.format(repo=str(REPO), dir=str(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert len([ln for ln in out.stdout.splitlines() if ln.startswith("acked")]) == 30
    store = EmbeddedRecordStore(tmp_path / "records.duckdb", checkpoint_interval_s=0)
    archive = Archive(LocalObjectStore(tmp_path / "archive"))
    p = make_pipeline(tmp_path, store, archive, archive_max_records=3000)
    try:
        offsets = p.spool.sink_offsets()
        assert offsets["query"].seq >= 11  # resumed from the durable offsets, not from zero
        assert p.wait_delivered(30, 30)
        assert count_query(store) == 30_000
        assert count_archive(archive) == 30_000
        got = sorted(
            r.start_time
            for batch in archive.read(ACCOUNT, LogStoreKey(REGION, PROJECT, "web"), 0, FOREVER)
            for r in batch
        )
        assert got == [BASE_MS + i * 1000 for i in range(30_000)]
    finally:
        p.stop(5)
        store.close()


# -- fan-out ----------------------------------------------------------------------------------------


def test_failing_query_sink_does_not_stop_archive_then_catches_up_exactly_once(tmp_path, store, archive):
    flaky = FlakyStore(store)
    flaky.down.set()
    p = make_pipeline(tmp_path, flaky, archive)
    try:
        seq = 0
        for i in range(5):
            seq = p.submit(make_records(1000, start=i * 1000))
        assert p.wait_delivered(seq, 10, sinks=["archive"])
        assert count_archive(archive) == 5000
        wait_for(lambda: not p.health()["query"][0], "the query sink reported unhealthy")
        ok, detail = p.health()["query"]
        assert "backend down (injected)" in detail and "5000 records" in detail
        assert p.health()["archive"][0]
        assert count_query(store) == 0
        calls = flaky.calls
        wait_for(lambda: flaky.calls > calls + 2, "three more write attempts")  # it keeps retrying
        flaky.down.clear()
        assert p.wait_delivered(seq, 10)
        assert count_query(store) == 5000
        assert p.health()["query"] == (True, "0 records (0 batches) waiting")
    finally:
        p.stop(5)


def test_archive_rewrites_a_pending_range_after_a_crash(tmp_path, archive):
    spool = Spool(tmp_path / "spool.db")
    spool.register_sinks(["archive"])
    recs = make_records(3000)
    for i in range(3):
        spool.append(recs[i * 1000 : (i + 1) * 1000])
    # The crashed process: noted the range (0, 3] as pending and wrote part of it.
    spool.set_pending("archive", 3)
    worker = ArchiveSinkWorker("archive", spool, archive, DropFence(), max_records=10_000, max_age_s=3600)
    batch_id = worker.batch_id(0, 3)
    assert batch_id == f"{spool.spool_id}-000000000001-000000000003"
    first_keys = archive.write_batch(batch_id, recs[:1500])
    spool.close()

    spool = Spool(tmp_path / "spool.db")
    assert spool.sink_offset("archive").pending_to == 3
    worker = ArchiveSinkWorker("archive", spool, archive, DropFence(), max_records=10_000, max_age_s=3600)
    worker.start()
    assert spool.wait_offsets(3, ["archive"], 10)  # redone although neither max_records nor max_age is due
    assert spool.sink_offset("archive").pending_to is None
    assert count_archive(archive) == 3000
    keys = {info.key for info in archive.store.list("")}
    assert set(first_keys) <= keys and all(batch_id in k for k in keys if k.endswith(".parquet"))
    worker.stop(5)
    spool.close()


def test_spool_bound_refuses_ingestion_and_never_drops(tmp_path, store):
    flaky = FlakyStore(store)
    flaky.down.set()
    p = make_pipeline(tmp_path, flaky, max_spool_bytes=150_000)  # a few 1,000-record batches (~40 KB each)
    try:
        acked = 0
        with pytest.raises(ResourceExhausted) as err:
            for i in range(100):
                p.submit(make_records(1000, start=i * 1000))
                acked += 1000
        assert "'query' backend" in err.value.message and "backend down (injected)" in err.value.message
        assert 1000 <= acked < 10_000
        assert p.spool.backlog("query")[1] <= 150_000
        flaky.down.clear()
        assert p.wait_delivered(p.spool.head_seq, 10)
        seq = p.submit(make_records(1000, start=500_000))  # accepted again once caught up
        assert p.wait_delivered(seq, 10)
        assert count_query(store) == acked + 1000
    finally:
        p.stop(5)


class SlowStore(FlakyStore):
    """The real query store, healthy but holding each write until `gate` is open: a backend
    slower than ingestion."""

    def __init__(self, store: EmbeddedRecordStore) -> None:
        super().__init__(store)
        self.gate = threading.Event()

    def _attempt(self) -> None:
        super()._attempt()
        self.gate.wait(30)


def test_a_healthy_sink_past_the_memory_window_holds_submits_back_for_a_bounded_time(tmp_path, store, caplog):
    caplog.set_level("INFO", logger="server.pipeline")
    slow = SlowStore(store)
    p = make_pipeline(tmp_path, slow, coalesce_records=1000, pace_max_s=0.4)
    try:
        limit = p._pace_records
        assert limit == 50_000 - 1000  # the spool keeps 50,000 records in memory; minus one sink write
        n = 0
        while p.spool.backlog("query")[0] <= limit:  # the sink holds its first write: nothing stored
            p.submit(make_records(1000, start=n))
            n += 1000
        assert p.health()["query"][0]
        p.submit(make_records(1000, start=n))  # held, then taken: durable, never refused
        n += 1000
        assert p.paced_calls == 1 and p.paced_seconds >= 0.35  # held about pace_max_s, by its own count
        paced = [r for r in caplog.records if r.getMessage().startswith("ingestion paced")]
        assert len(paced) == 1 and paced[0].sinks["query"] > limit
        done = threading.Event()

        def one_more() -> None:
            p.submit(make_records(1000, start=n))
            done.set()

        p.pace_max_s = 30.0
        threading.Thread(target=one_more, daemon=True).start()
        # Held while the sink stays behind: a bounded look for a wrong early release (a slow
        # machine can only make it pass without seeing one, never fail a correct pipeline).
        assert not done.wait(0.3)
        slow.gate.set()
        assert done.wait(DEADLINE_S)  # ...and let go once it has caught up (pace_max_s is 30 s: not timed out)
        assert p.wait_delivered(p.spool.head_seq, 20)
        assert count_query(store) == n + 1000
        assert p.paced_calls == 2
        assert len([r for r in caplog.records if r.getMessage().startswith("ingestion paced")]) == 1  # once a minute
    finally:
        slow.gate.set()
        p.stop(10)


def test_a_failing_sink_does_not_hold_submits_back(tmp_path, store):
    flaky = FlakyStore(store)
    flaky.down.set()
    p = make_pipeline(tmp_path, flaky, coalesce_records=1000, pace_max_s=5.0)
    try:
        p.submit(make_records(1000))
        wait_for(lambda: not p.health()["query"][0], "the query sink reported unhealthy")
        for i in range(1, 60):
            p.submit(make_records(1000, start=i * 1000))
        assert p.paced_calls == 0  # no submit was held for the failing sink
        assert p.spool.backlog("query")[0] == 60_000  # past the window (49,000)
        flaky.down.clear()
        assert p.wait_delivered(p.spool.head_seq, 20)
        assert count_query(store) == 60_000
    finally:
        p.stop(10)


def test_stop_drains_every_sink_including_a_not_yet_due_archive_object(tmp_path, store, archive):
    p = make_pipeline(tmp_path, store, archive, archive_max_records=1_000_000, archive_max_age_s=3600)
    for i in range(4):
        p.submit(make_records(1000, start=i * 1000))
    assert p.wait_delivered(p.spool.head_seq, 30, sinks=["query"])
    assert count_archive(archive) == 0  # not due yet (the query sink has them all)
    assert p.stop(10) is True
    assert count_query(store) == 4000
    assert count_archive(archive) == 4000
    with pytest.raises(Unavailable):
        p.submit(make_records(1))


def test_stop_with_a_dead_sink_is_bounded_and_keeps_the_records(tmp_path, store):
    flaky = FlakyStore(store)
    flaky.down.set()
    p = make_pipeline(tmp_path, flaky)
    p.submit(make_records(1000))
    assert finishes(p.stop, 0.5, what="stop(0.5) with a dead sink") is False
    p2 = make_pipeline(tmp_path, store)  # next start delivers them
    try:
        assert p2.wait_delivered(1, 10)
        assert count_query(store) == 1000
    finally:
        p2.stop(5)


def test_drop_log_store_keeps_its_spooled_records_out_of_the_sinks(tmp_path, store, archive):
    flaky = FlakyStore(store)
    flaky.down.set()
    p = make_pipeline(tmp_path, flaky, archive, archive_max_age_s=3600)
    try:
        p.submit(make_records(500, log_store="gone") + make_records(300, start=1000, log_store="kept"))
        wait_for(lambda: flaky.calls >= 1, "a first write attempt to the query sink")
        p.drop_log_store(ACCOUNT, LogStoreKey(REGION, PROJECT, "gone"))
        batches = p.spool.read_after(0, None)
        assert {(b.key.log_store, b.skipped, len(b.records)) for b in batches} == {
            ("gone", True, 0),
            ("kept", False, 300),
        }
        seq = p.submit(make_records(200, start=5000, log_store="gone"))  # re-created later: kept
        flaky.down.clear()
        assert p.stop(10)
        assert count_query(store, "gone") == 200
        assert count_query(store, "kept") == 300
        assert count_archive(archive, "gone") == 200
        assert seq == 3
    finally:
        if p.spool is not None and p.workers["query"].alive:
            p.stop(1)


def test_trim_keeps_undelivered_and_recent_batches(tmp_path, store):
    flaky = FlakyStore(store)
    flaky.down.set()
    p = make_pipeline(tmp_path, flaky, tail_retention_s=0)
    try:
        seq = p.submit(make_records(100))
        assert p.spool.trim() == 0  # the query sink does not have it yet
        flaky.down.clear()
        assert p.wait_delivered(seq, 10)
        assert p.spool.trim() == 1
        assert p.spool.trimmed_through == seq and p.spool.read_after(0, None) == []
        assert p.submit(make_records(1, start=7)) == seq + 1
    finally:
        p.stop(5)


def test_trim_bounds_delivered_bytes_kept_for_tail(tmp_path, store):
    p = make_pipeline(tmp_path, store, tail_retention_s=3600, tail_retention_bytes=60_000)
    try:
        for i in range(6):
            seq = p.submit(make_records(1000, start=i * 1000))
        assert p.wait_delivered(seq, 10)
        p.spool.trim()
        assert 0 < p.spool.total_bytes <= 60_000
        assert p.spool.trimmed_through >= 4
    finally:
        p.stop(5)


# -- hub --------------------------------------------------------------------------------------------


def _batch(seq: int, log_store: str, n: int):
    from server.pipeline.spool import SpoolBatch

    return SpoolBatch(seq, 0, BatchKey(ACCOUNT, REGION, PROJECT, log_store), make_records(n, log_store=log_store), n)


def test_hub_routes_by_log_store_and_frees_on_close():
    hub = Hub()
    sub = hub.subscribe(ACCOUNT, REGION, PROJECT, ["web", "db"])
    other_account = hub.subscribe("acct-2", REGION, PROJECT, ["web"])
    assert hub.subscriber_count == 2
    hub.publish([_batch(1, "web", 2), _batch(2, "other", 3), _batch(3, "db", 1)])
    assert [sub.get(0).seq, sub.get(0).seq, sub.get(0)] == [1, 3, None]
    assert other_account.get(0) is None
    assert hub.last_seq == 3 and sub.idle_through() == 3
    sub.close()
    other_account.close()
    assert hub.subscriber_count == 0 and hub._routes == {}
    hub.publish([_batch(4, "web", 1)])  # nobody left: nothing queued anywhere


def test_hub_overflow_disconnects_only_the_slow_subscriber_and_never_blocks():
    hub = Hub()
    slow = hub.subscribe(ACCOUNT, REGION, PROJECT, ["web"], max_records=25)
    fast = hub.subscribe(ACCOUNT, REGION, PROJECT, ["web"], max_records=1000)
    for seq in range(1, 6):
        finishes(hub.publish, [_batch(seq, "web", 10)], what="publish beside a full subscriber")
        assert fast.get(0).seq == seq
    with pytest.raises(SubscriptionOverflow):
        slow.get(0)
    assert hub.subscriber_count == 1
    fast.close()


def test_hub_wakes_a_blocked_consumer():
    hub = Hub()
    sub = hub.subscribe(ACCOUNT, REGION, PROJECT, ["web"])
    got = []
    t = threading.Thread(target=lambda: got.append(sub.get(DEADLINE_S)))
    t.start()
    # Publish only once the consumer waits on its subscription's condition (the stdlib Condition
    # lists its waiters): what is tested is the wake-up, not a get() that finds a batch queued.
    wait_for(lambda: sub._cond._waiters, "the consumer blocked in get()")  # type: ignore[attr-defined]
    hub.publish([_batch(9, "web", 1)])
    finishes(t.join, what="the woken consumer")
    assert got and got[0].seq == 9
    sub.close()
