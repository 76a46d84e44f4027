"""The AWS and Azure flow-log readers of `flowlog import`, on the vendors' published examples.

Expected values are written out by hand from the sample lines (tests/fixtures/importers), field
by field as the vendors document them, not computed by the code under test.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.importers import LineError, Skipped, aws, azure, sources
from flowlog.v1 import types_pb2 as t

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "importers"
OK, NODATA, SKIPDATA = t.LOG_STATUS_OK, t.LOG_STATUS_NODATA, t.LOG_STATUS_SKIPDATA
ACCEPT, REJECT, NONE = t.ACTION_ACCEPT, t.ACTION_REJECT, t.ACTION_UNSPECIFIED
IN, OUT, UNSPEC = t.DIRECTION_INGRESS, t.DIRECTION_EGRESS, t.DIRECTION_UNSPECIFIED


def row(r) -> tuple:
    """A record as (src, dst, sport, dport, proto, packets, bytes, start ms, end ms, action,
    log_status, direction, tcp_flags)."""
    ms = lambda ts: ts.seconds * 1000 + ts.nanos // 1_000_000  # noqa: E731
    return (
        r.src_addr,
        r.dst_addr,
        r.src_port,
        r.dst_port,
        r.protocol,
        r.packets,
        r.bytes,
        ms(r.start_time),
        ms(r.end_time),
        r.action,
        r.log_status,
        r.direction,
        r.tcp_flags,
    )


def split(items) -> tuple[list[tuple[int, tuple]], list[LineError], list[Skipped]]:
    records, errors, skipped = [], [], []
    for item in items:
        if isinstance(item, LineError):
            errors.append(item)
        elif isinstance(item, Skipped):
            skipped.append(item)
        else:
            assert not item[1].record_id, "the server derives record ids; an importer leaves them empty"
            records.append((item[0], row(item[1])))
    return records, errors, skipped


def rules(items) -> list[tuple[str, int]]:
    """(rule_id, rule_kind) of each record."""
    return [(item[1].rule_id, item[1].rule_kind) for item in items if type(item) is tuple]


def lines_of(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines(keepends=True)


# AWS's default-format examples, by line of aws-default-v2.log (line 1 is the header).
AWS_V2 = [
    (2, ("172.31.16.139", "172.31.16.21", 20641, 22, 6, 20, 4249, 1418530010000, 1418530070000, ACCEPT, OK, UNSPEC, 0)),
    (3, ("172.31.9.69", "172.31.9.12", 49761, 3389, 6, 20, 4249, 1418530010000, 1418530070000, REJECT, OK, UNSPEC, 0)),
    (4, ("", "", 0, 0, 0, 0, 0, 1431280876000, 1431280934000, NONE, NODATA, UNSPEC, 0)),
    (5, ("", "", 0, 0, 0, 0, 0, 1431280876000, 1431280934000, NONE, SKIPDATA, UNSPEC, 0)),
    (6, ("203.0.113.12", "172.31.16.139", 0, 0, 1, 4, 336, 1432917027000, 1432917142000, ACCEPT, OK, UNSPEC, 0)),
    (7, ("172.31.16.139", "203.0.113.12", 0, 0, 1, 4, 336, 1432917094000, 1432917142000, REJECT, OK, UNSPEC, 0)),
    (
        8,
        (
            "2001:db8:1234:a100:8d6e:3477:df66:f105",
            "2001:db8:1234:a102:3304:8879:34cf:4071",
            34892,
            22,
            6,
            54,
            8855,
            1477913708000,
            1477913820000,
            ACCEPT,
            OK,
            UNSPEC,
            0,
        ),
    ),
]


def test_aws_default_format_with_header():
    records, errors, skipped = split(aws.parse_lines(lines_of("aws-default-v2.log"), "v2.log"))
    assert errors == [] and skipped == []
    assert records == AWS_V2


def test_aws_records_have_no_rule_or_sampling():
    items = list(aws.parse_lines(lines_of("aws-custom-v5.log"), "v5.log"))
    assert rules(items) == [("", t.RULE_KIND_UNSPECIFIED)] * 2 and all(i[1].sampling_rate == 0 for i in items)


def test_aws_default_format_without_header():
    """CloudWatch Logs exports have no header: the default format is assumed."""
    records, errors, _ = split(aws.parse_lines(lines_of("aws-default-v2.log")[1:], "cw.log"))
    assert errors == []
    assert records == [(line - 1, values) for line, values in AWS_V2]


def test_aws_custom_v3_tcp_flags_fields_in_header_order():
    """The header puts bytes before packets; type, pkt-*addr, vpc/subnet/instance are skipped."""
    records, errors, _ = split(aws.parse_lines(lines_of("aws-custom-v3-tcp-flags.log"), "v3.log"))
    assert errors == []
    server, client = "10.0.0.62", "52.213.180.42"
    w1, w2, w3 = (1566848875000, 1566848933000), (1566848933000, 1566849113000), (1566933133000, 1566933193000)
    assert records == [
        (2, (client, server, 43416, 5001, 6, 8, 568, *w1, ACCEPT, OK, UNSPEC, 2)),
        (3, (server, client, 5001, 43416, 6, 7, 376, *w1, ACCEPT, OK, UNSPEC, 18)),
        (4, (client, server, 43418, 5001, 6, 70, 100701, *w1, ACCEPT, OK, UNSPEC, 2)),
        (5, (server, client, 5001, 43418, 6, 12, 632, *w1, ACCEPT, OK, UNSPEC, 18)),
        (6, (server, client, 5001, 43418, 6, 1219, 63388, *w2, ACCEPT, OK, UNSPEC, 1)),
        (7, (client, server, 43418, 5001, 6, 15774, 23294588, *w2, ACCEPT, OK, UNSPEC, 1)),
        (8, (client, server, 43638, 5001, 6, 17, 1260, *w3, ACCEPT, OK, UNSPEC, 3)),
        (9, (server, client, 5001, 43638, 6, 14, 967, *w3, ACCEPT, OK, UNSPEC, 19)),  # two spaces in AWS's line
    ]


def test_aws_custom_v5_flow_direction_is_the_direction():
    records, errors, _ = split(aws.parse_lines(lines_of("aws-custom-v5.log"), "v5.log"))
    assert errors == []
    window = (1616729292000, 1616729349000)
    assert records == [
        (2, ("52.95.128.179", "10.0.0.71", 80, 34210, 6, 14, 15044, *window, ACCEPT, OK, IN, 19)),
        (3, ("10.0.0.71", "52.95.128.179", 34210, 80, 6, 7, 471, *window, ACCEPT, OK, OUT, 3)),
    ]


def test_aws_format_without_times_reports_every_line():
    records, errors, _ = split(aws.parse_lines(lines_of("aws-custom-tgw-no-times.log"), "tgw.log"))
    assert records == []
    assert [(e.source, e.line) for e in errors] == [("tgw.log", 2), ("tgw.log", 3)]
    assert "no start or end field" in errors[0].reason and "header (line 1)" in errors[0].reason


def test_aws_bad_lines_are_reported_and_the_rest_kept():
    header, good = lines_of("aws-default-v2.log")[:2]
    bad = [
        good.replace(" 20641 ", " port "),  # line 3
        good.replace(" ACCEPT ", " MAYBE "),  # line 4
        "2 123456789010 eni-1 172.31.16.139\n",  # line 5: too few fields
        good.replace(" 1418530010 ", " - "),  # line 6: no start
        good.replace(" 20 4249 ", " -5 4249 "),  # line 7: negative packets
        "\n",  # line 8: blank, ignored
    ]
    records, errors, _ = split(aws.parse_lines([header, good, *bad, good], "bad.log"))
    assert [line for line, _ in records] == [2, 9]
    assert [(e.line, e.field) for e in errors] == [(3, "srcport"), (4, "action"), (5, ""), (6, "start"), (7, "packets")]
    assert str(errors[0]) == "bad.log:3: srcport: 'port' is not a whole number"
    assert "has 4 fields, the header (line 1) names 14" in errors[2].reason


def test_aws_header_mid_stream_switches_format():
    """Files concatenated on standard input: each header applies to the lines after it."""
    v2, v5 = lines_of("aws-default-v2.log"), lines_of("aws-custom-v5.log")
    records, errors, _ = split(aws.parse_lines(v2 + v5, "-"))
    assert errors == []
    assert len(records) == len(AWS_V2) + 2
    assert records[-1] == (
        len(v2) + 3,
        ("10.0.0.71", "52.95.128.179", 34210, 80, 6, 7, 471, 1616729292000, 1616729349000, ACCEPT, OK, OUT, 3),
    )


def test_aws_header_detection():
    assert aws.header_fields("version account-id interface-id".split()) == ["version", "account-id", "interface-id"]
    assert aws.header_fields("${srcaddr} ${dstaddr} pkt_srcaddr".split()) == ["srcaddr", "dstaddr", "pkt-srcaddr"]
    assert aws.header_fields("eni-1235b8ca ingress".split()) is None  # name-shaped values, no known field
    assert aws.header_fields(lines_of("aws-default-v2.log")[1].split()) is None


# Microsoft's VNet flow log example: (line in the fixture, tuple) -> records. A tuple counts both
# ways: src->dst counters then dst->src counters, the second as a record dst -> src with the
# opposite direction. B tuples carry no counters and are skipped; D tuples are REJECT.
def _vnet_expected() -> list[tuple[str, list[tuple]]]:
    def out(ts, dst, sport, p1, b1, p2, b2):
        return [
            ("10.0.0.6", dst, sport, 443, 6, p1, b1, ts, ts, ACCEPT, OK, OUT, 0),
            (dst, "10.0.0.6", 443, sport, 6, p2, b2, ts, ts, ACCEPT, OK, IN, 0),
        ]

    def denied(ts, src, sport, dport):
        return [(src, "10.0.0.6", sport, dport, 6, 0, 0, ts, ts, REJECT, OK, IN, 0)]

    return [
        ("1663146003606,10.0.0.6,192.0.2.180", out(1663146003606, "192.0.2.180", 23956, 3, 767, 2, 1580)),
        ("1663146003640,10.0.0.6,203.0.113.17", out(1663146003640, "203.0.113.17", 22730, 3, 705, 4, 4569)),
        (
            "1663146004251,10.0.0.6,203.0.113.17,22732,443,6,O,E",
            out(1663146004251, "203.0.113.17", 22732, 3, 705, 4, 4569),
        ),
        (
            "1663146004622,10.0.0.6,203.0.113.17,22734,443,6,O,E",
            out(1663146004622, "203.0.113.17", 22734, 2, 134, 1, 108),
        ),
        ("1663146022793,10.0.0.6,198.51.100.84", out(1663146022793, "198.51.100.84", 36776, 22, 2217, 33, 32466)),
        ("1663145998065,", denied(1663145998065, "203.0.113.153", 55188, 22)),
        ("1663146005503,", denied(1663146005503, "192.0.2.164", 35276, 119)),
        ("1663145989563,", denied(1663145989563, "192.0.2.10", 50557, 44357)),
        ("1663145989679,", denied(1663145989679, "203.0.113.81", 62797, 35945)),
        ("1663145989709,", denied(1663145989709, "203.0.113.5", 51961, 65515)),
        ("1663145990049,", denied(1663145990049, "198.51.100.51", 40497, 40129)),
        ("1663145990145,", denied(1663145990145, "203.0.113.81", 62797, 30472)),
        ("1663145990175,", denied(1663145990175, "203.0.113.5", 51961, 28184)),
        ("1663146015545,", denied(1663146015545, "192.0.2.10", 50557, 31244)),
    ]


def _line_containing(name: str, text: str) -> int:
    return next(i for i, line in enumerate(lines_of(name), 1) if f'"{text}' in line)


def test_azure_vnet_flow_log_example():
    data = (FIXTURES / "azure-vnet-flowlog.json").read_bytes()
    records, errors, skipped = split(azure.parse_document(data, "PT1H.json"))
    assert errors == []
    expected = [
        (_line_containing("azure-vnet-flowlog.json", prefix), r) for prefix, rows in _vnet_expected() for r in rows
    ]
    assert records == expected
    assert len(skipped) == 5 and all(s.reason.startswith("flow-begin tuple") for s in skipped)
    SG = t.RULE_KIND_SECURITY_GROUP
    assert rules(azure.parse_document(data, "PT1H.json")) == (
        [("DefaultRule_AllowInternetOutBound", SG)] * 10
        + [("BlockHighRiskTCPPortsFromInternet", SG)] * 2
        + [("Internet", SG)] * 7
    )
    assert sorted(s.line for s in skipped) == sorted(
        _line_containing("azure-vnet-flowlog.json", ts)
        for ts in (
            "1663146003599,",
            "1663146003637,",
            "1663146004251,10.0.0.6,203.0.113.17,22732,443,6,O,B",
            "1663146004622,10.0.0.6,203.0.113.17,22734,443,6,O,B",
            "1663146017343,",
        )
    )


def test_azure_nsg_v2_example():
    data = (FIXTURES / "azure-nsg-v2.json").read_text()
    records, errors, skipped = split(azure.parse_document(data, "nsg.json"))
    assert errors == []
    line = lambda prefix: _line_containing("azure-nsg-v2.json", prefix)  # noqa: E731
    host = "10.5.16.4"
    assert records == [
        (
            line("1542110402,"),
            ("94.102.49.190", host, 28746, 443, 17, 0, 0, 1542110402000, 1542110402000, REJECT, OK, IN, 0),
        ),
        (
            line("1542110424,"),
            ("176.119.4.10", host, 56509, 59336, 6, 0, 0, 1542110424000, 1542110424000, REJECT, OK, IN, 0),
        ),
        (
            line("1542110432,"),
            ("167.99.86.8", host, 48495, 8088, 6, 0, 0, 1542110432000, 1542110432000, REJECT, OK, IN, 0),
        ),
        (
            line("1542110379,10.5.16.4,13.67.143.117"),
            (host, "13.67.143.117", 59932, 443, 6, 1, 66, 1542110379000, 1542110379000, ACCEPT, OK, OUT, 0),
        ),
        (
            line("1542110379,10.5.16.4,13.67.143.117"),
            ("13.67.143.117", host, 443, 59932, 6, 1, 66, 1542110379000, 1542110379000, ACCEPT, OK, IN, 0),
        ),
        (
            line("1542110379,10.5.16.4,13.67.143.115"),
            (host, "13.67.143.115", 44931, 443, 6, 30, 16978, 1542110379000, 1542110379000, ACCEPT, OK, OUT, 0),
        ),
        (
            line("1542110379,10.5.16.4,13.67.143.115"),
            ("13.67.143.115", host, 443, 44931, 6, 24, 14008, 1542110379000, 1542110379000, ACCEPT, OK, IN, 0),
        ),
        (
            line("1542110406,"),
            (host, "40.71.12.225", 59929, 443, 6, 15, 8489, 1542110406000, 1542110406000, ACCEPT, OK, OUT, 0),
        ),
        (
            line("1542110406,"),
            ("40.71.12.225", host, 443, 59929, 6, 12, 7054, 1542110406000, 1542110406000, ACCEPT, OK, IN, 0),
        ),
    ]
    assert [s.line for s in skipped] == [line("1542110377,")]
    assert rules(azure.parse_document(data, "nsg.json")) == (
        [("DefaultRule_DenyAllInBound", t.RULE_KIND_DEFAULT)] * 3
        + [("DefaultRule_AllowInternetOutBound", t.RULE_KIND_SECURITY_GROUP)] * 6
    )


def test_azure_nsg_v1_tuple():
    doc = {
        "records": [
            {
                "properties": {
                    "Version": 1,
                    "flows": [
                        {
                            "rule": "r",
                            "flows": [{"mac": "m", "flowTuples": ["1497646722,10.0.0.4,168.62.32.14,44904,443,T,O,A"]}],
                        }
                    ],
                }
            }
        ]
    }
    import json

    records, errors, _ = split(azure.parse_document(json.dumps(doc), "v1.json"))
    assert errors == []
    assert records == [
        (1, ("10.0.0.4", "168.62.32.14", 44904, 443, 6, 0, 0, 1497646722000, 1497646722000, ACCEPT, OK, OUT, 0))
    ]


def test_azure_bad_tuples_and_documents():
    text = (FIXTURES / "azure-vnet-flowlog.json").read_text()
    broken = text.replace(
        "1663146003606,10.0.0.6,192.0.2.180,23956,443,6,O,E", "1663146003606,10.0.0.6,192.0.2.180,23956,https,6,O,E"
    )
    broken = broken.replace(
        "1663145998065,203.0.113.153,10.0.0.6,55188,22,6,I,D,NX,0,0,0,0",
        "1663145998065,203.0.113.153,10.0.0.6,55188,22,6,X,D,NX,0,0,0,0",
    )
    records, errors, _ = split(azure.parse_document(broken, "PT1H.json"))
    good = sum(len(rows) for _, rows in _vnet_expected())
    assert len(records) == good - 2 - 1  # the E tuple made two records, the D tuple one
    assert [(e.line, e.field) for e in errors] == [
        (_line_containing("azure-vnet-flowlog.json", "1663146003606,"), "dst_port"),
        (_line_containing("azure-vnet-flowlog.json", "1663145998065,"), "direction"),
    ]
    assert "records[0].flowRecords.flows[0].flowGroups[0].flowTuples[1]" in errors[0].reason
    assert "'https' is not a whole number" in errors[0].reason

    _, errors, _ = split(azure.parse_document('{"records": [\n  {"flowRecords": \n', "cut.json"))
    assert len(errors) == 1 and errors[0].line == 3 and errors[0].reason.startswith("not JSON")
    _, errors, _ = split(azure.parse_document(b"\xff\xfe{}", "bin.json"))
    assert len(errors) == 1 and "UTF-8" in errors[0].reason
    _, errors, _ = split(azure.parse_document('{"value": 1}', "other.json"))
    assert "not an Azure flow log" in errors[0].reason


def test_azure_blob_cut_short_keeps_its_complete_records():
    """Azure appends to the hour's PT1H.json as the hour goes: a copy taken mid-hour can stop
    inside a record. The complete records are imported, the rest is one error with its line."""
    import json

    doc = json.loads((FIXTURES / "azure-vnet-flowlog.json").read_text())
    text = json.dumps({"records": [doc["records"][0], doc["records"][0]]}, indent=1)
    cut = text[: text.rindex("1663145990049")]
    records, errors, skipped = split(azure.parse_document(cut, "PT1H.json"))
    assert len(records) == 19 and len(skipped) == 5  # the first record, whole
    assert len(errors) == 1 and errors[0].line == cut.count("\n") + 1
    assert "not JSON from here" in errors[0].reason and "the 1 complete record before it" in errors[0].reason
    records, errors, _ = split(azure.parse_document(text[:-3], "PT1H.json"))  # only the closing brackets missing
    assert len(records) == 38 and len(errors) == 1


# -- sources: gzip, Parquet, directories, standard input --------------------------------------


def read(path, fmt="aws", stdin=None):
    return split(sources.read(str(path), fmt, stdin))


def test_gzip_is_detected_by_content(tmp_path):
    plain = (FIXTURES / "aws-default-v2.log").read_bytes()
    (tmp_path / "flows.txt").write_bytes(gzip.compress(plain))  # no .gz in the name
    records, errors, _ = read(tmp_path / "flows.txt")
    assert errors == [] and records == AWS_V2


def test_bom_and_windows_line_ends(tmp_path):
    text = "\ufeff" + "".join(line.rstrip("\n") + "\r\n" for line in lines_of("aws-default-v2.log"))
    (tmp_path / "win.log").write_bytes(text.encode("utf-8"))
    records, errors, _ = read(tmp_path / "win.log")
    assert errors == [] and records == AWS_V2


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    plain = b"".join(line.encode() for line in lines_of("aws-default-v2.log")) * 2000
    data = gzip.compress(plain)
    (tmp_path / "cut.log.gz").write_bytes(data[: len(data) // 2])
    records, errors, _ = read(tmp_path / "cut.log.gz")
    assert len(errors) == 1 and "truncated or corrupt" in errors[0].reason
    assert 0 < len(records) < 7 * 2000
    assert errors[0].line > records[-1][0]


def test_parquet_with_aws_columns(tmp_path):
    """AWS's Parquet flow logs: the format's fields as columns, `-` written as null."""
    names = [
        "version",
        "account_id",
        "interface_id",
        "srcaddr",
        "dstaddr",
        "srcport",
        "dstport",
        "protocol",
        "packets",
        "bytes",
        "start",
        "end",
        "action",
        "log_status",
        "flow_direction",
        "tcp_flags",
    ]
    types = [
        pa.int32(),
        pa.string(),
        pa.string(),
        pa.string(),
        pa.string(),
        pa.int32(),
        pa.int32(),
        pa.int32(),
        pa.int64(),
        pa.int64(),
        pa.int64(),
        pa.int64(),
        pa.string(),
        pa.string(),
        pa.string(),
        pa.int32(),
    ]
    rows = [
        [
            2,
            "123456789010",
            "eni-1235b8ca123456789",
            "172.31.16.139",
            "172.31.16.21",
            20641,
            22,
            6,
            20,
            4249,
            1418530010,
            1418530070,
            "ACCEPT",
            "OK",
            "ingress",
            2,
        ],
        [
            2,
            "123456789010",
            "eni-1235b8ca123456789",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            1431280876,
            1431280934,
            None,
            "NODATA",
            None,
            None,
        ],
        [
            2,
            "123456789010",
            "eni-1235b8ca123456789",
            "172.31.16.139",
            "203.0.113.12",
            0,
            0,
            1,
            4,
            336,
            1432917094,
            1432917142,
            "REJECT",
            "OK",
            "egress",
            None,
        ],
    ]
    table = pa.table({n: pa.array([r[i] for r in rows], type=ty) for i, (n, ty) in enumerate(zip(names, types))})
    pq.write_table(table, tmp_path / "flows.parquet", row_group_size=2)
    expected = [
        (1, ("172.31.16.139", "172.31.16.21", 20641, 22, 6, 20, 4249, 1418530010000, 1418530070000, ACCEPT, OK, IN, 2)),
        (2, ("", "", 0, 0, 0, 0, 0, 1431280876000, 1431280934000, NONE, NODATA, UNSPEC, 0)),
        (3, ("172.31.16.139", "203.0.113.12", 0, 0, 1, 4, 336, 1432917094000, 1432917142000, REJECT, OK, OUT, 0)),
    ]
    records, errors, _ = read(tmp_path / "flows.parquet")
    assert errors == [] and records == expected
    # Through a pipe (not seekable) too.
    r, w = os.pipe()
    os.write(w, (tmp_path / "flows.parquet").read_bytes())
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        records, errors, _ = read("-", stdin=pipe)
    assert errors == [] and records == expected
    _, errors, _ = read(tmp_path / "flows.parquet", fmt="azure")
    assert "Parquet" in errors[0].reason


def test_s3_layout_directory_is_walked_in_time_order(tmp_path):
    """AWSLogs/<account>/vpcflowlogs/<region>/<yyyy>/<mm>/<dd>/
    <account>_vpcflowlogs_<region>_<flow log>_<time>Z_<hash>.log.gz"""
    lines = lines_of("aws-default-v2.log")
    root = tmp_path / "AWSLogs" / "123456789010" / "vpcflowlogs"
    names = {
        "us-east-1/2021/03/26/123456789010_vpcflowlogs_us-east-1_fl-1234abcd_20210326T0005Z_aa11.log.gz": 2,
        "us-east-1/2021/03/25/123456789010_vpcflowlogs_us-east-1_fl-1234abcd_20210325T2355Z_bb22.log.gz": 3,
        "eu-west-1/2021/03/26/123456789010_vpcflowlogs_eu-west-1_fl-5678efgh_20210326T0000Z_cc33.log.gz": 6,
        "us-east-1/2021/03/25/123456789010_vpcflowlogs_us-east-1_fl-1234abcd_20210325T2350Z_dd44.log.gz": 7,
    }
    for name, line in names.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress((lines[0] + lines[line - 1]).encode()))
    (tmp_path / "AWSLogs" / "aws-logs-write-test").write_text("Permission Check Successful")
    files = sources.expand([str(tmp_path)], "aws")
    assert [Path(f).name.split("_")[4] for f in files] == [
        "20210325T2350Z",
        "20210325T2355Z",
        "20210326T0000Z",
        "20210326T0005Z",
    ]
    got = [split(sources.read(f, "aws"))[0] for f in files]
    by_line = dict(AWS_V2)
    assert got == [[(2, by_line[7])], [(2, by_line[3])], [(2, by_line[6])], [(2, by_line[2])]]


def test_azure_blob_layout_is_walked_in_time_order(tmp_path):
    base = tmp_path / "insights-logs-flowlogflowevent" / "flowLogResourceID=" / "SUBSCRIPTIONS" / "X"
    for hour in ("10", "09"):
        for mac in ("macAddress=112233445566", "macAddress=AABBCCDDEEFF"):
            path = base / "y=2022" / "m=09" / "d=14" / f"h={hour}" / "m=00" / mac / "PT1H.json"
            path.parent.mkdir(parents=True)
            path.write_text("{}")
    files = sources.expand([str(tmp_path)], "azure")
    assert [f.split("h=")[1][:2] for f in files] == ["09", "09", "10", "10"]


def test_missing_path_fails_before_anything():
    with pytest.raises(FileNotFoundError):
        sources.expand([str(FIXTURES / "aws-default-v2.log"), "/nonexistent/flows.log"], "aws")
    with pytest.raises(ValueError):
        sources.expand(["-", "-"], "aws")


def test_stdin_gzip_and_azure(tmp_path):
    data = gzip.compress((FIXTURES / "aws-custom-v5.log").read_bytes())
    records, errors, _ = read("-", stdin=io.BytesIO(data))
    assert errors == [] and [line for line, _ in records] == [2, 3]
    records, errors, skipped = read(
        "-", fmt="azure", stdin=io.BytesIO((FIXTURES / "azure-vnet-flowlog.json").read_bytes())
    )
    assert errors == [] and len(records) == 19 and len(skipped) == 5


# -- the CLI's progress and bad-line report ----------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_and_bad_lines_on_stderr():
    from clients.cli import ImportReporter
    from clients.importers.send import ImportProgress

    p = ImportProgress(files_total=3, files_done=1, source="b.log.gz", records=12_345, bad=1)
    log = io.StringIO()  # not a terminal: whole lines
    reporter = ImportReporter(log, max_errors=2, every_s=0)
    reporter.progress(p)
    for line in (3, 4, 5):
        reporter.problem(LineError("a.log", line, "'x' is not a whole number", "srcport"))
    reporter.progress(p)
    reporter.done()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("1/3 files, 12,345 records sent (") and lines[0].endswith("1 bad, 0s: b.log.gz")
    assert lines[1:4] == [
        "flowlog: a.log:3: srcport: 'x' is not a whole number",
        "flowlog: a.log:4: srcport: 'x' is not a whole number",
        "flowlog: further bad lines are counted, not shown (--max-errors 2)",
    ]
    assert lines[4].split(" (")[0] == lines[0].split(" (")[0] and len(lines) == 5 and reporter.errors == 3

    screen = _Terminal()  # a terminal: one line rewritten in place, cleared before an error line
    reporter = ImportReporter(screen, max_errors=10, every_s=0)
    reporter.progress(p)
    reporter.problem(LineError("a.log", 3, "bad"))
    reporter.done()
    text = screen.getvalue()
    progress, _, error = text.partition("flowlog: ")
    assert progress.startswith("\r1/3 files, 12,345 records sent") and "\n" not in progress
    assert progress.endswith(" \r")  # blanked before the error line
    assert error == "a.log:3: bad\n"


def test_server_takes_skipdata_without_addresses():
    """AWS writes a skipped window as a SKIPDATA line with no five-tuple: the server's record
    check takes it like a NODATA one; a SKIPDATA record with addresses is checked as a flow."""
    from server.core.model import Action, Direction, FlowRecord, LogStatus
    from server.core.records import check_record

    now = 1_700_000_000_000
    bare = FlowRecord(
        record_id="",
        version=1,
        account_id="acct",
        flow_log_id="fl-abcdefgh",
        region="bj",
        project="proj",
        log_store="store",
        resource_type=1,
        resource_id="eip-1",
        network_id="vpc-1",
        src_addr="",
        dst_addr="",
        src_port=0,
        dst_port=0,
        protocol=0,
        packets=0,
        bytes=0,
        start_time=now - 60_000,
        end_time=now,
        action=int(Action.UNSPECIFIED),
        log_status=int(LogStatus.SKIPDATA),
        direction=int(Direction.UNSPECIFIED),
        tcp_flags=0,
    )
    assert check_record(bare, now) is None
    half = bare._replace(src_addr="10.0.0.1")
    assert check_record(half, now).field == "dst_addr"
    assert check_record(bare._replace(log_status=int(LogStatus.OK)), now).field == "src_addr"


def test_aws_fields_for_lines_without_a_header():
    """A custom format exported without its header (CloudWatch Logs): --aws-fields names it."""
    from clients.cli import build_parser

    header, *data = lines_of("aws-custom-v5.log")
    args = build_parser().parse_args(
        ["import", "--flow-log", "fl-abcdefgh", "--format", "aws", "--aws-fields", header.strip(), "-"]
    )
    records, errors, _ = split(aws.parse_lines(data, "cw.log", args.aws_fields))
    assert errors == [] and [(line, r[11]) for line, r in records] == [(1, IN), (2, OUT)]
    _, errors, _ = split(aws.parse_lines(data, "cw.log"))  # without it: not the default format
    assert len(errors) == 2 and "no header line" in errors[0].reason
    with pytest.raises(SystemExit):
        build_parser().parse_args(["import", "--flow-log", "fl-x", "--format", "aws", "--aws-fields", "1 2 3", "-"])
