"""Generator throughput: records/s the record generator produces AND stores, with many active flow
logs, through the server's own GeneratorLoop -> Pipeline (durable spool) -> embedded DuckDB store
(and the local-folder archive, as in the default config), in this process. Baseline: the same
windows generated without storing them.

The loop is driven with a clock that advances one window per tick, so every tick generates one
window for every flow log (what the server does once per window_seconds, here back to back).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import dataset
from bench.common import log, median, rmtree

WINDOW_S = 60.0


def _loop(flow_logs, sink, intensity: float, start_ms: int):
    from server.generator_loop import GeneratorLoop

    clock = {"now": start_ms}
    loop = GeneratorLoop(
        lambda: flow_logs,
        sink,
        window_seconds=WINDOW_S,
        seed=dataset.SEED,
        intensity=intensity,
        clock=lambda: clock["now"],
    )
    return loop, clock


def _drive(flow_logs, sink, intensity: float, n_records: int, start_ms: int) -> tuple[int, float]:
    loop, clock = _loop(flow_logs, sink, intensity, start_ms)
    wms = loop.window_ms
    total = 0
    t0 = time.monotonic()
    while total < n_records:
        clock["now"] += wms
        res = loop.run_once(clock["now"])
        if res.failures:
            raise RuntimeError("generator sink failed")
        total += res.records
    return total, time.monotonic() - t0


def run(n_records: int, repeats: int, workdir: Path, n_flow_logs: int = 10, intensity: float = 100.0) -> dict[str, Any]:
    import gc

    try:
        from server.main import configure_gc
    except ImportError:  # a server version without it: CPython's defaults

        def configure_gc() -> None:
            pass

    log(f"generator: {n_flow_logs} flow logs x intensity {intensity}, {n_records:,} records x {repeats}")
    # This phase runs the server's pipeline in this process: with the server's GC settings.
    saved = gc.get_threshold()
    configure_gc()
    try:
        return _run(n_records, repeats, workdir, n_flow_logs, intensity)
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()


def _run(n_records: int, repeats: int, workdir: Path, n_flow_logs: int, intensity: float) -> dict[str, Any]:
    from backends.embedded.objects import LocalObjectStore
    from backends.embedded.records import EmbeddedRecordStore
    from server.archive import Archive
    from server.pipeline import Pipeline

    flow_logs = dataset.local_flow_logs("gen", n_flow_logs, region_mix=True)
    runs = []
    for i in range(repeats):
        start = (time.time_ns() // 1_000_000 - 30 * 86_400_000) + i * 86_400_000
        # Baseline: generation only.
        produced = {"n": 0}

        def count(batch) -> None:
            produced["n"] += len(batch)

        n_base, dt_base = _drive(flow_logs, count, intensity, n_records, start)
        # Generation + durable spool + embedded store (+ local archive), until searchable.
        d = workdir / f"gen-{i}"
        store = EmbeddedRecordStore(d / "records.duckdb", memory_limit="1GB")
        pipe = Pipeline(
            d, store, Archive(LocalObjectStore(d / "archive")), cursor_secret=b"x" * 32, archive_max_age_s=2.0
        )
        pipe.start()
        last = {"seq": 0}

        def sink(batch) -> None:
            last["seq"] = pipe.submit(batch)

        try:
            t0 = time.monotonic()
            n, _ = _drive(flow_logs, sink, intensity, n_records, start + 7 * 86_400_000)
            if not pipe.wait_delivered(last["seq"], 600, sinks=["query"]):
                raise RuntimeError("generator records not delivered to the query store in time")
            dt = time.monotonic() - t0
        finally:
            pipe.stop(timeout=60)
            store.close()
            rmtree(d)
        r = {"baseline_rps": n_base / dt_base, "pipeline_rps": n / dt, "records": n}
        r["ratio"] = r["pipeline_rps"] / r["baseline_rps"]
        log(
            f"generator run {i + 1}: generate+store {r['pipeline_rps']:,.0f} rec/s, generate only "
            f"{r['baseline_rps']:,.0f} rec/s, ratio {r['ratio']:.2f}"
        )
        runs.append(r)
    return {
        "flow_logs": n_flow_logs,
        "intensity": intensity,
        "runs": runs,
        "pipeline_rps": median([r["pipeline_rps"] for r in runs]),
        "baseline_rps": median([r["baseline_rps"] for r in runs]),
        "ratio": median([r["ratio"] for r in runs]),
    }
