"""The RecordAggregation contract (server.core.ports), run against every backend.

Each case writes nothing: it asks the shared store (tests/contract/conftest.py's data set: IPv4,
IPv6 and IPv4-mapped addresses, NODATA/SKIPDATA rows without addresses, several LogStores,
other accounts/regions/projects) for an Aggregate, and compares the answer, row for row, with
one computed HERE from the records written, with plain Python (dicts, ipaddress, sorted): not
with server.core.aggregate's evaluator, nor with any backend's. The request is parsed by
server.core.aggregate.plan() and the backend's groups ranked by finish(): what the server does.
"""

from __future__ import annotations

import ipaddress
import time
from collections import defaultdict
from typing import Any, Iterable

import pytest

from server.core import aggregate as agg
from server.core.errors import InvalidArgument, ResourceExhausted
from server.core.filter import parse
from server.core.model import Action, Direction, FlowRecord, LogStatus, ResourceType
from server.core.ports import RecordAggregation
from server.core.query import Scope
from tests.contract.conftest import ACCOUNT, DAY0_MS, DAY_MS, HOUR_MS, LOG_STORES, PROJECT, REGION, DataSet

ALL = (DAY0_MS, DAY0_MS + 3 * DAY_MS)
SCOPE = Scope(ACCOUNT, REGION, PROJECT, LOG_STORES)
ENUMS = {
    "action": ("ACTION_", Action),
    "direction": ("DIRECTION_", Direction),
    "log_status": ("LOG_STATUS_", LogStatus),
    "resource_type": ("RESOURCE_TYPE_", ResourceType),
}
try:  # rule attribution (issue 16 part 1): grouped like the other enums once records carry it
    from server.core.model import RuleKind

    ENUMS["rule_kind"] = ("RULE_KIND_", RuleKind)
except ImportError:  # pragma: no cover
    pass


# ---------------------------------------------------------------------------------------------
# The independent expectation
# ---------------------------------------------------------------------------------------------


def _address(text: str, prefix: tuple[int, int] | None) -> tuple[tuple, str]:
    """(sort key, text) of an address group key: ipaddress does the work, mapped IPv6 is IPv4."""
    if not text:
        return (0,), ""
    a = ipaddress.ip_address(text)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    sort_value = (0xFFFF << 32 | int(a)) if a.version == 4 else int(a)
    if prefix is None:
        return (1, sort_value), str(a)
    net = ipaddress.ip_network(f"{a}/{prefix[0] if a.version == 4 else prefix[1]}", strict=False)
    sort_value = (0xFFFF << 32 | int(net.network_address)) if a.version == 4 else int(net.network_address)
    return (1, sort_value), str(net)


def _key(r: FlowRecord, spec: str) -> tuple[tuple, str]:
    name, _, rest = spec.partition("/")
    value = getattr(r, name)
    if name in ("src_addr", "dst_addr"):
        lengths = [int(x) for x in rest.split("/")] if rest else []
        prefix = None if not lengths else (min(lengths[0], 32), lengths[0]) if len(lengths) == 1 else tuple(lengths)
        return _address(value, prefix)  # type: ignore[arg-type]
    if name in ENUMS:
        prefix_text, cls = ENUMS[name]
        return (value,), prefix_text + cls(value).name
    return (value,), str(value)


def expect(
    records: Iterable[FlowRecord],
    *,
    group_by: list[str] = [],
    metrics: list[str] = [],  # noqa: B006
    order_by: str = "",
    limit: int = 10,
    interval_ms: int = 0,
    start_ms: int = ALL[0],
    end_ms: int = ALL[1],
    log_stores: tuple[str, ...] = LOG_STORES,
    where=lambda r: True,
) -> dict[str, Any]:
    metrics = metrics or ["count", "sum(bytes)", "sum(packets)"]
    groups: dict[tuple, dict[str, Any]] = {}
    matched = 0
    for r in records:
        if not (
            r.account_id == ACCOUNT
            and r.region == REGION
            and r.project == PROJECT
            and r.log_store in log_stores
            and start_ms <= r.start_time < end_ms
            and where(r)
        ):
            continue
        matched += 1
        bucket = r.start_time // interval_ms * interval_ms if interval_ms else None
        keys = [_key(r, g) for g in group_by]
        k = (bucket, tuple(s for s, _ in keys))
        g = groups.setdefault(
            k, {"bucket": bucket, "sort": tuple(s for s, _ in keys), "text": tuple(t for _, t in keys), "recs": []}
        )
        g["recs"].append(r)

    def value(metric: str, recs: list[FlowRecord]) -> int:
        if metric == "count":
            return len(recs)
        if metric.startswith("sum("):
            return sum(getattr(r, metric[4:-1]) for r in recs)
        if metric == "min(start_time)":
            return min(r.start_time for r in recs)
        if metric == "max(end_time)":
            return max(r.end_time for r in recs)
        inner = metric[len("count_distinct(") : -1]
        seen = {_key(r, inner)[1] for r in recs}
        if inner.partition("/")[0] in ("src_addr", "dst_addr"):
            seen.discard("")  # no address is no value
        return len(seen)

    order = order_by or metrics[0]
    desc = not order_by or order_by.startswith("-")
    oi = metrics.index(order.lstrip("-"))
    buckets: dict[Any, list] = defaultdict(list)
    for g in groups.values():
        g["values"] = tuple(value(m, g["recs"]) for m in metrics)
        buckets[g["bucket"]].append(g)
    rows, rest = [], []
    for b in sorted(buckets, key=lambda x: -1 if x is None else x):
        ranked = sorted(buckets[b], key=lambda g: ((-1 if desc else 1) * g["values"][oi], g["sort"]))
        rows += [(g["bucket"], g["text"], g["values"]) for g in ranked[:limit]]
        rest += ranked[limit:]
    other = None
    if rest:

        def fold(i: int, m: str) -> int:
            vals = [g["values"][i] for g in rest]
            return (
                sum(vals)
                if m == "count" or m.startswith("sum(")
                else min(vals)
                if m.startswith("min(")
                else max(vals)
                if m.startswith("max(")
                else 0
            )

        other = tuple(fold(i, m) for i, m in enumerate(metrics))
    return {"rows": rows, "other": other, "matched": matched}


def ask(
    store,
    *,
    group_by: list[str] = [],
    metrics: list[str] = [],
    order_by: str = "",  # noqa: B006
    limit: int = 10,
    interval_ms: int = 0,
    start_ms: int = ALL[0],
    end_ms: int = ALL[1],
    log_stores: tuple[str, ...] = LOG_STORES,
    filter_text: str = "",
    limits: agg.Limits = agg.Limits(max_range_days=0),
) -> dict[str, Any]:
    assert isinstance(store, RecordAggregation)
    scope = Scope(ACCOUNT, REGION, PROJECT, log_stores)
    q = agg.plan(
        scope,
        start_ms=start_ms,
        end_ms=end_ms,
        filter_text=filter_text,
        group_by=group_by,
        interval_ms=interval_ms or None,
        metrics=metrics,
        order_by=order_by,
        limit=limit,
        limits=limits,
    )
    res = agg.finish(q, store.aggregate(q))
    assert not res.approximate
    return {
        "rows": [(r.bucket_start_ms, r.keys, r.values) for r in res.rows],
        "other": res.other.values if res.other else None,
        "matched": res.matched,
    }


def check(store, records, filter_text: str = "", **kw) -> dict[str, Any]:
    pred = _predicate(filter_text)
    want = expect(records, where=pred, **kw)
    got = ask(store, filter_text=filter_text, **kw)
    assert got == want
    return want


def _predicate(filter_text: str):
    """The filter cases here are simple conjunctions; written as Python so the test keeps its
    own meaning of them."""
    table = {
        "": lambda r: True,
        "action = REJECT": lambda r: r.action == Action.REJECT,
        "action = REJECT AND protocol = tcp": lambda r: r.action == Action.REJECT and r.protocol == 6,
        "dst_port = 1": lambda r: r.dst_port == 1,
        "log_status = NODATA": lambda r: r.log_status == LogStatus.NODATA,
    }
    parse(filter_text)  # the filter must be valid for the server too
    return table[filter_text]


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


def test_top_talkers_by_address_with_other(filled_store, dataset: DataSet):
    want = check(filled_store, dataset.records, group_by=["src_addr"], metrics=["sum(bytes)", "count"])
    assert len(want["rows"]) == 10 and want["other"] is not None and want["matched"] > 1000
    # within one UTC day (one day index on Elasticsearch: the one-shard top N), per minute too
    day = {"start_ms": DAY0_MS, "end_ms": DAY0_MS + DAY_MS}
    want = check(filled_store, dataset.records, group_by=["src_addr"], metrics=["sum(bytes)", "count"], **day)
    assert want["other"] is not None
    check(filled_store, dataset.records, group_by=["dst_port"], metrics=["count"], limit=3, order_by="-count", **day)
    check(filled_store, dataset.records, group_by=["src_addr"], metrics=["count"], interval_ms=HOUR_MS, limit=2, **day)


@pytest.mark.parametrize(
    "group_by",
    [
        ["src_addr/24"],
        ["dst_addr/64"],
        ["src_addr/16/48"],
        ["dst_addr/0"],
        ["src_addr/8", "dst_addr/120"],
        ["dst_addr/31/127"],
    ],
    ids=lambda g: "+".join(g),
)
def test_address_prefixes_ipv4_and_ipv6(filled_store, dataset: DataSet, group_by):
    want = check(filled_store, dataset.records, group_by=group_by, limit=10_000)
    texts = {t for _, keys, _ in want["rows"] for t in keys}
    assert any(":" in t for t in texts) and any("." in t for t in texts), "both families present"
    assert "" in texts, "records without addresses form their own group"


def test_nodata_rows_group_under_an_empty_key(filled_store, dataset: DataSet):
    want = check(
        filled_store,
        dataset.records,
        group_by=["log_status", "src_addr", "dst_addr/24"],
        metrics=["count", "sum(packets)", "min(start_time)", "max(end_time)"],
        limit=10_000,
    )
    nodata = [row for row in want["rows"] if row[1][0] == "LOG_STATUS_NODATA"]
    assert nodata and all(row[1][1:] == ("", "") for row in nodata)
    check(
        filled_store,
        dataset.records,
        filter_text="log_status = NODATA",
        metrics=["count", "count_distinct(src_addr)", "sum(bytes)"],
    )


def test_empty_results(filled_store, dataset: DataSet):
    for group_by in ([], ["src_addr/24"]):
        want = check(filled_store, dataset.records, filter_text="dst_port = 1", group_by=group_by)
        assert want == {"rows": [], "other": None, "matched": 0}
    # a time range with no records, and a LogStore of the scope with nothing in that range
    check(filled_store, dataset.records, start_ms=DAY0_MS - DAY_MS, end_ms=DAY0_MS, group_by=["action"])


def test_no_group_by_is_one_row_per_bucket(filled_store, dataset: DataSet):
    want = check(filled_store, dataset.records)
    assert len(want["rows"]) == 1 and want["rows"][0][1] == ()
    check(filled_store, dataset.records, interval_ms=6 * HOUR_MS, metrics=["count", "sum(bytes)"])


def test_ties_are_broken_by_keys_ascending(filled_store, dataset: DataSet):
    for order_by in ("", "count_distinct(protocol)", "-count_distinct(protocol)"):
        want = check(
            filled_store,
            dataset.records,
            group_by=["direction", "action", "log_store"],
            metrics=["count_distinct(protocol)", "count"],
            order_by=order_by,
            limit=5,
        )
        values = [row[2][0] for row in want["rows"]]
        assert len(values) != len(set(values)), "the case has ties"
    check(filled_store, dataset.records, group_by=["dst_port"], metrics=["count"], order_by="count", limit=20)


def test_buckets_at_range_edges(filled_store, dataset: DataSet):
    # Records start on whole hours or a minute past: from 20:01 the 20:00 bucket holds only the
    # 20:01 records, and records starting exactly at the end are out.
    start, end = DAY0_MS + 20 * HOUR_MS + 60_000, DAY0_MS + DAY_MS + 5 * HOUR_MS
    want = check(
        filled_store,
        dataset.records,
        start_ms=start,
        end_ms=end,
        interval_ms=HOUR_MS,
        group_by=["action"],
        metrics=["count", "min(start_time)", "max(end_time)"],
        limit=3,
    )
    first = [row for row in want["rows"] if row[0] == DAY0_MS + 20 * HOUR_MS]
    assert first and all(row[2][1] == start for row in first), "the first bucket starts before the range"
    assert any(r.start_time == end and r.log_store in LOG_STORES for r in dataset.records), "an edge record exists"
    # buckets not aligned to the range, longer than it, and a day
    check(filled_store, dataset.records, start_ms=start, end_ms=end, interval_ms=7 * HOUR_MS, group_by=["protocol"])
    check(filled_store, dataset.records, interval_ms=DAY_MS, group_by=["direction"], metrics=["sum(bytes)"])


def test_limit_per_bucket_and_other(filled_store, dataset: DataSet):
    want = check(
        filled_store,
        dataset.records,
        interval_ms=12 * HOUR_MS,
        group_by=["dst_addr/24/64"],
        metrics=["sum(bytes)", "count", "min(start_time)", "max(end_time)", "count_distinct(src_addr)"],
        limit=2,
    )
    per_bucket = defaultdict(int)
    for bucket, _, _ in want["rows"]:
        per_bucket[bucket] += 1
    assert len(per_bucket) > 2 and set(per_bucket.values()) == {2}
    assert want["other"] is not None and want["other"][4] == 0, "count_distinct is 0 in other"
    check(filled_store, dataset.records, group_by=["src_port"], limit=1, order_by="sum(packets)")
    # an enum key, fewer rows than its values: `other` from the groups folded, per bucket and overall
    want = check(
        filled_store,
        dataset.records,
        interval_ms=6 * HOUR_MS,
        group_by=["action"],
        metrics=["sum(bytes)", "count"],
        limit=1,
    )
    assert want["other"] is not None
    want = check(filled_store, dataset.records, group_by=["direction"], metrics=["count", "sum(packets)"], limit=1)
    assert want["other"] is not None


def test_count_distinct(filled_store, dataset: DataSet):
    # scanners: sources with the most distinct destinations among REJECTs
    check(
        filled_store,
        dataset.records,
        filter_text="action = REJECT",
        group_by=["src_addr"],
        metrics=["count_distinct(dst_addr)", "count_distinct(dst_port)", "count"],
        limit=15,
    )
    # the benchmark's scanners (one count_distinct, most sources folded into `other`), and per hour
    want = check(
        filled_store,
        dataset.records,
        filter_text="action = REJECT",
        group_by=["src_addr"],
        metrics=["count_distinct(dst_addr)"],
        limit=3,
    )
    assert want["other"] is not None
    check(
        filled_store,
        dataset.records,
        group_by=["dst_port"],
        metrics=["count", "count_distinct(src_addr)"],
        interval_ms=6 * HOUR_MS,
        limit=2,
        order_by="count_distinct(src_addr)",
    )
    check(
        filled_store,
        dataset.records,
        group_by=["action"],
        metrics=[
            "count_distinct(dst_addr/24/64)",
            "count_distinct(src_addr)",
            "count_distinct(flow_log_id)",
            "count_distinct(resource_type)",
        ],
    )
    check(
        filled_store,
        dataset.records,
        filter_text="action = REJECT AND protocol = tcp",
        group_by=["dst_addr/16"],
        metrics=["count_distinct(src_addr/24)"],
    )
    # which rules reject, and how many sources each
    check(
        filled_store,
        dataset.records,
        filter_text="action = REJECT",
        group_by=["rule_kind"],
        metrics=["count_distinct(rule_id)", "count_distinct(src_addr)", "count"],
    )


@pytest.mark.parametrize(
    "group_by",
    [
        ["log_store"],
        ["protocol", "dst_port"],
        ["flow_log_id", "resource_id"],
        ["resource_type", "network_id", "direction"],
        ["rule_kind", "rule_id"],
        ["action", "rule_kind"],
    ],
    ids=lambda g: "+".join(g),
)
def test_other_fields(filled_store, dataset: DataSet, group_by):
    check(filled_store, dataset.records, group_by=group_by, limit=7)
    check(filled_store, dataset.records, group_by=group_by, log_stores=("ls-a", "web"), limit=3)


def test_max_groups_is_resource_exhausted(filled_store):
    # more groups than the server may hold for its answer
    with pytest.raises(ResourceExhausted, match="limits.aggregate_max_groups"):
        ask(filled_store, group_by=["src_addr", "dst_addr", "src_port"], limit=10_000, limits=agg.Limits(max_groups=50))
    with pytest.raises(ResourceExhausted, match="limits.aggregate_max_groups"):
        ask(
            filled_store,
            group_by=["src_addr/24/64", "dst_addr"],
            limit=100,
            interval_ms=DAY_MS,
            limits=agg.Limits(max_groups=50, max_range_days=0),
        )
    # a top 10 of many groups is fine under a small bound
    ask(filled_store, group_by=["src_addr", "dst_addr", "src_port"], limits=agg.Limits(max_groups=50, max_range_days=0))


def test_deadline_is_resource_exhausted(filled_store):
    scope = SCOPE
    q = agg.plan(
        scope,
        start_ms=ALL[0],
        end_ms=ALL[1],
        filter_text="",
        group_by=["src_addr"],
        interval_ms=None,
        metrics=[],
        order_by="",
        limit=10,
        limits=agg.Limits(timeout_s=5, max_range_days=0),
        now=lambda: time.monotonic() - 10,
    )
    with pytest.raises(ResourceExhausted, match="limits.aggregate_timeout_seconds"):
        filled_store.aggregate(q)


def test_range_over_the_maximum_is_invalid(filled_store):
    with pytest.raises(InvalidArgument) as err:
        ask(filled_store, limits=agg.Limits(max_range_days=1))
    assert err.value.violations[0].field == "end_time"
    assert "limits.aggregate_max_range_days" in err.value.violations[0].description
