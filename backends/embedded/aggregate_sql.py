"""Aggregate (server.core.aggregate) as one DuckDB GROUP BY over the `records` table.

The rules are server/core/aggregate.py's; this module only writes them in SQL:
- An address key is the 16-byte `src_ip`/`dst_ip` blob (IPv4 stored IPv4-mapped, NULL when the
  record has none), which is exactly the core's canonical key integer in big-endian bytes, so
  grouping by the blob groups ::ffff:10.0.0.5 with 10.0.0.5 and NODATA rows into one NULL group.
- A prefix is a mask on that integer: the blob as a UHUGEINT (its hex text cast), shifted right
  and back left by 32-N4 bits inside ::ffff:0:0/96 and 128-N6 bits elsewhere. The cast costs
  per row, so with a prefix the statement groups twice: first by the raw blobs (few distinct
  addresses, whatever the record count), then the masked keys of those groups. Sums add, min
  and max combine, and count_distinct stays exact because the first stage also groups by the
  raw distinct value.
- Buckets: start_time minus start_time modulo the interval (start times are positive).
- count_distinct of an address ignores NULL (no address), as the core says.
The statement is bounded: LIMIT max_groups + 1 tells "too many groups" without fetching them.
"""
from __future__ import annotations

from server.core.aggregate import AggregateQuery, FieldKind, GroupKey, Metric

_V4_LO = "'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xFF\\xFF\\x00\\x00\\x00\\x00'::BLOB"
_V4_HI = "'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\xFF\\xFF\\xFF\\xFF\\xFF\\xFF'::BLOB"

_BLOB = {"src_addr": "src_ip", "dst_addr": "dst_ip"}


def _raw(key: GroupKey) -> str:
    """The column a key reads before any mask."""
    return _BLOB[key.field] if key.kind is FieldKind.ADDRESS else f'"{key.field}"'


def _shifted(value: str, bits: int) -> str:
    if bits <= 0:
        return value
    if bits >= 128:
        return "0::UHUGEINT"
    return f"(({value} >> {bits}) << {bits})"


def _masked(col: str, key: GroupKey) -> str:
    """The key integer (UHUGEINT) of the network of blob column `col`; NULL stays NULL."""
    value = f"CAST('0x' || hex({col}) AS UHUGEINT)"
    return (f"CASE WHEN {col} IS NULL THEN NULL::UHUGEINT "
            f"WHEN {col} BETWEEN {_V4_LO} AND {_V4_HI} THEN {_shifted(value, 32 - key.prefix4)} "
            f"ELSE {_shifted(value, 128 - key.prefix6)} END")


def _final(col: str, key: GroupKey) -> str:
    return _masked(col, key) if key.masked else col


_PARTIAL = {("count", ""): ("count(*)", "sum"), ("sum", "bytes"): ("sum(bytes)", "sum"),
            ("sum", "packets"): ("sum(packets)", "sum"), ("min", "start_time"): ("min(start_time)", "min"),
            ("max", "end_time"): ("max(end_time)", "max")}


def aggregate_sql(q: AggregateQuery, where: str) -> str:
    """SELECT bucket, key_1..key_n, count, metric_1..metric_m (every group, at most
    max_groups + 1 of them) over the rows of `where`."""
    bucket = f"start_time - start_time % {int(q.interval_ms)}" if q.interval_ms else "NULL::BIGINT"
    keys = list(q.group_by)
    distinct = [m.distinct for m in q.metrics if m.distinct is not None]
    limit = f" LIMIT {int(q.max_groups) + 1}" if q.max_groups else ""
    two_stage = any(k.masked for k in keys) or any(d.masked for d in distinct)
    if not two_stage:
        cols = [f"{bucket} AS b"] + [f"{_raw(k)} AS k{i}" for i, k in enumerate(keys)] + ["count(*) AS n"]
        cols += [_metric(m) for m in q.metrics]
        group = ", ".join(["b"] + [f"k{i}" for i in range(len(keys))])
        return f"SELECT {', '.join(cols)} FROM records WHERE {where} GROUP BY {group}{limit}"
    # Stage 1: raw keys (and raw distinct values), partial sums/min/max.
    partials: list[tuple[str, str]] = [("count(*)", "sum")]
    for m in q.metrics:
        if m.op != "count_distinct" and _PARTIAL[(m.op, m.field)] not in partials:
            partials.append(_PARTIAL[(m.op, m.field)])
    inner_cols = [f"{bucket} AS b"] + [f"{_raw(k)} AS k{i}" for i, k in enumerate(keys)]
    inner_cols += [f"{_raw(d)} AS d{j}" for j, d in enumerate(distinct)]
    inner_group = ["b"] + [f"k{i}" for i in range(len(keys))] + [f"d{j}" for j in range(len(distinct))]
    inner_cols += [f"{expr} AS p{i}" for i, (expr, _) in enumerate(partials)]
    inner = f"SELECT {', '.join(inner_cols)} FROM records WHERE {where} GROUP BY {', '.join(inner_group)}"
    # Stage 2: masked keys; partials combined, distinct values (masked) counted.
    outer_cols = ["b"] + [f"{_final(f'k{i}', k)} AS g{i}" for i, k in enumerate(keys)] + ["sum(p0) AS n"]
    j = 0
    for m in q.metrics:
        if m.op == "count_distinct":
            assert m.distinct is not None
            outer_cols.append(f"count(DISTINCT {_final(f'd{j}', m.distinct)})")
            j += 1
        else:
            p = partials.index(_PARTIAL[(m.op, m.field)])
            outer_cols.append(f"{partials[p][1]}(p{p})")
    group = ", ".join(["b"] + [f"g{i}" for i in range(len(keys))])
    return f"SELECT {', '.join(outer_cols)} FROM ({inner}) GROUP BY {group}{limit}"


def _metric(m: Metric) -> str:
    if m.op == "count_distinct":
        assert m.distinct is not None
        return f"count(DISTINCT {_raw(m.distinct)})"
    return _PARTIAL[(m.op, m.field)][0]
