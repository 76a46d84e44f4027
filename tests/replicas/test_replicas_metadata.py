"""Several replicas on one PostgreSQL: quotas exact under concurrent creates on different replicas,
the demo inventory loaded once when replicas start together, a page token from one replica
accepted by another. Real flowlog-server processes, PostgreSQL, Elasticsearch and S3
(tests/replicas/conftest.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import resource_pb2 as rs
from flowlog.v1 import types_pb2 as t
from server.demo import demo_flow_logs, demo_resources
from tests.replicas.conftest import KEY_A, KEY_B

QUOTA = 10  # the oracle: the configured quota, set below, not read back from the server
CALLS = 50
REGIONS = ["bj", "gz"]


def create_req(i: int) -> fl.CreateFlowLogRequest:
    req = fl.CreateFlowLogRequest(
        region="bj",
        name=f"par-{i:02d}",
        resource_type=t.RESOURCE_TYPE_EIP,
        resource_id="eip-bj-01",
        network_id="vpc-bjdemo",
        traffic_type=t.TRAFFIC_TYPE_ALL,
    )
    req.new_log_store.CopyFrom(fl.NewLogStore(project="par", name=f"store-{i:02d}"))
    return req


def test_50_parallel_creates_over_3_replicas_give_exactly_the_quota(replica_cluster):
    cluster = replica_cluster(3, {"quotas": {"flow_logs_per_region": QUOTA}, "regions": REGIONS})
    stubs = [cluster.stubs(i, KEY_A).__enter__() for i in range(3)]
    try:

        def create(i: int) -> str:
            s = stubs[i % 3]  # spread over the three replicas
            try:
                s.flow_logs.CreateFlowLog(create_req(i), metadata=s.md, timeout=60)
                return "ok"
            except grpc.RpcError as e:
                return e.code().name

        with ThreadPoolExecutor(CALLS) as pool:
            results = list(pool.map(create, range(CALLS)))
        assert results.count("ok") == QUOTA, (results, cluster.logs())
        assert results.count("RESOURCE_EXHAUSTED") == CALLS - QUOTA, results
        for s in stubs:  # every replica lists the same QUOTA flow logs, and only their LogStores exist
            listed = s.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(region="bj", page_size=100), metadata=s.md)
            assert len(listed.flow_logs) == QUOTA
        with psycopg.connect(cluster.dsn) as conn:
            n_logs, n_stores = conn.execute(
                "SELECT (SELECT count(*) FROM flow_logs WHERE account_id = 'acct-a'),"
                " (SELECT count(*) FROM log_stores WHERE account_id = 'acct-a' AND project = 'par')"
            ).fetchone()
        assert (n_logs, n_stores) == (QUOTA, QUOTA)
        # the other account is untouched by acct-a's quota
        with cluster.stubs(1, KEY_B) as b:
            b.flow_logs.CreateFlowLog(create_req(99), metadata=b.md, timeout=60)
    finally:
        for s in stubs:
            s.close()
    assert cluster.stop() == {0: 0, 1: 0, 2: 0}, cluster.logs()


def test_demo_once_and_page_tokens_across_replicas(replica_cluster):
    # no API keys: the local account, whose demo flow logs are created at start (demo_flow_logs)
    cluster = replica_cluster(3, {"api_keys": {}, "demo_flow_logs": True, "regions": REGIONS})
    expected_resources = sorted(r.id for r in demo_resources() if r.region in REGIONS)
    expected_flow_logs = sorted(r.name for r in demo_flow_logs(REGIONS))
    assert expected_flow_logs, "the demo has flow logs in these regions"
    for i in range(3):
        with cluster.stubs(i, None) as s:
            res = s.resources.ListResources(rs.ListResourcesRequest(page_size=1000), metadata=s.md)
            assert sorted(r.id for r in res.resources) == expected_resources
            logs = s.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1000), metadata=s.md)
            assert sorted(f.name for f in logs.flow_logs) == expected_flow_logs, f"replica {i}"
    with psycopg.connect(cluster.dsn) as conn:
        markers = conn.execute("SELECT key FROM settings WHERE key LIKE 'demo_loaded:%%'").fetchall()
        assert markers == [("demo_loaded:local",)]
    # a replica restarted later does not load it again, even after the user removed a demo flow log
    with cluster.stubs(0, None) as s:
        before = s.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1000), metadata=s.md).flow_logs
        first = before[0]
        s.flow_logs.DeleteFlowLog(fl.DeleteFlowLogRequest(id=first.id), metadata=s.md)
    cluster[2].restart()
    with cluster.stubs(2, None) as s:
        after = s.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1000), metadata=s.md).flow_logs
    assert sorted(f.id for f in after) == sorted(
        f.id for f in before if f.id != first.id
    )  # by id: names repeat across regions

    # page tokens: signed with the secret every replica reads from the shared settings
    with cluster.stubs(0, None) as s0:
        all_ids = [
            f.id for f in s0.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1000), metadata=s0.md).flow_logs
        ]
    assert len(all_ids) >= 3
    seen: list[str] = []
    token = ""
    hops = 0
    while True:
        with cluster.stubs(hops % 3, None) as s:  # each page from the next replica
            page = s.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1, page_token=token), metadata=s.md)
        seen += [f.id for f in page.flow_logs]
        hops += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == all_ids and hops >= 3
    with cluster.stubs(1, None) as s:
        page = s.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1), metadata=s.md)
    tampered = page.next_page_token[:-2] + ("A" if page.next_page_token[-2] != "A" else "B") + page.next_page_token[-1]
    with cluster.stubs(2, None) as s, pytest.raises(grpc.RpcError) as e:
        s.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1, page_token=tampered), metadata=s.md)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
