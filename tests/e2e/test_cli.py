"""The `flowlog` CLI against a real server: tables, JSON, one-line errors and exit codes."""

from __future__ import annotations

import json
import uuid

from clients.cli import main
from tests.e2e.conftest import KEY_A


def run(server, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--server", server.address, "--api-key", KEY_A, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_resource_list_table_and_json(server, capsys):
    code, out, _ = run(server, capsys, "resource", "list", "--region", "bj")
    assert code == 0 and "eip-bj-01" in out and "nat-bj-01" in out
    code, out, _ = run(server, capsys, "--json", "resource", "list", "--region", "gz")
    assert code == 0
    ids = {r["id"] for r in json.loads(out)}
    assert {"eip-gz-01", "csn-gz-01", "ip6gw-gz-01"} <= ids


def test_flow_log_lifecycle_and_errors(server, capsys):
    name = "cli" + uuid.uuid4().hex[:6]
    code, out, err = run(
        server,
        capsys,
        "--json",
        "flowlog",
        "create",
        "--region",
        "bj",
        "--name",
        name,
        "--resource-type",
        "eip",
        "--resource-id",
        "eip-bj-02",
        "--network-id",
        "vpc-bjdemo",
        "--traffic-type",
        "allow",
        "--new-log-store",
        f"proj/{name}",
    )
    assert code == 0, err
    fl = json.loads(out)
    assert fl["name"] == name and fl["traffic_type"] == "TRAFFIC_TYPE_ALLOW"
    code, out, _ = run(server, capsys, "flowlog", "list", "--region", "bj")
    assert code == 0 and fl["id"] in out
    code, out, err = run(server, capsys, "flowlog", "update", fl["id"], "--state", "paused")
    assert code == 0, err
    code, _, err = run(server, capsys, "flowlog", "update", fl["id"], "--description", "x" * 201)
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith("flowlog: INVALID_ARGUMENT") and "200 characters" in err and "Traceback" not in err
    code, _, err = run(
        server,
        capsys,
        "flowlog",
        "create",
        "--region",
        "bj",
        "--name",
        name + "2",
        "--resource-type",
        "eip",
        "--resource-id",
        "eip-bj-02",
        "--network-id",
        "vpc-bjdemo",
        "--traffic-type",
        "all",
        "--log-store",
        "proj/doesnotexist",
    )
    assert code == 1 and "NOT_FOUND" in err
    code, out, err = run(server, capsys, "flowlog", "delete", fl["id"])
    assert code == 0, err
    code, _, err = run(server, capsys, "flowlog", "get", fl["id"])
    assert code == 1 and "NOT_FOUND" in err


def test_query_prints_records(server, capsys):
    from datetime import datetime, timedelta, timezone

    from clients.client import FlowLogClient
    from tests.e2e.test_records import pb_record

    name = "cq" + uuid.uuid4().hex[:6]
    with FlowLogClient(server.address, KEY_A) as c:
        fl = c.create_flow_log(
            region="bj",
            name=name,
            resource_type="eip",
            resource_id="eip-bj-02",
            network_id="vpc-bjdemo",
            traffic_type="all",
            new_log_store=f"proj/{name}",
        )
        base = datetime.now(timezone.utc) - timedelta(minutes=3)
        c.ingest(fl.id, [[pb_record(i, base) for i in range(30)]])
        c.delete_flow_log(fl.id)
    code, out, err = run(
        server,
        capsys,
        "--json",
        "query",
        "--region",
        "bj",
        "--project",
        "proj",
        "--log-store",
        name,
        "--since",
        "1h",
        "--filter",
        "src_addr = 10.1.0.0/16 AND action = REJECT",
        "--all",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 10 and all(r["action"] == "ACTION_REJECT" for r in rows)
    code, out, err = run(
        server,
        capsys,
        "query",
        "--region",
        "bj",
        "--project",
        "proj",
        "--log-store",
        name,
        "--since",
        "1h",
        "--filter",
        "src_addr = 10.1.0.0/16",
        "--limit",
        "5",
    )
    assert code == 0 and len([line for line in out.splitlines() if "10.1." in line]) == 5
    assert "page-token" in err or "--all" in err  # says how to continue
    code, _, err = run(
        server,
        capsys,
        "query",
        "--region",
        "bj",
        "--project",
        "proj",
        "--log-store",
        name,
        "--since",
        "1h",
        "--filter",
        "port ==",
    )
    assert code == 1 and "INVALID_ARGUMENT" in err and "position" in err


def test_unreachable_server_is_one_line(capsys):
    code = main(["--server", "127.0.0.1:1", "--timeout", "2", "flowlog", "list"])
    _, err = capsys.readouterr()
    assert code == 1 and "UNAVAILABLE" in err and "Traceback" not in err
