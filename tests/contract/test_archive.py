"""The archive contract: one suite, run against every ObjectStore (a local folder, real S3).

Each backend plugs in through the `store` fixture: a few lines that build it and clean up.
The S3 case talks to the real server from tests/fixtures_services.py (MinIO, or versitygw when
MinIO cannot be built), one fresh bucket per test. Run with:

    .venv/bin/python -m pytest -p tests.fixtures_services tests/contract/test_archive.py -q
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from backends.embedded.objects import InvalidKey, LocalObjectStore
from backends.minio.objects import S3ObjectStore
from server.archive import DAY_MS, HOUR_MS, Archive, _identity
from server.core.model import FlowRecord, LogStoreKey
from server.core.ports import ObjectStore
from server.core.records import record_id

BACKENDS = ["local", "minio"]
ACCOUNT = "acct-1"
KEY = LogStoreKey("bj", "proj", "ls1")
# 2026-01-01T00:00:00Z
T0 = 1_767_225_600_000


# -- backends -------------------------------------------------------------------------------


def _s3_store(request: pytest.FixtureRequest) -> Iterator[ObjectStore]:
    svc = request.getfixturevalue("minio_service")
    client = request.getfixturevalue("minio_client")
    bucket = f"flowlog-test-{uuid.uuid4().hex[:16]}"
    store = _s3(svc, bucket)
    try:
        yield store
    finally:
        try:
            store.delete([o.key for o in store.list("")])
            client.remove_bucket(bucket)
        finally:
            store.close()


def _s3(svc: dict, bucket: str) -> S3ObjectStore:
    return S3ObjectStore(
        svc["endpoint"],
        svc["access_key"],
        svc["secret_key"],
        bucket,
        secure=bool(svc.get("secure")),
        region=svc.get("region") or "us-east-1",
    )


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        s = LocalObjectStore(tmp_path / "archive")
        yield s
        s.close()
    else:
        yield from _s3_store(request)


@pytest.fixture
def archive(store: ObjectStore) -> Archive:
    return Archive(store)


# -- realistic records ----------------------------------------------------------------------

_COMMON_PORTS = (
    [443] * 30 + [80] * 10 + [53] * 8 + [22] * 4 + [3306, 5432, 6379, 8080, 8443, 123, 25, 587, 993, 3389, 9200, 27017]
)


def realistic(
    n: int,
    *,
    seed: int = 1,
    start_ms: int = T0,
    hours: int = 1,
    window_ms: int = 60_000,
    account: str = ACCOUNT,
    key: LogStoreKey = KEY,
) -> list[FlowRecord]:
    """Flow records as a few real resources produce them: 5 flow logs, each on a resource with
    1-3 public and 20-200 private addresses; peers 60% from 2,000 popular addresses (CDNs,
    resolvers), 40% anywhere; service ports mostly 443/80/53/22, ephemeral ports 32768-60999;
    80% TCP, 18% UDP, 2% ICMP; log-normal packet counts; 10% REJECT; ~1% NODATA windows.
    Window-aligned times, like the generator's aggregation windows. Identities are unique."""
    rnd = random.Random(seed)
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    flow_logs = []
    for _ in range(5):
        fl = "fl-" + "".join(rnd.choice(alnum) for _ in range(10))
        pub = [str(ipaddress.IPv4Address(rnd.getrandbits(32) | 0x01000000)) for _ in range(rnd.randint(1, 3))]
        priv = [
            f"10.{rnd.randint(0, 3)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}" for _ in range(rnd.randint(20, 200))
        ]
        flow_logs.append((fl, rnd.choice([1, 2, 3, 5]), "eip-" + fl[3:], "vpc-" + fl[4:12], pub, priv))
    popular = [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(2000)]
    windows = hours * HOUR_MS // window_ms
    out: list[FlowRecord] = []
    seen: set[tuple] = set()
    while len(out) < n:
        fl, rt, rid, net, pub, priv = rnd.choice(flow_logs)
        ws = start_ms + rnd.randrange(windows) * window_ms
        we = ws + window_ms
        if rnd.random() < 0.01:
            src = dst = ""
            sp = dp = proto = pk = by = flags = 0
            d, act, status = 1, 1, 2
        else:
            local = rnd.choice(pub) if rnd.random() < 0.5 else rnd.choice(priv)
            remote = rnd.choice(popular) if rnd.random() < 0.6 else str(ipaddress.IPv4Address(rnd.getrandbits(32)))
            r = rnd.random()
            proto = 6 if r < 0.8 else (17 if r < 0.98 else 1)
            svc = rnd.choice(_COMMON_PORTS) if proto != 1 else 0
            eph = rnd.randint(32768, 60999) if proto != 1 else 0
            if rnd.random() < 0.5:
                src, dst, sp, dp, d = remote, local, eph, svc, 1
            else:
                src, dst, sp, dp, d = local, remote, eph, svc, 2
            pk = max(1, int(rnd.lognormvariate(2.0, 1.5)))
            by = pk * rnd.randint(40, 1500)
            act = 1 if rnd.random() < 0.9 else 2
            flags = rnd.choice([2, 18, 19, 27, 24, 4, 17]) if proto == 6 else 0
            status = 1
        ident = (fl, src, dst, sp, dp, proto, d, ws, we)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(
            FlowRecord(
                record_id(*ident),
                1,
                account,
                fl,
                key.region,
                key.project,
                key.name,
                rt,
                rid,
                net,
                src,
                dst,
                sp,
                dp,
                proto,
                pk,
                by,
                ws,
                we,
                act,
                status,
                d,
                flags,
            )
        )
    return out


def one(
    start_ms: int,
    *,
    n: int = 0,
    account: str = ACCOUNT,
    key: LogStoreKey = KEY,
    src: str = "10.0.0.1",
    dst: str = "203.0.113.7",
) -> FlowRecord:
    """A single record at start_ms; n varies the source port so records stay distinct."""
    fl = "fl-abcdefgh"
    ident = (fl, src, dst, 40000 + n, 443, 6, 2, start_ms, start_ms + 60_000)
    return FlowRecord(
        record_id(*ident),
        1,
        account,
        fl,
        key.region,
        key.project,
        key.name,
        1,
        "eip-abcdefgh",
        "vpc-abcdefgh",
        src,
        dst,
        40000 + n,
        443,
        6,
        10 + n,
        1000 + n,
        start_ms,
        start_ms + 60_000,
        1,
        1,
        2,
        27,
    )


def read_all(
    archive: Archive, start: int = 0, end: int = 2**62, account: str = ACCOUNT, key: LogStoreKey = KEY
) -> list[FlowRecord]:
    return [r for batch in archive.read(account, key, start, end) for r in batch]


# -- ObjectStore contract -------------------------------------------------------------------


def test_store_put_get_list_delete(store: ObjectStore) -> None:
    store.put("a/b/c.bin", b"one")
    store.put("a/b/c.bin", b"two")  # overwrite
    store.put("a/bc/d.bin", b"x" * 10)
    store.put("a-z/e.bin", b"")
    assert store.get("a/b/c.bin") == b"two"
    assert store.get("a-z/e.bin") == b""
    listed = list(store.list("a"))
    assert [o.key for o in listed] == ["a-z/e.bin", "a/b/c.bin", "a/bc/d.bin"]  # key order
    assert [o.size for o in listed] == [0, 3, 10]
    assert [o.key for o in store.list("a/b")] == ["a/b/c.bin", "a/bc/d.bin"]  # plain string prefix
    assert [o.key for o in store.list("a/b/")] == ["a/b/c.bin"]
    assert list(store.list("nothing/")) == []
    store.delete(["a/b/c.bin", "missing/key.bin"])  # missing keys are ignored
    with pytest.raises(KeyError):
        store.get("a/b/c.bin")
    assert [o.key for o in store.list("")] == ["a-z/e.bin", "a/bc/d.bin"]
    assert store.healthy()


# -- Archive: write and read ----------------------------------------------------------------


def test_write_then_read_back_exactly(archive: Archive) -> None:
    records = realistic(3000, hours=2)
    keys = archive.write_batch("b1", records)
    assert len(keys) == 2  # one object per hour
    got = read_all(archive)
    assert sorted(got) == sorted(records)  # every field, including the recomputed record_id
    # A time range is [start, end) on start_time.
    lo, hi = T0 + 10 * 60_000, T0 + 70 * 60_000
    part = read_all(archive, lo, hi)
    assert sorted(part) == sorted(r for r in records if lo <= r.start_time < hi)
    assert part and all(lo <= r.start_time < hi for r in part)
    # Batches are bounded and come lazily.
    batches = list(archive.read(ACCOUNT, KEY, 0, 2**62, batch_size=500))
    assert max(len(b) for b in batches) <= 500 and sum(len(b) for b in batches) == len(records)


def test_nodata_and_extreme_values_round_trip(archive: Archive) -> None:
    nodata = FlowRecord(
        record_id("fl-abcdefgh", "", "", 0, 0, 0, 1, T0, T0 + 60_000),
        1,
        ACCOUNT,
        "fl-abcdefgh",
        KEY.region,
        KEY.project,
        KEY.name,
        1,
        "eip-x",
        "vpc-x",
        "",
        "",
        0,
        0,
        0,
        0,
        0,
        T0,
        T0 + 60_000,
        1,
        2,
        1,
        0,
    )
    v6 = one(T0 + 5, src="2001:db8::1", dst="2400:cb00::abcd")._replace(
        packets=2**64 - 1, bytes=2**64 - 1, tcp_flags=0xFFF, src_port=65535
    )
    v6 = v6._replace(
        record_id=record_id(
            v6.flow_log_id,
            v6.src_addr,
            v6.dst_addr,
            v6.src_port,
            v6.dst_port,
            v6.protocol,
            v6.direction,
            v6.start_time,
            v6.end_time,
        )
    )
    archive.write_batch("b1", [nodata, v6])
    assert sorted(read_all(archive)) == sorted([nodata, v6])


def test_records_spanning_hours_and_days_land_in_their_prefixes(archive: Archive) -> None:
    midnight = T0 + DAY_MS  # 2026-01-02T00:00Z
    records = [
        one(midnight - 1, n=1),
        one(midnight, n=2),
        one(midnight + HOUR_MS + 1_800_000, n=3),
        one(T0 + 5 * DAY_MS + 13 * HOUR_MS, n=4),
    ]
    keys = archive.write_batch("b7", records)
    prefix = "account=acct-1/region=bj/project=proj/log_store=ls1/"
    assert sorted(keys) == [
        prefix + "dt=2026-01-01/hour=23/part-b7.parquet",
        prefix + "dt=2026-01-02/hour=00/part-b7.parquet",
        prefix + "dt=2026-01-02/hour=01/part-b7.parquet",
        prefix + "dt=2026-01-06/hour=13/part-b7.parquet",
    ]
    assert sorted(o.key for o in archive.store.list("")) == sorted(keys)
    # Ranges across midnight, over many days (one listing of the LogStore), and an empty one.
    assert sorted(read_all(archive, midnight - 1, midnight + 1)) == sorted(records[:2])
    assert sorted(read_all(archive, T0, T0 + 30 * DAY_MS)) == sorted(records)
    assert read_all(archive, midnight + 1, midnight + HOUR_MS) == []
    assert read_all(archive, midnight, midnight) == []
    # Hour order across objects.
    assert [r.start_time for r in read_all(archive)] == sorted(r.start_time for r in records)


def test_a_table_is_archived_byte_for_byte_like_its_records(archive: Archive) -> None:
    """write_table (what the record pipeline calls) writes the very objects write_batch writes:
    hours and days, NODATA rows, extreme values; tables spanning LogStores or repeating a record
    fall back to write_batch's rules."""
    from server.core.columns import concat, table_of

    records = realistic(3000, hours=3, seed=21)
    records += [
        one(T0 + DAY_MS + 5, n=1, src="2001:db8::1", dst="2400:cb00::abcd")._replace(packets=2**64 - 1, bytes=2**64 - 1)
    ]
    records[-1] = records[-1]._replace(record_id=record_id(*_identity(records[-1])))
    table = concat([table_of(records[:1000]), table_of(records[1000:])])  # chunked, as the spool hands it over
    keys = archive.write_table("t1", table)
    assert [k.replace("part-t1", "part-r1") for k in keys] == archive.write_batch("r1", records)
    for key in keys:
        assert archive.store.get(key) == archive.store.get(key.replace("part-t1", "part-r1"))
    assert len(keys) == 4  # three hours of one day, one hour of the next
    other = LogStoreKey(KEY.region, KEY.project, "ls2")
    mixed = records[:50] + [r._replace(log_store=other.name) for r in records[50:80]] + records[:10]
    archive.write_table("t2", table_of(mixed))
    assert sorted(read_all(archive, key=other)) == sorted(r._replace(log_store=other.name) for r in records[50:80])
    assert archive.count(ACCOUNT, KEY, 0, 2**62) == 2 * len(records) + 50
    # Repeats (a collector's retry in the same range), the later copy differing: the last is kept.
    repeated = records[:200] + [r._replace(packets=r.packets + 1) for r in records[100:150]]
    keys = archive.write_table("t3", concat([table_of(repeated[:120]), table_of(repeated[120:])]))
    assert [k.replace("part-t3", "part-r3") for k in keys] == archive.write_batch("r3", repeated)
    for key in keys:
        assert archive.store.get(key) == archive.store.get(key.replace("part-t3", "part-r3"))
    assert archive.count(ACCOUNT, KEY, 0, 2**62) == 2 * len(records) + 50 + 2 * 200


def test_rewriting_a_batch_is_idempotent(archive: Archive) -> None:
    records = realistic(2000, hours=3, seed=3)
    keys1 = archive.write_batch("s-0001", records)
    keys2 = archive.write_batch("s-0001", records)
    assert keys1 == keys2
    assert archive.count(ACCOUNT, KEY, 0, 2**62) == 2000
    assert len(list(archive.store.list(""))) == len(keys1)
    # A retry with more records (a superset) replaces every object of the first attempt.
    more = records + realistic(500, hours=3, seed=4)
    archive.write_batch("s-0001", more)
    assert archive.count(ACCOUNT, KEY, 0, 2**62) == len(set(more))
    # Repeats inside one batch are stored once.
    archive.write_batch("s-0002", [one(T0, n=9), one(T0, n=9)])
    assert archive.count(ACCOUNT, KEY, 0, 2**62) == len(set(more)) + 1
    # A different batch id is a different object.
    assert len([o for o in archive.store.list("") if o.key.endswith("part-s-0002.parquet")]) == 1


def test_other_log_stores_and_accounts_are_untouched(archive: Archive) -> None:
    other_store = LogStoreKey("bj", "proj", "ls2")
    other_project = LogStoreKey("bj", "proj2", "ls1")
    other_region = LogStoreKey("gz", "proj", "ls1")
    mine = [one(T0, n=1), one(T0 + 1, n=2)]
    theirs = [
        one(T0, n=3, key=other_store),
        one(T0, n=4, key=other_project),
        one(T0, n=5, key=other_region),
        one(T0, n=6, account="acct-2"),
    ]  # same region/project/name, another account
    archive.write_batch("b1", mine + theirs)
    assert sorted(read_all(archive)) == sorted(mine)
    assert read_all(archive, key=other_store) == [theirs[0]]
    assert read_all(archive, key=other_project) == [theirs[1]]
    assert read_all(archive, key=other_region) == [theirs[2]]
    assert read_all(archive, account="acct-2") == [theirs[3]]
    assert read_all(archive, account="acct-3") == []
    assert archive.count("acct-2", KEY, 0, 2**62) == 1


def test_unusual_names_are_escaped_and_isolated(archive: Archive) -> None:
    odd_account, empty_account = "org/team a%", ""
    odd_key = LogStoreKey("bj", "proj", "a=b/..")
    records = [
        one(T0, n=1, account=odd_account),
        one(T0, n=2, account=empty_account),
        one(T0, n=3, account="org"),
        one(T0, n=4, key=odd_key),
    ]
    keys = archive.write_batch("b1", records)
    assert all(k.count("/") == 6 for k in keys)  # no value adds a path level
    assert any("account=__HIVE_DEFAULT_PARTITION__/" in k for k in keys)
    assert read_all(archive, account=odd_account) == [records[0]]
    assert read_all(archive, account=empty_account) == [records[1]]
    assert read_all(archive, account="org") == [records[2]]
    assert read_all(archive, key=odd_key) == [records[3]]
    with pytest.raises(ValueError):
        archive.write_batch("../escape", records)


def test_retention_drops_only_whole_old_days(archive: Archive) -> None:
    today = T0 + 20 * DAY_MS
    now = today + 12 * HOUR_MS
    days_back = [10, 8, 7, 1, 0]
    records = [one(today - d * DAY_MS + 3 * HOUR_MS, n=d) for d in days_back]
    # The last moment of day -8 is older than 7 days, day -7 still holds records younger than 7 days.
    records.append(one(today - 7 * DAY_MS + DAY_MS - 1, n=77))
    other = LogStoreKey("bj", "proj", "ls2")
    old_other = one(today - 10 * DAY_MS, n=100, key=other)
    archive.write_batch("b1", records + [old_other])
    assert archive.enforce_retention(ACCOUNT, KEY, 7, now) == 2
    kept = read_all(archive)
    assert sorted(kept) == sorted(r for r in records if r.start_time >= today - 7 * DAY_MS)
    assert read_all(archive, key=other) == [old_other]
    assert archive.enforce_retention(ACCOUNT, KEY, 7, now) == 0
    assert archive.enforce_retention(ACCOUNT, KEY, 1, now) == 1  # day -7 goes, day -1 stays
    assert sorted(read_all(archive)) == sorted(r for r in records if r.start_time >= today - DAY_MS)


def test_delete_log_store_removes_only_that_log_store(archive: Archive) -> None:
    other = LogStoreKey("bj", "proj", "ls1-old")  # a name that shares a string prefix
    mine = realistic(300, hours=30, seed=5)
    theirs = [one(T0, n=1, key=other), one(T0, n=2, account="acct-2")]
    keys = archive.write_batch("b1", mine + theirs)
    n_mine = len([k for k in keys if k.startswith(Archive.log_store_prefix(ACCOUNT, KEY))])
    assert archive.delete_log_store(ACCOUNT, KEY) == n_mine
    assert read_all(archive) == []
    assert list(archive.store.list(Archive.log_store_prefix(ACCOUNT, KEY))) == []
    assert read_all(archive, key=other) == [theirs[0]]
    assert read_all(archive, account="acct-2") == [theirs[1]]
    assert archive.delete_log_store(ACCOUNT, KEY) == 0


def test_counts(archive: Archive) -> None:
    records = realistic(4000, hours=3, seed=6)
    archive.write_batch("b1", records[:2500])
    archive.write_batch("b2", records[2500:])
    assert archive.count(ACCOUNT, KEY, 0, 2**62) == 4000
    for lo, hi in [(T0, T0 + HOUR_MS), (T0 + 17 * 60_000, T0 + 131 * 60_000), (T0 + 3 * HOUR_MS, T0 + 4 * HOUR_MS)]:
        expected = sum(1 for r in records if lo <= r.start_time < hi)
        assert archive.count(ACCOUNT, KEY, lo, hi) == expected
        assert len(read_all(archive, lo, hi)) == expected
    assert archive.count(ACCOUNT, LogStoreKey("bj", "proj", "nope"), 0, 2**62) == 0


def test_bytes_per_record_under_30(archive: Archive) -> None:
    records = realistic(50_000, seed=7)
    t0 = time.perf_counter()
    keys = archive.write_batch("big", records)
    took = time.perf_counter() - t0
    assert len(keys) == 1
    size = sum(o.size for o in archive.store.list(""))
    per_record = size / len(records)
    print(
        f"\narchive[{archive.name}]: {len(records)} records, {size} bytes, {per_record:.2f} bytes/record, "
        f"written in {took:.2f}s"
    )
    assert per_record < 30
    assert archive.count(ACCOUNT, KEY, 0, 2**62) == 50_000


def test_corrupt_object_is_skipped(archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    good = [one(T0 + 10, n=1), one(T0 + 20, n=2)]
    archive.write_batch("good", good)
    hour = Archive.hour_prefix(ACCOUNT, KEY, T0 // HOUR_MS)
    archive.store.put(hour + "part-torn.parquet", b"PAR1 this is not parquet")
    valid = archive.store.get(hour + "part-good.parquet")
    archive.store.put(hour + "part-truncated.parquet", valid[: len(valid) // 2])
    archive.store.put(hour + "stray.txt", b"hello")  # not an archive part: ignored
    with caplog.at_level(logging.WARNING, logger="server.archive"):
        assert sorted(read_all(archive)) == sorted(good)
        assert archive.count(ACCOUNT, KEY, 0, 2**62) == 2
        assert archive.count(ACCOUNT, KEY, T0, T0 + 15) == 1
    warned = " ".join(str(getattr(r, "key", "")) for r in caplog.records)
    assert "part-torn.parquet" in warned and "part-truncated.parquet" in warned


# -- backend specifics ----------------------------------------------------------------------


def test_s3_bucket_creation_is_race_safe(minio_service: dict, minio_client) -> None:
    bucket = f"flowlog-race-{uuid.uuid4().hex[:16]}"
    stores = [_s3(minio_service, bucket) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: stores[i].put(f"k{i}", b"v"), range(4)))
        assert [o.key for o in stores[0].list("")] == ["k0", "k1", "k2", "k3"]
    finally:
        stores[0].delete([f"k{i}" for i in range(4)])
        minio_client.remove_bucket(bucket)
        for st in stores:
            st.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_store_is_unhealthy_when_down() -> None:
    store = S3ObjectStore(f"127.0.0.1:{_free_port()}", "minioadmin", "minioadmin", "flowlog-archive", timeout_s=1.0)
    assert store.healthy() is False
    store.close()


@pytest.mark.parametrize(
    "bad",
    ["", "/abs/key", "a/../b", "../x", "a/./b", "a//b", "a/b/", "nul\x00byte", "back\\slash", ".tmp-123/x", "a/.tmp-x"],
)
def test_local_store_rejects_keys_that_could_escape(tmp_path: Path, bad: str) -> None:
    store = LocalObjectStore(tmp_path / "root")
    with pytest.raises(InvalidKey):
        store.put(bad, b"x")
    with pytest.raises(InvalidKey):
        store.get(bad)
    with pytest.raises(InvalidKey):
        store.delete([bad])
    assert list(store.list("")) == []


@pytest.mark.parametrize("bad", ["/", "../", "a/../", "x\x00"])
def test_local_store_rejects_bad_prefixes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidKey):
        list(LocalObjectStore(tmp_path).list(bad))


def test_local_store_writes_atomically_and_prunes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalObjectStore(root)
    store.put("x/y/z/obj", b"1" * 100)
    store.put("x/y/keep", b"2")
    assert sorted(p.name for p in (root / "x/y/z").iterdir()) == ["obj"]  # no temp file left
    (root / "x/y/z/.tmp-deadbeef-obj").write_bytes(b"torn")  # a crash's leftover
    assert [o.key for o in store.list("x/")] == ["x/y/keep", "x/y/z/obj"]
    (root / "x/y/z/.tmp-deadbeef-obj").unlink()
    store.delete(["x/y/z/obj"])
    assert not (root / "x/y/z").exists() and (root / "x/y").is_dir()
    store.delete(["x/y/keep"])
    assert not (root / "x").exists() and root.is_dir()
    # A symlink planted inside the root cannot lead a key outside it.
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(InvalidKey):
        store.put("link/evil", b"x")
    assert not (tmp_path / "outside/evil").exists()
