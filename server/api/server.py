"""The grpc.aio server: our services, reflection, health (overall and per storage backend)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from flowlog.v1 import flow_log_pb2, ingest_pb2, log_store_pb2, query_pb2, resource_pb2
from server.api.gate import Gate, register_open_service
from server.api.services import (
    FlowLogServicer,
    IngestServicer,
    LogStoreServicer,
    QueryServicer,
    ResourceServicer,
    Runner,
)

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
# The NetFlow/IPFIX collector, when --collector-listen is set; its detail (the counters) is logged.
COLLECTOR_HEALTH = "flowlog.collector"


def _handlers(service, servicer, gate: Gate) -> grpc.GenericRpcHandler:
    """The service's method handlers: the API key checked before the request is read, requests
    bounded and parsed by us (server.api.gate), so that bytes that are not a valid message are
    INVALID_ARGUMENT naming the message type."""
    handlers = {}
    for method in service.methods:
        req_cls = GetMessageClass(method.input_type)
        resp_cls = GetMessageClass(method.output_type)
        impl = getattr(servicer, method.name)
        handlers[method.name] = gate.handler(method, req_cls, impl, _serializer(resp_cls))
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _serializer(resp_cls):
    """Messages are serialised by protobuf; a handler may also yield bytes it has already
    encoded as that message (the streaming record batches, see server.api.wire)."""
    serialize = resp_cls.SerializeToString

    def ser(message) -> bytes:
        return message if type(message) is bytes else serialize(message)

    return ser


def servicers(app: "App") -> list[tuple[Any, str, object]]:
    """(proto module, service name, servicer) of each of our services: each servicer gets the
    use cases it serves and nothing else."""
    runner = Runner(app.auth, app.executor, app.stream_executor, app.query_executor)
    return [
        (resource_pb2, "ResourceService", ResourceServicer(runner, app.service)),
        (log_store_pb2, "LogStoreService", LogStoreServicer(runner, app.service)),
        (flow_log_pb2, "FlowLogService", FlowLogServicer(runner, app.service)),
        (ingest_pb2, "IngestService", IngestServicer(runner, app.ingest)),
        (query_pb2, "QueryService", QueryServicer(runner, app.query, app.tail, app.aggregate)),
    ]


class GrpcServer:
    def __init__(self, app: "App") -> None:
        self.app = app
        cfg = app.config
        options = [
            ("grpc.max_receive_message_length", cfg.limits.max_message_bytes),
            # Responses are ours (a Tail batch of 10,000 stored records may pass 4 MiB).
            ("grpc.max_send_message_length", max(cfg.limits.max_message_bytes, 16 * 1024 * 1024)),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
            # No BDP probing on what the server receives: the per-stream receive window stays at
            # HTTP/2's 64 KiB unless a handler is reading a message. With probing it grew to
            # megabytes per stream on loopback, and the transport buffered that much of each
            # request before a handler (the API key check) or the size cap could refuse it:
            # 20 clients sending 16 MiB took +100 MB of RSS with it, +2 MB without (issue 15).
            ("grpc.http2.bdp_probe", 0),
        ]
        self.server = grpc.aio.server(options=options)
        gate = Gate(app)
        for module, name, servicer in servicers(app):
            self.server.add_generic_rpc_handlers((_handlers(module.DESCRIPTOR.services_by_name[name], servicer, gate),))
        names_extra: list[str] = []
        if app.replica_secret:  # replicas: ReplicaService, behind the replicas' shared secret
            from flowlog.v1 import replica_pb2
            from server.api.replica import SERVICE_NAME, ReplicaGate, ReplicaServicer

            servicer = ReplicaServicer(
                Runner(app.auth, app.executor, app.stream_executor, app.query_executor),
                app.pipeline,
                app.limits.tail_streams,
            )
            service = replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"]
            self.server.add_generic_rpc_handlers((_handlers(service, servicer, ReplicaGate(app, app.replica_secret)),))
            names_extra.append(SERVICE_NAME)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        # Health and reflection need no API key; their requests are bounded like ours.
        register_open_service(gate, self.server, lambda s: health_pb2_grpc.add_HealthServicer_to_server(self.health, s))
        names = SERVICE_NAMES + names_extra
        names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        register_open_service(
            gate,
            self.server,
            lambda s: reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                reflection.aio.ReflectionServicer(names), s
            ),
        )
        self.port = self._bind(cfg.listen)
        self._health_task: asyncio.Task | None = None
        self._last_ok: dict[str, bool] = {}

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
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
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
                names = dict(BACKEND_HEALTH)
                if "collector" in states:
                    names["collector"] = COLLECTOR_HEALTH
                for role, name in names.items():
                    ok, detail = states.get(role, (True, ""))
                    if ok != self._last_ok.get(role, True):
                        # gRPC health carries no detail: the log says why, once per change.
                        if ok:
                            log.info("%s SERVING again", name)
                        else:
                            log.warning("%s NOT_SERVING: %s", name, detail or "unhealthy")
                    self._last_ok[role] = ok
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
