"""The web console's analysis page over a large LogStore: `python -m bench.console [--records N]`.

Loads N generated records (default 1M) straight into the embedded store (as the query phase
does), starts a server with the web console, and measures in Debian's chromium (Playwright):
opening the analysis page on the whole dataset until every panel has drawn (navigation, the six
Aggregate calls through the JSON/HTTP gateway, Chart.js). Baseline, same run: the same six
Aggregate requests sent at once over gRPC from Python, i.e. what the page's time would be with
no HTTP, JSON and drawing on top. Target (issue 18): the page renders within 1 s.

Prints the figures and writes bench/results/console-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.common import API_KEY, MD, PROJECT, REGION, free_port, log, machine, median, rmtree, start_server

TARGET_S = 1.0
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
INTERVALS = [10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 86400]  # app.js pickInterval


def page_requests(log_store: str, lo_ms: int, hi_ms: int) -> list[dict]:
    """The Aggregate requests the analysis page sends (app.js PAGES.analysis), as proto fields."""
    span_s = (hi_ms - lo_ms) / 1000
    interval = next((s for s in INTERVALS if span_s / s <= 90), 86400)
    scope = {"region": REGION, "project": PROJECT, "log_stores": [log_store]}
    m = "sum(bytes)"
    return [
        {**scope, "group_by": ["action"], "interval_s": interval, "metrics": [m], "limit": 10},
        {**scope, "group_by": ["src_addr"], "metrics": [m, "count"], "limit": 10},
        {**scope, "group_by": ["dst_addr"], "metrics": [m, "count"], "limit": 10},
        {
            **scope,
            "filter": "action = REJECT",
            "group_by": ["rule_kind", "rule_id"],
            "metrics": ["count", m],
            "limit": 10,
        },
        {
            **scope,
            "group_by": ["src_addr"],
            "metrics": ["count_distinct(dst_port)", "count_distinct(dst_addr)", "count"],
            "order_by": "-count_distinct(dst_port)",
            "limit": 10,
        },
        {
            **scope,
            "filter": "NOT protocol IN (tcp, udp, icmp, icmpv6)",
            "group_by": ["protocol", "src_addr", "dst_addr"],
            "metrics": ["count", m],
            "limit": 20,
        },
    ]


def grpc_baseline(
    address: str, reqs: list[dict], lo_ms: int, hi_ms: int, reps: int, each: list | None = None
) -> list[float]:
    import grpc
    from google.protobuf import duration_pb2, timestamp_pb2

    from flowlog.v1 import query_pb2, query_pb2_grpc

    def build(d: dict):
        d = dict(d)
        interval = d.pop("interval_s", 0)
        req = query_pb2.AggregateRequest(
            **d,
            start_time=timestamp_pb2.Timestamp(seconds=lo_ms // 1000),
            end_time=timestamp_pb2.Timestamp(seconds=hi_ms // 1000 + 1),
        )
        if interval:
            req.interval.CopyFrom(duration_pb2.Duration(seconds=interval))
        return req

    built = [build(r) for r in reqs]
    out = []
    with grpc.insecure_channel(address) as ch, ThreadPoolExecutor(len(built)) as pool:
        stub = query_pb2_grpc.QueryServiceStub(ch)

        def one(req):
            try:
                stub.Aggregate(req, metadata=MD, timeout=120)
            except grpc.RpcError as e:  # e.g. rule fields a build does not have: the page shows the error too
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise

        for _ in range(reps):
            t0 = time.perf_counter()
            list(pool.map(one, built))
            out.append(time.perf_counter() - t0)
        if each is not None:  # each request alone, one after the other: which panel costs what
            for req in built:
                t0 = time.perf_counter()
                one(req)
                each.append(round(time.perf_counter() - t0, 3))
    return out


def browser_runs(
    base: str, log_store: str, lo_ms: int, hi_ms: int, reps: int, screenshot: str | None = None
) -> list[tuple[float, float]]:
    """(seconds from navigation to every panel drawn, the page's own render time) per run."""
    from playwright.sync_api import sync_playwright

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    url = (
        f"{base}/#/analysis?region={REGION}&project={PROJECT}&stores={log_store}&from={iso(lo_ms)}"
        f"&to={iso(hi_ms + 1000)}&metric=bytes"
    )
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("FLOWLOG_CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        ctx.add_init_script(f"sessionStorage.setItem('flowlog.apiKey', {json.dumps(API_KEY)})")
        page = ctx.new_page()
        page.goto(base + "/")  # browser, fonts and the scripts warm (a user's second view)
        page.wait_for_selector("header nav")
        for _ in range(reps):
            page.goto("about:blank")
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("main[data-ready='1']", timeout=120_000)
            total = time.perf_counter() - t0
            render = float(page.get_attribute("main", "data-render-ms") or "nan") / 1000
            out.append((total, render))
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from bench import dataset
    from bench.query import build_embedded

    ap = argparse.ArgumentParser(
        prog="python -m bench.console", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--screenshot", metavar="PNG", help="save the analysis page of the last run (docs/ uses one)")
    a = ap.parse_args(argv)
    wd = Path(a.workdir or tempfile.mkdtemp(prefix="flowlog-bench-console-"))
    data = wd / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_store = "console"
    srv = None
    try:
        total, lo, hi = build_embedded(data / "records.duckdb", log_store, a.records, wd)
        http_port = free_port()
        srv = start_server(
            wd,
            {"query_backend": "embedded", "archive_backend": "none", "http": {"listen": f"127.0.0.1:{http_port}"}},
            data_dir=data,
        )
        dataset.create_log_store(srv.address, log_store)
        reqs = page_requests(log_store, lo, hi)
        grpc_baseline(srv.address, reqs, lo, hi, 1)  # warm DuckDB's caches for both sides alike
        each: list[float] = []
        base_runs = grpc_baseline(srv.address, reqs, lo, hi, a.reps, each)
        runs = browser_runs(f"http://127.0.0.1:{http_port}", log_store, lo, hi, a.reps, a.screenshot)
    finally:
        if srv is not None:
            srv.stop()
        if not a.workdir:
            rmtree(wd)
    page = [t for t, _ in runs]
    res = {
        "records": total,
        "span_h": round((hi - lo) / 3_600_000, 2),
        "reps": a.reps,
        "page_s": {"p50": median(page), "max": max(page)},
        "page_render_s": {"p50": median([r for _, r in runs])},
        "grpc_baseline_s": {"p50": median(base_runs), "max": max(base_runs)},
        "grpc_each_alone_s": dict(
            zip(["timeline", "talkers", "destinations", "rejected_by_rule", "scanners", "uncommon_protocols"], each)
        ),
        "target_s": TARGET_S,
        "pass": median(page) < TARGET_S,
        "machine": machine(),
    }
    log(
        f"analysis page over {total:,} records ({res['span_h']} h): p50 {median(page) * 1000:.0f} ms, "
        f"max {max(page) * 1000:.0f} ms (render in page p50 {res['page_render_s']['p50'] * 1000:.0f} ms); "
        f"the same 6 Aggregate calls over gRPC p50 {median(base_runs) * 1000:.0f} ms; target < 1 s: "
        f"{'PASS' if res['pass'] else 'MISS'}"
    )
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"console-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
