"""The gRPC servicers: thin translations between messages and server.core use cases.

Blocking work (SQLite, DuckDB, Elasticsearch, fsync) runs on the app's thread pool so the
asyncio loop keeps serving many long streams (Tail) at once.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import operator
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable

from google.protobuf import empty_pb2

from flowlog.v1 import (flow_log_pb2, flow_log_pb2_grpc, ingest_pb2, ingest_pb2_grpc, log_store_pb2,
                        log_store_pb2_grpc, query_pb2, query_pb2_grpc, resource_pb2, resource_pb2_grpc)
from server.api import convert, wire
from server.api.errors import handle_errors, parse_message
from server.core import columns
from server.core import filter as flt
from server.core import ingest as ingest_core
from server.core import query as query_core
from server.core.errors import InvalidArgument, ResourceExhausted
from server.core.lifecycle import FlowLogWatch
from server.core.model import FlowRecord, LogStoreKey
from server.core.service import CreateFlowLog, ExistingLogStoreSpec, NewLogStoreSpec, now_ms

try:  # the compiled fast path of Ingest; optional (setup.py), the Python path gives the same results
    from server.api import _fastingest
except ImportError:  # pragma: no cover - built wherever a C compiler is
    _fastingest = None

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
    """Proto records -> plain tuples in the order server.core.ingest.accept expects."""
    out = []
    append = out.append
    for r in records:
        s, e = r.start_time, r.end_time
        append((r.record_id, r.account_id, r.flow_log_id, r.src_addr, r.dst_addr, r.src_port, r.dst_port,
                r.protocol, r.packets, r.bytes, s.seconds * 1000 + s.nanos // 1_000_000,
                e.seconds * 1000 + e.nanos // 1_000_000, r.action, r.log_status, r.direction, r.tcp_flags))
    return out


_RAW_FIELDS = operator.attrgetter(
    "record_id", "account_id", "flow_log_id", "src_addr", "dst_addr", "src_port", "dst_port", "protocol", "packets",
    "bytes", "start_time.seconds", "start_time.nanos", "end_time.seconds", "end_time.nanos", "action", "log_status",
    "direction", "tcp_flags")


def _ms(seconds, nanos) -> list[int]:
    return list(map(operator.add, map(operator.mul, seconds, itertools.repeat(1000)),
                    map(operator.floordiv, nanos, itertools.repeat(1_000_000))))


def _raw_columns(records) -> tuple:
    """Proto records -> the 16 columns of server.core.ingest.accept_columns (hot path: one C-level
    attribute fetch per record, the rest column-wise; the same values as _raw_rows)."""
    if not records:
        return ((),) * 16
    (rid, acc, flid, src, dst, sp, dp, proto, pk, by, ss, sn, es, en, act, st, di, fl) = zip(*map(_RAW_FIELDS, records))
    return rid, acc, flid, src, dst, sp, dp, proto, pk, by, _ms(ss, sn), _ms(es, en), act, st, di, fl


def _accept_and_submit(pipeline, watch: FlowLogWatch, message, index: int):
    """One message: check and complete the records, spool the good ones (durable on return).

    `message` is an IngestRequest, or its bytes when _fastingest split it: then the compiled
    path takes the batch if every record of it passes every check, and anything else is parsed
    here and goes the Python way (server.core.ingest), which finds and explains the bad records."""
    ok = prepared = None
    bad: list = []
    fl = watch.current()  # NOT_FOUND / FAILED_PRECONDITION once the flow log is deleted / paused
    if type(message) is bytes:
        head = ingest_core.stored_head(fl)
        got = _fastingest.accept(message, head, FlowRecord, now_ms(), True)
        if got is None:
            message = parse_message(ingest_pb2.IngestRequest, message)
        else:  # the records, and their spool payload and Arrow table made alongside
            ok, raw, buffers = got
            prepared = (raw, columns.table_of_buffers(len(ok), head, buffers))
    if ok is None:
        ok, bad = ingest_core.accept_columns(fl, _raw_columns(message.records), index, now_ms())
    if ok:
        pipeline.submit(ok, prepared, admit=watch.current)
    return len(ok), bad


class IngestServicer(_Base, ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, app: "App") -> None:
        super().__init__(app)
        self.fast = _fastingest is not None and app.config.native_ingest

    def _split(self, raw):
        """(flow_log_id, number of records, what _accept_and_submit takes) of one message: its
        bytes when the compiled path can read them, else the parsed IngestRequest."""
        if type(raw) is bytes:
            head = _fastingest.split(raw) if self.fast else None
            if head is not None:
                return head[0], head[1], raw
            raw = parse_message(ingest_pb2.IngestRequest, raw)
        return raw.flow_log_id, len(raw.records), raw

    @handle_errors
    async def Ingest(self, request_iterator, context):
        account = self.account(context)
        limit = self.app.config.limits.max_records_per_message
        accepted = 0
        rejections: list[ingest_pb2.RejectedRecord] = []
        rejected = 0
        index = 0
        flow_logs: dict[str, FlowLogWatch] = {}
        async for raw in request_iterator:
            flow_log_id, n, msg = self._split(raw)
            if type(msg) is bytes and n > limit:
                parse_message(ingest_pb2.IngestRequest, msg)  # a message that is not valid says so first
            if n > limit:
                raise InvalidArgument.field("records", f"at most {limit} records per message (got {n}); split the batch")
            watch = flow_logs.get(flow_log_id)
            if watch is None:
                try:
                    watch = await self.run(FlowLogWatch, self.app.metadata, account, flow_log_id,
                                           ingest_core.flow_log_for_ingest)
                except Exception:
                    if type(msg) is bytes:
                        parse_message(ingest_pb2.IngestRequest, msg)
                    raise
                flow_logs[flow_log_id] = watch
            n_ok, bad = await self.run(_accept_and_submit, self.app.pipeline, watch, msg, index)
            index += n
            accepted += n_ok
            rejected += len(bad)
            for b in bad:
                if len(rejections) < MAX_REJECTION_DETAILS:
                    rejections.append(ingest_pb2.RejectedRecord(index=b.index, field=b.field, reason=b.reason))
        return ingest_pb2.IngestResponse(accepted=accepted, rejected=rejected, rejections=rejections)
    # The raw request bytes (server.api.server._handlers): split here, for the compiled path.
    Ingest.takes_bytes = True


QUERY_BATCH = 1000  # records per QueryResponse batch


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
                yield [(wire.query_batch_response(wire.encode_batch(batch)), len(batch),
                        (last.start_time, last.record_id))]
    finally:
        batches.close()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _ReadAhead:
    """Runs a generator on a thread of `executor`, up to `depth` items ahead of its consumer:
    reading and encoding the next chunk overlaps with sending the current one (DuckDB, pyarrow and
    gRPC's transport all work outside the GIL). next_item() blocks: call it from a worker thread.
    close() stops the producer and waits until it has closed the generator (and so the store's
    cursor or point in time)."""

    _END = object()

    def __init__(self, gen, executor, depth: int = 1) -> None:
        self._gen = gen
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended = False
        self._done = executor.submit(self._run)

    def _run(self) -> None:
        try:
            for item in self._gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Failed(e))
        finally:
            self._gen.close()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        """The items, in order, on the consumer's thread (for chaining one read-ahead into another)."""
        while (item := self.next_item()) is not None:
            yield item

    def next_item(self):
        if self._ended:
            return None
        item = self._queue.get()
        if item is self._END:
            self._ended = True
            return None
        if isinstance(item, _Failed):
            self._ended = True
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._done.result()


def _next_tail_response(session, shared: "wire.SharedBatches"):
    """The session's next event as a TailResponse (records: already encoded, and encoded once for
    every tail that receives the same batch), or None at the end. Runs on a stream thread."""
    event = next(session, None)
    if event is None:
        return None
    kind, payload, cursor = event
    if kind == "records":
        return wire.tail_batch_response(shared.get(payload), cursor)
    return query_pb2.TailResponse(heartbeat=query_pb2.Heartbeat(time=convert.ts(now_ms())), cursor=cursor)


class _TailFeed:
    """Runs a Tail session on a stream thread, up to `depth` responses ahead of the coroutine that
    sends them: the next batch is taken from the hub and encoded while the current one is sent,
    instead of one thread round trip (and GIL hand-over) per response. In order; an error of the
    session (fell behind, server stopping) arrives after the responses before it. Uses one thread
    per Tail, as before. close() stops it; the caller then closes the session, which wakes a
    producer blocked waiting for records."""

    def __init__(self, session, shared: "wire.SharedBatches", executor, depth: int = 4) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._done = executor.submit(self._run, session, shared)

    def _hand_over(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (the server stopped)
            self._stop.set()

    def _run(self, session, shared) -> None:
        try:
            while not self._stop.is_set():
                while not self._slots.acquire(timeout=0.2):  # `depth` responses not yet taken
                    if self._stop.is_set():
                        return
                item = _next_tail_response(session, shared)
                self._hand_over(item)
                if item is None:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the coroutine, which raises it
            self._hand_over(_Failed(e))

    async def get(self):
        item = await self._queue.get()
        self._slots.release()
        if isinstance(item, _Failed):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()


def _interval_ms(request) -> int:
    d = request.interval
    if d.nanos % 1_000_000 or d.seconds < 0 or d.nanos < 0:
        raise InvalidArgument.field("interval", "must be a positive whole number of milliseconds (e.g. 60s)")
    return d.seconds * 1000 + d.nanos // 1_000_000


class QueryServicer(_Base, query_pb2_grpc.QueryServiceServicer):
    def __init__(self, app: "App") -> None:
        super().__init__(app)
        self._shared = wire.SharedBatches()
        # Open Tail streams per account (only touched on the event loop: no lock). Each open
        # Tail takes a thread of the shared stream pool while it waits for records, so one
        # account must not be able to take them all (limits.max_tail_streams_per_account).
        self._tails: dict[str, int] = {}

    @handle_errors
    async def Query(self, request, context):
        account = self.account(context)
        app = self.app
        scope = await self.run(query_core.resolve_scope, app.metadata, account, request.region, request.project,
                               list(request.log_stores), app.service.regions)
        planned = query_core.plan_query(
            scope, app.signer,
            start_ms=convert.ms_of(request.start_time) if request.HasField("start_time") else None,
            end_ms=convert.ms_of(request.end_time) if request.HasField("end_time") else None,
            filter_text=request.filter, limit=request.limit,
            newest_first=request.order != query_pb2.ORDER_OLDEST_FIRST, page_token=request.page_token,
            default_limit=app.config.limits.query_page_size)
        q = planned.query
        store = app.records
        # Batches go out already encoded (server.api.wire): no protobuf object per record; the
        # next chunk is read and encoded while the current one is sent.
        if hasattr(store, "search_arrow"):
            # Two stages on two threads: the store reads the next chunk (outside the GIL) while
            # the current one is encoded, while the event loop sends the one before.
            tables = _ReadAhead(store.search_arrow(q, batch_size=QUERY_BATCH), app.stream_executor)
            chunks = _arrow_chunks(tables, QUERY_BATCH)
        else:
            chunks = _list_chunks(store.search(q, batch_size=QUERY_BATCH))
        source = _ReadAhead(chunks, app.stream_executor)
        returned = 0
        last = None
        try:
            while True:
                chunk = await self.wait(source.next_item)
                if chunk is None:
                    break
                for data, n, last in chunk:
                    returned += n
                    yield data
        finally:
            await self.wait(source.close)
        more = False
        token = ""
        if last is not None and returned >= q.limit:
            position = last
            probe = dataclasses.replace(q, after=position, limit=1)
            more = bool(await self.run(lambda: next(iter(store.search(probe, batch_size=1)), None)))
            if more:
                token = query_core.next_page_token(app.signer, planned, position)
        matched = await self.run(store.count, q)
        yield query_pb2.QueryResponse(summary=query_pb2.QuerySummary(
            returned=returned, matched=matched, more=more, next_page_token=token))

    @handle_errors
    async def Aggregate(self, request, context):
        account = self.account(context)
        interval_ms = _interval_ms(request) if request.HasField("interval") else None
        result = await self.run(lambda: self.app.aggregate.run(
            account, region=request.region, project=request.project, log_stores=list(request.log_stores),
            start_ms=convert.ms_of(request.start_time) if request.HasField("start_time") else None,
            end_ms=convert.ms_of(request.end_time) if request.HasField("end_time") else None,
            filter_text=request.filter, group_by=list(request.group_by), interval_ms=interval_ms,
            metrics=list(request.metrics), order_by=request.order_by, limit=request.limit))
        return convert.aggregate_to_pb(result)

    def _open_tail(self, account: str) -> None:
        limit = self.app.config.limits.max_tail_streams_per_account
        if limit and self._tails.get(account, 0) >= limit:
            raise ResourceExhausted(f"at most {limit} Tail streams may be open at once per account "
                                    "(limits.max_tail_streams_per_account); close one and retry")
        self._tails[account] = self._tails.get(account, 0) + 1

    def _close_tail(self, account: str) -> None:
        n = self._tails.pop(account, 1) - 1
        if n > 0:
            self._tails[account] = n

    @handle_errors
    async def Tail(self, request, context):
        account = self.account(context)
        self._open_tail(account)
        try:
            app = self.app
            scope = await self.run(query_core.resolve_scope, app.metadata, account, request.region, request.project,
                                   list(request.log_stores), app.service.regions)
            predicate = flt.compile_predicate(flt.parse(request.filter))
            start_ms = convert.ms_of(request.start_time) if request.HasField("start_time") else None
            session = await self.run(lambda: app.tail(
                scope, predicate, start_ms=start_ms, cursor=request.resume_cursor or None,
                heartbeat_s=app.config.limits.tail_heartbeat_seconds))
            feed = _TailFeed(session, self._shared, app.stream_executor)
            try:
                while True:
                    response = await feed.get()
                    if response is None:
                        break
                    yield response
            finally:
                feed.close()
                session.close()
        finally:
            self._close_tail(account)
