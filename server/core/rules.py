"""The field rules of API.md, each written once.

Validators append FieldViolations to a list instead of raising at the first problem, so one
INVALID_ARGUMENT names every bad field (google.rpc.BadRequest).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import unicodedata
from typing import Iterable, Iterator

from server.core.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DESCRIPTION_MAX = 200  # rule 3: Unicode code points, not bytes
FLOW_LOG_NAME_MAX = 65  # rule 4
RETENTION_DEFAULT = 7
RETENTION_MIN, RETENTION_MAX = 1, 3650
MAX_ADDRESSES = 64
MAX_RULES = 100

_REGION = re.compile(r"[a-z][a-z0-9-]{0,31}")
_STORE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_RESOURCE_ID = re.compile(r"[a-z][a-z0-9-]{2,63}")
_NETWORK_ID = re.compile(r"(vpc|csn)-[a-z0-9][a-z0-9-]{0,59}")
_FLOW_LOG_ID = re.compile(r"fl-[a-z0-9]{8,32}")
# Rule ids (SecurityRule.id, FlowRecord.rule_id): names users and clouds give their rules
# ("sg-web-3", "acl-1", Azure's "DefaultRule_DenyAllInBound", an ARM path).
RULE_ID_MAX = 128
RULE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:/")
_RULE_ID = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
# The sampling interval a record may carry: the Elasticsearch mapping stores it as an integer.
SAMPLING_RATE_MAX = 2**31 - 1
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Rule 4: starts with a letter (ASCII or Chinese); letters, digits, Chinese characters and -_/.
_FLOW_LOG_NAME = re.compile(rf"[A-Za-z{_CJK}][A-Za-z0-9{_CJK}\-_/.]*")


def _show(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


class RegionCatalogue:
    """The regions this server serves (the `regions` setting); any other is INVALID_ARGUMENT."""

    def __init__(self, regions: Iterable[str]) -> None:
        self.names = tuple(dict.fromkeys(regions))
        self._set = frozenset(self.names)

    def __contains__(self, region: object) -> bool:
        return region in self._set

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def unknown(self, value: str) -> str:
        return f"unknown region {_show(value)}: this server serves {', '.join(self.names)} (the `regions` setting)"


class Violations:
    """Collects field violations; `raise_if_any()` turns them into one InvalidArgument. With a
    RegionCatalogue, region() also refuses regions outside it."""

    def __init__(self, regions: RegionCatalogue | None = None) -> None:
        self.items: list[FieldViolation] = []
        self.regions = regions

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)

    # -- individual rules -------------------------------------------------------------------

    def region(self, field: str, value: str, *, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "is required (e.g. 'bj' or 'cn-north-1')")
        elif not _REGION.fullmatch(value):
            self.add(
                field, f"{_show(value)} is not a region: 1-32 lowercase letters, digits or '-', starting with a letter"
            )
        elif self.regions is not None and value not in self.regions:
            self.add(field, self.regions.unknown(value))

    def store_name(self, field: str, value: str, what: str, *, required: bool = True) -> None:
        """Project and LogStore names: 1-64 characters, a letter first, then letters, digits, '-', '_'."""
        if not value:
            if required:
                self.add(field, f"{what} is required")
        elif not _STORE_NAME.fullmatch(value):
            self.add(
                field,
                f"{_show(value)} is not a valid {what}: 1-64 characters, a letter first, "
                "then letters, digits, '-' or '_'",
            )

    def flow_log_name(self, field: str, value: str) -> None:
        """Rule 4: 1-65 characters, starts with a letter; letters, digits, Chinese, -_/."""
        n = len(value)
        if n == 0:
            self.add(field, "is required")
        elif n > FLOW_LOG_NAME_MAX:
            self.add(field, f"must be at most {FLOW_LOG_NAME_MAX} characters (has {n})")
        elif not _FLOW_LOG_NAME.fullmatch(value):
            self.add(
                field,
                f"{_show(value)} is not a valid name: it must start with a letter and contain only letters, "
                "digits, Chinese characters and -_/.",
            )

    def description(self, field: str, value: str) -> None:
        """Rule 3: at most 200 characters, counted as Unicode code points."""
        n = len(value)
        if n > DESCRIPTION_MAX:
            self.add(field, f"must be at most {DESCRIPTION_MAX} characters (has {n})")
        elif any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
            self.add(field, "must not contain control characters (NUL and the like)")

    def retention_days(self, field: str, value: int) -> None:
        if value != 0 and not RETENTION_MIN <= value <= RETENTION_MAX:
            self.add(
                field,
                f"must be {RETENTION_MIN}-{RETENTION_MAX} days, or 0 for the default of {RETENTION_DEFAULT} "
                f"(got {value})",
            )

    def resource_id(self, field: str, value: str, *, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "is required")
        elif not _RESOURCE_ID.fullmatch(value):
            self.add(
                field, f"{_show(value)} is not a resource id: 3-64 lowercase letters, digits or '-', a letter first"
            )

    def network_id(self, field: str, value: str) -> None:
        if not value:
            self.add(field, "is required: the VPC ('vpc-…') or, for CSN, the CSN instance ('csn-…')")
        elif not _NETWORK_ID.fullmatch(value):
            self.add(field, f"{_show(value)} is not a network id: 'vpc-…' or 'csn-…' in lowercase letters and digits")

    def rule_id(self, field: str, value: str) -> None:
        """Optional; when given, 1-128 letters, digits or '-_.:/'."""
        if value and not _RULE_ID.fullmatch(value):
            self.add(field, f"{_show(value)} is not a rule id: 1-{RULE_ID_MAX} letters, digits or '-_.:/'")

    def enum(self, field: str, value: int, enum_cls: type[enum.Enum], *, required: bool = True) -> None:
        """Value 0 (*_UNSPECIFIED) is refused where a value is required; unknown numbers always."""
        try:
            member = enum_cls(value)
        except ValueError:
            self.add(field, f"{value} is not a known {enum_cls.__name__} value")
            return
        if required and member.value == 0:
            names = ", ".join(m.name for m in enum_cls if m.value)
            self.add(field, f"is required: one of {names}")

    def address(self, field: str, value: str) -> None:
        if "%" in value:  # ipaddress accepts "fe80::1%eth0" and keeps any text after the '%'
            self.add(field, f"{_show(value)}: zone identifiers ('%…') are not allowed; give the address alone")
            return
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError:
            if "/" in value:
                try:
                    fixed = ipaddress.ip_network(value, strict=False)
                    self.add(field, f"{_show(value)} has host bits set; did you mean {fixed}?")
                    return
                except ValueError:
                    pass
            self.add(field, f"{_show(value)} is not an IPv4/IPv6 address or CIDR")


def rule_id_problem(value: str) -> str | None:
    """Why `value` cannot be a rule id, or None when it can ("" can: no rule)."""
    if not value or _RULE_ID.fullmatch(value):
        return None
    if len(value) > RULE_ID_MAX:
        return f"must be at most {RULE_ID_MAX} characters (has {len(value)})"
    return f"{_show(value)} is not a rule id: letters, digits or '-_.:/' only"


def check_flow_log_id(value: str) -> None:
    """Ids are checked for shape so a garbage id is INVALID_ARGUMENT, a well-formed unknown one NOT_FOUND."""
    if not value:
        raise InvalidArgument.field("id", "is required")
    if not _FLOW_LOG_ID.fullmatch(value):
        raise InvalidArgument.field(
            "id", f"{_show(value)} is not a flow log id ('fl-' and 8-32 lowercase letters or digits)"
        )


def page_size(value: int, field: str = "page_size") -> int:
    """0 means the default; above the maximum is clamped (AIP-158); negative is refused."""
    if value < 0:
        raise InvalidArgument.field(field, f"must not be negative (got {value})")
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)
