"""The gRPC servicers: thin translations between messages and the use cases of server.core.

Each servicer gets the use-case objects it needs (server.api.server wires them from server.app);
it turns requests into plain values, runs the use case and turns results into messages and
domain errors into status codes (server.api.errors). Blocking work (SQLite, DuckDB,
Elasticsearch, fsync) runs on the server's thread pools so the asyncio loop keeps serving many
long streams (Tail) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import operator
from concurrent.futures import Executor
from typing import Any, Callable

from google.protobuf import empty_pb2

from flowlog.v1 import (
    flow_log_pb2,
    flow_log_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    log_store_pb2,
    log_store_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    resource_pb2,
    resource_pb2_grpc,
)
from server.api import convert, wire
from server.api.auth import Authenticator
from server.api.errors import handle_errors, parse_message
from server.api.gate import CURRENT_ACCOUNT
from server.api.handoff import Closable, Feed, ReadAhead
from server.core.errors import InvalidArgument
from server.core.ingest import RAW_FIELDS
from server.core.model import LogStoreKey
from server.core.service import CreateFlowLog, ExistingLogStoreSpec, NewLogStoreSpec, Service, now_ms
from server.core.usecases.aggregate import Aggregate
from server.core.usecases.ingest import Ingest, ParsedMessage
from server.core.usecases.query import BATCH as QUERY_BATCH
from server.core.usecases.query import Query
from server.core.usecases.tail import Tail

log = logging.getLogger("flowlog.api")
_EMPTY = empty_pb2.Empty()


class Runner:
    """What every servicer shares: the caller's account and the thread pools (short calls; Tail
    streams; Query streams, each pool sized by the limits of what runs on it)."""

    def __init__(
        self, auth: Authenticator, executor: Executor, stream_executor: Executor, query_executor: Executor | None = None
    ) -> None:
        self.auth = auth
        self.executor = executor
        self.stream_executor = stream_executor
        self.query_executor = query_executor or stream_executor


class _Base:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.runner.executor, fn, *args)

    async def wait(self, fn: Callable[..., Any], *args: Any) -> Any:
        """For calls that block waiting on events (Tail), on their own pool so they never starve
        short requests of threads."""
        return await asyncio.get_running_loop().run_in_executor(self.runner.stream_executor, fn, *args)

    def feed(self, produce: Callable[[], Any], session: Closable) -> Feed:
        """A stream's responses made by `produce` on the stream pool, ahead of sending (server.api.
        handoff.Feed): `async with` it, `async for` its responses; leaving the block closes it, then `session`."""
        return Feed(produce, self.runner.stream_executor, source=session)

    async def wait_query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """The same for Query streams, on the Query pool (sized by limits.max_query_streams)."""
        return await asyncio.get_running_loop().run_in_executor(self.runner.query_executor, fn, *args)

    def account(self, context) -> str:
        """The caller's account: checked by server.api.gate before the request was read."""
        account = CURRENT_ACCOUNT.get()
        return account if account is not None else self.runner.auth.account(context)


class _Crud(_Base):
    def __init__(self, runner: Runner, service: Service) -> None:
        super().__init__(runner)
        self.service = service


class ResourceServicer(_Crud, resource_pb2_grpc.ResourceServiceServicer):
    @handle_errors
    async def RegisterResource(self, request, context):
        r = await self.run(
            self.service.register_resource, self.account(context), convert.resource_from_pb(request.resource)
        )
        return convert.resource_to_pb(r)

    @handle_errors
    async def GetResource(self, request, context):
        return convert.resource_to_pb(await self.run(self.service.get_resource, self.account(context), request.id))

    @handle_errors
    async def ListResources(self, request, context):
        account = self.account(context)
        page = await self.run(
            lambda: self.service.list_resources(
                account,
                region=request.region,
                type=request.type,
                network_id=request.network_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return resource_pb2.ListResourcesResponse(
            resources=[convert.resource_to_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    @handle_errors
    async def DeleteResource(self, request, context):
        await self.run(self.service.delete_resource, self.account(context), request.id)
        return _EMPTY


def _key(request) -> LogStoreKey:
    return LogStoreKey(request.region, request.project, request.name)


class LogStoreServicer(_Crud, log_store_pb2_grpc.LogStoreServiceServicer):
    @handle_errors
    async def CreateLogStore(self, request, context):
        s = await self.run(
            self.service.create_log_store, self.account(context), convert.log_store_from_pb(request.log_store)
        )
        return convert.log_store_to_pb(s)

    @handle_errors
    async def GetLogStore(self, request, context):
        return convert.log_store_to_pb(await self.run(self.service.get_log_store, self.account(context), _key(request)))

    @handle_errors
    async def ListLogStores(self, request, context):
        account = self.account(context)
        page = await self.run(
            lambda: self.service.list_log_stores(
                account,
                region=request.region,
                project=request.project,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return log_store_pb2.ListLogStoresResponse(
            log_stores=[convert.log_store_to_pb(s) for s in page.items], next_page_token=page.next_page_token
        )

    @handle_errors
    async def UpdateLogStore(self, request, context):
        s = await self.run(
            self.service.update_log_store,
            self.account(context),
            convert.log_store_from_pb(request.log_store),
            list(request.update_mask.paths),
        )
        return convert.log_store_to_pb(s)

    @handle_errors
    async def DeleteLogStore(self, request, context):
        await self.run(self.service.delete_log_store, self.account(context), _key(request))
        return _EMPTY


class FlowLogServicer(_Crud, flow_log_pb2_grpc.FlowLogServiceServicer):
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
        req = CreateFlowLog(
            region=request.region,
            name=request.name,
            resource_type=request.resource_type,
            resource_id=request.resource_id,
            network_id=request.network_id,
            traffic_type=request.traffic_type,
            destination=dest,
            description=request.description,
            client_token=request.client_token,
            state=request.state,
        )
        return convert.flow_log_to_pb(await self.run(self.service.create_flow_log, self.account(context), req))

    @handle_errors
    async def GetFlowLog(self, request, context):
        return convert.flow_log_to_pb(await self.run(self.service.get_flow_log, self.account(context), request.id))

    @handle_errors
    async def ListFlowLogs(self, request, context):
        account = self.account(context)
        page = await self.run(
            lambda: self.service.list_flow_logs(
                account,
                region=request.region,
                resource_id=request.resource_id,
                state=request.state,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return flow_log_pb2.ListFlowLogsResponse(
            flow_logs=[convert.flow_log_to_pb(f) for f in page.items], next_page_token=page.next_page_token
        )

    @handle_errors
    async def UpdateFlowLog(self, request, context):
        f = request.flow_log
        changes = {"name": f.name, "description": f.description, "traffic_type": f.traffic_type, "state": f.state}
        updated = await self.run(
            self.service.update_flow_log, self.account(context), f.id, changes, list(request.update_mask.paths)
        )
        return convert.flow_log_to_pb(updated)

    @handle_errors
    async def DeleteFlowLog(self, request, context):
        await self.run(self.service.delete_flow_log, self.account(context), request.id)
        return _EMPTY


def _raw_rows(records) -> list[tuple]:
    """Proto records -> plain tuples in the order server.core.ingest.accept expects."""
    out: list[tuple[Any, ...]] = []
    append = out.append
    for r in records:
        s, e = r.start_time, r.end_time
        append(
            (
                r.record_id,
                r.account_id,
                r.flow_log_id,
                r.src_addr,
                r.dst_addr,
                r.src_port,
                r.dst_port,
                r.protocol,
                r.packets,
                r.bytes,
                s.seconds * 1000 + s.nanos // 1_000_000,
                e.seconds * 1000 + e.nanos // 1_000_000,
                r.action,
                r.log_status,
                r.direction,
                r.tcp_flags,
                r.rule_id,
                r.rule_kind,
                r.sampling_rate,
            )
        )
    return out


_RAW_FIELDS = operator.attrgetter(
    "record_id",
    "account_id",
    "flow_log_id",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "packets",
    "bytes",
    "start_time.seconds",
    "start_time.nanos",
    "end_time.seconds",
    "end_time.nanos",
    "action",
    "log_status",
    "direction",
    "tcp_flags",
    "rule_id",
    "rule_kind",
    "sampling_rate",
)


def _ms(seconds, nanos) -> list[int]:
    return list(
        map(
            operator.add,
            map(operator.mul, seconds, itertools.repeat(1000)),
            map(operator.floordiv, nanos, itertools.repeat(1_000_000)),
        )
    )


def _raw_columns(records) -> tuple:
    """Proto records -> the 19 columns of server.core.ingest.accept_columns (hot path: one C-level
    attribute fetch per record, the rest column-wise; the same values as _raw_rows)."""
    if not records:
        return ((),) * RAW_FIELDS
    (rid, acc, flid, src, dst, sp, dp, proto, pk, by, ss, sn, es, en, act, st, di, fl, ri, rk, sr) = zip(
        *map(_RAW_FIELDS, records)
    )
    return rid, acc, flid, src, dst, sp, dp, proto, pk, by, _ms(ss, sn), _ms(es, en), act, st, di, fl, ri, rk, sr


def _parsed(message: ingest_pb2.IngestRequest) -> ParsedMessage:
    return ParsedMessage(message.flow_log_id, len(message.records), lambda: _raw_columns(message.records))


def _parse(data: bytes) -> ParsedMessage:
    return _parsed(parse_message(ingest_pb2.IngestRequest, data))


_RECORDS_FIELD = ingest_pb2.IngestRequest.DESCRIPTOR.fields_by_name["records"].number


class IngestServicer(_Base, ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, runner: Runner, ingest: Ingest) -> None:
        super().__init__(runner)
        self.ingest = ingest

    @handle_errors
    async def Ingest(self, request_iterator, context):
        stream = self.ingest.open(self.account(context), _parse)
        try:
            async for raw in request_iterator:
                if type(raw) is bytes:
                    msg = stream.head(raw)
                    if msg is None:  # not for the compiled path: counted from its bytes, parsed off the loop
                        stream.check_count(wire.count_field(raw, _RECORDS_FIELD))
                        msg = stream.split(await self.run(_parse, raw))
                else:
                    msg = stream.split(_parsed(raw))
                del raw
                if stream.needs_flow_log(msg):
                    await self.run(stream.load_flow_log, msg)
                await self.run(stream.add, msg)
        finally:
            stream.close()
        r = stream.result
        return ingest_pb2.IngestResponse(
            accepted=r.accepted,
            rejected=r.rejected,
            rejections=[
                ingest_pb2.RejectedRecord(index=b.index, field=b.field, reason=b.reason) for b in r.rejections or ()
            ],
        )

    # The raw request bytes (server.api.server._handlers): split by the use case, for the compiled path.
    Ingest.takes_bytes = True


def _arrow_chunks(tables, batch_size: int):
    """Per Arrow chunk of the store: [(encoded QueryResponse, records, (start_time, record_id) of
    its last record)] for each batch of the chunk (a chunk is encoded in one go, then cut)."""
    try:
        for table in tables:
            starts = table.column("start_time")
            ids = table.column("record_id")
            n = table.num_rows
            out = []
            for i, (data, k) in enumerate(wire.encode_chunks(table, batch_size)):
                end = min(n, i * batch_size + k) - 1
                out.append((wire.query_batch_response(data), k, (starts[end].as_py(), ids[end].as_py())))
            yield out
    finally:
        tables.close()


def _list_chunks(batches):
    """The same from a store that yields FlowRecord lists (one batch per chunk)."""
    try:
        for batch in batches:
            if batch:
                last = batch[-1]
                yield [
                    (wire.query_batch_response(wire.encode_batch(batch)), len(batch), (last.start_time, last.record_id))
                ]
    finally:
        batches.close()


def _next_tail_response(session, shared: "wire.SharedBatches"):
    """The session's next event as a TailResponse (records: already encoded, and encoded once for
    every tail that receives the same batch), or None at the end. Runs on a stream thread."""
    event = next(session, None)
    if event is None:
        return None
    kind, payload, cursor = event
    if kind == "records":
        # From another replica the records come encoded already (server.pipeline.replicated).
        return wire.tail_batch_response(payload if isinstance(payload, bytes) else shared.get(payload), cursor)
    return query_pb2.TailResponse(heartbeat=query_pb2.Heartbeat(time=convert.ts(now_ms())), cursor=cursor)


def _interval_ms(request) -> int:
    d = request.interval
    if d.nanos % 1_000_000 or d.seconds < 0 or d.nanos < 0:
        raise InvalidArgument.field("interval", "must be a positive whole number of milliseconds (e.g. 60s)")
    return d.seconds * 1000 + d.nanos // 1_000_000


class QueryServicer(_Base, query_pb2_grpc.QueryServiceServicer):
    def __init__(self, runner: Runner, query: Query, tail: Tail, aggregate: Aggregate) -> None:
        super().__init__(runner)
        self.query = query
        self.tail = tail
        self.aggregate = aggregate
        self._shared = wire.SharedBatches()

    @handle_errors
    async def Query(self, request, context):
        account = self.account(context)
        # A slot per open Query, per account and in total (limits.max_query_streams*); given back
        # only after the reader has stopped and closed the store's cursor (the finally of _query).
        self.query.acquire(account)
        try:
            async with contextlib.aclosing(self._query(account, request)) as responses:
                async for item in responses:
                    yield item
        finally:
            self.query.release(account)

    async def _query(self, account: str, request):
        uc = self.query
        planned = await self.run(
            lambda: uc.plan(
                account,
                region=request.region,
                project=request.project,
                log_stores=list(request.log_stores),
                start_ms=convert.ms_of(request.start_time) if request.HasField("start_time") else None,
                end_ms=convert.ms_of(request.end_time) if request.HasField("end_time") else None,
                filter_text=request.filter,
                limit=request.limit,
                newest_first=request.order != query_pb2.ORDER_OLDEST_FIRST,
                page_token=request.page_token,
            )
        )
        executor = self.runner.query_executor
        # Batches go out already encoded (server.api.wire): no protobuf object per record; the
        # next chunk is read and encoded while the current one is sent.
        if uc.arrow:
            # Two stages on two threads: the store reads the next chunk (outside the GIL) while
            # the current one is encoded, while the event loop sends the one before.
            tables = ReadAhead(uc.tables(planned, QUERY_BATCH), executor)
            chunks = _arrow_chunks(tables, QUERY_BATCH)
        else:
            chunks = _list_chunks(uc.batches(planned, QUERY_BATCH))
        source = ReadAhead(chunks, executor)
        returned = 0
        last = None
        try:
            while True:
                chunk = await self.wait_query(source.next_item)
                if chunk is None:
                    break
                for data, n, last in chunk:
                    returned += n
                    yield data
        finally:
            await self.wait_query(source.close)
        summary = await self.run(uc.summary, planned, returned, last)
        yield query_pb2.QueryResponse(
            summary=query_pb2.QuerySummary(
                returned=summary.returned,
                matched=summary.matched,
                more=summary.more,
                next_page_token=summary.next_page_token,
            )
        )

    @handle_errors
    async def Aggregate(self, request, context):
        account = self.account(context)
        interval_ms = _interval_ms(request) if request.HasField("interval") else None
        with self.aggregate.slot(account):  # limits.max_aggregate_calls*
            result = await self.run(
                lambda: self.aggregate.run(
                    account,
                    region=request.region,
                    project=request.project,
                    log_stores=list(request.log_stores),
                    start_ms=convert.ms_of(request.start_time) if request.HasField("start_time") else None,
                    end_ms=convert.ms_of(request.end_time) if request.HasField("end_time") else None,
                    filter_text=request.filter,
                    group_by=list(request.group_by),
                    interval_ms=interval_ms,
                    metrics=list(request.metrics),
                    order_by=request.order_by,
                    limit=request.limit,
                )
            )
        return convert.aggregate_to_pb(result)

    @handle_errors
    async def Tail(self, request, context):
        account = self.account(context)
        uc = self.tail
        uc.acquire(account)
        try:
            start_ms = convert.ms_of(request.start_time) if request.HasField("start_time") else None
            session = await self.run(
                lambda: uc.open(
                    account,
                    region=request.region,
                    project=request.project,
                    log_stores=list(request.log_stores),
                    filter_text=request.filter,
                    start_ms=start_ms,
                    cursor=request.resume_cursor or None,
                )
            )
            shared = self._shared
            async with self.feed(lambda: _next_tail_response(session, shared), session) as feed:
                async for response in feed:
                    yield response
        finally:
            uc.release(account)

    # A Tail that is not read ends by its own bounded queue (limits.tail_buffer_records), with a
    # resume cursor, rather than by server.api.gate's send timeout.
    Tail.own_backpressure = True
