"""Smoke tests: the real Elasticsearch and S3 servers round-trip data through the official
Python clients (elasticsearch, minio).  No mocks."""

import io
import os
import sys
import uuid

import pytest


@pytest.fixture
def es_index(es_client):
    name = f"flowlog-smoke-{uuid.uuid4().hex[:12]}"
    es_client.indices.create(
        index=name,
        mappings={
            "properties": {
                "src_addr": {"type": "ip"},
                "dst_port": {"type": "integer"},
                "bytes": {"type": "long"},
                "action": {"type": "keyword"},
                "start": {"type": "date", "format": "epoch_second"},
            }
        },
        settings={"number_of_shards": 1, "number_of_replicas": 0},
    )
    yield name
    es_client.indices.delete(index=name)


def test_es_index_get_search_roundtrip(es_client, es_service, es_index):
    health = es_client.cluster.health(index=es_index, wait_for_status="yellow", timeout="30s")
    assert health["status"] in ("yellow", "green")

    doc = {"src_addr": "10.1.2.3", "dst_port": 443, "bytes": 12345, "action": "ACCEPT", "start": 1700000000}
    other = {"src_addr": "192.168.7.9", "dst_port": 22, "bytes": 99, "action": "REJECT", "start": 1700000060}
    resp = es_client.index(index=es_index, id="rec-1", document=doc)
    assert resp["result"] == "created"
    es_client.index(index=es_index, id="rec-2", document=other)

    got = es_client.get(index=es_index, id="rec-1")
    assert got["found"] is True
    assert got["_id"] == "rec-1"
    assert got["_source"] == doc

    es_client.indices.refresh(index=es_index)
    res = es_client.search(index=es_index, query={"term": {"src_addr": "10.0.0.0/8"}})
    assert res["hits"]["total"]["value"] == 1
    [hit] = res["hits"]["hits"]
    assert hit["_id"] == "rec-1"
    assert hit["_source"] == doc

    agg = es_client.search(
        index=es_index,
        size=0,
        aggs={"by_action": {"terms": {"field": "action"}, "aggs": {"b": {"sum": {"field": "bytes"}}}}},
    )
    buckets = {b["key"]: (b["doc_count"], b["b"]["value"]) for b in agg["aggregations"]["by_action"]["buckets"]}
    assert buckets == {"ACCEPT": (1, 12345.0), "REJECT": (1, 99.0)}

    # The server really is Elasticsearch 9 (same major as the Python client).
    nodes = es_client.nodes.info(node_id="_local", metric="settings")
    [node] = nodes["nodes"].values()
    assert node["version"].split(".")[0] == "9"


def test_s3_bucket_put_get_list_roundtrip(minio_client, minio_service):
    bucket = f"flowlog-smoke-{uuid.uuid4().hex[:12]}"
    assert not minio_client.bucket_exists(bucket)
    minio_client.make_bucket(bucket)
    try:
        assert minio_client.bucket_exists(bucket)
        assert bucket in {b.name for b in minio_client.list_buckets()}

        payload = b"ts,src,dst,bytes\n1700000000,10.1.2.3,10.9.8.7,12345\n" * 100
        key = "archive/2023/11/14/part-0001.csv"
        put = minio_client.put_object(
            bucket,
            key,
            io.BytesIO(payload),
            length=len(payload),
            content_type="text/csv",
            metadata={"x-amz-meta-records": "100"},
        )
        assert put.object_name == key
        minio_client.put_object(bucket, "archive/2023/11/15/part-0001.csv", io.BytesIO(b"x"), 1)

        resp = minio_client.get_object(bucket, key)
        try:
            body = resp.read()
        finally:
            resp.close()
            resp.release_conn()
        assert body == payload

        st = minio_client.stat_object(bucket, key)
        assert st.size == len(payload)
        assert st.content_type == "text/csv"
        assert st.metadata.get("x-amz-meta-records") == "100"

        listed = [(o.object_name, o.size) for o in minio_client.list_objects(bucket, prefix="archive/", recursive=True)]
        assert listed == [(key, len(payload)), ("archive/2023/11/15/part-0001.csv", 1)]
        top = [o.object_name for o in minio_client.list_objects(bucket, prefix="archive/2023/")]
        assert top == ["archive/2023/11/"]
    finally:
        for o in minio_client.list_objects(bucket, recursive=True):
            minio_client.remove_object(bucket, o.object_name)
        minio_client.remove_bucket(bucket)
    assert not minio_client.bucket_exists(bucket)


def test_postgres_fresh_database_per_test(postgres_service, postgres_dsn):
    """The PostgreSQL of tests/fixtures_postgres.py: a fresh database, a real transaction, not run as root."""
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (k text PRIMARY KEY, v bigint)")
        conn.execute("INSERT INTO t VALUES ('a', 1), ('b', 2)")
        conn.commit()
        assert conn.execute("SELECT sum(v) FROM t").fetchone() == (3,)
        assert conn.execute("SELECT current_database()").fetchone()[0] != "postgres"
    if not postgres_service.get("external"):
        with open(f"/proc/{postgres_service['pid']}/status") as fh:
            uid = next(int(line.split()[1]) for line in fh if line.startswith("Uid:"))
        assert uid != 0


@pytest.mark.parametrize("kind", ["postgres", "s3"])
def test_a_server_whose_free_port_another_one_took_starts_again_elsewhere(kind, monkeypatch):
    """The lost race for a "free" port: another server of the same kind holds it when ours starts. Ours fails
    to bind and exits; the readiness check must not take the other server's answer for ours (it did: the
    script returned a dead server on the other's port), so that the script retries on another port.
    free_port() is made to hand out the taken port once, which is the race; the servers are real."""
    from tests.fixtures_services import _svc

    run = sys.modules["services_run"]
    other = _svc.start(kind, owner_pid=os.getpid())
    try:
        handed: list[int] = []
        real_free_port = run.free_port

        def free_port() -> int:
            handed.append(int(other["port"]) if not handed else real_free_port())
            return handed[-1]

        monkeypatch.setattr(run, "free_port", free_port)
        ours = _svc.start(kind, owner_pid=os.getpid())
        try:
            assert handed[0] == other["port"] and ours["port"] != other["port"]
            with open(f"/proc/{ours['pid']}/stat") as fh:
                assert fh.read().rsplit(")", 1)[1].split()[0] != "Z", "the server reported ready has exited"
            if kind == "postgres":
                import psycopg

                for info in (other, ours):
                    with psycopg.connect(info["dsn"]) as conn:
                        [(data_directory,)] = conn.execute("SHOW data_directory").fetchall()
                    assert data_directory == os.path.join(info["data_dir"], "data")
        finally:
            _svc.stop(ours)
    finally:
        _svc.stop(other)
