"""Accounts are isolated in every RPC, including Ingest, Query and Tail: account B tries to reach
account A's objects by id (flow log id), by LogStore name, by page_token and by resume cursor,
and gets NOT_FOUND / INVALID_ARGUMENT, never A's data. Both accounts have a LogStore of the same
name ("shared"), so a token or cursor replayed by B names a LogStore that B does own.

API keys are never logged: the server runs with log level DEBUG, sees good keys, wrong keys and
keys pasted into request fields, and its log is grepped for them.
"""

from __future__ import annotations

import threading
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import ingest_pb2, query_pb2
from flowlog.v1 import log_store_pb2 as ls
from flowlog.v1 import resource_pb2 as rs
from flowlog.v1 import types_pb2 as t
from tests.reliability.conftest import (
    KEY_A,
    KEY_B,
    Stubs,
    batch,
    create_target,
    query_ids,
    settings,
    start_server,
)
from tests.waiting import wait_for

WRONG_KEY = "wrong-key-" + uuid.uuid4().hex
# A key that shares a long prefix with a real one: the answer must not differ from any wrong key.
NEAR_KEY = KEY_A[:-1] + ("x" if KEY_A[-1] != "x" else "y")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    sp = start_server(
        tmp_path_factory.mktemp("iso"), settings(log_level="DEBUG", limits={"tail_heartbeat_seconds": 0.5})
    )
    yield sp
    assert sp.stop() == 0


@pytest.fixture(scope="module")
def world(srv):
    """A and B each with a LogStore 'shared' (and A with 'only-a'), records in each."""
    a, b = Stubs(srv.address, KEY_A), Stubs(srv.address, KEY_B)
    ta = create_target(a, "shared")
    tb = create_target(b, "shared")
    ta_only = create_target(a, "only-a")
    ids = {}
    for name, target, n in (("a", ta, 300), ("b", tb, 200), ("a_only", ta_only, 50)):
        req, rec_ids = batch(target.flow_log_id, n)
        resp = target.stubs.ingest.Ingest(iter([req]), metadata=target.stubs.md, timeout=30)
        assert resp.accepted == n
        ids[name] = set(rec_ids)
    wait_for(lambda: set(query_ids(ta)) >= ids["a"] and set(query_ids(tb)) >= ids["b"], "records stored", 30, 0.2)
    yield {"a": a, "b": b, "ta": ta, "tb": tb, "ta_only": ta_only, "ids": ids}
    a.close()
    b.close()


def code_of(fn, *args, **kw) -> grpc.StatusCode | None:
    try:
        out = fn(*args, **kw)
        if hasattr(out, "__iter__") and not isinstance(out, (bytes, str)) and not hasattr(out, "DESCRIPTOR"):
            for _ in out:
                pass
        return None
    except grpc.RpcError as e:
        return e.code()


def qreq(store_names, token="", limit=0, project="proj") -> query_pb2.QueryRequest:
    req = query_pb2.QueryRequest(region="bj", project=project, log_stores=store_names, limit=limit, page_token=token)
    req.start_time.FromMilliseconds(0)
    req.end_time.FromMilliseconds(4_000_000_000_000)
    return req


def first_tail_message(stubs: Stubs, req: query_pb2.TailRequest, timeout: float = 10):
    call = stubs.query.Tail(req, metadata=stubs.md, timeout=timeout)
    try:
        return next(iter(call))
    finally:
        call.cancel()


# -- Ingest ---------------------------------------------------------------------------------------


def test_ingest_into_another_accounts_flow_log_is_not_found(world):
    b, ta = world["b"], world["ta"]
    req, _ = batch(ta.flow_log_id, 5)
    with pytest.raises(grpc.RpcError) as e:
        b.ingest.Ingest(iter([req]), metadata=b.md, timeout=20)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
    assert set(query_ids(ta)) == world["ids"]["a"], "nothing reached A's LogStore"


def test_records_naming_another_account_or_flow_log_are_rejected(world):
    """Identity comes from the flow log, never from the record: a record of B's batch that names
    A's account or A's flow log is rejected with its field, and B's other records are kept."""
    b, ta, tb = world["b"], world["ta"], world["tb"]
    req, ids = batch(tb.flow_log_id, 3)
    req.records[0].account_id = "acct-a"
    req.records[1].flow_log_id = ta.flow_log_id
    resp = b.ingest.Ingest(iter([req]), metadata=b.md, timeout=20)
    assert (resp.accepted, resp.rejected) == (1, 2)
    assert {(r.index, r.field) for r in resp.rejections} == {(0, "account_id"), (1, "flow_log_id")}
    wait_for(lambda: ids[2] in set(query_ids(tb)), "B's good record stored", 20, 0.2)
    assert not set(ids[:2]) & set(query_ids(ta)) and not set(ids[:2]) & set(query_ids(tb))
    world["ids"]["b"].add(ids[2])


# -- Query ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["only-a", "proj/only-a", "bj/proj/only-a"])
def test_query_and_tail_of_another_accounts_log_store_are_not_found(world, name):
    b = world["b"]
    assert code_of(b.query.Query, qreq([name]), metadata=b.md, timeout=20) == grpc.StatusCode.NOT_FOUND
    assert code_of(b.query.Query, qreq(["shared", name]), metadata=b.md, timeout=20) == grpc.StatusCode.NOT_FOUND
    tail = query_pb2.TailRequest(region="bj", project="proj", log_stores=[name])
    assert code_of(first_tail_message, b, tail) == grpc.StatusCode.NOT_FOUND


def test_same_named_log_stores_return_only_own_records(world):
    ids = world["ids"]
    a_seen, b_seen = set(query_ids(world["ta"])), set(query_ids(world["tb"]))
    assert a_seen == ids["a"]
    assert b_seen == ids["b"]
    # Filters that name the other account's flow log or records find nothing.
    b_target = world["tb"]
    ta = world["ta"]
    assert query_ids(b_target, filter=f"flow_log_id = '{ta.flow_log_id}'") == []
    some_a = sorted(ids["a"])[0]
    assert query_ids(b_target, filter=f"record_id = '{some_a}'") == []


def test_page_token_of_another_account_is_invalid(world):
    a, b = world["a"], world["b"]
    summary = [
        r.summary for r in a.query.Query(qreq(["shared"], limit=10), metadata=a.md, timeout=20) if r.HasField("summary")
    ][0]
    token = summary.next_page_token
    assert token, "A has more than 10 records: a next_page_token"
    # The same request, B's own LogStore of the same name, A's token.
    assert (
        code_of(b.query.Query, qreq(["shared"], token=token, limit=10), metadata=b.md, timeout=20)
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # A token that names a LogStore B does not have is NOT_FOUND before it is looked at.
    assert (
        code_of(b.query.Query, qreq(["only-a"], token=token, limit=10), metadata=b.md, timeout=20)
        == grpc.StatusCode.NOT_FOUND
    )
    # Sanity: A may use it.
    got = [r for r in a.query.Query(qreq(["shared"], token=token, limit=10), metadata=a.md, timeout=20)]
    assert got[-1].HasField("summary")


def test_tail_cursor_of_another_account_is_invalid(world):
    a, b = world["a"], world["b"]
    req = query_pb2.TailRequest(region="bj", project="proj", log_stores=["shared"])
    first = first_tail_message(a, req)
    assert first.cursor
    stolen = query_pb2.TailRequest(region="bj", project="proj", log_stores=["shared"], resume_cursor=first.cursor)
    assert code_of(first_tail_message, b, stolen) == grpc.StatusCode.INVALID_ARGUMENT
    # Sanity: A resumes with it (a heartbeat at the latest after 0.5 s).
    assert first_tail_message(a, stolen).cursor


def test_tail_of_same_named_log_store_never_sees_the_other_account(world):
    a, b, ta, tb = world["a"], world["b"], world["ta"], world["tb"]
    seen: list[str] = []
    call = b.query.Tail(
        query_pb2.TailRequest(region="bj", project="proj", log_stores=["shared"]), metadata=b.md, timeout=30
    )

    live = threading.Event()

    def consume():
        try:
            for resp in call:
                live.set()  # the first message (a heartbeat when idle): the tail is live
                seen.extend(r.record_id for r in resp.batch.records)
        except grpc.RpcError:
            pass

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    assert live.wait(30), "B's tail sent no first message within 30 s"
    a_new, b_new = set(), set()
    for _ in range(3):
        req, ids = batch(ta.flow_log_id, 100)
        assert a.ingest.Ingest(iter([req]), metadata=a.md, timeout=20).accepted == 100
        a_new |= set(ids)
        req, ids = batch(tb.flow_log_id, 10)
        assert b.ingest.Ingest(iter([req]), metadata=b.md, timeout=20).accepted == 10
        b_new |= set(ids)
    # A's batches were stored before B's last one, and a tail delivers in storage order: had any of
    # A's records reached B's tail, they would be in `seen` by the time all of B's are.
    wait_for(lambda: b_new <= set(seen), "B's tail receiving B's records", 20, 0.2)
    call.cancel()
    th.join(5)
    world["ids"]["a"] |= a_new
    world["ids"]["b"] |= b_new
    assert not set(seen) & a_new, "B's tail received A's records"
    assert set(seen) <= world["ids"]["b"]


# -- everything else by id / name -------------------------------------------------------------------


def test_other_accounts_objects_are_not_found_everywhere(world):
    a, b, ta = world["a"], world["b"], world["ta"]
    md, nf = b.md, grpc.StatusCode.NOT_FOUND
    fid = ta.flow_log_id
    assert code_of(b.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id=fid), metadata=md, timeout=20) == nf
    assert code_of(b.flow_logs.DeleteFlowLog, fl.DeleteFlowLogRequest(id=fid), metadata=md, timeout=20) == nf
    upd = fl.UpdateFlowLogRequest(
        flow_log=fl.FlowLog(id=fid, description="mine now"), update_mask=field_mask_pb2.FieldMask(paths=["description"])
    )
    assert code_of(b.flow_logs.UpdateFlowLog, upd, metadata=md, timeout=20) == nf
    assert fid not in {
        f.id
        for f in b.flow_logs.ListFlowLogs(fl.ListFlowLogsRequest(page_size=1000), metadata=md, timeout=20).flow_logs
    }
    key = dict(region="bj", project="proj", name="only-a")
    assert code_of(b.log_stores.GetLogStore, ls.GetLogStoreRequest(**key), metadata=md, timeout=20) == nf
    assert code_of(b.log_stores.DeleteLogStore, ls.DeleteLogStoreRequest(**key), metadata=md, timeout=20) == nf
    upd_ls = ls.UpdateLogStoreRequest(
        log_store=ls.LogStore(retention_days=1, **key), update_mask=field_mask_pb2.FieldMask(paths=["retention_days"])
    )
    assert code_of(b.log_stores.UpdateLogStore, upd_ls, metadata=md, timeout=20) == nf
    assert "only-a" not in {
        s.name
        for s in b.log_stores.ListLogStores(ls.ListLogStoresRequest(page_size=1000), metadata=md, timeout=20).log_stores
    }
    # A flow log of B may not deliver into A's LogStore.
    req = fl.CreateFlowLogRequest(
        region="bj",
        name="steal" + uuid.uuid4().hex[:6],
        resource_type=t.RESOURCE_TYPE_EIP,
        resource_id="eip-bj-02",
        network_id="vpc-bjdemo",
        traffic_type=t.TRAFFIC_TYPE_ALL,
        existing_log_store=fl.ExistingLogStore(project="proj", name="only-a"),
    )
    assert code_of(b.flow_logs.CreateFlowLog, req, metadata=md, timeout=20) == nf
    # A's registered resource is invisible to B.
    r = a.resources.RegisterResource(
        rs.RegisterResourceRequest(
            resource=rs.Resource(
                type=t.RESOURCE_TYPE_EIP,
                region="bj",
                network_id="vpc-bjdemo",
                name="a-private",
                addresses=["203.0.113.99"],
            )
        ),
        metadata=a.md,
        timeout=20,
    )
    assert code_of(b.resources.GetResource, rs.GetResourceRequest(id=r.id), metadata=md, timeout=20) == nf
    assert code_of(b.resources.DeleteResource, rs.DeleteResourceRequest(id=r.id), metadata=md, timeout=20) == nf
    assert r.id not in {
        x.id
        for x in b.resources.ListResources(rs.ListResourcesRequest(page_size=1000), metadata=md, timeout=20).resources
    }
    # A's data is untouched by all of that.
    assert a.flow_logs.GetFlowLog(fl.GetFlowLogRequest(id=fid), metadata=a.md, timeout=20).description == ""
    assert a.log_stores.GetLogStore(ls.GetLogStoreRequest(**key), metadata=a.md, timeout=20).retention_days != 1


def test_client_token_is_per_account(world):
    """B reusing A's client_token creates B's own flow log; it neither returns A's flow log nor
    tells B that the token exists (ALREADY_EXISTS would be an oracle)."""
    a, b = world["a"], world["b"]
    token = "tok-" + uuid.uuid4().hex

    def req(name):
        return fl.CreateFlowLogRequest(
            region="gz",
            name=name,
            resource_type=t.RESOURCE_TYPE_EIP,
            resource_id="eip-gz-01",
            network_id="vpc-gzdemo",
            traffic_type=t.TRAFFIC_TYPE_ALL,
            client_token=token,
            new_log_store=fl.NewLogStore(project="tok", name="s" + uuid.uuid4().hex[:8]),
        )

    fa = a.flow_logs.CreateFlowLog(req("same"), metadata=a.md, timeout=20)
    fb = b.flow_logs.CreateFlowLog(req("same"), metadata=b.md, timeout=20)
    assert fa.id != fb.id
    assert (
        code_of(b.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id=fa.id), metadata=b.md, timeout=20)
        == grpc.StatusCode.NOT_FOUND
    )


# -- authentication and the log ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        f"Bearer {WRONG_KEY}",
        f"Bearer {NEAR_KEY}",
        f"Bearer {KEY_A[:8]}",
        f"Basic {KEY_A}",
        KEY_A,
        "Bearer ",
        f"Bearer {KEY_A} extra",
    ],
)
def test_missing_or_wrong_keys_are_unauthenticated_in_every_service(srv, world, header):
    stubs = Stubs(srv.address, None)
    md = (("authorization", header),) if header is not None else ()
    ta = world["ta"]
    tail = query_pb2.TailRequest(region="bj", project="proj", log_stores=["shared"])
    calls = [
        lambda: stubs.flow_logs.GetFlowLog(fl.GetFlowLogRequest(id=ta.flow_log_id), metadata=md, timeout=10),
        lambda: stubs.resources.ListResources(rs.ListResourcesRequest(), metadata=md, timeout=10),
        lambda: stubs.log_stores.ListLogStores(ls.ListLogStoresRequest(), metadata=md, timeout=10),
        lambda: list(stubs.query.Query(qreq(["shared"]), metadata=md, timeout=10)),
        lambda: next(iter(stubs.query.Tail(tail, metadata=md, timeout=10))),
        lambda: stubs.ingest.Ingest(iter([batch(ta.flow_log_id, 1)[0]]), metadata=md, timeout=10),
    ]
    messages = set()
    try:
        for call in calls:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (header, e.value.details())
            assert KEY_A not in (e.value.details() or "") and WRONG_KEY not in (e.value.details() or "")
            messages.add(e.value.details())
    finally:
        stubs.close()
    assert len(messages) == 1, f"one answer per kind of mistake, whatever the RPC: {messages}"


def test_wrong_keys_get_the_same_answer_whatever_their_prefix(srv):
    """No oracle: a key sharing 0, 8 or all but one characters with a real key gets the same
    status and message."""
    answers = set()
    for key in (WRONG_KEY, KEY_A[:8] + "0" * (len(KEY_A) - 8), NEAR_KEY, KEY_B[:-1] + "!"):
        stubs = Stubs(srv.address, key)
        try:
            stubs.resources.ListResources(rs.ListResourcesRequest(), metadata=stubs.md, timeout=10)
            pytest.fail("a wrong key was accepted")
        except grpc.RpcError as e:
            answers.add((e.code(), e.details()))
        finally:
            stubs.close()
    assert len(answers) == 1, answers


def test_api_keys_are_never_logged(srv, world):
    """Runs last in this module (pytest keeps file order): by now the server has seen both keys
    on hundreds of calls, wrong keys, and keys pasted into request fields (which the server may
    quote in error messages - that is the caller's own text, but it must not reach the log)."""
    a = world["a"]
    # Keys pasted into fields the server validates and may quote back.
    for bad in (KEY_B, WRONG_KEY):
        for fn, req in (
            (a.flow_logs.GetFlowLog, fl.GetFlowLogRequest(id=bad)),
            (a.log_stores.GetLogStore, ls.GetLogStoreRequest(region="bj", project="proj", name=bad)),
        ):
            code_of(fn, req, metadata=a.md, timeout=10)
        code_of(a.query.Query, qreq(["shared"], token=bad), metadata=a.md, timeout=10)
        code_of(
            lambda: list(
                a.query.Query(
                    query_pb2.QueryRequest(
                        region="bj", project="proj", log_stores=["shared"], filter=f"resource_id = '{bad}' AND ("
                    ),
                    metadata=a.md,
                    timeout=10,
                )
            )
        )
        code_of(a.ingest.Ingest, iter([ingest_pb2.IngestRequest(flow_log_id=bad)]), metadata=a.md, timeout=10)
    # Every call above has been answered, and the server logs while handling a call, before it answers.
    log = srv.log_path.read_text(errors="replace")
    assert "DEBUG" in log, "the server ran at DEBUG level"
    for secret in (KEY_A, KEY_B, WRONG_KEY, NEAR_KEY):
        assert secret not in log, f"an API key ({secret[:6]}...) appears in the server log"
        assert secret[:16] not in log, "a recognisable part of an API key appears in the server log"
