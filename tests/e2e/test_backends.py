"""The same product path with Elasticsearch for query and an S3 server (MinIO, or versitygw where
MinIO cannot be built) for the archive: real server processes, real backends."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from backends.minio.objects import S3ObjectStore
from clients.client import FlowLogClient
from server.archive import Archive
from server.core.model import LogStoreKey
from tests.e2e.conftest import KEY_A, start_server
from tests.e2e.test_records import make_flow_log, pb_record, query_all, uid
from tests.waiting import poll, wait_for


@pytest.fixture(scope="module")
def es_s3_server(tmp_path_factory, es_service, minio_service):
    bucket = "e2e-" + uuid.uuid4().hex[:10]
    settings = {
        "query_backend": "elasticsearch",
        "archive_backend": "minio",
        "elasticsearch": {"url": es_service["url"], "index_prefix": "e2e" + uuid.uuid4().hex[:6]},
        "minio": {
            "endpoint": minio_service["endpoint"],
            "access_key": minio_service["access_key"],
            "secret_key": minio_service["secret_key"],
            "bucket": bucket,
            "region": minio_service.get("region", "us-east-1"),
        },
        "pipeline": {"archive_max_age_seconds": 1.0},
    }
    sp = start_server(tmp_path_factory.mktemp("es-s3"), settings)
    store = S3ObjectStore(
        minio_service["endpoint"],
        minio_service["access_key"],
        minio_service["secret_key"],
        bucket,
        region=minio_service.get("region", "us-east-1"),
    )
    yield sp, Archive(store)
    assert sp.stop() == 0, sp.log_tail()


def test_generated_and_ingested_records_reach_elasticsearch_and_the_archive(es_s3_server):
    sp, archive = es_s3_server
    with FlowLogClient(sp.address, KEY_A) as c:
        store = uid("es")
        t0 = time.monotonic()
        fl = make_flow_log(c, store)
        generated = poll(lambda: query_all(c, [store], since="5m"), 15, 0.1)
        assert generated, f"no records in Elasticsearch after {time.monotonic() - t0:.1f}s:\n{sp.log_tail()}"
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
        resp = c.ingest(fl.id, [[pb_record(i, base) for i in range(300)]])
        assert resp.accepted == 300
        flt = "src_addr = 10.1.0.0/16"
        got = wait_for(
            lambda: (lambda r: r if len(r) >= 300 else [])(query_all(c, [store], since="1h", filter=flt)),
            "300 ingested records in Elasticsearch",
            15,
            0.1,
        )
        assert len(got) == 300 and len({r.record_id for r in got}) == 300
        c.update_flow_log(fl.id, state="paused")
        key = LogStoreKey("bj", "proj", store)
        start_ms = int((base - timedelta(hours=1)).timestamp() * 1000)
        end_ms = int((datetime.now(timezone.utc) + timedelta(minutes=1)).timestamp() * 1000)

        def archived():
            ids = [
                r.record_id
                for batch in archive.read("acct-a", key, start_ms, end_ms)
                for r in batch
                if r.src_addr.startswith("10.1.")
            ]
            return ids if len(ids) >= 300 else []

        ids = wait_for(archived, "300 ingested records in the archive", 20, 0.5)
        assert sorted(ids) == sorted(r.record_id for r in got), "archive holds exactly the ingested records once"
        # deleting the LogStore removes its records from both backends
        c.delete_flow_log(fl.id)
        c.delete_log_store("bj", "proj", store)
        assert archive.count("acct-a", key, start_ms, end_ms) == 0
        c.create_log_store("bj", "proj", store)
        assert query_all(c, [store], since="1h") == []


def test_backend_health_is_serving(es_s3_server):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    sp, _ = es_s3_server
    with grpc.insecure_channel(sp.address) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for name in ("flowlog.backend.query", "flowlog.backend.archive", ""):
            assert (
                h.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )
