"""Aggregate within the server's limits, through gRPC on each query backend (embedded DuckDB and a
real Elasticsearch): an Aggregate still running when limits.aggregate_timeout_seconds runs out,
and one whose answer holds more than limits.aggregate_max_groups groups, are RESOURCE_EXHAUSTED
with a message naming the setting (issue 16, "Bad input").

No clock in the test: the timeout is set far below what any answer over these records can take
(1 ms; the LogStore holds 20,000 records that make 20,000 groups), so the deadline passes while
the backend works whatever the machine's speed. Each backend checks it before it starts, while
the query runs (DuckDB interrupted, an Elasticsearch request timing out) and when the answer
arrives; every one of those ways out must give the same status and message.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from clients.client import FlowLogClient, FlowLogError
from tests.e2e.conftest import KEY_A, ServerProcess, start_server
from tests.e2e.test_records import make_flow_log, pb_record, uid
from tests.waiting import wait_for

RECORDS = 20_000  # distinct (src_addr, src_port) per record: as many groups
BASE = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
MANY_GROUPS = ["src_addr", "dst_addr", "src_port"]


def _server(tmp, backend: str, es_service: dict | None, limits: dict) -> ServerProcess:
    settings: dict = {"generator": {"enabled": False}, "limits": {"aggregate_max_range_days": 0, **limits}}
    if backend == "elasticsearch":
        assert es_service is not None
        settings["query_backend"] = "elasticsearch"
        settings["archive_backend"] = "none"
        settings["elasticsearch"] = {"url": es_service["url"], "index_prefix": "agl" + uuid.uuid4().hex[:6]}
    return start_server(tmp, settings)


def _loaded(sp: ServerProcess) -> tuple[FlowLogClient, str]:
    """A client and a LogStore whose RECORDS records the query backend holds (Ingest answers
    once they are durable in the spool; the query backend gets them just after: waited for)."""
    client = FlowLogClient(sp.address, KEY_A)
    store = uid("agl")
    fl = make_flow_log(client, store)
    resp = client.ingest_records(fl.id, (pb_record(i, BASE) for i in range(RECORDS)), timeout=300)
    assert resp.accepted == RECORDS, resp

    def matched() -> int:
        stream = client.query(
            region="bj", project="proj", log_stores=[store], start=BASE, end=BASE + timedelta(hours=1), limit=1
        )
        list(stream)
        return stream.summary.matched if stream.summary else 0

    wait_for(lambda: matched() == RECORDS, f"the query backend to hold all {RECORDS} records", timeout=120)
    return client, store


def _aggregate(client: FlowLogClient, store: str, **kw) -> None:
    client.aggregate(
        region="bj",
        project="proj",
        log_stores=[store],
        start=BASE - timedelta(minutes=1),
        end=BASE + timedelta(hours=1),
        timeout=120,
        **kw,
    )


@pytest.fixture(scope="module", params=["embedded", "elasticsearch"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def es_if_needed(backend, request) -> dict | None:
    return request.getfixturevalue("es_service") if backend == "elasticsearch" else None


@pytest.fixture(scope="module")
def tiny_timeout(backend, es_if_needed, tmp_path_factory):
    sp = _server(
        tmp_path_factory.mktemp(f"agg-timeout-{backend}"), backend, es_if_needed, {"aggregate_timeout_seconds": 0.001}
    )
    try:
        client, store = _loaded(sp)
        yield client, store
        client.close()
    finally:
        assert sp.stop() == 0, sp.log_tail()


@pytest.fixture(scope="module")
def few_groups(backend, es_if_needed, tmp_path_factory):
    sp = _server(tmp_path_factory.mktemp(f"agg-groups-{backend}"), backend, es_if_needed, {"aggregate_max_groups": 100})
    try:
        client, store = _loaded(sp)
        yield client, store
        client.close()
    finally:
        assert sp.stop() == 0, sp.log_tail()


@pytest.mark.parametrize(
    "request_kw",
    [
        dict(group_by=MANY_GROUPS, limit=10),  # every group on both backends (composite / GROUP BY)
        dict(group_by=["src_addr"], metrics=["sum(bytes)"], limit=10),  # the top N plans
        dict(group_by=["src_addr"], metrics=["count_distinct(src_port)"], limit=10),
        dict(group_by=["action"], interval=60, metrics=["count", "min(start_time)"]),  # time buckets
    ],
    ids=["many-groups", "top-talkers", "count-distinct", "buckets"],
)
def test_out_of_time_while_running_is_resource_exhausted_naming_the_setting(tiny_timeout, request_kw):
    client, store = tiny_timeout
    with pytest.raises(FlowLogError) as err:
        _aggregate(client, store, **request_kw)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert "limits.aggregate_timeout_seconds" in err.value.message, err.value.message


def test_more_groups_than_the_bound_is_resource_exhausted_naming_the_setting(few_groups):
    client, store = few_groups
    for kw in (
        dict(group_by=MANY_GROUPS, limit=1000),  # an answer of 1,000 rows > 100 groups
        dict(group_by=["src_addr"], metrics=["sum(bytes)"], limit=1000),
        dict(group_by=["src_addr", "src_port"], interval=600, limit=500),
    ):
        with pytest.raises(FlowLogError) as err:
            _aggregate(client, store, **kw)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (kw, err.value)
        assert "limits.aggregate_max_groups" in err.value.message, (kw, err.value.message)
    # a top 10 of the same 20,000 groups holds 10: answered under the same bound
    _aggregate(client, store, group_by=MANY_GROUPS, limit=10)
