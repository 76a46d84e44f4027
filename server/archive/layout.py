"""The archive's key layout: Hive-style `account=/region=/project=/log_store=/dt=/hour=` paths,
their escaping, and reading an hour or a day back from a path (see server/archive/__init__.py).
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from urllib.parse import quote

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")
_PART = re.compile(r"^part-(?P<batch>[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199})\.parquet$")
_DT = re.compile(r"^dt=(\d{4})-(\d{2})-(\d{2})$")
_HOUR = re.compile(r"^hour=(\d{2})$")


def _escape(value: str) -> str:
    if value == "":
        return _NULL_PARTITION
    return quote(value, safe="")


def _hour_parts(hour_index: int) -> tuple[str, str]:
    day, hour = divmod(hour_index, 24)
    return (_EPOCH + timedelta(days=day)).isoformat(), f"{hour:02d}"


def _hour_index_of(dt: str, hour: str) -> int | None:
    """Hours since the epoch from 'dt=YYYY-MM-DD' and 'hour=HH' segments; None if malformed."""
    m, h = _DT.match(dt), _HOUR.match(hour)
    if not m or not h:
        return None
    try:
        day = (date(int(m[1]), int(m[2]), int(m[3])) - _EPOCH).days
    except ValueError:
        return None
    hh = int(h[1])
    return day * 24 + hh if hh < 24 else None


def _day_index_of(dt: str) -> int | None:
    m = _DT.match(dt)
    if not m:
        return None
    try:
        return (date(int(m[1]), int(m[2]), int(m[3])) - _EPOCH).days
    except ValueError:
        return None
