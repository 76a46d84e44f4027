"""server.core.limits: per-account and total bounds, errors naming the setting, slots given back
(the piece Query, Tail, Aggregate and Ingest call; no server needed)."""

from __future__ import annotations

import threading

import pytest

from server.core.errors import ResourceExhausted
from server.core.limits import Bound, Limiter, Limits
from server.core.usecases.aggregate import Aggregate


def limiter(per_account: int, total: int) -> Limiter:
    return Limiter(
        "Query streams",
        Bound(per_account, "limits.max_query_streams_per_account"),
        Bound(total, "limits.max_query_streams"),
    )


def test_per_account_then_total_bound_each_named():
    lim = limiter(2, 3)
    lim.acquire("a")
    lim.acquire("a")
    with pytest.raises(ResourceExhausted, match=r"at most 2 per account \(limits.max_query_streams_per_account\)"):
        lim.acquire("a")
    lim.acquire("b")
    with pytest.raises(ResourceExhausted, match=r"at most 3 on this server \(limits.max_query_streams\)"):
        lim.acquire("c")
    lim.release("a")
    lim.acquire("c")
    assert lim.held() == 3 and lim.held("a") == 1 and lim.held("c") == 1


def test_hold_gives_back_on_error_and_bytes_larger_than_a_bound_pass_alone():
    lim = Limiter("bytes", Bound(10, "limits.x_per_account"), Bound(100, "limits.x"))
    with pytest.raises(RuntimeError):
        with lim.hold("a", 8):
            raise RuntimeError("the work failed")
    assert lim.held() == 0
    with lim.hold("a", 50):  # one request bigger than the account's bound: alone, it passes
        with pytest.raises(ResourceExhausted, match="limits.x_per_account"):
            lim.acquire("a", 1)
    assert lim.held("a") == 0


def test_threads_never_exceed_the_bounds():
    lim = limiter(3, 5)
    peak = {"all": 0}
    lock = threading.Lock()
    refused = []

    def work(account: str) -> None:
        for _ in range(200):
            try:
                with lim.hold(account):
                    with lock:
                        peak["all"] = max(peak["all"], lim.held())
                        assert lim.held(account) <= 3
            except ResourceExhausted:
                refused.append(account)

    threads = [threading.Thread(target=work, args=(f"acct{i % 3}",)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak["all"] <= 5 and lim.held() == 0


def test_the_aggregate_use_case_takes_its_slot():
    limits = Limits.build(
        max_query_streams_per_account=1,
        max_query_streams=1,
        max_aggregate_calls_per_account=1,
        max_aggregate_calls=2,
        max_tail_streams_per_account=1,
        max_tail_streams=1,
        max_ingest_inflight_bytes_per_account=1,
        max_ingest_inflight_bytes=1,
    )
    agg = Aggregate(metadata=None, records=object(), limits=None, slots=limits.aggregate_calls)  # type: ignore[arg-type]
    with agg.slot("a"):
        with pytest.raises(ResourceExhausted, match="limits.max_aggregate_calls_per_account"):
            with agg.slot("a"):
                pass
        with agg.slot("b"):
            with pytest.raises(ResourceExhausted, match=r"\(limits.max_aggregate_calls\)"):
                with agg.slot("c"):
                    pass
    assert limits.aggregate_calls.held() == 0
