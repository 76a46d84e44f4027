"""server.api.wire encodes record batches column-wise: it must give exactly the bytes protobuf gives."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlog.v1 import query_pb2
from server.api import convert, wire
from server.core.columns import table_of
from server.core.model import FlowRecord

U64 = 2**64 - 1


def _reference(records) -> bytes:
    return query_pb2.RecordBatch(records=convert.records_to_pb(list(records))).SerializeToString()


def _record(rnd: random.Random, i: int) -> FlowRecord:
    v6 = rnd.random() < 0.3
    addr = (
        (lambda: f"2001:db8::{rnd.randrange(1, 65535):x}")
        if v6
        else (lambda: f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}")
    )
    start = 1_780_000_000_000 + rnd.randrange(0, 86_400_000)
    packets = rnd.choice([0, 1, 127, 128, 16383, 16384, rnd.randrange(1, 2**40), U64])
    return FlowRecord(
        record_id=f"{rnd.getrandbits(128):032x}",
        version=1,
        account_id="acct",
        flow_log_id="fl-abcdefgh",
        region="bj",
        project="proj",
        log_store="web",
        resource_type=rnd.randrange(0, 8),
        resource_id="eip-bj-01",
        network_id="vpc-x",
        src_addr=addr() if i % 17 else "",
        dst_addr=addr() if i % 17 else "",
        src_port=rnd.choice([0, 1, 127, 128, 443, 65535]),
        dst_port=rnd.randrange(0, 65536),
        protocol=rnd.choice([0, 1, 6, 17, 255]),
        packets=packets,
        bytes=max(packets, rnd.choice([0, 40, U64])),
        start_time=start,
        end_time=start + rnd.choice([0, 1, 999, 1000, 59_999]),
        action=rnd.choice([0, 1, 2]),
        log_status=rnd.choice([1, 2, 3]),
        direction=rnd.choice([0, 1, 2]),
        tcp_flags=rnd.randrange(0, 0x1000),
        rule_id=rnd.choice(["", "sg-web-https", "default-deny", "a" * 128]),
        rule_kind=rnd.randrange(0, 4),
        sampling_rate=rnd.choice([0, 1, 127, 128, 4096, 2**31 - 1]),
    )


def test_matches_protobuf_on_varied_records():
    rnd = random.Random(7)
    records = [_record(rnd, i) for i in range(3000)]
    assert wire.encode_batch(records) == _reference(records)
    # ... on the fast path (encode_records raises where encode_batch would fall back)
    assert wire.concat(wire.encode_records(table_of(records))) == _reference(records)
    table = table_of(records)
    chunks = wire.encode_chunks(table, 1000)
    assert [n for _, n in chunks] == [1000, 1000, 1000]
    for k, (data, _) in enumerate(chunks):
        assert data == _reference(records[k * 1000 : (k + 1) * 1000])


def test_empty_and_single():
    assert wire.encode_batch([]) == b""
    rnd = random.Random(1)
    r = _record(rnd, 1)
    assert wire.encode_batch([r]) == _reference([r])


def test_unicode_strings_use_byte_lengths():
    rnd = random.Random(2)
    r = _record(rnd, 1)._replace(log_store="日志" * 40, project="项目", resource_id="")
    assert wire.encode_batch([r, r]) == _reference([r, r])


def test_responses_parse_back():
    rnd = random.Random(3)
    records = [_record(rnd, i) for i in range(10)]
    batch = wire.encode_batch(records)
    q = query_pb2.QueryResponse.FromString(wire.query_batch_response(batch))
    assert list(q.batch.records) == convert.records_to_pb(records)
    t = query_pb2.TailResponse.FromString(wire.tail_batch_response(batch, "cur-sor"))
    assert t.cursor == "cur-sor" and len(t.batch.records) == 10


def test_falls_back_for_values_it_does_not_encode():
    rnd = random.Random(4)
    r = _record(rnd, 1)._replace(tcp_flags=-1)  # out of range for uint32: protobuf's own error
    with pytest.raises(ValueError):
        _reference([r])
    with pytest.raises(ValueError):
        wire.encode_batch([r])
    r = _record(rnd, 1)._replace(resource_type=-3)  # an open enum may be negative: protobuf encodes it
    assert wire.encode_batch([r]) == _reference([r])


def test_shared_batches_reuse_only_identical_records():
    rnd = random.Random(5)
    records = [_record(rnd, i) for i in range(50)]
    shared = wire.SharedBatches(size=4)
    a = shared.get(list(records))
    assert shared.get(list(records)) is a
    copy = [FlowRecord(*r) for r in records]  # equal values, other objects: encoded again, same bytes
    assert shared.get(copy) == a
    assert shared.get(records[:10]) == _reference(records[:10])


def test_arrow_input_from_another_schema_order():
    rnd = random.Random(6)
    records = [_record(rnd, i) for i in range(20)]
    t = table_of(records)
    t = t.select(list(reversed(t.column_names)))
    assert wire.concat(wire.encode_records(t)) == _reference(records)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, U64), st.integers(0, 2**33 * 1000), st.integers(0, 65535), st.text(max_size=300)),
        min_size=1,
        max_size=30,
    )
)
def test_integers_and_strings_property(rows):
    base = _record(random.Random(8), 1)
    records = [
        base._replace(bytes=b, packets=min(b, 5), start_time=t, end_time=t, dst_port=p, network_id=s)
        for b, t, p, s in rows
    ]
    assert wire.concat(wire.encode_records(table_of(records))) == _reference(records)


def test_constant_columns_and_all_constant_records():
    rnd = random.Random(9)
    r = _record(rnd, 1)
    same = [r] * 5  # every column constant
    assert wire.concat(wire.encode_records(table_of(same))) == _reference(same)
    zeros = [r._replace(version=0, resource_type=0, network_id="", src_port=0)] * 3
    assert wire.concat(wire.encode_records(table_of(zeros))) == _reference(zeros)


def test_shared_batches_encode_once_for_concurrent_callers(monkeypatch):
    import threading

    rnd = random.Random(10)
    records = [_record(rnd, i) for i in range(200)]
    calls = []
    real = wire.encode_batch
    gate = threading.Event()

    def slow(recs):
        calls.append(1)
        gate.wait(5)
        return real(recs)

    monkeypatch.setattr(wire, "encode_batch", slow)
    shared = wire.SharedBatches(encode=wire.encode_batch)
    out = []
    threads = [threading.Thread(target=lambda: out.append(shared.get(records))) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(out) == 8 and all(o == _reference(records) for o in out)


# -- RowEncoder: the Tail's encoder, row by row in Python ------------------------------------------


def test_row_encoder_matches_protobuf_on_varied_records():
    rnd = random.Random(11)
    records = [_record(rnd, i) for i in range(3000)]
    records.append(_record(rnd, 1)._replace(resource_type=-3))  # a negative open enum: 10-byte varint
    for i in range(0, len(records), 1000):
        batch = records[i : i + 1000]
        assert wire.encode_batch_rows(batch) == _reference(batch)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, U64), st.integers(0, 2**33 * 1000), st.integers(0, 65535), st.text(max_size=300)),
        min_size=1,
        max_size=30,
    )
)
def test_row_encoder_integers_and_strings_property(rows):
    base = _record(random.Random(12), 1)
    records = [
        base._replace(
            bytes=b,
            packets=min(b, 5),
            start_time=t,
            end_time=t + 1,
            dst_port=p,
            network_id=s,
            project=s[:20],
            record_id=s[:40],
        )
        for b, t, p, s in rows
    ]
    assert wire.RowEncoder().encode(records) == _reference(records)


def test_row_encoder_caches_stay_bounded_and_correct():
    rnd = random.Random(13)
    records = [_record(rnd, i) for i in range(500)]
    enc = wire.RowEncoder(max_entries=3)
    for i in range(0, 500, 50):  # every cache overflows and is emptied many times over
        assert enc.encode(records[i : i + 50]) == _reference(records[i : i + 50])
    assert all(len(c) <= 3 for c in enc._caches)
    assert enc.encode(records) == enc.encode(list(reversed(records))[::-1])  # warm caches: same bytes
