"""Real exporters no one here wrote, feeding a real server's collector over loopback UDP:

- softflowd reading a pcap this test writes (-r), exporting NetFlow v5, NetFlow v9 and IPFIX. For
  IPFIX, softflowd 1.1.0 stamps flowStart/EndSysUpTime 2^32 ms (~50 days) late when reading a file;
  with -a (adjust the times to the file) it does not, and -A sec|milli|micro|nano export absolute
  times (flowStart/EndSeconds, -Milliseconds, -Microseconds, -Nanoseconds): each is a test.
- pmacct's pmacctd with the nfprobe plugin, capturing live on a veth pair whose other end is in a
  network namespace the test makes, where tcpreplay replays the pcap; NetFlow v9 and IPFIX.
  (pmacctd reading the file itself, -I, exported every flow twice here: the file is played again
  when pcap_savefile_wait keeps the daemon up, and without it the daemon exits before exporting.)

Each test checks that the records Query returns for the flow log are exactly the flows of the pcap
(addresses, ports, protocol, packets, bytes, direction, action), computed by tests/collector/
pcap.py from the packets it wrote. The exporters are installed by `scripts/services fetch
exporters` (Debian packages), which `make test` runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.collector import pcap
from tests.collector.conftest import records, resource_with_flow_logs, wait_records
from tests.collector.test_collector_server import wait_inventory
from tests.waiting import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import flowlog_services  # noqa: E402

ACCEPT, INGRESS, EGRESS = 1, 1, 2


def tool(command: str) -> str:
    path = flowlog_services.exporter_path(command)
    if path is None:
        pytest.fail(
            f"{command} is not installed: run `scripts/services fetch exporters` (apt-get install -y "
            f"{flowlog_services.EXPORTER_PACKAGES[command]}); `make test` does it"
        )
    return path


def expected_records(flows: list[pcap.Expected], networks: list[str]) -> list[tuple]:
    """Each direction of each conversation, once per side the resource holds (INGRESS when it
    holds the destination, EGRESS when it holds the source)."""
    nets = [ipaddress.ip_network(n) for n in networks]

    def held(a: str) -> bool:
        return any(ipaddress.ip_address(a) in n for n in nets)

    out = []
    for e in flows:
        if held(e.dst):
            out.append((*e.key(), ACCEPT, INGRESS))
        if held(e.src):
            out.append((*e.key(), ACCEPT, EGRESS))
    return sorted(out)


def record_key(r) -> tuple:
    return (r.src_addr, r.dst_addr, r.src_port, r.dst_port, r.protocol, r.packets, r.bytes, r.action, r.direction)


def check(
    client,
    store: str,
    flows: list[pcap.Expected],
    networks: list[str],
    *,
    window_ms: tuple[int, int] | None,
    slack_ms: int = 1000,
) -> None:
    """The store holds exactly the expected records; times: the conversation's first and last packet
    (within slack_ms: exporters round) or, for live captures, inside window_ms."""
    want = expected_records(flows, networks)
    got = wait_records(client, store, len(want))
    assert sorted(map(record_key, got)) == want
    by_key = {e.key(): e for e in flows}
    for r in got:
        assert r.sampling_rate in (0, 1)  # unsampled: the exporter says nothing, or 1
        start, end = r.start_time.ToMilliseconds(), r.end_time.ToMilliseconds()
        assert start <= end
        if window_ms is None:
            e = by_key[record_key(r)[:7]]
            assert abs(start - e.first_ms) <= slack_ms and abs(end - e.last_ms) <= slack_ms, (r, e)
        else:
            assert window_ms[0] - slack_ms <= start and end <= window_ms[1] + slack_ms, (r, window_ms)


def new_target(collector, n: int) -> tuple:
    client = collector.client()
    networks = pcap.local_networks(n)
    _, (store,) = resource_with_flow_logs(client, networks, ["all"])
    wait_inventory(collector)
    return client, networks, store


def _stat(text: str, name: str) -> int:
    m = re.search(rf"{name}: (\d+)", text)
    return int(m.group(1)) if m else -1


def run_softflowd(tmp: Path, pcap_path: Path, frames: int, port: int, version: str, extra: list[str]) -> str:
    """softflowd -r: it reads the file between two commands on its control socket (softflowctl),
    and exports every flow when told to shut down. So: ask for statistics until it has read all
    `frames`, then shut it down."""
    ctl, log = tmp / f"sf-{version}.ctl", tmp / f"sf-{version}.log"
    proc = subprocess.Popen(
        [
            tool("softflowd"),
            "-d",
            "-r",
            str(pcap_path),
            "-n",
            f"127.0.0.1:{port}",
            "-v",
            version,
            "-p",
            str(tmp / "sf.pid"),
            "-c",
            str(ctl),
            *extra,
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def read_the_file() -> bool:
            out = subprocess.run([tool("softflowctl"), "-c", str(ctl), "statistics"], capture_output=True, text=True)
            if out.returncode == 0 and (
                _stat(out.stdout, "Packets processed")
                + _stat(out.stdout, "Ignored packets")
                + max(0, _stat(out.stdout, "Packets non-sampled"))
                >= frames
            ):
                return True
            if proc.poll() == 0:  # it read the whole file, exported and shut down by itself
                return True
            assert proc.poll() is None, log.read_text(errors="replace")
            return False

        wait_for(read_the_file, "softflowd to read the whole pcap", 20, step=0.1)
        # it may have shut down by itself at the end of the file ("Shutting down after pcap EOF")
        subprocess.run([tool("softflowctl"), "-c", str(ctl), "shutdown"], capture_output=True)
        assert proc.wait(30) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text(errors="replace")


@pytest.mark.parametrize(
    "version,extra,n,ipv6",
    [
        ("5", [], 101, False),  # v5: IPv4 only; times relative to sysUpTime in the header
        ("9", [], 102, True),  # v9: FIRST/LAST_SWITCHED relative to the header's sysUpTime
        ("10", ["-a"], 103, True),  # IPFIX: flowStart/EndSysUpTime + systemInitTimeMilliseconds (options)
        ("10", ["-A", "sec"], 104, True),
        ("10", ["-A", "milli"], 105, True),
        ("10", ["-A", "micro"], 106, True),
        ("10", ["-A", "nano"], 107, True),
    ],
)
def test_softflowd_from_a_pcap(collector, tmp_path, version, extra, n, ipv6):
    client, networks, store = new_target(collector, n)
    t0 = time.time() - 120
    flows = pcap.write(str(tmp_path / "flows.pcap"), pcap.standard_flows(n), t0)
    if not ipv6:
        flows = [e for e in flows if ":" not in e.src]
    frames = sum(e.packets for e in flows)
    if not ipv6:
        frames = sum(len(c.payloads) for c in pcap.standard_flows(n))
    run_softflowd(tmp_path, tmp_path / "flows.pcap", frames, collector.udp_port, version, extra)
    # -A sec: whole seconds, truncated: up to 1 s early
    check(client, store, flows, networks, window_ms=None, slack_ms=1001)
    client.close()


def test_softflowd_sampling_rate(collector, tmp_path):
    """softflowd -s 2 samples one packet in two and says so: every record carries sampling_rate 2,
    and is one of the pcap's flows with at most its packets and bytes."""
    n = 108
    client, networks, store = new_target(collector, n)
    flows = pcap.write(str(tmp_path / "flows.pcap"), pcap.standard_flows(n), time.time() - 120)
    run_softflowd(
        tmp_path,
        tmp_path / "flows.pcap",
        sum(e.packets for e in flows),
        collector.udp_port,
        "10",
        ["-A", "milli", "-s", "2"],
    )
    by_tuple = {e.key()[:5]: e for e in flows}
    got = wait_records(client, store, 1)
    for r in got:
        e = by_tuple[record_key(r)[:5]]
        assert r.sampling_rate == 2
        assert 1 <= r.packets <= e.packets and r.bytes <= e.octets
    client.close()


@pytest.fixture(scope="module")
def veth():
    """A network namespace with one end of a veth pair; the other end stays here for capturing.
    Frames replayed into the namespace end arrive on ours and go nowhere else: their MAC address is
    not this interface's, and the interface has no addresses (IPv6 off: no router solicitations)."""
    if os.geteuid() != 0:
        pytest.fail("the pmacct tests need root (ip netns, a veth pair); make test runs as root here")
    tag = f"{os.getpid() % 100000}"
    ns, here, there = f"flowlog-t{tag}", f"flt{tag}a", f"flt{tag}b"
    ip = ["ip"]
    subprocess.run(ip + ["netns", "add", ns], check=True)
    try:
        subprocess.run(ip + ["link", "add", here, "type", "veth", "peer", "name", there], check=True)
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{here}.disable_ipv6=1"], check=False)
        subprocess.run(ip + ["link", "set", there, "netns", ns], check=True)
        subprocess.run(ip + ["link", "set", here, "up"], check=True)
        subprocess.run(
            ip + ["netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{there}.disable_ipv6=1"], check=False
        )
        subprocess.run(ip + ["netns", "exec", ns, "ip", "link", "set", there, "up"], check=True)
        yield ns, here, there
    finally:
        subprocess.run(ip + ["link", "del", here], capture_output=True)
        subprocess.run(ip + ["netns", "del", ns], capture_output=True)


@pytest.mark.parametrize("version,n", [("9", 111), ("10", 112)])
def test_pmacct_nfprobe_live_on_a_veth(collector, tmp_path, veth, version, n):
    ns, here, there = veth
    client, networks, store = new_target(collector, n)
    flows = pcap.write(str(tmp_path / "flows.pcap"), pcap.standard_flows(n), time.time() - 60)
    conf = tmp_path / "pmacctd.conf"
    conf.write_text(
        "\n".join(
            [
                "daemonize: false",
                f"pcap_interface: {here}",
                f"pcap_filter: net 10.{n}.0.0/24 or net 2001:db8:{n:x}::/64",
                "plugins: nfprobe",
                f"nfprobe_receiver: 127.0.0.1:{collector.udp_port}",
                f"nfprobe_version: {version}",
                # expired 5 s after their last packet (a loaded machine may stall the replay for a second or two)
                "nfprobe_timeouts: tcp=5:tcp.rst=5:tcp.fin=5:udp=5:icmp=5:general=5:maxlife=60:expint=1",
                "aggregate: src_host, dst_host, src_port, dst_port, proto, tos",
            ]
        )
        + "\n"
    )
    log = tmp_path / "pmacctd.log"
    proc = subprocess.Popen(
        [tool("pmacctd"), "-f", str(conf)], stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def capturing() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            return "link type is" in log.read_text(errors="replace")

        wait_for(capturing, "pmacctd to start capturing", 20, step=0.1)
        t_start = time.time_ns() // 1_000_000
        subprocess.run(
            ["ip", "netns", "exec", ns, tool("tcpreplay"), "-q", "-i", there, str(tmp_path / "flows.pcap")],
            check=True,
            capture_output=True,
        )
        t_end = time.time_ns() // 1_000_000
        check(client, store, flows, networks, window_ms=(t_start, t_end))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        client.close()
    assert len(records(collector.client(), store)) == len(expected_records(flows, networks))
