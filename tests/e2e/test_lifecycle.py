"""Lifecycle changes reach streams already open, against a real flowlog-server (embedded default).

An Ingest stream opened while its flow log is ACTIVE: after UpdateFlowLog pauses the flow log
its next message fails with FAILED_PRECONDITION; after DeleteFlowLog (and DeleteLogStore) with
NOT_FOUND; the records sent before are kept, the refused message's records are never stored,
and a LogStore re-created under the same name starts empty. An open Tail of a deleted
LogStore ends with NOT_FOUND, whether it was receiving records or idle.
"""

from __future__ import annotations

import queue
import threading
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import log_store_pb2 as ls
from flowlog.v1 import query_pb2
from flowlog.v1 import types_pb2 as t
from tests.e2e.conftest import KEY_A, Stubs, start_server
from tests.reliability.conftest import Target, batch, create_target, query_ids
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sp = start_server(
        tmp_path_factory.mktemp("lifecycle"), {"generator": {"enabled": False}, "limits": {"tail_heartbeat_seconds": 1}}
    )
    yield sp
    assert sp.stop() == 0, sp.log_tail()


@pytest.fixture
def a(server):
    s = Stubs(server.address, KEY_A)
    yield s
    s.close()


class OpenIngest:
    """One Ingest stream whose messages the test sends one at a time."""

    _END = object()

    def __init__(self, stubs: Stubs) -> None:
        self._queue: queue.Queue = queue.Queue()
        self.future = stubs.ingest.Ingest.future(self._requests(), metadata=stubs.md, timeout=60)

    def _requests(self):
        while (m := self._queue.get()) is not self._END:
            yield m

    def send(self, message) -> None:
        self._queue.put(message)

    def close(self):
        self._queue.put(self._END)
        return self.future.result(30)

    def error(self) -> grpc.RpcError:
        try:
            self.future.result(30)
        except grpc.RpcError as e:
            return e
        pytest.fail("the stream was expected to fail")


def set_state(stubs: Stubs, flow_log_id: str, state: int) -> None:
    stubs.flow_logs.UpdateFlowLog(
        fl.UpdateFlowLogRequest(
            flow_log=fl.FlowLog(id=flow_log_id, state=state), update_mask=field_mask_pb2.FieldMask(paths=["state"])
        ),
        metadata=stubs.md,
        timeout=20,
    )


def delete_all(target: Target) -> None:
    s = target.stubs
    s.flow_logs.DeleteFlowLog(fl.DeleteFlowLogRequest(id=target.flow_log_id), metadata=s.md, timeout=20)
    s.log_stores.DeleteLogStore(
        ls.DeleteLogStoreRequest(region=target.region, project=target.project, name=target.log_store),
        metadata=s.md,
        timeout=60,
    )


def test_pausing_a_flow_log_fails_the_open_streams_next_message(a):
    target = create_target(a)
    stream = OpenIngest(a)
    first, first_ids = batch(target.flow_log_id, 20)
    stream.send(first)
    wait_for(lambda: set(first_ids) <= set(query_ids(target)), "the first message stored", 30, 0.2)
    set_state(a, target.flow_log_id, t.FLOW_LOG_STATE_PAUSED)
    refused, refused_ids = batch(target.flow_log_id, 20)
    stream.send(refused)
    e = stream.error()
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "PAUSED" in e.details(), e.details()
    # resumed: a new stream is taken again; once its records are searchable (the query backend
    # takes the spool in order) the refused message's records would be there too if spooled
    set_state(a, target.flow_log_id, t.FLOW_LOG_STATE_ACTIVE)
    later, later_ids = batch(target.flow_log_id, 20)
    resp = a.ingest.Ingest(iter([later]), metadata=a.md, timeout=30)
    assert resp.accepted == 20
    wait_for(lambda: set(later_ids) <= set(query_ids(target)), "the later message stored", 30, 0.2)
    stored = set(query_ids(target))
    assert set(first_ids) <= stored and not set(refused_ids) & stored


def test_deleting_the_flow_log_and_its_log_store_fails_the_open_stream_and_orphans_nothing(a):
    target = create_target(a)
    stream = OpenIngest(a)
    first, first_ids = batch(target.flow_log_id, 20)
    stream.send(first)
    wait_for(lambda: set(first_ids) <= set(query_ids(target)), "the first message stored", 30, 0.2)
    delete_all(target)
    stream.send(batch(target.flow_log_id, 20)[0])
    e = stream.error()
    assert e.code() == grpc.StatusCode.NOT_FOUND and target.flow_log_id in e.details(), e.details()
    with pytest.raises(grpc.RpcError) as gone:
        query_ids(target)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    # the same name again, with a new flow log: it sees none of the old records
    again = create_target(a, store=target.log_store)
    new, new_ids = batch(again.flow_log_id, 10)
    assert a.ingest.Ingest(iter([new]), metadata=a.md, timeout=30).accepted == 10
    wait_for(lambda: set(new_ids) <= set(query_ids(again)), "the new LogStore's records", 30, 0.2)
    assert sorted(query_ids(again)) == sorted(new_ids)


def test_only_the_paused_flow_logs_stream_is_refused(a):
    """A change to another flow log re-checks, but does not disturb, an open stream."""
    target, other = create_target(a), create_target(a)
    stream = OpenIngest(a)
    m1, ids1 = batch(target.flow_log_id, 10)
    stream.send(m1)
    wait_for(lambda: set(ids1) <= set(query_ids(target)), "the first message stored", 30, 0.2)
    set_state(a, other.flow_log_id, t.FLOW_LOG_STATE_PAUSED)
    m2, ids2 = batch(target.flow_log_id, 10)
    stream.send(m2)
    assert stream.close().accepted == 20
    assert set(ids1 + ids2) <= set(query_ids(target))


def _tail(stubs: Stubs, target: Target, **kw):
    req = query_pb2.TailRequest(region=target.region, project=target.project, log_stores=[target.log_store], **kw)
    return stubs.query.Tail(req, metadata=stubs.md, timeout=60)


@pytest.mark.parametrize("busy", [True, False], ids=["receiving", "idle"])
def test_an_open_tail_of_a_deleted_log_store_ends_with_not_found(a, busy):
    target = create_target(a)
    tail = _tail(a, target)
    events: list = []
    ended: list = []

    def follow():
        try:
            for resp in tail:
                events.append(resp)
        except grpc.RpcError as e:
            ended.append(e)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    if busy:
        m, ids = batch(target.flow_log_id, 10)
        assert a.ingest.Ingest(iter([m]), metadata=a.md, timeout=30).accepted == 10
        wait_for(
            lambda: sum(len(e.batch.records) for e in events if e.HasField("batch")) >= 10,
            "the tail's records",
            30,
            0.2,
        )
    else:
        wait_for(lambda: any(e.HasField("heartbeat") for e in events), "the tail's first heartbeat", 30, 0.2)
    cursor = events[-1].cursor
    delete_all(target)
    reader.join(30)
    assert ended and ended[0].code() == grpc.StatusCode.NOT_FOUND, ended
    assert target.log_store in ended[0].details()
    # resuming it is NOT_FOUND too
    with pytest.raises(grpc.RpcError) as e:
        next(iter(_tail(a, target, resume_cursor=cursor)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_deleted_log_store_is_gone_from_every_api_at_once(a):
    target = create_target(a)
    m, ids = batch(target.flow_log_id, 10)
    assert a.ingest.Ingest(iter([m]), metadata=a.md, timeout=30).accepted == 10
    wait_for(lambda: set(ids) <= set(query_ids(target)), "records stored", 30, 0.2)
    delete_all(target)
    key = dict(region=target.region, project=target.project, name=target.log_store)
    for call, req in (
        (a.log_stores.GetLogStore, ls.GetLogStoreRequest(**key)),
        (a.log_stores.DeleteLogStore, ls.DeleteLogStoreRequest(**key)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(req, metadata=a.md, timeout=20)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    listed = a.log_stores.ListLogStores(
        ls.ListLogStoresRequest(region="bj", page_size=1000), metadata=a.md, timeout=20
    ).log_stores
    assert target.log_store not in {s.name for s in listed}
    with pytest.raises(grpc.RpcError) as e:
        a.flow_logs.CreateFlowLog(
            fl.CreateFlowLogRequest(
                region="bj",
                name="fl" + uuid.uuid4().hex[:8],
                resource_type=t.RESOURCE_TYPE_EIP,
                resource_id="eip-bj-01",
                network_id="vpc-bjdemo",
                traffic_type=t.TRAFFIC_TYPE_ALL,
                existing_log_store=fl.ExistingLogStore(project=target.project, name=target.log_store),
            ),
            metadata=a.md,
            timeout=20,
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
