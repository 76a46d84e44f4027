"""Wiring of the web console: a private Unix-socket port on the gRPC server, a channel to it, and
the HTTP gateway on `http.listen` (off unless set)."""

from __future__ import annotations

import ipaddress
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from server.config import Config, ConfigError
from server.http.gateway import Gateway, server_ssl_context, service_methods

if TYPE_CHECKING:
    from server.api.server import GrpcServer

log = logging.getLogger("flowlog.http")

WEB_DIR = Path(__file__).resolve().parents[2] / "clients" / "web"
STATIC_DIR = WEB_DIR / "static"
# The charting library, installed by `make web` (npm ci from clients/web/package-lock.json).
VENDOR_FILES = {"chart.umd.min.js": WEB_DIR / "node_modules" / "chart.js" / "dist" / "chart.umd.min.js"}


def check_http_listen(cfg: Config) -> None:
    """http.listen is HOST:PORT; without API keys it must be loopback (like `listen`)."""
    listen = cfg.http.listen
    if not listen:
        return
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"http.listen must be HOST:PORT (e.g. 127.0.0.1:8080), not {listen!r}")
    host = host.strip("[]")
    if cfg.api_keys or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"refusing to serve the web console on {listen} without API keys: anyone who can reach "
            "it would act as the local account. Configure api_keys or use 127.0.0.1"
        )


class HttpConsole:
    """Created before the gRPC server starts (it adds the private port), started after it."""

    def __init__(
        self, cfg: Config, grpc_server: GrpcServer, service_names: list[str], authenticator: Any = None
    ) -> None:
        self.cfg = cfg
        # A fresh folder only this user can enter (mkdtemp makes it 0700): the socket in it is the
        # gRPC server without TLS or client certificates, so nobody else may reach it. API keys
        # still apply on it: every call carries the browser's Authorization header.
        self._dir = tempfile.mkdtemp(prefix="flowlog-http-")
        self.target = f"unix:{self._dir}/grpc.sock"
        if not grpc_server.server.add_insecure_port(self.target):
            raise RuntimeError(f"cannot open the console's private gRPC socket {self.target}")
        limit = cfg.limits.max_message_bytes
        self.channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        )
        self.gateway = Gateway(
            self.channel, service_methods(service_names), STATIC_DIR, VENDOR_FILES, limit, authenticator
        )
        self.port = 0

    async def start(self) -> int:
        tls = self.cfg.tls
        ctx = server_ssl_context(tls.cert_file, tls.key_file, tls.client_ca_file) if tls.cert_file else None
        self.port = await self.gateway.start(self.cfg.http.listen, ctx)
        if not VENDOR_FILES["chart.umd.min.js"].is_file():
            log.warning("the console's charting library is not built: run `make web`; charts will not show")
        return self.port

    async def stop(self) -> None:
        await self.gateway.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
