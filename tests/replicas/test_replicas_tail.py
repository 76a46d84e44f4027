"""Tail across replicas (issue 19.2): three real flowlog-server processes on one PostgreSQL,
Elasticsearch and S3 (tests/replicas/conftest.py), records ingested through all three.

The oracle is the record ids the test itself sent and had acknowledged (tests/reliability's
Ingester computes each id from the record's fields, independently of the server): a Tail on one
replica must deliver every acknowledged record exactly once, each replica's records in the order
that replica acknowledged them; a cursor taken on one replica resumes on another without gap or
duplicate; a replica killed with SIGKILL mid-ingest loses nothing it acknowledged and, once
restarted, delivers the rest to the Tail that was following it.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from flowlog.v1 import query_pb2, query_pb2_grpc, replica_pb2, replica_pb2_grpc
from tests.reliability.conftest import (
    Ingester,
    Target,
    check_exactly_once,
    create_target,
    expected_id,
    query_ids,
    wait_delivered,
)
from tests.replicas.conftest import KEY_A, Cluster
from tests.waiting import wait_for

SETTINGS = {"limits": {"tail_heartbeat_seconds": 0.5}, "replica": {"heartbeat_seconds": 0.5}}


class Follower(threading.Thread):
    """A Tail client: keeps every record id it received (a list: duplicates show), the last cursor,
    and reconnects, with its last cursor, to `address` when told to or when the stream ends with a
    status that says to (RESOURCE_EXHAUSTED: it fell behind; UNAVAILABLE: its replica stops)."""

    def __init__(self, target: Target, address: str, start_ms: int, filter_text: str = "") -> None:
        super().__init__(daemon=True, name="follower")
        self.target = target
        self.address = address
        self.start_ms = start_ms
        self.filter = filter_text
        self.ids: list[str] = []
        # dst_port of each record received whose id the test recomputes from its fields (so the
        # fields are the ones the test sent): the oracle of a filtered Tail.
        self.ports: dict[str, int] = {}
        self.cursor = ""
        self.ends: list[str] = []
        self.messages = 0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._call = None

    def switch(self, address: str) -> None:
        """Cancel the current Tail and resume with the last cursor on another replica."""
        self.address = address
        call = self._call
        if call is not None:
            call.cancel()

    def received(self) -> set[str]:
        with self.lock:
            return set(self.ids)

    def run(self) -> None:
        while not self.stop_event.is_set():
            req = query_pb2.TailRequest(
                region="bj", project=self.target.project, log_stores=[self.target.log_store], filter=self.filter
            )
            if self.cursor:
                req.resume_cursor = self.cursor
            else:
                req.start_time.FromMilliseconds(self.start_ms)
            channel = grpc.insecure_channel(self.address)
            try:
                stub = query_pb2_grpc.QueryServiceStub(channel)
                self._call = stub.Tail(req, metadata=(("authorization", f"Bearer {KEY_A}"),))
                for resp in self._call:
                    with self.lock:
                        for r in resp.batch.records:
                            self.ids.append(r.record_id)
                            if expected_id(self.target.flow_log_id, r) == r.record_id:
                                self.ports[r.record_id] = r.dst_port
                        self.cursor = resp.cursor
                        self.messages += 1
            except grpc.RpcError as e:
                self.ends.append(e.code().name)
                if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    self.stop_event.wait(0.5)  # the replica is restarting: try again shortly
            finally:
                channel.close()

    def stop(self) -> None:
        self.stop_event.set()
        call = self._call
        if call is not None:
            call.cancel()
        self.join(30)


def targets(cluster: Cluster) -> list[Target]:
    """One flow log (created on replica 0), and a Target per replica to ingest it through."""
    with cluster.stubs(0, KEY_A) as s0:
        t0 = create_target(s0)
    return [
        Target(cluster.stubs(i, KEY_A).stubs, t0.flow_log_id, t0.project, t0.log_store) for i in range(len(cluster))
    ]


def acked_in_order(ing: Ingester) -> list[str]:
    with ing.books.lock:
        return [i for _, ids in sorted(ing.books.acked_calls, key=lambda c: c[0]) for i in ids]


def check_order(received: list[str], ingesters: list[Ingester]) -> None:
    """Each ingester's calls go to one replica, one after the other: the Tail must deliver its
    acknowledged records in that order (the spool's order)."""
    for k, ing in enumerate(ingesters):
        order = acked_in_order(ing)
        mine = set(order)
        got = [i for i in received if i in mine]
        assert got == order, f"replica {k}: records not in the order the replica acknowledged them"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_a_tail_on_one_replica_sees_every_replica_once_and_resumes_on_another(replica_cluster):
    cluster = replica_cluster(3, SETTINGS)
    ts = targets(cluster)
    follower = Follower(ts[0], cluster[0].address, now_ms() - 1000)
    follower.start()
    # Filtered at each source replica: the records of port 22 only (a quarter of them).
    ssh = Follower(ts[1], cluster[1].address, now_ms() - 1000, filter_text="dst_port = 22")
    ssh.start()
    ingesters = [Ingester(t, per_message=200, messages=2, pause_s=0.01, max_calls=10, keep_calls=True) for t in ts]
    try:
        for ing in ingesters:
            ing.start()
        # Half-way, the client moves to replica 1 with the cursor it had on replica 0.
        wait_for(lambda: len(follower.received()) >= 4000, "the tail on replica 0 receiving records", 120)
        follower.switch(cluster[1].address)
        for ing in ingesters:
            ing.join(180)
            assert not ing.is_alive(), "an ingester did not finish"
        acked = set().union(*(i.books.acked for i in ingesters))
        sent = set().union(*(i.books.sent for i in ingesters))
        assert len(acked) == 3 * 10 * 400, [i.books.errors[:2] for i in ingesters]
        wait_for(lambda: acked <= follower.received(), "every acknowledged record in the tail", 120)
        assert set(follower.ports) >= acked, "records whose fields are not the ones sent"
        port22 = {i for i in acked if follower.ports[i] == 22}
        assert len(port22) == len(acked) // 4
        wait_for(lambda: port22 <= ssh.received(), "every port-22 record in the filtered tail", 120)
    finally:
        ssh.stop()
        follower.stop()
        for ing in ingesters:
            ing.stop()
    assert "CANCELLED" in follower.ends  # it did move to replica 1
    check_exactly_once(follower.ids, acked, sent, "tail across replicas")
    check_order(follower.ids, ingesters)
    check_exactly_once(ssh.ids, port22, sent, "filtered tail across replicas")
    assert all(ssh.ports[i] == 22 for i in ssh.ids)

    # ReplicaService is internal: an API key does not open it.
    with grpc.insecure_channel(cluster[0].address) as ch:
        call = replica_pb2_grpc.ReplicaServiceStub(ch).StreamSpool(
            replica_pb2.StreamSpoolRequest(account_id="acct-a", log_stores=["x"]),
            metadata=(("authorization", f"Bearer {KEY_A}"),),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cluster.stop() == {0: 0, 1: 0, 2: 0}, cluster.logs()


def test_kill9_of_a_replica_mid_ingest_loses_nothing_and_the_tail_gets_the_rest(replica_cluster):
    cluster = replica_cluster(3, SETTINGS)
    ts = targets(cluster)
    follower = Follower(ts[0], cluster[0].address, now_ms() - 1000)
    follower.start()
    ingesters = [Ingester(t, per_message=200, messages=2, pause_s=0.01, timeout_s=10, keep_calls=True) for t in ts]
    try:
        for ing in ingesters:
            ing.start()
        wait_for(lambda: len(ingesters[2].books.acked) >= 4000, "acknowledgements from replica 2", 120)
        cluster[2].kill()
        wait_for(lambda: len(ingesters[2].books.errors) >= 1, "replica 2's ingester seeing it down", 60)
        cluster[2].restart()
        after = len(ingesters[2].books.acked)
        wait_for(lambda: len(ingesters[2].books.acked) >= after + 2000, "acknowledgements after the restart", 120)
        for ing in ingesters:
            ing.stop()
        acked = set().union(*(i.books.acked for i in ingesters))
        sent = set().union(*(i.books.sent for i in ingesters))
        codes = {e[1] for i in ingesters for e in i.books.errors}
        assert codes <= {"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"}, codes
        wait_for(lambda: acked <= follower.received(), "every acknowledged record in the tail on replica 0", 180)
    finally:
        follower.stop()
        for ing in ingesters:
            ing.stop()
    check_exactly_once(follower.ids, acked, sent, "tail following a replica killed with SIGKILL")
    check_order(follower.ids, ingesters)
    # A generous bound: on a loaded 2-core machine Elasticsearch takes minutes over three replicas' bulks.
    stored = wait_delivered(lambda: query_ids(ts[1]), acked, 600, "every acknowledged record in Elasticsearch")
    check_exactly_once(stored, acked, sent, "Elasticsearch after kill -9 and restart")
    assert cluster.stop() == {0: 0, 1: 0, 2: 0}, cluster.logs()
