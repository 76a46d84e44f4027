"""The flowlog CLI and client library without a real server: rendering, enum names, time
parsing, error formatting from real google.rpc.Status protos, argument parsing of every
command, and (against a tiny in-process fake servicer) what goes over the wire: the API key
on unary and streaming calls, update masks, paging and rich error details."""

from __future__ import annotations

import io
import json
from concurrent import futures
from datetime import datetime, timedelta, timezone
from typing import Iterator

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from clients import cli
from clients import format as fmt
from clients.client import FlowLogClient, FlowLogError
from flowlog.v1 import (
    flow_log_pb2,
    flow_log_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    record_pb2,
    resource_pb2,
    types_pb2,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def test_table_columns_sized_to_widest_cell_and_right_aligned_numbers() -> None:
    out = fmt.render_table(["NAME", "N"], [["a", "5"], ["longer", "1,234"]], align=["left", "right"])
    assert out == "NAME        N\na           5\nlonger  1,234\n"


def test_table_strips_trailing_space_and_flattens_newlines() -> None:
    out = fmt.render_table(["A", "B"], [["x", ""], ["two\nlines", "y"]])
    lines = out.splitlines()
    assert all(line == line.rstrip() for line in lines)
    assert lines[2] == "two lines  y"


def test_table_counts_wide_characters_as_two_cells() -> None:
    assert fmt.display_width("网关-web") == 8
    out = fmt.render_table(["NAME", "X"], [["网关", "1"], ["abcd", "2"]])
    assert out.splitlines()[1] == "网关  1"
    assert out.splitlines()[2] == "abcd  2"


def test_table_with_no_rows_is_just_the_header() -> None:
    assert fmt.render_table(["A", "BB"], []) == "A  BB\n"


def test_fields_view_aligns_labels_and_continues_lists() -> None:
    out = fmt.render_fields([("id", "x"), ("description", ""), ("rules", "r1"), ("", "r2")])
    assert out.splitlines() == ["id:           x", "description:", "rules:        r1", "              r2"]


def test_stream_table_prints_header_once_and_grows_columns() -> None:
    buf = io.StringIO()
    table = fmt.StreamTable(buf, ["A", "B"], [3, 1], ["left", "right"])
    table.write_rows([])
    assert buf.getvalue() == ""
    table.write_rows([["x", "1"]])
    table.write_rows([["a-long-value", "22"]])
    assert buf.getvalue().splitlines() == ["A    B", "x    1", "a-long-value  22"]
    assert table.rows == 2


def _record(**kw: object) -> record_pb2.FlowRecord:
    r = record_pb2.FlowRecord(
        src_addr="10.0.0.1",
        dst_addr="203.0.113.9",
        src_port=51234,
        dst_port=443,
        protocol=6,
        packets=12,
        bytes=34567,
        action=types_pb2.ACTION_ACCEPT,
        log_status=types_pb2.LOG_STATUS_OK,
        log_store="flows",
    )
    r.start_time.FromDatetime(NOW)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_record_row_uses_friendly_names_and_utc_times() -> None:
    row = fmt.record_row(_record())
    assert row == [
        "2024-05-01T12:00:00Z",
        "10.0.0.1",
        "203.0.113.9",
        "51234",
        "443",
        "tcp",
        "12",
        "34,567",
        "ACCEPT",
        "-",
        "flows",
    ]
    assert len(row) == len(fmt.RECORD_HEADERS)
    ruled = fmt.record_row(_record(rule_id="acl-no-http", rule_kind=types_pb2.RULE_KIND_ACL))
    assert ruled[fmt.RECORD_HEADERS.index("RULE")] == "ACL acl-no-http"
    denied = fmt.record_row(_record(rule_id="default-deny", rule_kind=types_pb2.RULE_KIND_DEFAULT))
    assert denied[fmt.RECORD_HEADERS.index("RULE")] == "DEFAULT default-deny"
    data = fmt.to_dict(_record(rule_id="sg-web", rule_kind=types_pb2.RULE_KIND_SECURITY_GROUP, sampling_rate=100))
    assert (data["rule_id"], data["rule_kind"], data["sampling_rate"]) == ("sg-web", "RULE_KIND_SECURITY_GROUP", 100)
    assert fmt.parse_record_json('{"rule_kind": "acl", "rule_id": "acl-1"}').rule_kind == types_pb2.RULE_KIND_ACL
    assert fmt.record_row(_record(protocol=99))[5] == "99"
    nodata = fmt.record_row(_record(log_status=types_pb2.LOG_STATUS_NODATA, action=0, src_addr=""))
    assert nodata[8] == "NODATA" and nodata[1] == "-"


def test_flow_log_and_resource_rows() -> None:
    f = flow_log_pb2.FlowLog(
        id="fl-abcdefgh",
        region="r",
        name="n",
        resource_type=types_pb2.RESOURCE_TYPE_NAT_GATEWAY,
        resource_id="nat-1",
        network_id="vpc-1",
        traffic_type=types_pb2.TRAFFIC_TYPE_DENY,
        state=types_pb2.FLOW_LOG_STATE_PAUSED,
    )
    f.destination.project, f.destination.log_store = "ops", "flows"
    row = fmt.flow_log_row(f)
    assert row[3] == "nat-gateway:nat-1" and row[5] == "deny" and row[6] == "ops/flows" and row[7] == "paused"
    assert row[8] == ""  # unset create_time
    res = resource_pb2.Resource(
        id="eip-1",
        type=types_pb2.RESOURCE_TYPE_EIP,
        addresses=["1.2.3.4", "5.6.7.8"],
        rules=[resource_pb2.SecurityRule(priority=10, action=types_pb2.ACTION_REJECT)],
    )
    assert fmt.resource_row(res)[1] == "eip" and fmt.resource_row(res)[5] == "1.2.3.4,5.6.7.8"
    assert fmt.rule_text(res.rules[0]) == "10 any REJECT any any any"


# ------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------


def test_json_uses_proto_names_every_field_and_numbers() -> None:
    data = fmt.to_dict(_record(packets=2**40))
    assert data["src_addr"] == "10.0.0.1" and "srcAddr" not in data
    assert data["packets"] == 2**40  # a number, not the proto3 string
    assert data["action"] == "ACTION_ACCEPT"
    assert data["tcp_flags"] == 0  # zero values present
    assert list(data)[:4] == ["record_id", "version", "account_id", "flow_log_id"]  # declaration order


def test_json_lines_round_trip_through_the_ingest_parser() -> None:
    line = fmt.to_json_line(_record())
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert fmt.parse_record_json(line) == _record()


def test_json_documents_for_objects_and_lists() -> None:
    one = json.loads(fmt.to_json(flow_log_pb2.FlowLog(id="fl-1")))
    assert one["id"] == "fl-1"
    many = json.loads(fmt.to_json([flow_log_pb2.FlowLog(id="a"), flow_log_pb2.FlowLog(id="b")]))
    assert [x["id"] for x in many] == ["a", "b"]
    assert json.loads(fmt.to_json([])) == []


def test_record_json_accepts_friendly_enums_and_refuses_typos() -> None:
    r = fmt.parse_record_json('{"action": "reject", "resource_type": "nat-gateway", "protocol": "udp", "srcPort": 5}')
    assert r.action == types_pb2.ACTION_REJECT
    assert r.resource_type == types_pb2.RESOURCE_TYPE_NAT_GATEWAY
    assert r.protocol == 17 and r.src_port == 5
    with pytest.raises(ValueError, match="src_adr"):
        fmt.parse_record_json('{"src_adr": "1.2.3.4"}')
    with pytest.raises(ValueError, match="choose from ACCEPT, REJECT"):
        fmt.parse_record_json('{"action": "maybe"}')
    with pytest.raises(ValueError, match="JSON"):
        fmt.parse_record_json("{nope")


# ------------------------------------------------------------------------------------------
# Enums
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "enum_type, value, name",
    [
        (types_pb2.ResourceType, types_pb2.RESOURCE_TYPE_EIP, "eip"),
        (types_pb2.ResourceType, types_pb2.RESOURCE_TYPE_NAT_GATEWAY, "nat-gateway"),
        (types_pb2.ResourceType, types_pb2.RESOURCE_TYPE_SSL_VPN_GATEWAY, "ssl-vpn-gateway"),
        (types_pb2.ResourceType, types_pb2.RESOURCE_TYPE_CSN, "csn"),
        (types_pb2.TrafficType, types_pb2.TRAFFIC_TYPE_ALLOW, "allow"),
        (types_pb2.Action, types_pb2.ACTION_ACCEPT, "ACCEPT"),
        (types_pb2.LogStatus, types_pb2.LOG_STATUS_SKIPDATA, "SKIPDATA"),
        (types_pb2.Direction, types_pb2.DIRECTION_EGRESS, "egress"),
        (types_pb2.FlowLogState, types_pb2.FLOW_LOG_STATE_PAUSED, "paused"),
        (query_pb2.Order, query_pb2.ORDER_OLDEST_FIRST, "oldest-first"),
    ],
)
def test_enum_friendly_names_both_ways(enum_type: object, value: int, name: str) -> None:
    assert fmt.enum_name(enum_type, value) == name
    assert fmt.parse_enum(enum_type, name) == value
    assert fmt.parse_enum(enum_type, name.upper().replace("-", "_")) == value
    assert fmt.parse_enum(enum_type, enum_type.Name(value)) == value  # the full proto name
    assert fmt.parse_enum(enum_type, str(value)) == value


def test_enum_edge_cases() -> None:
    assert fmt.enum_name(types_pb2.ResourceType, 0) == ""
    assert fmt.enum_name(types_pb2.ResourceType, 99) == "99"  # newer server: never crash
    assert fmt.enum_choices(types_pb2.TrafficType) == ["all", "allow", "deny"]
    assert fmt.parse_enum(types_pb2.ResourceType, "Nat Gateway") == types_pb2.RESOURCE_TYPE_NAT_GATEWAY
    with pytest.raises(ValueError, match=r"invalid resource type 'vpn' \(choose from eip, nat-gateway"):
        fmt.parse_enum(types_pb2.ResourceType, "vpn")
    with pytest.raises(ValueError):
        fmt.parse_enum(types_pb2.TrafficType, "unspecified")
    assert fmt.parse_enum(types_pb2.TrafficType, "unspecified", allow_unspecified=True) == 0
    with pytest.raises(ValueError):
        fmt.parse_enum(types_pb2.TrafficType, "42")


def test_protocols() -> None:
    assert [fmt.protocol_name(n) for n in (1, 6, 17, 58, 200)] == ["icmp", "tcp", "udp", "icmpv6", "200"]
    assert fmt.parse_protocol("TCP") == 6 and fmt.parse_protocol("58") == 58 and fmt.parse_protocol("any") == 0
    with pytest.raises(ValueError):
        fmt.parse_protocol("300")


# ------------------------------------------------------------------------------------------
# Times
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, delta",
    [
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("90s", timedelta(seconds=90)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("2H", timedelta(hours=2)),
    ],
)
def test_durations(text: str, delta: timedelta) -> None:
    assert fmt.parse_duration(text) == delta
    assert fmt.parse_time(text, now=NOW) == NOW - delta


@pytest.mark.parametrize("text", ["", "15", "m", "15 minutes", "1h x", "-5m", "yesterday"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        fmt.parse_duration(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ("2024-05-01T10:00:00.250Z", datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=timezone.utc)),
        ("2024-05-01 10:00", datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),  # no offset: UTC
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=timezone.utc)),
        ("now", NOW),
    ],
)
def test_rfc3339_times(text: str, expected: datetime) -> None:
    got = fmt.parse_time(text, now=NOW)
    assert got == expected and got.tzinfo is not None


def test_bad_time_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        fmt.parse_time("last tuesday")


def test_format_time_is_utc_and_exact() -> None:
    assert fmt.format_time(Timestamp(seconds=1714564800)) == "2024-05-01T12:00:00Z"
    assert fmt.format_time(Timestamp(seconds=1714564800, nanos=250_000_000)) == "2024-05-01T12:00:00.250Z"
    assert fmt.format_time(Timestamp(seconds=1714564800, nanos=1000)) == "2024-05-01T12:00:00.000001Z"
    assert fmt.format_time(Timestamp()) == ""
    assert fmt.format_time(datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))) == "2024-05-01T12:00:00Z"
    ts = fmt.to_timestamp("2024-05-01T12:00:00.123456Z")
    assert fmt.to_timestamp(fmt.format_time(ts)) == ts  # printed times parse back to the same instant


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def _status(code: int, message: str, *details: object) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def _bad_request(*violations: tuple[str, str]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    )


def test_error_from_status_with_field_violations() -> None:
    status = _status(
        code_pb2.INVALID_ARGUMENT,
        "description: must be at most 200 characters (has 201)",
        _bad_request(("description", "must be at most 200 characters (has 201)"), ("name", "must start with a letter")),
        error_details_pb2.ErrorInfo(reason="FIELD_INVALID", domain="flowlog", metadata={"k": "v"}),
    )
    err = FlowLogError.from_status(status)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.one_line() == "INVALID_ARGUMENT: description: must be at most 200 characters (has 201)"
    assert str(err) == err.one_line()
    assert err.field_violations == [
        ("description", "must be at most 200 characters (has 201)"),
        ("name", "must start with a letter"),
    ]
    assert err.reason == "FIELD_INVALID" and err.domain == "flowlog" and err.metadata == {"k": "v"}
    assert err.detail_lines() == [
        "description: must be at most 200 characters (has 201)",
        "name: must start with a letter",
    ]


def test_error_from_status_with_quota_failure() -> None:
    quota = error_details_pb2.QuotaFailure(
        violations=[error_details_pb2.QuotaFailure.Violation(subject="region:ap-x", description="at most 10 flow logs")]
    )
    err = FlowLogError.from_status(_status(code_pb2.RESOURCE_EXHAUSTED, "flow log quota reached", quota))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.quota_violations == [("region:ap-x", "at most 10 flow logs")]
    assert "quota" in err.hint


@pytest.mark.parametrize(
    "code, hint",
    [
        (code_pb2.UNAUTHENTICATED, "check the --api-key / FLOWLOG_API_KEY"),
        (code_pb2.UNAVAILABLE, "is the server running at 10.1.2.3:50051?"),
        (code_pb2.DEADLINE_EXCEEDED, "--timeout"),
        (code_pb2.NOT_FOUND, "region"),
    ],
)
def test_error_hints_per_code(code: int, hint: str) -> None:
    err = FlowLogError.from_status(_status(code, "x"), target="10.1.2.3:50051")
    assert hint in err.hint


def test_error_from_rpc_error_reads_trailing_metadata() -> None:
    status = _status(
        code_pb2.INVALID_ARGUMENT,
        "filter: syntax error at position 7",
        _bad_request(("filter", "syntax error at position 7")),
    )
    grpc_status = rpc_status.to_status(status)

    class FakeRpcError(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc_status.code

        def details(self) -> str:
            return grpc_status.details

        def trailing_metadata(self) -> tuple:
            return tuple(grpc_status.trailing_metadata)

    err = FlowLogError.from_rpc_error(FakeRpcError())
    assert err.one_line() == "INVALID_ARGUMENT: filter: syntax error at position 7"
    assert err.field_violations == [("filter", "syntax error at position 7")]


def test_cli_error_output_format() -> None:
    err = FlowLogError.from_status(
        _status(code_pb2.INVALID_ARGUMENT, "description: too long", _bad_request(("description", "too long")))
    )
    buf = io.StringIO()
    cli.print_error(buf, err)
    assert buf.getvalue() == (
        "flowlog: INVALID_ARGUMENT: description: too long\n"
        "  - description: too long\n"
        "  hint: fix the fields named above\n"
    )


# ------------------------------------------------------------------------------------------
# Argument parsing
# ------------------------------------------------------------------------------------------


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return cli.build_parser().parse_args(list(argv))


def test_global_options_before_or_after_the_command() -> None:
    a = parse("--server", "h:1", "--json", "flowlog", "list")
    assert a.server == "h:1" and a.json is True and a.timeout == 30.0
    b = parse("flowlog", "list", "--server", "h:2", "--api-key", "k", "--timeout", "5", "--tls")
    assert b.server == "h:2" and b.api_key == "k" and b.timeout == 5.0 and b.tls is True and b.json is False
    c = parse("--server", "h:1", "resource", "list")
    assert c.server == "h:1"


def test_resource_commands() -> None:
    a = parse("resource", "list", "--region", "ap-x", "--type", "nat-gateway", "--network-id", "vpc-1")
    assert (a.handler, a.region, a.type, a.network_id) == (
        cli.cmd_resource_list,
        "ap-x",
        types_pb2.RESOURCE_TYPE_NAT_GATEWAY,
        "vpc-1",
    )
    assert parse("resources", "get", "eip-1").id == "eip-1"
    r = parse(
        "resource",
        "register",
        "--type",
        "eip",
        "--region",
        "ap-x",
        "--network-id",
        "vpc-1",
        "--name",
        "web",
        "--address",
        "1.2.3.4",
        "--address",
        "5.6.7.8",
        "--id",
        "eip-custom",
        "--rule",
        "priority=100,action=accept,direction=ingress,protocol=tcp,peer=10.0.0.0/8,ports=22",
    )
    assert r.addresses == ["1.2.3.4", "5.6.7.8"] and r.id == "eip-custom" and r.type == types_pb2.RESOURCE_TYPE_EIP
    rule = r.rules[0]
    assert (
        rule.priority,
        rule.action,
        rule.direction,
        rule.protocol,
        rule.peer_cidr,
        rule.port_from,
        rule.port_to,
    ) == (100, types_pb2.ACTION_ACCEPT, types_pb2.DIRECTION_INGRESS, 6, "10.0.0.0/8", 22, 22)
    assert parse("resource", "delete", "eip-1").handler == cli.cmd_resource_delete


def test_rule_spec_defaults_and_errors() -> None:
    rule = cli.parse_rule("priority=5,action=reject,ports=1024-2048")
    assert (rule.protocol, rule.peer_cidr, rule.direction, rule.port_from, rule.port_to) == (0, "", 0, 1024, 2048)
    for bad in ("action=accept", "priority=1,action=maybe", "priority=1,action=accept,colour=red", "nonsense"):
        with pytest.raises(Exception):
            cli.parse_rule(bad)


def test_logstore_commands() -> None:
    a = parse(
        "logstore",
        "create",
        "--region",
        "r",
        "--project",
        "p",
        "--name",
        "n",
        "--retention-days",
        "30",
        "--description",
        "d",
    )
    assert (a.region, a.project, a.name, a.retention_days, a.description) == ("r", "p", "n", 30, "d")
    g = parse("logstore", "get", "r", "p", "n")
    assert (g.pos_region, g.pos_project, g.pos_name) == ("r", "p", "n")
    assert parse("logstores", "list", "--project", "p").project == "p"
    u = parse("log-store", "update", "--region", "r", "--project", "p", "--name", "n", "--description", "")
    assert u.description == "" and u.retention_days is None
    assert parse("logstore", "delete", "r", "p", "n").handler == cli.cmd_logstore_delete


def test_logstore_address_positionals_fill_what_flags_leave() -> None:
    ctx = cli.Ctx(parse("logstore", "get", "--region", "r", "p", "n"), io.StringIO(), io.StringIO())
    assert cli._store_address(ctx) == ("r", "p", "n")
    ctx = cli.Ctx(parse("logstore", "get", "r", "p"), io.StringIO(), io.StringIO())
    with pytest.raises(cli.UsageError, match="missing name"):
        cli._store_address(ctx)


def test_flowlog_commands() -> None:
    a = parse(
        "flowlog",
        "create",
        "--region",
        "r",
        "--name",
        "web",
        "--resource-type",
        "eip",
        "--resource-id",
        "eip-1",
        "--network-id",
        "vpc-1",
        "--traffic-type",
        "allow",
        "--new-log-store",
        "ops/flows",
        "--retention-days",
        "3",
        "--description",
        "d",
        "--client-token",
        "t",
        "--paused",
    )
    assert a.resource_type == types_pb2.RESOURCE_TYPE_EIP and a.traffic_type == types_pb2.TRAFFIC_TYPE_ALLOW
    assert a.new_log_store == ("ops", "flows") and a.log_store is None and a.retention_days == 3
    assert a.paused and a.client_token == "t"
    b = parse(
        "fl",
        "create",
        "--region",
        "r",
        "--name",
        "w",
        "--resource-id",
        "eip-1",
        "--traffic-type",
        "ALL",
        "--log-store",
        "ops/flows",
    )
    assert b.log_store == ("ops", "flows") and b.resource_type is None
    assert parse("flowlogs", "get", "fl-1").id == "fl-1"
    assert parse("flowlog", "list", "--region", "r").region == "r"
    u = parse("flowlog", "update", "fl-1", "--state", "paused", "--traffic-type", "deny")
    assert (u.state, u.traffic_type, u.name, u.description) == (
        types_pb2.FLOW_LOG_STATE_PAUSED,
        types_pb2.TRAFFIC_TYPE_DENY,
        None,
        None,
    )
    assert parse("flowlog", "delete", "fl-1").handler == cli.cmd_flowlog_delete


def test_query_and_tail_commands() -> None:
    q = parse(
        "query",
        "--region",
        "r",
        "--project",
        "p",
        "--log-store",
        "a",
        "--log-store",
        "b,c",
        "--since",
        "2h",
        "--until",
        "2024-05-01T00:00:00Z",
        "--filter",
        "action = REJECT",
        "--limit",
        "100",
        "--oldest-first",
        "--all",
    )
    assert q.log_stores == ["a", "b,c"] and cli._log_stores(q.log_stores) == ["a", "b", "c"]
    assert (q.start, q.end, q.filter, q.limit, q.oldest_first, q.all) == (
        "2h",
        "2024-05-01T00:00:00Z",
        "action = REJECT",
        100,
        True,
        True,
    )
    d = parse(
        "query",
        "--region",
        "r",
        "--project",
        "p",
        "--log-store",
        "a",
        "--start",
        "2024-05-01T00:00:00Z",
        "--end",
        "1h",
        "--page-token",
        "tok",
    )
    assert d.start == "2024-05-01T00:00:00Z" and d.end == "1h" and d.page_token == "tok" and not d.all
    assert parse("query", "--region", "r", "--project", "p", "--log-store", "a").start == "15m"
    t = parse(
        "tail",
        "--region",
        "r",
        "--project",
        "p",
        "--log-store",
        "a",
        "--since",
        "5m",
        "--cursor",
        "c1",
        "--filter",
        "port = 22",
        "-v",
    )
    assert (t.start, t.cursor, t.filter, t.verbose) == ("5m", "c1", "port = 22", True)
    i = parse("ingest", "--flow-log-id", "fl-1", "--file", "records.jsonl", "--batch-size", "500")
    assert (i.flow_log_id, i.file, i.batch_size) == ("fl-1", "records.jsonl", 500)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["resource"],
        ["resource", "list", "--type", "vpn"],
        ["flowlog", "create", "--region", "r", "--name", "n", "--resource-id", "x", "--traffic-type", "all"],
        [
            "flowlog",
            "create",
            "--region",
            "r",
            "--name",
            "n",
            "--resource-id",
            "x",
            "--traffic-type",
            "all",
            "--log-store",
            "a/b",
            "--new-log-store",
            "c/d",
        ],
        [
            "flowlog",
            "create",
            "--region",
            "r",
            "--name",
            "n",
            "--resource-id",
            "x",
            "--traffic-type",
            "all",
            "--log-store",
            "no-slash",
        ],
        ["flowlog", "update", "fl-1", "--state", "deleted"],
        ["query", "--region", "r", "--project", "p", "--log-store", "a", "--since", "yesterday"],
        ["query", "--region", "r", "--project", "p", "--log-store", "a", "--all", "--page-token", "t"],
        ["query", "--region", "r", "--project", "p"],
        ["ingest", "--flow-log-id", "x", "--file", "f", "--batch-size", "20000"],
        ["--timeout", "0", "resource", "list"],
    ],
)
def test_usage_errors_exit_2_without_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["flowlog", "update", "fl-1"],
        ["logstore", "update", "r", "p", "n"],
        ["logstore", "get", "r", "p"],
        [
            "flowlog",
            "create",
            "--region",
            "r",
            "--name",
            "n",
            "--resource-id",
            "x",
            "--resource-type",
            "eip",
            "--network-id",
            "v",
            "--traffic-type",
            "all",
            "--log-store",
            "a/b",
            "--retention-days",
            "3",
        ],
        ["query", "--region", "r", "--project", "p", "--log-store", "a", "--since", "1h", "--until", "2h"],
    ],
)
def test_semantic_usage_errors_exit_2_before_any_call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--server", "127.0.0.1:1", *argv]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "UNAVAILABLE" not in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("resource", "logstore", "flowlog", "query", "tail", "ingest"):
        assert command in out


def test_unreachable_server_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--server", "127.0.0.1:1", "--timeout", "5", "resource", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowlog: UNAVAILABLE: ")
    assert "is the server running at 127.0.0.1:1?" in err and "Traceback" not in err


def test_missing_local_files_are_one_line_errors(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["--ca-file", str(tmp_path / "nope.pem"), "resource", "list"]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert (
        cli.main(["--server", "127.0.0.1:1", "ingest", "--flow-log-id", "x", "--file", str(tmp_path / "no.jsonl")]) == 1
    )
    assert "No such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src_addr": "1.2.3.4"}\n\n{"src_adr": "x"}\n')
    assert cli.main(["--server", "127.0.0.1:1", "ingest", "--flow-log-id", "x", "--file", str(bad)]) == 1
    assert f"{bad}:3: not a FlowRecord" in capsys.readouterr().err  # checked before anything is sent


def test_continue_command_repeats_the_exact_window() -> None:
    args = parse("query", "--region", "r", "--project", "p", "--log-store", "a", "--filter", "port = 22")
    request = FlowLogClient.build_query(
        region="r",
        project="p",
        log_stores=["a"],
        start="2024-05-01T00:00:00.5Z",
        end="2024-05-01T01:00:00Z",
        filter="port = 22",
    )
    text = cli._continue_command(cli.Ctx(args, io.StringIO(), io.StringIO()), request, "TOKEN")
    assert text == (
        "flowlog query --region r --project p --log-store a --start 2024-05-01T00:00:00.500Z "
        "--end 2024-05-01T01:00:00Z --filter 'port = 22' --page-token TOKEN"
    )


# ------------------------------------------------------------------------------------------
# What goes over the wire (an in-process fake servicer, not the real server)
# ------------------------------------------------------------------------------------------


class _FakeFlowLogs(flow_log_pb2_grpc.FlowLogServiceServicer):
    def __init__(self) -> None:
        self.metadata: list[str | None] = []
        self.last_update: flow_log_pb2.UpdateFlowLogRequest | None = None

    def _auth(self, context: grpc.ServicerContext) -> None:
        key = dict(context.invocation_metadata()).get("authorization")
        self.metadata.append(key)
        if key != "Bearer k1":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key")

    def ListFlowLogs(self, request, context):  # type: ignore[no-untyped-def]
        self._auth(context)
        start = int(request.page_token or 0)
        items = [flow_log_pb2.FlowLog(id=f"fl-{i:08d}") for i in range(start, min(start + 2, 5))]
        return flow_log_pb2.ListFlowLogsResponse(
            flow_logs=items, next_page_token=str(start + 2) if start + 2 < 5 else ""
        )

    def UpdateFlowLog(self, request, context):  # type: ignore[no-untyped-def]
        self._auth(context)
        self.last_update = request
        return request.flow_log

    def CreateFlowLog(self, request, context):  # type: ignore[no-untyped-def]
        self._auth(context)
        status = _status(
            code_pb2.INVALID_ARGUMENT,
            "description: must be at most 200 characters (has 201)",
            _bad_request(("description", "must be at most 200 characters (has 201)")),
        )
        context.abort_with_status(rpc_status.to_status(status))

    def DeleteFlowLog(self, request, context):  # type: ignore[no-untyped-def]
        self._auth(context)
        return empty_pb2.Empty()


class _FakeQuery(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, flow_logs: _FakeFlowLogs) -> None:
        self._flow_logs = flow_logs

    def Query(self, request, context):  # type: ignore[no-untyped-def]
        self._flow_logs._auth(context)
        start = int(request.page_token or 0)
        end = min(start + 3, 7)
        yield query_pb2.QueryResponse(
            batch=query_pb2.RecordBatch(records=[_record(src_port=i) for i in range(start, end)])
        )
        more = end < 7
        yield query_pb2.QueryResponse(
            summary=query_pb2.QuerySummary(
                returned=end - start, matched=7, more=more, next_page_token=str(end) if more else ""
            )
        )

    def Tail(self, request, context) -> Iterator[query_pb2.TailResponse]:  # type: ignore[no-untyped-def]
        self._flow_logs._auth(context)
        yield query_pb2.TailResponse(batch=query_pb2.RecordBatch(records=[_record()]), cursor="c1")
        yield query_pb2.TailResponse(heartbeat=query_pb2.Heartbeat(), cursor="c2")
        yield query_pb2.TailResponse(batch=query_pb2.RecordBatch(records=[_record()]), cursor="c3")
        yield query_pb2.TailResponse(heartbeat=query_pb2.Heartbeat(), cursor="c4")


@pytest.fixture(scope="module")
def fake():  # type: ignore[no-untyped-def]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    flow_logs = _FakeFlowLogs()
    flow_log_pb2_grpc.add_FlowLogServiceServicer_to_server(flow_logs, server)
    query_pb2_grpc.add_QueryServiceServicer_to_server(_FakeQuery(flow_logs), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", flow_logs
    server.stop(None)


def test_client_sends_the_key_on_unary_and_streaming_calls_and_pages(fake) -> None:  # type: ignore[no-untyped-def]
    target, servicer = fake
    servicer.metadata.clear()
    with FlowLogClient(target, "k1", timeout=10) as client:
        assert [f.id for f in client.iter_flow_logs(region="r")] == [f"fl-{i:08d}" for i in range(5)]
        paged = client.query_all(region="r", project="p", log_stores="a", start="1h")
        assert [r.src_port for r in paged] == list(range(7))
        assert paged.pages == 3 and paged.matched == 7 and paged.summary is not None and not paged.summary.more
        one = client.query(region="r", project="p", log_stores=["a"], start="1h", limit=3)
        assert len(list(one)) == 3 and one.summary is not None and one.summary.next_page_token == "3"
        # the raw stubs carry the key too
        assert len(client.flow_logs.ListFlowLogs(flow_log_pb2.ListFlowLogsRequest()).flow_logs) == 2
        assert sum(1 for _ in client.query.Query(one.request)) == 2
    assert servicer.metadata and set(servicer.metadata) == {"Bearer k1"}


def test_client_update_mask_is_the_fields_given(fake) -> None:  # type: ignore[no-untyped-def]
    target, servicer = fake
    with FlowLogClient(target, "k1", timeout=10) as client:
        updated = client.update_flow_log("fl-1", state="paused", description="")
    assert list(servicer.last_update.update_mask.paths) == ["state", "description"]
    assert updated.state == types_pb2.FLOW_LOG_STATE_PAUSED and updated.id == "fl-1"
    with FlowLogClient(target, "k1") as client, pytest.raises(ValueError, match="not mutable"):
        client.update_flow_log("fl-1", region="elsewhere")


def test_client_tail_skips_heartbeats_but_keeps_their_cursor(fake) -> None:  # type: ignore[no-untyped-def]
    target, _ = fake
    with FlowLogClient(target, "k1") as client:
        stream = client.tail(region="r", project="p", log_stores="a")
        assert [m.cursor for m in stream] == ["c1", "c3"]
        assert stream.cursor == "c4"
        with_hb = client.tail(region="r", project="p", log_stores="a", heartbeats=True)
        assert [m.WhichOneof("result") for m in with_hb] == ["batch", "heartbeat", "batch", "heartbeat"]


def test_client_raises_flowlog_error_with_details(fake) -> None:  # type: ignore[no-untyped-def]
    target, _ = fake
    with FlowLogClient(target, "k1") as client, pytest.raises(FlowLogError) as info:
        client.create_flow_log(
            region="r",
            name="n",
            resource_type="eip",
            resource_id="eip-1",
            network_id="vpc-1",
            traffic_type="all",
            log_store="ops/flows",
            description="x" * 201,
        )
    assert info.value.one_line() == "INVALID_ARGUMENT: description: must be at most 200 characters (has 201)"
    assert info.value.field_violations == [("description", "must be at most 200 characters (has 201)")]
    with FlowLogClient(target, "wrong") as client, pytest.raises(FlowLogError) as info:
        list(client.query(region="r", project="p", log_stores="a", start="1h"))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_cli_in_process_against_the_fake(fake, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    target, _ = fake
    monkeypatch.setenv("FLOWLOG_SERVER", target)
    monkeypatch.setenv("FLOWLOG_API_KEY", "k1")
    assert cli.main(["flowlog", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["ID", "REGION", "NAME"] and "fl-00000004" in out

    assert cli.main(["query", "--region", "r", "--project", "p", "--log-store", "a", "--json"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["src_port"] for line in captured.out.splitlines()] == [0, 1, 2]
    assert "--page-token 3" in captured.err and "--all" in captured.err

    assert cli.main(["query", "--region", "r", "--project", "p", "--log-store", "a", "--all"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 + 7
    assert "7 of 7 records, page 3…" in captured.err  # not a TTY: one plain line per page

    assert cli.main(["--api-key", "nope", "flowlog", "list"]) == 1
    assert capsys.readouterr().err == (
        "flowlog: UNAUTHENTICATED: missing or wrong API key\n  hint: check the --api-key / FLOWLOG_API_KEY\n"
    )

    assert (
        cli.main(
            [
                "flowlog",
                "create",
                "--region",
                "r",
                "--name",
                "n",
                "--resource-id",
                "eip-1",
                "--resource-type",
                "eip",
                "--network-id",
                "v",
                "--traffic-type",
                "all",
                "--log-store",
                "ops/flows",
            ]
        )
        == 1
    )
    assert capsys.readouterr().err.splitlines()[:2] == [
        "flowlog: INVALID_ARGUMENT: description: must be at most 200 characters (has 201)",
        "  - description: must be at most 200 characters (has 201)",
    ]

    assert cli.main(["flowlog", "delete", "fl-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "fl-1"}
