"""The record generator (pure) and its scheduler (GeneratorLoop, driven by a fake clock)."""

from __future__ import annotations

import collections
import ipaddress
import threading
from dataclasses import replace

import pytest

from server.core.generator import EPHEMERAL_HI, EPHEMERAL_LO, SYN, default_rules, generate_window
from server.core.model import (
    RECORD_VERSION,
    Action,
    Direction,
    FlowLog,
    FlowLogState,
    FlowRecord,
    LogStatus,
    Resource,
    ResourceType,
    SecurityRule,
    TrafficType,
)
from server.core.records import check_record, with_id
from server.generator_loop import GeneratorLoop
from tests.waiting import DEADLINE_S, finishes, wait_for

MIN = 60_000
T0 = 1_760_000_000_000 - 1_760_000_000_000 % MIN  # a window boundary

RESOURCES = {
    ResourceType.EIP: ("eip-t0000001", ("106.12.1.5",)),
    ResourceType.NAT_GATEWAY: ("nat-t0000001", ("106.12.1.6", "10.1.0.1")),
    ResourceType.IPV6_GATEWAY: ("ip6gw-t000001", ("2400:da00:1::/64",)),
    ResourceType.PEERING_CONNECTION: ("peer-t0000001", ("10.1.8.0/24",)),
    ResourceType.DEDICATED_GATEWAY: ("dcgw-t0000001", ("10.1.16.0/24", "fd01:2:3::/64")),
    ResourceType.SSL_VPN_GATEWAY: ("vpn-t0000001", ("106.12.1.7", "10.1.32.0/24")),
    ResourceType.CSN: ("csn-t0000001", ("10.1.64.0/20",)),
}


def make(
    rt: ResourceType = ResourceType.EIP,
    traffic: TrafficType = TrafficType.ALL,
    *,
    addresses: tuple[str, ...] | None = None,
    rules: tuple[SecurityRule, ...] = (),
    fl_id: str = "fl-test0001",
    create_time_ms: int = 1,
) -> tuple[FlowLog, Resource]:
    rid, addrs = RESOURCES[rt]
    res = Resource(
        rid, rt, "bj", "vpc-test01", "r", addrs if addresses is None else addresses, rules, account_id="acct-1"
    )
    fl = FlowLog(
        fl_id,
        "bj",
        "f",
        rt,
        rid,
        "vpc-test01",
        traffic,
        "proj",
        "store",
        create_time_ms=create_time_ms,
        account_id="acct-1",
    )
    return fl, res


def windows(
    fl: FlowLog, res: Resource, n: int, seed: int = 1, intensity: float = 1.0, window_ms: int = MIN
) -> list[list[FlowRecord]]:
    return [generate_window(fl, res, T0 + i * window_ms, window_ms, seed, intensity) for i in range(n)]


def flat(ws: list[list[FlowRecord]]) -> list[FlowRecord]:
    return [r for w in ws for r in w]


def peer(r: FlowRecord) -> str:
    return r.src_addr if r.direction == Direction.INGRESS else r.dst_addr


def local(r: FlowRecord) -> str:
    return r.dst_addr if r.direction == Direction.INGRESS else r.src_addr


# --- the generator --------------------------------------------------------------------------


def test_deterministic_for_the_same_inputs():
    fl, res = make()
    a = generate_window(fl, res, T0, MIN, 42)
    b = generate_window(fl, res, T0, MIN, 42)
    assert a == b and len(a) > 1
    assert generate_window(fl, res, T0, MIN, 43) != a
    assert generate_window(fl, res, T0 + MIN, MIN, 42) != a


@pytest.mark.parametrize("rt", list(RESOURCES))
def test_every_record_is_valid_and_complete(rt):
    fl, res = make(rt)
    ws = windows(fl, res, 25)
    for i, window in enumerate(ws):
        start, end = T0 + i * MIN, T0 + (i + 1) * MIN
        ids = [r.record_id for r in window]
        assert len(ids) == len(set(ids)), "record ids are unique within a window"
        assert [r.start_time for r in window] == sorted(r.start_time for r in window)
        for r in window:
            assert check_record(r, now_ms=end) is None, r
            assert with_id(r) == r  # record_id is the stable hash of the fields
            assert (r.version, r.account_id, r.flow_log_id, r.region, r.project, r.log_store) == (
                RECORD_VERSION,
                "acct-1",
                fl.id,
                "bj",
                "proj",
                "store",
            )
            assert (r.resource_type, r.resource_id, r.network_id) == (int(rt), res.id, "vpc-test01")
            assert start <= r.start_time <= r.end_time < end
            if r.log_status == LogStatus.NODATA:
                continue
            assert r.log_status == LogStatus.OK
            assert ipaddress.ip_address(r.src_addr).compressed == r.src_addr  # canonical text
            assert ipaddress.ip_address(r.dst_addr).compressed == r.dst_addr
            assert r.packets >= 1 and r.packets * 40 <= r.bytes <= r.packets * 1500
            assert type(r.action) is int and type(r.direction) is int and type(r.protocol) is int
    records = [r for r in flat(ws) if r.log_status == LogStatus.OK]
    assert {r.action for r in records} == {Action.ACCEPT, Action.REJECT}
    assert {r.direction for r in records} == {Direction.INGRESS, Direction.EGRESS}


@pytest.mark.parametrize("rt", list(RESOURCES))
def test_local_side_is_the_resource_and_peers_share_its_family(rt):
    fl, res = make(rt)
    nets = [ipaddress.ip_network(a, strict=False) for a in res.addresses]
    records = [r for r in flat(windows(fl, res, 10)) if r.log_status == LogStatus.OK]
    families = set()
    for r in records:
        lo, pe = ipaddress.ip_address(local(r)), ipaddress.ip_address(peer(r))
        assert any(lo in n for n in nets), r
        assert lo.version == pe.version, r
        assert not any(pe in n for n in nets), "a peer is never one of the resource's own addresses"
        families.add(lo.version)
    assert families == {n.version for n in nets}  # every family the resource has is used


def test_internet_facing_peers_are_public_and_internal_peers_private():
    fl, res = make(ResourceType.EIP)
    for r in flat(windows(fl, res, 10)):
        if r.log_status == LogStatus.OK:
            assert ipaddress.ip_address(peer(r)).is_global, r
    fl6, res6 = make(ResourceType.IPV6_GATEWAY)
    v6 = [r for r in flat(windows(fl6, res6, 10)) if r.log_status == LogStatus.OK]
    assert v6 and all(ipaddress.ip_address(peer(r)).is_global and ":" in peer(r) for r in v6)
    private = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8")]
    for rt in (ResourceType.PEERING_CONNECTION, ResourceType.CSN):
        fl, res = make(rt)
        peers = {ipaddress.ip_address(peer(r)) for r in flat(windows(fl, res, 10)) if r.log_status == LogStatus.OK}
        assert all(any(p in n for n in private) for p in peers)
        assert {next(str(n) for n in private if p in n) for p in peers} == {
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        }


def test_protocols_ports_and_flags_are_plausible():
    fl, res = make(ResourceType.EIP)
    records = [r for r in flat(windows(fl, res, 60)) if r.log_status == LogStatus.OK]
    protocols = collections.Counter(r.protocol for r in records)
    assert protocols.most_common(1)[0][0] == 6 and protocols[17] and protocols[1]
    assert {47, 50, 132} & set(protocols), "uncommon protocols show up now and then"
    service_ports = {r.dst_port for r in records if r.direction == Direction.INGRESS and r.protocol == 6}
    assert {443, 80, 22, 3389, 3306} <= service_ports
    for r in records:
        if r.protocol in (1, 58, 47, 50):
            assert r.src_port == r.dst_port == 0 and r.tcp_flags == 0
        if r.protocol == 6 and r.action == Action.REJECT:
            assert r.tcp_flags == SYN and r.packets <= 3
        if r.protocol != 6:
            assert r.tcp_flags == 0
        if r.protocol == 6 and r.action == Action.ACCEPT:
            assert r.tcp_flags & 0x10  # ACK: a connection happened
        if r.action == Action.REJECT:
            assert r.packets <= 3
        if r.protocol == 6 and r.direction == Direction.EGRESS:
            assert EPHEMERAL_LO <= r.src_port <= EPHEMERAL_HI
        if r.protocol == 1:
            assert 64 * r.packets <= r.bytes <= 84 * r.packets
    sizes = sorted(r.bytes for r in records if r.action == Action.ACCEPT)
    assert sizes[-1] > 50 * sizes[len(sizes) // 2], "flow sizes are heavy-tailed"


def test_icmpv6_on_ipv6_and_both_families_on_dual_stack():
    fl, res = make(ResourceType.IPV6_GATEWAY)
    protocols = {r.protocol for r in flat(windows(fl, res, 20)) if r.log_status == LogStatus.OK}
    assert 58 in protocols and 1 not in protocols
    fl, res = make(ResourceType.EIP, addresses=("106.12.1.5", "2400:da00::10/124"))
    records = [r for r in flat(windows(fl, res, 10)) if r.log_status == LogStatus.OK]
    assert {":" in r.src_addr for r in records} == {True, False}
    assert all((":" in r.src_addr) == (":" in r.dst_addr) for r in records)


def test_top_talkers_repeat_and_scanners_sweep():
    fl, res = make(ResourceType.EIP)
    ws = windows(fl, res, 100)
    talkers = collections.Counter(peer(r) for r in flat(ws) if r.log_status == LogStatus.OK)
    _, count = talkers.most_common(1)[0]
    assert count >= 100, "a top talker shows up in many windows"
    swept = 0
    for w in ws:
        ports_per_peer = collections.defaultdict(set)
        for r in w:
            if r.log_status == LogStatus.OK and r.direction == Direction.INGRESS:
                ports_per_peer[r.src_addr].add(r.dst_port)
        if any(len(p) >= 10 for p in ports_per_peer.values()):
            swept += 1
    assert 5 <= swept <= 60, "scanners sweep ports in some windows, not all"


def test_traffic_type_filters_accept_and_reject():
    rules = default_rules(ResourceType.EIP)
    fl_all, res = make(ResourceType.EIP, TrafficType.ALL, rules=rules)
    fl_allow = replace(fl_all, id="fl-allow001", traffic_type=TrafficType.ALLOW)
    fl_deny = replace(fl_all, id="fl-deny0001", traffic_type=TrafficType.DENY)
    all_ = windows(fl_all, res, 10)
    allow = windows(fl_allow, res, 10)
    deny = windows(fl_deny, res, 10)

    def ok(rs):
        return [r for r in rs if r.log_status == LogStatus.OK]

    assert {r.action for r in ok(flat(allow))} == {Action.ACCEPT}
    assert {r.action for r in ok(flat(deny))} == {Action.REJECT}
    assert {r.action for r in ok(flat(all_))} == {Action.ACCEPT, Action.REJECT}

    # One resource, one traffic: ALL is exactly ALLOW plus DENY.
    def body(rs):
        return sorted(r[10:] for r in ok(rs))

    for a, b, c in zip(all_, allow, deny, strict=True):
        assert body(a) == sorted(body(b) + body(c))


def test_nodata_when_idle():
    fl, res = make()
    for i in range(5):
        [r] = generate_window(fl, res, T0 + i * MIN, MIN, 1, intensity=0)
        assert r.log_status == LogStatus.NODATA
        assert (r.src_addr, r.dst_addr, r.src_port, r.dst_port, r.protocol, r.packets, r.bytes) == (
            "",
            "",
            0,
            0,
            0,
            0,
            0,
        )
        assert (r.action, r.direction, r.tcp_flags) == (Action.UNSPECIFIED, Direction.UNSPECIFIED, 0)
        assert (r.start_time, r.end_time) == (T0 + i * MIN, T0 + (i + 1) * MIN - 1)
        assert check_record(r, now_ms=T0 + (i + 1) * MIN) is None and with_id(r) == r
    # At intensity 1 a few windows are idle, never many.
    ws = windows(fl, res, 300)
    idle = sum(len(w) == 1 and w[0].log_status == LogStatus.NODATA for w in ws)
    assert 0 < idle < 20


def test_nodata_when_the_filter_keeps_nothing():
    accept_all = (SecurityRule(1, Direction.INGRESS, Action.ACCEPT), SecurityRule(1, Direction.EGRESS, Action.ACCEPT))
    fl, res = make(ResourceType.EIP, TrafficType.DENY, rules=accept_all)
    for w in windows(fl, res, 5):
        assert len(w) == 1 and w[0].log_status == LogStatus.NODATA
    reject_all = (SecurityRule(1, Direction.INGRESS, Action.REJECT),)
    fl, res = make(ResourceType.EIP, TrafficType.ALLOW, rules=reject_all)
    for w in windows(fl, res, 5):
        assert len(w) == 1 and w[0].log_status == LogStatus.NODATA


def test_no_usable_address_gives_nodata():
    fl, res = make(addresses=("not-an-ip",))
    [r] = generate_window(fl, res, T0, MIN, 1)
    assert r.log_status == LogStatus.NODATA


def test_volume_scales_with_window_and_intensity():
    fl, res = make(ResourceType.EIP)
    per_min = [len(w) for w in windows(fl, res, 60)]
    assert 20 <= sum(per_min) / len(per_min) <= 300
    big = len(generate_window(fl, res, T0, MIN, 1, intensity=50))
    assert big > 20 * (sum(per_min) / len(per_min))
    five_s = windows(fl, res, 60, window_ms=5_000)
    assert 1 <= sum(len(w) for w in five_s) / 60 <= 30


def test_rejects_bad_windows():
    fl, res = make()
    with pytest.raises(ValueError):
        generate_window(fl, res, T0, 0, 1)
    with pytest.raises(ValueError):
        generate_window(fl, res, 0, MIN, 1)


# --- the scheduler --------------------------------------------------------------------------


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Inventory:
    """What the wiring's list_flow_logs() would return: ACTIVE flow logs only."""

    def __init__(self, *pairs: tuple[FlowLog, Resource]) -> None:
        self.pairs = list(pairs)

    def __call__(self) -> list[tuple[FlowLog, Resource]]:
        return [(fl, res) for fl, res in self.pairs if fl.state == FlowLogState.ACTIVE]


def window_keys(batches: list[list[FlowRecord]]) -> list[tuple[str, int]]:
    return [(b[0].flow_log_id, min(r.start_time for r in b)) for b in batches]


def start_of(batch: list[FlowRecord], window_ms: int) -> int:
    return batch[0].start_time - batch[0].start_time % window_ms


def test_run_once_generates_the_finished_window_once():
    inv = Inventory(make(fl_id="fl-aaaa0001"), make(ResourceType.CSN, fl_id="fl-bbbb0001"))
    batches: list[list[FlowRecord]] = []
    loop = GeneratorLoop(inv, batches.append, window_seconds=60, seed=7, clock=Clock(T0))
    res = loop.run_once(T0 + 5 * MIN + 1_234)
    assert res.windows == 2 and res.records == sum(len(b) for b in batches) and not res.behind
    assert {b[0].flow_log_id for b in batches} == {"fl-aaaa0001", "fl-bbbb0001"}
    for b in batches:
        assert start_of(b, MIN) == T0 + 4 * MIN  # the window that just finished
        assert all(T0 + 4 * MIN <= r.start_time <= r.end_time < T0 + 5 * MIN for r in b)
    assert batches[0] == generate_window(*inv.pairs[0], T0 + 4 * MIN, MIN, 7)

    # Same window again (a spurious wake-up): nothing new.
    assert loop.run_once(T0 + 5 * MIN + 50_000).windows == 0
    assert len(batches) == 2
    # Next boundary: the next window, once.
    assert loop.run_once(T0 + 6 * MIN).windows == 2
    assert {start_of(b, MIN) for b in batches[2:]} == {T0 + 5 * MIN}
    keys = [(b[0].flow_log_id, start_of(b, MIN)) for b in batches]
    assert len(keys) == len(set(keys))


def test_no_backfill_after_restart_or_before_creation():
    inv = Inventory(make(fl_id="fl-aaaa0001"))
    batches: list[list[FlowRecord]] = []
    loop = GeneratorLoop(inv, batches.append, window_seconds=60, seed=1)
    loop.run_once(T0 + 100 * MIN + 5)  # a server that was down for hours: only the latest window
    assert [start_of(b, MIN) for b in batches] == [T0 + 99 * MIN]

    # A flow log created in the middle of window 200 gets nothing for windows before it.
    created = T0 + 200 * MIN + 30_000
    inv.pairs = [make(fl_id="fl-new00001", create_time_ms=created)]
    batches.clear()
    assert loop.run_once(created + 1_000).windows == 0
    assert loop.run_once(T0 + 201 * MIN).windows == 1  # window 200 ended after the creation
    assert [start_of(b, MIN) for b in batches] == [T0 + 200 * MIN]

    # A flow log created exactly on a boundary: the window that ended at that instant is not its own.
    inv.pairs = [make(fl_id="fl-new00002", create_time_ms=T0 + 300 * MIN)]
    assert loop.run_once(T0 + 300 * MIN).windows == 0
    assert loop.run_once(T0 + 301 * MIN).windows == 1


def test_paused_and_removed_flow_logs_stop_at_once():
    a, b = make(fl_id="fl-aaaa0001"), make(ResourceType.NAT_GATEWAY, fl_id="fl-bbbb0001")
    inv = Inventory(a, b)
    batches: list[list[FlowRecord]] = []
    loop = GeneratorLoop(inv, batches.append, window_seconds=60, seed=1)
    loop.run_once(T0 + MIN)
    assert len(batches) == 2
    inv.pairs = [(replace(a[0], state=FlowLogState.PAUSED), a[1]), b]
    loop.run_once(T0 + 2 * MIN)
    assert [x[0].flow_log_id for x in batches[2:]] == ["fl-bbbb0001"]
    inv.pairs = []  # deleted
    loop.run_once(T0 + 3 * MIN)
    assert len(batches) == 3

    # Resumed within the window it was paused in: that window is not generated twice; resumed
    # later: it picks up at the latest window, nothing for the paused stretch.
    inv.pairs = [b]
    loop.run_once(T0 + 10 * MIN)
    inv.pairs = []
    loop.run_once(T0 + 10 * MIN + 10)
    inv.pairs = [b]
    n = len(batches)
    loop.run_once(T0 + 10 * MIN + 20)
    assert len(batches) == n
    inv.pairs = [a]
    loop.run_once(T0 + 20 * MIN)
    assert start_of(batches[-1], MIN) == T0 + 19 * MIN and len(batches) == n + 1


def test_sink_failures_are_retried_without_loss_or_duplicates():
    inv = Inventory(make(fl_id="fl-aaaa0001"))
    delivered: list[list[FlowRecord]] = []
    fail = {"n": 2}

    def sink(records: list[FlowRecord]) -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise ConnectionError("pipeline full")
        delivered.append(records)

    loop = GeneratorLoop(inv, sink, window_seconds=60, seed=3)
    first = loop.run_once(T0 + MIN)
    assert first.failures == 1 and first.windows == 0 and not delivered
    assert loop.run_once(T0 + MIN + 1_000).failures == 1  # retried within the same window
    ok = loop.run_once(T0 + MIN + 2_000)  # retried again and delivered
    assert ok.windows == 1 and [start_of(b, MIN) for b in delivered] == [T0]
    assert delivered[0] == generate_window(*inv.pairs[0], T0, MIN, 3)

    # The sink down across two boundaries: the owed windows come one per tick, in order.
    fail["n"] = 3
    for t in (T0 + 2 * MIN, T0 + 3 * MIN, T0 + 4 * MIN):
        assert loop.run_once(t).failures == 1
    r1 = loop.run_once(T0 + 4 * MIN + 10)
    assert r1.windows == 1 and r1.behind
    assert loop.run_once(T0 + 4 * MIN + 20).behind
    assert not loop.run_once(T0 + 4 * MIN + 30).behind
    assert loop.run_once(T0 + 4 * MIN + 40).windows == 0
    starts = [start_of(b, MIN) for b in delivered]
    assert starts == [T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN]


def test_listing_failure_is_survived():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("metadata store busy")
        return [make()]

    batches: list = []
    loop = GeneratorLoop(flaky, batches.append, window_seconds=60, seed=1)
    assert loop.run_once(T0 + MIN).failures == 1
    assert loop.run_once(T0 + MIN + 5).windows == 1


def test_thread_generates_and_stops_promptly():
    inv = Inventory(make(fl_id="fl-aaaa0001"))
    got = threading.Event()
    batches: list = []

    def sink(records):
        batches.append(records)
        got.set()

    loop = GeneratorLoop(inv, sink, window_seconds=0.2)
    assert isinstance(loop.seed, int)  # seed None: random per process
    loop.start()
    try:
        assert got.wait(DEADLINE_S), "the thread generates the finished window"
        assert loop.running
    finally:
        assert finishes(loop.stop, what="GeneratorLoop.stop()")
    assert not loop.running
    for b in batches:
        assert all(check_record(r, now_ms=r.end_time + 1) is None for r in b)


def test_stop_returns_promptly_while_waiting_for_a_long_window():
    loop = GeneratorLoop(Inventory(), lambda records: None, window_seconds=3600, seed=1)
    loop.start()
    wait_for(lambda: loop.running, "the generator thread to run")
    assert finishes(loop.stop, what="stop() while a 3600 s window is pending")
