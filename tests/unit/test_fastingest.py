"""server/native/_fastingest.c, the compiled fast path of Ingest, against the Python path it stands in for.

Whenever the compiled path returns records, they must be exactly what the Python path returns
for the same bytes (protobuf's parse, then server.core.ingest.accept_columns), with no
rejections; for anything else it must return None, never a different answer, and never crash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import shutil
import tracemalloc

import pytest
from google.protobuf import message as pb_message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlog.v1 import ingest_pb2, record_pb2
from server.api import services
from server.core.attribution import AddressMatcher
from server.core.ingest import accept_columns, stored_head
from server.core.model import FlowLog, FlowRecord, ResourceType, TrafficType
from server.native import fastpath

fast = fastpath.compiled

NOW = 1_780_000_000_000
FL = FlowLog(
    id="fl-abcdefgh1",
    region="bj",
    name="n",
    resource_type=ResourceType.NAT_GATEWAY,
    resource_id="nat-1",
    network_id="vpc-1",
    traffic_type=TrafficType.ALL,
    project="p",
    log_store="ls",
    account_id="acct",
)
HEAD = stored_head(FL)


def test_built_wherever_a_c_compiler_is():
    """setup.py builds the extension as optional, so a failed build would pass unnoticed: where a
    C compiler and Python's headers are, it must have been built."""
    import sysconfig
    from pathlib import Path

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the server runs the pure-Python Ingest path")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no Python headers here (e.g. Debian's python3-dev): the server runs the pure-Python Ingest path")
    assert fast is not None, "setup.py did not build server/native/_fastingest.c: run `make install`, read its output"


pytestmark_fast = pytest.mark.skipif(fast is None, reason="server/native/_fastingest.c is not built here")


def python_path(data: bytes, matcher: AddressMatcher | None = None):
    """What the Ingest servicer does without the compiled path: (records, rejections), or None
    when protobuf refuses the bytes."""
    try:
        msg = ingest_pb2.IngestRequest.FromString(data)
    except pb_message.DecodeError:
        return None
    return accept_columns(FL, services._raw_columns(msg.records), 0, NOW, matcher)


def compare(data: bytes, matcher: AddressMatcher | None = None):
    """The compiled path's answer for `data`, checked against the Python path's; returns it.
    `matcher`: the resource's addresses, which derive a missing direction (both paths get them)."""
    if matcher is None:
        got = fast.accept(data, HEAD, FlowRecord, NOW)
    else:
        got = fast.accept(data, HEAD, FlowRecord, NOW, False, matcher.packed())
    head = fast.split(data)
    want = python_path(data, matcher)
    if head is not None and want is not None:
        msg = ingest_pb2.IngestRequest.FromString(data)
        assert head == (msg.flow_log_id, len(msg.records))
    if got is not None:
        assert head is not None, "accept() took bytes that split() refuses"
        assert want is not None, "the compiled path accepted bytes protobuf refuses"
        ok, bad = want
        assert bad == [], "the compiled path accepted a batch the Python path rejects records of"
        assert got == ok
        for g, w in zip(got, ok):
            assert type(g) is FlowRecord
            assert [type(v) for v in g] == [type(v) for v in w]
    return got


def ts(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000 + 123)


RULE_IDS = [
    "",
    "",
    "acl-1",
    "sg-web-3",
    "default-deny",
    "DefaultRule_DenyAllInBound",
    "/subscriptions/x/acl:1.2",
    "r" * 128,
]


def clean_record(rnd: random.Random, start: int) -> record_pb2.FlowRecord:
    v6 = rnd.random() < 0.3
    if v6:
        spell = rnd.choice(["2001:db8::{:x}", "2001:0DB8:0:0:0:0:0:{:X}", "fe80::{:x}", "2001:db8:0:0:1::{:x}"])
        addr = lambda: spell.format(rnd.randrange(1, 0xFFFF))  # noqa: E731
    else:
        addr = lambda: f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"  # noqa: E731
    pk = rnd.randrange(0, 100)
    return record_pb2.FlowRecord(
        src_addr=addr(),
        dst_addr=addr(),
        src_port=rnd.randrange(65536),
        dst_port=rnd.choice([22, 443, 53, 65535]),
        protocol=rnd.choice([6, 17, 1, 58, 0, 255]),
        packets=pk,
        bytes=pk * rnd.randrange(1, 1500) + rnd.randrange(2),
        start_time=ts(start),
        end_time=ts(start + rnd.randrange(0, 86_400_000)),
        action=rnd.choice([1, 2]),
        log_status=rnd.choice([1, 3]),
        direction=rnd.choice([1, 2]),
        tcp_flags=rnd.randrange(0x1000),
        rule_id=rnd.choice(RULE_IDS),
        rule_kind=rnd.randrange(4),
        sampling_rate=rnd.choice([0, 1, 100, 2**31 - 1]),
        # What the server overwrites, sent anyway by a collector that does not know better:
        region=rnd.choice(["", "elsewhere"]),
        project=rnd.choice(["", "x"]),
        version=rnd.choice([0, 7]),
        account_id=rnd.choice(["", "acct"]),
        flow_log_id=rnd.choice(["", FL.id]),
    )


def clean_batch(seed: int, n: int) -> ingest_pb2.IngestRequest:
    rnd = random.Random(seed)
    return ingest_pb2.IngestRequest(
        flow_log_id=FL.id, records=[clean_record(rnd, NOW - rnd.randrange(1, 10 * 86_400_000)) for _ in range(n)]
    )


@pytestmark_fast
@pytest.mark.parametrize("n", [0, 1, 128, 129, 255, 256, 1000])
def test_blake2b_matches_hashlib(n):
    rnd = random.Random(n)
    for _ in range(20):
        data = bytes(rnd.randrange(256) for _ in range(n))
        assert fast.blake2b128_hex(data) == hashlib.blake2b(data, digest_size=16).hexdigest()


@pytestmark_fast
@pytest.mark.parametrize("seed", range(8))
def test_a_clean_batch_takes_the_compiled_path_and_matches(seed):
    batch = clean_batch(seed, 1000)
    got = compare(batch.SerializeToString())
    assert got is not None and len(got) == 1000


@pytestmark_fast
def test_record_ids_sent_by_the_collector_are_kept_when_right():
    batch = clean_batch(1, 50)
    ok, _ = python_path(batch.SerializeToString())
    for r, stored in zip(batch.records, ok):
        r.record_id = stored.record_id
    assert compare(batch.SerializeToString()) == ok
    batch.records[7].record_id = "0" * 32
    assert compare(batch.SerializeToString()) is None
    ok, bad = python_path(batch.SerializeToString())
    assert [b.index for b in bad] == [7]


BAD_EDITS = [  # one record made into something the compiled path must leave to the Python path
    ("record_id", "f" * 32),
    ("record_id", "abc"),
    ("account_id", "other"),
    ("flow_log_id", "fl-other123"),
    ("src_addr", ""),
    ("src_addr", "999.1.1.1"),
    ("src_addr", "10.000.0.1"),
    ("src_addr", "::1"),
    ("dst_addr", "::ffff:10.0.0.1"),
    ("dst_addr", "fe80::1%eth0"),
    ("dst_addr", "1.2.3.4\x00"),
    ("dst_addr", "١٢٣.1.1.1"),
    ("src_addr", "x" * 46),
    ("src_port", 65536),
    ("dst_port", 2**32 - 1),
    ("protocol", 256),
    ("tcp_flags", 0x1000),
    ("packets", 10**12),
    ("packets", "one more than bytes"),
    ("action", 0),
    ("action", 3),
    ("log_status", 2),
    ("log_status", 0),
    ("log_status", 4),
    ("direction", 0),
    ("direction", -1),
    ("region", "é"),
    ("project", "\u00ff"),
    ("src_addr", "10.0.0.1\u00e9"),
    ("rule_id", "sg web"),
    ("rule_id", "r" * 129),
    ("rule_id", "规则"),
    ("rule_id", "sg\x00"),
    ("rule_id", "a,b"),
    ("rule_kind", 4),
    ("rule_kind", -1),
    ("sampling_rate", 2**31),
    ("sampling_rate", 2**32 - 1),
]


@pytestmark_fast
@pytest.mark.parametrize("field,value", BAD_EDITS)
def test_a_record_it_is_not_sure_of_sends_the_batch_to_the_python_path(field, value):
    batch = clean_batch(3, 30)
    if value == "one more than bytes":
        value = batch.records[17].bytes + 1
    if (field, value) == ("src_addr", "::1"):  # an IPv6 source with an IPv4 destination
        batch.records[17].dst_addr = "10.0.0.2"
    setattr(batch.records[17], field, value)
    assert compare(batch.SerializeToString()) is None


@pytestmark_fast
@pytest.mark.parametrize(
    "edit",
    ["no start", "end before start", "window over a day", "future", "too old", "negative nanos", "start merged twice"],
)
def test_times_it_is_not_sure_of(edit):
    batch = clean_batch(4, 20)
    r = batch.records[5]
    start = NOW - 3_600_000
    r.start_time.CopyFrom(ts(start))
    r.end_time.CopyFrom(ts(start + 1000))
    if edit == "no start":
        r.ClearField("start_time")
    elif edit == "end before start":
        r.end_time.CopyFrom(ts(start - 1000))
    elif edit == "window over a day":
        r.end_time.CopyFrom(ts(start + 86_400_001))
    elif edit == "future":
        r.start_time.CopyFrom(ts(NOW + 301_000))
        r.end_time.CopyFrom(ts(NOW + 302_000))
    elif edit == "too old":
        r.start_time.CopyFrom(ts(NOW - 3651 * 86_400_000))
        r.end_time.CopyFrom(ts(NOW - 3651 * 86_400_000))
    elif edit == "negative nanos":
        r.start_time.nanos = -5
    data = batch.SerializeToString()
    if edit == "start merged twice":  # a second start_time in the same record: protobuf merges the two
        second = record_pb2.FlowRecord(start_time=Timestamp(nanos=7)).SerializeToString()
        data = _field(1, FL.id.encode()) + _field(2, r.SerializeToString() + second)
        merged = ingest_pb2.IngestRequest.FromString(data).records[0].start_time
        assert (merged.seconds, merged.nanos) == (r.start_time.seconds, 7)
    assert compare(data) is None


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@pytestmark_fast
def test_encodings_protobuf_accepts_read_the_same():
    """Unknown fields, fields out of order, a scalar sent twice (the last wins), non-minimal
    varints: read as protobuf reads them, or left to it."""
    batch = clean_batch(5, 3)
    recs = [r.SerializeToString() for r in batch.records]
    unknown = (
        _varint(99 << 3 | 0)
        + _varint(5)
        + _field(100, b"\xff\xfe")
        + _varint(101 << 3 | 5)
        + b"abcd"
        + _varint(102 << 3 | 1)
        + b"12345678"
    )
    port_twice = _varint(11 << 3) + _varint(1) + recs[0] + _varint(11 << 3) + _varint(8080)
    fat_varint = recs[1] + _varint(13 << 3) + b"\x86\x80\x80\x00"  # protocol 6 in four bytes
    reordered = b"".join(reversed(_split_fields(recs[2])))
    data = (
        unknown
        + _field(2, port_twice)
        + _field(1, FL.id.encode())
        + _field(2, fat_varint)
        + unknown
        + _field(2, reordered + unknown)
    )
    got = compare(data)
    assert got is not None and [r.src_port for r in got][0] == 8080 and got[1].protocol == 6


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (data[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not data[i - 1] & 0x80:
            return value, i


def _split_fields(rec: bytes) -> list[bytes]:
    """The encoded fields of a message (varint and length-delimited ones only), in order."""
    out, i = [], 0
    while i < len(rec):
        tag, k = _read_varint(rec, i)
        if tag & 7 == 0:
            _, k = _read_varint(rec, k)
        else:
            n, k = _read_varint(rec, k)
            k += n
        out.append(rec[i:k])
        i = k
    return out


@pytestmark_fast
@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**32),
    st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "drop", "insert", "cut"])), max_size=4),
)
def test_mutated_bytes_never_crash_and_never_disagree(seed, edits):
    data = bytearray(clean_batch(seed, 8).SerializeToString())
    rnd = random.Random(seed)
    for pos, how in edits:
        pos %= max(1, len(data))
        if how == "flip" and data:
            data[pos] ^= 1 << rnd.randrange(8)
        elif how == "drop" and data:
            del data[pos]
        elif how == "insert":
            data.insert(pos, rnd.randrange(256))
        elif how == "cut":
            del data[pos:]
    compare(bytes(data))


_u32 = st.one_of(st.integers(0, 300), st.integers(0, 70000), st.integers(0, 2**32 - 1))
_addr = st.one_of(
    st.sampled_from(
        [
            "10.0.0.1",
            "192.168.1.255",
            "::1",
            "2001:db8::1",
            "0.0.0.0",
            "",
            "1.2.3",
            "::ffff:1.2.3.4",
            "2001:DB8:0::0:1",
            "1.2.3.04",
            "fe80::1%1",
            "a",
            "::",
        ]
    ),
    st.ip_addresses().map(str),
    st.text(max_size=12),
)


@pytestmark_fast
@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "src_addr": _addr,
                "dst_addr": _addr,
                "src_port": _u32,
                "dst_port": _u32,
                "protocol": _u32,
                "tcp_flags": _u32,
                "packets": st.integers(0, 2**64 - 1),
                "bytes": st.integers(0, 2**64 - 1),
                "action": st.integers(-1, 4),
                "log_status": st.integers(-1, 4),
                "direction": st.integers(-1, 4),
                "record_id": st.sampled_from(["", "x", "0" * 32]),
                "account_id": st.sampled_from(["", "acct", "b"]),
                "flow_log_id": st.sampled_from(["", FL.id, "fl-zzzzzzzz"]),
                "rule_id": st.one_of(st.sampled_from(RULE_IDS + ["r" * 129, "a b"]), st.text(max_size=6)),
                "rule_kind": st.integers(-1, 5),
                "sampling_rate": _u32,
                "start": st.integers(-(10**12), NOW + 10**9),
                "length": st.integers(-1000, 2 * 86_400_000),
            }
        ),
        max_size=6,
    )
)
def test_arbitrary_records_never_disagree(records):
    msgs = []
    for r in records:
        r = dict(r)
        start, length = r.pop("start"), r.pop("length")
        msgs.append(record_pb2.FlowRecord(start_time=ts(start), end_time=ts(start + length), **r))
    compare(ingest_pb2.IngestRequest(flow_log_id=FL.id, records=msgs).SerializeToString())


RESOURCE = AddressMatcher(["10.1.0.0/16", "10.9.9.9", "2001:db8:0:1::/64", "::ffff:0.0.0.0/96", "0.0.0.0/32"])


@pytestmark_fast
def test_a_missing_direction_is_derived_from_the_resource_addresses_as_the_python_path_does():
    pairs = [
        ("192.0.2.1", "10.1.2.3", 1),  # to the resource: INGRESS
        ("10.1.200.1", "192.0.2.1", 2),  # from it: EGRESS
        ("10.1.0.1", "10.1.0.2", 1),  # both ends: the destination wins
        ("10.9.9.9", "10.9.9.10", 2),  # a single address, and the address just past it
        ("192.0.2.1", "198.51.100.1", 0),  # neither: stays unspecified
        ("2001:db8:0:2::1", "2001:db8:0:1:ffff:ffff:ffff:ffff", 1),  # the last address of the /64
        ("2001:db8:0:1::", "2001:db8::1", 2),
        ("2001:db8:0:0:ffff:ffff:ffff:ffff", "2001:db8:0:2::", 0),  # just outside on both sides
    ]
    records = [
        record_pb2.FlowRecord(
            src_addr=s, dst_addr=d, protocol=6, packets=1, bytes=60, action=1, log_status=1,
            start_time=ts(NOW - 5000), end_time=ts(NOW - 4000),
        )
        for s, d, _ in pairs
    ]  # fmt: skip
    data = ingest_pb2.IngestRequest(flow_log_id=FL.id, records=records).SerializeToString()
    assert fast.accept(data, HEAD, FlowRecord, NOW) is None, "without the resource it must decline"
    got = compare(data, RESOURCE)
    assert got is not None and [r.direction for r in got] == [want for _, _, want in pairs]
    # the record id covers the derived direction, as if the collector had sent it
    sent = ingest_pb2.IngestRequest(
        flow_log_id=FL.id, records=[record_pb2.FlowRecord(**{**_fields(r), "direction": w}) for r, (_, _, w) in
                                    zip(records, pairs)]
    ).SerializeToString()  # fmt: skip
    assert [r.record_id for r in fast.accept(sent, HEAD, FlowRecord, NOW, False, RESOURCE.packed()) or []] == [
        r.record_id for r in got
    ]


def _fields(r: record_pb2.FlowRecord) -> dict:
    return {f.name: v for f, v in r.ListFields()}


_v4_in_or_near = st.sampled_from(["10.1.0.0", "10.1.255.255", "10.0.255.255", "10.2.0.0", "10.9.9.9", "10.9.9.8"])
_v6_in_or_near = st.sampled_from(["2001:db8:0:1::", "2001:db8:0:1:ffff:ffff:ffff:ffff", "2001:db8:0:2::", "::2"])


@pytestmark_fast
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.one_of(_v4_in_or_near, _addr), st.one_of(_v4_in_or_near, _addr)),
            st.tuples(_v6_in_or_near, _v6_in_or_near),
        ),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.sampled_from(["10.1.0.0/16", "10.9.9.9/32", "2001:db8:0:1::/64", "10.0.0.0/8", "::/0"]), max_size=3),
)
def test_derived_directions_never_disagree(pairs, addresses):
    records = [
        record_pb2.FlowRecord(
            src_addr=s, dst_addr=d, protocol=17, packets=1, bytes=60, action=2, log_status=1,
            start_time=ts(NOW - 5000), end_time=ts(NOW - 4000),
        )
        for s, d in pairs
    ]  # fmt: skip
    compare(ingest_pb2.IngestRequest(flow_log_id=FL.id, records=records).SerializeToString(), AddressMatcher(addresses))


@pytestmark_fast
def test_accept_keeps_no_memory_per_call():
    data = clean_batch(6, 1000).SerializeToString()
    for _ in range(5):
        fast.accept(data, HEAD, FlowRecord, NOW)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(100):
            assert fast.accept(data, HEAD, FlowRecord, NOW) is not None
            assert fast.accept(data[:-3], HEAD, FlowRecord, NOW) is None
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, f"{grown} bytes kept after 200 calls"


@pytestmark_fast
def test_bad_arguments_are_errors_not_crashes():
    data = clean_batch(7, 2).SerializeToString()
    with pytest.raises(ValueError):
        fast.accept(data, HEAD[:3], FlowRecord, NOW)
    with pytest.raises(TypeError):
        fast.accept(data, HEAD, dict, NOW)
    with pytest.raises(TypeError):
        fast.accept("text", HEAD, FlowRecord, NOW)
    with pytest.raises(TypeError):
        fast.split(None)


@pytestmark_fast
@pytest.mark.parametrize("seed", range(4))
def test_address_text_is_ipaddress_text(seed):
    """Every zero pattern of IPv6 groups (runs at the start, middle and end, ties, single zero
    groups), every IPv4 octet width, in compressed, exploded and upper-case spellings."""
    rnd = random.Random(seed)
    batch = clean_batch(seed, 0)
    for i in range(1000):
        if i % 4 == 0:
            src = f"{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}"
            dst = f"{rnd.randrange(10)}.{rnd.randrange(100)}.{rnd.randrange(255, 256)}.0"
        else:
            groups = [
                0 if rnd.random() < 0.5 else rnd.choice([1, 0xF, 0x10, 0xABC, 0xFFFF, rnd.randrange(65536)])
                for _ in range(8)
            ]
            addr = ipaddress.IPv6Address(b"".join(g.to_bytes(2, "big") for g in groups))
            src = rnd.choice([str(addr), addr.exploded, str(addr).upper()])
            dst = "2001:db8::1"
        r = clean_record(rnd, NOW - 60_000)
        r.src_addr, r.dst_addr = src, dst
        batch.records.append(r)
    for r in batch.records:
        one = ingest_pb2.IngestRequest(flow_log_id=FL.id, records=[r]).SerializeToString()
        got = compare(one)
        a = ipaddress.ip_address(r.src_addr)
        mapped = a.version == 6 and (a.ipv4_mapped is not None or (int(a) >> 32 == 0 and int(a) > 1))
        if not mapped:
            assert got is not None, r.src_addr
            assert got[0].src_addr == a.compressed


@pytestmark_fast
def test_records_are_left_out_of_the_cyclic_gc():
    """Records hold only str and int, so they can be in no reference cycle: the compiled path
    leaves them out of the cyclic GC (CPython does so for plain tuples, not for FlowRecord)."""
    import gc

    got = fast.accept(clean_batch(8, 10).SerializeToString(), HEAD, FlowRecord, NOW)
    assert got and not any(gc.is_tracked(r) for r in got)
    assert all(gc.is_tracked(r) for r in python_path(clean_batch(8, 10).SerializeToString())[0])


@pytestmark_fast
@pytest.mark.parametrize("seed", range(4))
def test_spool_payload_and_arrow_table_are_what_the_spool_would_make(seed):
    """columns=True: the marshalled value columns are marshal.dumps' bytes, the payload decodes
    to the same records, and the Arrow table equals the one made from the records."""
    import marshal

    from server.core.columns import SCHEMA, table_of, table_of_buffers
    from server.core.model import record_columns
    from server.pipeline import spool

    batch = clean_batch(seed, 500)
    big = batch.records[3]
    big.packets, big.bytes = 2**64 - 2, 2**64 - 1  # the widest marshal longs
    batch.records[4].packets = batch.records[4].bytes = 0
    batch.records[5].bytes = 2**31
    batch.records[5].packets = 2**31 - 1  # both sides of marshal's int/long boundary
    data = batch.SerializeToString()
    rows, raw, buffers = fast.accept(data, HEAD, FlowRecord, NOW, True)
    assert rows == compare(data)
    cols = record_columns(rows)
    assert raw == marshal.dumps(tuple(cols[i] for i in spool._VALUE_IDX), 2)
    key = spool.BatchKey(FL.account_id, FL.region, FL.project, FL.log_store)
    assert spool.decode(spool.encode_marshalled(raw), key) == rows
    assert spool.encode_marshalled(raw) == spool.encode(rows)
    table = table_of_buffers(len(rows), HEAD, buffers)
    assert table.schema == SCHEMA and table.equals(table_of(rows))
    empty = fast.accept(ingest_pb2.IngestRequest(flow_log_id=FL.id).SerializeToString(), HEAD, FlowRecord, NOW, True)
    assert empty[0] == [] and table_of_buffers(0, HEAD, empty[2]).num_rows == 0


# -- one source for the schema and its limits ----------------------------------------------------


def test_the_compiled_path_was_built_with_the_protos_field_numbers_and_runs_the_cores_limits():
    from server.core import records

    fastpath.check(fast)  # what the server ran at import
    assert fast.FIELDS == {f.name: f.number for f in record_pb2.FlowRecord.DESCRIPTOR.fields}
    assert fast.limits() == records.record_limits()


def _edge_record(**changes) -> record_pb2.FlowRecord:
    start = changes.pop("start", NOW - 60_000)
    end = changes.pop("end", start + 1000)
    base = dict(
        src_addr="10.0.0.1",
        dst_addr="10.0.0.2",
        src_port=1234,
        dst_port=443,
        protocol=6,
        packets=1,
        bytes=100,
        action=1,
        log_status=1,
        direction=1,
    )
    base.update(changes)
    return record_pb2.FlowRecord(start_time=ts(start), end_time=ts(end), **base)


def _edges() -> list[tuple[str, dict, dict]]:
    """(limit, a record just inside it, a record just past it), from server.core.records' values."""
    from server.core import records, rules

    w, fut, past = records.MAX_WINDOW_MS, records.MAX_FUTURE_MS, records.MAX_PAST_MS
    s = NOW - 60_000
    return [
        ("max_window_ms", dict(start=s - w, end=s), dict(start=s - w - 1, end=s)),
        ("max_future_ms", dict(start=NOW + fut - 1000), dict(start=NOW + fut + 1000)),
        ("max_past_ms", dict(start=NOW - past + 1000), dict(start=NOW - past - 1000)),
        ("max_port", dict(src_port=records.MAX_PORT), dict(src_port=records.MAX_PORT + 1)),
        ("max_protocol", dict(protocol=records.MAX_PROTOCOL), dict(protocol=records.MAX_PROTOCOL + 1)),
        ("max_tcp_flags", dict(tcp_flags=records.MAX_TCP_FLAGS), dict(tcp_flags=records.MAX_TCP_FLAGS + 1)),
        ("rule_id_max", dict(rule_id="r" * rules.RULE_ID_MAX), dict(rule_id="r" * (rules.RULE_ID_MAX + 1))),
        ("rule_id_chars", dict(rule_id="a-b_c.d:e/F9"), dict(rule_id="a+b")),
        (
            "sampling_rate_max",
            dict(sampling_rate=rules.SAMPLING_RATE_MAX),
            dict(sampling_rate=rules.SAMPLING_RATE_MAX + 1),
        ),
        ("rule_kind_max", dict(rule_kind=3), dict(rule_kind=4)),
    ]


@pytestmark_fast
@pytest.mark.parametrize("limit,inside,past", _edges(), ids=[e[0] for e in _edges()])
def test_the_compiled_path_and_the_python_path_draw_each_limit_at_the_same_place(limit, inside, past):
    """Drift guard: a limit changed in server.core.records moves the edge for both paths, since the
    C file is handed the same values (a hard-coded limit in either would fail here)."""
    ok = ingest_pb2.IngestRequest(flow_log_id=FL.id, records=[_edge_record(**inside)]).SerializeToString()
    bad = ingest_pb2.IngestRequest(flow_log_id=FL.id, records=[_edge_record(**past)]).SerializeToString()
    assert compare(ok) is not None and python_path(ok)[1] == []
    assert fast.accept(bad, HEAD, FlowRecord, NOW) is None
    assert len(python_path(bad)[1]) == 1


@pytestmark_fast
def test_the_compiled_path_applies_the_limits_it_is_given_not_its_own():
    from server.core import records

    two_hours = ingest_pb2.IngestRequest(
        flow_log_id=FL.id, records=[_edge_record(start=NOW - 3 * 3_600_000, end=NOW - 3_600_000)]
    ).SerializeToString()
    assert fast.accept(two_hours, HEAD, FlowRecord, NOW) is not None
    try:
        fast.configure({**records.record_limits(), "max_window_ms": 3_600_000})
        assert fast.accept(two_hours, HEAD, FlowRecord, NOW) is None
        with pytest.raises(KeyError, match="max_port"):
            fast.configure({k: v for k, v in records.record_limits().items() if k != "max_port"})
    finally:
        fast.configure(records.record_limits())
    assert fast.limits() == records.record_limits()


def test_a_compiled_path_that_disagrees_is_refused_naming_each_difference():
    from types import SimpleNamespace

    drifted = SimpleNamespace(FIELDS={**fast.FIELDS, "rule_id": 99}, INGEST_FIELDS=dict(fast.INGEST_FIELDS))
    with pytest.raises(ImportError) as e:
        fastpath.check(drifted)
    assert "rule_id: C 99, Python 24" in str(e.value)
    missing = SimpleNamespace(
        FIELDS={k: v for k, v in fast.FIELDS.items() if k != "sampling_rate"},
        INGEST_FIELDS=dict(fast.INGEST_FIELDS),
    )
    with pytest.raises(ImportError, match="sampling_rate: C None, Python 26"):
        fastpath.check(missing)


def test_wire_encoders_take_their_field_numbers_from_the_proto_descriptor():
    from server.api import wire

    want = sorted((f.name, f.number) for f in record_pb2.FlowRecord.DESCRIPTOR.fields)
    assert sorted((name, number) for name, number, _ in wire._FIELDS) == want


# -- the collector's flows (accept_flows) ------------------------------------------------------------


def _flows(rnd: random.Random, n: int) -> tuple[list[tuple], bytes]:
    """Decoded flows (server.sources.flows.Flow tuples) as the decoder makes them, and directions."""
    out = []
    for i in range(n):
        if rnd.random() < 0.2:
            src, dst = f"2001:db8::{rnd.randrange(1, 0xFFFF):x}", f"2001:db8:1::{rnd.randrange(1, 0xFFFF):x}"
        else:
            src, dst = f"198.51.100.{rnd.randrange(1, 255)}", f"10.200.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        start = NOW - rnd.randrange(1000, 3_600_000)
        pkts = rnd.randrange(0, 50)
        out.append(
            (
                src,
                dst,
                rnd.randrange(65536),
                rnd.choice((0, 80, 443)),
                rnd.choice((6, 17, 1)),
                pkts,
                pkts * rnd.randrange(40, 1500),
                start,
                start + rnd.randrange(0, 60_000),
                rnd.randrange(0x1000),
                rnd.choice((1, 2)),
                rnd.choice((0, 1, 100, 2**31 - 1)),
            )
        )
    return out, bytes(rnd.choice((1, 2)) for _ in range(n))


def _python_flows(flows: list[tuple], directions: bytes):
    from server.core.ingest import accept_flows

    return accept_flows(FL, flows, directions, NOW, None)


@pytestmark_fast
@pytest.mark.parametrize("seed", range(5))
def test_accept_flows_makes_the_records_the_python_path_makes(seed):
    import marshal

    from server.core.columns import table_of, table_of_buffers
    from server.core.ingest import accept_flows
    from server.pipeline import spool_codec

    flows, directions = _flows(random.Random(seed), 700)
    want, bad, prepared = _python_flows(flows, directions)
    assert bad == [] and prepared is None
    got = fast.accept_flows(flows, directions, HEAD, FlowRecord, NOW)
    assert got is not None
    records, raw, buffers = got
    assert records == want and all(type(r) is FlowRecord for r in records)
    assert [type(v) for v in records[0]] == [type(v) for v in want[0]]
    cols = [list(c) for c in zip(*want)]
    assert raw == marshal.dumps(tuple(cols[i] for i in spool_codec._VALUE_IDX), 2)
    assert table_of_buffers(len(records), HEAD, buffers).equals(table_of(want))
    ok, bad, prepared = accept_flows(FL, flows, directions, NOW, fast)  # what the collector calls
    assert ok == want and bad == [] and prepared is not None and prepared[1].equals(table_of(want))


FLOW_EDITS = [
    ("start in the future", 7, NOW + 400_000),
    ("start zero", 7, 0),
    ("window over a day", 8, NOW - 60_000 + 86_400_001),
    ("end before start", 8, NOW - 120_000),
    ("more packets than bytes", 5, 10**9),
    ("sampling too large", 11, 2**31),
    ("negative port", 2, -1),
    ("port too large", 3, 65536),
    ("flags past 12 bits", 9, 0x1000),
    ("not an address", 0, "10.0.0.256"),
    ("IPv6 to IPv4", 0, "2001:db8::1"),
    ("a float", 5, 1.0),
    ("not ASCII", 1, "١٠.0.0.1"),
    ("action unknown", 10, 3),
]


@pytestmark_fast
@pytest.mark.parametrize("what,field,value", FLOW_EDITS, ids=[e[0] for e in FLOW_EDITS])
def test_a_flow_it_is_not_sure_of_leaves_the_batch_to_the_python_path(what, field, value):
    flows, directions = _flows(random.Random(9), 40)
    f = list(flows[17])
    f[0], f[1], f[7], f[8] = "198.51.100.1", "10.200.0.1", NOW - 60_000, NOW - 59_000
    f[field] = value
    flows[17] = tuple(f)
    assert fast.accept_flows(flows, directions, HEAD, FlowRecord, NOW) is None
    ok, bad, prepared = _python_flows(flows, directions)
    if what == "a float":  # the Python path stores what it is given; the compiled one only takes ints
        assert bad == [] and len(ok) == 40
        return
    assert [r.index for r in bad] == [17] and len(ok) == 39 and prepared is None


@pytestmark_fast
def test_accept_flows_takes_a_missing_direction_only_from_attribution():
    flows, directions = _flows(random.Random(3), 10)
    assert fast.accept_flows(flows, bytes(10), HEAD, FlowRecord, NOW) is None  # 0: attribution always says
    with pytest.raises(ValueError, match="one byte per flow"):
        fast.accept_flows(flows, directions[:5], HEAD, FlowRecord, NOW)
    with pytest.raises(TypeError):
        fast.accept_flows(tuple(flows), directions, HEAD, FlowRecord, NOW)
    assert fast.accept_flows([], b"", HEAD, FlowRecord, NOW)[0] == []
