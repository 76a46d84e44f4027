"""The merged Tail over several spools (server.pipeline.replicated), on real pipelines in one process.

The peers are other Pipelines of this process, reached through an in-process PeerStreams that runs
the very session ReplicaService.StreamSpool runs (Pipeline.spool_stream) without gRPC: these tests
pin the merge, the vector cursor and the retries; tests/replicas runs the same over real gRPC
between real server processes on PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from backends.embedded.records import EmbeddedRecordStore
from flowlog.v1 import query_pb2
from server.api import wire
from server.core import filter as flt
from server.core.errors import ResourceExhausted, Unavailable
from server.core.ports import ReplicaInfo, ReplicaSnapshot
from server.pipeline import Pipeline
from server.pipeline.replicated import PeerMessage, Position, ReplicaTails, VectorCursorCodec
from server.pipeline.tail import CursorCodec
from tests.unit.test_pipeline import ACCOUNT, BASE_MS, PROJECT, REGION, SECRET, make_pipeline, make_records
from tests.waiting import wait_for


class Directory:
    """The replica directory as the heartbeat loop would snapshot it: a dict we edit."""

    def __init__(self) -> None:
        self.replicas: dict[str, str] = {}  # spool id -> address
        self.down: set[str] = set()

    def snapshot(self) -> ReplicaSnapshot:
        now = time.time_ns() // 1_000_000
        return ReplicaSnapshot(
            now,
            tuple(ReplicaInfo(s, a, 60_000 if s in self.down else 0) for s, a in sorted(self.replicas.items())),
        )


class _Call:
    def __init__(self, session) -> None:
        self.session = session

    def __iter__(self) -> Iterator[PeerMessage]:
        s = self.session
        yield PeerMessage(b"", 0, *s.position, False)
        try:
            for kind, records, _ in s:
                batch = wire.encode_batch_rows(records) if kind == "records" else b""
                yield PeerMessage(batch, len(records), *s.position, False)
        except ResourceExhausted:
            yield PeerMessage(b"", 0, *s.position, True)
        raise Unavailable("the peer stopped")

    def cancel(self) -> None:
        self.session.close()


class Peers:
    """PeerStreams to the pipelines of this process, by address."""

    def __init__(self) -> None:
        self.at: dict[str, Pipeline] = {}

    def open(self, address, spool_id, subscription, position, heartbeat_s):
        p = self.at.get(address)
        if p is None or p.spool is None or p.spool.spool_id != spool_id:
            raise Unavailable(f"nothing at {address}")
        sub = subscription
        predicate = flt.compile_predicate(flt.parse(sub.filter_text)) if sub.filter_text else None
        try:
            session = p.spool_stream(
                sub.account_id,
                sub.region,
                sub.project,
                sub.log_stores,
                predicate,
                position=None if position.pending else (position.next_seq, position.skip),
                start_ms=position.since_ms if position.pending else None,
                heartbeat_s=heartbeat_s,
            )
        except Exception as e:  # noqa: BLE001 - a stopped pipeline
            raise Unavailable(str(e)) from None
        return _Call(session)


class Cluster:
    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.dir = Directory()
        self.peers = Peers()
        self.pipelines: dict[str, Pipeline] = {}
        self.stores: list[EmbeddedRecordStore] = []

    def start(self, name: str, **kw) -> Pipeline:
        store = EmbeddedRecordStore(self.tmp / f"{name}.duckdb", checkpoint_interval_s=0)
        self.stores.append(store)
        p = make_pipeline(self.tmp / name, store, heartbeat_s=0.2, **kw)
        assert p.spool is not None
        self.dir.replicas[p.spool.spool_id] = name
        self.dir.down.discard(p.spool.spool_id)
        self.peers.at[name] = p
        p.attach_replicas(
            ReplicaTails(
                peers=self.peers,
                snapshot=self.dir.snapshot,
                codec=VectorCursorCodec(SECRET),
                live_ms=10_000,
                skew_ms=2_000,
            )
        )
        self.pipelines[name] = p
        return p

    def stop(self, name: str) -> None:
        p = self.pipelines.pop(name)
        assert p.spool is not None
        self.dir.down.add(p.spool.spool_id)
        del self.peers.at[name]
        p.stop(5)

    def close(self) -> None:
        for name in list(self.pipelines):
            self.stop(name)
        for s in self.stores:
            s.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def indexes(payload) -> list[int]:
    if isinstance(payload, bytes):
        return [
            (r.start_time.seconds * 1000 + r.start_time.nanos // 1_000_000 - BASE_MS) // 1000
            for r in query_pb2.RecordBatch.FromString(payload).records
        ]
    return [(r.start_time - BASE_MS) // 1000 for r in payload]


def take(session, n: int, timeout: float = 20.0) -> tuple[list[int], str]:
    got: list[int] = []
    cursor = [""]

    def pull() -> int:  # one event of the session; how many records arrived so far
        kind, payload, cursor[0] = next(session)
        if kind == "records":
            got.extend(indexes(payload))
        return len(got)

    if n > 0:
        wait_for(pull, f"{n} records", timeout, 0, until=lambda k: k >= n, describe=lambda k: f"{k} records")
    return got, cursor[0]


def tail(p: Pipeline, **kw):
    return p.tail(ACCOUNT, REGION, PROJECT, ["web"], heartbeat_s=0.2, **kw)


def test_a_tail_sees_every_spool_once_in_each_spools_order(cluster):
    a, b, c = cluster.start("a"), cluster.start("b"), cluster.start("c")
    s = tail(a, start_ms=0)

    def feed(p: Pipeline, offset: int) -> None:
        for i in range(20):
            p.submit(make_records(50, start=offset + i * 50))

    threads = [threading.Thread(target=feed, args=(p, k * 10_000)) for k, p in enumerate((a, b, c))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got, _ = take(s, 3000)
    s.close()
    assert sorted(got) == sorted(set(got)) and len(got) == 3000
    for k in range(3):  # per spool, in the order it stored them
        mine = [i for i in got if k * 10_000 <= i < (k + 1) * 10_000]
        assert mine == list(range(k * 10_000, k * 10_000 + 1000))


def test_a_cursor_resumes_on_another_replica_without_gap_or_duplicate(cluster):
    a, b = cluster.start("a"), cluster.start("b")
    a.submit(make_records(2500, start=0))
    b.submit(make_records(2500, start=10_000))
    s = tail(a, start_ms=0)
    first, cursor = take(s, 3100)
    s.close()
    a.submit(make_records(100, start=2500))
    b.submit(make_records(100, start=12_500))
    s2 = tail(b, cursor=cursor)
    rest, _ = take(s2, 5200 - len(first))
    s2.close()
    assert sorted(first + rest) == list(range(2600)) + list(range(10_000, 12_600))


def test_a_peer_that_was_down_delivers_its_records_when_it_returns(cluster):
    a, b = cluster.start("a"), cluster.start("b")
    s = tail(a)
    b.submit(make_records(10, start=10_000))
    got, _ = take(s, 10)
    cluster.stop("b")
    a.submit(make_records(5, start=0))
    more, _ = take(s, 5)
    b2 = cluster.start("b")  # the same data dir: the same spool, as after a restart
    b2.submit(make_records(7, start=10_010))
    last, _ = take(s, 7)
    s.close()
    assert got + more + last == list(range(10_000, 10_010)) + list(range(5)) + list(range(10_010, 10_017))


def test_a_replica_that_appears_mid_session_is_followed(cluster):
    a = cluster.start("a")
    s = tail(a)
    a.submit(make_records(3, start=0))
    got, cursor = take(s, 3)
    b = cluster.start("b")
    b.submit(make_records(4, start=10_000))
    more, _ = take(s, 4)
    s.close()
    assert got + more == [0, 1, 2, 10_000, 10_001, 10_002, 10_003]


def test_a_client_that_does_not_read_ends_with_the_cursor_and_resumes_from_it(cluster):
    # The peer's queue for this tail holds 2,000 records; the merged session stops reading the
    # peer after 5,000 queued: 20,000 records unread overflow the peer, not this process.
    a, b = cluster.start("a"), cluster.start("b", tail_buffer_records=2000)
    s = tail(a, start_ms=0)
    assert next(s)[0] == "heartbeat"  # the session runs: its sources are started
    wait_for(lambda: b.hub.subscriber_count == 1, "the peer's stream following b's spool live")
    for i in range(20):
        b.submit(make_records(1000, start=10_000 + i * 1000))
    a.submit(make_records(10, start=0))
    received: list[int] = []

    def pull() -> bool:  # until the session overflows (raises)
        kind, payload, _ = next(s)
        if kind == "records":
            received.extend(indexes(payload))
        return False

    with pytest.raises(ResourceExhausted) as err:
        wait_for(pull, "the merged session to overflow", 30, 0)
    s.close()
    assert "reconnect with resume_cursor=" in str(err.value)
    s2 = tail(a, cursor=err.value.cursor)  # type: ignore[attr-defined]
    rest, _ = take(s2, 20_010 - len(received))
    s2.close()
    assert sorted(received + rest) == list(range(10)) + list(range(10_000, 30_000))


def test_a_single_spool_cursor_of_a_server_without_replicas_still_resumes(cluster):
    a = cluster.start("a")
    a.submit(make_records(20, start=0))
    assert a.spool is not None
    v1 = CursorCodec(SECRET, a.spool.spool_id).encode(ACCOUNT, CursorCodec.scope(REGION, PROJECT, ["web"]), 1, 5)
    s = tail(a, cursor=v1)
    got, _ = take(s, 15)
    s.close()
    assert got == list(range(5, 20))


def test_the_cursor_names_every_spool_and_its_position(cluster):
    a, b = cluster.start("a"), cluster.start("b")
    b.submit(make_records(3, start=10_000))
    s = tail(a, start_ms=0)
    _, cursor = take(s, 3)
    s.close()
    decoded = VectorCursorCodec(SECRET).decode(cursor, ACCOUNT, CursorCodec.scope(REGION, PROJECT, ["web"]))
    assert a.spool is not None and b.spool is not None
    assert decoded.positions[b.spool.spool_id] == Position(2, 0)
    assert set(decoded.positions) == {a.spool.spool_id, b.spool.spool_id}


def test_the_readmes_replica_settings_load_and_bad_ones_are_refused_naming_the_setting():
    import re
    from pathlib import Path

    import yaml

    from server.config import Config, ConfigError, _apply

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if b.startswith("replica:"))
    cfg = Config()
    _apply(cfg, yaml.safe_load(block), "")
    cfg.validate()
    assert cfg.replica.advertise == "10.0.0.5:50051" and cfg.replica.down_after_seconds == 10
    for bad, setting in (
        ({"advertise": "nohostport"}, "replica.advertise"),
        ({"heartbeat_seconds": 5, "down_after_seconds": 6}, "replica.down_after_seconds"),
        ({"clock_skew_seconds": -1}, "replica.clock_skew_seconds"),
    ):
        cfg = Config()
        _apply(cfg, {"replica": bad}, "")
        with pytest.raises(ConfigError, match=re.escape(setting)):
            cfg.validate()


def test_the_address_other_replicas_dial_is_the_listen_address_unless_advertised():
    from server.app import advertise_address
    from server.config import Config, ConfigError

    cfg = Config()
    cfg.listen = "127.0.0.1:0"
    assert advertise_address(cfg, 41234) == "127.0.0.1:41234"  # the port actually bound
    cfg.listen = "0.0.0.0:50051"
    with pytest.raises(ConfigError, match="replica.advertise"):
        advertise_address(cfg, None)
    cfg.replica.advertise = "10.0.0.5:50051"
    assert advertise_address(cfg, 50051) == "10.0.0.5:50051"
