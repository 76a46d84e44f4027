"""Records end to end on the embedded default: generated and ingested records, Query across
LogStores with paging, Tail live and resumed, LogStore deletion. A real server process."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from clients.client import FlowLogClient, FlowLogError
from flowlog.v1 import record_pb2
from server.core.filter import compile_predicate, parse
from server.core.model import FlowRecord
from tests.e2e.conftest import KEY_A, KEY_B
from tests.waiting import poll, wait_for

WINDOW_S = 1.0  # the test server's generator window (conftest)


@pytest.fixture
def client(server):
    with FlowLogClient(server.address, KEY_A) as c:
        yield c


@pytest.fixture
def other(server):
    with FlowLogClient(server.address, KEY_B) as c:
        yield c


def uid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def make_flow_log(c: FlowLogClient, store: str, *, traffic="all", resource="eip-bj-01", project="proj", new=True):
    kw = {"new_log_store": f"{project}/{store}"} if new else {"log_store": f"{project}/{store}"}
    return c.create_flow_log(
        region="bj",
        name=uid("fl"),
        resource_type="eip",
        resource_id=resource,
        network_id="vpc-bjdemo",
        traffic_type=traffic,
        **kw,
    )


def query_all(c: FlowLogClient, stores, *, filter="", since="1h", limit=0, order=None) -> list:
    return list(
        c.query_all(
            region="bj", project="proj", log_stores=stores, start=since, filter=filter, limit=limit, order=order
        )
    )


def pb_record(i: int, base: datetime, **kw) -> record_pb2.FlowRecord:
    r = record_pb2.FlowRecord(
        src_addr=f"10.1.{i // 250}.{i % 250 + 1}",
        dst_addr="203.0.113.11",
        src_port=40000 + i % 20000,
        dst_port=[443, 22, 3389, 53][i % 4],
        protocol=17 if i % 4 == 3 else 6,
        packets=1 + i % 7,
        bytes=(1 + i % 7) * 100,
        action=1 + (i % 3 == 0),
        log_status=1,
        direction=1,
        tcp_flags=2,
    )
    r.start_time.FromDatetime(base + timedelta(milliseconds=i * 10))
    r.end_time.FromDatetime(base + timedelta(milliseconds=i * 10 + 5))
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_generated_records_appear_within_two_windows(client):
    store = uid("gen")
    fl = make_flow_log(client, store)
    try:
        records = wait_for(
            lambda: query_all(client, [store], since="5m"), "records after two windows (and a generous margin)",
            2 * WINDOW_S + 30, 0.1,
        )  # fmt: skip
        r = records[0]
        assert r.flow_log_id == fl.id and r.resource_id == "eip-bj-01" and r.log_store == store
        assert r.network_id == "vpc-bjdemo" and r.region == "bj" and r.project == "proj"
        ok = [x for x in records if x.log_status == 1]
        assert all(x.dst_addr == "203.0.113.11" or x.src_addr == "203.0.113.11" for x in ok)
    finally:
        client.delete_flow_log(fl.id)


def test_traffic_type_deny_keeps_only_rejects_and_pause_stops(client):
    store = uid("deny")
    fl = make_flow_log(client, store, traffic="deny")
    try:
        records = wait_for(
            lambda: [r for r in query_all(client, [store], since="5m") if r.log_status == 1], "OK records", 30, 0.1
        )
        assert all(r.action == 2 for r in records)
        client.update_flow_log(fl.id, state="paused")
        # A witness flow log, ACTIVE from after the pause. The generator submits windows one after
        # another from one thread, and the query backend stores them in that order: once the
        # witness has records, whatever window of `fl` was in flight at the pause is stored too;
        # once the witness has more, the generator has run again since without `fl`.
        witness_store = uid("wit")
        witness = make_flow_log(client, witness_store)
        try:
            first = len(wait_for(lambda: query_all(client, [witness_store], since="5m"), "witness records", 30, 0.1))
            before = len(query_all(client, [store], since="5m"))
            wait_for(
                lambda: len(query_all(client, [witness_store], since="5m")) > first,
                "the generator to run again (more witness records)", 30, 0.1,
            )  # fmt: skip
            assert len(query_all(client, [store], since="5m")) == before
        finally:
            client.delete_flow_log(witness.id)
    finally:
        client.delete_flow_log(fl.id)


def test_ingest_rejects_bad_records_keeps_good_and_never_duplicates(client):
    store = uid("ing")
    fl = make_flow_log(client, store, traffic="all")
    client.update_flow_log(fl.id, description="collector-fed")
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    good = [pb_record(i, base) for i in range(50)]
    bad = [
        pb_record(100, base, src_addr="not-an-ip"),
        pb_record(101, base, dst_port=70000),
        pb_record(102, base, packets=500, bytes=10),
        pb_record(103, base, action=0),
        pb_record(104, base, dst_addr="2001:db8::1"),
    ]
    late = pb_record(105, base)
    late.end_time.FromDatetime(base - timedelta(seconds=5))
    future = pb_record(106, datetime.now(timezone.utc) + timedelta(days=1))
    foreign = pb_record(107, base, flow_log_id="fl-someoneelse1")
    batch = good[:25] + bad + [late, future, foreign] + good[25:]
    resp = client.ingest(fl.id, [batch])
    assert resp.accepted == 50 and resp.rejected == 8
    by_index = {r.index: (r.field, r.reason) for r in resp.rejections}
    assert by_index[25][0] == "src_addr" and by_index[26][0] == "dst_port" and by_index[27][0] == "packets"
    assert by_index[28][0] == "action" and by_index[29][0] == "dst_addr" and by_index[30][0] == "end_time"
    assert by_index[31][0] == "start_time" and "future" in by_index[31][1] and by_index[32][0] == "flow_log_id"
    got = wait_for(
        lambda: (
            [
                r
                for r in query_all(client, [store], since="1h", filter="src_addr = 10.1.0.0/16")
                if len(r.record_id) == 32
            ]
            if len(query_all(client, [store], since="1h", filter="src_addr = 10.1.0.0/16")) >= 50
            else []
        ),
        "50 records stored",
        10,
        0.1,
    )
    assert len(got) == 50 and len({r.record_id for r in got}) == 50
    # a retry of the same records never duplicates
    assert client.ingest(fl.id, [good]).accepted == 50
    # A marker stored after the retry: the query backend stores in order, so once the marker is
    # searchable the retried records are stored too (or deduplicated).
    assert client.ingest(fl.id, [[pb_record(0, base, src_addr="10.2.0.1")]]).accepted == 1
    wait_for(lambda: query_all(client, [store], since="1h", filter="src_addr = 10.2.0.1"), "the marker", 30, 0.1)
    assert len(query_all(client, [store], since="1h", filter="src_addr = 10.1.0.0/16")) == 50
    client.delete_flow_log(fl.id)


def test_ingest_status_paths(client, other):
    fl = make_flow_log(client, uid("st"))
    base = datetime.now(timezone.utc) - timedelta(minutes=1)
    with pytest.raises(FlowLogError) as e:
        other.ingest(fl.id, [[pb_record(0, base)]])  # another account's flow log
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(FlowLogError) as e:
        client.ingest("fl-doesnotexist9", [[pb_record(0, base)]])
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(FlowLogError) as e:
        client.ingest("not an id", [[pb_record(0, base)]])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(FlowLogError) as e:
        client.ingest(fl.id, [[pb_record(i, base) for i in range(10_001)]])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "10000" in e.value.message
    client.update_flow_log(fl.id, state="paused")
    with pytest.raises(FlowLogError) as e:
        client.ingest(fl.id, [[pb_record(0, base)]])
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    client.delete_flow_log(fl.id)


def test_ingest_bytes_that_are_not_an_ingest_request(client):
    """The Ingest stream reads its messages' bytes itself (for the compiled fast path): a message
    whose framing reads but whose records do not parse is still INVALID_ARGUMENT naming the
    message type, whatever else is wrong with it, and the messages before it are kept."""
    from flowlog.v1 import ingest_pb2

    store = uid("raw")
    fl = make_flow_log(client, store)
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    good = ingest_pb2.IngestRequest(flow_log_id=fl.id, records=[pb_record(i, base) for i in range(20)])
    broken_record = b"\x12\x03\x4a\x05a"  # records: one FlowRecord whose src_addr runs past its end
    raw = client.channel.stream_unary(
        "/flowlog.v1.IngestService/Ingest",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.IngestResponse.FromString,
    )
    for flow_log_id in ("fl-doesnotexist9", fl.id):
        msg = ingest_pb2.IngestRequest(flow_log_id=flow_log_id).SerializeToString() + broken_record
        with pytest.raises(grpc.RpcError) as e:
            raw(iter([good.SerializeToString(), msg]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid flowlog.v1.IngestRequest" in e.value.details()
    assert raw(iter([good.SerializeToString()]), timeout=10).accepted == 20
    wait_for(lambda: len(query_all(client, [store], filter="src_addr = 10.1.0.0/16")) >= 20, "20 records", 10, 0.1)
    stored = query_all(client, [store], filter="src_addr = 10.1.0.0/16")
    assert len(stored) == 20, "the retries of the same 20 records must not duplicate"
    client.delete_flow_log(fl.id)


@pytest.fixture(scope="module")
def two_stores(server):
    """Two LogStores of project 'proj' with 1,500 ingested records each (some equal start times)."""
    with FlowLogClient(server.address, KEY_A) as c:
        stores = [uid("qa"), uid("qb")]
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)
        for n, store in enumerate(stores):
            fl = make_flow_log(c, store)
            c.update_flow_log(fl.id, traffic_type="all")
            recs = [pb_record(i, base + timedelta(seconds=n), src_port=1000 + i) for i in range(1500)]
            for i in range(0, 1500, 7):
                recs[i].start_time.FromDatetime(base)  # ties on start_time
            assert c.ingest(fl.id, [recs[:700], recs[700:]]).accepted == 1500
            c.update_flow_log(fl.id, state="paused")  # keep the generator out of these stores
        # generated records of the window before the pause can land too: count what is there
        poll(lambda: len(query_all(c, stores, since="2h", filter="src_addr = 10.1.0.0/16")) >= 3000, 15, 0.1)
        yield stores, base


def test_query_several_log_stores_pages_in_order(client, two_stores):
    stores, base = two_stores
    flt = "src_addr = 10.1.0.0/16"
    everything = query_all(client, stores, since="2h", filter=flt)
    assert len(everything) == 3000 and {r.log_store for r in everything} == set(stores)
    keys = [(r.start_time.ToMilliseconds(), r.record_id) for r in everything]
    assert keys == sorted(keys, reverse=True), "newest first, ties broken by record_id"
    # page by page with a small limit: same records, no gap, no duplicate
    paged = query_all(client, stores, since="2h", filter=flt, limit=333)
    assert [r.record_id for r in paged] == [r.record_id for r in everything]
    oldest = query_all(client, stores, since="2h", filter=flt, order="oldest-first")
    assert [r.record_id for r in oldest] == [r.record_id for r in reversed(everything)]
    # the summary counts the matches over all pages
    stream = client.query(region="bj", project="proj", log_stores=stores, start="2h", filter=flt, limit=100)
    first = list(stream)
    assert len(first) == 100 and stream.summary.more and stream.summary.matched == 3000
    assert stream.summary.next_page_token


def test_query_filters_match_the_evaluator(client, two_stores):
    stores, _ = two_stores
    base_filter = "src_addr = 10.1.0.0/16"
    everything = query_all(client, stores, since="2h", filter=base_filter)
    as_records = {r.record_id: r for r in everything}
    for text in [
        "action = REJECT",
        "dst_port IN (22, 3389)",
        "NOT protocol = tcp",
        "port = 443 AND packets >= 4",
        "addr = 10.1.2.0/24 OR dst_port = 53",
        "bytes > 500 AND NOT action = ACCEPT",
    ]:
        got = query_all(client, stores, since="2h", filter=f"{base_filter} AND ({text})")
        pred = compile_predicate(parse(text))
        expected = [rid for rid, r in as_records.items() if pred(_domain(r))]
        assert sorted(r.record_id for r in got) == sorted(expected), text
        assert got, text


def _domain(r: record_pb2.FlowRecord) -> FlowRecord:
    return FlowRecord(
        r.record_id,
        r.version,
        r.account_id,
        r.flow_log_id,
        r.region,
        r.project,
        r.log_store,
        r.resource_type,
        r.resource_id,
        r.network_id,
        r.src_addr,
        r.dst_addr,
        r.src_port,
        r.dst_port,
        r.protocol,
        r.packets,
        r.bytes,
        r.start_time.ToMilliseconds(),
        r.end_time.ToMilliseconds(),
        r.action,
        r.log_status,
        r.direction,
        r.tcp_flags,
    )


def test_query_status_paths(client, other, two_stores):
    stores, _ = two_stores

    def code(**kw):
        args = {"region": "bj", "project": "proj", "log_stores": stores, "start": "1h", **kw}
        with pytest.raises(FlowLogError) as e:
            list(client.query(**args))
        return e.value

    assert code(log_stores=[f"otherproj/{stores[0]}"]).code == grpc.StatusCode.INVALID_ARGUMENT
    assert code(log_stores=[f"gz/proj/{stores[0]}"]).code == grpc.StatusCode.INVALID_ARGUMENT
    assert code(log_stores=["missing"]).code == grpc.StatusCode.NOT_FOUND
    e = code(filter="dst_port = ")
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "position" in e.message
    assert code(page_token="tampered").code == grpc.StatusCode.INVALID_ARGUMENT
    assert code(start="1h", end="2h").code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(FlowLogError) as e:  # another account's LogStore does not exist for it
        list(other.query(region="bj", project="proj", log_stores=stores, start="1h"))
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    # a page token is bound to the request and the account
    stream = client.query(region="bj", project="proj", log_stores=stores, start="2h", limit=10)
    list(stream)
    token = stream.summary.next_page_token
    assert code(start="3h", page_token=token).code == grpc.StatusCode.INVALID_ARGUMENT


def test_tail_live_filtered_and_resumed(client):
    store = uid("tail")
    fl = make_flow_log(client, store)
    client.update_flow_log(fl.id, state="paused")
    seen: list = []
    cursors: list[str] = []
    # From a start time before the Ingest below: replayed from the spool, then live, without a gap,
    # however long the tail takes to subscribe.
    tail = client.tail(
        region="bj",
        project="proj",
        log_stores=[store],
        filter="dst_port = 22",
        start=datetime.now(timezone.utc) - timedelta(seconds=1),
    )

    def follow():
        for msg in tail:
            if msg.HasField("batch"):
                seen.extend(msg.batch.records)
                cursors.append(msg.cursor)

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    client.update_flow_log(fl.id, state="active")
    base = datetime.now(timezone.utc) - timedelta(seconds=30)
    client.ingest(fl.id, [[pb_record(i, base) for i in range(40)]])  # 10 of them go to port 22
    wait_for(lambda: len([r for r in seen if r.src_addr.startswith("10.1.")]) >= 10, "10 tailed records", 10, 0.1)
    mine = [r for r in seen if r.src_addr.startswith("10.1.")]
    assert len(mine) == 10 and all(r.dst_port == 22 for r in seen)
    tail.cancel()
    t.join(5)
    # resume after the last cursor: only what came after it
    client.ingest(fl.id, [[pb_record(i, base + timedelta(seconds=1)) for i in range(1000, 1004)]])
    resumed = client.tail(region="bj", project="proj", log_stores=[store], filter="dst_port = 22", cursor=cursors[-1])
    got = []
    for msg in resumed:
        if msg.HasField("batch"):
            got.extend(r for r in msg.batch.records if r.src_addr.startswith("10.1."))
        if len(got) >= 1:
            break
    resumed.cancel()
    assert {r.src_port for r in got} == {41001}, "exactly the new record to port 22 after the cursor (i=1001)"
    # the cursor belongs to this account and these LogStores
    with pytest.raises(FlowLogError) as e:
        for _ in client.tail(region="bj", project="proj", log_stores=[store], cursor="garbage"):
            break
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    client.delete_flow_log(fl.id)


def test_deleting_a_log_store_deletes_its_records(client):
    store = uid("del")
    fl = make_flow_log(client, store)
    base = datetime.now(timezone.utc) - timedelta(minutes=2)
    client.ingest(fl.id, [[pb_record(i, base) for i in range(20)]])
    wait_for(
        lambda: len(query_all(client, [store], since="1h", filter="src_addr = 10.1.0.0/16")) == 20,
        "20 records",
        10,
        0.1,
    )
    client.delete_flow_log(fl.id)
    assert query_all(client, [store], since="1h", filter="src_addr = 10.1.0.0/16"), "rule 8: records stay"
    client.delete_log_store("bj", "proj", store)
    client.create_log_store("bj", "proj", store)
    assert query_all(client, [store], since="1h") == []


def _marked(i: int, base: datetime, **kw) -> record_pb2.FlowRecord:
    """A record the generator would never make (dst_port 9999 with exactly 7 packets of 7777 bytes)."""
    return pb_record(i, base, dst_port=9999, packets=7, bytes=7777, **kw)


MARK = "dst_port = 9999 AND packets = 7 AND bytes = 7777"


def test_rule_fields_and_a_missing_direction_through_ingest_query_and_tail(client):
    """API.md Additions: records carry rule_id / rule_kind / sampling_rate through Ingest, Query and
    Tail and are filterable by them; a record without a direction (AWS's v2 format has none) is
    accepted with the direction its addresses give on the flow log's resource (eip-bj-01 owns
    203.0.113.11): destination -> INGRESS, source -> EGRESS, neither -> unspecified."""
    store = uid("rules")
    fl = make_flow_log(client, store)
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    acl = _marked(0, base, rule_id="acl-edge-1", rule_kind=1, sampling_rate=100, action=2)
    deny = _marked(1, base, rule_id="default-deny", rule_kind=3, action=2)
    inbound = _marked(2, base, src_addr="198.51.100.9", dst_addr="203.0.113.11", direction=0)
    outbound = _marked(3, base, src_addr="203.0.113.11", dst_addr="198.51.100.9", direction=0)
    elsewhere = _marked(4, base, src_addr="198.51.100.1", dst_addr="198.51.100.2", direction=0)
    bad = [_marked(5, base, rule_id="no spaces"), _marked(6, base, rule_kind=7), _marked(7, base, sampling_rate=2**31)]
    try:
        resp = client.ingest(fl.id, [[acl, deny, inbound, outbound, elsewhere, *bad]])
        assert (resp.accepted, resp.rejected) == (5, 3)
        assert [(r.index, r.field) for r in resp.rejections] == [(5, "rule_id"), (6, "rule_kind"), (7, "sampling_rate")]
        got = wait_for(
            lambda: (
                [r for r in query_all(client, [store], filter=MARK)]
                if len(query_all(client, [store], filter=MARK)) >= 5
                else []
            ),
            "5 marked records",
            10,
            0.1,
        )
        by_port = {r.src_port: r for r in got}
        assert len(got) == 5
        a = by_port[acl.src_port]
        assert (a.rule_id, a.rule_kind, a.sampling_rate, a.action) == ("acl-edge-1", 1, 100, 2)
        d = by_port[deny.src_port]
        assert (d.rule_id, d.rule_kind, d.sampling_rate) == ("default-deny", 3, 0)
        assert [by_port[r.src_port].direction for r in (inbound, outbound, elsewhere)] == [1, 2, 0]
        # The filter fields, on the server's store.
        assert [r.src_port for r in query_all(client, [store], filter=f"{MARK} AND rule_kind = ACL")] == [acl.src_port]
        assert [r.src_port for r in query_all(client, [store], filter=f"{MARK} AND rule_id = default-deny")] == [
            deny.src_port
        ]
        assert [r.src_port for r in query_all(client, [store], filter=f"{MARK} AND sampling_rate > 1")] == [
            acl.src_port
        ]
        assert {r.src_port for r in query_all(client, [store], filter=f"{MARK} AND rule_kind = RULE_KIND_DEFAULT")} == {
            deny.src_port
        }
        # The derived direction is part of the record id: the same flow sent with the direction
        # spelt out is the same record, not a second one.
        explicit = _marked(2, base, src_addr="198.51.100.9", dst_addr="203.0.113.11", direction=1)
        assert client.ingest(fl.id, [[explicit]]).accepted == 1
        again = query_all(client, [store], filter=MARK)
        assert len(again) == 5 and {r.record_id for r in again} == {r.record_id for r in got}
        # Tail replays the same records with their fields (start: from the spool, then live).
        tail = client.tail(
            region="bj",
            project="proj",
            log_stores=[store],
            start=base - timedelta(minutes=1),
            filter=f"{MARK} AND rule_id IN (acl-edge-1, default-deny)",
        )
        tailed: list = []
        try:
            for msg in tail:
                if msg.HasField("batch"):
                    tailed.extend(msg.batch.records)
                if len(tailed) >= 2:
                    break
        finally:
            tail.cancel()
        assert sorted((r.rule_id, r.rule_kind, r.sampling_rate) for r in tailed) == [
            ("acl-edge-1", 1, 100),
            ("default-deny", 3, 0),
        ]
    finally:
        client.delete_flow_log(fl.id)


def test_generated_records_say_which_rule_decided(client):
    """The generator names the deciding rule of every flow (the demo's rules have ids); flows no
    rule matched are REJECTed by default-deny."""
    store = uid("genrule")
    fl = make_flow_log(client, store, resource="eip-bj-02")  # the bastion: ACL + security group
    try:
        records = wait_for(
            lambda: [r for r in query_all(client, [store], since="5m") if r.log_status == 1], "OK records", 30, 0.1
        )
        for r in records:
            assert r.rule_id and r.rule_kind in (1, 2, 3), r
            if r.rule_kind == 3:
                assert (r.rule_id, r.action) == ("default-deny", 2)
            if r.rule_id == "acl-bastion-no-http":
                assert (r.rule_kind, r.action, r.dst_port, r.protocol) == (1, 2, 80, 6)
            if r.dst_port == 80 and r.protocol == 6 and r.direction == 1:
                assert r.rule_id == "acl-bastion-no-http"
    finally:
        client.delete_flow_log(fl.id)
