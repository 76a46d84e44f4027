"""The grpc.aio server: our services, reflection, health (overall and per storage backend)."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flowlog.v1 import (flow_log_pb2, flow_log_pb2_grpc, ingest_pb2, ingest_pb2_grpc, log_store_pb2,
                        log_store_pb2_grpc, query_pb2, query_pb2_grpc, resource_pb2, resource_pb2_grpc)
from server.api.services import (FlowLogServicer, IngestServicer, LogStoreServicer, QueryServicer,
                                 ResourceServicer)

if TYPE_CHECKING:
    from server.app import App

log = logging.getLogger("flowlog.server")

SERVICE_NAMES = [
    resource_pb2.DESCRIPTOR.services_by_name["ResourceService"].full_name,
    log_store_pb2.DESCRIPTOR.services_by_name["LogStoreService"].full_name,
    flow_log_pb2.DESCRIPTOR.services_by_name["FlowLogService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
]
# Health names for the storage backends, next to the gRPC service names.
BACKEND_HEALTH = {"query": "flowlog.backend.query", "archive": "flowlog.backend.archive"}


class GrpcServer:
    def __init__(self, app: "App") -> None:
        self.app = app
        cfg = app.config
        options = [
            ("grpc.max_receive_message_length", cfg.limits.max_message_bytes),
            ("grpc.max_send_message_length", cfg.limits.max_message_bytes),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ]
        self.server = grpc.aio.server(options=options)
        resource_pb2_grpc.add_ResourceServiceServicer_to_server(ResourceServicer(app), self.server)
        log_store_pb2_grpc.add_LogStoreServiceServicer_to_server(LogStoreServicer(app), self.server)
        flow_log_pb2_grpc.add_FlowLogServiceServicer_to_server(FlowLogServicer(app), self.server)
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(app), self.server)
        query_pb2_grpc.add_QueryServiceServicer_to_server(QueryServicer(app), self.server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            SERVICE_NAMES + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server)
        self.port = self._bind(cfg.listen)
        self._health_task: asyncio.Task | None = None

    def _bind(self, listen: str) -> int:
        tls = self.app.config.tls
        if tls.cert_file:
            with open(tls.cert_file, "rb") as f:
                cert = f.read()
            with open(tls.key_file, "rb") as f:
                key = f.read()
            ca = None
            if tls.client_ca_file:
                with open(tls.client_ca_file, "rb") as f:
                    ca = f.read()
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                require_client_auth=ca is not None)
            return self.server.add_secure_port(listen, creds)
        return self.server.add_insecure_port(listen)

    async def _set(self, name: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        result = self.health.set(name, status)
        if asyncio.iscoroutine(result):
            await result

    async def _watch_health(self) -> None:
        """Health follows the backends' real readiness, checked every 2 seconds."""
        while True:
            try:
                states = await asyncio.get_running_loop().run_in_executor(self.app.executor, self.app.health)
                for role, name in BACKEND_HEALTH.items():
                    ok = states.get(role, (True, ""))[0]
                    await self._set(name, ok)
                overall = all(ok for ok, _ in states.values())
                await self._set("", overall)
                for svc in SERVICE_NAMES:
                    await self._set(svc, True)
            except Exception:  # noqa: BLE001 - health must keep running
                log.exception("health check failed")
            await asyncio.sleep(2.0)

    async def start(self) -> None:
        for svc in SERVICE_NAMES:
            await self._set(svc, True)
        await self._set("", True)
        await self.server.start()
        self._health_task = asyncio.create_task(self._watch_health())

    async def stop(self, grace: float) -> None:
        if self._health_task:
            self._health_task.cancel()
        if hasattr(self.health, "enter_graceful_shutdown"):
            result = self.health.enter_graceful_shutdown()
            if asyncio.iscoroutine(result):
                await result
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()
