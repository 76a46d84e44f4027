"""Aggregate: the request model (group keys, time buckets, metrics, order, top N) and its oracle.

API.md, "QueryService.Aggregate". The use case parses and checks a request here (plan()), a
query backend with the `RecordAggregation` ability (server.core.ports) computes every group of
the answer where the data is (DuckDB: one GROUP BY; Elasticsearch: a composite aggregation),
and finish() ranks the groups, keeps the top N per bucket and folds the rest into `other`.
evaluate() computes the same groups over FlowRecords in memory: it is the reference the unit
tests hold the model to; the contract suite computes its own expectations independently.

Rules every backend follows (written once, here):

- Group keys. `src_addr`, `dst_addr`: the address, or with `/N` its network; `/N` applies N to
  IPv6 addresses and min(N, 32) to IPv4 ones, `/N4/N6` gives each family its own length. An
  IPv4-mapped IPv6 address (::ffff:a.b.c.d) IS the IPv4 address (the filter language's rule 2).
  A record without an address (NODATA, SKIPDATA rows) has the key "" (one group of its own).
  Ports and protocol are numbers, enums their proto names (`ACTION_REJECT`), the rest text.
- Backends hand over keys in a canonical form (`KeyValue`): an address as one integer in the
  IPv4-mapped 128-bit space (IPv4 a.b.c.d is 0xffff_a.b.c.d, which is how the embedded store's
  16-byte blobs sort) or None for no address; numbers and enums as ints; text as str. Ties of
  the order metric are broken by the keys ascending in exactly that order (no address first,
  then by the 128-bit value; numbers and enums by number; text by code point).
- Time buckets: the start_time of a record, floored to a multiple of `interval` since the epoch.
- Metrics: count, sum(bytes), sum(packets), min(start_time), max(end_time), and
  count_distinct(FIELD) over any group field (with a prefix: distinct networks). A record
  without an address has no value for count_distinct of an address field (it is not counted).
- The answer: per bucket (all records when there is no interval) the groups ordered by the
  order metric (descending by default), ties by keys ascending; the first `limit` of each bucket
  are rows, the others fold into ONE `other` row (no keys, no bucket): count and sums added,
  min/max the min/max over the folded groups, count_distinct 0 (distinct values cannot be
  added). An empty result has no rows (also with no group_by); `matched` counts the records.
- Bounds: the time range at most `limits.aggregate_max_range_days`, at most
  `limits.aggregate_max_groups` groups (held by the backend; more is RESOURCE_EXHAUSTED naming
  the setting, before memory grows with it), within `limits.aggregate_timeout_seconds`.
"""

from __future__ import annotations

import difflib
import enum
import heapq
import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union, cast

from server.core import filter as flt
from server.core import model
from server.core.errors import ResourceExhausted
from server.core.model import RECORD_FIELDS, FlowRecord
from server.core.ports import RecordQuery
from server.core.query import MAX_TIME_MS, MIN_TIME_MS, Scope
from server.core.rules import Violations

DEFAULT_LIMIT = 10
MAX_LIMIT = 10_000
MAX_GROUP_BY = 8
MAX_METRICS = 16
DEFAULT_METRICS = ("count", "sum(bytes)", "sum(packets)")
DAY_MS = 86_400_000

# The address space keys live in: IPv4 a.b.c.d is ::ffff:a.b.c.d.
V4_MAPPED = 0xFFFF << 32
V4_MAPPED_END = V4_MAPPED | 0xFFFF_FFFF
ALL_ONES = (1 << 128) - 1

KeyValue = Union[int, str, None]
Key = tuple[KeyValue, ...]


class FieldKind(enum.Enum):
    ADDRESS = "address"
    NUMBER = "number"
    ENUM = "enum"
    TEXT = "text"


def _enum_fields() -> dict[str, tuple[type[enum.IntEnum], str]]:
    out: dict[str, tuple[type[enum.IntEnum], str]] = {
        "action": (model.Action, "ACTION_"),
        "direction": (model.Direction, "DIRECTION_"),
        "log_status": (model.LogStatus, "LOG_STATUS_"),
        "resource_type": (model.ResourceType, "RESOURCE_TYPE_"),
    }
    rule_kind = getattr(model, "RuleKind", None)
    if rule_kind is not None and "rule_kind" in RECORD_FIELDS:
        out["rule_kind"] = (rule_kind, "RULE_KIND_")
    return out


ENUMS: dict[str, tuple[type[enum.IntEnum], str]] = _enum_fields()
"""Enum group fields -> (core enum, proto prefix): keys are shown as the full proto name."""

_FIELD_ORDER = (
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "action",
    "direction",
    "log_status",
    "log_store",
    "flow_log_id",
    "resource_id",
    "resource_type",
    "network_id",
    "rule_id",
    "rule_kind",
)
FIELDS: dict[str, FieldKind] = {
    name: (
        FieldKind.ADDRESS
        if name in ("src_addr", "dst_addr")
        else FieldKind.NUMBER
        if name in ("src_port", "dst_port", "protocol")
        else FieldKind.ENUM
        if name in ENUMS
        else FieldKind.TEXT
    )
    for name in _FIELD_ORDER
    if name in RECORD_FIELDS
}
"""The fields a request may group by (and count distinct), in API.md's order. rule_id and
rule_kind join when the record model has them."""

SUMMED = ("bytes", "packets")


# ---------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupKey:
    """One group_by entry: a record field, for addresses with optional prefix lengths."""

    field: str
    prefix4: int = 32
    prefix6: int = 128
    spelled: str = ""  # the normalised text, e.g. "src_addr/24"

    @property
    def kind(self) -> FieldKind:
        return FIELDS[self.field]

    @property
    def name(self) -> str:
        return self.spelled or self.field

    @property
    def masked(self) -> bool:
        return self.kind is FieldKind.ADDRESS and (self.prefix4 < 32 or self.prefix6 < 128)


@dataclass(frozen=True)
class Metric:
    """`op` is count | sum | min | max | count_distinct; `field` the record field it reads
    (`distinct` the GroupKey for count_distinct)."""

    op: str
    field: str = ""
    distinct: GroupKey | None = None

    @property
    def name(self) -> str:
        if self.op == "count":
            return "count"
        if self.distinct is not None:
            return f"count_distinct({self.distinct.name})"
        return f"{self.op}({self.field})"


@dataclass(frozen=True)
class AggregateQuery:
    """What a backend with the RecordAggregation ability computes: every group of `groups` (per
    time bucket when interval_ms) over the records of `query` (scope, time range, filter;
    its limit/after/order are unused), with `values` = [count] + one value per metric."""

    query: RecordQuery
    group_by: tuple[GroupKey, ...]
    interval_ms: int
    metrics: tuple[Metric, ...]
    order_index: int  # which metric orders the groups
    descending: bool
    limit: int
    max_groups: int
    deadline: float  # time.monotonic() by which the backend gives up (Budget)
    timeout_s: float


@dataclass(frozen=True)
class Group:
    """One group as a backend computes it: bucket start (ms, None without interval), keys in
    canonical form (module docstring), values = [count, metric 1, metric 2, ...]."""

    bucket: int | None
    keys: Key
    values: tuple[int, ...]


@dataclass(frozen=True)
class Groups:
    """A backend's answer: every group, or (`ranked`) only the top `limit` of each bucket with
    `other` (the folded values, None when nothing was folded) and `matched` already computed."""

    groups: list[Group]
    approximate: bool = False
    why_approximate: str = ""
    ranked: bool = False
    other: tuple[int, ...] | None = None
    matched: int = 0


@dataclass(frozen=True)
class AggregateRow:
    bucket_start_ms: int | None
    keys: tuple[str, ...]
    values: tuple[int, ...]


@dataclass(frozen=True)
class AggregateResult:
    group_by: tuple[str, ...]
    metrics: tuple[str, ...]
    rows: list[AggregateRow]
    other: AggregateRow | None
    matched: int
    approximate: bool


@dataclass(frozen=True)
class Limits:
    """The server's bounds on one Aggregate (config `limits.aggregate_*`)."""

    max_groups: int = 100_000
    timeout_s: float = 30.0
    max_range_days: float = 31.0


_FIELD_SUGGEST = tuple(FIELDS) + ("addr", "port")


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _show(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


_PREFIX = re.compile(r"/(\d{1,4})(?:/(\d{1,4}))?")


def parse_group_key(text: str, where: str, v: Violations) -> GroupKey | None:
    """`field`, `field/N` or `field/N4/N6` (addresses only); None after adding a violation."""
    raw = text.strip()
    name, slash, rest = raw.partition("/")
    name = name.strip().lower()
    if name not in FIELDS:
        hint = (
            "; group by src_addr and dst_addr separately"
            if name == "addr"
            else "; group by src_port and dst_port separately"
            if name == "port"
            else _suggest(name, FIELDS)
        )
        v.add(where, f"{_show(raw)} is not a field to group by: one of {', '.join(FIELDS)}{hint}")
        return None
    if not slash:
        return GroupKey(name, spelled=name)
    if FIELDS[name] is not FieldKind.ADDRESS:
        v.add(where, f"{_show(raw)}: only src_addr and dst_addr take a prefix length")
        return None
    m = _PREFIX.fullmatch("/" + rest.replace(" ", ""))
    if m is None:
        v.add(
            where,
            f"{_show(raw)}: write the prefix length as {name}/24 (both families) or {name}/24/64 (IPv4 /24, IPv6 /64)",
        )
        return None
    if m.group(2) is None:
        n = int(m.group(1))
        if n > 128:
            v.add(where, f"{_show(raw)}: prefix length {n} is out of range: 0-32 for IPv4, 0-128 for IPv6")
            return None
        return GroupKey(name, min(n, 32), n, f"{name}/{n}")
    n4, n6 = int(m.group(1)), int(m.group(2))
    if n4 > 32 or n6 > 128:
        v.add(where, f"{_show(raw)}: prefix lengths out of range: the IPv4 one 0-32 ({n4}), the IPv6 one 0-128 ({n6})")
        return None
    return GroupKey(name, n4, n6, f"{name}/{n4}/{n6}")


_METRIC = re.compile(r"([a-z_]+)\s*(?:\(\s*([^()]*?)\s*\))?")
_SIMPLE = {
    ("count", ""): Metric("count"),
    ("count", "*"): Metric("count"),
    ("sum", "bytes"): Metric("sum", "bytes"),
    ("sum", "packets"): Metric("sum", "packets"),
    ("min", "start_time"): Metric("min", "start_time"),
    ("max", "end_time"): Metric("max", "end_time"),
}
METRIC_HELP = (
    "count, sum(bytes), sum(packets), min(start_time), max(end_time), count_distinct(FIELD) for a group_by field"
)


def parse_metric(text: str, where: str, v: Violations) -> Metric | None:
    raw = text.strip()
    m = _METRIC.fullmatch(raw.lower())
    if m is None:
        v.add(where, f"{_show(raw)} is not a metric: one of {METRIC_HELP}")
        return None
    op, arg = m.group(1), (m.group(2) or "")
    if op == "count_distinct":
        if not arg:
            v.add(where, f"{_show(raw)}: name the field, e.g. count_distinct(dst_addr)")
            return None
        sub = Violations()
        key = parse_group_key(arg, where, sub)
        if key is None:
            v.add(where, f"count_distinct: {sub.items[0].description}")
            return None
        return Metric("count_distinct", key.field, key)
    metric = _SIMPLE.get((op, arg))
    if metric is None:
        v.add(
            where,
            f"{_show(raw)} is not a metric: one of {METRIC_HELP}"
            + _suggest(raw.lower(), [n for (o, a), n in ((k, x.name) for k, x in _SIMPLE.items())]),
        )
        return None
    return metric


def plan(
    scope: Scope,
    *,
    start_ms: int | None,
    end_ms: int | None,
    filter_text: str,
    group_by: Sequence[str],
    interval_ms: int | None,
    metrics: Sequence[str],
    order_by: str,
    limit: int,
    limits: Limits,
    now: Callable[[], float] = time.monotonic,
) -> AggregateQuery:
    """Check and normalise a request (InvalidArgument naming every bad field)."""
    v = Violations()
    if start_ms is None:
        v.add("start_time", "is required")
    if end_ms is None:
        v.add("end_time", "is required")
    for name, ms in (("start_time", start_ms), ("end_time", end_ms)):
        if ms is not None and not MIN_TIME_MS <= ms <= MAX_TIME_MS:
            v.add(name, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z")
    if start_ms is not None and end_ms is not None:
        if end_ms <= start_ms:
            v.add("end_time", "must be after start_time")
        elif limits.max_range_days and end_ms - start_ms > limits.max_range_days * DAY_MS:
            v.add(
                "end_time",
                f"the time range is {(end_ms - start_ms) / DAY_MS:.1f} days; Aggregate covers at "
                f"most {limits.max_range_days:g} days (limits.aggregate_max_range_days): "
                "narrow start_time..end_time",
            )
    keys: list[GroupKey] = []
    if len(group_by) > MAX_GROUP_BY:
        v.add("group_by", f"at most {MAX_GROUP_BY} fields (got {len(group_by)})")
    for i, text in enumerate(group_by[:MAX_GROUP_BY]):
        key = parse_group_key(text, f"group_by[{i}]", v)
        if key is not None:
            if any(k.name == key.name for k in keys):
                v.add(f"group_by[{i}]", f"{key.name} is named twice")
            keys.append(key)
    parsed: list[Metric] = []
    if len(metrics) > MAX_METRICS:
        v.add("metrics", f"at most {MAX_METRICS} metrics (got {len(metrics)})")
    for i, text in enumerate(list(metrics or DEFAULT_METRICS)[:MAX_METRICS]):
        metric = parse_metric(text, f"metrics[{i}]", v)
        if metric is not None:
            if any(mm.name == metric.name for mm in parsed):
                v.add(f"metrics[{i}]", f"{metric.name} is named twice")
            parsed.append(metric)
    order_index, descending = 0, True
    if order_by.strip():
        raw = order_by.strip()
        descending = raw.startswith("-")
        sub = Violations()
        wanted = parse_metric(raw.lstrip("-+ "), "order_by", sub)
        names = [mm.name for mm in parsed]
        if wanted is None or wanted.name not in names:
            v.add(
                "order_by",
                f"{_show(raw)} is not one of the request's metrics ({', '.join(names)}); "
                "write one of them, with '-' in front for descending",
            )
        else:
            order_index = names.index(wanted.name)
    if limit < 0 or limit > MAX_LIMIT:
        v.add("limit", f"must be 0 (the default, {DEFAULT_LIMIT}) to {MAX_LIMIT} (got {limit})")
    if interval_ms is not None:
        if interval_ms <= 0:
            v.add("interval", "must be positive (e.g. 60s), or left out for no time buckets")
        elif start_ms is not None and end_ms is not None and end_ms > start_ms:
            buckets = (end_ms - 1) // interval_ms - start_ms // interval_ms + 1
            if limits.max_groups and buckets > limits.max_groups:
                v.add(
                    "interval",
                    f"{interval_ms} ms makes {buckets} buckets over the time range; at most "
                    f"{limits.max_groups} (limits.aggregate_max_groups): use a longer interval",
                )
    v.raise_if_any()
    expr = flt.parse(filter_text)
    assert start_ms is not None and end_ms is not None
    q = RecordQuery(
        account_id=scope.account_id,
        region=scope.region,
        project=scope.project,
        log_stores=scope.log_stores,
        start_ms=start_ms,
        end_ms=end_ms,
        filter=expr,
    )
    return AggregateQuery(
        q,
        tuple(keys),
        interval_ms or 0,
        tuple(parsed),
        order_index,
        descending,
        limit or DEFAULT_LIMIT,
        limits.max_groups,
        now() + limits.timeout_s,
        limits.timeout_s,
    )


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------


def address_value(text: str) -> int | None:
    """An address text as a key integer (IPv4-mapped space); None for "" (no address)."""
    if not text:
        return None
    a = ipaddress.ip_address(text)
    if a.version == 4:
        return V4_MAPPED | int(a)
    return int(a)


def is_v4(value: int) -> bool:
    return V4_MAPPED <= value <= V4_MAPPED_END


def mask(value: int | None, key: GroupKey) -> int | None:
    """The key integer of the network of `value` under the key's prefix lengths."""
    if value is None or not key.masked:
        return value
    keep = 96 + key.prefix4 if is_v4(value) else key.prefix6
    return value & (ALL_ONES ^ ((1 << (128 - keep)) - 1))


def key_text(value: KeyValue, key: GroupKey) -> str:
    """A canonical key as the response shows it."""
    kind = key.kind
    if kind is FieldKind.ADDRESS:
        if value is None:
            return ""
        assert isinstance(value, int)
        if is_v4(value):
            text = str(ipaddress.IPv4Address(value & 0xFFFF_FFFF))
            return f"{text}/{key.prefix4}" if key.masked else text
        text = str(ipaddress.IPv6Address(value))
        return f"{text}/{key.prefix6}" if key.masked else text
    if kind is FieldKind.ENUM:
        cls, prefix = ENUMS[key.field]
        try:
            return prefix + cls(cast(int, value)).name
        except ValueError:
            return str(value)
    return str(value)


def record_key(r: FlowRecord, key: GroupKey) -> KeyValue:
    """The canonical key of one record (the oracle's; backends compute the same in place)."""
    value = getattr(r, key.field)
    if key.kind is FieldKind.ADDRESS:
        return mask(address_value(value), key)
    return cast(KeyValue, value)


def _sort_key(value: KeyValue) -> tuple[int, int | str]:
    if value is None:
        return (0, 0)
    return (1, value)


# ---------------------------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------------------------


class Budget:
    """The bounds a backend checks while it works (RESOURCE_EXHAUSTED naming the setting)."""

    def __init__(self, q: AggregateQuery, now: Callable[[], float] = time.monotonic) -> None:
        self.q = q
        self._now = now

    def remaining(self) -> float:
        return self.q.deadline - self._now()

    def check_time(self) -> None:
        if self.remaining() <= 0:
            raise timed_out(self.q)

    def check_groups(self, n: int) -> None:
        if self.q.max_groups and n > self.q.max_groups:
            raise too_many_groups(self.q)


def timed_out(q: AggregateQuery) -> ResourceExhausted:
    return ResourceExhausted(
        f"Aggregate ran out of time ({q.timeout_s:g} s, limits.aggregate_timeout_seconds); "
        "narrow the time range or the filter, or group by fewer or coarser fields"
    )


def too_many_groups(q: AggregateQuery) -> ResourceExhausted:
    return ResourceExhausted(
        f"Aggregate makes more than {q.max_groups} groups (limits.aggregate_max_groups); "
        "group by fewer fields, use address prefixes (src_addr/24), a longer interval, "
        "or narrow the time range or the filter"
    )


# ---------------------------------------------------------------------------------------------
# The answer
# ---------------------------------------------------------------------------------------------


def other_value(metric: Metric, values: Iterable[int]) -> int:
    vals = list(values)
    if metric.op in ("count", "sum"):
        return sum(vals)
    if metric.op == "min":
        return min(vals)
    if metric.op == "max":
        return max(vals)
    return 0  # count_distinct: distinct values of several groups cannot be added


def finish(q: AggregateQuery, result: Groups) -> AggregateResult:
    """Rank the backend's groups per bucket, keep the top `limit`, fold the rest into `other`
    (a `ranked` answer arrives trimmed: only the order of its rows is made here)."""
    groups = [g for g in result.groups if g.values[0] > 0]
    if q.max_groups and len(groups) > q.max_groups:
        raise too_many_groups(q)
    if result.ranked:
        base = finish(q, Groups(groups, result.approximate, result.why_approximate))
        other = AggregateRow(None, (), result.other) if result.other is not None else None
        return AggregateResult(base.group_by, base.metrics, base.rows, other, result.matched, result.approximate)
    matched = sum(g.values[0] for g in groups)
    by_bucket: dict[int | None, list[Group]] = {}
    for g in groups:
        by_bucket.setdefault(g.bucket, []).append(g)
    i = q.order_index + 1
    rows: list[AggregateRow] = []
    rest: list[Group] = []
    for bucket in sorted(by_bucket, key=lambda b: -1 if b is None else b):
        members = by_bucket[bucket]
        # Keys ascending, then the metric (stable sort): ties keep the key order.
        members.sort(key=lambda g: tuple(_sort_key(k) for k in g.keys))
        members.sort(key=lambda g: g.values[i], reverse=q.descending)
        for g in members[: q.limit]:
            rows.append(
                AggregateRow(g.bucket, tuple(key_text(k, gk) for k, gk in zip(g.keys, q.group_by)), g.values[1:])
            )
        rest += members[q.limit :]
    other = None
    if rest:
        other = AggregateRow(
            None, (), tuple(other_value(m, (g.values[j + 1] for g in rest)) for j, m in enumerate(q.metrics))
        )
    return AggregateResult(
        tuple(k.name for k in q.group_by), tuple(m.name for m in q.metrics), rows, other, matched, result.approximate
    )


def group_order(q: AggregateQuery) -> Callable[[Group], tuple[Any, ...]]:
    """The sort key of finish()'s order within a bucket: smaller ranks first."""
    i = q.order_index + 1
    sign = -1 if q.descending else 1
    return lambda g: (sign * g.values[i], tuple(_sort_key(k) for k in g.keys))


class _Held:
    """A heap entry whose heap top is the WORST group held (heapq is a min-heap)."""

    __slots__ = ("rank", "group")

    def __init__(self, rank: tuple[Any, ...], group: Group) -> None:
        self.rank = rank
        self.group = group

    def __lt__(self, other: "_Held") -> bool:
        return self.rank > other.rank


class Ranker:
    """Top `limit` groups per bucket from a stream of complete groups, in bounded memory: a
    heap of at most `limit` groups per bucket, everything else folded into `other` at once.
    (For backends that see each group once, complete, e.g. in key order.)"""

    def __init__(self, q: AggregateQuery) -> None:
        self.q = q
        self._rank = group_order(q)
        self._heaps: dict[int | None, list[_Held]] = {}
        self._held = 0
        self._other: list[int] | None = None
        self.matched = 0

    def add(self, g: Group) -> None:
        if g.values[0] <= 0:
            return
        self.matched += g.values[0]
        heap = self._heaps.get(g.bucket)
        if heap is None:
            heap = self._heaps[g.bucket] = []
        entry = _Held(self._rank(g), g)
        if len(heap) < self.q.limit:
            heapq.heappush(heap, entry)
            self._held += 1
            if self.q.max_groups and self._held > self.q.max_groups:
                raise too_many_groups(self.q)
            return
        if entry.rank < heap[0].rank:
            entry = heapq.heapreplace(heap, entry)
        self._fold(entry.group)

    def outranked(self, bucket: int | None, values: tuple[int, ...]) -> bool:
        """Whether a group with these values (count first) would be folded whatever its keys:
        its bucket holds `limit` groups already and its order metric is strictly worse than the
        worst of them (a tie would need the keys). Such a group is fold()ed without its keys
        being made (converting keys costs a backend more than the rest of a group)."""
        heap = self._heaps.get(bucket)
        if heap is None or len(heap) < self.q.limit:
            return False
        i = self.q.order_index + 1
        worst = heap[0].group.values[i]
        return values[i] < worst if self.q.descending else values[i] > worst

    def fold(self, values: tuple[int, ...]) -> None:
        """Fold a group that outranked() says cannot be a row (values with the count first)."""
        if values[0] <= 0:
            return
        self.matched += values[0]
        self._fold_values(values[1:])

    def _fold(self, g: Group) -> None:
        self._fold_values(g.values[1:])

    def _fold_values(self, values: tuple[int, ...]) -> None:
        if self._other is None:
            self._other = [0 if m.op == "count_distinct" else v for m, v in zip(self.q.metrics, values)]
            return
        for j, (m, v) in enumerate(zip(self.q.metrics, values)):
            if m.op in ("count", "sum"):
                self._other[j] += v
            elif m.op == "min":
                self._other[j] = min(self._other[j], v)
            elif m.op == "max":
                self._other[j] = max(self._other[j], v)

    def result(self, approximate: bool = False, why: str = "") -> Groups:
        groups = [e.group for heap in self._heaps.values() for e in heap]
        other = tuple(self._other) if self._other is not None else None
        return Groups(groups, approximate, why, ranked=True, other=other, matched=self.matched)


def bucket_of(start_time: int, interval_ms: int) -> int | None:
    return start_time - start_time % interval_ms if interval_ms else None


# ---------------------------------------------------------------------------------------------
# The oracle (tests): the same groups over FlowRecords in memory
# ---------------------------------------------------------------------------------------------


@dataclass
class _Acc:
    count: int = 0
    values: list[int] = field(default_factory=list)
    distinct: list[set[Any]] = field(default_factory=list)


def evaluate(q: AggregateQuery, records: Iterable[FlowRecord]) -> Groups:
    """The groups of q over `records` (any records: the scope and time range are applied here)."""
    rq = q.query
    pred = flt.compile_predicate(rq.filter)  # type: ignore[arg-type]
    accs: dict[tuple[int | None, Key], _Acc] = {}
    for r in records:
        if not (
            r.account_id == rq.account_id
            and r.region == rq.region
            and r.project == rq.project
            and r.log_store in rq.log_stores
            and rq.start_ms <= r.start_time < rq.end_ms
            and pred(r)
        ):
            continue
        k = (bucket_of(r.start_time, q.interval_ms), tuple(record_key(r, gk) for gk in q.group_by))
        acc = accs.get(k)
        if acc is None:
            acc = accs[k] = _Acc(
                0,
                [0 if m.op in ("count", "sum", "count_distinct") else -1 for m in q.metrics],
                [set() for _ in q.metrics],
            )
        acc.count += 1
        for j, m in enumerate(q.metrics):
            if m.op == "count":
                acc.values[j] += 1
            elif m.op == "sum":
                acc.values[j] += getattr(r, m.field)
            elif m.op == "min":
                x = getattr(r, m.field)
                acc.values[j] = x if acc.values[j] < 0 else min(acc.values[j], x)
            elif m.op == "max":
                acc.values[j] = max(acc.values[j], getattr(r, m.field))
            else:
                assert m.distinct is not None
                d = record_key(r, m.distinct)
                if d is not None:
                    acc.distinct[j].add(d)
    out = []
    for (bucket, keys), acc in accs.items():
        values = [len(acc.distinct[j]) if m.op == "count_distinct" else acc.values[j] for j, m in enumerate(q.metrics)]
        out.append(Group(bucket, keys, (acc.count, *values)))
    return Groups(out)
