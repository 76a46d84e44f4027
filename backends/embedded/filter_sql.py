"""Filter tree -> DuckDB WHERE fragment, and the address encoding that fragment relies on.

The `records` table has every FlowRecord field as a column of the same name (enums as proto
numbers, times as epoch ms) plus `src_ip`/`dst_ip`: the address as 16 big-endian bytes, IPv4 as
IPv4-mapped ::ffff:a.b.c.d, NULL when the record has no address. A CIDR is then a BETWEEN on
equal-length blobs, which DuckDB compares bytewise (unsigned) like the 128-bit integers they
are. ip_to_blob lives here, not in the store, because the encoding and the query must agree.

The semantics are server/core/filter.py's (read its docstring); the SQL mirrors them:
- src_ip/dst_ip are the only columns that are ever NULL. Every address leaf guards with
  `col IS NOT NULL AND ...`, which is FALSE (never NULL) for a missing address, so NOT, AND and
  OR above it stay two-valued and `NOT src_addr = X` is TRUE on NODATA rows as the evaluator
  says. The guard is a plain conjunct rather than COALESCE(..., FALSE) so DuckDB can still push
  it into the scan. The other columns always hold a value (FlowRecord fields are never None).
- IPv4 values become their ::ffff:0:0/96 range. An IPv6 network whose range contains that
  block (only ::/0 .. ::/80) also excludes it, since IPv6 values never match IPv4 addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Sequence

from server.core.filter import (
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
    covers_mapped_range,
    is_host,
)

_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_MAPPED_LO = _V4_MAPPED_PREFIX + b"\x00" * 4
_MAPPED_HI = _V4_MAPPED_PREFIX + b"\xff" * 4

BLOB_COLUMN = {"src_addr": "src_ip", "dst_addr": "dst_ip"}
"""Address field -> the blob column that encodes it."""


def ip_to_blob(text: str) -> bytes | None:
    """The 16-byte column value for an address text: None for "" (no address), IPv4 and
    IPv4-mapped IPv6 both as ::ffff:a.b.c.d. Raises ValueError for text that is no address."""
    if not text:
        return None
    try:  # the C library's parser: ~10x faster than ipaddress, the same bytes where both accept
        if ":" not in text:
            return _V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, text)
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        pass  # scoped ("fe80::1%eth0") or not an address: ipaddress decides
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv4Address):
        return _V4_MAPPED_PREFIX + addr.packed
    return addr.packed


def _bound(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if isinstance(address, ipaddress.IPv4Address):
        return _V4_MAPPED_PREFIX + address.packed
    return address.packed


def _net_range(net: Network) -> tuple[bytes, bytes]:
    return _bound(net.network_address), _bound(net.broadcast_address)


def _quote(column: str) -> str:
    return f'"{column}"'


class _Builder:
    def __init__(self) -> None:
        self.params: list[object] = []

    def placeholders(self, values: Sequence[object]) -> str:
        self.params.extend(values)
        return ", ".join("?" * len(values))

    def between(self, col: str, lo: bytes, hi: bytes) -> str:
        self.params.extend((lo, hi))
        return f"{col} BETWEEN ? AND ?"

    # -- addresses -----------------------------------------------------------------------------
    def address_in(self, column: str, nets: tuple[Network, ...]) -> str:
        """`column` (non-NULL) lies in one of nets: the caller adds the IS NOT NULL guard."""
        col = _quote(column)
        terms: list[str] = []
        hosts = [_bound(n.network_address) for n in nets if is_host(n)]
        if hosts:
            terms.append(f"{col} IN ({self.placeholders(hosts)})")
        for net in nets:
            if is_host(net):
                continue
            term = self.between(col, *_net_range(net))
            if covers_mapped_range(net):
                term = f"({term} AND NOT ({self.between(col, _MAPPED_LO, _MAPPED_HI)}))"
            terms.append(term)
        return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"

    def matches(self, column: str, nets: tuple[Network, ...]) -> str:
        """Two-valued: the side has an address and it is in nets."""
        return f"({_quote(column)} IS NOT NULL AND {self.address_in(column, nets)})"

    def address(self, leaf: Leaf) -> str:
        if isinstance(leaf, Compare):
            nets: tuple[Network, ...] = (leaf.value,)  # type: ignore[assignment]
            negative = leaf.op == "!="
        else:
            nets, negative = leaf.values, leaf.negated  # type: ignore[assignment]
        columns = [BLOB_COLUMN[c] for c in FIELDS[leaf.field].columns]
        if len(columns) == 1:
            (col,) = columns
            if negative:
                return f"({_quote(col)} IS NOT NULL AND NOT ({self.address_in(col, nets)}))"
            return self.matches(col, nets)
        if negative:
            present = " OR ".join(f"{_quote(c)} IS NOT NULL" for c in columns)
            absent = " AND ".join(f"NOT {self.matches(c, nets)}" for c in columns)
            return f"(({present}) AND {absent})"
        return "(" + " OR ".join(self.matches(c, nets) for c in columns) + ")"

    # -- everything else -----------------------------------------------------------------------
    def scalar(self, leaf: Leaf) -> str:
        columns = FIELDS[leaf.field].columns
        if isinstance(leaf, InList):
            values = list(leaf.values)
            op = "NOT IN" if leaf.negated else "IN"
            joiner = " AND " if leaf.negated else " OR "
            parts = [f"{_quote(c)} {op} ({self.placeholders(values)})" for c in columns]
        else:
            joiner = " AND " if leaf.op == "!=" else " OR "
            parts = [f"{_quote(c)} {leaf.op} {self.placeholders([leaf.value])}" for c in columns]
        return parts[0] if len(parts) == 1 else "(" + joiner.join(parts) + ")"

    def expr(self, expr: Expr) -> str:
        if isinstance(expr, (Compare, InList)):
            if FIELDS[expr.field].kind is Kind.ADDRESS:
                return self.address(expr)
            return self.scalar(expr)
        if isinstance(expr, Not):
            return f"(NOT ({self.expr(expr.item)}))"
        joiner = " AND " if isinstance(expr, And) else " OR "
        assert isinstance(expr, (And, Or))
        return "(" + joiner.join(self.expr(i) for i in expr.items) + ")"


def to_sql(expr: Expr | None) -> tuple[str, list[object]]:
    """A WHERE fragment with `?` parameters (ints, strs, 16-byte bytes); ("TRUE", []) for no
    filter. Identifiers are quoted, values are always parameters."""
    if expr is None:
        return "TRUE", []
    builder = _Builder()
    sql = builder.expr(expr)
    return sql, builder.params
