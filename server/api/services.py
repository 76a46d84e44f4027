"""The gRPC servicers: thin translations between messages and server.core use cases.

Blocking work (SQLite, DuckDB, Elasticsearch, fsync) runs on the app's thread pool so the
asyncio loop keeps serving many long streams (Tail) at once.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable

from google.protobuf import empty_pb2

from flowlog.v1 import (flow_log_pb2, flow_log_pb2_grpc, ingest_pb2, ingest_pb2_grpc, log_store_pb2,
                        log_store_pb2_grpc, query_pb2, query_pb2_grpc, resource_pb2, resource_pb2_grpc)
from server.api import convert
from server.api.errors import handle_errors
from server.core import filter as flt
from server.core import ingest as ingest_core
from server.core import query as query_core
from server.core.errors import InvalidArgument
from server.core.model import LogStoreKey
from server.core.service import CreateFlowLog, ExistingLogStoreSpec, NewLogStoreSpec, now_ms

if TYPE_CHECKING:
    from server.app import App

log = logging.getLogger("flowlog.api")
_EMPTY = empty_pb2.Empty()


class _Base:
    def __init__(self, app: "App") -> None:
        self.app = app

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.app.executor, fn, *args)

    async def wait(self, fn: Callable[..., Any], *args: Any) -> Any:
        """For calls that block waiting on events (Tail), on their own pool so they never starve
        short requests of threads."""
        return await asyncio.get_running_loop().run_in_executor(self.app.stream_executor, fn, *args)

    def account(self, context) -> str:
        return self.app.auth.account(context)


class ResourceServicer(_Base, resource_pb2_grpc.ResourceServiceServicer):
    @handle_errors
    async def RegisterResource(self, request, context):
        r = await self.run(self.app.service.register_resource, self.account(context),
                           convert.resource_from_pb(request.resource))
        return convert.resource_to_pb(r)

    @handle_errors
    async def GetResource(self, request, context):
        return convert.resource_to_pb(await self.run(self.app.service.get_resource, self.account(context), request.id))

    @handle_errors
    async def ListResources(self, request, context):
        account = self.account(context)
        page = await self.run(lambda: self.app.service.list_resources(
            account, region=request.region, type=request.type, network_id=request.network_id,
            page_size=request.page_size, page_token=request.page_token))
        return resource_pb2.ListResourcesResponse(resources=[convert.resource_to_pb(r) for r in page.items],
                                                  next_page_token=page.next_page_token)

    @handle_errors
    async def DeleteResource(self, request, context):
        await self.run(self.app.service.delete_resource, self.account(context), request.id)
        return _EMPTY


def _key(request) -> LogStoreKey:
    return LogStoreKey(request.region, request.project, request.name)


class LogStoreServicer(_Base, log_store_pb2_grpc.LogStoreServiceServicer):
    @handle_errors
    async def CreateLogStore(self, request, context):
        s = await self.run(self.app.service.create_log_store, self.account(context),
                           convert.log_store_from_pb(request.log_store))
        return convert.log_store_to_pb(s)

    @handle_errors
    async def GetLogStore(self, request, context):
        return convert.log_store_to_pb(await self.run(self.app.service.get_log_store, self.account(context), _key(request)))

    @handle_errors
    async def ListLogStores(self, request, context):
        account = self.account(context)
        page = await self.run(lambda: self.app.service.list_log_stores(
            account, region=request.region, project=request.project, page_size=request.page_size,
            page_token=request.page_token))
        return log_store_pb2.ListLogStoresResponse(log_stores=[convert.log_store_to_pb(s) for s in page.items],
                                                   next_page_token=page.next_page_token)

    @handle_errors
    async def UpdateLogStore(self, request, context):
        s = await self.run(self.app.service.update_log_store, self.account(context),
                           convert.log_store_from_pb(request.log_store), list(request.update_mask.paths))
        return convert.log_store_to_pb(s)

    @handle_errors
    async def DeleteLogStore(self, request, context):
        await self.run(self.app.service.delete_log_store, self.account(context), _key(request))
        return _EMPTY


class FlowLogServicer(_Base, flow_log_pb2_grpc.FlowLogServiceServicer):
    @handle_errors
    async def CreateFlowLog(self, request, context):
        which = request.WhichOneof("destination_choice")
        dest: NewLogStoreSpec | ExistingLogStoreSpec | None = None
        if which == "new_log_store":
            n = request.new_log_store
            dest = NewLogStoreSpec(n.project, n.name, n.retention_days, n.region)
        elif which == "existing_log_store":
            e = request.existing_log_store
            dest = ExistingLogStoreSpec(e.project, e.name, e.region)
        req = CreateFlowLog(region=request.region, name=request.name, resource_type=request.resource_type,
                            resource_id=request.resource_id, network_id=request.network_id,
                            traffic_type=request.traffic_type, destination=dest, description=request.description,
                            client_token=request.client_token, state=request.state)
        return convert.flow_log_to_pb(await self.run(self.app.service.create_flow_log, self.account(context), req))

    @handle_errors
    async def GetFlowLog(self, request, context):
        return convert.flow_log_to_pb(await self.run(self.app.service.get_flow_log, self.account(context), request.id))

    @handle_errors
    async def ListFlowLogs(self, request, context):
        account = self.account(context)
        page = await self.run(lambda: self.app.service.list_flow_logs(
            account, region=request.region, resource_id=request.resource_id, state=request.state,
            page_size=request.page_size, page_token=request.page_token))
        return flow_log_pb2.ListFlowLogsResponse(flow_logs=[convert.flow_log_to_pb(f) for f in page.items],
                                                 next_page_token=page.next_page_token)

    @handle_errors
    async def UpdateFlowLog(self, request, context):
        f = request.flow_log
        changes = {"name": f.name, "description": f.description, "traffic_type": f.traffic_type, "state": f.state}
        updated = await self.run(self.app.service.update_flow_log, self.account(context), f.id, changes,
                                 list(request.update_mask.paths))
        return convert.flow_log_to_pb(updated)

    @handle_errors
    async def DeleteFlowLog(self, request, context):
        await self.run(self.app.service.delete_flow_log, self.account(context), request.id)
        return _EMPTY


MAX_REJECTION_DETAILS = 1000


def _raw_rows(records) -> list[tuple]:
    """Proto records -> plain tuples in the order server.core.ingest.accept expects (hot path)."""
    out = []
    append = out.append
    for r in records:
        s, e = r.start_time, r.end_time
        append((r.record_id, r.account_id, r.flow_log_id, r.src_addr, r.dst_addr, r.src_port, r.dst_port,
                r.protocol, r.packets, r.bytes, s.seconds * 1000 + s.nanos // 1_000_000,
                e.seconds * 1000 + e.nanos // 1_000_000, r.action, r.log_status, r.direction, r.tcp_flags))
    return out


class IngestServicer(_Base, ingest_pb2_grpc.IngestServiceServicer):
    @handle_errors
    async def Ingest(self, request_iterator, context):
        account = self.account(context)
        limit = self.app.config.limits.max_records_per_message
        accepted = 0
        rejections: list[ingest_pb2.RejectedRecord] = []
        rejected = 0
        index = 0
        flow_logs: dict[str, Any] = {}
        async for msg in request_iterator:
            n = len(msg.records)
            if n > limit:
                raise InvalidArgument.field("records", f"at most {limit} records per message (got {n}); split the batch")
            fl = flow_logs.get(msg.flow_log_id)
            if fl is None:
                fl = await self.run(ingest_core.flow_log_for_ingest, self.app.metadata, account, msg.flow_log_id)
                flow_logs[msg.flow_log_id] = fl
            ok, bad = await self.run(lambda: ingest_core.accept(fl, _raw_rows(msg.records), index, now_ms()))
            index += n
            if ok:
                await self.run(self.app.pipeline.submit, ok)
            accepted += len(ok)
            rejected += len(bad)
            for b in bad:
                if len(rejections) < MAX_REJECTION_DETAILS:
                    rejections.append(ingest_pb2.RejectedRecord(index=b.index, field=b.field, reason=b.reason))
        return ingest_pb2.IngestResponse(accepted=accepted, rejected=rejected, rejections=rejections)


class QueryServicer(_Base, query_pb2_grpc.QueryServiceServicer):
    @handle_errors
    async def Query(self, request, context):
        account = self.account(context)
        app = self.app
        scope = await self.run(query_core.resolve_scope, app.metadata, account, request.region, request.project,
                               list(request.log_stores))
        planned = query_core.plan_query(
            scope, app.signer,
            start_ms=convert.ms_of(request.start_time) if request.HasField("start_time") else None,
            end_ms=convert.ms_of(request.end_time) if request.HasField("end_time") else None,
            filter_text=request.filter, limit=request.limit,
            newest_first=request.order != query_pb2.ORDER_OLDEST_FIRST, page_token=request.page_token,
            default_limit=app.config.limits.query_page_size)
        q = planned.query
        store = app.records
        batches = store.search(q, batch_size=1000)
        returned = 0
        last = None
        try:
            while True:
                batch = await self.run(next, batches, None)
                if batch is None:
                    break
                returned += len(batch)
                last = batch[-1]
                yield query_pb2.QueryResponse(batch=query_pb2.RecordBatch(records=convert.records_to_pb(batch)))
        finally:
            await self.run(batches.close)
        more = False
        token = ""
        if last is not None and returned >= q.limit:
            position = (last.start_time, last.record_id)
            probe = dataclasses.replace(q, after=position, limit=1)
            more = bool(await self.run(lambda: next(iter(store.search(probe, batch_size=1)), None)))
            if more:
                token = query_core.next_page_token(app.signer, planned, position)
        matched = await self.run(store.count, q)
        yield query_pb2.QueryResponse(summary=query_pb2.QuerySummary(
            returned=returned, matched=matched, more=more, next_page_token=token))

    @handle_errors
    async def Tail(self, request, context):
        account = self.account(context)
        app = self.app
        scope = await self.run(query_core.resolve_scope, app.metadata, account, request.region, request.project,
                               list(request.log_stores))
        predicate = flt.compile_predicate(flt.parse(request.filter))
        start_ms = convert.ms_of(request.start_time) if request.HasField("start_time") else None
        session = await self.run(lambda: app.tail(
            scope, predicate, start_ms=start_ms, cursor=request.resume_cursor or None,
            heartbeat_s=app.config.limits.tail_heartbeat_seconds))
        try:
            while True:
                event = await self.wait(next, session, None)
                if event is None:
                    break
                kind, payload, cursor = event
                if kind == "records":
                    yield query_pb2.TailResponse(batch=query_pb2.RecordBatch(records=convert.records_to_pb(payload)),
                                                 cursor=cursor)
                else:
                    yield query_pb2.TailResponse(heartbeat=query_pb2.Heartbeat(time=convert.ts(now_ms())),
                                                 cursor=cursor)
        finally:
            session.close()
