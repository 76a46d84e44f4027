"""`flowlog-server`: run the flowlog gRPC server.

Stops cleanly on SIGTERM/SIGINT: stops taking requests (in-flight calls get a short grace),
stops the generator, delivers what was acknowledged to the backends (bounded), exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from server.config import ConfigError, load

log = logging.getLogger("flowlog")


# Attributes every LogRecord has; anything else on a record came from `extra=` and is context.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class ContextFormatter(logging.Formatter):
    """The usual one-line format plus the record's `extra` fields as ` key=value` pairs. The
    server logs its context (which sink, which error, which batch) as `extra`; without this the
    plain format drops it and a log line says "sink write failed" without saying which or why."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [(k, v) for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")]
        if not extra:
            return line
        return line + "".join(f" {k}={v}" if isinstance(v, (int, float)) else f" {k}={str(v)!r}" for k, v in extra)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="flowlog-server", description="Self-hosted VPC flow-log service (gRPC).")
    p.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:50051; env FLOWLOG_LISTEN)")
    p.add_argument("--data-dir", help="folder for the embedded default's files (default ./data; env FLOWLOG_DATA_DIR)")
    p.add_argument(
        "--http-listen",
        help="HOST:PORT for the web console and the JSON/HTTP API (off unless set; env FLOWLOG_HTTP_LISTEN)",
    )
    p.add_argument("--config", help="YAML settings file: backends, API keys, quota, generator (see README)")
    p.add_argument(
        "--collector-listen",
        metavar="HOST:PORT",
        help="UDP port for NetFlow v5/v9/IPFIX exporters (config collector.listen; default off)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument(
        "--es-migrate",
        action="store_true",
        help="copy the Elasticsearch indices of the per-LogStore layout into the shared day indices, delete "
        "them, and exit (README: Elasticsearch: shared day indices)",
    )
    return p.parse_args(argv)


async def serve(cfg) -> int:
    from server.api.server import GrpcServer
    from server.app import CollectorBindError, DataDirInUse, build_app

    try:
        app = build_app(cfg)
    except DataDirInUse as e:
        log.error("%s", e)
        return 1
    except ConfigError as e:  # e.g. postgres.dsn names a server that cannot be reached
        log.error("%s", e)
        return 2
    try:
        server = GrpcServer(app)
    except RuntimeError as e:
        app.stop(timeout=1)
        log.error("cannot listen on %s: %s (is another server using the port?)", cfg.listen, e)
        return 1
    if server.port == 0:
        app.stop(timeout=1)
        log.error("cannot listen on %s (is another server using the port?)", cfg.listen)
        return 1
    console = None
    if cfg.http.listen:
        from server.api.server import SERVICE_NAMES
        from server.http.console import HttpConsole

        console = HttpConsole(cfg, server, SERVICE_NAMES, getattr(app, "auth", None))
    try:
        app.start(port=server.port)
    except CollectorBindError as e:
        app.stop(timeout=1)
        if console is not None:
            await console.stop()
        log.error("%s", e)
        return 1
    await server.start()
    if console is not None:
        try:
            await console.start()
        except OSError as e:
            log.error("cannot serve the web console on %s: %s (is another server using the port?)", cfg.http.listen, e)
            await server.stop(grace=1.0)
            await asyncio.get_running_loop().run_in_executor(None, app.stop, 15.0)
            return 1
        log.info(
            "web console on http%s://%s:%d/",
            "s" if cfg.tls.cert_file else "",
            cfg.http.listen.rpartition(":")[0].strip("[]") or "127.0.0.1",
            console.port,
        )
    log.info(
        "flowlog serving on %s (query backend: %s, archive: %s, auth: %s%s)",
        cfg.listen,
        cfg.query_backend,
        cfg.archive_backend,
        "API keys" if cfg.api_keys else "none, local account, loopback only",
        ", demo inventory loaded" if cfg.demo else "",
    )
    if app.collector is not None:
        log.info("NetFlow v5/v9/IPFIX collector on udp %s:%d", app.collector.host, app.collector.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls and acknowledged records")
    if console is not None:
        await console.stop()
    await server.stop(grace=5.0)
    await loop.run_in_executor(None, app.stop, 15.0)
    log.info("stopped")
    return 0


def configure_gc() -> None:
    """Fewer garbage collections: the record pipeline keeps hundreds of thousands of FlowRecords
    alive (spool cache, sink batches, Tail queues) and NamedTuples stay tracked by the cyclic GC,
    so with CPython's default thresholds (700, 10, 10) collections that walk all of them ran
    thousands of times per million records ingested: ~30% of the server's CPU (bench/RESULTS.md).
    Reference counting frees records as before; only the search for reference cycles (which the
    record path does not create) runs less often. Objects alive after start-up are frozen out of
    the collections."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def configure_arrow() -> None:
    """One pyarrow compute thread. By default pyarrow runs a kernel on every core: an archive
    range (50,000 records sorted, cast and written as Parquet every few seconds) then took both
    cores in bursts of 50-200 ms, and the Tail streams waiting behind it saw it in their p99
    (ack -> delivery with 10 tails: 54-124 ms in runs of bench/tail.py; 23-30 ms with one
    thread in the same runs; full benchmark runs still see rarer spikes of other, unknown
    origin). Query and ingest throughput did not change: their pyarrow work is small per call.

    And the C library's allocator instead of pyarrow's bundled mimalloc (unless
    ARROW_DEFAULT_MEMORY_POOL says otherwise): the spool keeps each batch's Arrow table and the
    sinks concatenate and sort them, and mimalloc kept what they freed. Peak RSS over 2M ingested
    records (`python -m bench --only ingest --backends embedded,s3`): embedded 530 -> 460-463 MB,
    S3 archive 537 -> 476-477 MB, throughput within run-to-run noise."""
    import os

    import pyarrow

    pyarrow.set_cpu_count(1)
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def configure_malloc() -> None:
    """Big allocations straight from the OS and back to it when freed (glibc's mallopt
    M_MMAP_THRESHOLD = 1 MiB; this also turns off glibc's habit of raising that threshold after
    each big free). A request message is up to limits.max_message_bytes; with glibc's default,
    after the first few big frees, later messages were carved out of the heaps of whichever
    threads received them and stayed there: 20 clients sending 4 MiB messages three times
    raised the peak RSS by 360-580 MB instead of their ~80 MB in flight (issue 15,
    tests/reliability/test_hostile_load.py)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: its own defaults
        log.debug("mallopt not available")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict = {
        "listen": args.listen,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
        "collector": {"listen": args.collector_listen} if args.collector_listen else None,
    }
    if args.http_listen is not None:
        overrides["http"] = {"listen": args.http_listen}
    try:
        cfg = load(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"flowlog-server: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO), handlers=[handler])
    try:
        from server.app import check_listen_address
        from server.http.console import check_http_listen

        check_listen_address(cfg)
        check_http_listen(cfg)
        from server.app import REPLICA_DIRECTORIES, advertise_address

        if cfg.metadata_backend in REPLICA_DIRECTORIES:
            advertise_address(cfg, None)  # a wildcard --listen needs replica.advertise
    except ConfigError as e:
        print(f"flowlog-server: {e}", file=sys.stderr)
        return 2
    if args.es_migrate:
        return es_migrate(cfg)
    configure_gc()
    configure_malloc()
    configure_arrow()
    return asyncio.run(serve(cfg))


def es_migrate(cfg) -> int:
    """--es-migrate: the first Elasticsearch layout into the shared one (backends/elasticsearch)."""
    if cfg.query_backend != "elasticsearch":
        print("flowlog-server: --es-migrate needs query_backend: elasticsearch", file=sys.stderr)
        return 2
    from backends.elasticsearch.records import ElasticsearchRecordStore

    store = ElasticsearchRecordStore(cfg.elasticsearch)
    try:
        indices, records = store.migrate_first_layout()
    except Exception as e:  # noqa: BLE001 - report and fail; running again resumes
        log.error("migration stopped: %s (running it again resumes)", e)
        return 1
    finally:
        store.close()
    log.info("migrated %d index(es) of the per-LogStore layout, %d record(s)", indices, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
