"""Aggregate (server.core.aggregate) as Elasticsearch composite aggregations, paged to the end.

Why composite and not terms: a terms aggregation's top N is approximate across shards
(doc_count_error_upper_bound), a composite aggregation visits every group exactly once, page by
page (`after_key`), so counts, sums, min and max are exact whatever the shard count.

- Sources: a `date_histogram` on start_time with a fixed interval in milliseconds (aligned to
  the epoch, like the core's buckets) when the request has an interval, then one `terms` source
  per group key on the raw field (`missing_bucket` so NODATA rows without an address form their
  own group), then one per count_distinct field. With no source at all, one `terms` on
  account_id (a single value under the query's account filter) makes the one group.
- Address prefixes: the `ip` type has no prefix source for composite aggregations (ip_prefix is
  a standalone bucket aggregation), so pages come grouped by address and the prefixes are
  applied here.
- Memory: buckets arrive in source order, so when no key but the last has a prefix each group
  is one run of buckets, final when the next starts, and only the top N per time bucket are held
  (streams()); otherwise the groups are folded into a dict that never holds more than
  limits.aggregate_max_groups groups.
- count_distinct is exact: its field is a source too, so each composite bucket is one distinct
  value of its group; with one count_distinct and no prefix anywhere that is a plain count of
  buckets, otherwise the group keeps the set of its (masked) values, and those values count
  against the same bound. (Elasticsearch's `cardinality` is approximate: not used.)
- sum/min/max are sub-aggregations. Elasticsearch adds in doubles, exact while a sum stays below
  2**53 (about 9 PB per group); a sum at or above that sets `approximate` (README).
- Time: every page request gets the time left before the deadline as its timeout; running out
  is ResourceExhausted naming limits.aggregate_timeout_seconds.
"""

from __future__ import annotations

from typing import Any, Callable

from elasticsearch import ConnectionTimeout

from backends.elasticsearch.filter_dsl import ENUM_FIELDS, enum_number
from server.core import aggregate as agg

PAGE = 10_000  # buckets per request: fewer round trips (search.max_buckets is 65,536)
EXACT_DOUBLE = 2**53

_SUB = {
    ("sum", "bytes"): ("sb", {"sum": {"field": "bytes"}}),
    ("sum", "packets"): ("sp", {"sum": {"field": "packets"}}),
    ("min", "start_time"): ("mn", {"min": {"field": "start_time"}}),
    ("max", "end_time"): ("mx", {"max": {"field": "end_time"}}),
}


def _terms(field: str) -> dict[str, Any]:
    return {"terms": {"field": field, "missing_bucket": True}}


def composite_body(q: agg.AggregateQuery) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The composite sources and the sub-aggregations of q."""
    sources: list[dict[str, Any]] = []
    if q.interval_ms:
        sources.append({"b": {"date_histogram": {"field": "start_time", "fixed_interval": f"{int(q.interval_ms)}ms"}}})
    sources += [{f"k{i}": _terms(k.field)} for i, k in enumerate(q.group_by)]
    sources += [{f"d{j}": _terms(m.field)} for j, m in enumerate(x for x in q.metrics if x.distinct is not None)]
    if not sources:
        sources.append({"one": {"terms": {"field": "account_id"}}})
    subs = dict(_SUB[(m.op, m.field)] for m in q.metrics if (m.op, m.field) in _SUB)
    return sources, subs


def _converter(key: agg.GroupKey) -> Callable[[Any], agg.KeyValue]:
    if key.kind is agg.FieldKind.ADDRESS:
        return lambda v: agg.mask(agg.address_value(v) if v is not None else None, key)
    if key.field in ENUM_FIELDS:
        names = {m.name: int(m) for m in ENUM_FIELDS[key.field]}
        return lambda v: names[v] if v in names else enum_number(key.field, v)
    if key.kind is agg.FieldKind.ENUM:  # an enum the index keeps as its number
        return lambda v: int(v)
    return lambda v: v


class _Acc:
    __slots__ = ("count", "values", "sets")

    def __init__(self, ops: list[str], n_sets: int) -> None:
        self.count = 0
        self.values: list[Any] = [0 if op in ("count", "sum", "count_distinct") else None for op in ops]
        self.sets: list[set[agg.KeyValue]] = [set() for _ in range(n_sets)]


def streams(q: agg.AggregateQuery) -> bool:
    """Whether every group arrives as one run of consecutive composite buckets (buckets come in
    source order): true when no key but the last has a prefix, and the last one's networks are
    intervals of the address order (an IPv6 length of at least 80 never splits an IPv6 network
    around the IPv4-mapped block). Then each group is final when the next one starts, and only
    the top N per bucket are held (server.core.aggregate.Ranker)."""
    keys = q.group_by
    if any(k.masked for k in keys[:-1]):
        return False
    return not keys or not keys[-1].masked or keys[-1].prefix6 >= 80


def run(q: agg.AggregateQuery, search: Callable[[dict[str, Any], float], dict[str, Any]]) -> agg.Groups:
    """Page the composite aggregation to its end through `search(body_aggs, timeout_s)` (which
    returns the `aggregations` of one search response) and rank the groups as they complete."""
    budget = agg.Budget(q)
    sources, subs = composite_body(q)
    keys = [_converter(k) for k in q.group_by]
    distinct = [m for m in q.metrics if m.distinct is not None]
    dconv = [_converter(m.distinct) for m in distinct if m.distinct is not None]
    ops = [m.op for m in q.metrics]
    # One count_distinct and no prefix anywhere: every composite bucket is a new distinct value
    # of its group (or no value), so counting buckets is exact without holding the values.
    count_buckets = (
        len(distinct) == 1
        and not any(k.masked for k in q.group_by)
        and not any(m.distinct.masked for m in distinct if m.distinct is not None)
    )
    streaming = streams(q)
    ranker = agg.Ranker(q)
    accs: dict[tuple[int | None, agg.Key], _Acc] = {}
    held = 0  # distinct values held
    approximate = False
    current: tuple[tuple[int | None, agg.Key], _Acc] | None = None

    def group(gkey: tuple[int | None, agg.Key], acc: _Acc) -> agg.Group:
        nonlocal approximate, held
        values: list[int] = []
        j = 0
        for i, m in enumerate(q.metrics):
            if m.op == "count_distinct":
                values.append(acc.values[i] if count_buckets else len(acc.sets[j]))
                j += 1
            else:
                if m.op == "sum" and acc.values[i] >= EXACT_DOUBLE:
                    approximate = True
                values.append(int(acc.values[i]))
        if streaming:
            held -= sum(len(x) for x in acc.sets)
        return agg.Group(gkey[0], gkey[1], (acc.count, *values))

    after: dict[str, Any] | None = None
    while True:
        budget.check_time()
        comp: dict[str, Any] = {"size": PAGE, "sources": sources}
        if after is not None:
            comp["after"] = after
        body = {"g": {"composite": comp, **({"aggs": subs} if subs else {})}}
        try:
            resp = search(body, max(budget.remaining(), 0.001))
        except ConnectionTimeout:
            raise agg.timed_out(q) from None
        g = resp.get("g", {})
        for b in g.get("buckets", []):
            k = b["key"]
            bucket = int(k["b"]) if q.interval_ms else None
            gkey = (bucket, tuple(conv(k[f"k{i}"]) for i, conv in enumerate(keys)))
            if streaming:
                if current is None or current[0] != gkey:
                    if current is not None:
                        ranker.add(group(*current))
                    current = (gkey, _Acc(ops, 0 if count_buckets else len(distinct)))
                acc = current[1]
            else:
                acc = accs.get(gkey)  # type: ignore[assignment]
                if acc is None:
                    acc = accs[gkey] = _Acc(ops, 0 if count_buckets else len(distinct))
                    if q.max_groups and len(accs) > q.max_groups:
                        raise agg.too_many_groups(q)
            n = int(b["doc_count"])
            acc.count += n
            j = 0
            for i, m in enumerate(q.metrics):
                if m.op == "count":
                    acc.values[i] += n
                elif m.op == "sum":
                    acc.values[i] += int(b[_SUB[("sum", m.field)][0]]["value"])
                elif m.op == "min":
                    x = int(b["mn"]["value"])
                    acc.values[i] = x if acc.values[i] is None else min(acc.values[i], x)
                elif m.op == "max":
                    x = int(b["mx"]["value"])
                    acc.values[i] = x if acc.values[i] is None else max(acc.values[i], x)
                else:
                    d = dconv[j](k[f"d{j}"])
                    if d is not None:
                        if count_buckets:
                            acc.values[i] += 1
                        else:
                            before = len(acc.sets[j])
                            acc.sets[j].add(d)
                            held += len(acc.sets[j]) - before
                    j += 1
            if q.max_groups and held > q.max_groups:
                raise agg.too_many_groups(q)
        after = g.get("after_key")
        if not g.get("buckets") or after is None:
            break
    if current is not None:
        ranker.add(group(*current))
    for gkey, acc in accs.items():
        ranker.add(group(gkey, acc))
    return ranker.result(approximate, "a sum at or above 2**53" if approximate else "")
