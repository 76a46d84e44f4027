"""Stream limits: limits.max_tail_streams_per_account bounds how many Tail streams one account
has open at once (each open Tail holds a thread of a pool all accounts share while it waits), so
one account cannot starve the others' tails. Closed, cancelled and failed streams give their
slot back."""

from __future__ import annotations

import grpc
import pytest

from flowlog.v1 import query_pb2
from tests.reliability.conftest import KEY_A, KEY_B, Stubs, create_target, settings, start_server
from tests.waiting import wait_for

LIMIT = 5


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    sp = start_server(
        tmp_path_factory.mktemp("limits"),
        settings(limits={"max_tail_streams_per_account": LIMIT, "tail_heartbeat_seconds": 0.5}),
    )
    yield sp
    assert sp.stop() == 0


def open_tail(stubs: Stubs, store: str):
    """A started Tail call and its first message (or the error that ended it)."""
    call = stubs.query.Tail(
        query_pb2.TailRequest(region="bj", project="proj", log_stores=[store]), metadata=stubs.md, timeout=60
    )
    it = iter(call)
    try:
        return call, it, next(it)
    except grpc.RpcError as e:
        return call, it, e


def test_tail_streams_per_account_are_bounded_and_slots_come_back(srv):
    a, b = Stubs(srv.address, KEY_A), Stubs(srv.address, KEY_B)
    ta, tb = create_target(a, "lim"), create_target(b, "lim")
    try:
        # Failed tails (unknown LogStore) do not keep a slot.
        for _ in range(LIMIT * 2):
            _, _, first = open_tail(a, "nope")
            assert isinstance(first, grpc.RpcError) and first.code() == grpc.StatusCode.NOT_FOUND
        open_calls = []
        for _ in range(LIMIT):
            call, _, first = open_tail(a, ta.log_store)
            assert not isinstance(first, grpc.RpcError), first
            open_calls.append(call)
        _, _, refused = open_tail(a, ta.log_store)
        assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_tail_streams_per_account" in refused.details()
        # Another account is not affected.
        call_b, _, first_b = open_tail(b, tb.log_store)
        assert not isinstance(first_b, grpc.RpcError), first_b
        call_b.cancel()
        # A client that goes away gives its slot back.
        open_calls.pop().cancel()

        def reopened():
            call, _, first = open_tail(a, ta.log_store)
            if isinstance(first, grpc.RpcError):
                return None
            open_calls.append(call)
            return call

        wait_for(reopened, "a cancelled Tail's slot to be given back", 10, 0.3)
        for c in open_calls:
            c.cancel()

        def all_slots_back():
            calls = [open_tail(a, ta.log_store) for _ in range(LIMIT)]
            ok = all(not isinstance(first, grpc.RpcError) for _, _, first in calls)
            if not ok:
                for c, _, _ in calls:
                    c.cancel()
            return calls if ok else None

        calls = wait_for(all_slots_back, f"all {LIMIT} Tail slots to come back", 30, 0.3)
        for c, _, _ in calls:
            c.cancel()
    finally:
        a.close()
        b.close()
