"""`flowlog import` against a real flowlog-server: import the vendors' published examples, query
them back, import again without duplicates, and report bad lines with file and line.

The examples' times are moved to the last hour (keeping each line's window and the gaps between
lines) because the server refuses records more than 3650 days old (AWS's v2 examples are from
2014-2016); one unshifted 2014 line checks that refusal's report.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.cli import main
from clients.client import FlowLogClient
from flowlog.v1 import types_pb2 as t
from tests.e2e.conftest import KEY_A, start_server
from tests.waiting import poll

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "importers"
# The hosts of the examples (AWS's ENIs and instances, Azure's VM) belong to the imported resource.
RESOURCE_ADDRESSES = ["10.0.0.0/16", "172.31.0.0/16", "2001:db8:1234:a102::/64", "10.5.16.0/24"]
IN, OUT = t.DIRECTION_INGRESS, t.DIRECTION_EGRESS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # No generator: the flow log must hold exactly what was imported.
    sp = start_server(tmp_path_factory.mktemp("import"), {"generator": {"enabled": False}})
    yield sp
    code = sp.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{sp.log_tail()}"


@pytest.fixture
def client(server):
    with FlowLogClient(server.address, KEY_A) as c:
        yield c


@pytest.fixture
def flow_log(client):
    """A resource owning the examples' hosts and an ACTIVE flow log on it, in its own LogStore."""
    name = "imp" + uuid.uuid4().hex[:8]
    resource = client.register_resource(
        type="eip", region="bj", network_id="vpc-import", name=name, addresses=RESOURCE_ADDRESSES
    )
    return client.create_flow_log(
        region="bj",
        name=name,
        resource_type="eip",
        resource_id=resource.id,
        network_id="vpc-import",
        traffic_type="all",
        new_log_store=f"imports/{name}",
    )


def run(server, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--server", server.address, "--api-key", KEY_A, *args])
    out, err = capsys.readouterr()
    return code, out, err


def stored(client, fl) -> list:
    now = datetime.now(timezone.utc)
    return list(
        client.query_all(
            region="bj",
            project=fl.destination.project,
            log_stores=[fl.destination.log_store],
            start=now - timedelta(days=2),
            end=now + timedelta(hours=1),
        )
    )


def wait_for_count(client, fl, n: int, timeout: float = 30) -> list:
    """Records reach the query backend shortly after they are durable: poll until n are there (or `timeout` has
    passed: some callers check that no more than n-1 come, duplicates)."""
    return poll(lambda: stored(client, fl), timeout, 0.2, until=lambda records: len(records) >= n)


def key(r) -> tuple:
    return (
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


def shifted_aws(name: str, to: datetime) -> tuple[list[str], int]:
    """The fixture's lines with start/end moved so that the latest end is `to`; the shift in s."""
    lines = (FIXTURES / name).read_text().splitlines(keepends=True)
    fields = lines[0].split()
    i_start, i_end = fields.index("start"), fields.index("end")
    ends = [int(line.split()[i_end]) for line in lines[1:]]
    delta = int(to.timestamp()) - max(ends)
    out = [lines[0]]
    for line in lines[1:]:
        tokens = line.split()
        tokens[i_start] = str(int(tokens[i_start]) + delta)
        tokens[i_end] = str(int(tokens[i_end]) + delta)
        out.append(" ".join(tokens) + "\n")
    return out, delta


def spread_aws(name: str, to: datetime) -> tuple[list[str], list[tuple[int, int]]]:
    """The fixture's lines with their windows moved to the hours before `to`, a line an hour,
    each keeping its length (AWS's v2 examples span 2014-2016, and a LogStore keeps days; its
    NODATA and SKIPDATA lines, of two interfaces, share a window, and a flow log's records are not
    told apart by interface). Returns the lines and the (start ms, end ms) of each data line."""
    lines = (FIXTURES / name).read_text().splitlines(keepends=True)
    fields = lines[0].split()
    i_start, i_end = fields.index("start"), fields.index("end")
    base = int(to.timestamp()) - 3600 * (len(lines) - 1)
    windows: list[tuple[int, int]] = []
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        tokens = line.split()
        start, end = int(tokens[i_start]), int(tokens[i_end])
        new_start = base + 3600 * i
        tokens[i_start], tokens[i_end] = str(new_start), str(new_start + end - start)
        windows.append((new_start * 1000, (new_start + end - start) * 1000))
        out.append(" ".join(tokens) + "\n")
    return out, windows


def test_custom_v5_import_query_back_and_import_again(server, client, flow_log, tmp_path, capsys):
    lines, delta = shifted_aws("aws-custom-v5.log", datetime.now(timezone.utc) - timedelta(hours=1))
    path = tmp_path / "v5.log"
    path.write_text("".join(lines))
    code, out, err = run(server, capsys, "import", "--flow-log", flow_log.id, "--format", "aws", str(path))
    assert code == 0, err
    assert "accepted 2, rejected 0" in out
    s, e = (1616729292 + delta) * 1000, (1616729349 + delta) * 1000
    # By hand from AWS's two lines: S3 -> instance (ingress), instance -> S3 (egress).
    expected = sorted(
        [
            ("52.95.128.179", "10.0.0.71", 80, 34210, 6, 14, 15044, s, e, t.ACTION_ACCEPT, t.LOG_STATUS_OK, IN, 19),
            ("10.0.0.71", "52.95.128.179", 34210, 80, 6, 7, 471, s, e, t.ACTION_ACCEPT, t.LOG_STATUS_OK, OUT, 3),
        ]
    )
    records = wait_for_count(client, flow_log, 2)
    assert sorted(key(r) for r in records) == expected
    assert all(r.flow_log_id == flow_log.id and r.resource_id == flow_log.resource_id for r in records)
    ids = sorted(r.record_id for r in records)

    code, out, err = run(server, capsys, "import", "--flow-log", flow_log.id, "--format", "aws", str(path))
    assert code == 0, err
    records = wait_for_count(client, flow_log, 3, timeout=3)  # would be 4 with duplicates
    assert sorted(r.record_id for r in records) == ids


def test_bad_lines_are_reported_with_file_and_line_and_the_rest_kept(server, client, flow_log, tmp_path, capsys):
    lines, _ = shifted_aws("aws-custom-v5.log", datetime.now(timezone.utc) - timedelta(hours=1))
    v2_header, v2_old = (FIXTURES / "aws-default-v2.log").read_text().splitlines(keepends=True)[:2]
    bad = lines[1].replace(" 80 34210 ", " http 34210 ")
    # line 1 header, 2 good, 3 unparsable, 4 header, 5 AWS's 2014 line (the server refuses: too old), 6 good
    path = tmp_path / "mixed.log"
    path.write_text("".join([lines[0], lines[1], bad, v2_header, v2_old, lines[0], lines[2]]))
    code, out, err = run(server, capsys, "import", "--flow-log", flow_log.id, "--format", "aws", str(path))
    assert code == 1
    assert "accepted 2, rejected 2" in out
    assert f"flowlog: {path}:3: srcport: 'http' is not a whole number" in err
    assert re.search(rf"flowlog: {re.escape(str(path))}:5: start_time: .*3650 days", err), err
    assert len(wait_for_count(client, flow_log, 2)) == 2

    code, out, _ = run(server, capsys, "--json", "import", "--flow-log", flow_log.id, "--format", "aws", str(path))
    summary = json.loads(out)
    assert code == 1 and (summary["accepted"], summary["rejected"]) == (2, 2)
    assert [(p["line"], p["field"]) for p in summary["problems"]] == [(3, "srcport"), (5, "start_time")]


def test_default_v2_direction_derived_nodata_skipdata_and_import_again(server, client, tmp_path, capsys):
    """AWS's default-format examples: no direction in the format, so the server derives it from the
    resource's addresses (here the instance 172.31.16.139, the RDP target 172.31.9.12 and the
    IPv6 subnet); re-importing gives the same record ids, direction included."""
    name = "v2" + uuid.uuid4().hex[:8]
    resource = client.register_resource(
        type="eip",
        region="bj",
        network_id="vpc-import",
        name=name,
        addresses=["172.31.16.139/32", "172.31.9.12/32", "2001:db8:1234:a102::/64"],
    )
    fl = client.create_flow_log(
        region="bj",
        name=name,
        resource_type="eip",
        resource_id=resource.id,
        network_id="vpc-import",
        traffic_type="all",
        new_log_store=f"imports/{name}",
    )
    lines, w = spread_aws("aws-default-v2.log", datetime.now(timezone.utc) - timedelta(hours=1))
    path = tmp_path / "v2.log.gz"
    path.write_bytes(gzip.compress("".join(lines).encode()))
    code, out, err = run(server, capsys, "import", "--flow-log", fl.id, "--format", "aws", str(path))
    assert code == 0, err
    assert "accepted 7, rejected 0" in out
    A, R, NO = t.ACTION_ACCEPT, t.ACTION_REJECT, t.ACTION_UNSPECIFIED
    OK, NODATA, SKIP, UNSPEC = t.LOG_STATUS_OK, t.LOG_STATUS_NODATA, t.LOG_STATUS_SKIPDATA, t.DIRECTION_UNSPECIFIED
    expected = sorted(
        [
            ("172.31.16.139", "172.31.16.21", 20641, 22, 6, 20, 4249, *w[0], A, OK, OUT, 0),
            ("172.31.9.69", "172.31.9.12", 49761, 3389, 6, 20, 4249, *w[1], R, OK, IN, 0),
            ("", "", 0, 0, 0, 0, 0, *w[2], NO, NODATA, UNSPEC, 0),
            ("", "", 0, 0, 0, 0, 0, *w[3], NO, SKIP, UNSPEC, 0),
            ("203.0.113.12", "172.31.16.139", 0, 0, 1, 4, 336, *w[4], A, OK, IN, 0),
            ("172.31.16.139", "203.0.113.12", 0, 0, 1, 4, 336, *w[5], R, OK, OUT, 0),
            (
                "2001:db8:1234:a100:8d6e:3477:df66:f105",
                "2001:db8:1234:a102:3304:8879:34cf:4071",
                34892,
                22,
                6,
                54,
                8855,
                *w[6],
                A,
                OK,
                IN,
                0,
            ),
        ]
    )
    records = wait_for_count(client, fl, 7)
    assert sorted(key(r) for r in records) == expected
    ids = sorted(r.record_id for r in records)
    code, out, err = run(server, capsys, "import", "--flow-log", fl.id, "--format", "aws", str(path))
    assert code == 0 and "accepted 7, rejected 0" in out, err
    assert sorted(r.record_id for r in wait_for_count(client, fl, 8, timeout=3)) == ids


def test_directory_gzip_parquet_and_stdin(server, client, flow_log, tmp_path, capsys, monkeypatch):
    """An S3-layout directory of gzip files plus a Parquet file, then the same lines on stdin."""
    lines, delta = shifted_aws("aws-custom-v3-tcp-flags.log", datetime.now(timezone.utc) - timedelta(hours=2))
    day = tmp_path / "AWSLogs" / "123456789010" / "vpcflowlogs" / "eu-west-1" / "2019" / "08" / "26"
    day.mkdir(parents=True)
    for i, chunk in enumerate((lines[1:4], lines[4:7])):
        name = f"123456789010_vpcflowlogs_eu-west-1_fl-0abc1234_20190826T19{i}5Z_f00{i}.log.gz"
        (day / name).write_bytes(gzip.compress("".join([lines[0], *chunk]).encode()))
    # The last two lines as AWS's Parquet (the columns of the format, '-' as null).
    names = lines[0].split()
    rows = [line.split() for line in lines[7:9]]
    ints = {"srcport", "dstport", "protocol", "bytes", "packets", "start", "end", "tcp-flags", "version"}
    table = pa.table(
        {n.replace("-", "_"): [int(r[i]) if n in ints else r[i] for r in rows] for i, n in enumerate(names)}
    )
    pq.write_table(table, day / "123456789010_vpcflowlogs_eu-west-1_fl-0abc1234_20190826T1955Z_f009.log.parquet")
    code, out, err = run(
        server, capsys, "import", "--flow-log", flow_log.id, "--format", "aws", str(tmp_path / "AWSLogs")
    )
    assert code == 0, err
    assert "imported 3 files" in out and "accepted 8, rejected 0" in out
    records = wait_for_count(client, flow_log, 8)
    w1 = ((1566848875 + delta) * 1000, (1566848933 + delta) * 1000)
    w2 = ((1566848933 + delta) * 1000, (1566849113 + delta) * 1000)
    w3 = ((1566933133 + delta) * 1000, (1566933193 + delta) * 1000)
    srv, cli, A, OK = "10.0.0.62", "52.213.180.42", t.ACTION_ACCEPT, t.LOG_STATUS_OK
    # By hand from AWS's eight lines; no flow-direction in this format: the server derives it from
    # the resource's 10.0.0.0/16 (client -> instance: ingress, instance -> client: egress).
    assert sorted(key(r) for r in records) == sorted(
        [
            (cli, srv, 43416, 5001, 6, 8, 568, *w1, A, OK, IN, 2),
            (srv, cli, 5001, 43416, 6, 7, 376, *w1, A, OK, OUT, 18),
            (cli, srv, 43418, 5001, 6, 70, 100701, *w1, A, OK, IN, 2),
            (srv, cli, 5001, 43418, 6, 12, 632, *w1, A, OK, OUT, 18),
            (srv, cli, 5001, 43418, 6, 1219, 63388, *w2, A, OK, OUT, 1),
            (cli, srv, 43418, 5001, 6, 15774, 23294588, *w2, A, OK, IN, 1),
            (cli, srv, 43638, 5001, 6, 17, 1260, *w3, A, OK, IN, 3),
            (srv, cli, 5001, 43638, 6, 14, 967, *w3, A, OK, OUT, 19),
        ]
    )

    stdin = io.BytesIO(gzip.compress("".join(lines).encode()))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(stdin))
    code, out, err = run(server, capsys, "import", "--flow-log", flow_log.id, "--format", "aws", "-")
    assert code == 0, err
    assert "accepted 8, rejected 0" in out
    assert len(wait_for_count(client, flow_log, 9, timeout=3)) == 8  # the same records: no duplicates


def test_azure_vnet_flow_log(server, client, flow_log, tmp_path, capsys):
    text = (FIXTURES / "azure-vnet-flowlog.json").read_text()
    first = min(int(ms) for ms in re.findall(r'"(\d{13}),', text))
    delta = int((datetime.now(timezone.utc) - timedelta(hours=1)).timestamp() * 1000) - first
    path = tmp_path / "PT1H.json"
    path.write_text(re.sub(r'"(\d{13}),', lambda m: f'"{int(m.group(1)) + delta},', text))
    code, out, err = run(server, capsys, "import", "--flow-log", flow_log.id, "--format", "azure", str(path))
    assert code == 0, err
    # 10 allowed tuples: 5 B (skipped, no counters) and 5 E, each one record per way; 9 denied tuples.
    assert "accepted 19, rejected 0, skipped 5" in out
    records = wait_for_count(client, flow_log, 19)
    ts = 1663146022793 + delta
    assert ("10.0.0.6", "198.51.100.84", 36776, 443, 6, 22, 2217, ts, ts, t.ACTION_ACCEPT, t.LOG_STATUS_OK, OUT, 0) in {
        key(r) for r in records
    }
    assert ("198.51.100.84", "10.0.0.6", 443, 36776, 6, 33, 32466, ts, ts, t.ACTION_ACCEPT, t.LOG_STATUS_OK, IN, 0) in {
        key(r) for r in records
    }
    assert sum(r.action == t.ACTION_REJECT for r in records) == 9
    ids = sorted(r.record_id for r in records)
    code, out, _ = run(server, capsys, "import", "--flow-log", flow_log.id, "--format", "azure", str(path))
    assert code == 0
    assert sorted(r.record_id for r in wait_for_count(client, flow_log, 20, timeout=3)) == ids


def test_unknown_flow_log_and_missing_file(server, tmp_path, capsys):
    path = tmp_path / "v5.log"
    path.write_text((FIXTURES / "aws-custom-v5.log").read_text())
    code, _, err = run(server, capsys, "import", "--flow-log", "fl-doesnotexist", "--format", "aws", str(path))
    assert code == 1 and "NOT_FOUND" in err and "Traceback" not in err
    code, _, err = run(
        server, capsys, "import", "--flow-log", "fl-doesnotexist", "--format", "aws", str(tmp_path / "nope.log")
    )
    assert code == 1 and "nope.log" in err
    code, _, err = run(server, capsys, "import", "--flow-log", "fl-x", "--format", "gcp", str(path))
    assert code == 2
