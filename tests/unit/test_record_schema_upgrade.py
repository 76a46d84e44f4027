"""Data written before records had rule_id, rule_kind and sampling_rate (and rules had ids and
kinds) is still read after the upgrade: spool payloads of format 1, a records.duckdb without the
columns, archive Parquet objects without them, SQLite metadata rows of rules without ids.

Each old form is written here the way the previous release wrote it (its layout spelled out in
the test, not produced by today's code), then read through today's code.
"""

from __future__ import annotations

import io
import json
import marshal
import sqlite3

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from backends.embedded.metadata import SqliteMetadataStore
from backends.embedded.objects import LocalObjectStore
from backends.embedded.records import EmbeddedRecordStore
from server.archive import Archive
from server.core.model import FlowRecord, LogStoreKey, RuleKind
from server.core.ports import RecordQuery
from server.core.records import record_id
from server.pipeline import spool

T0 = 1_780_000_000_000
KEY = LogStoreKey("bj", "p", "ls")

# One record as the previous release stored it: FlowRecord's first 23 fields.
OLD = (
    "",
    1,
    "acct",
    "fl-abcdefgh",
    "bj",
    "p",
    "ls",
    1,
    "eip-1",
    "vpc-1",
    "10.0.0.1",
    "203.0.113.7",
    40000,
    443,
    6,
    5,
    500,
    T0,
    T0 + 1000,
    1,
    1,
    1,
    2,
)
OLD_ID = record_id("fl-abcdefgh", "10.0.0.1", "203.0.113.7", 40000, 443, 6, 1, T0, T0 + 1000)


def _old_record() -> tuple:
    return (OLD_ID,) + OLD[1:]


def test_a_format_1_spool_payload_reads_with_the_defaults():
    old = _old_record()
    # Format 1: byte 1, uint32 raw length, zstd of marshal(v2) of the 19 value columns (every
    # field but account_id, region, project, log_store).
    values = tuple([v] for i, v in enumerate(old) if i not in (2, 4, 5, 6))
    assert len(values) == 19
    raw = marshal.dumps(values, 2)
    payload = bytes([1]) + len(raw).to_bytes(4, "little") + pa.Codec("zstd").compress(raw, asbytes=True)
    key = spool.BatchKey("acct", "bj", "p", "ls")
    (rec,) = spool.decode(payload, key)
    assert rec == FlowRecord(*old, "", 0, 0)
    table = spool.decode_table(payload, key)
    assert table.column("rule_id").to_pylist() == [""] and table.column("sampling_rate").to_pylist() == [0]
    # ...and a payload of today's format round-trips the new fields.
    new = FlowRecord(*old, "acl-1", int(RuleKind.ACL), 100)
    assert spool.decode(spool.encode([new]), key) == [new]


def test_an_old_records_duckdb_gets_the_columns_on_open(tmp_path):
    path = tmp_path / "records.duckdb"
    con = duckdb.connect(str(path))
    con.execute("""CREATE TABLE records (record_id VARCHAR NOT NULL, version INTEGER, account_id VARCHAR NOT NULL,
        flow_log_id VARCHAR, region VARCHAR NOT NULL, project VARCHAR NOT NULL, log_store VARCHAR NOT NULL,
        resource_type INTEGER, resource_id VARCHAR, network_id VARCHAR, src_addr VARCHAR, dst_addr VARCHAR,
        src_port INTEGER, dst_port INTEGER, protocol INTEGER, packets UBIGINT, bytes UBIGINT,
        start_time BIGINT NOT NULL, end_time BIGINT, action INTEGER, log_status INTEGER, direction INTEGER,
        tcp_flags INTEGER, src_ip BLOB, dst_ip BLOB)""")
    con.execute("INSERT INTO records VALUES (" + ", ".join("?" * 25) + ")", list(_old_record()) + [None, None])
    con.close()
    store = EmbeddedRecordStore(path, checkpoint_interval_s=0)
    try:
        new = FlowRecord(
            record_id("fl-abcdefgh", "10.0.0.2", "203.0.113.7", 40001, 22, 6, 1, T0 + 5, T0 + 6),
            1,
            "acct",
            "fl-abcdefgh",
            "bj",
            "p",
            "ls",
            1,
            "eip-1",
            "vpc-1",
            "10.0.0.2",
            "203.0.113.7",
            40001,
            22,
            6,
            1,
            60,
            T0 + 5,
            T0 + 6,
            2,
            1,
            1,
            2,
            "default-deny",
            int(RuleKind.DEFAULT),
            0,
        )
        store.write([new])
        q = RecordQuery("acct", "bj", "p", ("ls",), T0 - 1, T0 + 10, newest_first=False)
        got = [r for batch in store.search(q) for r in batch]
        assert got == [FlowRecord(*_old_record(), "", 0, 0), new]
        tables = list(store.search_arrow(q))
        assert sum(t.num_rows for t in tables) == 2
    finally:
        store.close()
    store = EmbeddedRecordStore(path, checkpoint_interval_s=0)  # opening again: the ALTERs are no-ops
    store.close()


def test_an_old_archive_object_reads_with_the_defaults(tmp_path):
    # The previous release's object: its 18 columns (no record_id, no partition values).
    old = dict(zip(FlowRecord._fields, _old_record()))
    table = pa.table(
        {
            "start_time": pa.array([old["start_time"]], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "end_time": pa.array([old["end_time"]], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "flow_log_id": pa.array([old["flow_log_id"]]).dictionary_encode(),
            "version": pa.array([1], pa.uint32()),
            "resource_type": pa.array([1], pa.int32()),
            "resource_id": pa.array([old["resource_id"]]).dictionary_encode(),
            "network_id": pa.array([old["network_id"]]).dictionary_encode(),
            "src_addr": [old["src_addr"]],
            "dst_addr": [old["dst_addr"]],
            **{c: pa.array([old[c]], pa.uint32()) for c in ("src_port", "dst_port", "protocol")},
            "packets": pa.array([5], pa.uint64()),
            "bytes": pa.array([500], pa.uint64()),
            **{c: pa.array([old[c]], pa.int32()) for c in ("action", "log_status", "direction")},
            "tcp_flags": pa.array([2], pa.uint32()),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    store = LocalObjectStore(tmp_path / "archive")
    archive = Archive(store)
    hour = T0 // 3_600_000
    store.put(Archive.object_key("acct", KEY, hour, "old-batch"), buf.getvalue())
    got = [r for batch in archive.read("acct", KEY, T0 - 1, T0 + 10) for r in batch]
    assert got == [FlowRecord(*_old_record(), "", 0, 0)]
    assert archive.count("acct", KEY, hour * 3_600_000, (hour + 1) * 3_600_000) == 1
    # ...and records with the fields round-trip through a new object.
    new = FlowRecord(*_old_record()[:-1], 2, "acl-9", int(RuleKind.ACL), 7)._replace(start_time=T0 + 2)
    new = new._replace(
        record_id=record_id(
            new.flow_log_id,
            new.src_addr,
            new.dst_addr,
            new.src_port,
            new.dst_port,
            new.protocol,
            new.direction,
            new.start_time,
            new.end_time,
        )
    )
    archive.write_batch("new-batch", [new])
    got = [r for batch in archive.read("acct", KEY, T0 + 2, T0 + 3) for r in batch]
    assert got == [new]


def test_old_metadata_rules_load_with_ids_and_security_group_kind(tmp_path):
    path = tmp_path / "metadata.db"
    SqliteMetadataStore(path)  # today's schema; the resources table is unchanged
    con = sqlite3.connect(str(path))
    old_rules = [[10, 1, 1, 6, "", 443, 443], [20, 1, 2, 0, "", 0, 0], [10, 2, 1, 0, "", 0, 0]]
    con.execute(
        "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?)",
        ("acct", "eip-old", 1, "bj", "vpc-1", "old", json.dumps(["203.0.113.1"]), json.dumps(old_rules), 1),
    )
    con.commit()
    con.close()
    meta = SqliteMetadataStore(path)
    r = meta.resource_of("acct", "eip-old")
    assert r is not None
    assert [(x.id, x.kind) for x in r.rules] == [
        ("sg-1", RuleKind.SECURITY_GROUP),
        ("sg-2", RuleKind.SECURITY_GROUP),
        ("sg-3", RuleKind.SECURITY_GROUP),
    ]
    assert meta.resource_of("acct", "eip-old") == r  # the same ids on every load
