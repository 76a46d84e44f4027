"""Tail sessions over a real pipeline: replay then live, cursors, heartbeats, overflow, close."""

from __future__ import annotations

import threading
import time

import pytest

from backends.embedded.records import EmbeddedRecordStore
from server.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from server.core.filter import compile_predicate, parse
from server.core.model import FlowRecord
from server.pipeline.tail import TailSession
from tests.unit.test_pipeline import ACCOUNT, BASE_MS, PROJECT, REGION, SECRET, FlakyStore, make_pipeline, make_records
from tests.waiting import DEADLINE_S, finishes, wait_for


@pytest.fixture
def store(tmp_path):
    s = EmbeddedRecordStore(tmp_path / "records.duckdb", checkpoint_interval_s=0)
    yield s
    s.close()


@pytest.fixture
def pipeline(tmp_path, store):
    p = make_pipeline(tmp_path, store)
    yield p
    p.stop(5)


def index(r: FlowRecord) -> int:
    return (r.start_time - BASE_MS) // 1000


def take(session, n_records: int, timeout: float = DEADLINE_S) -> tuple[list[int], str]:
    """Iterate until n_records records arrived; return their indexes and the last cursor."""
    got: list[int] = []
    cursor = [""]

    def pull() -> int:  # one event of the session; how many records arrived so far
        ev = next(session)
        cursor[0] = ev[-1]
        if ev[0] == "records":
            got.extend(index(r) for r in ev[1])
        return len(got)

    if n_records > 0:
        wait_for(
            pull, f"{n_records} records", timeout, 0, until=lambda n: n >= n_records, describe=lambda n: f"{n} records"
        )
    return got, cursor[0]


def test_replay_then_live_has_no_gap_or_duplicate_under_concurrent_ingestion(pipeline):
    total_batches, per = 150, 40
    started = threading.Event()

    replay_under_way = threading.Event()

    def submitter() -> None:
        for i in range(total_batches):
            pipeline.submit(make_records(per, start=i * per))
            if i == 40:
                started.set()
                # The other 109 batches arrive while the replaying tail is under way (a condition,
                # not a pace: the hand-off from replay to live happens with ingestion running).
                assert replay_under_way.wait(DEADLINE_S)

    t = threading.Thread(target=submitter)
    t.start()
    assert started.wait(DEADLINE_S)
    replaying = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=0, heartbeat_s=0.2)
    live = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], heartbeat_s=0.2)
    first, _ = take(replaying, 1)
    replay_under_way.set()
    rest, _ = take(replaying, total_batches * per - len(first))
    everything = first + rest
    finishes(t.join, what="the submitter")
    assert everything == list(range(total_batches * per))
    # The live-only tail started mid-stream: what it got is one gap-free run up to the end.
    got: list[int] = []
    while not got or got[-1] != total_batches * per - 1:
        ev = next(live)
        if ev[0] == "records":
            got.extend(index(r) for r in ev[1])
    assert got == list(range(got[0], total_batches * per))
    replaying.close()
    live.close()
    assert pipeline.hub.subscriber_count == 0


def test_resume_from_a_cursor_continues_exactly_after_it_even_mid_batch(pipeline):
    for i in range(3):
        pipeline.submit(make_records(2500, start=i * 2500))  # events of 1000, 1000, 500 per batch
    first = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=0, heartbeat_s=0.2)
    got, cursor = take(first, 4500)  # ends inside the second batch
    first.close()
    assert got == list(range(4500))
    second = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], cursor=cursor, heartbeat_s=0.2)
    rest, _ = take(second, 3000)
    assert rest == list(range(4500, 7500))
    pipeline.submit(make_records(10, start=7500))
    live, _ = take(second, 10)
    assert live == list(range(7500, 7510))
    second.close()


def test_filter_and_resume_with_a_filter(pipeline):
    pred = compile_predicate(parse("dst_port = 22 AND action = REJECT"))
    pipeline.submit(make_records(1200))
    expected = [index(r) for r in make_records(1200) if pred(r)]
    assert len(expected) == 100
    # Events of at most 30 records: the cursor after the second event points inside the batch.
    s = TailSession(
        pipeline.spool,
        pipeline.hub,
        pipeline._codec,
        ACCOUNT,
        REGION,
        PROJECT,
        ["web"],
        pred,
        start_ms=0,
        heartbeat_s=0.2,
        max_event_records=30,
    )
    head, cursor = take(s, 60)
    assert head == expected[:60]
    s.close()
    s2 = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], pred, cursor=cursor, heartbeat_s=0.2)
    rest, _ = take(s2, 40)
    assert rest == expected[60:]
    s2.close()


def test_only_the_requested_log_stores_of_the_account(pipeline):
    s = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web", "db"], heartbeat_s=0.2)
    next(s)  # a heartbeat: now live
    pipeline.submit(
        make_records(5, log_store="other")
        + make_records(3, start=100, log_store="db")
        + make_records(4, start=200, account="acct-2")
    )
    got, _ = take(s, 3)
    assert got == [100, 101, 102]
    s.close()


def test_heartbeat_when_idle_and_its_cursor_resumes_exactly(pipeline):
    s = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], heartbeat_s=0.1)
    ev = next(s)
    assert ev[0] == "heartbeat"
    pipeline.submit(make_records(3, log_store="db"))  # other LogStores move the position on
    ev = next(s)
    assert ev.kind == "heartbeat" and ev.records == []
    cursor = ev.cursor
    s.close()
    pipeline.submit(make_records(7, start=50))
    resumed = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], cursor=cursor, heartbeat_s=0.1)
    got, _ = take(resumed, 7)
    assert got == list(range(50, 57))
    resumed.close()


def test_bad_cursors_are_invalid_argument(pipeline):
    pipeline.submit(make_records(3))
    s = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=0, heartbeat_s=0.2)
    _, cursor = take(s, 3)
    s.close()
    tampered = cursor[:-3] + ("AAA" if cursor[-3:] != "AAA" else "BBB")
    for kwargs in ({"cursor": tampered}, {"cursor": "garbage"}):
        with pytest.raises(InvalidArgument) as e:
            pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], **kwargs)
        assert e.value.violations[0].field == "resume_cursor"
    with pytest.raises(InvalidArgument):
        pipeline.tail("acct-2", REGION, PROJECT, ["web"], cursor=cursor)
    with pytest.raises(InvalidArgument):
        pipeline.tail(ACCOUNT, REGION, PROJECT, ["web", "db"], cursor=cursor)
    with pytest.raises(InvalidArgument):
        pipeline.tail(ACCOUNT, REGION, "other-project", ["web"], cursor=cursor)
    # Same LogStores in another order is the same scope.
    pipeline.tail(ACCOUNT, REGION, PROJECT, ["web", "web"], cursor=cursor).close()


def test_cursor_of_another_spool_is_failed_precondition(tmp_path, pipeline, store):
    pipeline.submit(make_records(3))
    s = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=0, heartbeat_s=0.2)
    _, cursor = take(s, 3)
    s.close()
    from server.pipeline import Pipeline

    other = Pipeline(tmp_path / "other", store, None, cursor_secret=SECRET)
    other.start()
    try:
        with pytest.raises(FailedPrecondition):
            other.tail(ACCOUNT, REGION, PROJECT, ["web"], cursor=cursor)
    finally:
        other.stop(2)


def test_expired_cursor_and_start_time_are_failed_precondition(tmp_path, store):
    p = make_pipeline(tmp_path, store, tail_retention_s=0)
    try:
        seq = p.submit(make_records(5))
        s = TailSession(p.spool, p.hub, p._codec, ACCOUNT, REGION, PROJECT, ["web"], start_ms=0, max_event_records=2)
        _, cursor = take(s, 2)  # points inside batch 1
        s.close()
        assert p.wait_delivered(seq, 10)
        p.spool.trim()
        assert p.spool.trimmed_through == seq
        with pytest.raises(FailedPrecondition) as e:
            p.tail(ACCOUNT, REGION, PROJECT, ["web"], cursor=cursor)
        assert "use Query" in e.value.message
        with pytest.raises(FailedPrecondition):
            p.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=0)
        # A cursor after everything trimmed is still good.
        s = p.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=int(time.time() * 1000) + 10, heartbeat_s=0.05)
        assert next(s)[0] == "heartbeat"
        s.close()
    finally:
        p.stop(5)


def test_start_time_replays_only_records_stored_since(pipeline):
    pipeline.submit(make_records(5))
    stored = int(time.time() * 1000)
    since = wait_for(lambda: (now := int(time.time() * 1000)) > stored and now, "the clock to pass the first submit")
    pipeline.submit(make_records(5, start=10))
    s = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=since, heartbeat_s=0.2)
    got, _ = take(s, 5)
    assert got == list(range(10, 15))
    s.close()


def test_a_client_that_falls_behind_gets_resource_exhausted_with_a_cursor(tmp_path, store):
    p = make_pipeline(tmp_path, store, tail_buffer_records=2000)
    try:
        p.submit(make_records(100))
        s = p.tail(ACCOUNT, REGION, PROJECT, ["web"], start_ms=0, heartbeat_s=0.05)
        got, _ = take(s, 100)
        assert next(s)[0] == "heartbeat"  # live now; stop reading for a while
        for i in range(1, 6):
            p.submit(make_records(1000, start=i * 1000))
        with pytest.raises(ResourceExhausted) as e:
            while True:
                next(s)
        assert "reconnect with resume_cursor=" in e.value.message
        assert p.hub.subscriber_count == 0
        again = p.tail(ACCOUNT, REGION, PROJECT, ["web"], cursor=e.value.cursor, heartbeat_s=0.2)
        rest, _ = take(again, 5000)
        assert rest == list(range(1000, 6000))
        again.close()
    finally:
        p.stop(5)


def test_close_from_another_thread_ends_a_blocked_session_and_frees_the_hub(pipeline):
    s = pipeline.tail(ACCOUNT, REGION, PROJECT, ["web"], heartbeat_s=30)
    result: list[object] = []

    def consume() -> None:
        result.extend(list(s))

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: pipeline.hub.subscriber_count == 1, "the tail subscribed to the hub")
    s.close()
    t.join(2)
    assert not t.is_alive() and result == []
    assert pipeline.hub.subscriber_count == 0


def test_server_stop_ends_tails_with_unavailable_and_a_cursor(tmp_path, store):
    p = make_pipeline(tmp_path, store)
    s = p.tail(ACCOUNT, REGION, PROJECT, ["web"], heartbeat_s=0.05)
    next(s)
    p.stop(5)
    with pytest.raises(Unavailable) as e:
        while True:
            next(s)
    assert "resume_cursor=" in e.value.message


def test_tail_is_independent_of_a_failing_query_backend(tmp_path, store):
    flaky = FlakyStore(store)
    flaky.down.set()
    p = make_pipeline(tmp_path, flaky)
    try:
        s = p.tail(ACCOUNT, REGION, PROJECT, ["web"], heartbeat_s=0.05)
        next(s)
        p.submit(make_records(20))
        got, _ = take(s, 20)
        assert got == list(range(20))
        s.close()
    finally:
        flaky.down.clear()
        p.stop(5)
