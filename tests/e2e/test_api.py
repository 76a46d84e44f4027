"""The public contract end to end: a real server process, the generated stubs, every status path."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import log_store_pb2 as ls
from flowlog.v1 import resource_pb2 as rs
from flowlog.v1 import types_pb2 as t
from tests.e2e.conftest import Stubs


def call(fn, req, md):
    return fn(req, metadata=md, timeout=20)


def err(fn, req, md) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(req, metadata=md, timeout=20)
    return e.value


def bad_fields(e: grpc.RpcError) -> set[str]:
    st = rpc_status.from_call(e)
    assert st is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    out = set()
    for d in st.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            out |= {v.field for v in br.field_violations}
    return out


def create_req(name=None, region="bj", resource="eip-bj-01", network="vpc-bjdemo", store=None, **kw):
    name = name or "fl-" + uuid.uuid4().hex[:8]
    req = fl.CreateFlowLogRequest(
        region=region,
        name=name,
        resource_type=t.RESOURCE_TYPE_EIP,
        resource_id=resource,
        network_id=network,
        traffic_type=t.TRAFFIC_TYPE_ALL,
        **kw,
    )
    if "existing_log_store" not in kw and "new_log_store" not in kw:
        req.new_log_store.CopyFrom(fl.NewLogStore(project="proj", name=store or "s" + uuid.uuid4().hex[:10]))
    return req


@pytest.fixture
def cleanup(a):
    created: list[str] = []
    yield created
    for fid in created:
        try:
            a.flow_logs.DeleteFlowLog(fl.DeleteFlowLogRequest(id=fid), metadata=a.md, timeout=20)
        except grpc.RpcError:
            pass


def test_demo_inventory_is_there(a):
    resp = call(a.resources.ListResources, rs.ListResourcesRequest(page_size=1000), a.md)
    types = {(r.region, r.type) for r in resp.resources}
    for region in ("bj", "gz"):
        for rt in range(1, 8):
            assert (region, rt) in types


def test_create_get_list_update_delete(a, cleanup):
    f = call(a.flow_logs.CreateFlowLog, create_req(description="web"), a.md)
    cleanup.append(f.id)
    assert f.id.startswith("fl-") and f.state == t.FLOW_LOG_STATE_ACTIVE
    assert call(a.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id=f.id), a.md) == f
    ids = [x.id for x in call(a.flow_logs.ListFlowLogs, fl.ListFlowLogsRequest(region="bj"), a.md).flow_logs]
    assert f.id in ids
    up = call(
        a.flow_logs.UpdateFlowLog,
        fl.UpdateFlowLogRequest(
            flow_log=fl.FlowLog(id=f.id, state=t.FLOW_LOG_STATE_PAUSED, description="paused"),
            update_mask=field_mask_pb2.FieldMask(paths=["state", "description"]),
        ),
        a.md,
    )
    assert up.state == t.FLOW_LOG_STATE_PAUSED and up.description == "paused" and up.name == f.name
    call(a.flow_logs.DeleteFlowLog, fl.DeleteFlowLogRequest(id=f.id), a.md)
    assert err(a.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id=f.id), a.md).code() == grpc.StatusCode.NOT_FOUND
    # rule 8: the LogStore stays
    dest = f.destination
    call(a.log_stores.GetLogStore, ls.GetLogStoreRequest(region="bj", project=dest.project, name=dest.log_store), a.md)


def test_eleventh_flow_log_is_resource_exhausted(a, cleanup):
    existing = len(call(a.flow_logs.ListFlowLogs, fl.ListFlowLogsRequest(region="gz", page_size=100), a.md).flow_logs)
    for _ in range(10 - existing):
        cleanup.append(
            call(
                a.flow_logs.CreateFlowLog, create_req(region="gz", resource="eip-gz-01", network="vpc-gzdemo"), a.md
            ).id
        )
    store = "orphan" + uuid.uuid4().hex[:6]
    e = err(
        a.flow_logs.CreateFlowLog,
        create_req(region="gz", resource="eip-gz-01", network="vpc-gzdemo", store=store),
        a.md,
    )
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    st = rpc_status.from_call(e)
    assert any(d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR) for d in st.details)
    # rule 7: no LogStore left behind
    assert (
        err(a.log_stores.GetLogStore, ls.GetLogStoreRequest(region="gz", project="proj", name=store), a.md).code()
        == grpc.StatusCode.NOT_FOUND
    )


def test_quota_exact_under_50_parallel_creates(b):
    def create(i):
        try:
            return b.flow_logs.CreateFlowLog(create_req(name=f"par{i}", store=f"par{i}"), metadata=b.md, timeout=30).id
        except grpc.RpcError as e:
            return e.code()

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(create, range(50)))
    ids = [r for r in results if isinstance(r, str)]
    assert len(ids) == 10
    assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 40
    listed = b.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(region="bj", page_size=1000), metadata=b.md).flow_logs
    assert len(listed) == 10
    for fid in ids:
        b.flow_logs.DeleteFlowLog(fl.DeleteFlowLogRequest(id=fid), metadata=b.md)


def test_cross_region_log_store_is_failed_precondition(a):
    store = "gz" + uuid.uuid4().hex[:8]
    call(
        a.log_stores.CreateLogStore,
        ls.CreateLogStoreRequest(log_store=ls.LogStore(region="gz", project="proj", name=store)),
        a.md,
    )
    e = err(
        a.flow_logs.CreateFlowLog,
        create_req(existing_log_store=fl.ExistingLogStore(project="proj", name=store, region="gz")),
        a.md,
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_description_201_invalid_200_chinese_ok(a, cleanup):
    e = err(a.flow_logs.CreateFlowLog, create_req(description="a" * 201), a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"description"}
    f = call(a.flow_logs.CreateFlowLog, create_req(description="中" * 200), a.md)
    cleanup.append(f.id)
    assert f.description == "中" * 200


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda r: setattr(r, "name", ""), "name"),
        (lambda r: setattr(r, "name", "x" * 66), "name"),
        (lambda r: setattr(r, "name", "9lives"), "name"),
        (lambda r: setattr(r, "traffic_type", 0), "traffic_type"),
        (lambda r: setattr(r, "traffic_type", 99), "traffic_type"),
        (lambda r: setattr(r, "resource_type", 0), "resource_type"),
        (lambda r: setattr(r, "region", ""), "region"),
        (lambda r: setattr(r, "region", "BJ!"), "region"),
        (lambda r: setattr(r, "network_id", ""), "network_id"),
        (lambda r: r.ClearField("new_log_store"), "destination_choice"),
        (lambda r: setattr(r.new_log_store, "retention_days", 4000), "new_log_store.retention_days"),
        (lambda r: setattr(r, "client_token", "t" * 65), "client_token"),
    ],
)
def test_bad_fields_are_invalid_argument_naming_the_field(a, mutate, field):
    req = create_req()
    mutate(req)
    e = err(a.flow_logs.CreateFlowLog, req, a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_fields(e), e.details()
    assert field.split(".")[0] in e.details()


def test_not_found_paths(a):
    assert err(a.flow_logs.CreateFlowLog, create_req(resource="eip-missing"), a.md).code() == grpc.StatusCode.NOT_FOUND
    assert (
        err(
            a.flow_logs.CreateFlowLog,
            create_req(existing_log_store=fl.ExistingLogStore(project="p", name="nope")),
            a.md,
        ).code()
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        err(a.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id="fl-doesnotexist"), a.md).code()
        == grpc.StatusCode.NOT_FOUND
    )
    e = err(a.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id="bogus id"), a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"id"}
    assert err(a.resources.GetResource, rs.GetResourceRequest(id="eip-zzz"), a.md).code() == grpc.StatusCode.NOT_FOUND


def test_resource_type_region_network_mismatch_is_invalid_argument(a):
    req = create_req()
    req.resource_type = t.RESOURCE_TYPE_NAT_GATEWAY
    e = err(a.flow_logs.CreateFlowLog, req, a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"resource_type"}


def test_client_token_idempotency(a, cleanup):
    token = uuid.uuid4().hex
    req = create_req(client_token=token)
    first = call(a.flow_logs.CreateFlowLog, req, a.md)
    cleanup.append(first.id)
    assert call(a.flow_logs.CreateFlowLog, req, a.md) == first
    req.description = "changed"
    assert err(a.flow_logs.CreateFlowLog, req, a.md).code() == grpc.StatusCode.ALREADY_EXISTS


def test_already_exists_and_failed_precondition(a, cleanup):
    f = call(a.flow_logs.CreateFlowLog, create_req(), a.md)
    cleanup.append(f.id)
    e = err(a.flow_logs.CreateFlowLog, create_req(name=f.name), a.md)
    assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    d = f.destination
    e = err(
        a.log_stores.DeleteLogStore, ls.DeleteLogStoreRequest(region="bj", project=d.project, name=d.log_store), a.md
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    e = err(a.resources.DeleteResource, rs.DeleteResourceRequest(id="eip-bj-01"), a.md)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_auth(server, a):
    anon = Stubs(server.address, None)
    wrong = Stubs(server.address, "wrong-key-wrong-key-wrong")
    try:
        for s in (anon, wrong):
            e = err(s.flow_logs.ListFlowLogs, fl.ListFlowLogsRequest(), s.md)
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        e = err(anon.flow_logs.ListFlowLogs, fl.ListFlowLogsRequest(), (("authorization", "Basic abc"),))
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        anon.close()
        wrong.close()


def test_accounts_are_isolated(a, b, cleanup):
    f = call(a.flow_logs.CreateFlowLog, create_req(), a.md)
    cleanup.append(f.id)
    for fn, req in [
        (b.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id=f.id)),
        (b.flow_logs.DeleteFlowLog, fl.DeleteFlowLogRequest(id=f.id)),
        (
            b.log_stores.GetLogStore,
            ls.GetLogStoreRequest(region="bj", project=f.destination.project, name=f.destination.log_store),
        ),
    ]:
        assert err(fn, req, b.md).code() == grpc.StatusCode.NOT_FOUND
    assert f.id not in [x.id for x in call(b.flow_logs.ListFlowLogs, fl.ListFlowLogsRequest(), b.md).flow_logs]


def test_paging_and_bad_page_token(a):
    project = "pg" + uuid.uuid4().hex[:6]
    for i in range(5):
        call(
            a.log_stores.CreateLogStore,
            ls.CreateLogStoreRequest(log_store=ls.LogStore(region="bj", project=project, name=f"s{i}")),
            a.md,
        )
    names, token = [], ""
    while True:
        resp = call(
            a.log_stores.ListLogStores, ls.ListLogStoresRequest(project=project, page_size=2, page_token=token), a.md
        )
        names += [s.name for s in resp.log_stores]
        token = resp.next_page_token
        if not token:
            break
    assert names == [f"s{i}" for i in range(5)]
    e = err(a.log_stores.ListLogStores, ls.ListLogStoresRequest(project=project, page_token="tampered"), a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"page_token"}


def test_oversized_message_is_refused_and_server_survives(a):
    req = create_req(description="x" * (17 * 1024 * 1024))
    e = err(a.flow_logs.CreateFlowLog, req, a.md)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call(a.resources.ListResources, rs.ListResourcesRequest(page_size=1), a.md).resources


def test_health_and_backends(a):
    from grpc_health.v1 import health_pb2

    for name in ("", "flowlog.v1.FlowLogService", "flowlog.backend.query", "flowlog.backend.archive"):
        resp = a.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name


def test_a_second_server_on_the_same_data_dir_says_so(server, a):
    """The data dir belongs to one server: a second one exits at once with a message naming the
    dir and the holder's pid (not a store's own lock error), and the first keeps serving."""
    import os
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT, free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLOG_")}
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.main",
            "--data-dir",
            str(server.data_dir),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1, second.stderr
    assert (
        f"the data dir {server.data_dir} is in use by another flowlog server (pid {server.proc.pid})" in second.stderr
    ), second.stderr
    assert "Traceback" not in second.stderr
    assert a.resources.ListResources(rs.ListResourcesRequest(page_size=1), metadata=a.md, timeout=10).resources
