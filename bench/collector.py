"""Collector benchmark: IPFIX flows/s from datagrams on loopback to durable records, in one run
with its references: goflow2 (github.com/netsampler/goflow2, built by `scripts/services fetch
goflow2`) decoding the same datagrams to /dev/null (its protobuf output, `-format bin`: its JSON
formatter cost ~200 µs of CPU per flow here, 15x its decoding), and gRPC Ingest of as many records into the
same server (the pipeline's own rate, which the collector feeds).

    .venv/bin/python -m bench.collector [--flows N] [--quick] [--write-results-md]

The datagrams are made before anything is timed: one IPFIX template and data sets of 30 IPv4 flows
each (a 1,400-byte datagram; the fields softflowd -A milli exports), every flow to one of 4,096
hosts of one registered resource (from ~500 peers), so each flow makes one record. The sender keeps
the receiver's socket queue under half its buffer (read from /proc/net/udp), so nobody is measured losing datagrams;
the kernel's drop counter for the socket is reported and must be 0.

flowlog: from the first datagram sent until the collector's counter of spooled (durable) records
reaches the number of flows (read from <data_dir>/collector-status.json, rewritten every 0.1 s
here). goflow2: until its Prometheus counter of decoded IPFIX data records does. Peak RSS of each
process during its run. Results go to bench/results/collector-<timestamp>.json and, with
--write-results-md, to the "Collector" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from bench.common import API_KEY, ROOT, RssSampler, Server, log, machine, pyspy, rmtree, services_module, start_server
from bench.ingest import grpc_count

BENCH_DIR = Path(__file__).resolve().parent
FLOWS_PER_DATAGRAM = 30
RESOURCE_NET = "10.200.0.0/16"
# softflowd -v 10 -A milli's data template: addresses, ports, protocol, flags, counters, times.
FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (2, 8), (1, 8), (152, 8), (153, 8)]
RECORD = struct.Struct("!4s4sHHBBQQQQ")
MARK_BEGIN, MARK_END = "<!-- collector-bench:begin -->", "<!-- collector-bench:end -->"


def make_datagrams(n_flows: int, seed: int = 17, domain: int = 1) -> list[bytes]:
    """[template datagram] + data datagrams with n_flows flows in all, times in the last minute."""
    rnd = random.Random(seed)
    now_ms = time.time_ns() // 1_000_000
    tmpl_body = struct.pack("!HH", 256, len(FIELDS)) + b"".join(struct.pack("!HH", ie, n) for ie, n in FIELDS)
    out = [_ipfix([(2, tmpl_body)], now_ms // 1000, domain, 0)]
    seq = 0
    for first in range(0, n_flows, FLOWS_PER_DATAGRAM):
        recs = []
        for i in range(first, min(n_flows, first + FLOWS_PER_DATAGRAM)):
            src = bytes([198, 51, rnd.randrange(100, 102), rnd.randrange(1, 255)])
            h = rnd.randrange(4096)  # a VPC's few thousand hosts
            dst = bytes([10, 200, h >> 8, h & 0xFF])
            start = now_ms - 60_000 + rnd.randrange(0, 55_000)
            pkts = rnd.randrange(1, 50)
            recs.append(
                RECORD.pack(
                    src,
                    dst,
                    1024 + i % 60000,
                    rnd.choice((80, 443, 53, 22)),
                    rnd.choice((6, 17)),
                    0x18,
                    pkts,
                    pkts * rnd.randrange(40, 1500),
                    start,
                    start + rnd.randrange(0, 5000),
                )
            )
        seq += len(recs)
        out.append(_ipfix([(256, b"".join(recs))], now_ms // 1000, domain, seq))
    return out


def _ipfix(sets: list[tuple[int, bytes]], export_s: int, domain: int, seq: int) -> bytes:
    body = b"".join(struct.pack("!HH", sid, 4 + len(b)) + b for sid, b in sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_s, seq, domain) + body


def udp_queue(port: int) -> tuple[int, int]:
    """(bytes queued, datagrams dropped) of the UDP socket bound to 127.0.0.1:port (/proc/net/udp)."""
    needle = f":{port:04X} "
    with open("/proc/net/udp") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 12 and parts[1].endswith(needle.strip()) and parts[1].startswith("0100007F"):
                return int(parts[4].split(":")[1], 16), int(parts[12])
    return 0, 0


def send_paced(
    port: int, datagrams: list[bytes], max_queue: int, burst: int = 32, template_seen: Callable[[], bool] | None = None
) -> float:
    """Send every datagram to 127.0.0.1:port, keeping the receiver's queue under max_queue bytes
    (bursts of `burst`); returns the monotonic time of the first send. The first datagram holds the
    template: the rest follow once template_seen() says it was read (goflow2 decodes on several
    workers and drops data sets whose template another worker has not stored yet; flowlog would
    hold them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        send = s.send
        t0 = time.monotonic()
        send(datagrams[0])
        deadline = time.monotonic() + 10
        while template_seen is not None and not template_seen() and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(1, len(datagrams), burst):
            while udp_queue(port)[0] > max_queue:
                time.sleep(0.0005)
            for dg in datagrams[i : i + burst]:
                send(dg)
    return t0


def wait_for(fn: Callable[[], int], target: int, timeout: float, poll: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if fn() >= target:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout}s: {fn()} of {target}")
        time.sleep(poll)


def collector_status(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / "collector-status.json").read_text())["counters"]
    except (OSError, ValueError, KeyError):
        return {}


def run_flowlog(
    workdir: Path, datagrams: list[bytes], n_flows: int, warmup: list[bytes], n_warm: int, ingest_records: int
) -> dict[str, Any]:
    from clients.client import FlowLogClient

    port = _free_udp_port()
    srv: Server = start_server(
        workdir / "flowlog",
        {
            "flow_log_quota": 100,
            "collector": {
                "listen": f"127.0.0.1:{port}",
                "exporters": {"127.0.0.1": "bench"},
                "status_file_seconds": 0.1,
                "receive_buffer_bytes": 32 * 1024 * 1024,
            },
        },
    )
    import psutil

    proc = psutil.Process(srv.proc.pid)
    out: dict[str, Any] = {}
    try:
        with FlowLogClient(srv.address, API_KEY) as c:
            r = c.register_resource(
                type="eip", region="bj", network_id="vpc-bench", name="collector-bench", addresses=[RESOURCE_NET]
            )
            c.create_flow_log(
                region="bj",
                name="collector-bench",
                resource_type="eip",
                resource_id=r.id,
                network_id="vpc-bench",
                traffic_type="all",
                new_log_store="bench/collector",
            )
        wait_for(lambda: collector_status(srv.data_dir).get("flow_logs", 0), 1, 30)
        # keep the kernel's queue under a quarter of the buffer it granted (net.core.rmem_max caps it
        # without CAP_NET_ADMIN)
        max_queue = min(8 * 1024 * 1024, collector_status(srv.data_dir)["receive_buffer_bytes"] // 4)
        out["receive_buffer_bytes"] = collector_status(srv.data_dir)["receive_buffer_bytes"]
        send_paced(port, warmup, max_queue)
        wait_for(lambda: collector_status(srv.data_dir).get("records", 0), n_warm, 120)
        srv.rss.reset()
        cpu0 = sum(proc.cpu_times()[:2])
        with pyspy(srv.proc.pid, "collector"):
            t0 = send_paced(port, datagrams, max_queue)
            t1 = wait_for(lambda: collector_status(srv.data_dir).get("records", 0), n_warm + n_flows, 600)
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            # ...and until the query backend holds every flow (what Ingest's figure measures): the
            # whole pipeline's CPU per flow, the sinks' share included.
            t2 = wait_for(lambda: grpc_count(srv.address, "collector"), n_warm + n_flows, 600, poll=0.05)
        cpu_searchable = sum(proc.cpu_times()[:2]) - cpu0
        st = collector_status(srv.data_dir)
        out = {
            **out,
            "flows": n_flows,
            "seconds": t1 - t0,
            "flows_per_s": n_flows / (t1 - t0),
            "server_cpu_us_per_flow": cpu / n_flows * 1e6,
            "searchable_flows_per_s": n_flows / (t2 - t0),
            "server_cpu_us_per_flow_searchable": cpu_searchable / n_flows * 1e6,
            "peak_rss_mb": round(srv.rss.peak / 2**20, 1),
            "kernel_drops": udp_queue(port)[1],
            "rejected": st.get("rejected"),
            "dropped": st.get("dropped"),
            "unattributed": st.get("unattributed"),
        }
        log(
            f"collector/flowlog: {out['flows_per_s']:,.0f} flows/s to durable records, "
            f"{out['server_cpu_us_per_flow']:.1f} us CPU/flow, peak RSS {out['peak_rss_mb']} MB, "
            f"kernel drops {out['kernel_drops']}; searchable {out['searchable_flows_per_s']:,.0f} flows/s, "
            f"{out['server_cpu_us_per_flow_searchable']:.1f} us CPU/flow"
        )
        if ingest_records:
            out["ingest"] = run_ingest(srv, ingest_records, workdir)
    finally:
        srv.stop()
    return out


def run_ingest(srv: Server, n: int, workdir: Path) -> dict[str, Any]:
    """gRPC Ingest of n generated records into the same server, acknowledged (durable): the rate of
    the pipeline the collector feeds, measured in the same run (bench/ingest.py's client)."""
    from bench import dataset
    from bench.ingest import MSGS_PER_CALL, STREAMS
    from bench.workers import Worker

    worker = Worker("ingest")
    try:
        fls = dataset.create_flow_logs(srv.address, "collector-ingest")
        records = dataset.take(fls, n, dataset.start_for(fls, n))
        fpath = workdir / "ingest.frames"
        dataset.write_frames(fpath, dataset.ingest_messages(records))
        worker.call("load_frames", path=str(fpath))
        r = worker.call("ingest", address=srv.address, streams=STREAMS, msgs_per_call=MSGS_PER_CALL)
        fpath.unlink()
    finally:
        worker.close()
    rate = n / (r["t_acked"] - r["t0"])
    log(f"collector/ingest baseline: gRPC Ingest {rate:,.0f} records/s acknowledged (durable)")
    return {"records": n, "acked_rps": rate, "accepted": r["accepted"]}


def run_goflow2(workdir: Path, datagrams: list[bytes], n_flows: int, warmup: list[bytes], n_warm: int) -> dict:
    fs = services_module()
    binary = fs.fetch("goflow2")
    port, http = _free_udp_port(), fs.free_port()
    logf = workdir / "goflow2.log"
    proc = subprocess.Popen(
        [
            binary,
            "-listen",
            f"netflow://127.0.0.1:{port}?blocking=true",
            "-addr",
            f"127.0.0.1:{http}",
            "-transport",
            "file",
            "-transport.file",
            "/dev/null",
            "-format",
            "bin",
            "-loglevel",
            "warn",
        ],
        stdout=open(logf, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    version = fs.GOFLOW2_VERSION

    def metrics() -> str:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=2).read().decode()
        except OSError:
            return ""

    def decoded() -> int:
        text = metrics()
        if not text:
            return -1
        return sum(
            int(float(m))
            for m in re.findall(
                r'^goflow2_flow_process_nf_flowset_records_total\{[^}]*type="DataFlowSet"[^}]*\} (\S+)$', text, re.M
            )
        )

    def template_of(domain: int) -> Callable[[], bool]:
        return lambda: f'obs_domain_id="{domain}"' in metrics()

    try:
        wait_for(decoded, 0, 30)
        rss = RssSampler(proc.pid)
        # goflow2 keeps the kernel's default receive buffer (~208 KB): a smaller queue, smaller bursts
        send_paced(port, warmup, 48 * 1024, 8, template_of(2))
        wait_for(decoded, n_warm, 120)
        rss.reset()
        t0 = send_paced(port, datagrams, 48 * 1024, 8, template_of(3))
        t1 = wait_for(decoded, n_warm + n_flows, 600)
        rss.stop()
        out = {
            "version": version,
            "flows": n_flows,
            "seconds": t1 - t0,
            "flows_per_s": n_flows / (t1 - t0),
            "peak_rss_mb": round(rss.peak / 2**20, 1),
            "kernel_drops": udp_queue(port)[1],
        }
        log(
            f"collector/goflow2 {version}: {out['flows_per_s']:,.0f} flows/s decoded to /dev/null (bin), "
            f"peak RSS {out['peak_rss_mb']} MB, kernel drops {out['kernel_drops']}"
        )
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decoder_only(datagrams: list[bytes], n_flows: int) -> dict[str, Any]:
    """The pure decoder in this process (no socket, no pipeline): its share of the cost."""
    from server.sources import Decoder

    dec = Decoder()
    t0 = time.perf_counter()
    got = 0
    for dg in datagrams:
        got += len(dec.decode(dg, "127.0.0.1", 0.0))
    t = time.perf_counter() - t0
    assert got == n_flows, (got, n_flows)
    return {"flows_per_s": n_flows / t, "us_per_flow": t / n_flows * 1e6}


def render(res: dict[str, Any]) -> str:
    f, g, i, d = res["flowlog"], res.get("goflow2", {}), res["flowlog"].get("ingest", {}), res["decoder"]
    floor_ok = f["flows_per_s"] >= 100_000
    goal = i.get("acked_rps")
    lines = [
        MARK_BEGIN,
        "",
        f"### Collector: IPFIX from loopback datagrams to durable records ({res['started']})",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['nproc']} CPUs ({res['machine']['cpu_model']}), "
        f"load average at start {res['machine']['loadavg_at_start']}; {f['flows']:,} flows in "
        f"{(f['flows'] + FLOWS_PER_DATAGRAM - 1) // FLOWS_PER_DATAGRAM:,} datagrams of {FLOWS_PER_DATAGRAM} "
        "IPv4 flows, each flow one record; everything below measured in this one run.",
        "",
        "| what | flows/s | peak RSS | notes |",
        "|---|---|---|---|",
        f"| flowlog collector: datagram -> decoded -> attributed -> Ingest checks -> spooled (durable) | "
        f"{f['flows_per_s']:,.0f} | {f['peak_rss_mb']} MB (whole server) | "
        f"{f['server_cpu_us_per_flow']:.1f} µs server CPU per flow; kernel drops {f['kernel_drops']}; "
        f"floor 100,000 flows/s: {'PASS' if floor_ok else 'MISS'} |",
    ]
    if goal:
        lines.append(
            f"| gRPC Ingest into the same server (the pipeline's own rate: the goal) | {goal:,.0f} records/s "
            f"| - | collector at {f['flows_per_s'] / goal * 100:.0f}% of it |"
        )
    if g:
        lines.append(
            f"| goflow2 {g['version']} decoding the same datagrams to /dev/null (protobuf, -format bin) "
            f"| {g['flows_per_s']:,.0f} "
            f"| {g['peak_rss_mb']} MB | reference decoder, no storage; kernel drops {g['kernel_drops']} |"
        )
    lines.append(
        f"| flowlog's decoder alone, in process (server/sources) | {d['flows_per_s']:,.0f} | - | "
        f"{d['us_per_flow']:.2f} µs per flow |"
    )
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_results_md(section: str) -> None:
    path = BENCH_DIR / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    if MARK_BEGIN in text and MARK_END in text:
        a, b = text.index(MARK_BEGIN), text.index(MARK_END) + len(MARK_END)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip() + "\n\n## Collector (NetFlow/IPFIX): `python -m bench.collector`\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.collector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--flows", type=int, default=1_000_000)
    p.add_argument(
        "--ingest-records",
        type=int,
        default=None,
        help="records of the gRPC Ingest baseline (default: as many as --flows; 0 = skip)",
    )
    p.add_argument("--quick", action="store_true", help="100,000 flows")
    p.add_argument("--no-goflow2", action="store_true")
    p.add_argument("--write-results-md", action="store_true")
    a = p.parse_args(argv)
    n = min(a.flows, 100_000) if a.quick else a.flows
    n -= n % FLOWS_PER_DATAGRAM
    ingest_n = n if a.ingest_records is None else a.ingest_records
    n_warm = 30_000
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "command": ".venv/bin/python -m bench.collector " + " ".join(argv or sys.argv[1:]),
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        res["commit"] = commit.stdout.strip()
        res["command"] += f" (at {res['commit']})"
    except OSError:
        pass
    log(f"collector bench: making {n:,} flows of datagrams")
    warm = make_datagrams(n_warm, seed=1, domain=2)
    data = make_datagrams(n, seed=2, domain=3)
    res["decoder"] = decoder_only(data, n)
    workdir = Path(tempfile.mkdtemp(prefix="flowlog-bench-collector-"))
    try:
        res["flowlog"] = run_flowlog(workdir, data, n, warm, n_warm, ingest_n)
        if not a.no_goflow2:
            res["goflow2"] = run_goflow2(workdir, data, n, warm, n_warm)
    finally:
        rmtree(workdir)
    out = BENCH_DIR / "results"
    out.mkdir(exist_ok=True)
    (out / f"collector-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(res, indent=1))
    section = render(res)
    print(section)
    if a.write_results_md:
        write_results_md(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
