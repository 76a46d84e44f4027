"""server.core.aggregate: parsing and normalising requests, bad input, ranking and `other`,
and the in-memory oracle on small hand-written records (expected values written out by hand)."""

from __future__ import annotations

import pytest

from server.core import aggregate as agg
from server.core.errors import InvalidArgument
from server.core.model import Action, Direction, FlowRecord, LogStatus
from server.core.query import Scope

SCOPE = Scope("acct", "bj", "demo", ("web",))
T0 = 1_780_000_020_000  # a whole minute since the epoch


def plan(**kw) -> agg.AggregateQuery:
    args = dict(
        start_ms=T0,
        end_ms=T0 + 3_600_000,
        filter_text="",
        group_by=[],
        interval_ms=None,
        metrics=[],
        order_by="",
        limit=0,
        limits=agg.Limits(),
    )
    args.update(kw)
    return agg.plan(SCOPE, **args)  # type: ignore[arg-type]


def bad(**kw) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as err:
        plan(**kw)
    return [(v.field, v.description) for v in err.value.violations]


def rec(
    src: str,
    dst: str,
    nbytes: int,
    start: int = T0,
    action: Action = Action.ACCEPT,
    dport: int = 443,
    status: LogStatus = LogStatus.OK,
) -> FlowRecord:
    return FlowRecord(
        f"id-{src}-{dst}-{nbytes}-{start}",
        1,
        "acct",
        "fl-abcdefgh",
        "bj",
        "demo",
        "web",
        1,
        "eip-1",
        "vpc-1",
        src,
        dst,
        40000,
        dport,
        6,
        1,
        nbytes,
        start,
        start + 60_000,
        int(action),
        int(status),
        int(Direction.INGRESS),
        0,
    )


def test_defaults_and_normalised_names():
    q = plan(group_by=[" SRC_ADDR/24 ", "dst_addr/24/64", "action"])
    assert [k.name for k in q.group_by] == ["src_addr/24", "dst_addr/24/64", "action"]
    assert (q.group_by[0].prefix4, q.group_by[0].prefix6) == (24, 24)
    assert [m.name for m in q.metrics] == ["count", "sum(bytes)", "sum(packets)"]
    assert q.limit == 10 and q.order_index == 0 and q.descending
    q = plan(metrics=["Count(*)", "count_distinct( dst_addr/64 )", "max(end_time)"], order_by="max(end_time)")
    assert [m.name for m in q.metrics] == ["count", "count_distinct(dst_addr/64)", "max(end_time)"]
    assert q.order_index == 2 and not q.descending
    q = plan(group_by=["dst_addr/64"])
    assert (q.group_by[0].prefix4, q.group_by[0].prefix6) == (32, 64), "IPv4 addresses keep /32 under /64"


@pytest.mark.parametrize(
    "kw, field, words",
    [
        (dict(group_by=["src_ip"]), "group_by[0]", "src_addr"),
        (dict(group_by=["addr"]), "group_by[0]", "separately"),
        (dict(group_by=["src_port/24"]), "group_by[0]", "only src_addr and dst_addr"),
        (dict(group_by=["src_addr/129"]), "group_by[0]", "out of range"),
        (dict(group_by=["src_addr/33/64"]), "group_by[0]", "out of range"),
        (dict(group_by=["src_addr/x"]), "group_by[0]", "src_addr/24"),
        (dict(group_by=["action", "ACTION"]), "group_by[1]", "twice"),
        (dict(metrics=["avg(bytes)"]), "metrics[0]", "not a metric"),
        (dict(metrics=["sum(start_time)"]), "metrics[0]", "not a metric"),
        (dict(metrics=["count_distinct(bytes)"]), "metrics[0]", "count_distinct"),
        (dict(metrics=["count_distinct()"]), "metrics[0]", "name the field"),
        (dict(order_by="-sum(bytes)", metrics=["count"]), "order_by", "not one of the request's metrics"),
        (dict(order_by="bogus"), "order_by", "not one of"),
        (dict(limit=10_001), "limit", "10000"),
        (dict(limit=-1), "limit", "must be"),
        (dict(interval_ms=0), "interval", "positive"),
        (dict(interval_ms=1), "interval", "limits.aggregate_max_groups"),
        (dict(end_ms=T0 + 40 * 86_400_000), "end_time", "limits.aggregate_max_range_days"),
        (dict(end_ms=T0), "end_time", "after start_time"),
        (dict(start_ms=None), "start_time", "required"),
    ],
)
def test_bad_input_names_the_field(kw, field, words):
    problems = bad(**kw)
    assert any(f == field and words in d for f, d in problems), problems


def test_bad_filter_is_invalid_argument():
    assert bad(filter_text="action = ")[0][0] == "filter"


def test_every_problem_is_named_at_once():
    fields = {f for f, _ in bad(group_by=["nope"], metrics=["nope"], limit=-5)}
    assert fields == {"group_by[0]", "metrics[0]", "limit"}


def test_oracle_groups_ranks_and_folds():
    records = [
        rec("10.0.0.1", "192.0.2.1", 100),
        rec("10.0.0.2", "192.0.2.1", 50),
        rec("::ffff:10.0.0.1", "192.0.2.9", 5),
        rec("2001:db8::1", "192.0.2.1", 70),
        rec("2001:db8:0:1::1", "192.0.2.1", 70),
        rec("", "", 0, status=LogStatus.NODATA),
        rec("10.0.1.1", "192.0.2.1", 1, start=T0 + 3_600_000),
    ]  # out of range: excluded
    q = plan(group_by=["src_addr"], metrics=["sum(bytes)", "count", "count_distinct(dst_addr)"], limit=3)
    res = agg.finish(q, agg.evaluate(q, records))
    assert res.matched == 6
    # 10.0.0.1 holds its IPv4-mapped twin; the 70/70 tie goes to the lower address
    assert [(r.keys, r.values) for r in res.rows] == [
        (("10.0.0.1",), (105, 2, 2)),
        (("2001:db8::1",), (70, 1, 1)),
        (("2001:db8:0:1::1",), (70, 1, 1)),
    ]
    assert res.other is not None and res.other.values == (50, 2, 0)
    q = plan(group_by=["src_addr/16/32"], metrics=["count"], order_by="count", limit=10)
    res = agg.finish(q, agg.evaluate(q, records))
    assert [(r.keys, r.values) for r in res.rows] == [
        (("",), (1,)),
        (("2001:db8::/32",), (2,)),
        (("10.0.0.0/16",), (3,)),
    ]


def test_oracle_buckets_and_empty_answers():
    records = [rec("10.0.0.1", "192.0.2.1", 10, start=T0 + 59_999), rec("10.0.0.1", "192.0.2.1", 20, start=T0 + 60_000)]
    q = plan(interval_ms=60_000, metrics=["sum(bytes)", "min(start_time)"])
    res = agg.finish(q, agg.evaluate(q, records))
    assert [(r.bucket_start_ms, r.values) for r in res.rows] == [
        (T0, (10, T0 + 59_999)),
        (T0 + 60_000, (20, T0 + 60_000)),
    ]
    q = plan(filter_text="action = REJECT")
    res = agg.finish(q, agg.evaluate(q, records))
    assert (res.rows, res.other, res.matched) == ([], None, 0)


def test_key_text():
    key = agg.GroupKey("action")
    assert agg.key_text(2, key) == "ACTION_REJECT" and agg.key_text(9, key) == "9"
    key = plan(group_by=["dst_addr/24/48"]).group_by[0]
    assert agg.key_text(agg.mask(agg.address_value("10.1.2.3"), key), key) == "10.1.2.0/24"
    assert agg.key_text(agg.mask(agg.address_value("2001:db8:1:2::3"), key), key) == "2001:db8:1::/48"
    assert agg.key_text(None, key) == ""


@pytest.mark.parametrize("seed", range(5))
def test_ranker_keeps_what_finish_keeps(seed):
    import random

    rnd = random.Random(seed)
    records = [
        rec(
            f"10.0.{rnd.randrange(4)}.{rnd.randrange(6)}",
            f"192.0.2.{rnd.randrange(3)}",
            rnd.randrange(1, 5) * 10,
            start=T0 + rnd.randrange(4) * 60_000,
            action=rnd.choice((Action.ACCEPT, Action.REJECT)),
        )
        for _ in range(300)
    ]
    for kw in (
        dict(group_by=["src_addr"], limit=3, metrics=["sum(bytes)", "min(start_time)", "max(end_time)"]),
        dict(
            group_by=["dst_addr", "action"],
            limit=2,
            interval_ms=60_000,
            order_by="count",
            metrics=["count", "count_distinct(src_addr)"],
        ),
        dict(group_by=["src_addr/24"], limit=1, order_by="-sum(bytes)"),
    ):
        q = plan(**kw)
        groups = agg.evaluate(q, records)
        ranker = agg.Ranker(q)
        for g in rnd.sample(groups.groups, len(groups.groups)):
            ranker.add(g)
        assert agg.finish(q, ranker.result()) == agg.finish(q, groups)
