"""server.core.ingest.accept_columns (the column-wise fast path of Ingest) must give exactly what
accept() gives, record for record: same records, same rejections in the same order."""

from __future__ import annotations

import random

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlog.v1 import record_pb2
from server.api.services import _raw_columns, _raw_rows
from server.core.attribution import AddressMatcher
from server.core.ingest import RAW_FIELDS, accept, accept_columns
from server.core.model import FlowLog, ResourceType, TrafficType
from server.core.records import record_id, record_ids

NOW = 1_780_000_000_000
FL = FlowLog(
    id="fl-abcdefgh1",
    region="bj",
    name="n",
    resource_type=ResourceType.EIP,
    resource_id="eip-1",
    network_id="vpc-1",
    traffic_type=TrafficType.ALL,
    project="p",
    log_store="ls",
    account_id="acct",
)
# The resource's addresses: a record without a direction gets it from these.
MATCHER = AddressMatcher(["10.0.0.0/24", "10.0.5.7", "2001:db8::/120"])
RULE_IDS = ["", "acl-1", "sg-web-3", "default-deny"]


def _row(rnd: random.Random, start: int) -> tuple:
    v6 = rnd.random() < 0.2
    a = (
        (lambda: f"2001:db8::{rnd.randrange(1, 999):x}")
        if v6
        else (lambda: f"10.0.{rnd.randrange(9)}.{rnd.randrange(1, 250)}")
    )
    pk = rnd.randrange(1, 100)
    return (
        "",
        "",
        "",
        a(),
        a(),
        rnd.randrange(65536),
        rnd.choice([22, 443, 53]),
        rnd.choice([6, 17, 1]),
        pk,
        pk * rnd.randrange(40, 1500),
        start,
        start + rnd.randrange(0, 60_000),
        rnd.choice([1, 2]),
        1,
        rnd.choice([1, 2]),
        rnd.randrange(0, 0x1000),
        rnd.choice(RULE_IDS),
        rnd.randrange(4),
        rnd.choice([0, 1, 100, 2**31 - 1]),
    )


BAD = [  # (column index, value) that some check refuses, or that changes the path taken
    (0, "f" * 32),
    (1, "other"),
    (1, "acct"),
    (2, "fl-other123"),
    (2, "fl-abcdefgh1"),
    (3, "999.1.1.1"),
    (3, ""),
    (4, "::1"),
    (3, "10.000.0.1"),
    (5, 70000),
    (6, -1),
    (7, 256),
    (8, 10**9),
    (9, 2**64),
    (10, 0),
    (10, NOW + 10**9),
    (11, 0),
    (11, NOW + 2 * 86_400_000),
    (12, 0),
    (12, 3),
    (13, 2),
    (13, 0),
    (13, 4),
    (14, 0),
    (14, 3),
    (15, 0x1000),
    (15, -1),
    (3, "::ffff:10.0.0.1"),
    (3, "2001:DB8::1"),
    (16, "sg web"),
    (16, "x" * 129),
    (16, "规则"),
    (17, 4),
    (17, -1),
    (18, 2**31),
    (18, -1),
]


def _check(rows: list[tuple], first_index: int = 5) -> None:
    cols = tuple(map(tuple, zip(*rows))) if rows else ((),) * RAW_FIELDS
    want = accept(FL, rows, first_index, NOW, MATCHER)
    got = accept_columns(FL, cols, first_index, NOW, MATCHER)
    assert got == want
    assert [type(r) for r in got[0]] == [type(r) for r in want[0]]


def test_a_clean_batch_takes_the_fast_path_and_matches(monkeypatch):
    rnd = random.Random(1)
    rows = [_row(rnd, NOW - 3_600_000 + i) for i in range(500)]
    _check(rows)
    want = accept(FL, rows, 0, NOW)
    import server.core.ingest as ingest

    def no_slow_path(*a, **k):
        raise AssertionError("a clean batch must not need the record-by-record path")

    monkeypatch.setattr(ingest, "accept", no_slow_path)
    assert accept_columns(FL, tuple(zip(*rows)), 0, NOW) == want


def test_every_kind_of_bad_record_anywhere_in_the_batch():
    rnd = random.Random(2)
    for col, value in BAD:
        rows = [_row(rnd, NOW - 3_600_000 + i) for i in range(50)]
        k = rnd.randrange(50)
        row = list(rows[k])
        row[col] = value
        rows[k] = tuple(row)
        _check(rows)


def test_nodata_rows_and_given_record_ids():
    rnd = random.Random(3)
    rows = [_row(rnd, NOW - 3_600_000 + i) for i in range(20)]
    rows.append(("", "", "", "", "", 0, 0, 0, 0, 0, NOW - 60_000, NOW - 1, 0, 2, 0, 0, "", 0, 0))
    _check(rows)
    good = [_row(rnd, NOW - 3_600_000 + i) for i in range(20)]
    ids = [record_id(FL.id, r[3], r[4], r[5], r[6], r[7], r[14], r[10], r[11]) for r in good]
    _check([(rid,) + r[1:] for rid, r in zip(ids, good)])


def test_empty():
    _check([])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(BAD) - 1), st.integers(0, 39)), max_size=4), st.integers(0, 10**6))
def test_random_mixes(bad, seed):
    rnd = random.Random(seed)
    rows = [_row(rnd, NOW - 3_600_000 + i) for i in range(40)]
    for b, k in bad:
        col, value = BAD[b]
        row = list(rows[k])
        row[col] = value
        rows[k] = tuple(row)
    _check(rows)


def test_record_ids_match_record_id():
    rnd = random.Random(4)
    rows = [_row(rnd, NOW - i) for i in range(100)]
    cols = list(zip(*rows))
    assert record_ids(FL.id, cols[3], cols[4], cols[5], cols[6], cols[7], cols[14], cols[10], cols[11]) == [
        record_id(FL.id, r[3], r[4], r[5], r[6], r[7], r[14], r[10], r[11]) for r in rows
    ]


def test_raw_columns_match_raw_rows():
    rnd = random.Random(5)
    recs = []
    for i in range(30):
        r = _row(rnd, NOW - i * 777)
        recs.append(
            record_pb2.FlowRecord(
                record_id=r[0],
                src_addr=r[3],
                dst_addr=r[4],
                src_port=r[5],
                dst_port=r[6],
                protocol=r[7],
                packets=r[8],
                bytes=r[9],
                start_time=Timestamp(seconds=r[10] // 1000, nanos=r[10] % 1000 * 1_000_000 + 123),
                end_time=Timestamp(seconds=r[11] // 1000, nanos=r[11] % 1000 * 1_000_000),
                action=r[12],
                log_status=r[13],
                direction=r[14],
                tcp_flags=r[15],
                rule_id=r[16],
                rule_kind=r[17],
                sampling_rate=r[18],
            )
        )
    assert list(zip(*_raw_columns(recs))) == _raw_rows(recs)
    assert _raw_columns([]) == ((),) * RAW_FIELDS


def test_a_missing_direction_is_derived_before_the_id():
    """Destination in the resource's addresses: INGRESS; else source: EGRESS; else it stays
    unspecified, and is accepted. The id is the one of the derived direction (what a collector
    that sent it would get). Expected values written out here, not computed by the matcher."""
    rnd = random.Random(6)
    base = list(_row(rnd, NOW - 60_000))
    cases = [
        ("198.51.100.1", "10.0.0.9", 1),
        ("10.0.5.7", "198.51.100.1", 2),
        ("10.0.0.1", "10.0.0.2", 1),
        ("198.51.100.1", "198.51.100.2", 0),
        ("2001:db8::ff", "2001:db8::1:0", 2),
    ]
    rows = []
    for src, dst, _ in cases:
        row = base[:]
        row[3], row[4], row[14] = src, dst, 0
        rows.append(tuple(row))
    ok, bad = accept_columns(FL, tuple(zip(*rows)), 0, NOW, MATCHER)
    assert bad == []
    assert [r.direction for r in ok] == [want for _, _, want in cases]
    assert [r.record_id for r in ok] == [
        record_id(FL.id, src, dst, base[5], base[6], base[7], want, base[10], base[11]) for src, dst, want in cases
    ]
    _check(rows)
    # Without the resource's addresses nothing can be derived: accepted, unspecified.
    ok, bad = accept(FL, rows, 0, NOW)
    assert bad == [] and {r.direction for r in ok} == {0}
