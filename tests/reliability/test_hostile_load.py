"""Hostile load against a real server (issue 15): requests are authenticated before their bodies
are read, bounded before they are decoded, and one tenant's flood of huge messages neither
takes the server's memory nor stops another tenant's Query and Tail.

Memory is a correctness property here: the test reads the server's peak resident set (VmHWM
in /proc/<pid>/status) before and after the flood and bounds the growth."""

from __future__ import annotations

import threading

import grpc
import pytest

from flowlog.v1 import query_pb2
from tests.reliability.conftest import (
    KEY_A,
    KEY_B,
    Stubs,
    batch,
    create_target,
    query_ids,
    report,
    settings,
    start_server,
)
from tests.waiting import wait_for

MIB = 1 << 20
CLIENTS = 20
ROUNDS = 3
RSS_BOUND_MB = 100


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def empty_rules_resource(size: int) -> bytes:
    """A RegisterResourceRequest of ~`size` bytes: one Resource holding only empty SecurityRules
    (two bytes each on the wire, ~100 once decoded)."""
    n = (size - 16) // 2
    return _field(1, b"\x3a\x00" * n)  # resource = 1 { rules = 7 (empty) x n }


def empty_records_ingest(flow_log_id: str, size: int) -> bytes:
    """An IngestRequest of ~`size` bytes: the flow log id, then only empty records."""
    head = _field(1, flow_log_id.encode())
    return head + b"\x12\x00" * ((size - len(head)) // 2)  # records = 2 (empty) x n


def vm(pid: int, key: str) -> int:
    """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    sp = start_server(tmp_path_factory.mktemp("hostile"), settings(limits={"tail_heartbeat_seconds": 0.2}))
    yield sp
    assert sp.stop() == 0, sp.log_tail()


class Flood(threading.Thread):
    """One hostile client: sends `payload` to `method` ROUNDS times on its own connection and
    records the status codes it got."""

    def __init__(self, address: str, method: str, payload: bytes, key: str | None, streaming: bool) -> None:
        super().__init__(daemon=True)
        self.address, self.method, self.payload, self.key, self.streaming = address, method, payload, key, streaming
        self.codes: list[str] = []
        self.details: set[str] = set()

    def run(self) -> None:
        md = (("authorization", f"Bearer {self.key}"),) if self.key else ()
        with grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", 64 * MIB)]) as ch:
            for _ in range(ROUNDS):
                try:
                    if self.streaming:
                        ch.stream_unary(self.method)(iter([self.payload]), metadata=md, timeout=60)
                    else:
                        ch.unary_unary(self.method)(self.payload, metadata=md, timeout=60)
                    self.codes.append("OK")
                except grpc.RpcError as e:
                    self.codes.append(e.code().name)
                    self.details.add(e.details() or "")


def test_floods_of_huge_messages_cost_bounded_memory_and_other_tenants_keep_working(srv, record_property):
    a, b = Stubs(srv.address, KEY_A), Stubs(srv.address, KEY_B)
    try:
        ta, tb = create_target(a, "flooder"), create_target(b, "victim")
        req, ids = batch(tb.flow_log_id, 50)
        assert b.ingest.Ingest(iter([req]), metadata=b.md, timeout=30).accepted == 50
        wait_for(lambda: set(ids) <= set(query_ids(tb)), "the victim's records to be searchable", 30, 0.2)

        # The victim's Tail, read on a thread for the whole test: it must keep receiving.
        tail = b.query.Tail(
            query_pb2.TailRequest(region="bj", project=tb.project, log_stores=[tb.log_store]), metadata=b.md
        )
        tail_seen = [0]

        def read_tail():
            try:
                for _ in tail:
                    tail_seen[0] += 1
            except grpc.RpcError:
                pass

        reader = threading.Thread(target=read_tail, daemon=True)
        reader.start()
        wait_for(lambda: tail_seen[0] > 0, "the victim's Tail to answer", 30, 0.2)

        pid = srv.proc.pid
        rss_before, hwm_before = vm(pid, "VmRSS"), vm(pid, "VmHWM")
        big = 16 * MIB
        at_cap = 2 * MIB - 64  # just under limits.max_message_bytes: read, then refused undecoded
        kinds = {
            "register 16 MiB, no key": (
                "/flowlog.v1.ResourceService/RegisterResource",
                empty_rules_resource(big),
                None,
                False,
                {"UNAUTHENTICATED"},
            ),
            "register 16 MiB, key": (
                "/flowlog.v1.ResourceService/RegisterResource",
                empty_rules_resource(big),
                KEY_A,
                False,
                {"RESOURCE_EXHAUSTED"},
            ),
            "ingest 16 MiB, no key": (
                "/flowlog.v1.IngestService/Ingest",
                empty_records_ingest(ta.flow_log_id, big),
                None,
                True,
                {"UNAUTHENTICATED"},
            ),
            "ingest 16 MiB, key": (
                "/flowlog.v1.IngestService/Ingest",
                empty_records_ingest(ta.flow_log_id, big),
                KEY_A,
                True,
                {"RESOURCE_EXHAUSTED"},
            ),
            "register 2 MiB, key": (
                "/flowlog.v1.ResourceService/RegisterResource",
                empty_rules_resource(at_cap),
                KEY_A,
                False,
                {"RESOURCE_EXHAUSTED"},
            ),
            # Over 8 streams of one account (16 MiB / 2 MiB), limits.max_ingest_inflight_bytes_per_account.
            "ingest 2 MiB, key": (
                "/flowlog.v1.IngestService/Ingest",
                empty_records_ingest(ta.flow_log_id, at_cap),
                KEY_A,
                True,
                {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"},
            ),
        }
        growth = {}
        for name, (method, payload, key, streaming, expected) in kinds.items():
            floods = [Flood(srv.address, method, payload, key, streaming) for _ in range(CLIENTS)]
            for f in floods:
                f.start()
            # Meanwhile the other tenant's queries are answered (each within its deadline) and
            # its Tail keeps delivering heartbeats.
            answered = 0
            seen = tail_seen[0]
            while any(f.is_alive() for f in floods) or answered == 0:
                assert set(ids) <= set(query_ids(tb, timeout=20)), "the victim's Query lost records"
                answered += 1
            for f in floods:
                f.join(120)
            codes = {c for f in floods for c in f.codes}
            assert codes <= expected and codes & expected, f"{name}: got {codes}, expected {expected}"
            details = {d for f in floods for d in f.details}
            assert all(d for d in details), f"{name}: an error without a message"
            wait_for(lambda: tail_seen[0] > seen, f"the victim's Tail to keep answering ({name})", 20, 0.2)
            growth[name] = round((vm(pid, "VmHWM") - rss_before) / MIB, 1)
            report(
                record_property,
                "hostile_flood",
                kind=name,
                victim_queries=answered,
                hwm_over_rss_before_mb=growth[name],
            )
        hwm_after = vm(pid, "VmHWM")
        report(
            record_property,
            "hostile_flood_total",
            rss_before_mb=round(rss_before / MIB, 1),
            hwm_before_mb=round(hwm_before / MIB, 1),
            hwm_after_mb=round(hwm_after / MIB, 1),
        )
        assert hwm_after - rss_before < RSS_BOUND_MB * MIB, (
            f"{CLIENTS} clients x {ROUNDS} rounds of each kind raised the server's peak RSS by "
            f"{(hwm_after - rss_before) / MIB:.0f} MB (bound {RSS_BOUND_MB} MB): {growth}"
        )
        tail.cancel()
        reader.join(10)
    finally:
        a.close()
        b.close()
