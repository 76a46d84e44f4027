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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="flowlog-server", description="Self-hosted VPC flow-log service (gRPC).")
    p.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:50051; env FLOWLOG_LISTEN)")
    p.add_argument("--data-dir", help="folder for the embedded default's files (default ./data; env FLOWLOG_DATA_DIR)")
    p.add_argument("--config", help="YAML settings file: backends, API keys, quota, generator (see README)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return p.parse_args(argv)


async def serve(cfg) -> int:
    from server.api.server import GrpcServer
    from server.app import build_app

    app = build_app(cfg)
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
    app.start()
    await server.start()
    log.info("flowlog serving on %s (query backend: %s, archive: %s, auth: %s%s)", cfg.listen, cfg.query_backend,
             cfg.archive_backend, "API keys" if cfg.api_keys else "none, local account, loopback only",
             ", demo inventory loaded" if cfg.demo else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls and acknowledged records")
    await server.stop(grace=5.0)
    await loop.run_in_executor(None, app.stop, 15.0)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"listen": args.listen, "data_dir": args.data_dir, "log_level": args.log_level}
    try:
        cfg = load(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"flowlog-server: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from server.app import check_listen_address
        check_listen_address(cfg)
    except ConfigError as e:
        print(f"flowlog-server: {e}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
