"""Aggregate (server.core.aggregate) as Elasticsearch aggregations: a `terms` top N where its
exactness is proven, otherwise composite aggregations paged to the end.

The top N with a proof (terms_plan()): one key without a prefix, no time buckets, metrics count
and sums (what `other` can be derived for). One search asks a `terms` aggregation for the top
limit + 1 groups in the answer's order (ties by key ascending, which is the core's order for
addresses, numbers and text), with a `shard_size` large enough for every shard to send every
group it has, a `missing` aggregation for the records without the key (one group of their own)
and the totals. A terms top N is exact when no shard cut its list: Elasticsearch then reports
doc_count_error_upper_bound 0 (a shard that cut its list makes it positive, or -1 when the
order is a sub-aggregation), so the coordinating node reduced complete per-group values and
its top N is the exact one. `other` = the totals minus the top N (counts and sums subtract
exactly), folded exactly when more than `limit` groups came back. Without the proof (more
groups on a shard than TERMS_SHARD_SIZE) the answer comes from the composite path below.

Why composite otherwise: a composite aggregation visits every group exactly once, page by
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
- Time: every request gets the time left before the deadline as its timeout; running out (the
  request timing out, or the deadline passed when an answer arrives) is ResourceExhausted
  naming limits.aggregate_timeout_seconds.
"""

from __future__ import annotations

from typing import Any, Callable

from elasticsearch import ApiError, ConnectionTimeout

from backends.elasticsearch.filter_dsl import ENUM_FIELDS, enum_number
from server.core import aggregate as agg
from server.core.errors import Unavailable

PAGE = 50_000  # buckets per request: fewer round trips (search.max_buckets is 65,536); 10,000 was ~1.5x slower
EXACT_DOUBLE = 2**53
TERMS_SHARD_SIZE = 500_000  # groups a shard may send for the terms top N (beyond: composite)
_ENUM_TERMS = 256  # an enum kept as its name sorts by name, not number: ask for every value

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


Search = Callable[[dict[str, Any], float], dict[str, Any]]


def _ask(q: agg.AggregateQuery, budget: agg.Budget, search: Search, aggs: dict[str, Any]) -> dict[str, Any]:
    """One search with the time left as its timeout; out of time is ResourceExhausted naming
    limits.aggregate_timeout_seconds (the store reports a timed-out request as Unavailable, with
    the client's ConnectionTimeout as its cause)."""
    budget.check_time()
    try:
        resp = search(aggs, max(budget.remaining(), 0.001))
    except ConnectionTimeout:
        raise agg.timed_out(q) from None
    except Unavailable as exc:
        if isinstance(exc.__cause__, ConnectionTimeout) or budget.remaining() <= 0:
            raise agg.timed_out(q) from None
        raise
    budget.check_time()
    return resp


def terms_plan(q: agg.AggregateQuery) -> dict[str, Any] | None:
    """The aggregations of the terms top N (module docstring), or None where it does not apply."""
    if q.interval_ms or len(q.group_by) != 1 or q.group_by[0].masked:
        return None
    if any(m.op not in ("count", "sum") for m in q.metrics):
        return None
    key = q.group_by[0]
    subs = dict(_SUB[(m.op, m.field)] for m in q.metrics if m.op == "sum")
    order_metric = q.metrics[q.order_index]
    order_by = "_count" if order_metric.op == "count" else _SUB[("sum", order_metric.field)][0]
    size = q.limit + 1
    if key.field in ENUM_FIELDS:
        size = max(size, _ENUM_TERMS)
    terms = {
        "field": key.field,
        "size": size,
        "shard_size": max(TERMS_SHARD_SIZE, size),
        "order": [{order_by: "desc" if q.descending else "asc"}, {"_key": "asc"}],
    }
    totals = {f"t_{name}": body for name, body in subs.items()}
    return {
        "t": {"terms": terms, **({"aggs": subs} if subs else {})},
        "m": {"missing": {"field": key.field}, **({"aggs": subs} if subs else {})},
        "n": {"filter": {"match_all": {}}, **({"aggs": totals} if totals else {})},
    }


def _run_terms(q: agg.AggregateQuery, budget: agg.Budget, search: Search, aggs: dict[str, Any]) -> agg.Groups | None:
    """The terms top N, or None when Elasticsearch cannot show it is exact (or refuses to hold
    that many groups: a circuit breaker, search.max_buckets)."""
    try:
        resp = _ask(q, budget, search, aggs)
    except ApiError as exc:
        if exc.status_code in (400, 429, 503) and budget.remaining() > 0:
            return None
        raise
    t = resp.get("t", {})
    if t.get("doc_count_error_upper_bound", -1) != 0:
        return None
    conv = _converter(q.group_by[0])
    approximate = False

    def values(b: dict[str, Any], prefix: str = "") -> tuple[int, ...]:
        nonlocal approximate
        n = int(b["doc_count"])
        out = [n]
        for m in q.metrics:
            if m.op == "count":
                out.append(n)
            else:
                v = b[prefix + _SUB[("sum", m.field)][0]]["value"]
                approximate = approximate or v >= EXACT_DOUBLE
                out.append(int(v))
        return tuple(out)

    groups = [agg.Group(None, (conv(b["key"]),), values(b)) for b in t.get("buckets", [])]
    missing = resp.get("m", {})
    if int(missing.get("doc_count", 0)) > 0:
        groups.append(agg.Group(None, (None,), values(missing)))
    total = values(resp.get("n") or {"doc_count": 0, **{f"t_{v[0]}": {"value": 0} for v in _SUB.values()}}, "t_")
    budget.check_groups(min(len(groups), q.limit))
    rank = agg.group_order(q)
    groups.sort(key=rank)
    top = groups[: q.limit]
    other = None
    if len(groups) > q.limit:  # some group was folded: other = totals - top N
        other = tuple(
            0 if m.op == "count_distinct" else total[j + 1] - sum(g.values[j + 1] for g in top)
            for j, m in enumerate(q.metrics)
        )
    why = "a sum at or above 2**53" if approximate else ""
    return agg.Groups(top, approximate, why, ranked=True, other=other, matched=total[0])


def run(q: agg.AggregateQuery, search: Search) -> agg.Groups:
    """The answer through `search(body_aggs, timeout_s)` (which returns the `aggregations` of one
    search response): the terms top N when it is exact, else the composite aggregation paged to
    its end, the groups ranked as they complete."""
    budget = agg.Budget(q)
    aggs = terms_plan(q)
    if aggs is not None:
        answer = _run_terms(q, budget, search, aggs)
        if answer is not None:
            return answer
    return _run_composite(q, budget, search)


def _run_composite(q: agg.AggregateQuery, budget: agg.Budget, search: Search) -> agg.Groups:
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

    # Keys are converted (addresses parsed, masked) once per distinct raw key, not per bucket:
    # consecutive buckets share their group's raw key, and Elasticsearch writes an address one way.
    names = [f"k{i}" for i in range(len(keys))]
    current_raw: tuple[Any, ...] | None = None
    memo: dict[tuple[Any, ...], tuple[int | None, agg.Key]] = {}

    def convert(raw: tuple[Any, ...]) -> tuple[int | None, agg.Key]:
        gkey = memo.get(raw)
        if gkey is None:
            if len(memo) >= PAGE:
                memo.clear()
            gkey = memo[raw] = (
                int(raw[0]) if raw[0] is not None else None,
                tuple(conv(v) for conv, v in zip(keys, raw[1:])),
            )
        return gkey

    after: dict[str, Any] | None = None
    while True:
        comp: dict[str, Any] = {"size": PAGE, "sources": sources}
        if after is not None:
            comp["after"] = after
        g = _ask(q, budget, search, {"g": {"composite": comp, **({"aggs": subs} if subs else {})}}).get("g", {})
        for b in g.get("buckets", []):
            k = b["key"]
            raw = (k["b"] if q.interval_ms else None, *(k[n] for n in names))
            if streaming:
                if raw != current_raw:
                    current_raw = raw
                    gkey = convert(raw)
                    if current is None or current[0] != gkey:
                        if current is not None:
                            ranker.add(group(*current))
                        current = (gkey, _Acc(ops, 0 if count_buckets else len(distinct)))
                assert current is not None
                acc = current[1]
            else:
                gkey = convert(raw)
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
                elif count_buckets:
                    if k[f"d{j}"] is not None:  # a value (not the bucket of records without one)
                        acc.values[i] += 1
                    j += 1
                else:
                    d = dconv[j](k[f"d{j}"])
                    if d is not None:
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
