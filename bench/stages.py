"""Per-record CPU of each step of the ingest path, one step at a time in this process:
`python -m bench.stages [--records N]`.

Not a target check: a map of where the time of an ingested record goes, for whoever works on
the ingest path next. The first line is the compiled fast path (server/native/_fastingest.c), which
takes every benchmark batch: it replaces the Python steps after it up to the Arrow table. Each step runs
over the same realistic records as the ingest benchmark
(bench.dataset), single-threaded, with the server's GC thresholds and pyarrow settings; the
best of three runs is printed, in µs of process CPU per record. Together with the server CPU
per record of `python -m bench --only ingest` it tells what is left outside these steps (gRPC,
DuckDB's insert, SQLite, threads handing over the GIL).
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any, Callable


def _best(name: str, fn: Callable[[], Any], n: int, setup: Callable[[], None] | None = None) -> Any:
    best, out = float("inf"), None
    for _ in range(3):
        if setup is not None:
            setup()
        gc.collect()
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    print(f"{name:52s} {best / n * 1e6:6.2f} µs/record", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.stages", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--records", type=int, default=100_000)
    n = p.parse_args(argv).records

    from server.main import configure_arrow, configure_gc

    configure_gc()  # before duckdb is imported, as in the server (frozen duckdb objects are reported at exit)
    configure_arrow()

    import pyarrow.compute as pc

    from backends.embedded import records as embedded
    from bench import dataset
    from flowlog.v1 import ingest_pb2
    from server import archive
    from server.api.services import _raw_columns
    from server.core import columns
    from server.core.ingest import accept_columns, stored_head
    from server.core.model import record_columns
    from server.core.records import canonical_address
    from server.core.service import now_ms
    from server.pipeline.spool import encode_columns

    fls = dataset.local_flow_logs("bench")
    frames = dataset.ingest_messages(dataset.take(fls, n, dataset.start_for(fls, n)))
    flow_logs = {fl.id: fl for fl, _ in fls}
    print(f"{n:,} records in {len(frames)} IngestRequests of <= 1,000, best of 3 runs per step")

    from server.core.model import FlowRecord
    from server.native import fastpath
    from server.pipeline.spool import encode_marshalled

    if fastpath.compiled is not None:
        fast = fastpath.compiled

        def compiled() -> list:
            out = []
            for f in frames:
                fid, _ = fast.split(f)
                head = stored_head(flow_logs[fid])
                got = fast.accept(f, head, FlowRecord, now_ms(), True)
                if got is None:
                    raise SystemExit("a benchmark batch left the compiled path")
                rows, marshalled, buffers = got
                out.append((rows, encode_marshalled(marshalled), columns.table_of_buffers(len(rows), head, buffers)))
            return out

        _best("compiled path: bytes -> records + payload + table", compiled, n)
    else:
        print("(server/native/_fastingest.c is not built: the server takes the Python steps below)")
    print("The Python path, taken by batches the compiled path leaves to it (or all, without it):")
    msgs = _best(
        "parse IngestRequest (protobuf, C)", lambda: [ingest_pb2.IngestRequest.FromString(f) for f in frames], n
    )
    raw = _best("protobuf fields -> columns (_raw_columns)", lambda: [_raw_columns(m.records) for m in msgs], n)
    oks = _best(
        "validate + record ids (accept_columns, cold caches)",
        lambda: [accept_columns(flow_logs[m.flow_log_id], c, 0, now_ms())[0] for m, c in zip(msgs, raw)],
        n,
        setup=canonical_address.cache_clear,
    )
    cols = _best("spool: rows -> columns", lambda: [record_columns(o) for o in oks], n)
    _best("spool: payload (marshal + zstd-1)", lambda: [encode_columns(record_columns(o)) for o in oks], n)
    tables = _best("spool: Arrow table per batch", lambda: [columns.table_of_columns(c) for c in cols], n)
    _best(
        "query store: address blobs (20k-record writes)",
        lambda: [embedded._with_blobs(columns.concat(tables[i : i + 20])) for i in range(0, len(tables), 20)],
        n,
        setup=embedded._blob.cache_clear,
    )

    def archive_ranges() -> list[bytes]:
        out = []
        for i in range(0, len(tables), 50):
            rng = columns.concat(tables[i : i + 50])
            hours = pc.divide(rng.column("start_time"), archive.HOUR_MS)
            out += [archive.encode_table(rng.filter(pc.equal(hours, h))) for h in pc.unique(hours).to_pylist()]
        return out

    _best("archive: split by hour + Parquet (50k-record ranges)", archive_ranges, n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
