"""The README's promises, each over gRPC against a real flowlog-server process.

Lists page 50 by default and at most 1000; update masks change exactly the named fields; the
quota settings change the quotas (and name themselves in the QuotaFailure); the region
catalogue refuses unknown regions everywhere; Query takes at most 20 LogStores; page tokens are
bound to the filter and the order, and a real token with a flipped byte is INVALID_ARGUMENT; a
Tail cursor is bound to the region; a Tail that falls behind ends with RESOURCE_EXHAUSTED and
resumes from its cursor without gap or duplicate; FLOWLOG_* environment settings, with flags
over the environment over the file; the retention pass drops whole days on every backend.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import yaml
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from backends.embedded.objects import LocalObjectStore
from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import log_store_pb2 as ls
from flowlog.v1 import query_pb2
from flowlog.v1 import resource_pb2 as rs
from flowlog.v1 import types_pb2 as t
from server.archive import Archive
from server.core.model import LogStoreKey
from server.demo import demo_resources
from tests.e2e.conftest import KEY_A, ROOT, Stubs, free_port, start_server
from tests.reliability.conftest import Target, batch, create_target, query_ids
from tests.waiting import wait_for

DAY_MS = 86_400_000


def rpc_error(fn, req, md, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        result = fn(req, metadata=md, timeout=30, **kw)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)  # a server stream: its error comes while reading
    return e.value


def details(e: grpc.RpcError, cls):
    st = rpc_status.from_call(e)
    out = []
    for d in st.details if st else ():
        if d.Is(cls.DESCRIPTOR):
            m = cls()
            d.Unpack(m)
            out.append(m)
    return out


def bad_fields(e: grpc.RpcError) -> set[str]:
    return {v.field for br in details(e, error_details_pb2.BadRequest) for v in br.field_violations}


def quota_subjects(e: grpc.RpcError) -> list[str]:
    return [v.subject for qf in details(e, error_details_pb2.QuotaFailure) for v in qf.violations]


def new_resource(i: int) -> rs.Resource:
    return rs.Resource(
        id=f"eip-many-{i:05d}",
        type=t.RESOURCE_TYPE_EIP,
        region="bj",
        network_id="vpc-bjdemo",
        name=f"eip {i}",
        addresses=[f"198.18.{i // 250}.{i % 250 + 1}"],
    )


def flow_log_req(name: str, store: str, region: str = "bj") -> fl.CreateFlowLogRequest:
    return fl.CreateFlowLogRequest(
        region=region,
        name=name,
        resource_type=t.RESOURCE_TYPE_EIP,
        resource_id=f"eip-{region}-01",
        network_id=f"vpc-{region}demo",
        traffic_type=t.TRAFFIC_TYPE_ALL,
        new_log_store=fl.NewLogStore(project="proj", name=store),
    )


# -- a server with its own quotas and catalogue ------------------------------------------------------

DEMO = len(demo_resources())
RESOURCES = DEMO + 1006  # enough to list past the 1000 maximum


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    sp = start_server(
        tmp_path_factory.mktemp("tight"),
        {
            "generator": {"enabled": False},
            "regions": ["bj", "gz", "sh"],
            "flow_log_quota": 3,
            "quotas": {"resources_per_account": RESOURCES, "log_stores_per_account": 5},
        },
    )
    s = Stubs(sp.address, KEY_A)
    yield sp, s
    s.close()
    assert sp.stop() == 0, sp.log_tail()


def test_lists_page_50_by_default_and_1000_at_most(tight):
    _, a = tight
    for i in range(RESOURCES - DEMO):
        a.resources.RegisterResource(rs.RegisterResourceRequest(resource=new_resource(i)), metadata=a.md, timeout=30)
    first = a.resources.ListResources(rs.ListResourcesRequest(), metadata=a.md, timeout=30)
    assert len(first.resources) == 50 and first.next_page_token
    big = a.resources.ListResources(rs.ListResourcesRequest(page_size=5000), metadata=a.md, timeout=30)
    assert len(big.resources) == 1000 and big.next_page_token
    rest = a.resources.ListResources(
        rs.ListResourcesRequest(page_size=5000, page_token=big.next_page_token), metadata=a.md, timeout=30
    )
    assert len(rest.resources) == RESOURCES - 1000 and not rest.next_page_token
    ids = [r.id for r in big.resources] + [r.id for r in rest.resources]
    assert len(set(ids)) == RESOURCES and ids[:50] == [r.id for r in first.resources]
    e = rpc_error(a.resources.ListResources, rs.ListResourcesRequest(page_size=-1), a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"page_size"}

    # ... and the resource quota is the setting: the account is full now
    e = rpc_error(a.resources.RegisterResource, rs.RegisterResourceRequest(resource=new_resource(9_999)), a.md)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert any("quotas.resources_per_account" in s for s in quota_subjects(e)), e.details()


def test_quota_settings_change_the_quotas(tight):
    _, a = tight
    tag = uuid.uuid4().hex[:6]
    for i in range(3):  # flow_log_quota: 3 (the older name of quotas.flow_logs_per_region)
        a.flow_logs.CreateFlowLog(flow_log_req(f"q{tag}{i}", f"q{tag}{i}"), metadata=a.md, timeout=30)
    e = rpc_error(a.flow_logs.CreateFlowLog, flow_log_req(f"q{tag}x", f"q{tag}x"), a.md)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum is 3" in e.details()
    assert any("quotas.flow_logs_per_region" in s and "bj" in s for s in quota_subjects(e))
    a.flow_logs.CreateFlowLog(flow_log_req(f"q{tag}gz", f"q{tag}gz", region="gz"), metadata=a.md, timeout=30)
    # quotas.log_stores_per_account: 5, and four exist now (three bj, one gz)
    a.log_stores.CreateLogStore(
        ls.CreateLogStoreRequest(log_store=ls.LogStore(region="sh", project="p", name="five")),
        metadata=a.md,
        timeout=30,
    )
    e = rpc_error(
        a.log_stores.CreateLogStore,
        ls.CreateLogStoreRequest(log_store=ls.LogStore(region="sh", project="p", name="six")),
        a.md,
    )
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert any("quotas.log_stores_per_account" in s for s in quota_subjects(e))


def test_unknown_regions_are_invalid_argument_naming_them(tight):
    _, a = tight
    cases = [
        (a.resources.ListResources, rs.ListResourcesRequest(region="r1"), "region"),
        (
            a.resources.RegisterResource,
            rs.RegisterResourceRequest(
                resource=rs.Resource(
                    id="eip-r1-01",
                    type=t.RESOURCE_TYPE_EIP,
                    region="r1",
                    network_id="vpc-r1",
                    addresses=["198.51.100.1"],
                )
            ),
            "resource.region",
        ),
        (
            a.log_stores.CreateLogStore,
            ls.CreateLogStoreRequest(log_store=ls.LogStore(region="r1", project="p", name="x")),
            "log_store.region",
        ),
        (a.log_stores.GetLogStore, ls.GetLogStoreRequest(region="r1", project="p", name="x"), "region"),
        (a.log_stores.ListLogStores, ls.ListLogStoresRequest(region="r1"), "region"),
        (a.log_stores.DeleteLogStore, ls.DeleteLogStoreRequest(region="r1", project="p", name="x"), "region"),
        (a.flow_logs.CreateFlowLog, flow_log_req("n", "s", region="r1"), "region"),
        (a.flow_logs.ListFlowLogs, fl.ListFlowLogsRequest(region="r1"), "region"),
        (a.query.Query, query_pb2.QueryRequest(region="r1", project="p", log_stores=["x"]), "region"),
        (a.query.Tail, query_pb2.TailRequest(region="r1", project="p", log_stores=["x"]), "region"),
    ]
    for fn, req, field in cases:
        e = rpc_error(fn, req, a.md)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (fn, e.details())
        assert field in bad_fields(e) and "unknown region 'r1'" in e.details() and "bj, gz, sh" in e.details()


# -- the shared default server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sp = start_server(
        tmp_path_factory.mktemp("promises"),
        {"generator": {"enabled": False}, "limits": {"tail_buffer_records": 1000, "tail_heartbeat_seconds": 1}},
    )
    yield sp
    assert sp.stop() == 0, sp.log_tail()


@pytest.fixture
def a(server):
    s = Stubs(server.address, KEY_A)
    yield s
    s.close()


def test_update_masks_change_name_and_traffic_type_only(a):
    tag = uuid.uuid4().hex[:6]
    f = a.flow_logs.CreateFlowLog(flow_log_req(f"m{tag}", f"m{tag}"), metadata=a.md, timeout=30)

    def update(paths, **fields):
        return a.flow_logs.UpdateFlowLog(
            fl.UpdateFlowLogRequest(
                flow_log=fl.FlowLog(id=f.id, **fields), update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            metadata=a.md,
            timeout=30,
        )

    up = update(["name"], name=f"renamed{tag}", traffic_type=t.TRAFFIC_TYPE_DENY, description="ignored")
    assert (up.name, up.traffic_type, up.description) == (f"renamed{tag}", t.TRAFFIC_TYPE_ALL, "")
    up = update(["traffic_type"], name="ignored", traffic_type=t.TRAFFIC_TYPE_DENY)
    assert (up.name, up.traffic_type) == (f"renamed{tag}", t.TRAFFIC_TYPE_DENY)
    up = update(["flow_log.name", "flow_log.traffic_type"], name=f"both{tag}", traffic_type=t.TRAFFIC_TYPE_ALLOW)
    assert (up.name, up.traffic_type) == (f"both{tag}", t.TRAFFIC_TYPE_ALLOW)
    got = a.flow_logs.GetFlowLog(fl.GetFlowLogRequest(id=f.id), metadata=a.md, timeout=30)
    assert (got.name, got.traffic_type, got.resource_id, got.state) == (
        f"both{tag}",
        t.TRAFFIC_TYPE_ALLOW,
        f.resource_id,
        f.state,
    )
    for paths in (["resource_id"], [], ["traffic_type"]):
        e = rpc_error(
            a.flow_logs.UpdateFlowLog,
            fl.UpdateFlowLogRequest(
                flow_log=fl.FlowLog(id=f.id, traffic_type=0), update_mask=field_mask_pb2.FieldMask(paths=paths)
            ),
            a.md,
        )
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(e) == ({"flow_log.traffic_type"} if paths == ["traffic_type"] else {"update_mask"})


def _query(target: Target, **kw) -> query_pb2.QueryRequest:
    kw.setdefault("log_stores", [target.log_store])
    req = query_pb2.QueryRequest(region=target.region, project=target.project, **kw)
    req.start_time.FromMilliseconds(0)
    req.end_time.FromMilliseconds(4_000_000_000_000)
    return req


def _summary(stubs: Stubs, req) -> query_pb2.QuerySummary:
    return [r for r in stubs.query.Query(req, metadata=stubs.md, timeout=30) if r.HasField("summary")][0].summary


def _flip(token: str, index: int) -> str:
    c = token[index]
    return token[:index] + ("A" if c != "A" else "B") + token[index + 1 :]


def test_query_takes_at_most_20_log_stores(a):
    project = "many" + uuid.uuid4().hex[:6]
    for i in range(21):
        a.log_stores.CreateLogStore(
            ls.CreateLogStoreRequest(log_store=ls.LogStore(region="bj", project=project, name=f"s{i}")),
            metadata=a.md,
            timeout=30,
        )
    target = Target(a, "", project, "s0")
    ok = _summary(a, _query(target, log_stores=[f"s{i}" for i in range(20)]))
    assert ok.returned == 0
    e = rpc_error(a.query.Query, _query(target, log_stores=[f"s{i}" for i in range(21)]), a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"log_stores"}
    assert "at most 20" in e.details()


def test_page_tokens_are_bound_to_filter_and_order_and_a_flipped_byte_is_refused(a):
    target = create_target(a)
    msg, ids = batch(target.flow_log_id, 30)
    assert a.ingest.Ingest(iter([msg]), metadata=a.md, timeout=30).accepted == 30
    wait_for(lambda: set(ids) <= set(query_ids(target)), "records searchable", 30, 0.2)
    flt = "dst_port IN (22, 443, 80, 53)"
    token = _summary(a, _query(target, limit=5, filter=flt, order=query_pb2.ORDER_OLDEST_FIRST)).next_page_token
    assert token
    same = _summary(a, _query(target, limit=5, filter=flt, order=query_pb2.ORDER_OLDEST_FIRST, page_token=token))
    assert same.returned == 5
    for other in (
        dict(filter="dst_port = 22", order=query_pb2.ORDER_OLDEST_FIRST),
        dict(filter=flt, order=query_pb2.ORDER_NEWEST_FIRST),
        dict(filter=flt),
    ):  # the default order is newest first
        e = rpc_error(a.query.Query, _query(target, limit=5, page_token=token, **other), a.md)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"page_token"}, other
    body, mac = token.split(".")
    for bad in (_flip(token, len(body) // 2), _flip(token, len(body) + 1 + len(mac) // 2), token[:-2], body):
        e = rpc_error(
            a.query.Query, _query(target, limit=5, filter=flt, order=query_pb2.ORDER_OLDEST_FIRST, page_token=bad), a.md
        )
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"page_token"}, bad
    # list tokens: bound to the list's filters too, and a flipped byte is refused
    for i in range(3):
        a.log_stores.CreateLogStore(
            ls.CreateLogStoreRequest(log_store=ls.LogStore(region="gz", project=target.project, name=f"gzpage{i}")),
            metadata=a.md,
            timeout=30,
        )
    page = a.log_stores.ListLogStores(ls.ListLogStoresRequest(region="gz", page_size=1), metadata=a.md, timeout=30)
    assert page.next_page_token
    for req in (
        ls.ListLogStoresRequest(region="bj", page_size=1, page_token=page.next_page_token),
        ls.ListLogStoresRequest(region="gz", page_size=1, page_token=_flip(page.next_page_token, 3)),
    ):
        e = rpc_error(a.log_stores.ListLogStores, req, a.md)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"page_token"}


def _tail_request(target: Target, region: str | None = None, **kw) -> query_pb2.TailRequest:
    return query_pb2.TailRequest(
        region=region or target.region, project=target.project, log_stores=[target.log_store], **kw
    )


def test_tail_cursor_is_bound_to_the_region(a):
    target = create_target(a)
    a.log_stores.CreateLogStore(
        ls.CreateLogStoreRequest(log_store=ls.LogStore(region="gz", project=target.project, name=target.log_store)),
        metadata=a.md,
        timeout=30,
    )
    stream = a.query.Tail(_tail_request(target), metadata=a.md, timeout=30)
    cursor = next(iter(stream)).cursor  # the first heartbeat (1 s)
    stream.cancel()
    resumed = a.query.Tail(_tail_request(target, resume_cursor=cursor), metadata=a.md, timeout=30)
    assert next(iter(resumed)).cursor
    resumed.cancel()
    e = rpc_error(a.query.Tail, _tail_request(target, region="gz", resume_cursor=cursor), a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"resume_cursor"}
    e = rpc_error(a.query.Tail, _tail_request(target, resume_cursor=_flip(cursor, len(cursor) // 3)), a.md)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and bad_fields(e) == {"resume_cursor"}


def test_a_slow_tail_ends_with_resource_exhausted_and_resumes_without_gap_or_duplicate(server, a):
    """limits.tail_buffer_records is 1000 on this server; the client opens a Tail and does not
    read while 40,000 records are stored, then reads: the records up to the overflow, then
    RESOURCE_EXHAUSTED naming the cursor; resuming with it gives the rest, each record once."""
    target = create_target(a)
    before = server.log_path.read_text(errors="replace").count("tail subscriber overflowed")
    stream = a.query.Tail(_tail_request(target), metadata=a.md, timeout=120)
    first = next(iter(stream))  # the tail is open (a heartbeat); from now on nobody reads it
    sent: list[str] = []
    for _ in range(20):
        msg, ids = batch(target.flow_log_id, 2000)
        assert a.ingest.Ingest(iter([msg]), metadata=a.md, timeout=60).accepted == 2000
        sent.extend(ids)
    wait_for(
        lambda: server.log_path.read_text(errors="replace").count("tail subscriber overflowed") > before,
        "the tail's buffer overflowing",
        60,
        0.2,
    )
    got: list[str] = []
    with pytest.raises(grpc.RpcError) as e:
        for resp in stream:
            got.extend(r.record_id for r in resp.batch.records)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "fell behind" in e.value.details()
    cursor = re.search(r"resume_cursor=(\S+)", e.value.details()).group(1)
    assert first.cursor and len(got) < len(sent)
    resumed = a.query.Tail(_tail_request(target, resume_cursor=cursor), metadata=a.md, timeout=120)
    for resp in resumed:
        got.extend(r.record_id for r in resp.batch.records)
        if len(got) >= len(sent):
            break
    resumed.cancel()
    assert len(got) == len(set(got)), "a record came twice"
    assert sorted(got) == sorted(sent), "a record is missing"


# -- environment and flags ----------------------------------------------------------------------------


def test_flowlog_environment_settings_and_their_precedence(tmp_path):
    """flags > FLOWLOG_* environment > file: the file says one port, the environment another and
    the flag a third (the server listens on the flag's); a setting only the environment gives
    (FLOWLOG_REGIONS, FLOWLOG_QUOTAS_FLOW_LOGS_PER_REGION) overrides the file's."""
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{file_port}",
                "data_dir": str(tmp_path / "file-data"),
                "demo": True,
                "api_keys": {KEY_A: "acct-a"},
                "regions": ["bj"],
                "flow_log_quota": 5,
                "generator": {"enabled": False},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLOG_")}
    env.update(
        FLOWLOG_LISTEN=f"127.0.0.1:{env_port}",
        FLOWLOG_DATA_DIR=str(tmp_path / "env-data"),
        FLOWLOG_REGIONS="bj,gz,sh",
        FLOWLOG_FLOW_LOG_QUOTA="2",
    )
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.main", "--config", str(cfg), "--listen", f"127.0.0.1:{flag_port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        a = Stubs(f"127.0.0.1:{flag_port}", KEY_A)

        def serving():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return (
                    a.health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
            except grpc.RpcError:
                return False

        wait_for(serving, "the server on the flag's port", 60, 0.2)
        assert (tmp_path / "env-data" / "metadata.db").exists() and not (tmp_path / "file-data").exists()
        for port in (file_port, env_port):  # nothing listens there
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
        a.log_stores.CreateLogStore(
            ls.CreateLogStoreRequest(log_store=ls.LogStore(region="sh", project="p", name="x")),
            metadata=a.md,
            timeout=30,
        )
        for i in range(2):
            a.flow_logs.CreateFlowLog(flow_log_req(f"env{i}", f"env{i}"), metadata=a.md, timeout=30)
        e = rpc_error(a.flow_logs.CreateFlowLog, flow_log_req("env2", "env2"), a.md)
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "maximum is 2" in e.details()
        a.close()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


# -- retention -------------------------------------------------------------------------------------


def _archive_for(kind: str, sp, request) -> Archive:
    if kind == "embedded":
        return Archive(LocalObjectStore(Path(sp.data_dir) / "archive"))
    from backends.minio.objects import S3ObjectStore

    m = request.getfixturevalue("minio_service")
    cfg = yaml.safe_load(Path(sp.config_path).read_text())["minio"]
    return Archive(
        S3ObjectStore(
            m["endpoint"], m["access_key"], m["secret_key"], cfg["bucket"], region=m.get("region", "us-east-1")
        )
    )


@pytest.mark.parametrize("kind", ["embedded", "elasticsearch+s3"])
def test_the_retention_pass_drops_whole_days_on_every_backend(tmp_path, request, kind):
    settings = {
        "generator": {"enabled": False},
        "retention_interval_seconds": 1,
        "pipeline": {"archive_max_age_seconds": 1.0},
    }
    if kind != "embedded":
        es, m = request.getfixturevalue("es_service"), request.getfixturevalue("minio_service")
        tag = uuid.uuid4().hex[:8]
        settings.update(
            query_backend="elasticsearch",
            archive_backend="minio",
            elasticsearch={"url": es["url"], "index_prefix": f"ret{tag}", "sweep_interval_s": 0},
            minio={
                "endpoint": m["endpoint"],
                "access_key": m["access_key"],
                "secret_key": m["secret_key"],
                "bucket": f"ret-{tag}",
                "region": m.get("region", "us-east-1"),
            },
        )
    sp = start_server(tmp_path, settings)
    a = Stubs(sp.address, KEY_A)
    archive = _archive_for(kind, sp, request)
    try:
        target = create_target(a, retention_days=3650)
        now = time.time_ns() // 1_000_000
        today = now - now % DAY_MS
        kept: set[str] = set()
        everything: set[str] = set()
        for days_ago in (0, 1, 3, 10):
            start = max(today + 1000, now - 600_000) if days_ago == 0 else today - days_ago * DAY_MS + 3_600_000
            msg, ids = batch(target.flow_log_id, 50, start)
            assert a.ingest.Ingest(iter([msg]), metadata=a.md, timeout=30).accepted == 50
            everything |= set(ids)
            if days_ago <= 1:  # retention 1 day: the UTC days from (today - 1) on stay
                kept |= set(ids)
        key = LogStoreKey(target.region, target.project, target.log_store)

        def archived() -> set[str]:
            return {r.record_id for b in archive.read("acct-a", key, 0, 4_000_000_000_000) for r in b}

        wait_for(lambda: set(query_ids(target)) == everything, "every day stored", 60, 0.2)
        wait_for(lambda: archived() == everything, "every day archived", 60, 0.2)
        a.log_stores.UpdateLogStore(
            ls.UpdateLogStoreRequest(
                log_store=ls.LogStore(
                    region=target.region, project=target.project, name=target.log_store, retention_days=1
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["retention_days"]),
            ),
            metadata=a.md,
            timeout=30,
        )
        wait_for(lambda: set(query_ids(target)) == kept, "the query backend's old days dropped", 60, 0.2)
        wait_for(lambda: archived() == kept, "the archive's old days dropped", 60, 0.2)
        if kind != "embedded":
            from tests.reliability.test_outage import es_request

            es = SimpleNamespace(info=request.getfixturevalue("es_service"))

            def day_indices() -> list[str]:
                return [i["name"] for i in es_request(es, "GET", f"/_resolve/index/ret{tag}-flows-*")["indices"]]

            # The only LogStore of these shared day indices is past retention in the two old
            # ones: the sweep drops them whole, today's and yesterday's stay.
            wait_for(lambda: len(day_indices()) == 2, "the old shared day indices dropped", 60, 0.2)
    finally:
        a.close()
        archive.store.close()
        assert sp.stop() == 0, sp.log_tail()
