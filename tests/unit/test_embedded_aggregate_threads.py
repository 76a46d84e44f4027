"""backends/embedded/records.py: DuckDB's thread count is `aggregate_threads` only while an
Aggregate runs (and a moment after), and `threads` again after it, whether the Aggregate answered
or ran out of time.
(The answers themselves are checked against the oracle in tests/contract/test_aggregate.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.embedded.records import EmbeddedRecordStore
from server.core import aggregate as agg
from server.core.errors import ResourceExhausted
from tests.unit.test_aggregate import SCOPE, T0, rec
from tests.waiting import wait_for


def _threads(store: EmbeddedRecordStore) -> int:
    cur = store._cursor()
    try:
        row = cur.execute("SELECT current_setting('threads')").fetchone()
        assert row is not None
        return int(row[0])
    finally:
        cur.close()


def _query(timeout_s: float = 30.0) -> agg.AggregateQuery:
    return agg.plan(
        SCOPE,
        start_ms=T0,
        end_ms=T0 + 3_600_000,
        filter_text="",
        group_by=["src_addr"],
        interval_ms=None,
        metrics=["sum(bytes)"],
        order_by="",
        limit=1,
        limits=agg.Limits(timeout_s=timeout_s),
    )


@pytest.fixture
def store(tmp_path: Path):
    s = EmbeddedRecordStore(tmp_path / "records.duckdb", threads=1, aggregate_threads=2, checkpoint_interval_s=0)
    s.write([rec("10.0.0.1", "10.0.0.9", 100), rec("10.0.0.2", "10.0.0.9", 50), rec("10.0.0.3", "10.0.0.9", 10)])
    yield s
    s.close()


def test_threads_go_back_after_an_aggregate(store: EmbeddedRecordStore):
    assert _threads(store) == 1
    groups = store.aggregate(_query())
    assert [g.values[1] for g in groups.groups] == [100]
    assert groups.other is not None and groups.other == (60,) and groups.matched == 3
    wait_for(lambda: _threads(store) == 1, "DuckDB back to one thread")


def test_threads_go_back_after_an_aggregate_out_of_time(store: EmbeddedRecordStore):
    with pytest.raises(ResourceExhausted):
        store.aggregate(_query(timeout_s=0.0))
    wait_for(lambda: _threads(store) == 1, "DuckDB back to one thread")
    for _ in range(3):  # a burst: each one answers, DuckDB goes back to one thread after the last
        assert store.aggregate(_query()).matched == 3
    wait_for(lambda: _threads(store) == 1, "DuckDB back to one thread")
