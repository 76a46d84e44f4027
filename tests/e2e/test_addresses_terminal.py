"""Addresses are canonical and data never drives the user's terminal (issue 15).

IPv6 zone identifiers (`fe80::1%eth0`: ipaddress keeps any text after the '%', escape
sequences included, and the same flow would get one record_id per zone text) are refused
wherever an address is accepted: a resource's addresses and rules' peer CIDRs and filters are
INVALID_ARGUMENT naming the field; an Ingest record carrying one is rejected with its index,
field and reason, the way every bad record is (the good records of the message are kept).

The CLI escapes control characters (ESC sequences, BEL, C1, bidi overrides) in everything it
prints: tables, fields, JSON and error messages."""

from __future__ import annotations

import json
import time
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.cli import main
from flowlog.v1 import flow_log_pb2 as fl
from flowlog.v1 import ingest_pb2, query_pb2, record_pb2
from flowlog.v1 import log_store_pb2 as ls
from flowlog.v1 import resource_pb2 as rs
from flowlog.v1 import types_pb2 as t
from tests.e2e.conftest import KEY_A

ZONES = ["fe80::1%eth0", "fe80::1%1", "fe80::1%\x1b[31mred", "::ffff:10.0.0.1%x"]
HOSTILE_NAME = "web\x1b[2J\x1b]0;owned\x07\x9b31m\u202eexe.txt"


def bad_fields(e: grpc.RpcError) -> set[str]:
    status = rpc_status.from_call(e)
    assert status is not None, "INVALID_ARGUMENT carries google.rpc details"
    out = set()
    for d in status.details:
        br = error_details_pb2.BadRequest()
        if d.Unpack(br):
            out |= {v.field for v in br.field_violations}
    return out


def invalid(fn, req, md) -> grpc.RpcError:
    try:
        fn(req, metadata=md, timeout=20)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        return e
    raise AssertionError("expected INVALID_ARGUMENT")


def resource(**kw) -> rs.Resource:
    base = dict(
        type=t.RESOURCE_TYPE_EIP, region="bj", network_id="vpc-bjdemo", name="zone-test", addresses=["203.0.113.200"]
    )
    base.update(kw)
    return rs.Resource(**base)


def test_zone_identifiers_are_refused_in_resources_and_filters(a):
    for zone in ZONES:
        e = invalid(a.resources.RegisterResource, rs.RegisterResourceRequest(resource=resource(addresses=[zone])), a.md)
        assert "resource.addresses[0]" in bad_fields(e) and "zone" in e.details(), e.details()
        assert "\x1b" not in e.details()
        rule = rs.SecurityRule(priority=1, direction=t.DIRECTION_INGRESS, action=t.ACTION_ACCEPT, peer_cidr=zone)
        e = invalid(a.resources.RegisterResource, rs.RegisterResourceRequest(resource=resource(rules=[rule])), a.md)
        assert "resource.rules[0].peer_cidr" in bad_fields(e), e.details()
    store = "z" + uuid.uuid4().hex[:8]  # the Query below needs a LogStore of the caller
    a.log_stores.CreateLogStore(
        ls.CreateLogStoreRequest(log_store=ls.LogStore(region="bj", project="proj", name=store)),
        metadata=a.md,
        timeout=20,
    )
    for zone in ZONES:
        req = query_pb2.QueryRequest(region="bj", project="proj", log_stores=[store], filter=f"addr = {zone}")
        req.start_time.FromSeconds(0)
        req.end_time.FromSeconds(4_000_000_000)
        e = invalid(lambda r, metadata, timeout: list(a.query.Query(r, metadata=metadata, timeout=timeout)), req, a.md)
        assert "filter" in bad_fields(e)


def test_zone_identifiers_in_ingested_records_are_rejected_with_a_reason(a):
    store = "z" + uuid.uuid4().hex[:8]
    f = a.flow_logs.CreateFlowLog(
        fl.CreateFlowLogRequest(
            region="bj",
            name="fl" + uuid.uuid4().hex[:8],
            resource_type=t.RESOURCE_TYPE_EIP,
            resource_id="eip-bj-01",
            network_id="vpc-bjdemo",
            traffic_type=t.TRAFFIC_TYPE_ALL,
            new_log_store=fl.NewLogStore(project="proj", name=store),
        ),
        metadata=a.md,
        timeout=20,
    )
    now = time.time_ns() // 1_000_000 - 60_000

    def rec(src: str, dst: str) -> record_pb2.FlowRecord:
        r = record_pb2.FlowRecord(
            src_addr=src,
            dst_addr=dst,
            src_port=5000,
            dst_port=443,
            protocol=6,
            packets=1,
            bytes=100,
            action=t.ACTION_ACCEPT,
            log_status=t.LOG_STATUS_OK,
            direction=t.DIRECTION_INGRESS,
        )
        r.start_time.FromMilliseconds(now)
        r.end_time.FromMilliseconds(now + 1000)
        return r

    records = [rec("2001:db8::1", "2001:db8::2")]
    records += [rec(z if ":" in z else "2001:db8::9", "2001:db8::2") for z in ZONES]
    records += [rec("2001:db8::3", ZONES[0])]
    resp = a.ingest.Ingest(
        iter([ingest_pb2.IngestRequest(flow_log_id=f.id, records=records)]), metadata=a.md, timeout=30
    )
    assert resp.accepted == 1 and resp.rejected == len(records) - 1, resp
    by_index = {r.index: r for r in resp.rejections}
    assert {r.field for r in resp.rejections} == {"src_addr", "dst_addr"}
    assert by_index[len(records) - 1].field == "dst_addr"
    for r in resp.rejections:
        assert "zone identifiers" in r.reason and "\x1b" not in r.reason, r.reason


def run(server, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--server", server.address, "--api-key", KEY_A, *args])
    out, err = capsys.readouterr()
    return code, out, err


def no_controls(text: str) -> bool:
    return not any((ord(c) < 32 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e" for c in text)


def test_cli_never_prints_control_characters_from_data(server, a, capsys):
    r = a.resources.RegisterResource(
        rs.RegisterResourceRequest(resource=resource(name=HOSTILE_NAME)), metadata=a.md, timeout=20
    )
    assert r.name == HOSTILE_NAME  # stored as given: it is the terminal that must not act on it
    try:
        for args in (("resource", "get", r.id), ("resource", "list", "--region", "bj")):
            code, out, err = run(server, capsys, *args)
            assert code == 0, err
            assert no_controls(out) and no_controls(err), repr(out)
            assert "web\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202eexe.txt" in out, out
        code, out, err = run(server, capsys, "--json", "resource", "get", r.id)
        assert code == 0 and no_controls(out), repr(out)
        assert json.loads(out)["name"] == HOSTILE_NAME  # still valid JSON, the same text
        # Messages from the server are escaped too (the id is echoed in NOT_FOUND / INVALID_ARGUMENT).
        code, out, err = run(server, capsys, "flowlog", "get", "fl-\x1b[31mabcdefgh")
        assert code == 1 and no_controls(err) and "\\x1b[31m" in err, repr(err)
    finally:
        a.resources.DeleteResource(rs.DeleteResourceRequest(id=r.id), metadata=a.md, timeout=20)
