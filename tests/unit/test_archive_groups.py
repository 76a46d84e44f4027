"""server.archive._groups splits a batch column-wise when it can; the result must be the record-by-record one."""

from __future__ import annotations

import random
from collections import defaultdict

from server.archive import HOUR_MS, _groups, _identity
from server.core.model import FlowRecord
from server.core.records import with_id


def _reference(records):
    groups = defaultdict(dict)
    for r in records:
        groups[(r.account_id, r.region, r.project, r.log_store, r.start_time // HOUR_MS)][
            r.record_id or _identity(r)
        ] = r
    return {k: list(v.values()) for k, v in groups.items()}


def _records(rnd: random.Random, n: int, hours: int, stores: int, dup: float, blank_ids: bool) -> list[FlowRecord]:
    base = 1_780_000_000_000 - 1_780_000_000_000 % HOUR_MS
    out = []
    for i in range(n):
        r = with_id(
            FlowRecord(
                "",
                1,
                "acct",
                "fl-abcdefgh",
                "bj",
                "p",
                f"ls{rnd.randrange(stores)}",
                1,
                "eip-1",
                "vpc-1",
                f"10.0.0.{rnd.randrange(1, 40)}",
                "203.0.113.9",
                rnd.randrange(60000),
                443,
                6,
                rnd.randrange(1, 9),
                999,
                base + rnd.randrange(hours * HOUR_MS),
                0,
                1,
                1,
                1,
                0,
            )
        )
        r = r._replace(end_time=r.start_time + 10)
        if out and rnd.random() < dup:  # the same record again, maybe with other counters
            r = rnd.choice(out)._replace(packets=rnd.randrange(1, 9))
        out.append(r._replace(record_id="") if blank_ids and rnd.random() < 0.5 else r)
    return out


def test_groups_match_the_record_by_record_split():
    rnd = random.Random(1)
    for hours, stores, dup, blank in [
        (1, 1, 0, False),
        (1, 1, 0.2, False),
        (3, 1, 0.1, False),
        (4, 1, 0, False),
        (7, 1, 0, False),
        (2, 3, 0.1, False),
        (2, 1, 0.1, True),
    ]:
        records = _records(rnd, 3000, hours, stores, dup, blank)
        assert _groups(records) == _reference(records)
    assert _groups([]) == {}
