"""Filter tree -> Elasticsearch query DSL, and the enum names the index stores.

Written against the records mapping of the Elasticsearch store: src_addr/dst_addr are `ip`
(omitted from the document when the record has no address), ports, protocol, packets, bytes and
tcp_flags are numeric, start_time/end_time are `date` with format epoch_millis, action,
log_status, direction and resource_type are `keyword`s holding the prefix-less enum name
(ENUM_FIELDS / enum_name below: the store indexes with them, so index and query agree), and the
other strings are `keyword`.

The semantics are server/core/filter.py's (read its docstring); the query mirrors them:
- An absent address never satisfies term/terms, so positive comparisons need nothing more;
  != and NOT IN add an `exists` filter so a missing address is FALSE there too, while NOT
  around anything is a plain must_not (TRUE on NODATA rows, as in the evaluator).
- The `ip` type keeps IPv4 as IPv4-mapped IPv6, like the embedded store. Filter values come
  pre-normalised (IPv4-mapped values already IPv4), which also matters because ES refuses a
  CIDR written with an IPv4-mapped address. An IPv6 network covering the IPv4-mapped block
  (::/0 .. ::/80) gets must_not 0.0.0.0/0, since IPv6 values never match IPv4 addresses.
- Everything runs in filter context (bool.filter / should + minimum_should_match / must_not):
  no scoring, and every `should` carries minimum_should_match 1 so it is never optional.
"""

from __future__ import annotations

from typing import Any

from server.core.filter import (
    ENUM_FIELDS,
    FIELDS,
    And,
    Compare,
    Expr,
    InList,
    Kind,
    Leaf,
    Network,
    Not,
    Or,
    Value,
    covers_mapped_range,
    is_host,
)

__all__ = ["ENUM_FIELDS", "enum_name", "enum_number", "to_query"]

Query = dict[str, Any]
_ALL_IPV4 = "0.0.0.0/0"
_RANGE_KEYS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


def enum_name(field: str, number: int) -> str:
    """The keyword indexed for an enum field's proto number ("REJECT"); unknown numbers as
    their decimal text, so they never match a name (as the evaluator compares numbers)."""
    try:
        return ENUM_FIELDS[field](number).name
    except ValueError:
        return str(int(number))


def enum_number(field: str, name: str) -> int:
    """Back from an indexed keyword to the proto number (for reading documents)."""
    member = ENUM_FIELDS[field].__members__.get(name)
    return int(member) if member is not None else int(name)


def _any(clauses: list[Query]) -> Query:
    if len(clauses) == 1:
        return clauses[0]
    return {"bool": {"should": clauses, "minimum_should_match": 1}}


def _none(clauses: list[Query]) -> Query:
    return {"bool": {"must_not": clauses}}


def _address_text(net: Network) -> str:
    return str(net.network_address) if is_host(net) else str(net)


def _address_in(column: str, nets: tuple[Network, ...]) -> Query:
    plain = [_address_text(n) for n in nets if not covers_mapped_range(n)]
    clauses: list[Query] = []
    if len(plain) == 1:
        clauses.append({"term": {column: plain[0]}})
    elif plain:
        clauses.append({"terms": {column: plain}})
    for net in nets:
        if covers_mapped_range(net):
            clauses.append(
                {"bool": {"filter": [{"term": {column: str(net)}}], "must_not": [{"term": {column: _ALL_IPV4}}]}}
            )
    return _any(clauses)


def _exists(column: str) -> Query:
    return {"exists": {"field": column}}


def _address(leaf: Leaf) -> Query:
    if isinstance(leaf, Compare):
        nets: tuple[Network, ...] = (leaf.value,)  # type: ignore[assignment]
        negative = leaf.op == "!="
    else:
        nets, negative = leaf.values, leaf.negated  # type: ignore[assignment]
    columns = FIELDS[leaf.field].columns
    matches = [_address_in(c, nets) for c in columns]
    if not negative:
        return _any(matches)
    return {"bool": {"filter": [_any([_exists(c) for c in columns])], "must_not": matches}}


def _es_value(field: str, value: Value) -> Any:
    if FIELDS[field].kind is Kind.ENUM:
        assert isinstance(value, int)
        return enum_name(field, value)
    return value


def _equals(column: str, kind: Kind, values: list[Any]) -> Query:
    if kind is Kind.TIME:
        return _any([{"range": {column: {"gte": v, "lte": v, "format": "epoch_millis"}}} for v in values])
    if len(values) == 1:
        return {"term": {column: values[0]}}
    return {"terms": {column: values}}


def _scalar(leaf: Leaf) -> Query:
    spec = FIELDS[leaf.field]
    columns = spec.columns
    if isinstance(leaf, InList):
        values = [_es_value(leaf.field, v) for v in leaf.values]
        matches = [_equals(c, spec.kind, values) for c in columns]
        return _none(matches) if leaf.negated else _any(matches)
    value = _es_value(leaf.field, leaf.value)
    if leaf.op in ("=", "!="):
        matches = [_equals(c, spec.kind, [value]) for c in columns]
        return _none(matches) if leaf.op == "!=" else _any(matches)
    bound: dict[str, Any] = {_RANGE_KEYS[leaf.op]: value}
    if spec.kind is Kind.TIME:
        bound["format"] = "epoch_millis"
    return _any([{"range": {c: dict(bound)}} for c in columns])


def _translate(expr: Expr) -> Query:
    if isinstance(expr, (Compare, InList)):
        if FIELDS[expr.field].kind is Kind.ADDRESS:
            return _address(expr)
        return _scalar(expr)
    if isinstance(expr, Not):
        return _none([_translate(expr.item)])
    items = [_translate(i) for i in expr.items]
    if isinstance(expr, And):
        return {"bool": {"filter": items}}
    assert isinstance(expr, Or)
    return _any(items)


def to_query(expr: Expr | None) -> Query:
    """The query for a filter tree ({"match_all": {}} for no filter): plain JSON-able dicts,
    to be placed in a bool.filter next to the store's own account/time conditions."""
    if expr is None:
        return {"match_all": {}}
    return _translate(expr)
