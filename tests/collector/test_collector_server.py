"""The collector in a real server: hand-built IPFIX / v9 / v5 datagrams over loopback UDP become
records of the right flow logs (direction by address, action by forwardingStatus, traffic type),
deduplicated, with unknown exporters dropped and counted, and counters visible."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.collector import datagrams as d
from tests.collector.conftest import KEY_B, ROOT_DIR, records, resource_with_flow_logs, send, wait_records
from tests.waiting import wait_for

FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (152, 8), (153, 8), (89, 1)]
FORWARDED, DROPPED = 0x40, 0x80


def rec(src, dst, sport, dport, proto, pkts, octets, start, end, status=FORWARDED) -> bytes:
    return struct.pack("!4s4sHHBIIQQB", d.a4(src), d.a4(dst), sport, dport, proto, pkts, octets, start, end, status)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        r.direction,
    )


def test_flows_go_to_the_flow_logs_of_the_resources_holding_their_addresses(collector):
    c = collector.client()
    _, (all_store, allow_store, deny_store) = resource_with_flow_logs(c, ["10.77.0.0/24"], ["all", "allow", "deny"])
    wait_inventory(collector)
    t = now_ms() - 60_000
    data = d.ipfix(
        [
            d.ipfix_set(2, d.ipfix_template(256, FIELDS)),
            d.ipfix_set(
                256,
                rec("198.51.100.9", "10.77.0.5", 50000, 443, 6, 10, 4000, t, t + 900)  # in, accepted
                + rec("10.77.0.5", "198.51.100.9", 443, 50000, 6, 8, 9000, t + 1, t + 901)  # out
                + rec("203.0.113.66", "10.77.0.7", 40000, 22, 6, 2, 120, t + 2, t + 3, DROPPED)  # in, dropped
                + rec("192.0.2.1", "192.0.2.2", 1, 2, 17, 1, 50, t, t),
            ),  # no resource
        ],
        export_time=t // 1000 + 5,
    )
    send(collector.udp_port, [data, data])  # the same datagram twice: no duplicates
    expect_in = ("198.51.100.9", "10.77.0.5", 50000, 443, 6, 10, 4000, t, t + 900, 1, 1)
    expect_out = ("10.77.0.5", "198.51.100.9", 443, 50000, 6, 8, 9000, t + 1, t + 901, 1, 2)
    expect_drop = ("203.0.113.66", "10.77.0.7", 40000, 22, 6, 2, 120, t + 2, t + 3, 2, 1)
    assert sorted(map(key, wait_records(c, all_store, 3))) == sorted([expect_in, expect_out, expect_drop])
    assert sorted(map(key, wait_records(c, allow_store, 2))) == sorted([expect_in, expect_out])
    assert sorted(map(key, wait_records(c, deny_store, 1))) == [expect_drop]
    # a v5 datagram from the same exporter lands in the same flow log
    t5 = now_ms() // 1000 * 1000
    v5 = d.v5(
        [
            dict(
                src="10.77.0.9",
                dst="192.0.2.50",
                pkts=3,
                octets=300,
                first=9_000,
                last=9_500,
                sport=123,
                dport=123,
                proto=17,
            )
        ],
        uptime=10_000,
        secs=t5 // 1000,
    )
    send(collector.udp_port, [v5])
    got = wait_records(c, all_store, 4)
    assert ("10.77.0.9", "192.0.2.50", 123, 123, 17, 3, 300, t5 - 1000, t5 - 500, 1, 2) in set(map(key, got))
    assert len(got) == 4


def test_unknown_exporter_is_dropped_and_counted(collector):
    c = collector.client()
    _, (store,) = resource_with_flow_logs(c, ["10.78.0.1"], ["all"])
    wait_inventory(collector)
    t = now_ms() - 10_000
    data = d.ipfix(
        [
            d.ipfix_set(2, d.ipfix_template(256, FIELDS)),
            d.ipfix_set(256, rec("10.78.0.1", "192.0.2.8", 1000, 53, 17, 1, 70, t, t)),
        ],
        export_time=t // 1000,
    )
    send(collector.udp_port, [data], source="127.0.0.2")  # not in collector.exporters
    status = wait_status(collector, lambda s: s["unknown_exporter"] >= 1)
    assert status["unknown_exporter"] >= 1
    send(collector.udp_port, [data])  # from acct-a's exporter: kept
    assert len(wait_records(c, store, 1)) == 1
    # acct-b's exporter: its flows only reach acct-b's resources
    with collector.client(KEY_B) as b:
        _, (b_store,) = resource_with_flow_logs(b, ["10.78.0.1"], ["all"])
        wait_inventory(collector)
        send(collector.udp_port, [data], source="127.0.0.3")
        assert len(wait_records(b, b_store, 1)) == 1
    assert len(records(c, store)) == 1


def wait_inventory(collector) -> None:
    """Until the collector has read the flow logs created before this call."""
    t = now_ms()
    wait_status(collector, lambda s: s["inventory_time_ms"] > t)


def wait_status(collector, cond, timeout: float = 30) -> dict:
    """The collector's counters as `flowlog collector status --json` prints them, once cond holds."""
    last: dict = {}

    def matched() -> dict | None:
        out = subprocess.run(
            [sys.executable, "-m", "clients.cli", "collector", "status", "--data-dir", str(collector.server.data_dir)]
            + ["--json"],
            cwd=ROOT_DIR,
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            last.update(json.loads(out.stdout)["counters"])
            if cond(last):
                return dict(last)
        return None

    try:
        return wait_for(matched, "the collector status to match", timeout, step=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last counters: {last}") from None


def test_health_and_status(collector):
    with grpc.insecure_channel(collector.server.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        def serving() -> bool:
            try:
                got = stub.Check(health_pb2.HealthCheckRequest(service="flowlog.collector"), timeout=2).status
            except grpc.RpcError:
                return False
            return got == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, "flowlog.collector SERVING")
    send(collector.udp_port, [b"\x00\x0a\x00\x30garbage"])
    status = wait_status(collector, lambda s: s["malformed"] >= 1)
    assert status["datagrams"] >= 1
    out = subprocess.run(
        [sys.executable, "-m", "clients.cli", "collector", "status", "--data-dir", str(collector.server.data_dir)],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "malformed" in out.stdout and "datagrams" in out.stdout


def test_a_paused_flow_log_gets_nothing_and_both_ends_in_one_resource_make_two_records(collector):
    c = collector.client()
    ids: list[str] = []
    _, (paused_store, active_store) = resource_with_flow_logs(c, ["10.79.0.0/24"], ["all", "all"], ids)
    c.update_flow_log(ids[0], state="paused")
    wait_inventory(collector)
    t = now_ms() - 30_000
    data = d.ipfix(
        [
            d.ipfix_set(2, d.ipfix_template(256, FIELDS)),
            d.ipfix_set(256, rec("10.79.0.1", "10.79.0.2", 5000, 80, 6, 3, 300, t, t + 10)),
        ],
        export_time=t // 1000 + 1,
    )
    send(collector.udp_port, [data])
    got = wait_records(c, active_store, 2)
    assert sorted(map(key, got)) == [
        ("10.79.0.1", "10.79.0.2", 5000, 80, 6, 3, 300, t, t + 10, 1, 1),
        ("10.79.0.1", "10.79.0.2", 5000, 80, 6, 3, 300, t, t + 10, 1, 2),
    ]
    assert records(c, paused_store) == []


def test_template_after_its_data_and_malformed_datagrams_over_udp(collector):
    c = collector.client()
    _, (store,) = resource_with_flow_logs(c, ["10.80.0.0/24"], ["all"])
    wait_inventory(collector)
    t = now_ms() - 30_000
    data = d.ipfix(
        [d.ipfix_set(300, rec("192.0.2.44", "10.80.0.4", 7000, 443, 6, 5, 500, t, t + 20))],
        export_time=t // 1000,
        domain=9,
    )
    template = d.ipfix([d.ipfix_set(2, d.ipfix_template(300, FIELDS))], export_time=t // 1000, domain=9)
    send(collector.udp_port, [data, data[:-7], b"\x00\x09\x00", bytes(range(256)) * 4, template])
    got = wait_records(c, store, 1)
    assert list(map(key, got)) == [("192.0.2.44", "10.80.0.4", 7000, 443, 6, 5, 500, t, t + 20, 1, 1)]
    status = wait_status(collector, lambda s: s["held_decoded"] >= 1 and s["malformed"] >= 2)
    assert status["template_misses"] >= 1


def test_sampling_rate_from_sampling_options_lands_on_the_records(collector):
    c = collector.client()
    _, (store,) = resource_with_flow_logs(c, ["10.81.0.0/24"], ["all"])
    wait_inventory(collector)
    t = now_ms() - 30_000
    v9_fields = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (22, 4), (21, 4), (48, 1)]
    uptime = 1_000_000
    tmpl = d.ipfix_set(0, d.v9_template(260, v9_fields))
    opts = d.ipfix_set(1, d.v9_options_template(261, [(1, 4)], [(48, 1), (34, 4)]))
    opt_data = d.ipfix_set(261, struct.pack("!IBI", 0, 5, 100), pad=3)
    first = uptime - (now_ms() // 1000 * 1000 - t)
    data = d.ipfix_set(
        260,
        d.a4("10.81.0.9") + d.a4("192.0.2.99") + struct.pack("!HHBIIIIB", 3000, 443, 6, 7, 700, first, first + 40, 5),
    )
    send(collector.udp_port, [d.v9([tmpl, opts, opt_data, data], uptime=uptime, secs=now_ms() // 1000, source_id=4)])
    (r,) = wait_records(c, store, 1)
    assert (r.src_addr, r.direction, r.packets, r.bytes, r.sampling_rate) == ("10.81.0.9", 2, 7, 700, 100)
    assert r.rule_id == "" and r.rule_kind == 0
