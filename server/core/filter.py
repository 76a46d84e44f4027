"""The filter language of Query and Tail: one parser, one typed tree, one meaning.

Every backend answers the same filter with the same records, so the language is parsed once,
here, into a small tree of frozen dataclasses; the evaluator below (used by Tail on live
records), backends/embedded/filter_sql.py (DuckDB) and backends/elasticsearch/filter_dsl.py
(query DSL) only translate that tree. The rules they must all follow are written here.

Grammar (keywords and field names are case-insensitive)::

    filter     := <blank> | or
    or         := and ("OR" and)*
    and        := unary ("AND" unary)*
    unary      := "NOT" unary | "(" or ")" | comparison
    comparison := field op value | field ["NOT"] "IN" "(" value ("," value)* ")"
    op         := "=" | "!=" | "<" | "<=" | ">" | ">="
    value      := bare word (10.0.0.0/8, 2001:db8::/32, ::1, 443, tcp, fl-abc, 2026-11-25T10:00:00Z)
                | "double quoted" | 'single quoted'   (backslash escapes the next character)

A keyword (AND, OR, NOT, IN) is never read as a value: quote it ("and") to compare with it.
Precedence is NOT > AND > OR. A blank filter matches everything (parse() returns None).

Fields and their values:

- src_addr, dst_addr, addr: an IPv4/IPv6 address or a CIDR with no host bits set
  (10.0.0.1/8 is refused, suggesting 10.0.0.0/8). Only =, !=, IN, NOT IN.
- src_port, dst_port, port (0-65535); protocol (0-255 or tcp, udp, icmp, icmpv6, gre, esp, ah,
  sctp); packets, bytes, tcp_flags (0 .. 2**63-1): all six operators.
- start_time, end_time: RFC 3339 (2026-11-25T10:00:00Z, 2026-11-25T12:00:00.250+02:00) or epoch
  milliseconds; records keep milliseconds, so sub-millisecond fractions are refused rather than
  silently rounded. All six operators.
- sampling_rate (0 .. 2**31-1): all six operators.
- action, log_status, direction, resource_type, rule_kind: the enum value name with or without
  its proto prefix (REJECT, ACTION_REJECT; ACL, SECURITY_GROUP, DEFAULT, RULE_KIND_ACL). Only
  =, !=, IN, NOT IN.
- flow_log_id, resource_id, network_id, record_id, log_store, rule_id: exact, case-sensitive
  strings. Only =, !=, IN, NOT IN.

Semantics (identical in the evaluator and both translators):

1. Addresses. A record's address is "" on NODATA rows: such a side *has no address*. Every
   comparison on an address field is FALSE for a side with no address, whatever the operator,
   including != and NOT IN. AND/OR/NOT are plain two-valued logic on top, so
   `NOT src_addr = 10.0.0.0/8` is TRUE on a NODATA row while `src_addr != 10.0.0.0/8` is FALSE.
2. Address families. IPv4 and IPv6 are separate families: an IPv4 value never matches an IPv6
   address and vice versa, so `addr = ::/0` means "any IPv6 address" and does not match IPv4.
   The one bridge is IPv4-mapped IPv6 (::ffff:a.b.c.d), which *is* the IPv4 address a.b.c.d
   on both sides: a record holding ::ffff:10.0.0.5 matches 10.0.0.0/8, and a filter value
   ::ffff:10.0.0.0/104 is read as 10.0.0.0/8. (This is also what Elasticsearch's `ip` type and
   the 16-byte encoding of the embedded store do, so all three agree without special cases.)
3. Either side. `addr` and `port` look at both sides of the flow:
   - =, <, <=, >, >=, IN match when EITHER side matches (`port = 22`: src_port or dst_port is 22);
   - != and NOT IN are their negation, "NEITHER side matches" (`port != 22`: no port is 22),
     so `X != v` is exactly `NOT X = v` for `port`. For `addr` the address rule 1 still holds:
     `addr != 10.0.0.0/8` also requires at least one side to have an address, so it is FALSE on
     a row with both addresses empty, and equals `NOT addr = 10.0.0.0/8` elsewhere.
4. Every other field is a plain comparison of the record's value (records never lack one).

Errors are server.core.errors.InvalidArgument with one FieldViolation(field="filter") whose
description starts "at position N:" (1-based character column; end of filter is len+1). Limits
(4096 characters, nesting depth 32 counting both parentheses and NOT, 1000 values per IN list)
are errors too, so no input can reach a RecursionError or any other exception.
"""

from __future__ import annotations

import difflib
import enum
import functools
import ipaddress
import operator
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Literal, Union, cast

from server.core.errors import FieldViolation, InvalidArgument
from server.core.model import RECORD_FIELDS, Action, Direction, FlowRecord, LogStatus, ResourceType, RuleKind

MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 32
MAX_IN_VALUES = 1000
INT64_MAX = 2**63 - 1
MAX_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z: keeps every time printable as RFC 3339
MIN_TIME_MS = -62135596800000  # 0001-01-01T00:00:00Z

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Value = Union[int, str, Network]
Op = Literal["=", "!=", "<", "<=", ">", ">="]
OPS: tuple[Op, ...] = ("=", "!=", "<", "<=", ">", ">=")
EQUALITY_OPS: frozenset[str] = frozenset({"=", "!="})


# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """`field op value`. `field` is the lower-case filter field name (may be addr/port);
    `value` is already typed: ipaddress network for addresses (a host is a /32 or /128, IPv4-
    mapped values are IPv4), int for numbers, enums and times (epoch ms), str for strings."""

    field: str
    op: Op
    value: Value


@dataclass(frozen=True)
class InList:
    """`field IN (values)`, or `field NOT IN (values)` when negated (see rule 3 for addr/port)."""

    field: str
    values: tuple[Value, ...]
    negated: bool = False


@dataclass(frozen=True)
class And:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Not:
    item: "Expr"


Expr = Union[Compare, InList, And, Or, Not]
Leaf = Union[Compare, InList]


# --------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------


class Kind(enum.Enum):
    ADDRESS = "address"
    NUMBER = "number"
    TIME = "time"
    ENUM = "enum"
    STRING = "string"


@dataclass(frozen=True)
class FieldSpec:
    """What a filter field reads and accepts. `columns` are the FlowRecord fields it reads:
    two for the either-side fields addr and port."""

    name: str
    kind: Kind
    columns: tuple[str, ...]
    minimum: int = 0
    maximum: int = INT64_MAX
    enum: type[enum.IntEnum] | None = None
    enum_prefix: str = ""
    names: dict[str, int] = field(default_factory=dict)  # symbolic numbers (protocol)

    @property
    def either_side(self) -> bool:
        return len(self.columns) > 1

    @property
    def ordered(self) -> bool:
        """Whether <, <=, >, >= make sense (numbers and times only)."""
        return self.kind in (Kind.NUMBER, Kind.TIME)


PROTOCOL_NAMES: dict[str, int] = {
    "icmp": 1,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "sctp": 132,
}
PROTOCOL_HINT = ("tcp", "udp", "icmp", "icmpv6", "gre", "esp", "ah", "sctp")

ENUM_FIELDS: dict[str, type[enum.IntEnum]] = {
    "action": Action,
    "log_status": LogStatus,
    "direction": Direction,
    "resource_type": ResourceType,
    "rule_kind": RuleKind,
}
"""Enum-valued record fields -> their core IntEnum; member names are the prefix-less proto
names ("ACCEPT", "NAT_GATEWAY"), which is also what the Elasticsearch mapping stores."""

_ENUM_PREFIX = {
    "action": "ACTION_",
    "log_status": "LOG_STATUS_",
    "direction": "DIRECTION_",
    "resource_type": "RESOURCE_TYPE_",
    "rule_kind": "RULE_KIND_",
}


def _build_fields() -> dict[str, FieldSpec]:
    specs = [
        FieldSpec("src_addr", Kind.ADDRESS, ("src_addr",)),
        FieldSpec("dst_addr", Kind.ADDRESS, ("dst_addr",)),
        FieldSpec("addr", Kind.ADDRESS, ("src_addr", "dst_addr")),
        FieldSpec("src_port", Kind.NUMBER, ("src_port",), 0, 65535),
        FieldSpec("dst_port", Kind.NUMBER, ("dst_port",), 0, 65535),
        FieldSpec("port", Kind.NUMBER, ("src_port", "dst_port"), 0, 65535),
        FieldSpec("protocol", Kind.NUMBER, ("protocol",), 0, 255, names=PROTOCOL_NAMES),
        FieldSpec("packets", Kind.NUMBER, ("packets",)),
        FieldSpec("bytes", Kind.NUMBER, ("bytes",)),
        FieldSpec("tcp_flags", Kind.NUMBER, ("tcp_flags",)),
        FieldSpec("sampling_rate", Kind.NUMBER, ("sampling_rate",), 0, 2**31 - 1),
        FieldSpec("start_time", Kind.TIME, ("start_time",)),
        FieldSpec("end_time", Kind.TIME, ("end_time",)),
    ]
    specs += [
        FieldSpec(name, Kind.ENUM, (name,), enum=cls, enum_prefix=_ENUM_PREFIX[name])
        for name, cls in ENUM_FIELDS.items()
    ]
    specs += [
        FieldSpec(name, Kind.STRING, (name,))
        for name in ("flow_log_id", "resource_id", "network_id", "record_id", "log_store", "rule_id")
    ]
    return {s.name: s for s in specs}


FIELDS: dict[str, FieldSpec] = _build_fields()
assert all(c in RECORD_FIELDS for s in FIELDS.values() for c in s.columns)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _fail(pos: int, message: str) -> InvalidArgument:
    return InvalidArgument(FieldViolation("filter", f"at position {pos}: {message}"))


# --------------------------------------------------------------------------------------------
# Lexer
# --------------------------------------------------------------------------------------------


class TokenType(enum.Enum):
    WORD = "word"
    STRING = "string"
    OP = "operator"
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    END = "end"


@dataclass(frozen=True)
class Token:
    type: TokenType
    text: str  # the value for WORD/STRING (unescaped), the symbol otherwise
    pos: int  # 1-based column of the first character

    def keyword(self) -> str | None:
        """The keyword this token is (AND, OR, NOT, IN), if it is an unquoted one."""
        if self.type is TokenType.WORD:
            upper = self.text.upper()
            if upper in _KEYWORDS:
                return upper
        return None

    def describe(self) -> str:
        if self.type is TokenType.END:
            return "end of filter"
        if self.type is TokenType.STRING:
            return f"quoted string {_shorten(self.text)!r}"
        return f"'{_shorten(self.text)}'"


_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN"})
_DELIMITERS = frozenset("()=!<>,\"'")
_WHITESPACE = frozenset(" \t\n\r\f\v")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_space(ch: str) -> bool:
    return ch in _WHITESPACE or (ch.isspace() and unicodedata.category(ch) in ("Zs", "Zl", "Zp"))


def _check_char(ch: str, pos: int) -> None:
    """Control, formatting (bidi overrides), surrogate, private and unassigned characters have
    no place in a filter and can make the text display differently from what it means."""
    if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
        raise _fail(pos, f"unexpected character U+{ord(ch):04X}; control and formatting characters are not allowed")


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        pos = i + 1
        if _is_space(ch):
            i += 1
        elif ch == "(":
            tokens.append(Token(TokenType.LPAREN, ch, pos))
            i += 1
        elif ch == ")":
            tokens.append(Token(TokenType.RPAREN, ch, pos))
            i += 1
        elif ch == ",":
            tokens.append(Token(TokenType.COMMA, ch, pos))
            i += 1
        elif ch in "<>":
            if text.startswith("=", i + 1):
                tokens.append(Token(TokenType.OP, ch + "=", pos))
                i += 2
            else:
                tokens.append(Token(TokenType.OP, ch, pos))
                i += 1
        elif ch == "=":
            tokens.append(Token(TokenType.OP, "=", pos))
            i += 1
        elif ch == "!":
            if not text.startswith("=", i + 1):
                raise _fail(pos, "expected '!=' (use NOT to negate a condition)")
            tokens.append(Token(TokenType.OP, "!=", pos))
            i += 2
        elif ch in "\"'":
            out: list[str] = []
            j = i + 1
            while True:
                if j >= n:
                    raise _fail(pos, f"unterminated quoted string: missing closing {ch}")
                c = text[j]
                _check_char(c, j + 1)
                if c == "\\" and j + 1 < n:
                    _check_char(text[j + 1], j + 2)
                    out.append(text[j + 1])
                    j += 2
                elif c == ch:
                    break
                else:
                    out.append(c)
                    j += 1
            tokens.append(Token(TokenType.STRING, "".join(out), pos))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in _DELIMITERS and not _is_space(text[j]):
                _check_char(text[j], j + 1)
                j += 1
            tokens.append(Token(TokenType.WORD, text[i:j], pos))
            i = j
    tokens.append(Token(TokenType.END, "", n + 1))
    return tokens


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------

_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
_DIGITS = re.compile(r"[0-9]{1,30}")
_PREFIX = re.compile(r"[0-9]{1,3}")
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def normalize_network(net: Network) -> Network:
    """IPv4-mapped IPv6 networks (inside ::ffff:0:0/96) are the IPv4 networks they map."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_V4):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def covers_mapped_range(net: Network) -> bool:
    """Whether an (already normalized) IPv6 network's raw 128-bit range contains the IPv4-mapped
    block: translators that compare raw 16-byte ranges must then exclude IPv4 (rule 2)."""
    return isinstance(net, ipaddress.IPv6Network) and _MAPPED_V4.subnet_of(net)


def is_host(net: Network) -> bool:
    return net.prefixlen == net.max_prefixlen


def _parse_address(tok: Token) -> Network:
    text = tok.text
    example = "an IP address or CIDR such as 10.0.0.0/8 or 2001:db8::/32"
    if "%" in text:
        raise _fail(tok.pos, f"{_shorten(text)!r}: zone indexes (%...) are not allowed; expected {example}")
    address_part, slash, prefix = text.partition("/")
    if slash and not _PREFIX.fullmatch(prefix):
        raise _fail(tok.pos, f"{_shorten(text)!r} has an invalid prefix length; expected {example}")
    try:
        if slash:
            net: Network = ipaddress.ip_network(text, strict=True)
        else:
            addr = ipaddress.ip_address(address_part)
            net = ipaddress.ip_network(addr)
    except ValueError as exc:
        if slash and "host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise _fail(tok.pos, f"{text} has host bits set; did you mean {fixed}?") from None
        raise _fail(tok.pos, f"{_shorten(text)!r} is not {example}") from None
    return normalize_network(net)


def _parse_int(tok: Token, spec: FieldSpec) -> int:
    text = tok.text
    named = spec.names.get(text.lower())
    if named is not None:
        return named
    if not _DIGITS.fullmatch(text):
        if spec.names:
            expected = f"a protocol number {spec.minimum}-{spec.maximum} or a name ({', '.join(PROTOCOL_HINT)})"
        else:
            expected = f"a number {spec.minimum}-{spec.maximum}"
        raise _fail(tok.pos, f"expected {expected} for {spec.name}, found {tok.describe()}")
    value = int(text)
    if not spec.minimum <= value <= spec.maximum:
        raise _fail(tok.pos, f"{spec.name} must be {spec.minimum}-{spec.maximum}, found {_shorten(text)}")
    return value


def _parse_time(tok: Token, spec: FieldSpec) -> int:
    text = tok.text
    expected = f"expected an RFC 3339 timestamp like 2026-11-25T10:00:00Z or epoch milliseconds for {spec.name}"
    if _DIGITS.fullmatch(text):
        if int(text) > MAX_TIME_MS:
            raise _fail(tok.pos, f"{expected}; {_shorten(text)} is out of range")
        return int(text)
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise _fail(tok.pos, f"{expected}, found {tok.describe()}")
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    frac = frac or ""
    if frac[3:].strip("0"):
        raise _fail(tok.pos, f"{text}: records keep millisecond precision; use at most 3 fractional digits")
    try:
        offset = timedelta(0)
        if not zulu:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset")
            offset = timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == "-" else 1)
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=timezone(offset))
        ms = (moment - _EPOCH) // timedelta(milliseconds=1) + int((frac + "000")[:3])
    except (ValueError, OverflowError):
        raise _fail(tok.pos, f"{expected}; {_shorten(text)} is not a valid date and time") from None
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise _fail(tok.pos, f"{expected}; {text} is out of range")
    return ms


def _parse_enum(tok: Token, spec: FieldSpec) -> int:
    assert spec.enum is not None
    name = tok.text.upper()
    if name.startswith(spec.enum_prefix):
        name = name[len(spec.enum_prefix) :]
    member = spec.enum.__members__.get(name)
    if member is None:
        choices = [m.name for m in spec.enum if m.value != 0]
        raise _fail(tok.pos, f"unknown {spec.name} {_shorten(tok.text)!r} (expected one of {', '.join(choices)})")
    return int(member)


def _parse_value(tok: Token, spec: FieldSpec) -> Value:
    if spec.kind is Kind.ADDRESS:
        return _parse_address(tok)
    if spec.kind is Kind.NUMBER:
        return _parse_int(tok, spec)
    if spec.kind is Kind.TIME:
        return _parse_time(tok, spec)
    if spec.kind is Kind.ENUM:
        return _parse_enum(tok, spec)
    return tok.text


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent; recursion is bounded by MAX_DEPTH, long AND/OR chains are loops."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.type is not TokenType.END:
            self.i += 1
        return tok

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _fail(tok.pos, f"filter nested too deeply (at most {MAX_DEPTH} levels of parentheses and NOT)")

    def parse(self) -> Expr:
        expr = self.parse_or()
        if self.tok.type is not TokenType.END:
            if self.tok.type is TokenType.RPAREN:
                raise _fail(self.tok.pos, "unmatched ')'")
            raise _fail(self.tok.pos, f"expected AND, OR or end of filter, found {self.tok.describe()}")
        return expr

    def parse_or(self) -> Expr:
        items = [self.parse_and()]
        while self.tok.keyword() == "OR":
            self.advance()
            items.append(self.parse_and())
        return _join(Or, items)

    def parse_and(self) -> Expr:
        items = [self.parse_unary()]
        while self.tok.keyword() == "AND":
            self.advance()
            items.append(self.parse_unary())
        return _join(And, items)

    def parse_unary(self) -> Expr:
        tok = self.tok
        if tok.keyword() == "NOT":
            self.enter(tok)
            self.advance()
            item = self.parse_unary()
            self.depth -= 1
            return Not(item)
        if tok.type is TokenType.LPAREN:
            self.enter(tok)
            self.advance()
            expr = self.parse_or()
            if self.tok.type is not TokenType.RPAREN:
                raise _fail(
                    self.tok.pos, f"expected ')' to close '(' at position {tok.pos}, found {self.tok.describe()}"
                )
            self.advance()
            self.depth -= 1
            return expr
        return self.parse_comparison()

    def parse_field(self) -> FieldSpec:
        tok = self.advance()
        if tok.type is not TokenType.WORD or tok.keyword() is not None:
            raise _fail(tok.pos, f"expected a field name, '(' or NOT, found {tok.describe()}")
        spec = FIELDS.get(tok.text.lower())
        if spec is None:
            close = difflib.get_close_matches(tok.text.lower(), FIELDS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else f" (fields: {', '.join(FIELDS)})"
            raise _fail(tok.pos, f"unknown field '{_shorten(tok.text)}'{hint}")
        return spec

    def parse_value(self, spec: FieldSpec, after: str) -> Value:
        tok = self.advance()
        if tok.type is TokenType.STRING or (tok.type is TokenType.WORD and tok.keyword() is None):
            return _parse_value(tok, spec)
        hint = " (quote it to use a keyword as a value)" if tok.keyword() else ""
        raise _fail(tok.pos, f"expected a value after {after}, found {tok.describe()}{hint}")

    def parse_comparison(self) -> Leaf:
        spec = self.parse_field()
        tok = self.advance()
        if tok.type is TokenType.OP:
            if tok.text not in EQUALITY_OPS and not spec.ordered:
                raise _fail(
                    tok.pos,
                    f"operator '{tok.text}' cannot be used with {spec.name}; "
                    f"{spec.kind.value} fields take =, !=, IN or NOT IN",
                )
            value = self.parse_value(spec, f"'{tok.text}'")
            return Compare(spec.name, tok.text, value)  # type: ignore[arg-type]
        negated = False
        if tok.keyword() == "NOT":
            negated = True
            tok = self.advance()
            if tok.keyword() != "IN":
                raise _fail(tok.pos, f"expected IN after {spec.name} NOT, found {tok.describe()}")
        if tok.keyword() == "IN":
            return self.parse_list(spec, negated)
        raise _fail(
            tok.pos, f"expected an operator (=, !=, <, <=, >, >=, IN, NOT IN) after {spec.name}, found {tok.describe()}"
        )

    def parse_list(self, spec: FieldSpec, negated: bool) -> InList:
        keyword = "NOT IN" if negated else "IN"
        open_tok = self.advance()
        if open_tok.type is not TokenType.LPAREN:
            raise _fail(open_tok.pos, f"expected '(' after {keyword}, found {open_tok.describe()}")
        values: list[Value] = []
        after = "'('"
        while True:
            if len(values) == MAX_IN_VALUES:
                raise _fail(self.tok.pos, f"too many values in {keyword} list (at most {MAX_IN_VALUES})")
            values.append(self.parse_value(spec, after))
            tok = self.advance()
            if tok.type is TokenType.RPAREN:
                break
            if tok.type is not TokenType.COMMA:
                raise _fail(
                    tok.pos,
                    f"expected ',' or ')' in {keyword} list opened at position {open_tok.pos}, found {tok.describe()}",
                )
            after = "','"
        return InList(spec.name, tuple(dict.fromkeys(values)), negated)


def _join(cls: type[And] | type[Or], items: list[Expr]) -> Expr:
    """One item stays itself; nested nodes of the same kind are flattened (a AND (b AND c))."""
    if len(items) == 1:
        return items[0]
    flat: list[Expr] = []
    for item in items:
        flat.extend(item.items if isinstance(item, cls) else (item,))
    return cls(tuple(flat))


def parse(text: str) -> Expr | None:
    """Parse a filter; None when it is blank (match everything). Raises InvalidArgument only."""
    if not isinstance(text, str):
        raise _fail(1, "the filter must be text")
    if len(text) > MAX_FILTER_LENGTH:
        raise _fail(
            MAX_FILTER_LENGTH + 1, f"filter is {len(text)} characters long; at most {MAX_FILTER_LENGTH} are allowed"
        )
    tokens = tokenize(text)
    if len(tokens) == 1:
        return None
    return _Parser(tokens).parse()


# --------------------------------------------------------------------------------------------
# Tree helpers
# --------------------------------------------------------------------------------------------


def iter_leaves(expr: Expr | None) -> Iterator[Leaf]:
    """Every Compare/InList of the tree, left to right."""
    stack = [expr] if expr is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, (And, Or)):
            stack.extend(reversed(node.items))
        elif isinstance(node, Not):
            stack.append(node.item)
        else:
            yield node


def fields_used(expr: Expr | None) -> frozenset[str]:
    """FlowRecord fields the filter reads (addr -> src_addr and dst_addr): lets a backend or
    the Tail hub know which columns matter."""
    return frozenset(c for leaf in iter_leaves(expr) for c in FIELDS[leaf.field].columns)


def format_time(ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with milliseconds (what parse() reads back)."""
    m = _EPOCH + timedelta(milliseconds=ms)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}.{ms % 1000:03d}Z"


def _format_value(field_name: str, value: Value) -> str:
    spec = FIELDS[field_name]
    if spec.kind is Kind.ADDRESS:
        assert not isinstance(value, (int, str))
        return str(value.network_address) if is_host(value) else str(value)
    if spec.kind is Kind.ENUM:
        assert spec.enum is not None
        return spec.enum(cast(int, value)).name
    if spec.kind is Kind.TIME:
        assert isinstance(value, int)
        return format_time(value)
    if spec.kind is Kind.STRING:
        assert isinstance(value, str)
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def to_text(expr: Expr | None) -> str:
    """Canonical filter text: parse(to_text(e)) == e. For logs and error messages."""
    if expr is None:
        return ""
    if isinstance(expr, Compare):
        return f"{expr.field} {expr.op} {_format_value(expr.field, expr.value)}"
    if isinstance(expr, InList):
        values = ", ".join(_format_value(expr.field, v) for v in expr.values)
        return f"{expr.field} {'NOT IN' if expr.negated else 'IN'} ({values})"
    if isinstance(expr, Not):
        inner = expr.item
        text = to_text(inner)
        return f"NOT ({text})" if isinstance(inner, (And, Or)) else f"NOT {text}"
    if isinstance(expr, And):
        return " AND ".join(f"({to_text(i)})" if isinstance(i, Or) else to_text(i) for i in expr.items)
    return " OR ".join(f"({to_text(i)})" if isinstance(i, Or) else to_text(i) for i in expr.items)


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------

Predicate = Callable[[FlowRecord], bool]
AddressKey = tuple[int, int]  # (4 or 6, integer value)

_OP_FUNCS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@functools.lru_cache(maxsize=65536)
def address_key(text: str) -> AddressKey | None:
    """A record address as (family, int), IPv4-mapped IPv6 folded into IPv4 (rule 2); None
    when the side has no address ("" on NODATA rows, or text that is no address at all)."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return (4, int(mapped))
        return (6, int(addr))
    return (4, int(addr))


def _address_matcher(nets: tuple[Network, ...]) -> Callable[[AddressKey], bool]:
    hosts = frozenset((n.version, int(n.network_address)) for n in nets if is_host(n))
    ranges = tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in nets if not is_host(n))

    def match(key: AddressKey) -> bool:
        if key in hosts:
            return True
        family, value = key
        for fam, lo, hi in ranges:
            if fam == family and lo <= value <= hi:
                return True
        return False

    return match


def _compile_address(leaf: Leaf) -> Predicate:
    if isinstance(leaf, Compare):
        nets: tuple[Any, ...] = (leaf.value,)
        negative = leaf.op == "!="
    else:
        nets, negative = leaf.values, leaf.negated
    match = _address_matcher(nets)
    idx = [RECORD_FIELDS.index(c) for c in FIELDS[leaf.field].columns]
    key = address_key
    if len(idx) == 1:
        (i,) = idx
        if negative:

            def single_neg(r: FlowRecord) -> bool:
                k = key(r[i])
                return k is not None and not match(k)

            return single_neg

        def single_pos(r: FlowRecord) -> bool:
            k = key(r[i])
            return k is not None and match(k)

        return single_pos
    i, j = idx
    if negative:

        def either_neg(r: FlowRecord) -> bool:
            a, b = key(r[i]), key(r[j])
            if a is None and b is None:
                return False
            return not ((a is not None and match(a)) or (b is not None and match(b)))

        return either_neg

    def either_pos(r: FlowRecord) -> bool:
        a, b = key(r[i]), key(r[j])
        return (a is not None and match(a)) or (b is not None and match(b))

    return either_pos


def _compile_scalar(leaf: Leaf) -> Predicate:
    idx = [RECORD_FIELDS.index(c) for c in FIELDS[leaf.field].columns]
    if isinstance(leaf, InList):
        values = frozenset(leaf.values)
        if len(idx) == 1:
            (i,) = idx
            if leaf.negated:
                return lambda r: r[i] not in values
            return lambda r: r[i] in values
        i, j = idx
        if leaf.negated:
            return lambda r: r[i] not in values and r[j] not in values
        return lambda r: r[i] in values or r[j] in values
    v = leaf.value
    if len(idx) == 1:
        (i,) = idx
        op = _OP_FUNCS[leaf.op]
        return lambda r: op(r[i], v)
    i, j = idx
    if leaf.op == "!=":
        return lambda r: r[i] != v and r[j] != v
    op = _OP_FUNCS[leaf.op]
    return lambda r: op(r[i], v) or op(r[j], v)


def _compile(expr: Expr) -> Predicate:
    if isinstance(expr, (Compare, InList)):
        if FIELDS[expr.field].kind is Kind.ADDRESS:
            return _compile_address(expr)
        return _compile_scalar(expr)
    if isinstance(expr, Not):
        inner = _compile(expr.item)
        return lambda r: not inner(r)
    parts = tuple(_compile(i) for i in expr.items)
    if isinstance(expr, And):

        def all_of(r: FlowRecord) -> bool:
            for p in parts:
                if not p(r):
                    return False
            return True

        return all_of

    def any_of(r: FlowRecord) -> bool:
        for p in parts:
            if p(r):
                return True
        return False

    return any_of


def _match_all(record: FlowRecord) -> bool:
    return True


def compile_predicate(expr: Expr | None) -> Predicate:
    """Compile the tree once into nested closures: Tail calls the result for every live record."""
    if expr is None:
        return _match_all
    return _compile(expr)
