"""A LogStore deleted through one replica is gone from every replica: a Tail of it open on another
replica ends with NOT_FOUND (the change reaches that replica through the shared metadata's
generation, and its purge loop runs its own local steps), its records are purged from the shared
Elasticsearch, and once every purge step is done the name can be used again with no old record in
it. Real replicas, PostgreSQL, Elasticsearch, S3 (tests/replicas/conftest.py)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import grpc

from clients.client import FlowLogClient, FlowLogError
from tests.e2e.test_records import make_flow_log, pb_record, query_all
from tests.replicas.conftest import KEY_A
from tests.waiting import wait_for

MARK = "src_addr = 10.1.0.0/16"  # pb_record's sources: what this test ingested


def test_log_store_deleted_on_one_replica_is_gone_on_the_others(replica_cluster):
    cluster = replica_cluster(2)
    store = "del" + uuid.uuid4().hex[:8]
    with FlowLogClient(cluster[0].address, KEY_A) as c0, FlowLogClient(cluster[1].address, KEY_A) as c1:
        fl = make_flow_log(c0, store)
        base = datetime.now(timezone.utc) - timedelta(minutes=2)
        assert c1.ingest(fl.id, [[pb_record(i, base) for i in range(50)]]).accepted == 50  # into replica 1's spool
        wait_for(lambda: len(query_all(c0, [store], filter=MARK)) == 50, "replica 1's records in ES, seen from 0")
        c0.delete_flow_log(fl.id)

        ended: list[BaseException | None] = []
        tail = c1.tail(region="bj", project="proj", log_stores=[store], heartbeats=True)

        def follow() -> None:
            try:
                for _ in tail:
                    pass
                ended.append(None)
            except BaseException as e:  # noqa: BLE001 - inspected below
                ended.append(e)

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        c0.delete_log_store("bj", "proj", store)  # through the OTHER replica
        wait_for(lambda: ended, "the Tail on replica 1 to end after the deletion on replica 0")
        assert isinstance(ended[0], FlowLogError) and ended[0].code == grpc.StatusCode.NOT_FOUND, ended

        def recreated() -> bool:
            try:
                c1.create_log_store("bj", "proj", store)  # refused (FAILED_PRECONDITION) until purged
                return True
            except FlowLogError as e:
                assert e.code == grpc.StatusCode.FAILED_PRECONDITION, e
                return False

        wait_for(recreated, "the purge to finish so the name can be used again")
        assert query_all(c0, [store], filter=MARK) == [] and query_all(c1, [store]) == []
        tail.cancel()
    assert cluster.stop() == {0: 0, 1: 0}, cluster.logs()
