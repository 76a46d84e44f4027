"""Hostile input against a real server: random, huge, malformed and deeply nested requests get a
documented status code with a message, and the server keeps serving (issue: reliability)."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import log_store_pb2 as ls
from flowlog.v1 import query_pb2 as q
from flowlog.v1 import resource_pb2 as rs

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
HOSTILE_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from("\x00\u202e\u200f\ufeff\U0001f600流a-_/.:%"), max_size=80),
    st.sampled_from(
        [
            "",
            " ",
            "a" * 10_000,
            "fl-" + "a" * 40,
            "../../etc/passwd",
            "vpc-",
            "::",
            "0.0.0.0/0",
            "'; DROP TABLE flow_logs; --",
            "\x00" * 10,
        ]
    ),
)
INTS = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 7, 8, -1, 2**31 - 1, -(2**31)]))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _expect_documented(fn, req, md):
    try:
        fn(req, metadata=md, timeout=20)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, (e.code(), e.details())
        assert e.details(), "every error carries a message"


@SETTINGS
@given(
    name=HOSTILE_TEXT,
    region=HOSTILE_TEXT,
    desc=HOSTILE_TEXT,
    rid=HOSTILE_TEXT,
    net=HOSTILE_TEXT,
    rtype=INTS,
    ttype=INTS,
    state=INTS,
    retention=INTS,
    token=HOSTILE_TEXT,
    project=HOSTILE_TEXT,
)
def test_create_flow_log_fuzz(a, name, region, desc, rid, net, rtype, ttype, state, retention, token, project):
    req = fl.CreateFlowLogRequest(
        region=region,
        name=name,
        description=desc,
        resource_id=rid,
        network_id=net,
        resource_type=rtype,
        traffic_type=ttype,
        state=state,
        client_token=token,
        new_log_store=fl.NewLogStore(project=project, name=name, retention_days=retention),
    )
    try:
        resp = a.flow_logs.CreateFlowLog(req, metadata=a.md, timeout=20)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, (e.code(), e.details())
        return
    a.flow_logs.DeleteFlowLog(fl.DeleteFlowLogRequest(id=resp.id), metadata=a.md, timeout=20)


@SETTINGS
@given(region=HOSTILE_TEXT, project=HOSTILE_TEXT, name=HOSTILE_TEXT, size=INTS, token=HOSTILE_TEXT)
def test_log_store_and_list_fuzz(a, region, project, name, size, token):
    _expect_documented(a.log_stores.GetLogStore, ls.GetLogStoreRequest(region=region, project=project, name=name), a.md)
    _expect_documented(
        a.log_stores.ListLogStores,
        ls.ListLogStoresRequest(region=region, project=project, page_size=size, page_token=token),
        a.md,
    )
    _expect_documented(
        a.resources.ListResources,
        rs.ListResourcesRequest(region=region, type=size, network_id=name, page_token=token),
        a.md,
    )
    _expect_documented(a.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id=name), a.md)


@pytest.fixture(scope="module")
def fuzz_store(server):
    from tests.e2e.conftest import KEY_A, Stubs

    s = Stubs(server.address, KEY_A)
    try:
        s.log_stores.CreateLogStore(
            ls.CreateLogStoreRequest(log_store=ls.LogStore(region="bj", project="proj", name="fuzz")),
            metadata=s.md,
            timeout=20,
        )
    finally:
        s.close()
    return "fuzz"


FILTER_BITS = st.sampled_from(
    [
        "(",
        ")",
        "NOT",
        "AND",
        "OR",
        "IN",
        "addr",
        "port",
        "=",
        "!=",
        "<",
        ",",
        "10.0.0.0/8",
        "::1",
        "2001:db8::/32",
        "tcp",
        "REJECT",
        "'x'",
        '"',
        "\x00",
        "\u202e",
        "99999999999999999999",
    ]
)


@SETTINGS
@given(
    filt=st.one_of(
        HOSTILE_TEXT,
        st.lists(FILTER_BITS, max_size=40).map(" ".join),
        st.integers(1, 5000).map(lambda n: "(" * n + "port = 1" + ")" * n),
        st.integers(1, 3000).map(lambda n: "NOT " * n + "port = 1"),
    ),
    limit=INTS,
    token=HOSTILE_TEXT,
    stores=st.lists(HOSTILE_TEXT, max_size=5),
)
def test_query_fuzz(a, fuzz_store, filt, limit, token, stores):
    req = q.QueryRequest(
        region="bj", project="proj", log_stores=stores or [fuzz_store], filter=filt, limit=limit, page_token=token
    )
    req.start_time.FromSeconds(0)
    req.end_time.FromSeconds(4_000_000_000)
    try:
        for _ in a.query.Query(req, metadata=a.md, timeout=20):
            pass
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, (e.code(), e.details())


@pytest.mark.parametrize(
    "method,cls",
    [
        ("/flowlog.v1.FlowLogService/CreateFlowLog", fl.CreateFlowLogRequest),
        ("/flowlog.v1.LogStoreService/GetLogStore", ls.GetLogStoreRequest),
        ("/flowlog.v1.ResourceService/ListResources", rs.ListResourcesRequest),
    ],
)
@pytest.mark.parametrize(
    "payload",
    [b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x03\xc3\x28\x00", bytes(range(256)), b"\x0a\x02\xc3\x28"],
)
def test_garbage_bytes_do_not_hurt(server, a, method, cls, payload):
    """Bytes that are not a valid message are INVALID_ARGUMENT naming the message type; bytes that
    happen to parse (unknown fields are legal protobuf) get an ordinary answer."""
    try:
        cls.FromString(payload)
        valid = True
    except Exception:  # noqa: BLE001 - DecodeError
        valid = False
    raw = a.channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        raw(payload, metadata=a.md, timeout=10)
        assert valid, "an unparseable request must not succeed"
    except grpc.RpcError as e:
        if valid:
            assert e.code() in ALLOWED, (e.code(), e.details())
        else:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
            assert "is not a valid flowlog.v1." in e.details()
    assert a.resources.ListResources(rs.ListResourcesRequest(page_size=1), metadata=a.md, timeout=10).resources


def test_server_still_healthy_after_fuzzing(server, a):
    from grpc_health.v1 import health_pb2

    assert server.proc.poll() is None
    assert a.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
