"""AWS import throughput: `flowlog import --format aws` of a gzip file of N lines (1M by default),
generated here in AWS's default (v2) format under its header line, into a real flowlog-server
(embedded default), from a separate client process, until the records are durable (the
command's exit: every Ingest call answered) and searchable (the query backend's count equals N).

References of the same run, on the same file:
  baseline     gzip decode + split of every line (what any reader of the file pays at least)
  parse only   the importer's reader (clients.importers) turning the lines into FlowRecords, no I/O
Peak RSS: the client process (its rusage, exact) and the server (sampled every 50 ms).

`python -m bench.import_aws --lines 200000` runs it alone; `python -m bench --only import` runs it
as a phase of the suite (with --records lines).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import API_KEY, REGION, ROOT, log, machine, rmtree, start_server

HEADER = (
    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
)
RESOURCE_CIDR = "10.0.0.0/16"


def write_flow_log_file(
    path: Path, lines: int, *, seed: int = 17, end_s: int | None = None, direction: bool = False
) -> int:
    """A gzip file of `lines` AWS v2 lines (plus the header), 1-minute windows over the hour
    before `end_s`: hosts of 10.0.0.0/16 talking to a few thousand peers, ~8% REJECT, a NODATA
    line now and then. Returns the number of data lines (= records the import should store).
    `direction` adds AWS's flow-direction field (a custom format)."""
    rnd = random.Random(seed)
    end_s = end_s or int(time.time()) - 120
    start_s = end_s - 3600
    hosts = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(500)]
    peers = [
        f"{rnd.choice((52, 54, 198, 203))}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        for _ in range(5000)
    ]
    services = [(6, 443), (6, 80), (6, 22), (17, 53), (6, 3389), (17, 123), (1, 0)]
    header = HEADER + (" flow-direction" if direction else "")
    with gzip.open(path, "wt", compresslevel=6) as f:
        f.write(header + "\n")
        out = []
        last_nodata = -1  # (several in one window would be one record: the same record id)
        icmp_seen: set[tuple] = set()
        for i in range(lines):
            window = start_s + (i * 3600 // lines) // 60 * 60
            if i % 5000 == 4999 and window != last_nodata:  # one NODATA line per window, as AWS writes them
                last_nodata = window
                row = f"2 123456789012 eni-0a1b2c3d4e5f67890 - - - - - - - {window} {window + 60} - NODATA"
                out.append(row + (" -" if direction else ""))
            else:
                host, peer = hosts[i % 500], peers[rnd.randrange(5000)]
                proto, port = services[rnd.randrange(len(services))]
                ephemeral = 32768 + (i * 7919) % 28000
                inbound = rnd.random() < 0.5
                src, dst, sport, dport = (peer, host, ephemeral, port) if inbound else (host, peer, ephemeral, port)
                if proto == 1:  # no ports: two ICMP lines of a window may be one flow (one record id)
                    key = (src, dst, inbound, window, first := window + rnd.randrange(50))
                    if key in icmp_seen:
                        proto, port = 6, 443
                        sport, dport = ephemeral, port
                    else:
                        icmp_seen.add(key)
                        sport = dport = 0
                else:
                    first = window + rnd.randrange(50)
                packets = 1 + rnd.randrange(200)
                nbytes = packets * (40 + rnd.randrange(1400))
                action = "REJECT" if rnd.random() < 0.08 else "ACCEPT"
                row = (
                    f"2 123456789012 eni-0a1b2c3d4e5f67890 {src} {dst} {sport} {dport} {proto} {packets} {nbytes} "
                    f"{first} {window + 60} {action} OK"
                )
                out.append(row + ((" ingress" if inbound else " egress") if direction else ""))
            if len(out) >= 10_000:
                f.write("\n".join(out) + "\n")
                out = []
        if out:
            f.write("\n".join(out) + "\n")
    return lines


def baseline_decode_split(path: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds, lines): gzip decode and split every line, nothing else."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line.split()
            n += 1
    return time.perf_counter() - t0, time.process_time() - c0, n - 1


def parse_only(path: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds, records): the importer's reader over the file, records made and dropped."""
    from clients.importers import sources

    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for item in sources.read(str(path), "aws"):
        if type(item) is tuple:
            n += 1
    return time.perf_counter() - t0, time.process_time() - c0, n


def _count(address: str, project: str, store: str) -> int:
    from clients.client import FlowLogClient

    now = time.time()
    with FlowLogClient(address, API_KEY) as c:
        q = c.query(
            region=REGION,
            project=project,
            log_stores=[store],
            start="2000-01-01T00:00:00Z",
            end=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
            limit=1,
        )
        list(q)
        return int(q.summary.matched) if q.summary is not None else -1


def run(lines: int, workdir: Path, *, direction: bool = False) -> dict[str, Any]:
    from clients.client import FlowLogClient

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "aws-flows.log.gz"
    log(f"import: writing {lines:,} AWS lines to {path}")
    expected = write_flow_log_file(path, lines, direction=direction)
    size = path.stat().st_size
    base_s, base_cpu, base_n = baseline_decode_split(path)
    parse_s, parse_cpu, parse_n = parse_only(path)
    log(f"import: baseline decode+split {base_n / base_s:,.0f} lines/s; parse only {parse_n / parse_s:,.0f} rec/s")

    server = start_server(workdir / "server", {"query_backend": "embedded", "archive_backend": "embedded"})
    try:
        with FlowLogClient(server.address, API_KEY) as c:
            resource = c.register_resource(
                type="eip", region=REGION, network_id="vpc-bench", name="aws-import", addresses=[RESOURCE_CIDR]
            )
            fl = c.create_flow_log(
                region=REGION,
                name="aws-import",
                resource_type="eip",
                resource_id=resource.id,
                network_id="vpc-bench",
                traffic_type="all",
                new_log_store="bench/aws-import",
            )
        assert server.rss is not None
        server.rss.reset()
        import psutil

        server_proc = psutil.Process(server.proc.pid)
        cpu0 = sum(server_proc.cpu_times()[:2])
        cmd = [
            sys.executable,
            "-m",
            "clients.cli",
            "--server",
            server.address,
            "--api-key",
            API_KEY,
            "--json",
            "import",
            "--flow-log",
            fl.id,
            "--format",
            "aws",
            str(path),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLOG_")}
        t0 = time.perf_counter()
        out_path, err_path = workdir / "import.out", workdir / "import.err"
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:  # files: a full pipe would block it
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out_f, stderr=err_f)
        # wait4 gives this child's own rusage: its exact peak RSS and CPU time.
        _, status, usage = os.wait4(proc.pid, 0)
        durable_s = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"flowlog import exited with {proc.returncode}: {err_path.read_text()[-2000:]}")
        summary = json.loads(out_path.read_text())
        while (stored := _count(server.address, "bench", "aws-import")) < expected:
            if time.perf_counter() - t0 > durable_s + 300:
                raise RuntimeError(f"only {stored:,} of {expected:,} records searchable after 300 s")
            time.sleep(0.1)
        searchable_s = time.perf_counter() - t0
        server_peak = server.rss.peak
        server_cpu = sum(server_proc.cpu_times()[:2]) - cpu0
    finally:
        server.stop()
    res = {
        "lines": expected,
        "file_bytes": size,
        "accepted": summary["accepted"],
        "rejected": summary["rejected"],
        "import_s": round(durable_s, 3),
        "import_rps": expected / durable_s,
        "searchable_s": round(searchable_s, 3),
        "searchable_rps": expected / searchable_s,
        "baseline_s": round(base_s, 3),
        "baseline_rps": base_n / base_s,
        "parse_s": round(parse_s, 3),
        "parse_rps": parse_n / parse_s,
        # CPU time per line: what a shared machine's load does not distort (wall rates above do).
        "baseline_cpu_us": base_cpu / base_n * 1e6,
        "parse_cpu_us": parse_cpu / parse_n * 1e6,
        "client_peak_rss_mb": usage.ru_maxrss / 1024,
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "server_peak_rss_mb": server_peak / 2**20,
        "server_cpu_s": round(server_cpu, 2),
        "format": "v2 + flow-direction" if direction else "default v2",
    }
    res["ratio"] = res["import_rps"] / res["baseline_rps"]
    res["client_cpu_us"] = res["client_cpu_s"] / expected * 1e6
    res["server_cpu_us"] = res["server_cpu_s"] / expected * 1e6
    return res


def render(r: dict[str, Any]) -> list[str]:
    """The RESULTS.md section of one run."""
    lines = [
        f"## AWS import (`flowlog import --format aws`, one gzip file of {r['lines']:,} lines in AWS's "
        f"{r['format']} format, {r['file_bytes'] / 2**20:.1f} MiB, into the embedded default)",
        "",
        "Import = the command's run from start to exit (every Ingest call answered: records durable), client in its "
        "own process; searchable = until the query backend counts every line. Baseline = gzip decode + split of the "
        "same file in the same run; parse only = the importer's reader making FlowRecords with no server.",
        "",
        "| import rec/s | searchable rec/s | baseline decode+split lines/s | import/baseline | parse only rec/s "
        "| client peak RSS MB | client CPU s | server peak RSS MB | server CPU s | accepted / rejected |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['import_rps']:,.0f} | {r['searchable_rps']:,.0f} | {r['baseline_rps']:,.0f} | {r['ratio'] * 100:.0f}% "
        f"| {r['parse_rps']:,.0f} | {r['client_peak_rss_mb']:.0f} | {r['client_cpu_s']:.1f} "
        f"| {r['server_peak_rss_mb']:.0f} | {r.get('server_cpu_s', float('nan')):.1f} "
        f"| {r['accepted']:,} / {r['rejected']:,} |",
        "",
        "CPU time per line (what the machine's other load does not change much): baseline decode + split "
        f"{r.get('baseline_cpu_us', float('nan')):.1f} µs, the reader alone "
        f"{r.get('parse_cpu_us', float('nan')):.1f} µs, "
        f"the import's client process {r.get('client_cpu_us', float('nan')):.1f} µs (start-up included), "
        f"the server {r.get('server_cpu_us', float('nan')):.1f} µs.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.import_aws", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lines", type=int, default=1_000_000, help="lines of the generated file (default 1,000,000)")
    p.add_argument("--direction", action="store_true", help="write AWS's flow-direction field too (custom format)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    a = p.parse_args(argv)
    os.chdir(ROOT)
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="flowlog-bench-import-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        r = run(a.lines, workdir, direction=a.direction)
    finally:
        if not a.workdir:
            rmtree(workdir)
    m = machine()
    print(f"# {started}: python -m bench.import_aws {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, load average at start "
        f"{m['loadavg_at_start']}\n"
    )
    print("\n".join(render(r)))
    print(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
