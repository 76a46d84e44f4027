"""server.core.ingest.accept_columns (the column-wise fast path of Ingest) must give exactly what
accept() gives, record for record: same records, same rejections in the same order."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from flowlog.v1 import record_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from server.api.services import _raw_columns, _raw_rows
from server.core.ingest import accept, accept_columns
from server.core.model import FlowLog, ResourceType, TrafficType
from server.core.records import record_id, record_ids

NOW = 1_780_000_000_000
FL = FlowLog(id="fl-abcdefgh1", region="bj", name="n", resource_type=ResourceType.EIP, resource_id="eip-1",
             network_id="vpc-1", traffic_type=TrafficType.ALL, project="p", log_store="ls", account_id="acct")


def _row(rnd: random.Random, start: int) -> tuple:
    v6 = rnd.random() < 0.2
    a = (lambda: f"2001:db8::{rnd.randrange(1, 999):x}") if v6 else (lambda: f"10.0.{rnd.randrange(9)}.{rnd.randrange(1, 250)}")
    pk = rnd.randrange(1, 100)
    return ("", "", "", a(), a(), rnd.randrange(65536), rnd.choice([22, 443, 53]), rnd.choice([6, 17, 1]), pk,
            pk * rnd.randrange(40, 1500), start, start + rnd.randrange(0, 60_000), rnd.choice([1, 2]), 1,
            rnd.choice([1, 2]), rnd.randrange(0, 0x1000))


BAD = [  # (column index, value) that some check refuses, or that changes the path taken
    (0, "f" * 32), (1, "other"), (1, "acct"), (2, "fl-other123"), (2, "fl-abcdefgh1"), (3, "999.1.1.1"),
    (3, ""), (4, "::1"), (3, "10.000.0.1"), (5, 70000), (6, -1), (7, 256), (8, 10**9), (9, 2**64),
    (10, 0), (10, NOW + 10**9), (11, 0), (11, NOW + 2 * 86_400_000), (12, 0), (12, 3), (13, 2), (13, 0),
    (13, 4), (14, 0), (15, 0x1000), (15, -1), (3, "::ffff:10.0.0.1"), (3, "2001:DB8::1"),
]


def _check(rows: list[tuple], first_index: int = 5) -> None:
    cols = tuple(map(tuple, zip(*rows))) if rows else ((),) * 16
    want = accept(FL, rows, first_index, NOW)
    got = accept_columns(FL, cols, first_index, NOW)
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
    rows.append(("", "", "", "", "", 0, 0, 0, 0, 0, NOW - 60_000, NOW - 1, 0, 2, 0, 0))
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
        record_id(FL.id, r[3], r[4], r[5], r[6], r[7], r[14], r[10], r[11]) for r in rows]


def test_raw_columns_match_raw_rows():
    rnd = random.Random(5)
    recs = []
    for i in range(30):
        r = _row(rnd, NOW - i * 777)
        recs.append(record_pb2.FlowRecord(
            record_id=r[0], src_addr=r[3], dst_addr=r[4], src_port=r[5], dst_port=r[6], protocol=r[7], packets=r[8],
            bytes=r[9], start_time=Timestamp(seconds=r[10] // 1000, nanos=r[10] % 1000 * 1_000_000 + 123),
            end_time=Timestamp(seconds=r[11] // 1000, nanos=r[11] % 1000 * 1_000_000), action=r[12],
            log_status=r[13], direction=r[14], tcp_flags=r[15]))
    assert list(zip(*_raw_columns(recs))) == _raw_rows(recs)
    assert _raw_columns([]) == ((),) * 16
