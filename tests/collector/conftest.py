"""A real flowlog-server with its collector on a free loopback UDP port, and helpers to wait for
the records a test sent."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass

import pytest

from clients.client import FlowLogClient
from tests.e2e.conftest import KEY_A, KEY_B, ServerProcess, start_server
from tests.waiting import wait_for

REGION = "bj"
PROJECT = "netflow"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class CollectorServer:
    server: ServerProcess
    udp_port: int

    def client(self, key: str = KEY_A) -> FlowLogClient:
        return FlowLogClient(self.server.address, key)


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    port = free_udp_port()
    sp = start_server(
        tmp_path_factory.mktemp("collector"),
        {
            "demo": False,
            "generator": {"enabled": False},
            # 127.0.0.1 is acct-a's exporter; 127.0.0.3 is acct-b's; anything else is unknown.
            "collector": {
                "listen": f"127.0.0.1:{port}",
                "exporters": {"127.0.0.1": "acct-a", "127.0.0.3/32": "acct-b"},
            },
        },
    )
    yield CollectorServer(sp, port)
    code = sp.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{sp.log_tail()}"


def uid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:8]


def resource_with_flow_logs(
    c: FlowLogClient, addresses: list[str], traffic: list[str], ids: list[str] | None = None
) -> tuple[str, list[str]]:
    """A new EIP holding `addresses`, with one flow log (own LogStore) per traffic type given
    (their ids appended to `ids` when given)."""
    r = c.register_resource(type="eip", region=REGION, network_id="vpc-netflow", name=uid("r"), addresses=addresses)
    stores = []
    for t in traffic:
        store = uid("s")
        fl = c.create_flow_log(
            region=REGION,
            name=uid("fl"),
            resource_type="eip",
            resource_id=r.id,
            network_id="vpc-netflow",
            traffic_type=t,
            new_log_store=f"{PROJECT}/{store}",
        )
        stores.append(store)
        if ids is not None:
            ids.append(fl.id)
    return r.id, stores


def records(c: FlowLogClient, store: str, since: str = "2h") -> list:
    return list(c.query_all(region=REGION, project=PROJECT, log_stores=[store], start=since))


def wait_records(c: FlowLogClient, store: str, n: int, timeout: float = 60, since: str = "2h") -> list:
    """The store's records once there are at least n (the caller compares them with what it sent:
    an extra record is a failure there)."""
    got: list = []

    def enough() -> bool:
        got[:] = records(c, store, since)
        return len(got) >= n

    try:
        wait_for(enough, f"{n} records in {store}", timeout, step=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}: {len(got)} came") from None
    return got


def send(port: int, datagrams: list[bytes], source: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for dg in datagrams:
            s.sendto(dg, ("127.0.0.1", port))


__all__ = [
    "KEY_A",
    "KEY_B",
    "PROJECT",
    "REGION",
    "collector",
    "free_udp_port",
    "records",
    "resource_with_flow_logs",
    "send",
    "uid",
    "wait_records",
]

ROOT_DIR = str(__import__("pathlib").Path(__file__).resolve().parents[2])
