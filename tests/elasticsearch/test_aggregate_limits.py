"""Elasticsearch refusing an Aggregate for its size (search.max_buckets, a circuit breaker) is
ResourceExhausted naming the Elasticsearch setting, never an internal error or an UNAVAILABLE a
client would retry. The limits are lowered on the real server for the test (cluster settings,
set back afterwards)."""

from __future__ import annotations

from typing import Iterator

import pytest

from server.core import aggregate as agg
from server.core.errors import ResourceExhausted
from server.core.query import Scope
from tests.contract.conftest import ACCOUNT, DAY0_MS, DAY_MS, PROJECT, REGION, make_records
from tests.elasticsearch.test_layout import Es, _open


@pytest.fixture
def es(es_service) -> Iterator[Es]:
    with _open(es_service, sweep_interval_s=3600) as e:
        e.store.write(make_records(ACCOUNT, REGION, PROJECT, "ls-big", 400, seed=80))
        yield e


def _aggregate(store, group_by: list[str], metrics: list[str]) -> agg.AggregateResult:
    q = agg.plan(
        Scope(ACCOUNT, REGION, PROJECT, ("ls-big",)),
        start_ms=DAY0_MS - DAY_MS,
        end_ms=DAY0_MS + 10 * DAY_MS,
        filter_text="",
        group_by=group_by,
        interval_ms=None,
        metrics=metrics,
        order_by="",
        limit=10,
        limits=agg.Limits(max_range_days=0),
    )
    return agg.finish(q, store.aggregate(q))


def _cluster(es: Es, settings: dict) -> None:
    es.raw("PUT", "/_cluster/settings", {"persistent": settings})


def test_too_many_buckets_names_search_max_buckets(es: Es):
    _cluster(es, {"search.max_buckets": 20})
    try:
        with pytest.raises(ResourceExhausted, match="search.max_buckets"):
            _aggregate(es.store, ["src_addr", "dst_addr"], ["count"])
    finally:
        _cluster(es, {"search.max_buckets": None})
    assert _aggregate(es.store, ["src_addr", "dst_addr"], ["count"]).matched == 400


def test_a_tripped_circuit_breaker_names_its_setting(es: Es):
    _cluster(es, {"indices.breaker.request.limit": "1kb"})
    try:
        with pytest.raises(ResourceExhausted, match=r"indices\.breaker\.(request|total)\.limit"):
            _aggregate(es.store, ["src_addr"], ["count_distinct(dst_addr)"])
    finally:
        _cluster(es, {"indices.breaker.request.limit": None})
    assert _aggregate(es.store, ["src_addr"], ["count_distinct(dst_addr)"]).matched == 400
