"""Concurrency bounds per account and in total (issue 15): Query and Tail streams and Ingest
bytes in flight, each answered with RESOURCE_EXHAUSTED naming its setting; a Query whose client
stops reading is ended after limits.stream_send_timeout_seconds and gives its slot back.

A slot is given back only after the stream's reader has stopped and closed the backend's cursor
(server.api.services: the Query's finally waits for the read-ahead to close before it releases
the slot), so "a new Query gets the slot" is the observable form of "the reader thread and the
read transaction were released"."""

from __future__ import annotations

import threading

import grpc
import pytest

from flowlog.v1 import ingest_pb2, query_pb2
from tests.reliability.conftest import (
    KEY_A,
    KEY_B,
    Stubs,
    batch,
    create_target,
    query_ids,
    report,
    settings,
    start_server,
)
from tests.waiting import wait_for

SEND_TIMEOUT_S = 2.0
RECORDS = 60_000  # ~6.6 MB per Query: more than a connection buffers (~4 MB) before sends block


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    sp = start_server(
        tmp_path_factory.mktemp("streams"),
        settings(
            limits={
                "max_query_streams_per_account": 2,
                "max_query_streams": 3,
                "max_tail_streams_per_account": 2,
                "max_tail_streams": 3,
                "tail_heartbeat_seconds": 0.5,
                "stream_send_timeout_seconds": SEND_TIMEOUT_S,
                "max_ingest_inflight_bytes_per_account": 3 * 2 * 1024 * 1024,
                "max_ingest_inflight_bytes": 64 * 1024 * 1024,
            }
        ),
    )
    yield sp
    assert sp.stop() == 0, sp.log_tail()


@pytest.fixture(scope="module")
def loaded(srv):
    """Accounts A and B, each with a LogStore of RECORDS records."""
    a, b = Stubs(srv.address, KEY_A), Stubs(srv.address, KEY_B)
    ta, tb = create_target(a, "big"), create_target(b, "big")
    for stubs, target in ((a, ta), (b, tb)):
        msgs = [batch(target.flow_log_id, 5000)[0] for _ in range(RECORDS // 5000)]
        assert stubs.ingest.Ingest(iter(msgs), metadata=stubs.md, timeout=120).accepted == RECORDS
        wait_for(lambda: len(query_ids(target, page=RECORDS)) == RECORDS, "the records to be searchable", 120, 0.2)
    yield a, b, ta, tb
    a.close()
    b.close()


def query_request(target, limit: int = RECORDS) -> query_pb2.QueryRequest:
    req = query_pb2.QueryRequest(region="bj", project=target.project, log_stores=[target.log_store], limit=limit)
    req.start_time.FromMilliseconds(0)
    req.end_time.FromMilliseconds(4_000_000_000_000)
    return req


class Stalled:
    """A Query whose client reads its first message and then nothing: its own connection with a
    fixed 64 KiB receive window, so the server's sends block once that is full."""

    def __init__(self, address: str, key: str, target) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
        from flowlog.v1 import query_pb2_grpc

        self.call = query_pb2_grpc.QueryServiceStub(self.channel).Query(
            query_request(target), metadata=(("authorization", f"Bearer {key}"),), timeout=120
        )
        self.it = iter(self.call)
        self.first = next(self.it)

    def drain(self) -> grpc.RpcError | None:
        """Read the rest: what the server sent before it ended the stream, then its status."""
        try:
            for _ in self.it:
                pass
            return None
        except grpc.RpcError as e:
            return e

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def refused(fn) -> grpc.RpcError:
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
        return e
    raise AssertionError("expected RESOURCE_EXHAUSTED")


def test_query_streams_bounded_per_account_and_in_total_and_stalled_ones_time_out(srv, loaded, record_property):
    a, b, ta, tb = loaded
    stalled = [Stalled(srv.address, KEY_A, ta) for _ in range(2)]
    try:
        assert all(s.first.HasField("batch") for s in stalled)
        e = refused(lambda: list(a.query.Query(query_request(ta), metadata=a.md, timeout=30)))
        assert "limits.max_query_streams_per_account" in e.details(), e.details()
        # Another account still gets the one slot left in total, then the total is full.
        stalled.append(Stalled(srv.address, KEY_B, tb))
        e = refused(lambda: list(b.query.Query(query_request(tb), metadata=b.md, timeout=30)))
        assert "(limits.max_query_streams)" in e.details(), e.details()

        # The stalled Queries are ended by the server (their clients still read nothing), and
        # their slots (threads, cursors) come back: all three slots can be taken again ...
        def all_slots_back():
            fresh = []
            try:
                for key, target in ((KEY_A, ta), (KEY_A, ta), (KEY_B, tb)):
                    fresh.append(Stalled(srv.address, key, target))
                return True
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
                return False
            finally:
                for f in fresh:
                    f.close()

        wait_for(all_slots_back, "the stalled Queries' slots to come back", 60, 0.5)

        def a_queries():  # once the probes' own slots are back (they were cancelled)
            try:
                return len(query_ids(ta, page=RECORDS)) == RECORDS
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
                return False

        wait_for(a_queries, "A's Query to run to its end", 30, 0.3)
        # ... and what the stalled clients read in the end is the reason.
        ends = [s.drain() for s in stalled]
        for end in ends:
            assert end is not None and end.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ends
            assert "limits.stream_send_timeout_seconds" in end.details(), end.details()
        report(record_property, "query_stream_limits", stalled_ended=len(ends))
    finally:
        for s in stalled:
            s.close()


def test_tail_streams_bounded_per_account_and_in_total(srv, loaded):
    a, b, ta, tb = loaded

    def tail(stubs, target):
        call = stubs.query.Tail(
            query_pb2.TailRequest(region="bj", project=target.project, log_stores=[target.log_store]),
            metadata=stubs.md,
            timeout=60,
        )
        it = iter(call)
        next(it)
        return call

    calls = [tail(a, ta), tail(a, ta)]
    try:
        e = refused(lambda: tail(a, ta))
        assert "limits.max_tail_streams_per_account" in e.details()
        calls.append(tail(b, tb))
        e = refused(lambda: tail(b, tb))
        assert "limits.max_tail_streams" in e.details() and "per account" not in e.details(), e.details()
        calls.pop().cancel()

        def b_again():
            try:
                calls.append(tail(b, tb))
                return True
            except grpc.RpcError:
                return False

        wait_for(b_again, "a cancelled Tail's slot to come back", 10, 0.3)
    finally:
        for c in calls:
            c.cancel()


def test_ingest_bytes_in_flight_bounded_per_account(srv, loaded):
    """Each open Ingest stream holds limits.max_message_bytes (2 MiB) of the account's budget
    (6 MiB here): a fourth concurrent stream of the account is refused naming the setting, and
    another account's stream is not."""
    a, b, ta, tb = loaded
    release = threading.Event()
    opened = threading.Semaphore(0)

    def slow_messages():
        m, _ = batch(ta.flow_log_id, 10)
        yield m
        opened.release()
        release.wait(60)

    results: list = []

    def stream():
        try:
            results.append(a.ingest.Ingest(slow_messages(), metadata=a.md, timeout=90))
        except grpc.RpcError as e:
            results.append(e)

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        for _ in range(3):
            assert opened.acquire(timeout=30), "the open Ingest streams did not start"

        def fourth():
            m, _ = batch(ta.flow_log_id, 10)
            try:
                a.ingest.Ingest(iter([m]), metadata=a.md, timeout=30)
                return None  # the three had not all been admitted yet
            except grpc.RpcError as e:
                return e

        e = wait_for(fourth, "a fourth Ingest stream of the account to be refused", 30, 0.2)
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
        assert "limits.max_ingest_inflight_bytes_per_account" in e.details(), e.details()
        m, _ = batch(tb.flow_log_id, 10)
        assert b.ingest.Ingest(iter([m]), metadata=b.md, timeout=30).accepted == 10
    finally:
        release.set()
        for th in threads:
            th.join(60)
    assert all(isinstance(r, ingest_pb2.IngestResponse) and r.accepted == 10 for r in results), results
    m, _ = batch(ta.flow_log_id, 10)
    assert a.ingest.Ingest(iter([m]), metadata=a.md, timeout=30).accepted == 10
