"""Hostile input on the record path, property-based (hypothesis), against a real server.

Ingest: random FlowRecord fields (IPv6 edge cases like ::, ::ffff:1.2.3.4, fe80::1%eth0,
overlong and non-addresses, NUL/RTL in strings, 0 / 2**32-1 / 2**64-1, end < start, far future
and past, unknown enums, foreign flow_log_id / account_id). Every answer is a documented status
code or per-record rejections with a field and a reason. And the records the server accepted
must then be stored: a value the validation lets through but a backend cannot store would jam
the pipeline for every account (the sink retries a batch until it succeeds), so after the fuzzing
the query backend must be healthy and hold every accepted record exactly once.

Tail and Query: random filters, cursors (garbage, tampered, truncated real ones), start/end
times (including outside the Timestamp range). Never a crash or a hang, the server stays
healthy, and its memory does not run away.

Message limits: a message over limits.max_message_bytes is RESOURCE_EXHAUSTED; more than
limits.max_records_per_message records is INVALID_ARGUMENT.
"""

from __future__ import annotations

import time
import uuid

import grpc
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from flowlog.v1 import ingest_pb2, query_pb2, record_pb2
from server.core.records import canonical_address, record_id
from tests.reliability.conftest import (
    KEY_A,
    KEY_B,
    QUERY_HEALTH,
    SERVING,
    Stubs,
    batch,
    check_exactly_once,
    create_target,
    health,
    query_ids,
    report,
    rss_mb,
    settings,
    start_server,
)
from tests.waiting import wait_for

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
RECORD_FIELDS = set(record_pb2.FlowRecord.DESCRIPTOR.fields_by_name) | {"flow_log_id"}
MAX_MESSAGE_BYTES = 1 << 20
MAX_RECORDS = 200
HSET = hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

U32 = st.one_of(
    st.sampled_from([0, 1, 22, 443, 65535, 65536, 0xFFF, 0x1000, 2**31 - 1, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
U64 = st.one_of(st.sampled_from([0, 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
ENUM = st.one_of(st.sampled_from([0, 1, 2, 3, 4, -1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
ADDR = st.one_of(
    st.sampled_from(
        [
            "",
            "::",
            "::1",
            "::ffff:1.2.3.4",
            "::ffff:0:0",
            "fe80::1%eth0",
            "fe80::1%" + "x" * 40,
            "fe80::1%25eth0",
            "1.2.3.4%eth0",
            "0.0.0.0",
            "255.255.255.255",
            "1.2.3.4",
            "10.0.0.1",
            "2001:db8::1",
            "2001:0db8:0000:0000:0000:0000:0000:0001",
            "1.2.3",
            "1.2.3.4/32",
            "2001:db8::/32",
            "01.02.03.04",
            " 1.2.3.4",
            "1.2.3.4 ",
            "1.2.3.4\x00",
            "\u202e1.2.3.4",
            "１.２.３.４",
            "a" * 1000,
            "::ffff:255.255.255.255",
            "[::1]",
            "1::2::3",
            "localhost",
        ]
    ),
    st.ip_addresses().map(str),
    st.text(max_size=60),
)
TEXT = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", "\x00", "\u202e", "acct-a", "acct-b", "a" * 5000, "'; DROP TABLE records; --"]),
)
NOW_S = int(time.time())
SECONDS = st.one_of(
    st.sampled_from(
        [
            0,
            1,
            -1,
            NOW_S,
            NOW_S - 60,
            NOW_S + 240,
            NOW_S + 400,
            NOW_S - 3650 * 86400 - 10,
            253402300799,
            -62135596800,
            2**62,
            -(2**62),
        ]
    ),
    st.integers(NOW_S - 86400 * 30, NOW_S + 600),
    st.integers(-(2**40), 2**40),
)
NANOS = st.one_of(st.sampled_from([0, 999_999_999, 1_000_000_000, -1, 2**31 - 1]), st.integers(0, 999_999_999))


VALID_V4 = st.ip_addresses(v=4).map(str)
VALID_V6 = st.ip_addresses(v=6).map(str)
HOSTILE = {
    "src_addr": ADDR,
    "dst_addr": ADDR,
    "src_port": U32,
    "dst_port": U32,
    "protocol": U32,
    "tcp_flags": U32,
    "packets": U64,
    "bytes": U64,
    "action": ENUM,
    "log_status": ENUM,
    "direction": ENUM,
    "version": U32,
    "resource_type": ENUM,
    "record_id": TEXT,
    "region": TEXT,
    "resource_id": TEXT,
    "network_id": TEXT,
    "project": TEXT,
    "log_store": TEXT,
    "account_id": st.sampled_from(["", "acct-a", "acct-b", "x"]),
}


@st.composite
def records(draw, own_fid: str, foreign_fid: str):
    """A valid record (IPv4 or IPv6, OK or NODATA) with 0-4 fields made hostile, so that both the
    validation and what it lets through get exercised."""
    v6 = draw(st.booleans())
    src, dst = (draw(VALID_V6), draw(VALID_V6)) if v6 else (draw(VALID_V4), draw(VALID_V4))
    nodata = draw(st.integers(0, 4)) == 0
    values = dict(
        src_addr="" if nodata else src,
        dst_addr="" if nodata else dst,
        src_port=draw(st.integers(0, 65535)),
        dst_port=draw(st.integers(0, 65535)),
        protocol=draw(st.integers(0, 255)),
        packets=draw(st.integers(1, 10**6)),
        action=draw(st.sampled_from([1, 2])),
        log_status=2 if nodata else draw(st.sampled_from([1, 3])),
        direction=draw(st.sampled_from([1, 2])),
        tcp_flags=draw(st.integers(0, 0xFFF)),
    )
    values["bytes"] = values["packets"] * draw(st.integers(1, 1500))
    if nodata and draw(st.booleans()):  # what the generator sends for an idle window
        values.update(src_port=0, dst_port=0, protocol=0, packets=0, bytes=0, action=0, direction=0, tcp_flags=0)
    for name in draw(st.lists(st.sampled_from(sorted(HOSTILE)), max_size=4, unique=True)):
        values[name] = draw(HOSTILE[name])
    values["flow_log_id"] = draw(st.sampled_from(["", "", "", own_fid, own_fid, foreign_fid, "fl-zzzzzzzz"]))
    r = record_pb2.FlowRecord(**values)
    hostile_time = draw(st.integers(0, 3)) == 0
    start_s = draw(SECONDS) if hostile_time else NOW_S - draw(st.integers(0, 86400 * 30))
    r.start_time.seconds = start_s
    r.start_time.nanos = draw(NANOS) if hostile_time else draw(st.integers(0, 999_999_999))
    r.end_time.seconds = start_s + draw(
        st.sampled_from([0, 1, 60, -1, -60, 86400, 86401, 10**9]) if hostile_time else st.sampled_from([0, 1, 5, 60])
    )
    r.end_time.nanos = draw(NANOS) if hostile_time else 999_999_999
    return r


def server_id(fid: str, r: record_pb2.FlowRecord) -> str:
    """The record_id the server gives an accepted record."""
    s, e = r.start_time, r.end_time
    return record_id(
        fid,
        canonical_address(r.src_addr),
        canonical_address(r.dst_addr),
        r.src_port,
        r.dst_port,
        r.protocol,
        r.direction,
        s.seconds * 1000 + s.nanos // 1_000_000,
        e.seconds * 1000 + e.nanos // 1_000_000,
    )


@pytest.fixture(scope="module", params=["embedded", "elasticsearch"])
def srv(request, tmp_path_factory):
    """One server per query backend: a value the validation lets through must be storable by
    every backend (the archive is the embedded one in both)."""
    extra = {}
    if request.param == "elasticsearch":
        es = request.getfixturevalue("es_service")
        extra = {
            "query_backend": "elasticsearch",
            "elasticsearch": {"url": es["url"], "index_prefix": "fuzz" + uuid.uuid4().hex[:8]},
        }
    sp = start_server(
        tmp_path_factory.mktemp("fuzz"),
        settings(
            limits={
                "max_message_bytes": MAX_MESSAGE_BYTES,
                "max_records_per_message": MAX_RECORDS,
                "tail_heartbeat_seconds": 0.5,
            },
            **extra,
        ),
    )
    yield sp
    assert sp.stop() == 0, sp.log_tail()


@pytest.fixture(scope="module")
def ctx(srv):
    a, b = Stubs(srv.address, KEY_A), Stubs(srv.address, KEY_B)
    # Accepted records start up to ten years back (the server's MAX_PAST_MS). With the default
    # 7-day retention the server's retention pass (every 30 s) rightly deletes the older ones
    # while a slow run is still checking that every accepted record is stored: keep them all.
    ta, tb = create_target(a, "fuzz", retention_days=3650), create_target(b, "fuzzb", retention_days=3650)
    state = {"a": a, "ta": ta, "tb": tb, "accepted": set(), "sent": set(), "rss0": rss_mb(srv.proc.pid), "outcomes": {}}
    yield state
    a.close()
    b.close()


def _count(ctx, key):
    ctx["outcomes"][key] = ctx["outcomes"].get(key, 0) + 1


@HSET
@given(data=st.data(), n=st.integers(1, 6), which_fid=st.sampled_from(["own", "own", "own", "foreign", "garbage", ""]))
def test_ingest_fuzz(srv, ctx, data, n, which_fid):
    ta, tb, a = ctx["ta"], ctx["tb"], ctx["a"]
    recs = [data.draw(records(ta.flow_log_id, tb.flow_log_id)) for _ in range(n)]
    fid = {"own": ta.flow_log_id, "foreign": tb.flow_log_id, "garbage": "fl-" + "\u202e" * 9, "": ""}[which_fid]
    req = ingest_pb2.IngestRequest(flow_log_id=fid, records=recs)
    try:
        resp = a.ingest.Ingest(iter([req]), metadata=a.md, timeout=20)
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, (e.code(), e.details())
        assert e.details()
        assert which_fid != "own", (
            f"a batch for the caller's own flow log fails per record, not as a whole: {e.details()}"
        )
        _count(ctx, e.code().name)
        return
    assert which_fid == "own"
    assert resp.accepted + resp.rejected == n and len(resp.rejections) == resp.rejected
    bad = set()
    for rej in resp.rejections:
        assert 0 <= rej.index < n and rej.index not in bad
        assert rej.field in RECORD_FIELDS, rej.field
        assert rej.reason and len(rej.reason) < 500
        bad.add(rej.index)
    for i, r in enumerate(recs):
        if i not in bad:
            rid = server_id(ta.flow_log_id, r)
            ctx["accepted"].add(rid)
            ctx.setdefault("records", {})[rid] = r
            _count(ctx, "accepted")
        else:
            _count(ctx, "rejected")


@pytest.fixture(scope="module")
def real_cursor(ctx):
    a, ta = ctx["a"], ctx["ta"]
    call = a.query.Tail(
        query_pb2.TailRequest(region="bj", project="proj", log_stores=[ta.log_store]), metadata=a.md, timeout=10
    )
    try:
        return next(iter(call)).cursor
    finally:
        call.cancel()


FILTER_BITS = st.sampled_from(
    [
        "(",
        ")",
        "NOT",
        "AND",
        "OR",
        "IN",
        "addr",
        "port",
        "src_addr",
        "start_time",
        "bytes",
        "=",
        "!=",
        "<",
        ">=",
        ",",
        "10.0.0.0/8",
        "::1",
        "fe80::1%eth0",
        "::ffff:1.2.3.4",
        "2001:db8::/129",
        "tcp",
        "REJECT",
        "'x'",
        '"',
        "\x00",
        "\u202e",
        "99999999999999999999",
        "-1",
        "18446744073709551616",
        "2026-11-25T10:00:00Z",
        "9999-12-31T23:59:59Z",
    ]
)


def mutate(token: str, how: int, pos: int) -> str:
    if not token:
        return token
    pos %= len(token)
    return [
        token[:pos],
        token[:pos] + ("A" if token[pos] != "A" else "B") + token[pos + 1 :],
        token + token,
        token[::-1],
        token.replace(".", ""),
    ][how % 5]


@HSET
@given(
    filt=st.one_of(st.just(""), st.just(""), st.text(max_size=100), st.lists(FILTER_BITS, max_size=30).map(" ".join)),
    stores=st.one_of(st.just(None), st.just(None), st.lists(TEXT, max_size=4)),
    cursor_kind=st.sampled_from(["none", "none", "real", "real", "mutated", "text"]),
    how=st.integers(0, 4),
    pos=st.integers(0, 10_000),
    text=TEXT,
    start=st.one_of(st.none(), SECONDS),
    nanos=NANOS,
)
def test_tail_fuzz(srv, ctx, real_cursor, filt, stores, cursor_kind, how, pos, text, start, nanos):
    a, ta = ctx["a"], ctx["ta"]
    cursor = {"none": "", "real": real_cursor, "mutated": mutate(real_cursor, how, pos), "text": text}[cursor_kind]
    req = query_pb2.TailRequest(
        region="bj",
        project="proj",
        log_stores=[ta.log_store] if stores is None else stores,
        filter=filt,
        resume_cursor=cursor,
    )
    if start is not None:
        req.start_time.seconds = start
        req.start_time.nanos = nanos
    call = a.query.Tail(req, metadata=a.md, timeout=3)
    try:
        first = next(iter(call))
        assert first.cursor
        _count(ctx, "tail-ok")
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            # A valid tail that had nothing to say within 3 s would have sent a heartbeat (0.5 s).
            pytest.fail(f"Tail neither answered nor failed within 3 s: {req!r}"[:500])
        assert e.code() in ALLOWED, (e.code(), e.details())
        assert e.details()
        _count(ctx, "tail-" + e.code().name)
    finally:
        call.cancel()


@HSET
@given(
    start=st.one_of(SECONDS, st.just(0)),
    end=st.one_of(SECONDS, st.just(NOW_S + 3600)),
    n1=NANOS,
    n2=NANOS,
    limit=st.one_of(st.sampled_from([0, 0, 1, -1, 10**5, 10**6, 2**31 - 1]), st.integers(-(2**31), 2**31 - 1)),
    filt=st.one_of(st.just(""), st.just("action = REJECT"), st.lists(FILTER_BITS, max_size=12).map(" ".join)),
    order=st.one_of(st.sampled_from([0, 1, 2]), ENUM),
    token=st.one_of(st.just(""), st.just(""), TEXT),
)
def test_query_time_range_fuzz(srv, ctx, start, end, n1, n2, limit, filt, order, token):
    a, ta = ctx["a"], ctx["ta"]
    req = query_pb2.QueryRequest(
        region="bj", project="proj", log_stores=[ta.log_store], filter=filt, limit=limit, order=order, page_token=token
    )
    req.start_time.seconds, req.start_time.nanos = start, n1
    req.end_time.seconds, req.end_time.nanos = end, n2
    try:
        for _ in a.query.Query(req, metadata=a.md, timeout=20):
            pass
        _count(ctx, "query-ok")
    except grpc.RpcError as e:
        assert e.code() in ALLOWED, (e.code(), e.details())
        _count(ctx, "query-" + e.code().name)


TS_MIN_S, TS_MAX_S = -62135596800, 253402300799  # google.protobuf.Timestamp's valid range
EDGE_S = [TS_MIN_S - 1, TS_MIN_S, -1, 0, 1, NOW_S, NOW_S + 86400 * 365 * 50, TS_MAX_S, TS_MAX_S + 1, 2**40, -(2**40)]


def _in_range(sec: int) -> bool:
    return TS_MIN_S <= sec <= TS_MAX_S


def test_query_time_range_edges(srv, ctx):
    """Every pair of edge times: a Query over a valid range ("everything until 9999-12-31") is
    answered; one with a time outside Timestamp's range is INVALID_ARGUMENT; never INTERNAL."""
    a, ta = ctx["a"], ctx["ta"]
    wrong = []
    for start in EDGE_S:
        for end in EDGE_S:
            req = query_pb2.QueryRequest(region="bj", project="proj", log_stores=[ta.log_store], limit=5)
            req.start_time.seconds, req.end_time.seconds = start, end
            try:
                for _ in a.query.Query(req, metadata=a.md, timeout=20):
                    pass
                got = "OK"
            except grpc.RpcError as e:
                got = e.code().name
            if _in_range(start) and _in_range(end):
                want = {"OK"} if end > start else {"INVALID_ARGUMENT"}
            else:
                want = {"INVALID_ARGUMENT"}
            if got not in want:
                wrong.append((start, end, got))
    assert not wrong, f"{len(wrong)} unexpected answers (start s, end s, status), e.g. {wrong[:6]}"


def test_tail_start_time_edges(srv, ctx):
    a, ta = ctx["a"], ctx["ta"]
    wrong = []
    for start in EDGE_S:
        for nanos in (0, 999_999_999):
            req = query_pb2.TailRequest(region="bj", project="proj", log_stores=[ta.log_store])
            req.start_time.seconds, req.start_time.nanos = start, nanos
            call = a.query.Tail(req, metadata=a.md, timeout=5)
            try:
                next(iter(call))
                got = "OK"
            except grpc.RpcError as e:
                got = e.code().name
            finally:
                call.cancel()
            ok = {"OK", "FAILED_PRECONDITION"} if _in_range(start) else {"INVALID_ARGUMENT"}
            if got not in ok:
                wrong.append((start, nanos, got))
    assert not wrong, f"unexpected Tail answers (start s, nanos, status): {wrong}"


def test_oversized_message_is_resource_exhausted(srv, ctx):
    a, ta = ctx["a"], ctx["ta"]
    big = record_pb2.FlowRecord(src_addr="1.2.3.4", dst_addr="5.6.7.8", resource_id="x" * (MAX_MESSAGE_BYTES + 10))
    with pytest.raises(grpc.RpcError) as e:
        a.ingest.Ingest(
            iter([ingest_pb2.IngestRequest(flow_log_id=ta.flow_log_id, records=[big])]), metadata=a.md, timeout=20
        )
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    # The server goes on serving, the stream after it works.
    req, ids = batch(ta.flow_log_id, 5)
    assert a.ingest.Ingest(iter([req]), metadata=a.md, timeout=20).accepted == 5
    ctx["accepted"] |= set(ids)


def test_too_many_records_per_message_is_invalid_argument(srv, ctx):
    a, ta = ctx["a"], ctx["ta"]
    ok, ok_ids = batch(ta.flow_log_id, MAX_RECORDS)
    too_many, _ = batch(ta.flow_log_id, MAX_RECORDS + 1)
    with pytest.raises(grpc.RpcError) as e:
        a.ingest.Ingest(iter([ok, too_many]), metadata=a.md, timeout=20)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert str(MAX_RECORDS) in e.value.details()
    # The stream failed as a whole: its first (valid) message was not acknowledged. Whether it
    # was stored is not promised (a collector resends it; record ids make that harmless) - but it
    # must not be stored twice, which the final check covers.
    ctx["sent_maybe"] = set(ok_ids)


def test_after_fuzzing_server_is_healthy_and_every_accepted_record_is_stored(srv, ctx, record_property):
    a, ta = ctx["a"], ctx["ta"]
    assert srv.proc.poll() is None, "the server died"
    # A sentinel sent last: if an earlier accepted record jammed the query sink, this never arrives.
    req, ids = batch(ta.flow_log_id, 10)
    assert a.ingest.Ingest(iter([req]), metadata=a.md, timeout=20).accepted == 10
    ctx["accepted"] |= set(ids)
    accepted = ctx["accepted"]

    def stored_all():
        try:
            return accepted <= set(query_ids(ta))
        except grpc.RpcError as e:  # Elasticsearch still starting the shards of new day indices
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return False

    # Accepted records span many UTC days; on Elasticsearch each day is a new index, and creating
    # dozens of indices takes a while on a busy 2-core machine.
    t0 = time.monotonic()
    try:
        try:
            wait_for(stored_all, "every accepted record in the query backend", 60, 0.5)
        except AssertionError:
            missing = accepted - set(query_ids(ta))
            shown = [str(ctx.get("records", {}).get(m, m)).replace("\n", " ") for m in sorted(missing)[:3]]
            pytest.fail(
                f"{len(missing)} accepted record(s) not in the query backend after 60 s, e.g.:\n" + "\n".join(shown)
            )
    finally:
        log = srv.log_path.read_text(errors="replace")
        stuck = [ln for ln in log.splitlines() if "sink write failed" in ln][:3]
        assert not stuck, "a record the server accepted cannot be stored; the sink is jammed:\n" + "\n".join(stuck)
    stored = query_ids(ta)
    check_exactly_once(stored, accepted, accepted | ctx.get("sent_maybe", set()), "query backend after fuzzing")
    assert health(a, QUERY_HEALTH) == SERVING and health(a, "") == SERVING
    rss0, rss1 = ctx["rss0"], rss_mb(srv.proc.pid)
    assert rss1 < rss0 + 300, f"server RSS grew from {rss0:.0f} MiB to {rss1:.0f} MiB during fuzzing"
    days = {r.start_time.seconds // 86400 for r in ctx.get("records", {}).values()}
    report(
        record_property,
        "fuzz",
        accepted=len(accepted),
        utc_days=len(days),
        stored_after_s=round(time.monotonic() - t0, 1),
        rss_start_mib=round(rss0),
        rss_end_mib=round(rss1),
        outcomes=dict(sorted(ctx["outcomes"].items())),
    )
