"""Values as people type them, parsed into what the API takes: friendly enum names
(`eip`, `nat-gateway`, `allow`, `ACCEPT`) <-> proto enum numbers, protocol names, durations
(`15m`, `2h`, `1d`, `1h30m`), RFC 3339 and `now` -> aware UTC datetimes and Timestamps.

The client library (clients/client.py) and the CLI's rendering (clients/format.py) both use
these; nothing here renders output, imports gRPC or argparse.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.timestamp_pb2 import Timestamp

# --------------------------------------------------------------------------------------------
# Enums
# --------------------------------------------------------------------------------------------

# Enums whose friendly form is upper case: these are the words flow-log users already know
# from the record format and the filter language (`action = REJECT`, log status NODATA).
_UPPER_CASE_ENUMS = frozenset({"flowlog.v1.Action", "flowlog.v1.LogStatus"})


def _enum_prefix(enum_type: EnumTypeWrapper) -> str:
    """The `RESOURCE_TYPE_` part, found from the zero value `*_UNSPECIFIED` (AIP style)."""
    zero = enum_type.Name(0)
    if not zero.endswith("UNSPECIFIED"):
        return ""
    return zero[: -len("UNSPECIFIED")]


def enum_name(enum_type: EnumTypeWrapper, value: int) -> str:
    """Friendly name of an enum value: `eip`, `nat-gateway`, `allow`, `ACCEPT`.

    UNSPECIFIED shows as an empty string (nothing was set); a number this client does not
    know (a newer server) shows as the number, so output never fails on it.
    """
    if value == 0:
        return ""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    short = name[len(_enum_prefix(enum_type)) :]
    if enum_type.DESCRIPTOR.full_name in _UPPER_CASE_ENUMS:
        return short
    return short.lower().replace("_", "-")


def enum_choices(enum_type: EnumTypeWrapper) -> list[str]:
    """Every friendly name except UNSPECIFIED, in declaration order (for --help and errors)."""
    return [enum_name(enum_type, v.number) for v in enum_type.DESCRIPTOR.values if v.number != 0]


def parse_enum(enum_type: EnumTypeWrapper, text: str | int, *, allow_unspecified: bool = False) -> int:
    """Parse what a person or script may write for an enum value.

    Accepts the friendly name in any case with `-`, `_` or spaces (`nat-gateway`,
    `NAT_GATEWAY`), the full proto name (`RESOURCE_TYPE_NAT_GATEWAY`) and the number.
    Raises ValueError listing the valid names, since that is what the user needs next.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a {enum_type.DESCRIPTOR.name}: {text!r}")
    if isinstance(text, int):
        value: int | None = text
    else:
        raw = text.strip()
        value = None
        if raw.isdigit():
            value = int(raw)
        else:
            norm = re.sub(r"[\s\-]+", "_", raw).upper()
            prefix = _enum_prefix(enum_type)
            for candidate in (norm, prefix + norm):
                try:
                    value = enum_type.Value(candidate)
                    break
                except ValueError:
                    continue
    valid = value is not None and value in {v.number for v in enum_type.DESCRIPTOR.values}
    if not valid or (value == 0 and not allow_unspecified):
        choices = ", ".join(enum_choices(enum_type))
        raise ValueError(f"invalid {_enum_label(enum_type)} {text!r} (choose from {choices})")
    assert value is not None
    return value


def _enum_label(enum_type: EnumTypeWrapper) -> str:
    """`ResourceType` -> `resource type`, for error messages."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", enum_type.DESCRIPTOR.name).lower()


# IANA protocol numbers worth a name; anything else is shown as its number.
PROTOCOL_NAMES: dict[int, str] = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmpv6",
    132: "sctp",
}
_PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOL_NAMES.items()}


def protocol_name(number: int) -> str:
    """`6` -> `tcp`; unknown numbers stay numbers."""
    return PROTOCOL_NAMES.get(number, str(number))


def parse_protocol(text: str) -> int:
    """`tcp` / `TCP` / `6` -> 6; `any` / `*` -> 0 (the rule wildcard)."""
    raw = text.strip().lower()
    if raw in ("any", "*", "all"):
        return 0
    if raw.isdigit() and 0 <= int(raw) <= 255:
        return int(raw)
    if raw in _PROTOCOL_NUMBERS:
        return _PROTOCOL_NUMBERS[raw]
    raise ValueError(f"invalid protocol {text!r} (a number 0-255 or one of {', '.join(_PROTOCOL_NUMBERS)})")


# --------------------------------------------------------------------------------------------
# Times
# --------------------------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """`15m`, `2h`, `1d`, `1w`, `90s`, `1h30m`, `1.5h` -> timedelta. A bare number is refused:
    minutes or seconds would be a guess."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(raw):
        if match.start() != pos and raw[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or raw[pos:].strip():
        raise ValueError(f"invalid duration {text!r} (examples: 90s, 15m, 2h, 1d, 1h30m)")
    return timedelta(seconds=total)


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """A point in time as people write it, as an aware UTC datetime.

    - a duration (`15m`, `2h`, `1d`) means that long before `now`;
    - `now`;
    - RFC 3339 / ISO 8601 (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00+02:00`,
      `2024-05-01 12:00`, `2024-05-01`); without an offset it is UTC, never local time,
      so the same command means the same thing on every machine.
    """
    raw = text.strip()
    current = now or datetime.now(timezone.utc)
    if raw.lower() == "now":
        return current
    try:
        return current - parse_duration(raw)
    except ValueError:
        pass
    iso = raw[:-1] + "+00:00" if raw[-1:] in ("Z", "z") else raw
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r} (a duration before now such as 15m, 2h, 1d, "
            "or RFC 3339 such as 2024-05-01T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def to_timestamp(value: datetime | Timestamp | str) -> Timestamp:
    """datetime, Timestamp or anything parse_time accepts -> Timestamp."""
    if isinstance(value, Timestamp):
        return value
    if isinstance(value, str):
        value = parse_time(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(timezone.utc))
    return ts
