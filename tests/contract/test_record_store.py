"""The RecordStore contract (server.core.ports), run against every backend.

Expectations are computed in Python from the written records: ordered by (start_time,
record_id) and filtered with server.core.filter.compile_predicate, so every backend must return
exactly the same records in exactly the same order, and agree with the live-tail evaluator.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import Iterable

import pytest

from server.core.filter import compile_predicate, parse
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import RecordQuery, RecordStore
from server.core.records import with_id
from tests.contract.conftest import (
    ACCOUNT,
    DAY0_MS,
    DAY_MS,
    HOUR_MS,
    LOG_STORES,
    OTHERS,
    PROJECT,
    REGION,
    Backend,
    DataSet,
    make_records,
    write_shuffled,
)

ALL_DAYS = (DAY0_MS, DAY0_MS + 3 * DAY_MS)


def query(
    log_stores: Iterable[str] = ("ls-a",), start_ms: int = ALL_DAYS[0], end_ms: int = ALL_DAYS[1], **kw
) -> RecordQuery:
    base = dict(
        account_id=ACCOUNT,
        region=REGION,
        project=PROJECT,
        log_stores=tuple(log_stores),
        start_ms=start_ms,
        end_ms=end_ms,
        limit=100_000,
    )
    base.update(kw)
    return RecordQuery(**base)  # type: ignore[arg-type]


def expected(records: Iterable[FlowRecord], q: RecordQuery) -> list[FlowRecord]:
    """What a store must return for q, computed from the records written to it."""
    pred = compile_predicate(q.filter)  # type: ignore[arg-type]
    rows = [
        r
        for r in records
        if r.account_id == q.account_id
        and r.region == q.region
        and r.project == q.project
        and r.log_store in q.log_stores
        and q.start_ms <= r.start_time < q.end_ms
        and pred(r)
    ]
    rows.sort(key=lambda r: (r.start_time, r.record_id), reverse=q.newest_first)
    if q.after is not None:
        t, rid = q.after
        rows = [
            r
            for r in rows
            if ((r.start_time, r.record_id) < (t, rid)) == q.newest_first and (r.start_time, r.record_id) != (t, rid)
        ]
    return rows[: q.limit]


def fetch(store: RecordStore, q: RecordQuery, batch_size: int = 1000, *, arrow: bool = True) -> list[FlowRecord]:
    batches = list(store.search(q, batch_size=batch_size))
    assert all(0 < len(b) <= batch_size for b in batches), [len(b) for b in batches]
    got = [r for b in batches for r in b]
    search_arrow = getattr(store, "search_arrow", None) if arrow else None
    if search_arrow is not None:  # the Arrow variant (what Query streams) returns the very same records
        from server.core.columns import records_of as table_records

        tables = list(search_arrow(q, batch_size=batch_size))
        assert all(t.num_rows for t in tables) and all(t.num_rows % batch_size == 0 for t in tables[:-1])
        assert [r for t in tables for r in table_records(t)] == got
    return got


# ---------------------------------------------------------------------------------------------
# Reading back (shared, read-only store)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("newest_first", [True, False], ids=["newest_first", "oldest_first"])
@pytest.mark.parametrize(
    "stores", [("ls-a",), ("ls-a-b",), ("Web",), ("web",), ("ls-a", "Web"), LOG_STORES], ids=lambda s: "+".join(s)
)
def test_reads_back_every_record_of_the_log_stores_in_order(filled_store, dataset: DataSet, stores, newest_first):
    q = query(stores, newest_first=newest_first)
    want = expected(dataset.records, q)
    assert len(want) > 250
    assert fetch(filled_store, q) == want


def test_time_range_is_half_open_and_crosses_days(filled_store, dataset: DataSet):
    q = query(LOG_STORES, start_ms=DAY0_MS + 20 * HOUR_MS, end_ms=DAY0_MS + DAY_MS + 5 * HOUR_MS)
    want = expected(dataset.records, q)
    assert {r.start_time // DAY_MS for r in want} == {DAY0_MS // DAY_MS, DAY0_MS // DAY_MS + 1}
    assert any(r.start_time == q.start_ms for r in want), "the start is inclusive"
    edge = [
        r
        for r in dataset.records
        if r.start_time == q.end_ms
        and r.log_store in LOG_STORES
        and r.account_id == ACCOUNT
        and r.project == PROJECT
        and r.region == REGION
    ]
    assert edge, "the data set should hold records exactly at the end bound"
    got = fetch(filled_store, q)
    assert got == want
    assert not set(got) & set(edge), "the end is exclusive"


def test_ties_in_start_time_are_ordered_by_record_id(filled_store, dataset: DataSet):
    q = query(LOG_STORES)
    got = fetch(filled_store, q)
    starts = [r.start_time for r in got]
    assert len(starts) - len(set(starts)) > 100, "the data set should have many equal start times"
    assert got == sorted(got, key=lambda r: (r.start_time, r.record_id), reverse=True)


def test_other_accounts_regions_and_projects_are_never_returned(filled_store, dataset: DataSet):
    got = fetch(filled_store, query(("ls-a",)))
    assert {(r.account_id, r.region, r.project, r.log_store) for r in got} == {(ACCOUNT, REGION, PROJECT, "ls-a")}
    for acct, region, project, name in OTHERS:
        q = dataclasses.replace(query((name,)), account_id=acct, region=region, project=project)
        want = expected(dataset.records, q)
        assert len(want) == 60
        assert fetch(filled_store, q) == want
        assert filled_store.count(q) == 60


def test_unknown_log_store_and_empty_ranges_return_nothing(filled_store):
    assert fetch(filled_store, query(("no-such-store",))) == []
    assert filled_store.count(query(("no-such-store",))) == 0
    assert fetch(filled_store, query(LOG_STORES, start_ms=DAY0_MS + 5, end_ms=DAY0_MS + 5)) == []
    assert fetch(filled_store, query(LOG_STORES, start_ms=DAY0_MS + 9, end_ms=DAY0_MS + 5)) == []
    assert fetch(filled_store, query(LOG_STORES, start_ms=DAY0_MS - 30 * DAY_MS, end_ms=DAY0_MS)) == []
    assert fetch(filled_store, query(LOG_STORES, limit=0)) == []
    assert filled_store.count(query(LOG_STORES, start_ms=DAY0_MS + 9, end_ms=DAY0_MS + 5)) == 0


def test_very_long_time_ranges(filled_store, dataset: DataSet):
    """Years around the data: the store must not give up on (or mis-name) long ranges."""
    for start, end in [
        (DAY0_MS - 400 * DAY_MS, DAY0_MS + 40 * DAY_MS),
        (DAY0_MS - 3650 * DAY_MS, DAY0_MS + 3650 * DAY_MS),
    ]:
        q = query(LOG_STORES, start_ms=start, end_ms=end, limit=50)
        assert fetch(filled_store, q) == expected(dataset.records, q)
        assert filled_store.count(q) == len(expected(dataset.records, dataclasses.replace(q, limit=10**9)))


@pytest.mark.parametrize("limit", [1, 7, 250, 1000, 1001])
def test_limit(filled_store, dataset: DataSet, limit):
    q = query(LOG_STORES, limit=limit)
    got = fetch(filled_store, q, batch_size=100)
    assert got == expected(dataset.records, q)
    assert len(got) == limit


@pytest.mark.parametrize("newest_first", [True, False], ids=["newest_first", "oldest_first"])
@pytest.mark.parametrize("page", [1, 13, 500])
def test_paging_with_after_has_no_gap_and_no_duplicate(filled_store, dataset: DataSet, newest_first, page):
    """Page after page, each continuing strictly after the last record of the previous one
    (what the API's page_token carries), through ties in start_time."""
    base = query(LOG_STORES, newest_first=newest_first, start_ms=DAY0_MS + 20 * HOUR_MS, end_ms=DAY0_MS + 40 * HOUR_MS)
    want = expected(dataset.records, base)
    assert len(want) > 150
    got: list[FlowRecord] = []
    after = None
    for _ in range(len(want) + 2):
        chunk = fetch(filled_store, dataclasses.replace(base, after=after, limit=page), batch_size=7)
        assert len(chunk) <= page
        if not chunk:
            break
        got += chunk
        after = (chunk[-1].start_time, chunk[-1].record_id)
    assert got == want


def test_batches_of_a_large_result(filled_store, dataset: DataSet):
    q = query(LOG_STORES)
    batches = list(filled_store.search(q, batch_size=64))
    want = expected(dataset.records, q)
    assert len(batches) == -(-len(want) // 64)
    assert all(len(b) == 64 for b in batches[:-1])
    assert [r for b in batches for r in b] == want


def test_after_in_the_middle_of_a_tie(filled_store, dataset: DataSet):
    q = query(LOG_STORES)
    want = expected(dataset.records, q)
    i = next(
        i for i in range(1, len(want) - 1) if want[i - 1].start_time == want[i].start_time == want[i + 1].start_time
    )
    for newest_first in (True, False):
        qq = dataclasses.replace(q, after=(want[i].start_time, want[i].record_id), newest_first=newest_first)
        assert fetch(filled_store, qq, batch_size=100) == expected(dataset.records, qq)


def test_search_is_lazy_and_can_be_closed_early(filled_store):
    gen = filled_store.search(query(LOG_STORES), batch_size=10)
    assert inspect.isgenerator(gen) or hasattr(gen, "__next__")
    first = next(gen)
    assert len(first) == 10
    gen.close()
    assert len(fetch(filled_store, query(LOG_STORES, limit=20), batch_size=10)) == 20


FILTERS = [
    "src_addr = 10.0.0.0/8",
    "dst_addr = 10.0.1.0/24",
    "addr = 10.1.2.0/24",
    "addr = 10.0.0.5",
    "addr = 2001:db8::/32",
    "src_addr = 2001:db8:0:1::/64",
    "addr = 2400:cb00::1f",
    "addr = ::/0",
    "addr = 0.0.0.0/0",
    "addr = 203.0.113.0/24",
    "src_addr IN (10.0.0.0/24, 2001:db8::/48, 198.51.100.7)",
    "src_addr NOT IN (10.0.0.0/8)",
    "NOT src_addr = 10.0.0.0/8",
    "src_addr != 10.0.0.0/8",
    "addr != 10.0.0.0/8",
    "NOT addr IN (10.0.0.0/8, 2001:db8::/32)",
    "addr NOT IN (10.0.0.0/8, 2001:db8::/32)",
    "dst_addr = ::ffff:10.0.0.0/104",
    "port = 443",
    "port != 443",
    "port IN (22, 3389)",
    "port NOT IN (22, 80, 443)",
    "src_port > 50000",
    "dst_port >= 32768 AND dst_port < 40000",
    "protocol = tcp",
    "protocol IN (udp, icmp)",
    "protocol = icmpv6",
    "protocol = 17",
    "action = REJECT",
    "action = ACTION_ACCEPT",
    "action != REJECT",
    "log_status = NODATA",
    "log_status IN (NODATA, SKIPDATA)",
    "log_status != OK",
    "direction = INGRESS AND protocol = tcp",
    "resource_type IN (EIP, NAT_GATEWAY)",
    "packets >= 100 AND packets < 500",
    "bytes > 1000000",
    "bytes <= 2000",
    "tcp_flags = 2",
    "tcp_flags IN (18, 19)",
    "start_time >= 2026-03-02T06:00:00Z AND start_time < 2026-03-02T09:00:00Z",
    "end_time > 2026-03-03T00:00:00Z",
    "log_store = Web",
    "log_store != ls-a",
    "(action = REJECT OR port = 22) AND NOT protocol = udp",
    "NOT (addr = 10.0.0.0/8 OR addr = 2001:db8::/32)",
    "action = REJECT AND addr = 10.0.0.0/8 AND dst_port = 22",
    "rule_kind = ACL",
    "rule_kind IN (SECURITY_GROUP, DEFAULT)",
    "rule_kind != DEFAULT",
    "rule_kind = RULE_KIND_DEFAULT AND action = REJECT",
    "rule_id = default-deny",
    "rule_id IN (acl-1, sg-2)",
    "rule_id != sg-1",
    "sampling_rate > 1",
    "sampling_rate = 0",
    "sampling_rate IN (100, 4096) AND rule_kind = SECURITY_GROUP",
]

# The rule-attribution filters again, each with its meaning written out by hand: an oracle that
# does not go through server.core.filter (API.md "Records say which rule decided").
RULE_FILTERS = {
    "rule_kind = ACL": lambda r: r.rule_kind == 1,
    "rule_kind = SECURITY_GROUP": lambda r: r.rule_kind == 2,
    "rule_kind IN (DEFAULT, ACL)": lambda r: r.rule_kind in (3, 1),
    "rule_kind != SECURITY_GROUP": lambda r: r.rule_kind != 2,
    "rule_kind = UNSPECIFIED": lambda r: r.rule_kind == 0,
    "rule_id = default-deny": lambda r: r.rule_id == "default-deny",
    "rule_id = sg-3 OR rule_id = acl-2": lambda r: r.rule_id in ("sg-3", "acl-2"),
    "rule_id NOT IN (sg-1, sg-2, sg-3)": lambda r: r.rule_id not in ("sg-1", "sg-2", "sg-3"),
    "sampling_rate >= 100": lambda r: r.sampling_rate >= 100,
    "sampling_rate <= 1 AND action = REJECT": lambda r: r.sampling_rate <= 1 and r.action == 2,
    "rule_kind = DEFAULT AND NOT rule_id = default-deny": lambda r: r.rule_kind == 3 and r.rule_id != "default-deny",
}


@pytest.mark.parametrize("text", FILTERS)
def test_filters_agree_with_the_evaluator(filled_store, dataset: DataSet, text):
    q = query(LOG_STORES, filter=parse(text))
    want = expected(dataset.records, q)
    assert fetch(filled_store, q) == want
    assert filled_store.count(q) == len(want)
    q = dataclasses.replace(q, newest_first=False, limit=25)
    assert fetch(filled_store, q, batch_size=10) == expected(dataset.records, q)


@pytest.mark.parametrize("text", list(RULE_FILTERS))
def test_rule_filters_agree_with_a_hand_written_oracle(filled_store, dataset: DataSet, text):
    q = query(LOG_STORES, filter=parse(text))
    keep = RULE_FILTERS[text]
    want = [r for r in expected(dataset.records, query(LOG_STORES)) if keep(r)]
    got = fetch(filled_store, q)
    assert got == want
    assert filled_store.count(q) == len(want)
    assert all(
        (r.rule_id, r.rule_kind, r.sampling_rate) == (w.rule_id, w.rule_kind, w.sampling_rate)
        for r, w in zip(got, want)
    )


def test_rule_fields_round_trip(filled_store, dataset: DataSet):
    """Every record comes back with the rule fields it was written with (compared field by field
    with what was written, not through a filter)."""
    written = {r.record_id: (r.rule_id, r.rule_kind, r.sampling_rate) for r in dataset.records}
    got = fetch(filled_store, query(LOG_STORES))
    assert got and {r.record_id: (r.rule_id, r.rule_kind, r.sampling_rate) for r in got} == {
        r.record_id: written[r.record_id] for r in got
    }
    assert {r.rule_kind for r in got} == {0, 1, 2, 3}


def test_filter_selectivity_sanity(dataset: DataSet):
    """The data set exercises every filter: each matches some records and misses others."""
    scope = expected(dataset.records, query(LOG_STORES))
    for text in FILTERS:
        n = sum(map(compile_predicate(parse(text)), scope))
        assert 0 < n < len(scope), text


def test_filter_on_flow_log_id_and_record_id(filled_store, dataset: DataSet):
    some = expected(dataset.records, query(("Web",)))[17]
    for text in (
        f"flow_log_id = {some.flow_log_id}",
        f"record_id = {some.record_id}",
        f"record_id IN ({some.record_id}, 0123)",
    ):
        q = query(LOG_STORES, filter=parse(text))
        want = expected(dataset.records, q)
        assert want and fetch(filled_store, q) == want


def test_count_matches_search_and_ignores_after_and_limit(filled_store, dataset: DataSet):
    q = query(LOG_STORES)
    total = len(expected(dataset.records, q))
    assert filled_store.count(q) == total
    assert filled_store.count(dataclasses.replace(q, limit=3)) == total
    after = expected(dataset.records, q)[40]
    assert filled_store.count(dataclasses.replace(q, after=(after.start_time, after.record_id))) == total
    assert filled_store.count(query(("ls-a",))) == 300


def test_store_is_healthy(filled_store):
    assert filled_store.healthy() is True


# ---------------------------------------------------------------------------------------------
# Writing and deleting (a fresh store per test)
# ---------------------------------------------------------------------------------------------


def test_records_are_searchable_as_soon_as_write_returns(record_store):
    for i in range(3):
        batch = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 50, seed=300 + i)
        record_store.write(batch)
        q = query(("ls-a",))
        assert record_store.count(q) == 50 * (i + 1)
        assert set(batch) <= set(fetch(record_store, q))


def test_write_of_nothing_is_fine(record_store):
    record_store.write([])
    assert record_store.count(query(LOG_STORES)) == 0


def test_writes_are_idempotent_by_record_id(record_store):
    records = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 400, seed=11)
    record_store.write(records[:250])
    record_store.write(records[150:])  # overlaps the first batch
    record_store.write(records)  # everything again
    record_store.write(records[10:20] + records[10:20])  # duplicates inside one batch
    q = query(("ls-a",))
    assert record_store.count(q) == 400
    assert fetch(record_store, q) == expected(records, q)


def test_same_record_id_in_two_log_stores_is_two_records(record_store):
    """Idempotency is per LogStore, like the day indices of Elasticsearch."""
    records = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 30, seed=12)
    copies = [r._replace(log_store="web") for r in records]
    record_store.write(records)
    record_store.write(copies)
    assert record_store.count(query(("ls-a",))) == 30
    assert record_store.count(query(("web",))) == 30
    # Equal (start_time, record_id) in two LogStores: the order between the two is not defined.
    got = fetch(record_store, query(("ls-a", "web")))
    want = expected(records + copies, query(("ls-a", "web")))
    assert [(r.start_time, r.record_id) for r in got] == [(r.start_time, r.record_id) for r in want]
    assert sorted(got) == sorted(want)


def test_counters_round_trip_the_whole_uint64_range(record_store):
    base = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 4, seed=13)
    big = [
        with_id(base[0]._replace(packets=2**64 - 1, bytes=2**64 - 1)),
        with_id(base[1]._replace(packets=2**63, bytes=2**63 + 12345)),
        with_id(base[2]._replace(packets=2**63 - 1, bytes=2**63 - 1)),
        with_id(base[3]._replace(packets=0, bytes=0)),
    ]
    record_store.write(big)
    q = query(("ls-a",))
    assert fetch(record_store, q) == expected(big, q)
    q = query(("ls-a",), filter=parse("bytes > 1000"))
    assert fetch(record_store, q) == expected(big, q)


def test_drop_log_store_removes_only_that_one(record_store):
    records: list[FlowRecord] = []
    for i, name in enumerate(LOG_STORES):
        records += make_records(ACCOUNT, REGION, PROJECT, name, 40, seed=400 + i)
    for i, (acct, region, project, name) in enumerate(OTHERS):
        records += make_records(acct, region, project, name, 20, seed=500 + i)
    write_shuffled(record_store, records, batch=70)
    record_store.drop_log_store(ACCOUNT, LogStoreKey(REGION, PROJECT, "ls-a"))
    record_store.drop_log_store(ACCOUNT, LogStoreKey(REGION, PROJECT, "Web"))
    record_store.drop_log_store(ACCOUNT, LogStoreKey(REGION, PROJECT, "never-existed"))
    assert record_store.count(query(("ls-a",))) == 0
    assert record_store.count(query(("Web",))) == 0
    left = [
        r
        for r in records
        if not (
            r.account_id == ACCOUNT and r.region == REGION and r.project == PROJECT and r.log_store in ("ls-a", "Web")
        )
    ]
    q = query(("ls-a-b", "web"))
    assert fetch(record_store, q) == expected(left, q)
    for acct, region, project, name in OTHERS:
        q = dataclasses.replace(query((name,)), account_id=acct, region=region, project=project)
        assert fetch(record_store, q) == expected(left, q)
    # A dropped LogStore can be written again.
    again = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 5, seed=600)
    record_store.write(again)
    assert fetch(record_store, query(("ls-a",))) == expected(again, query(("ls-a",)))


def test_retention_drops_whole_old_days_only(record_store):
    # Five days of ls-a (day0 .. day4) and of another LogStore; "now" is day 4, 10:00 UTC.
    records = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 250, seed=700, first_ms=DAY0_MS, span_ms=5 * DAY_MS)
    other = make_records(ACCOUNT, REGION, PROJECT, "ls-a-b", 100, seed=701, first_ms=DAY0_MS, span_ms=5 * DAY_MS)
    assert {r.start_time // DAY_MS - DAY0_MS // DAY_MS for r in records} == {0, 1, 2, 3, 4}
    write_shuffled(record_store, records + other)
    now = DAY0_MS + 4 * DAY_MS + 10 * HOUR_MS
    key = LogStoreKey(REGION, PROJECT, "ls-a")
    # retention 2 days: keep from the start of the UTC day of (now - 2 days), i.e. day 2.
    assert record_store.enforce_retention(ACCOUNT, key, 2, now) == 2
    wide = query(("ls-a",), start_ms=DAY0_MS - DAY_MS, end_ms=DAY0_MS + 10 * DAY_MS)
    kept = [r for r in records if r.start_time >= DAY0_MS + 2 * DAY_MS]
    assert fetch(record_store, wide) == expected(kept, wide)
    assert record_store.enforce_retention(ACCOUNT, key, 2, now) == 0  # nothing more to drop
    assert record_store.enforce_retention(ACCOUNT, key, 30, now) == 0
    # Other LogStores keep everything.
    wide_other = dataclasses.replace(wide, log_stores=("ls-a-b",))
    assert fetch(record_store, wide_other) == expected(other, wide_other)
    # retention 0: only today stays.
    assert record_store.enforce_retention(ACCOUNT, key, 0, now) == 2
    assert {r.start_time // DAY_MS for r in fetch(record_store, wide)} == {now // DAY_MS}


def test_closing_a_search_early_releases_its_resources(backend: Backend):
    store = backend.store
    write_shuffled(store, make_records(ACCOUNT, REGION, PROJECT, "ls-a", 300, seed=800))
    before = backend.open_resources()
    for _ in range(3):
        gen = store.search(query(("ls-a",)), batch_size=20)
        assert len(next(gen)) == 20
        gen.close()
    assert backend.open_resources() == before
    # An abandoned generator after an exhausted one, and writes still work afterwards.
    assert len(fetch(store, query(("ls-a",)), batch_size=50)) == 300
    assert backend.open_resources() == before
    store.write(make_records(ACCOUNT, REGION, PROJECT, "ls-a", 10, seed=801))
    assert store.count(query(("ls-a",))) == 310


def test_many_log_stores_in_one_query(record_store):
    names = tuple(f"store-{i:02d}" for i in range(40))
    records: list[FlowRecord] = []
    for i, name in enumerate(names):
        records += make_records(ACCOUNT, REGION, PROJECT, name, 5, seed=900 + i, first_ms=DAY0_MS, span_ms=DAY_MS)
    record_store.write(records)
    q = query(names, start_ms=DAY0_MS - 100 * DAY_MS, end_ms=DAY0_MS + 100 * DAY_MS)
    assert fetch(record_store, q, batch_size=33) == expected(records, q)
    assert record_store.count(q) == 200


def test_concurrent_writers_and_readers(record_store):
    """Several threads writing overlapping batches while others search: exactly one copy of
    each record, and every search sees a consistent, ordered result."""
    records = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 600, seed=1000)
    q = query(("ls-a",))
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(offset, len(records), 90):
                record_store.write(records[i : i + 150])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(5):
                got = fetch(record_store, q, batch_size=40, arrow=False)
                assert got == sorted(got, key=lambda r: (r.start_time, r.record_id), reverse=True)
                assert len(set(got)) == len(got)
                if hasattr(record_store, "search_arrow"):  # its own snapshot: consistent too
                    from server.core.columns import records_of as table_records

                    got = [r for t in record_store.search_arrow(q, batch_size=40) for r in table_records(t)]
                    assert got == sorted(got, key=lambda r: (r.start_time, r.record_id), reverse=True)
                    assert len(set(got)) == len(got)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 30, 60)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert record_store.count(q) == 600
    assert fetch(record_store, q) == expected(records, q)


def test_a_record_the_store_cannot_keep_is_an_error_not_dropped(record_store):
    good = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 3, seed=1100)
    bad = good[0]._replace(record_id="f" * 32, src_addr="not-an-address")
    with pytest.raises(Exception):
        record_store.write([bad])
    record_store.write(good)  # the store is still usable
    assert fetch(record_store, query(("ls-a",))) == expected(good, query(("ls-a",)))


def test_arrow_search_with_bursts_and_gaps(record_store):
    """search_arrow (embedded: what Query streams) bounds its later chunks to time windows sized
    from the density seen so far; bursts, gaps and ties must still give exactly search()'s result."""
    if not hasattr(record_store, "search_arrow"):
        pytest.skip("this backend streams Query from search()")
    records = []
    # A dense burst, a long gap, a sparse stretch, another burst on one instant (ties).
    records += make_records(ACCOUNT, REGION, PROJECT, "ls-a", 900, seed=1200, first_ms=DAY0_MS, span_ms=2 * HOUR_MS)
    records += make_records(ACCOUNT, REGION, PROJECT, "ls-a", 60, seed=1201, first_ms=DAY0_MS + DAY_MS, span_ms=DAY_MS)
    records += [
        r._replace(start_time=DAY0_MS + 2 * DAY_MS + 5, end_time=DAY0_MS + 2 * DAY_MS + 6)
        for r in make_records(ACCOUNT, REGION, PROJECT, "ls-a", 500, seed=1202)
    ]
    unique: dict[str, FlowRecord] = {}
    for r in map(with_id, records):  # restamped copies may collide: keep the first, as the store does
        unique.setdefault(r.record_id, r)
    records = list(unique.values())
    for i in range(0, len(records), 250):
        record_store.write(records[i : i + 250])
    for newest_first in (True, False):
        for batch_size, limit in ((7, 100_000), (50, 1234), (100, 100_000), (1000, 100_000)):
            for flt in (None, parse("action = REJECT"), parse("protocol = tcp AND dst_port != 53")):
                q = query(
                    ("ls-a",),
                    start_ms=DAY0_MS - DAY_MS,
                    end_ms=DAY0_MS + 4 * DAY_MS,
                    newest_first=newest_first,
                    limit=limit,
                    filter=flt,
                )
                assert fetch(record_store, q, batch_size=batch_size) == expected(records, q)


def _pipeline_write(store: RecordStore, batches: list[list[FlowRecord]]) -> None:
    """Write as the record pipeline does: spool batches carrying their Arrow table, handed over
    as one table when the store takes tables (write_table), else as records."""
    from server.core.columns import table_of
    from server.pipeline.fanout import batch_writer
    from server.pipeline.spool import BatchKey, SpoolBatch

    spooled = [
        SpoolBatch(
            i + 1, 0, BatchKey(b[0].account_id, b[0].region, b[0].project, b[0].log_store), b, 0, table=table_of(b)
        )
        for i, b in enumerate(batches)
    ]
    batch_writer(store.write, getattr(store, "write_table", None))(spooled)


def test_pipeline_batches_are_stored_like_write(record_store):
    """The pipeline's table hand-over gives exactly what write() gives: batches of several
    LogStores, a record repeated across batches, a retried hand-over, uint64 counters, NODATA."""
    a = make_records(ACCOUNT, REGION, PROJECT, "ls-a", 700, seed=1300)
    web = make_records(ACCOUNT, REGION, PROJECT, "web", 300, seed=1301)
    edge = [with_id(a[0]._replace(packets=2**64 - 1, bytes=2**64 - 1, start_time=a[0].start_time + 1))]
    batches = [a[:400], web, a[400:] + edge, a[390:410]]  # the last repeats records of the first
    _pipeline_write(record_store, batches)
    _pipeline_write(record_store, batches[1:3])  # a retry after a failed attempt: no duplicates
    everything = a + web + edge
    for stores in (("ls-a",), ("web",), ("ls-a", "web")):
        q = query(stores)
        assert record_store.count(q) == len(expected(everything, q))
        got, want = fetch(record_store, q), expected(everything, q)
        assert [(r.start_time, r.record_id) for r in got] == [(r.start_time, r.record_id) for r in want]
        assert sorted(got) == sorted(want)
