"""DeleteLogStore during a backend outage and across a kill -9, on Elasticsearch + the S3 server.

DeleteLogStore answers at once (the LogStore is a tombstone from then on: invisible to every
API, its name not yet reusable); its records are purged from the spool, Elasticsearch (its day
indices) and the archive (its objects) by the background purger, which retries while
Elasticsearch is down (killed with SIGKILL) and, after the server itself is killed with SIGKILL
while the S3 server is down, resumes at the next start. Afterwards nothing of the old LogStore is
left in any backend and a LogStore of the same name starts empty.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import uuid

import grpc
import pytest

from backends.elasticsearch.records import ls_key
from flowlog.v1 import log_store_pb2 as ls
from tests.e2e.test_lifecycle import delete_all
from tests.reliability.conftest import (
    KEY_A,
    Stubs,
    Target,
    batch,
    create_target,
    query_ids,
    report,
    wait_delivered,
)
from tests.reliability.test_outage import ACCOUNT_A, archive_ids, backend_settings, es_request
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def es_visible(es, prefix: str, target: Target) -> int:
    """Documents of the LogStore in the shared day indices that its deletion marker does not hide:
    all of them without a marker, else those indexed at or after it (raw requests; the marker is
    the registry document `<prefix>-logstores/_doc/<ls_key>`)."""
    key = ls_key(ACCOUNT_A, target.region, target.project, target.log_store)
    filters: list[dict] = [{"term": {"ls_key": key}}]
    try:
        marker = es_request(es, "GET", f"/{prefix}-logstores/_doc/{key}")["_source"]["deleted_ms"]
    except urllib.error.HTTPError as e:
        assert e.code == 404, e
        marker = 0
    if marker:
        filters.append({"range": {"ingested_ms": {"gte": marker}}})
    body = {"query": {"bool": {"filter": filters}}}
    return es_request(es, "POST", f"/{prefix}-flows-*/_count?allow_no_indices=true", body)["count"]


def fill(target: Target, es, s3, bucket: str, n: int = 400) -> set[str]:
    """n acknowledged records, stored in Elasticsearch and in the archive."""
    msgs = [batch(target.flow_log_id, n // 2) for _ in range(2)]
    resp = target.stubs.ingest.Ingest(iter(m for m, _ in msgs), metadata=target.stubs.md, timeout=60)
    assert resp.accepted == n
    ids = {i for _, some in msgs for i in some}
    wait_delivered(lambda: query_ids(target), ids, 60, "Elasticsearch")
    wait_delivered(lambda: archive_ids(s3, bucket, target), ids, 60, "archive")
    return ids


def recreate(a: Stubs, target: Target) -> bool:
    """CreateLogStore under the deleted one's name: True once the purge freed the name."""
    try:
        a.log_stores.CreateLogStore(
            ls.CreateLogStoreRequest(
                log_store=ls.LogStore(region=target.region, project=target.project, name=target.log_store)
            ),
            metadata=a.md,
            timeout=20,
        )
        return True
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "still being purged" in e.details(), e.details()
        return False


def assert_purged(a: Stubs, target: Target, es, s3, prefix: str, bucket: str) -> None:
    assert es_visible(es, prefix, target) == 0
    assert archive_ids(s3, bucket, target) == []
    assert query_ids(Target(a, "", target.project, target.log_store)) == []  # the new LogStore is empty


def test_purge_survives_an_elasticsearch_outage_and_a_kill_9(
    server_factory, dedicated_es, dedicated_s3, record_property
):
    tag = uuid.uuid4().hex[:8]
    prefix, bucket = f"rel{tag}", f"rel-{tag}"
    cfg = backend_settings(dedicated_es, dedicated_s3, tag)
    sp = server_factory(cfg)
    a = Stubs(sp.address, KEY_A)

    # 1. Elasticsearch is killed before the deletion and comes back while the server runs.
    first = create_target(a)
    fill(first, dedicated_es, dedicated_s3, bucket)
    assert es_visible(dedicated_es, prefix, first) > 0
    dedicated_es.down(kill=True)
    delete_all(first)  # answers: the tombstone is committed, the purge waits for Elasticsearch
    with pytest.raises(grpc.RpcError) as e:
        a.log_stores.GetLogStore(
            ls.GetLogStoreRequest(region="bj", project=first.project, name=first.log_store), metadata=a.md, timeout=20
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert not recreate(a, first), "the name must wait for the purge"
    es_boot_s = dedicated_es.start_again()
    t_back = time.monotonic()
    wait_for(lambda: recreate(a, first), "the purge after Elasticsearch came back", 120, 0.5)
    purged_after_es_back_s = time.monotonic() - t_back
    assert_purged(a, first, dedicated_es, dedicated_s3, prefix, bucket)

    # 2. The server is killed (SIGKILL) while a purge waits for the S3 server (Elasticsearch's part
    # is done by then); restarted, it resumes.
    second = create_target(a)
    fill(second, dedicated_es, dedicated_s3, bucket)
    dedicated_s3.down(kill=True)
    delete_all(second)
    assert not recreate(a, second)
    wait_for(lambda: es_visible(dedicated_es, prefix, second) == 0, "the Elasticsearch part of the purge", 30, 0.2)
    sp.stop(signal.SIGKILL)
    dedicated_s3.start_again()
    sp2 = server_factory(cfg, data_dir=sp.data_dir)
    t_up = time.monotonic()
    a2 = Stubs(sp2.address, KEY_A)
    wait_for(lambda: recreate(a2, second), "the purge resumed after the restart", 120, 0.5)
    purged_after_restart_s = time.monotonic() - t_up
    assert_purged(a2, second, dedicated_es, dedicated_s3, prefix, bucket)
    log = sp.log_path.read_text(errors="replace") + sp2.log_path.read_text(errors="replace")
    assert "LogStore purge incomplete; will retry" in log and "LogStore purged" in log
    report(
        record_property,
        "purge",
        records_per_log_store=400,
        es_boot_s=round(es_boot_s, 1),
        purged_after_es_back_s=round(purged_after_es_back_s, 1),
        purged_after_restart_s=round(purged_after_restart_s, 1),
    )
    assert sp2.stop() == 0
