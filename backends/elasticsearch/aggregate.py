"""Aggregate (server.core.aggregate) as Elasticsearch aggregations: a `terms` top N where its
exactness is proven, otherwise composite aggregations paged to the end.

The top N with a proof (terms_plan()): one key without a prefix (per time bucket under a
date_histogram when there is an interval; with an interval also no key), metrics count and
sums (what `other` can be derived for). One search asks a `terms` aggregation for the top
limit + 1 groups in the answer's order (ties by key ascending, which is the core's order for
addresses, numbers and text), with a `shard_size` large enough for every shard to send every
group it has, a `missing` aggregation for the records without the key (one group of their own)
and the totals (neither where every group comes back anyway: an enum key or none, see whole()).
A terms top N is exact when no shard cut its list: Elasticsearch then reports
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

import operator
import re
import socket
from typing import Any, Callable

from elasticsearch import ApiError, ConnectionTimeout

from backends.elasticsearch.filter_dsl import ENUM_FIELDS, enum_number
from server.core import aggregate as agg
from server.core.errors import ResourceExhausted, Unavailable

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


def _address(text: str) -> int:
    """An address as Elasticsearch writes an `ip` value, as the core's key integer: inet_pton,
    ~50x faster than ipaddress (a scanners answer converts tens of thousands of them). An
    IPv4-mapped IPv6 address comes out as ::ffff:a.b.c.d, which IS the core's IPv4 key."""
    if ":" in text:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    return agg.V4_MAPPED | int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")


def _converter(key: agg.GroupKey) -> Callable[[Any], agg.KeyValue]:
    if key.kind is agg.FieldKind.ADDRESS:
        if key.masked:
            return lambda v: agg.mask(_address(v) if v is not None else None, key)
        return lambda v: _address(v) if v is not None else None
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


_BREAKERS = {
    "parent": "indices.breaker.total.limit",
    "request": "indices.breaker.request.limit",
    "fielddata": "indices.breaker.fielddata.limit",
    "in_flight_requests": "network.breaker.inflight_requests.limit",
}
_BREAKER = re.compile(r"\[(\w+)\] Data too large")


def refusal(exc: BaseException) -> ResourceExhausted | None:
    """Elasticsearch refusing an aggregation for its size (a circuit breaker: 429, or 503 when
    every shard tripped, which the store reports as Unavailable; search.max_buckets: 400), as
    ResourceExhausted naming the Elasticsearch setting; None for any other error."""
    api = exc if isinstance(exc, ApiError) else exc.__cause__
    if not isinstance(api, ApiError):
        return None
    text = str(api.body)
    if "too_many_buckets_exception" in text:
        return ResourceExhausted(
            "Elasticsearch refused the aggregation: more buckets in one response than its search.max_buckets; "
            "group by fewer fields, use address prefixes or a longer interval, or narrow the time range or the filter"
        )
    if "circuit_breaking_exception" in text:
        m = _BREAKER.search(text)
        name = m[1] if m else ""
        return ResourceExhausted(
            f"Elasticsearch's {name or 'memory'} circuit breaker refused the aggregation "
            f"({_BREAKERS.get(name, 'indices.breaker.*.limit')}, a share of Elasticsearch's heap); narrow the "
            "time range or the filter, group by fewer or coarser fields, or give Elasticsearch more heap"
        )
    return None


def _ask(q: agg.AggregateQuery, budget: agg.Budget, search: Search, aggs: dict[str, Any]) -> dict[str, Any]:
    """One search with the time left as its timeout; out of time is ResourceExhausted naming
    limits.aggregate_timeout_seconds (the store reports a timed-out request as Unavailable, with
    the client's ConnectionTimeout as its cause); a refusal for size (refusal()) is
    ResourceExhausted naming Elasticsearch's setting."""
    budget.check_time()
    try:
        resp = search(aggs, max(budget.remaining(), 0.001))
    except ConnectionTimeout:
        raise agg.timed_out(q) from None
    except Unavailable as exc:
        if isinstance(exc.__cause__, ConnectionTimeout) or budget.remaining() <= 0:
            raise agg.timed_out(q) from None
        refused = refusal(exc)
        if refused is not None:
            raise refused from None
        raise
    except ApiError as exc:
        refused = refusal(exc)
        if refused is not None:
            raise refused from None
        raise
    budget.check_time()
    return resp


def whole(q: agg.AggregateQuery) -> bool:
    """Whether the terms plan asks for every group, not a top N: with no key (one group per time
    bucket) or an enum key (a few values; _ENUM_TERMS asked for). Then the totals and the
    records without the key need no aggregation of their own (another pass over the records
    each): `matched` is the sum of the buckets' counts, `other` the groups beyond the top N, and
    a bucket whose terms do not add up to its count (records without the key, or more values
    than asked for: sum_other_doc_count) sends the call to the composite path."""
    return not q.group_by or q.group_by[0].field in ENUM_FIELDS


def terms_plan(q: agg.AggregateQuery, one_shard: bool = False) -> dict[str, Any] | None:
    """The aggregations of the terms top N (module docstring), or None where it does not apply:
    one key without a prefix (or, with time buckets, none), metrics count and sums. With an
    interval the same sits under a date_histogram (epoch-aligned fixed interval, like the
    composite's source): the top N of each bucket.

    one_shard: the search is expected to read one shard (one day index of one primary). One shard
    computes every group's values completely and sends its top `size` in the answer's order, so
    that top N is exact whatever the shard cut, and no large shard_size is needed (at 10M records
    and 700,000 sources, shard_size 500,000 took 16-23 s where size 11 takes 1.7 s). The proof is
    the response's shard count (_run_terms), not the expectation."""
    if len(q.group_by) > 1 or (not q.interval_ms and not q.group_by) or any(k.masked for k in q.group_by):
        return None
    if any(m.op not in ("count", "sum") for m in q.metrics):
        return None
    subs = dict(_SUB[(m.op, m.field)] for m in q.metrics if m.op == "sum")
    every = whole(q)
    inner: dict[str, Any] = {}
    if q.group_by:
        key = q.group_by[0]
        order_metric = q.metrics[q.order_index]
        order_by = "_count" if order_metric.op == "count" else _SUB[("sum", order_metric.field)][0]
        size = max(q.limit + 1, _ENUM_TERMS) if every else q.limit + 1
        terms = {
            "field": key.field,
            "size": size,
            "shard_size": size if one_shard else max(TERMS_SHARD_SIZE, size),
            # every group comes back: any order will do, and the key's is the cheapest
            "order": [{"_key": "asc"}] if every else [{order_by: "desc" if q.descending else "asc"}, {"_key": "asc"}],
        }
        inner = {"t": {"terms": terms, **({"aggs": subs} if subs else {})}}
        if not every:
            inner["m"] = {"missing": {"field": key.field}, **({"aggs": subs} if subs else {})}
    else:
        inner = dict(subs)  # one group per time bucket: its own sums
    out: dict[str, Any] = {}
    if not every:
        totals = {f"t_{name}": body for name, body in subs.items()}
        out["n"] = {"filter": {"match_all": {}}, **({"aggs": totals} if totals else {})}
    elif not q.interval_ms:
        out["n"] = {"filter": {"match_all": {}}}  # the count alone (no sub-aggregation: no pass over values)
    if q.interval_ms:
        histogram = {"field": "start_time", "fixed_interval": f"{int(q.interval_ms)}ms", "min_doc_count": 1}
        out["h"] = {"date_histogram": histogram, **({"aggs": inner} if inner else {})}
    else:
        out.update(inner)
    return out


def _run_terms(
    q: agg.AggregateQuery, budget: agg.Budget, search: Search, aggs: dict[str, Any], one_shard: bool = False
) -> agg.Groups | None:
    """The terms top N, or None when Elasticsearch cannot show it is exact (or refuses to hold
    that many groups: a circuit breaker, search.max_buckets). Exact: no shard cut its list
    (doc_count_error_upper_bound 0), or, planned for one shard, at most one shard was read
    (`_shards`, the shard count the store's search adds to the aggregations)."""
    try:
        resp = _ask(q, budget, search, aggs)
    except ResourceExhausted:
        if budget.remaining() > 0:  # refused for its size: the composite pages may fit
            return None
        raise
    except ApiError as exc:
        if exc.status_code in (400, 429, 503) and budget.remaining() > 0:
            return None
        raise
    conv = _converter(q.group_by[0]) if q.group_by else None
    approximate = False
    single = one_shard and int(resp.get("_shards", 2)) <= 1

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

    def bucket_groups(bucket: int | None, parent: dict[str, Any]) -> list[agg.Group] | None:
        """The groups of one time bucket (or of everything), None when not proven exact."""
        if conv is None:
            return [agg.Group(bucket, (), values(parent))]
        t = parent.get("t", {})
        if t.get("doc_count_error_upper_bound", -1) != 0 and not single:
            return None
        groups = [agg.Group(bucket, (conv(b["key"]),), values(b)) for b in t.get("buckets", [])]
        if every:  # every record of the bucket must be in its groups (whole())
            count = int(parent["doc_count"] if bucket is not None else resp.get("n", {}).get("doc_count", 0))
            if t.get("sum_other_doc_count", -1) != 0 or sum(g.values[0] for g in groups) != count:
                return None
            return groups
        missing = parent.get("m", {})
        if int(missing.get("doc_count", 0)) > 0:
            groups.append(agg.Group(bucket, (None,), values(missing)))
        return groups

    parts: list[tuple[int | None, dict[str, Any]]] = (
        [(int(b["key"]), b) for b in resp.get("h", {}).get("buckets", [])] if q.interval_ms else [(None, resp)]
    )
    every = whole(q)
    rank = agg.group_order(q)
    top: list[agg.Group] = []
    folded = False
    sums = [0] * (1 + len(q.metrics))  # whole(): the totals, from every group
    for bucket, parent in parts:
        groups = bucket_groups(bucket, parent)
        if groups is None:
            return None
        if every:
            for g in groups:
                for j, v in enumerate(g.values):
                    sums[j] += v
        groups.sort(key=rank)
        top += groups[: q.limit]
        folded = folded or len(groups) > q.limit
        budget.check_groups(len(top))
    if every:
        total = tuple(sums)
    else:
        zero = {"doc_count": 0, **{f"t_{v[0]}": {"value": 0} for v in _SUB.values()}}
        total = values(resp.get("n") or zero, "t_")
    other = None
    if folded:  # some group was folded: other = totals - the rows (counts and sums subtract exactly)
        other = tuple(
            0 if m.op == "count_distinct" else total[j + 1] - sum(g.values[j + 1] for g in top)
            for j, m in enumerate(q.metrics)
        )
    why = "a sum at or above 2**53" if approximate else ""
    return agg.Groups(top, approximate, why, ranked=True, other=other, matched=total[0])


def run(q: agg.AggregateQuery, search: Search, one_shard: bool = False) -> agg.Groups:
    """The answer through `search(body_aggs, timeout_s)` (which returns the `aggregations` of one
    search response, plus `_shards`: how many shards it read): the terms top N when it is exact
    (first planned for one shard when one_shard says the search reads one, see terms_plan), else
    the composite aggregation paged to its end, the groups ranked as they complete."""
    budget = agg.Budget(q)
    if one_shard:
        aggs = terms_plan(q, one_shard=True)
        if aggs is not None:
            answer = _run_terms(q, budget, search, aggs, one_shard=True)
            if answer is not None:
                return answer
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
    lazy = not any(k.masked for k in q.group_by)
    if (
        streaming
        and lazy
        and count_buckets
        and (q.group_by or q.interval_ms)
        and all(m.op in ("count", "count_distinct") for m in q.metrics)
    ):
        return _run_bucket_counts(q, budget, search, sources)
    ranker = agg.Ranker(q)
    accs: dict[tuple[int | None, agg.Key], _Acc] = {}
    held = 0  # distinct values held
    approximate = False
    # Streaming: the group being filled (its first bucket's raw key, its keys once made, its
    # accumulator). Without a prefix a group is one raw key, so its keys are made only if it may
    # be a row (complete()); with one, raw keys of one network must be told apart by their keys.
    current: tuple[tuple[Any, ...], tuple[int | None, agg.Key] | None, _Acc] | None = None

    def values_of(acc: _Acc) -> tuple[int, ...]:
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
        return (acc.count, *values)

    def complete(raw: tuple[Any, ...], gkey: tuple[int | None, agg.Key] | None, acc: _Acc) -> None:
        """A streamed group is final: folded at once when it cannot be a row, keys made only
        for the ones that may (in key order, a few dozen of tens of thousands)."""
        values = values_of(acc)
        bucket = int(raw[0]) if raw[0] is not None else None
        if ranker.outranked(bucket, values):
            ranker.fold(values)
        else:
            gkey = gkey or convert(raw)
            ranker.add(agg.Group(gkey[0], gkey[1], values))

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
                    made = None if lazy else convert(raw)
                    if current is None or lazy or current[1] != made:
                        if current is not None:
                            complete(*current)
                        current = (raw, made, _Acc(ops, 0 if count_buckets else len(distinct)))
                assert current is not None
                acc = current[2]
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
        complete(*current)
    for gkey, acc in accs.items():
        ranker.add(agg.Group(gkey[0], gkey[1], values_of(acc)))
    return ranker.result(approximate, "a sum at or above 2**53" if approximate else "")


def _run_bucket_counts(q: agg.AggregateQuery, budget: agg.Budget, search: Search, sources: list[Any]) -> agg.Groups:
    """_run_composite for count and one count_distinct without prefixes (scanners): groups arrive as
    runs of buckets, each bucket one distinct value of its group (or the records without one), so a
    group is two integers while it fills; a group that cannot be a row is folded without its keys.
    The same answer as the general loop, at about half its CPU per bucket (its accumulator, metric
    loop and tuples per bucket showed when Elasticsearch's side of the call was cached)."""
    ranker = agg.Ranker(q)
    names = (["b"] if q.interval_ms else []) + [f"k{i}" for i in range(len(q.group_by))]
    raw_of = operator.itemgetter(*names)  # one name: the value itself; several: a tuple
    single = len(names) == 1
    interval = bool(q.interval_ms)
    keys = [_converter(k) for k in q.group_by]
    distinct = [m.op == "count_distinct" for m in q.metrics]
    outranked, add = ranker.outranked, ranker.add
    folded = [0]  # records of the groups folded: `other` adds counts and keeps count_distinct 0, so one fold at the end

    def finish(raw: Any, count: int, values: int) -> None:
        parts = (raw,) if single else raw
        bucket = (int(parts[0]) if parts[0] is not None else None) if interval else None
        row = (count, *[values if d else count for d in distinct])
        if outranked(bucket, row):
            folded[0] += count
        else:
            add(agg.Group(bucket, tuple(conv(v) for conv, v in zip(keys, parts[interval:])), row))

    current: Any = None
    started = False
    count = values = 0
    after: dict[str, Any] | None = None
    while True:
        comp: dict[str, Any] = {"size": PAGE, "sources": sources}
        if after is not None:
            comp["after"] = after
        g = _ask(q, budget, search, {"g": {"composite": comp}}).get("g", {})
        buckets = g.get("buckets", [])
        for b in buckets:
            k = b["key"]
            raw = raw_of(k)
            if not started or raw != current:
                if started:
                    finish(current, count, values)
                current, started, count, values = raw, True, 0, 0
            count += b["doc_count"]
            if k["d0"] is not None:  # a value, not the bucket of records without one
                values += 1
        after = g.get("after_key")
        if not buckets or after is None:
            break
    if started:
        finish(current, count, values)
    if folded[0]:
        ranker.fold((folded[0], *[0 if d else folded[0] for d in distinct]))
    return ranker.result(False, "")
