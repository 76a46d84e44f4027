"""The server process dies or is told to stop while records stream in (embedded backends).

kill -9 at arbitrary moments (inside a spool commit, a DuckDB write, an archive object write, a
checkpoint ...) and a restart on the same data dir: every acknowledged record ends up in the query
backend and in the archive exactly once, and the metadata (flow log, LogStore) is intact.

SIGTERM: the process exits 0 within a bounded time, and everything it acknowledged has reached
both backends before it exits (the spool's sink offsets are at its head).
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import log_store_pb2 as ls
from flowlog.v1 import query_pb2
from server.core.model import LogStoreKey
from tests.reliability.conftest import (
    KEY_A,
    Ingester,
    Stubs,
    Target,
    check_exactly_once,
    create_target,
    free_port,
    query_ids,
    report,
    settings,
    wait_delivered,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
ACCOUNT_A = "acct-a"
CYCLES = 5


def archive_ids(data_dir: Path, target: Target) -> list[str]:
    from backends.embedded.objects import LocalObjectStore
    from server.archive import Archive

    key = LogStoreKey(target.region, target.project, target.log_store)
    archive = Archive(LocalObjectStore(data_dir / "archive"))
    return [r.record_id for b in archive.read(ACCOUNT_A, key, 0, 4_000_000_000_000) for r in b]


def spool_state(data_dir: Path) -> tuple[int, dict[str, int]]:
    """(head seq, {sink: delivered seq}) read from the spool file of a stopped server."""
    con = sqlite3.connect(f"file:{data_dir / 'spool.db'}?mode=ro", uri=True)
    try:
        head = con.execute("SELECT max(seq) FROM batches").fetchone()[0] or 0
        trimmed = con.execute("SELECT v FROM meta WHERE k = 'trimmed_through'").fetchone()
        head = max(head, int(trimmed[0]) if trimmed else 0)
        return head, dict(con.execute("SELECT sink, seq FROM sink_offsets").fetchall())
    finally:
        con.close()


def metadata_snapshot(a: Stubs, target: Target) -> tuple:
    f = a.flow_logs.GetFlowLog(fl.GetFlowLogRequest(id=target.flow_log_id), metadata=a.md, timeout=20)
    s = a.log_stores.GetLogStore(
        ls.GetLogStoreRequest(region="bj", project=target.project, name=target.log_store), metadata=a.md, timeout=20
    )
    listed = a.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(region="bj"), metadata=a.md, timeout=20)
    return f, s, sorted(x.id for x in listed.flow_logs)


def test_kill9_mid_ingest_and_restart(tmp_path, server_factory, record_property):
    """Five kill -9 / restart cycles while three clients ingest."""
    port = free_port()
    data = tmp_path / "data"
    cfg = settings(pipeline={"archive_max_age_seconds": 0.5, "archive_max_records": 3000})
    sp = server_factory(cfg, data_dir=data, port=port, name="run")
    a = Stubs(sp.address, KEY_A)
    target = create_target(a)
    before = metadata_snapshot(a, target)
    ingesters = [Ingester(target, per_message=300, messages=2, pause_s=0.02, timeout_s=10) for _ in range(3)]
    for ing in ingesters:
        ing.start()
    restarts = []
    try:
        for cycle in range(CYCLES):
            # Kill at different points of the work: after a different number of acknowledgements each cycle.
            at = (cycle + 1) * 3000 + (cycle * 1117) % 3600
            wait_for(
                lambda: sum(len(i.books.acked) for i in ingesters) > at, "acknowledgements before the kill", 30, 0.2
            )
            sp.proc.kill()
            sp.proc.wait(10)
            t0 = time.monotonic()
            sp = server_factory(cfg, data_dir=data, port=port, name="run")
            restarts.append(round(time.monotonic() - t0, 1))
        after = sum(len(i.books.acked) for i in ingesters)
        wait_for(
            lambda: sum(len(i.books.acked) for i in ingesters) > after + 1800,
            "acknowledgements after the last restart",
            30,
            0.2,
        )
    finally:
        for ing in ingesters:
            ing.stop()
    try:
        acked = set().union(*(i.books.acked for i in ingesters))
        sent = set().union(*(i.books.sent for i in ingesters))
        failed_calls = sum(len(i.books.errors) for i in ingesters)
        codes = {e[1] for i in ingesters for e in i.books.errors}
        assert codes <= {"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"}, codes
        stored = wait_delivered(lambda: query_ids(target), acked, 60, "every acknowledged record in the query backend")
        check_exactly_once(stored, acked, sent, "query backend after kill -9")
        archived = wait_delivered(
            lambda: archive_ids(data, target), acked, 60, "every acknowledged record in the archive"
        )
        check_exactly_once(archived, acked, sent, "archive after kill -9")
        after = metadata_snapshot(a, target)
        assert after == before, "flow log / LogStore metadata changed across crashes"
        report(
            record_property,
            "kill9",
            cycles=CYCLES,
            records_acked=len(acked),
            records_sent=len(sent),
            stored=len(stored),
            unacked_but_stored=len(set(stored) - acked),
            failed_calls=failed_calls,
            restart_s=restarts,
        )
    finally:
        assert sp.stop() == 0, sp.log_tail()


class Tailer(threading.Thread):
    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.records = 0
        self.ended_with: str | None = None
        self.call = None

    def run(self) -> None:
        req = query_pb2.TailRequest(region="bj", project=self.target.project, log_stores=[self.target.log_store])
        self.call = self.target.stubs.query.Tail(req, metadata=self.target.stubs.md, timeout=120)
        try:
            for resp in self.call:
                self.records += len(resp.batch.records)
            self.ended_with = "OK"
        except grpc.RpcError as e:
            self.ended_with = e.code().name


def test_sigterm_during_ingest_exits_cleanly_and_delivers(tmp_path, server_factory, record_property):
    data = tmp_path / "data"
    # A long archive age: the archive's last object must be written by the shutdown itself.
    cfg = settings(pipeline={"archive_max_age_seconds": 600, "archive_max_records": 1_000_000})
    sp = server_factory(cfg, data_dir=data, name="run")
    a = Stubs(sp.address, KEY_A)
    target = create_target(a)
    ingesters = [Ingester(target, per_message=500, messages=2, pause_s=0.01, timeout_s=20) for _ in range(3)]
    tails = [Tailer(target) for _ in range(3)]
    for th in tails + ingesters:
        th.start()
    wait_for(lambda: sum(len(i.books.acked) for i in ingesters) > 20_000, "acknowledgements", 30, 0.2)
    wait_for(lambda: all(t.records > 0 for t in tails), "tails receiving records", 30, 0.2)
    t0 = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    try:
        code = sp.proc.wait(20)
    except Exception:  # noqa: BLE001
        sp.proc.kill()
        pytest.fail(f"flowlog-server did not exit within 20 s of SIGTERM:\n{sp.log_tail()}")
    exit_s = time.monotonic() - t0
    for ing in ingesters:
        ing.stop()
    for t in tails:
        t.join(10)
    assert code == 0, f"exit code {code} after SIGTERM:\n{sp.log_tail()}"
    acked = set().union(*(i.books.acked for i in ingesters))
    sent = set().union(*(i.books.sent for i in ingesters))
    codes = {e[1] for i in ingesters for e in i.books.errors}
    assert codes <= {"UNAVAILABLE", "CANCELLED"}, f"calls refused with {codes} while stopping"
    assert all(t.ended_with in ("UNAVAILABLE", "CANCELLED", "OK") for t in tails), [t.ended_with for t in tails]

    head, offsets = spool_state(data)
    assert offsets and all(seq == head for seq in offsets.values()), (
        f"stopped with acknowledged records not delivered: head {head}, sinks {offsets}"
    )
    archived = archive_ids(data, target)  # the server is down: this is what the shutdown wrote
    check_exactly_once(archived, acked, sent, "archive after SIGTERM")

    sp2 = server_factory(cfg, data_dir=data, name="run")
    try:
        b = Stubs(sp2.address, KEY_A)
        target2 = Target(b, target.flow_log_id, target.project, target.log_store)
        stored = query_ids(target2)  # no wait: delivered before the first server exited
        check_exactly_once(stored, acked, sent, "query backend after SIGTERM")
        report(
            record_property,
            "sigterm",
            exit_s=round(exit_s, 1),
            records_acked=len(acked),
            tail_records=sum(t.records for t in tails),
            tails_ended=sorted({t.ended_with for t in tails}),
        )
    finally:
        assert sp2.stop() == 0
