"""The API as JSON over HTTP (Connect protocol) against a real server: auth, error mapping, every
RPC reachable, streaming Query and Tail (with resume), and the same answers as gRPC."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2

from flowlog.v1 import query_pb2
from tests.e2e.conftest import KEY_A, KEY_B, Stubs
from tests.e2e.console_support import HttpError, Stream, start_console_server, unary
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    cs = start_console_server(tmp_path_factory.mktemp("http-api"), {"flow_log_quota": 3})
    yield cs
    assert cs.grpc.stop() == 0, cs.grpc.log_tail()


def new_flow_log(base: str, key: str, project: str = "web", store: str | None = None, **kw) -> dict:
    body = {
        "region": "bj",
        "name": "h" + uuid.uuid4().hex[:8],
        "resourceType": "RESOURCE_TYPE_EIP",
        "resourceId": "eip-bj-01",
        "networkId": "vpc-bjdemo",
        "trafficType": "TRAFFIC_TYPE_ALL",
        "newLogStore": {"project": project, "name": store or "s" + uuid.uuid4().hex[:8]},
        **kw,
    }
    return unary(base, "FlowLogService/CreateFlowLog", body, key)


def test_no_key_or_a_wrong_key_is_401_unauthenticated(console):
    for key in (None, "not-a-key-of-anyone-0000"):
        with pytest.raises(HttpError) as e:
            unary(console.base, "ResourceService/ListResources", {}, key)
        assert e.value.status == 401 and e.value.code == "unauthenticated"
        assert "key" in e.value.body["message"].lower()


def test_the_key_is_checked_before_the_body_is_parsed(console):
    junk = b"{" * 1_000_000  # not JSON: parsing it would be INVALID_ARGUMENT
    with pytest.raises(HttpError) as e:
        unary(console.base, "FlowLogService/CreateFlowLog", {}, None, raw=junk)
    assert e.value.status == 401 and e.value.code == "unauthenticated"
    with pytest.raises(HttpError) as e:
        unary(console.base, "FlowLogService/CreateFlowLog", {}, KEY_A, raw=junk)
    assert e.value.status == 400 and e.value.code == "invalid_argument"


def test_unary_answers_as_grpc_does(console):
    got = unary(console.base, "ResourceService/ListResources", {"region": "gz", "pageSize": 1000}, KEY_A)
    stubs = Stubs(console.grpc.address, KEY_A)
    try:
        from flowlog.v1 import resource_pb2

        want = stubs.resources.ListResources(
            resource_pb2.ListResourcesRequest(region="gz", page_size=1000), metadata=stubs.md, timeout=20
        )
    finally:
        stubs.close()
    assert [r["id"] for r in got["resources"]] == [r.id for r in want.resources]
    assert got["resources"][0]["type"].startswith("RESOURCE_TYPE_")  # enums by name


def test_invalid_argument_is_400_with_each_field_named(console):
    with pytest.raises(HttpError) as e:
        unary(
            console.base,
            "FlowLogService/CreateFlowLog",
            {"region": "bj", "name": "1bad", "description": "x" * 201},
            KEY_A,
        )
    assert e.value.status == 400 and e.value.code == "invalid_argument"
    fields = e.value.violations()
    assert {"name", "description", "traffic_type", "resource_id"} <= set(fields), fields
    assert "200" in fields["description"]


def test_bad_json_names_the_field(console):
    with pytest.raises(HttpError) as e:
        unary(console.base, "FlowLogService/CreateFlowLog", {"region": "bj", "trafficType": "TRAFFIC_TYPE_NOPE"}, KEY_A)
    assert e.value.status == 400 and e.value.code == "invalid_argument"
    assert "trafficType" in json.dumps(e.value.body) or "traffic_type" in json.dumps(e.value.body)
    with pytest.raises(HttpError) as e:
        unary(console.base, "FlowLogService/CreateFlowLog", {}, KEY_A, raw=b"{not json")
    assert e.value.status == 400 and e.value.code == "invalid_argument"


def test_not_found_404_other_account_sees_nothing(console):
    fl = new_flow_log(console.base, KEY_A)
    try:
        assert unary(console.base, "FlowLogService/GetFlowLog", {"id": fl["id"]}, KEY_A)["name"] == fl["name"]
        with pytest.raises(HttpError) as e:
            unary(console.base, "FlowLogService/GetFlowLog", {"id": fl["id"]}, KEY_B)
        assert e.value.status == 404 and e.value.code == "not_found"
    finally:
        unary(console.base, "FlowLogService/DeleteFlowLog", {"id": fl["id"]}, KEY_A)


def test_quota_is_429_with_quota_failure(console):
    made = []
    try:
        for _ in range(3):
            made.append(new_flow_log(console.base, KEY_B)["id"])
        with pytest.raises(HttpError) as e:
            new_flow_log(console.base, KEY_B)
        assert e.value.status == 429 and e.value.code == "resource_exhausted"
        types = [d["type"] for d in e.value.body.get("details", [])]
        assert "google.rpc.QuotaFailure" in types
    finally:
        for fid in made:
            unary(console.base, "FlowLogService/DeleteFlowLog", {"id": fid}, KEY_B)


def test_protocol_errors(console):
    with pytest.raises(HttpError) as e:
        unary(console.base, "NoSuchService/Nope", {}, KEY_A)
    assert e.value.status == 501 and e.value.code == "unimplemented"
    with pytest.raises(HttpError) as e:
        unary(console.base, "ResourceService/ListResources", {}, KEY_A, content_type="text/plain")
    assert e.value.status == 415
    # A streaming RPC called as unary JSON is told which content type it takes.
    with pytest.raises(HttpError) as e:
        unary(console.base, "QueryService/Query", {}, KEY_A)
    assert e.value.status == 415 and "application/connect+json" in e.value.body["message"]


def test_update_mask_and_delete_keep_the_log_store(console):
    store = "keep" + uuid.uuid4().hex[:6]
    fl = new_flow_log(console.base, KEY_A, store=store)
    up = unary(
        console.base,
        "FlowLogService/UpdateFlowLog",
        {"flowLog": {"id": fl["id"], "state": "FLOW_LOG_STATE_PAUSED", "description": "x"}, "updateMask": "state"},
        KEY_A,
    )
    assert up["state"] == "FLOW_LOG_STATE_PAUSED" and up.get("description", "") == ""
    assert unary(console.base, "FlowLogService/DeleteFlowLog", {"id": fl["id"]}, KEY_A) == {}
    got = unary(console.base, "LogStoreService/GetLogStore", {"region": "bj", "project": "web", "name": store}, KEY_A)
    assert got["name"] == store


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_streaming_query_matches_grpc_and_errors_end_the_stream(console):
    store = "q" + uuid.uuid4().hex[:8]
    fl = new_flow_log(console.base, KEY_A, project="qp", store=store)
    start = datetime.now(UTC) - timedelta(minutes=5)
    scope = {"region": "bj", "project": "qp", "logStores": [store]}
    stubs = Stubs(console.grpc.address, KEY_A)
    try:

        def grpc_ids():
            end = datetime.now(UTC) + timedelta(minutes=5)
            req = query_pb2.QueryRequest(
                region="bj",
                project="qp",
                log_stores=[store],
                limit=1000,
                start_time=timestamp_pb2.Timestamp(seconds=int(start.timestamp())),
                end_time=timestamp_pb2.Timestamp(seconds=int(end.timestamp())),
            )
            ids = []
            for resp in stubs.query.Query(req, metadata=stubs.md, timeout=30):
                ids += [r.record_id for r in resp.batch.records]
            return ids, end

        wait_for(lambda: len(grpc_ids()[0]) >= 5, "5 records queryable over gRPC", 60, 0.2)
        unary(
            console.base,
            "FlowLogService/UpdateFlowLog",
            {"flowLog": {"id": fl["id"], "state": "FLOW_LOG_STATE_PAUSED"}, "updateMask": "state"},
            KEY_A,
        )
        _, end = grpc_ids()  # after the pause no new window starts

        def http_query() -> tuple[list[dict], dict | None]:
            s = Stream(
                console.http_port,
                "QueryService/Query",
                {**scope, "startTime": _ts(start), "endTime": _ts(end), "limit": 1000},
                KEY_A,
            )
            try:
                assert s.status == 200 and s.content_type.startswith("application/connect+json")
                return list(s), s.end
            finally:
                s.close()

        # Records in flight at the pause may still land: compare reads that agree before and after.
        for _ in range(10):
            before = set(grpc_ids()[0])
            msgs, end_msg = http_query()
            if set(grpc_ids()[0]) == before:
                break
        assert end_msg == {}
        http_ids = [r["recordId"] for m in msgs if "batch" in m for r in m["batch"].get("records", [])]
        summary = [m["summary"] for m in msgs if "summary" in m]
        assert len(summary) == 1 and "summary" in msgs[-1]
        assert set(http_ids) == before and len(http_ids) == len(set(http_ids))
        assert int(summary[0]["matched"]) == len(http_ids)

        s = Stream(
            console.http_port,
            "QueryService/Query",
            {**scope, "startTime": _ts(start), "endTime": _ts(end), "filter": "action = = REJECT"},
            KEY_A,
        )
        try:
            assert list(s) == [] and s.status == 200
        finally:
            s.close()
        err = s.end["error"]
        assert err["code"] == "invalid_argument"
        (detail,) = [d for d in err["details"] if d["type"] == "google.rpc.BadRequest"]
        (v,) = detail["debug"]["fieldViolations"]
        assert v["field"] == "filter" and v["description"].startswith("at position 10")
    finally:
        stubs.close()
        unary(console.base, "FlowLogService/DeleteFlowLog", {"id": fl["id"]}, KEY_A)


def test_tail_streams_live_records_and_resumes_from_its_cursor(console):
    store = "t" + uuid.uuid4().hex[:8]
    fl = new_flow_log(console.base, KEY_A, project="tp", store=store)
    scope = {"region": "bj", "project": "tp", "logStores": [store]}
    try:
        first: list[str] = []
        cursor = ""
        s = Stream(console.http_port, "QueryService/Tail", scope, KEY_A, timeout=60)
        try:
            for msg in s:
                recs = msg.get("batch", {}).get("records", [])
                first += [r["recordId"] for r in recs]
                if recs:
                    cursor = msg["cursor"]
                    break
        finally:
            s.close()
        assert first and cursor
        s = Stream(console.http_port, "QueryService/Tail", {**scope, "resumeCursor": cursor}, KEY_A, timeout=60)
        try:
            for msg in s:
                recs = msg.get("batch", {}).get("records", [])
                if recs:
                    again = [r["recordId"] for r in recs]
                    break
        finally:
            s.close()
        assert again and not set(again) & set(first), "a resumed tail repeats nothing before its cursor"
    finally:
        unary(console.base, "FlowLogService/DeleteFlowLog", {"id": fl["id"]}, KEY_A)


def test_tail_without_key_ends_with_unauthenticated(console):
    s = Stream(console.http_port, "QueryService/Tail", {"region": "bj", "project": "x", "logStores": ["y"]}, None)
    try:
        assert list(s) == []
    finally:
        s.close()
    assert s.end["error"]["code"] == "unauthenticated"


def test_console_page_and_chart_library_are_served_with_a_strict_policy(console):
    with urllib.request.urlopen(console.base + "/", timeout=10) as r:
        html = r.read().decode()
        assert "flowlog" in html and "default-src 'self'" in r.headers["Content-Security-Policy"]
    with urllib.request.urlopen(console.base + "/vendor/chart.umd.min.js", timeout=10) as r:
        assert r.status == 200 and b"Chart" in r.read(4096 * 16)
    for path in ("/../server/config.py", "/app.py", "/vendor/nothing.js"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(console.base + path, timeout=10)
        assert e.value.code == 404


def test_without_a_config_file_the_console_opens_on_demo_flow_logs_with_traffic(tmp_path):
    """`make run` (no config file) turns demo_flow_logs on: the console's first page has flow logs,
    and their LogStores fill with records."""
    cs = start_console_server(tmp_path, {"api_keys": {}, "demo_flow_logs": True})
    try:
        logs = unary(cs.base, "FlowLogService/ListFlowLogs", {}, None)["flowLogs"]
        assert {(f["region"], f["name"]) for f in logs} >= {("bj", "web-frontend"), ("gz", "web-frontend")}
        assert {f["destination"]["project"] for f in logs} == {"sample"}
        start = datetime.now(UTC) - timedelta(minutes=5)

        def records():
            s = Stream(
                cs.http_port,
                "QueryService/Query",
                {
                    "region": "bj",
                    "project": "sample",
                    "logStores": ["web"],
                    "startTime": _ts(start),
                    "endTime": _ts(datetime.now(UTC) + timedelta(minutes=1)),
                },
                None,
            )
            try:
                return [r for m in s if "batch" in m for r in m["batch"].get("records", [])]
            finally:
                s.close()

        wait_for(records, "records in the HTTP Query stream", 60, 0.2)
    finally:
        assert cs.grpc.stop() == 0
    from server.config import load

    assert load(None, env={}).demo_flow_logs and not load(None, env={}).api_keys
