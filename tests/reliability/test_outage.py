"""Backend outages and backend errors, for real: a flowlog-server on Elasticsearch (query) and an
S3 server (archive) of its own, whose processes these tests kill and start again on the same
port and data dir, or make refuse writes, while a client keeps ingesting.

What must hold: Ingest keeps acknowledging (the durable spool absorbs the outage); the backend's
health (grpc.health.v1, "flowlog.backend.query" / "flowlog.backend.archive") is NOT_SERVING while
it is down and SERVING once it is back; the failure is in the server log; and once the backend is
back every acknowledged record is in it exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
import uuid

import grpc
import pytest

from server.core.model import LogStoreKey
from tests.reliability.conftest import (
    ARCHIVE_HEALTH,
    KEY_A,
    NOT_SERVING,
    QUERY_HEALTH,
    SERVING,
    HealthWatch,
    Ingester,
    Stubs,
    Target,
    check_exactly_once,
    create_target,
    health,
    query_ids,
    report,
    settings,
    wait_delivered,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
ACCOUNT_A = "acct-a"


def backend_settings(es, s3, tag: str) -> dict:
    return settings(
        query_backend="elasticsearch",
        archive_backend="minio",
        elasticsearch={"url": es.info["url"], "index_prefix": f"rel{tag}"},
        minio={
            "endpoint": s3.info["endpoint"],
            "access_key": s3.info["access_key"],
            "secret_key": s3.info["secret_key"],
            "bucket": f"rel-{tag}",
            "region": s3.info.get("region") or "us-east-1",
        },
    )


def archive_ids(s3, bucket: str, target: Target) -> list[str]:
    """Record ids read back from the archive with server.archive.Archive on an S3ObjectStore."""
    from backends.minio.objects import S3ObjectStore
    from server.archive import Archive

    store = S3ObjectStore(
        s3.info["endpoint"],
        s3.info["access_key"],
        s3.info["secret_key"],
        bucket,
        region=s3.info.get("region") or "us-east-1",
    )
    try:
        key = LogStoreKey(target.region, target.project, target.log_store)
        return [r.record_id for b in Archive(store).read(ACCOUNT_A, key, 0, 4_000_000_000_000) for r in b]
    finally:
        store.close()


def es_request(es, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        es.info["url"] + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def _assert_acks_during(books, t0: float, t1: float) -> int:
    n = sum(1 for t in books.ack_times if t0 <= t <= t1)
    assert n > 0, "Ingest stopped acknowledging while the backend was down"
    return n


def _acks_since(books, t0: float) -> int:
    """Ingest calls acknowledged since monotonic time t0."""
    return sum(1 for t in list(books.ack_times) if t >= t0)


def test_elasticsearch_killed_and_restarted(server_factory, dedicated_es, dedicated_s3, record_property):
    tag = uuid.uuid4().hex[:8]
    sp = server_factory(backend_settings(dedicated_es, dedicated_s3, tag))
    a = Stubs(sp.address, KEY_A)
    target = create_target(a)
    ing = Ingester(target, per_message=200, messages=2, pause_s=0.1)
    watch = HealthWatch(a, QUERY_HEALTH, interval_s=0.5)
    ing.start()
    watch.start()
    try:
        wait_for(lambda: len(ing.books.acked) >= 2000, "first acknowledgements", 30, 0.2)
        wait_for(lambda: len(query_ids(target)) > 0, "records searchable in Elasticsearch", 30, 0.2)

        t_down = time.monotonic()
        dedicated_es.down(kill=True)  # kill -9: a crash, not a clean stop
        wait_for(lambda: health(a, QUERY_HEALTH) == NOT_SERVING, "query backend NOT_SERVING", 15, 0.2)
        # A query while Elasticsearch is gone is UNAVAILABLE (retryable), not INTERNAL.
        with pytest.raises(grpc.RpcError) as err:
            query_ids(target, timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        # Down while 30 Ingest calls (12,000 records) are acknowledged, plus Elasticsearch's own boot.
        wait_for(lambda: _acks_since(ing.books, t_down) >= 30, "acknowledgements while Elasticsearch is down", 60, 0.2)
        boot_s = dedicated_es.start_again()  # same port, same data dir
        t_back = time.monotonic()
        # Within a few health intervals, not after the sink's backoff (up to 30 s): the health probe
        # seeing Elasticsearch back makes the sink retry at once.
        wait_for(lambda: health(a, QUERY_HEALTH) == SERVING, "query backend SERVING again", 20, 0.5)
        t_serving = time.monotonic()
        acks_during = _assert_acks_during(ing.books, t_down, t_back)
        wait_for(lambda: _acks_since(ing.books, t_serving) >= 10, "records after the recovery", 60, 0.2)
    finally:
        ing.stop()
        watch.stop()
    books = ing.books
    assert not books.errors, f"Ingest failed during the outage: {books.errors[:5]}"
    assert NOT_SERVING in watch.statuses_between(t_down, t_back)
    assert watch.samples[-1][1] == SERVING

    t0 = time.monotonic()
    stored = wait_delivered(lambda: query_ids(target), books.acked, 60, "Elasticsearch after the outage")
    delivered_s = time.monotonic() - t0
    check_exactly_once(stored, books.acked, books.sent, "Elasticsearch")
    stored_archive = wait_delivered(lambda: archive_ids(dedicated_s3, f"rel-{tag}", target), books.acked, 30, "archive")
    check_exactly_once(stored_archive, books.acked, books.sent, "archive")
    log = sp.log_path.read_text(errors="replace")
    assert "sink write failed; will retry" in log and "sink='query'" in log, "the outage must be in the server log"
    report(
        record_property,
        "es_outage",
        records_acked=len(books.acked),
        acks_during_outage=acks_during,
        outage_s=round(t_back - t_down, 1),
        es_boot_s=round(boot_s, 1),
        serving_after_s=round(t_serving - t_back, 1),
        all_delivered_after_s=round(t_serving - t_back + delivered_s, 1),
    )
    assert sp.stop() == 0


def test_s3_killed_and_restarted(server_factory, dedicated_es, dedicated_s3, record_property):
    tag = uuid.uuid4().hex[:8]
    bucket = f"rel-{tag}"
    sp = server_factory(backend_settings(dedicated_es, dedicated_s3, tag))
    a = Stubs(sp.address, KEY_A)
    target = create_target(a)
    ing = Ingester(target, per_message=200, messages=2, pause_s=0.1)
    watch = HealthWatch(a, ARCHIVE_HEALTH, interval_s=0.5)
    ing.start()
    watch.start()
    try:
        wait_for(lambda: len(ing.books.acked) >= 2000, "first acknowledgements", 30, 0.2)
        wait_for(lambda: len(archive_ids(dedicated_s3, bucket, target)) > 0, "a first archive object", 30, 0.2)

        t_down = time.monotonic()
        dedicated_s3.down(kill=True)
        wait_for(lambda: health(a, ARCHIVE_HEALTH) == NOT_SERVING, "archive NOT_SERVING", 15, 0.2)
        assert health(a, QUERY_HEALTH) == SERVING, "an archive outage must not make the query backend unhealthy"
        # Down while 60 Ingest calls (24,000 records) are acknowledged: past the archive's object age.
        wait_for(lambda: _acks_since(ing.books, t_down) >= 60, "acknowledgements while the archive is down", 90, 0.2)
        t_back = time.monotonic()
        dedicated_s3.start_again()
        wait_for(lambda: health(a, ARCHIVE_HEALTH) == SERVING, "archive SERVING again", 15, 0.5)
        t_serving = time.monotonic()
        acks_during = _assert_acks_during(ing.books, t_down, t_back)
        wait_for(lambda: _acks_since(ing.books, t_serving) >= 10, "records after the recovery", 60, 0.2)
    finally:
        ing.stop()
        watch.stop()
    books = ing.books
    assert not books.errors, f"Ingest failed during the outage: {books.errors[:5]}"
    assert NOT_SERVING in watch.statuses_between(t_down, t_back)

    t0 = time.monotonic()
    stored = wait_delivered(
        lambda: archive_ids(dedicated_s3, bucket, target), books.acked, 60, "archive after the outage"
    )
    delivered_s = time.monotonic() - t0
    check_exactly_once(stored, books.acked, books.sent, "archive")
    check_exactly_once(query_ids(target), books.acked, books.sent, "Elasticsearch")
    log = sp.log_path.read_text(errors="replace")
    assert "sink write failed; will retry" in log and "sink='archive'" in log, "the outage must be in the server log"
    report(
        record_property,
        "s3_outage",
        records_acked=len(books.acked),
        acks_during_outage=acks_during,
        outage_s=round(t_back - t_down, 1),
        serving_after_s=round(t_serving - t_back, 1),
        all_delivered_after_s=round(t_serving - t_back + delivered_s, 1),
    )
    assert sp.stop() == 0


def test_elasticsearch_refuses_writes_then_recovers(server_factory, dedicated_es, dedicated_s3, record_property):
    """The backend is up but returns errors: an index write block on the LogStore's day index
    makes every bulk item fail (403 cluster_block_exception). The records are retried with
    backoff, never dropped, the failure shows in health and in the log, and they are delivered
    once the block is lifted."""
    tag = uuid.uuid4().hex[:8]
    sp = server_factory(backend_settings(dedicated_es, dedicated_s3, tag))
    a = Stubs(sp.address, KEY_A)
    target = create_target(a)
    ing = Ingester(target, per_message=200, messages=2, pause_s=0.1)
    ing.start()
    pattern = f"rel{tag}-flows-*"
    try:
        wait_for(lambda: len(query_ids(target)) > 0, "records in Elasticsearch (the day index exists)", 30, 0.2)
        t_block = time.monotonic()
        es_request(dedicated_es, "PUT", f"/{pattern}/_settings", {"index.blocks.write": True})
        wait_for(lambda: health(a, QUERY_HEALTH) == NOT_SERVING, "query backend NOT_SERVING under the block", 20, 0.2)
        assert health(a, "") == NOT_SERVING, "overall health follows the backends"
        blocked_count = len(query_ids(target))
        wait_for(lambda: _acks_since(ing.books, t_block) >= 30, "acknowledgements while the index is blocked", 60, 0.2)
        assert len(query_ids(target)) == blocked_count, "nothing can be written while the index is blocked"
        es_request(dedicated_es, "PUT", f"/{pattern}/_settings", {"index.blocks.write": None})
        t_unblock = time.monotonic()
        acks_during = _assert_acks_during(ing.books, t_block, t_unblock)
        wait_for(lambda: health(a, QUERY_HEALTH) == SERVING, "query backend SERVING again", 45, 0.5)
        t_serving = time.monotonic()
    finally:
        ing.stop()
    books = ing.books
    assert not books.errors, f"Ingest failed while Elasticsearch refused writes: {books.errors[:5]}"
    stored = wait_delivered(lambda: query_ids(target), books.acked, 60, "Elasticsearch after the block")
    check_exactly_once(stored, books.acked, books.sent, "Elasticsearch")
    log = sp.log_path.read_text(errors="replace")
    assert "cluster_block_exception" in log, "the refusal's reason must be in the server log"
    assert "sink write failed; will retry" in log and "retry_in_s=" in log
    assert "flowlog.backend.query NOT_SERVING" in log, "the health change and its detail must be logged"
    report(
        record_property,
        "es_write_block",
        records_acked=len(books.acked),
        acks_while_blocked=acks_during,
        blocked_s=round(t_unblock - t_block, 1),
        serving_after_unblock_s=round(t_serving - t_unblock, 1),
    )
    assert sp.stop() == 0


def test_spool_bound_refuses_ingestion_during_a_long_outage_then_resumes(
    server_factory, dedicated_es, dedicated_s3, record_property
):
    """A backend down for long: the spool's byte bound (pipeline.max_spool_bytes, tiny here) stops
    ingestion with RESOURCE_EXHAUSTED naming the backend that is behind, instead of growing the
    spool without bound or dropping records; once the backend is back ingestion resumes, and
    every record acknowledged before and after is delivered once."""
    tag = uuid.uuid4().hex[:8]
    bucket = f"rel-{tag}"
    cfg = backend_settings(dedicated_es, dedicated_s3, tag)
    cfg["pipeline"]["max_spool_bytes"] = 512 * 1024
    sp = server_factory(cfg)
    a = Stubs(sp.address, KEY_A)
    target = create_target(a)
    # ~2,000 records/s: both backends keep up with that easily, so only the one that is down
    # builds a backlog (~40 spooled bytes a record: the bound is reached in a few seconds).
    ing = Ingester(target, per_message=400, messages=1, pause_s=0.2, timeout_s=20)
    for _ in range(5):
        assert ing.one_call()
    wait_for(lambda: len(query_ids(target)) >= 2000, "the first records in Elasticsearch", 30, 0.2)
    wait_for(lambda: len(archive_ids(dedicated_s3, bucket, target)) >= 2000, "the first records archived", 30, 0.2)
    dedicated_s3.down(kill=True)
    refused = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not ing.one_call():
            refused = ing.books.errors[-1]
            break
        time.sleep(ing.pause_s)  # pacing the producer at ~2,000 records/s (above): the sleep is the point
    assert refused is not None, "the spool never refused ingestion"
    assert refused[1] == "RESOURCE_EXHAUSTED" and "'archive' backend" in refused[2], refused
    acked_before = len(ing.books.acked)
    assert not ing.one_call(), "still refused while the archive is down"
    dedicated_s3.start_again()
    t0 = time.monotonic()

    def accepted_again():
        return ing.one_call()

    wait_for(accepted_again, "ingestion accepted again after the archive came back", 60, 1.0)
    resumed_s = time.monotonic() - t0
    for _ in range(5):
        assert ing.one_call()
    books = ing.books
    assert {e[1] for e in books.errors} == {"RESOURCE_EXHAUSTED"}
    stored = wait_delivered(lambda: archive_ids(dedicated_s3, bucket, target), books.acked, 60, "archive")
    check_exactly_once(stored, books.acked, books.sent, "archive")
    check_exactly_once(query_ids(target), books.acked, books.sent, "Elasticsearch")
    report(
        record_property,
        "spool_bound",
        acked_before_refusal=acked_before,
        refused_calls=len(books.errors),
        resumed_after_s=round(resumed_s, 1),
        records_acked=len(books.acked),
    )
    assert sp.stop() == 0


def test_sigterm_while_a_backend_is_down_exits_in_bounded_time_and_delivers_after_restart(
    tmp_path, server_factory, dedicated_es, dedicated_s3, record_property
):
    """SIGTERM while the archive is down: the drain cannot finish, so the server gives up after
    its bounded drain time, exits 0, and keeps what it could not deliver in its spool; the next
    start delivers it."""
    tag = uuid.uuid4().hex[:8]
    bucket = f"rel-{tag}"
    cfg = backend_settings(dedicated_es, dedicated_s3, tag)
    data = tmp_path / "data"
    sp = server_factory(cfg, data_dir=data, name="run")
    a = Stubs(sp.address, KEY_A)
    target = create_target(a)
    ing = Ingester(target, per_message=400, messages=1, pause_s=0.1)
    for _ in range(5):
        assert ing.one_call()
    wait_for(lambda: len(archive_ids(dedicated_s3, bucket, target)) >= 2000, "the first records archived", 30, 0.2)
    dedicated_s3.down(kill=True)
    for _ in range(10):
        assert ing.one_call()
    t0 = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    try:
        code = sp.proc.wait(30)
    except subprocess.TimeoutExpired:
        sp.proc.kill()
        pytest.fail("flowlog-server did not exit within 30 s of SIGTERM with a backend down")
    exit_s = time.monotonic() - t0
    assert code == 0, sp.log_tail()
    assert "stay spooled for the next start" in sp.log_path.read_text(errors="replace")
    dedicated_s3.start_again()
    sp2 = server_factory(cfg, data_dir=data, name="run")
    try:
        stored = wait_delivered(lambda: archive_ids(dedicated_s3, bucket, target), ing.books.acked, 60, "archive")
        check_exactly_once(stored, ing.books.acked, ing.books.sent, "archive after restart")
        b = Stubs(sp2.address, KEY_A)
        check_exactly_once(
            query_ids(Target(b, target.flow_log_id, target.project, target.log_store)),
            ing.books.acked,
            ing.books.sent,
            "Elasticsearch after restart",
        )
        report(record_property, "sigterm_backend_down", exit_s=round(exit_s, 1), records_acked=len(ing.books.acked))
    finally:
        assert sp2.stop() == 0
