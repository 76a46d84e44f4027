"""FlowLogClient: the Python client of the flowlog.v1 gRPC API.

Two layers, so nothing the API can do is out of reach and the common things are short:

- the raw generated stubs (`client.resources`, `client.log_stores`, `client.flow_logs`,
  `client.ingest_stub`... see FlowLogClient) on a channel that already carries the API key,
  for anything the helpers do not cover;
- helpers that take friendly values (`"eip"`, `"allow"`, `"15m"`, datetimes), follow page
  tokens, build update masks, and raise FlowLogError instead of bare grpc.RpcError, so a
  caller gets the status code, the field violations and a hint in one object.

Every call carries `authorization: Bearer <key>` when a key is given (an interceptor, so the
raw stubs get it too, unary and streaming alike).
"""

from __future__ import annotations

import collections
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Sequence

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from clients import values as parse
from flowlog.v1 import (
    flow_log_pb2,
    flow_log_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    log_store_pb2,
    log_store_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    record_pb2,
    resource_pb2,
    resource_pb2_grpc,
    types_pb2,
)

DEFAULT_TARGET = "127.0.0.1:50051"
USER_AGENT = "flowlog-python-client/0.1"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# A query batch can be large; gRPC's 4 MiB default would fail a legitimate response.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The API's per-message ingest limit.
MAX_INGEST_BATCH = 10_000


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class FlowLogError(Exception):
    """A failed call, with everything the server said about why.

    Attributes:
      code: grpc.StatusCode.
      message: the status message (one sentence that says what to fix).
      field_violations: [(field, description)] from google.rpc.BadRequest.
      quota_violations: [(subject, description)] from google.rpc.QuotaFailure.
      precondition_violations: [(type, subject, description)] from google.rpc.PreconditionFailure.
      reason, domain, metadata: from google.rpc.ErrorInfo (empty when absent).
      hint: what to try next, per status code (may be empty).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        quota_violations: Sequence[tuple[str, str]] = (),
        precondition_violations: Sequence[tuple[str, str, str]] = (),
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        target: str = "",
        tls: bool = False,
    ) -> None:
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)
        self.quota_violations = list(quota_violations)
        self.precondition_violations = list(precondition_violations)
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.target = target
        self.tls = tls
        super().__init__(self.one_line())

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_status(cls, status: status_pb2.Status, *, target: str = "", tls: bool = False) -> "FlowLogError":
        """From a google.rpc.Status (what the server puts in grpc-status-details-bin)."""
        code = _status_code(status.code)
        fields: list[tuple[str, str]] = []
        quotas: list[tuple[str, str]] = []
        preconditions: list[tuple[str, str, str]] = []
        reason = domain = ""
        metadata: dict[str, str] = {}
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields.extend((v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                quotas.extend((v.subject, v.description) for v in quota.violations)
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                pre = error_details_pb2.PreconditionFailure()
                detail.Unpack(pre)
                preconditions.extend((v.type, v.subject, v.description) for v in pre.violations)
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        return cls(
            code,
            status.message,
            field_violations=fields,
            quota_violations=quotas,
            precondition_violations=preconditions,
            reason=reason,
            domain=domain,
            metadata=metadata,
            target=target,
            tls=tls,
        )

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, *, target: str = "", tls: bool = False) -> "FlowLogError":
        """From a grpc.RpcError as raised by a stub, unary or streaming.

        The rich status is read from the trailing metadata directly rather than through
        grpc_status.rpc_status.from_call, which raises when the status message and the
        details disagree; a slightly inconsistent server should still give a readable error.
        """
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = (err.details() if hasattr(err, "details") else None) or ""
        trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
        for key, value in trailing or ():
            if key != _STATUS_DETAILS_KEY:
                continue
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                break
            error = cls.from_status(status, target=target, tls=tls)
            # The transport's code and message are authoritative.
            error.code = code or error.code
            error.message = message or error.message
            error.args = (error.one_line(),)
            return error
        return cls(code or grpc.StatusCode.UNKNOWN, message, target=target, tls=tls)

    # -- presentation ------------------------------------------------------------------------

    @property
    def code_name(self) -> str:
        return self.code.name

    def one_line(self) -> str:
        """`INVALID_ARGUMENT: description: must be at most 200 characters (has 201)`."""
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    @property
    def hint(self) -> str:
        """What to try next; empty when the message already says everything."""
        code = self.code
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return "check the --api-key / FLOWLOG_API_KEY"
        if code == grpc.StatusCode.UNAVAILABLE:
            where = self.target or "the --server / FLOWLOG_SERVER address"
            hint = f"is the server running at {where}? (set --server / FLOWLOG_SERVER)"
            if not self.tls:
                hint += "; if it serves TLS, add --tls"
            return hint
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "the server did not answer in time; retry, or raise --timeout"
        if code == grpc.StatusCode.NOT_FOUND:
            return "check the id / name and region (objects of other accounts are not visible)"
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return "use another name, or get the existing one"
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if self.quota_violations:
                return "a quota is reached: delete what is no longer needed, or raise the limit in the server config"
            return "the server is overloaded or the client is too slow; retry later"
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            return "the current state does not allow this; resolve what the message names first"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return "fix the fields named above" if self.field_violations else ""
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return "the API key is not allowed to do this"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return "the server does not support this call; is it a flowlog server of a matching version?"
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
            return "a server-side failure; the server log has the details"
        return ""

    def detail_lines(self) -> list[str]:
        """One `field: description` per violation, in the order the server gave them."""
        lines = [f"{field}: {description}" for field, description in self.field_violations]
        lines += [f"{subject}: {description}" for subject, description in self.quota_violations]
        lines += [f"{subject or kind}: {description}" for kind, subject, description in self.precondition_violations]
        return lines

    def __str__(self) -> str:
        return self.one_line()


def _status_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


# --------------------------------------------------------------------------------------------
# Channel plumbing
# --------------------------------------------------------------------------------------------

_CallDetails = collections.namedtuple(
    "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    """grpc.ClientCallDetails is an interface; this is the usual concrete stand-in."""


class _MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the API key) to every call, whichever its shape."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = list(metadata)

    def _details(self, details: grpc.ClientCallDetails) -> _ClientCallDetails:
        metadata = list(details.metadata or []) + self._metadata
        return _ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _split_store(value: str | tuple[str, str], what: str) -> tuple[str, str]:
    """`"project/name"` or `(project, name)` -> (project, name)."""
    if isinstance(value, tuple):
        return value
    project, sep, name = value.partition("/")
    if not sep or not project or not name or "/" in name:
        raise ValueError(f"{what} must be PROJECT/NAME, got {value!r}")
    return project, name


def _enum(enum_type: Any, value: str | int | None) -> Any:
    """The enum number of `value` (0 for None): Any, as the message constructors' stubs take
    their enum's own type."""
    return 0 if value is None else parse.parse_enum(enum_type, value)


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


class QueryStream:
    """One Query call: iterate for records (or `.batches()` for lists of them); the
    QuerySummary is in `.summary` once the stream is exhausted.

    `.request` holds the request as sent, with absolute times, so a caller can continue
    with `summary.next_page_token` and the very same fields (which the API requires).
    """

    def __init__(self, client: "FlowLogClient", call: Any, request: query_pb2.QueryRequest) -> None:
        self._client = client
        self._call = call
        self.request = request
        self.summary: query_pb2.QuerySummary | None = None
        self.returned = 0

    def batches(self) -> Iterator[list[record_pb2.FlowRecord]]:
        finished = False
        try:
            with self._client._errors():
                for response in self._call:
                    kind = response.WhichOneof("result")
                    if kind == "batch":
                        records = list(response.batch.records)
                        self.returned += len(records)
                        yield records
                    elif kind == "summary":
                        self.summary = response.summary
            finished = True
        finally:
            if not finished:  # the caller stopped early: free the server's work now
                self._call.cancel()

    def __iter__(self) -> Iterator[record_pb2.FlowRecord]:
        for batch in self.batches():
            yield from batch

    def cancel(self) -> None:
        self._call.cancel()


class PagedQuery:
    """query_all: Query calls chained by next_page_token until nothing remains.

    Iterate for records or `.batches()`; progress is readable while it runs (`.pages`:
    calls made so far, `.returned`: records so far, `.matched`: total matching, from the
    latest summary) and `.summary` is the last page's summary.
    """

    def __init__(self, client: "FlowLogClient", request: query_pb2.QueryRequest, timeout: float | None) -> None:
        self._client = client
        self.request = request
        self._timeout = timeout
        self.pages = 0
        self.returned = 0
        self.matched = 0
        self.summary: query_pb2.QuerySummary | None = None
        self._current: QueryStream | None = None
        # Called with this object after each page (for progress reports).
        self.on_page: Callable[["PagedQuery"], None] | None = None

    def batches(self) -> Iterator[list[record_pb2.FlowRecord]]:
        request = query_pb2.QueryRequest()
        request.CopyFrom(self.request)
        while True:
            self.pages += 1
            stream = self._client._query_call(request, self._timeout)
            self._current = stream
            for batch in stream.batches():
                self.returned += len(batch)
                yield batch
            self.summary = stream.summary
            if stream.summary is not None:
                self.matched = stream.summary.matched
            if self.on_page is not None:
                self.on_page(self)
            if stream.summary is None or not stream.summary.more or not stream.summary.next_page_token:
                return
            request.page_token = stream.summary.next_page_token

    def __iter__(self) -> Iterator[record_pb2.FlowRecord]:
        for batch in self.batches():
            yield from batch

    def cancel(self) -> None:
        if self._current is not None:
            self._current.cancel()


class TailStream:
    """One Tail call: iterate for TailResponse messages as they arrive.

    Heartbeats are skipped unless asked for, but their cursors are still recorded:
    `.cursor` is always the latest one seen, so resuming with it (TailRequest.resume_cursor,
    or `flowlog tail --cursor`) continues exactly after the last message received.
    """

    def __init__(self, client: "FlowLogClient", call: Any, heartbeats: bool) -> None:
        self._client = client
        self._call = call
        self._heartbeats = heartbeats
        self._cancelled = False
        self.cursor = ""

    def __iter__(self) -> Iterator[query_pb2.TailResponse]:
        try:
            with self._client._errors():
                try:
                    for response in self._call:
                        if response.cursor:
                            self.cursor = response.cursor
                        if response.WhichOneof("result") == "heartbeat" and not self._heartbeats:
                            continue
                        yield response
                except grpc.RpcError as e:
                    if not (self._cancelled and e.code() == grpc.StatusCode.CANCELLED):
                        raise  # cancel() ends the iteration quietly; anything else is an error
        finally:
            self._call.cancel()  # a tail never ends by itself: stopping to read means stop

    def records(self) -> Iterator[record_pb2.FlowRecord]:
        for response in self:
            if response.WhichOneof("result") == "batch":
                yield from response.batch.records

    def cancel(self) -> None:
        """Stop following; an iteration in another thread ends without an error."""
        self._cancelled = True
        self._call.cancel()


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


def split_target(target: str) -> tuple[str, bool]:
    """(host:port for gRPC, whether the scheme asks for TLS) of a target written as `host:port`,
    `https://host[:port]` / `grpcs://host[:port]` (TLS; port 443 when none) or
    `http://host[:port]` / `grpc://host[:port]` (plaintext; port 80 when none)."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        return target, False
    scheme = scheme.lower()
    if scheme not in ("https", "grpcs", "http", "grpc"):
        raise ValueError(
            f"unknown scheme {scheme!r} in server address {target!r}: use https:// (TLS), http:// or HOST:PORT"
        )
    tls = scheme in ("https", "grpcs")
    host = rest.rstrip("/")
    has_port = "]:" in host if host.startswith("[") else ":" in host
    if not has_port:
        host = f"{host}:{443 if tls else 80}"
    return host, tls


class FlowLogClient:
    """A connection to a flowlog server.

    Raw stubs: `resources` (ResourceServiceStub), `log_stores` (LogStoreServiceStub),
    `flow_logs` (FlowLogServiceStub), `ingest` (IngestServiceStub: `client.ingest.Ingest(...)`)
    and `query` (QueryServiceStub: `client.query.Query(...)`, `client.query.Tail(...)`).
    `ingest` and `query` are also the helper methods when called (`client.query(region=...)`,
    `client.ingest(flow_log_id, batches)`); `ingest_stub` / `query_stub` are the bare stubs.
    Helpers raise FlowLogError; `timeout` is the default deadline of unary calls and of each
    Query call (Tail has none: it runs until cancelled).

    Use as a context manager, or call close().
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        api_key: str | None = None,
        *,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        target, scheme_tls = split_target(target)
        self.target = target
        self.tls = tls or scheme_tls or bool(ca_file or cert_file)
        self.timeout = timeout
        channel_options = [
            ("grpc.primary_user_agent", USER_AGENT),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            *options,
        ]
        if self.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file),
                private_key=_read(key_file),
                certificate_chain=_read(cert_file),
            )
            self._base_channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self._base_channel = grpc.insecure_channel(target, options=channel_options)
        metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.channel: grpc.Channel = (
            grpc.intercept_channel(self._base_channel, _MetadataInterceptor(metadata))
            if metadata
            else self._base_channel
        )
        self.resources = resource_pb2_grpc.ResourceServiceStub(self.channel)
        self.log_stores = log_store_pb2_grpc.LogStoreServiceStub(self.channel)
        self.flow_logs = flow_log_pb2_grpc.FlowLogServiceStub(self.channel)
        self.ingest_stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.query_stub = query_pb2_grpc.QueryServiceStub(self.channel)
        # `client.query` / `client.ingest` are both the raw stub and the helper method.
        self.query: Any = _StubWithHelper(self.query_stub, FlowLogClient.query.__get__(self))  # type: ignore[method-assign]
        self.ingest: Any = _StubWithHelper(self.ingest_stub, FlowLogClient.ingest.__get__(self))  # type: ignore[method-assign]

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._base_channel.close()

    def __enter__(self) -> "FlowLogClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _errors(self) -> "_ErrorTranslator":
        return _ErrorTranslator(self)

    def _unary(self, method: Any, request: Message, timeout: float | None = None) -> Any:
        with self._errors():
            return method(request, timeout=self.timeout if timeout is None else timeout)

    def _pages(self, method: Any, request: Message, field: str, timeout: float | None) -> Iterator[Any]:
        """Every item of every page of a List call, fetching a page only when needed."""
        while True:
            response = self._unary(method, request, timeout)
            yield from getattr(response, field)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token  # type: ignore[attr-defined]

    # -- resources ---------------------------------------------------------------------------

    def register_resource(
        self,
        resource: resource_pb2.Resource | None = None,
        *,
        type: str | int | None = None,
        region: str = "",
        network_id: str = "",
        name: str = "",
        addresses: Sequence[str] = (),
        id: str = "",
        rules: Sequence[resource_pb2.SecurityRule] = (),
        timeout: float | None = None,
    ) -> resource_pb2.Resource:
        """Registers a resource; pass a Resource, or its fields (`type="nat-gateway"`)."""
        if resource is None:
            resource = resource_pb2.Resource(
                id=id,
                type=_enum(types_pb2.ResourceType, type),
                region=region,
                network_id=network_id,
                name=name,
                addresses=list(addresses),
                rules=list(rules),
            )
        request = resource_pb2.RegisterResourceRequest(resource=resource)
        return self._unary(self.resources.RegisterResource, request, timeout)

    def get_resource(self, id: str, *, timeout: float | None = None) -> resource_pb2.Resource:
        return self._unary(self.resources.GetResource, resource_pb2.GetResourceRequest(id=id), timeout)

    def iter_resources(
        self,
        region: str = "",
        type: str | int | None = None,
        network_id: str = "",
        *,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[resource_pb2.Resource]:
        """Every matching resource, all pages, lazily."""
        request = resource_pb2.ListResourcesRequest(
            region=region, type=_enum(types_pb2.ResourceType, type), network_id=network_id, page_size=page_size
        )
        return self._pages(self.resources.ListResources, request, "resources", timeout)

    def list_resources(self, *args: Any, **kwargs: Any) -> list[resource_pb2.Resource]:
        """iter_resources, collected."""
        return list(self.iter_resources(*args, **kwargs))

    def delete_resource(self, id: str, *, timeout: float | None = None) -> None:
        self._unary(self.resources.DeleteResource, resource_pb2.DeleteResourceRequest(id=id), timeout)

    # -- log stores --------------------------------------------------------------------------

    def create_log_store(
        self,
        region: str,
        project: str,
        name: str,
        *,
        retention_days: int = 0,
        description: str = "",
        timeout: float | None = None,
    ) -> log_store_pb2.LogStore:
        """Creates a LogStore; retention_days 0 means the server default (7)."""
        store = log_store_pb2.LogStore(
            region=region, project=project, name=name, retention_days=retention_days, description=description
        )
        return self._unary(
            self.log_stores.CreateLogStore, log_store_pb2.CreateLogStoreRequest(log_store=store), timeout
        )

    def get_log_store(
        self, region: str, project: str, name: str, *, timeout: float | None = None
    ) -> log_store_pb2.LogStore:
        request = log_store_pb2.GetLogStoreRequest(region=region, project=project, name=name)
        return self._unary(self.log_stores.GetLogStore, request, timeout)

    def iter_log_stores(
        self, region: str = "", project: str = "", *, page_size: int = 0, timeout: float | None = None
    ) -> Iterator[log_store_pb2.LogStore]:
        request = log_store_pb2.ListLogStoresRequest(region=region, project=project, page_size=page_size)
        return self._pages(self.log_stores.ListLogStores, request, "log_stores", timeout)

    def list_log_stores(self, *args: Any, **kwargs: Any) -> list[log_store_pb2.LogStore]:
        return list(self.iter_log_stores(*args, **kwargs))

    _LOG_STORE_MUTABLE = ("retention_days", "description")

    def update_log_store(
        self, region: str, project: str, name: str, *, timeout: float | None = None, **fields: Any
    ) -> log_store_pb2.LogStore:
        """Changes exactly the fields given (retention_days, description): the update mask is
        their names, so `description=""` clears the description."""
        unknown = set(fields) - set(self._LOG_STORE_MUTABLE)
        if unknown:
            raise ValueError(
                f"not mutable on a LogStore: {', '.join(sorted(unknown))} "
                f"(mutable: {', '.join(self._LOG_STORE_MUTABLE)})"
            )
        if not fields:
            raise ValueError("nothing to update: give retention_days and/or description")
        store = log_store_pb2.LogStore(region=region, project=project, name=name, **fields)
        request = log_store_pb2.UpdateLogStoreRequest(
            log_store=store, update_mask=field_mask_pb2.FieldMask(paths=list(fields))
        )
        return self._unary(self.log_stores.UpdateLogStore, request, timeout)

    def delete_log_store(self, region: str, project: str, name: str, *, timeout: float | None = None) -> None:
        request = log_store_pb2.DeleteLogStoreRequest(region=region, project=project, name=name)
        self._unary(self.log_stores.DeleteLogStore, request, timeout)

    # -- flow logs ---------------------------------------------------------------------------

    def create_flow_log(
        self,
        *,
        region: str,
        name: str,
        resource_type: str | int,
        resource_id: str,
        network_id: str,
        traffic_type: str | int,
        log_store: str | tuple[str, str] | None = None,
        new_log_store: str | tuple[str, str] | None = None,
        retention_days: int = 0,
        description: str = "",
        client_token: str = "",
        paused: bool = False,
        timeout: float | None = None,
    ) -> flow_log_pb2.FlowLog:
        """Creates a flow log delivering to an existing LogStore (`log_store="proj/name"`) or
        to one created in the same call (`new_log_store="proj/name"`, with retention_days)."""
        if (log_store is None) == (new_log_store is None):
            raise ValueError("give exactly one of log_store and new_log_store (as PROJECT/NAME)")
        request = flow_log_pb2.CreateFlowLogRequest(
            region=region,
            name=name,
            resource_type=_enum(types_pb2.ResourceType, resource_type),
            resource_id=resource_id,
            network_id=network_id,
            traffic_type=_enum(types_pb2.TrafficType, traffic_type),
            description=description,
            client_token=client_token,
            state=types_pb2.FLOW_LOG_STATE_PAUSED if paused else types_pb2.FLOW_LOG_STATE_UNSPECIFIED,
        )
        if log_store is not None:
            project, store = _split_store(log_store, "log_store")
            request.existing_log_store.CopyFrom(flow_log_pb2.ExistingLogStore(project=project, name=store))
        else:
            assert new_log_store is not None
            project, store = _split_store(new_log_store, "new_log_store")
            request.new_log_store.CopyFrom(
                flow_log_pb2.NewLogStore(project=project, name=store, retention_days=retention_days)
            )
        return self._unary(self.flow_logs.CreateFlowLog, request, timeout)

    def get_flow_log(self, id: str, *, timeout: float | None = None) -> flow_log_pb2.FlowLog:
        return self._unary(self.flow_logs.GetFlowLog, flow_log_pb2.GetFlowLogRequest(id=id), timeout)

    def iter_flow_logs(
        self,
        region: str = "",
        *,
        resource_id: str = "",
        state: str | int | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[flow_log_pb2.FlowLog]:
        request = flow_log_pb2.ListFlowLogsRequest(
            region=region,
            resource_id=resource_id,
            state=_enum(types_pb2.FlowLogState, state),
            page_size=page_size,
        )
        return self._pages(self.flow_logs.ListFlowLogs, request, "flow_logs", timeout)

    def list_flow_logs(self, *args: Any, **kwargs: Any) -> list[flow_log_pb2.FlowLog]:
        return list(self.iter_flow_logs(*args, **kwargs))

    _FLOW_LOG_MUTABLE = ("name", "description", "traffic_type", "state")

    def update_flow_log(self, id: str, *, timeout: float | None = None, **fields: Any) -> flow_log_pb2.FlowLog:
        """Changes exactly the fields given (name, description, traffic_type, state); enums
        take friendly names (`state="paused"`, `traffic_type="deny"`)."""
        unknown = set(fields) - set(self._FLOW_LOG_MUTABLE)
        if unknown:
            raise ValueError(
                f"not mutable on a flow log: {', '.join(sorted(unknown))} "
                f"(mutable: {', '.join(self._FLOW_LOG_MUTABLE)})"
            )
        if not fields:
            raise ValueError("nothing to update: give name, description, traffic_type and/or state")
        values = dict(fields)
        if "traffic_type" in values:
            values["traffic_type"] = parse.parse_enum(types_pb2.TrafficType, values["traffic_type"])
        if "state" in values:
            values["state"] = parse.parse_enum(types_pb2.FlowLogState, values["state"])
        request = flow_log_pb2.UpdateFlowLogRequest(
            flow_log=flow_log_pb2.FlowLog(id=id, **values),
            update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
        )
        return self._unary(self.flow_logs.UpdateFlowLog, request, timeout)

    def delete_flow_log(self, id: str, *, timeout: float | None = None) -> None:
        self._unary(self.flow_logs.DeleteFlowLog, flow_log_pb2.DeleteFlowLogRequest(id=id), timeout)

    # -- query -------------------------------------------------------------------------------

    @staticmethod
    def build_query(
        *,
        region: str,
        project: str,
        log_stores: str | Sequence[str],
        start: datetime | Timestamp | str,
        end: datetime | Timestamp | str | None = None,
        filter: str = "",
        limit: int = 0,
        order: str | int | None = None,
        page_token: str = "",
    ) -> query_pb2.QueryRequest:
        """A QueryRequest from friendly values. `start`/`end` take datetimes, Timestamps, `15m`
        or RFC 3339; `end` defaults to now, fixed here once so that every page of the same
        query asks for the same window. `order`: `newest-first` (default) / `oldest-first`."""
        stores = [log_stores] if isinstance(log_stores, str) else list(log_stores)
        now = datetime.now(timezone.utc)
        start_ts = to_ts(start, now)
        end_ts = to_ts(end if end is not None else now, now)
        return query_pb2.QueryRequest(
            region=region,
            project=project,
            log_stores=stores,
            start_time=start_ts,
            end_time=end_ts,
            filter=filter,
            limit=limit,
            order=_enum(query_pb2.Order, order),
            page_token=page_token,
        )

    def _query_call(self, request: query_pb2.QueryRequest, timeout: float | None) -> QueryStream:
        call = self.query_stub.Query(request, timeout=self.timeout if timeout is None else timeout)
        return QueryStream(self, call, request)

    def query(
        self, request: query_pb2.QueryRequest | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> QueryStream:
        """One Query call (one page): iterate the result for records; `.summary` afterwards.
        Pass a QueryRequest or build_query's keyword arguments."""
        if request is None:
            request = self.build_query(**kwargs)
        elif kwargs:
            raise TypeError("give a QueryRequest or keyword arguments, not both")
        return self._query_call(request, timeout)

    def query_all(
        self, request: query_pb2.QueryRequest | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> PagedQuery:
        """Every matching record, following next_page_token; `timeout` applies per page."""
        if request is None:
            request = self.build_query(**kwargs)
        elif kwargs:
            raise TypeError("give a QueryRequest or keyword arguments, not both")
        return PagedQuery(self, request, timeout)

    @staticmethod
    def build_aggregate(
        *,
        region: str,
        project: str,
        log_stores: str | Sequence[str],
        start: datetime | Timestamp | str,
        end: datetime | Timestamp | str | None = None,
        filter: str = "",
        group_by: Sequence[str] = (),
        metrics: Sequence[str] = (),
        interval: timedelta | float | None = None,
        order_by: str = "",
        limit: int = 0,
    ) -> query_pb2.AggregateRequest:
        """An AggregateRequest from friendly values (times as for build_query; `interval` a
        timedelta or seconds)."""
        stores = [log_stores] if isinstance(log_stores, str) else list(log_stores)
        now = datetime.now(timezone.utc)
        request = query_pb2.AggregateRequest(
            region=region,
            project=project,
            log_stores=stores,
            start_time=to_ts(start, now),
            end_time=to_ts(end if end is not None else now, now),
            filter=filter,
            group_by=list(group_by),
            metrics=list(metrics),
            order_by=order_by,
            limit=limit,
        )
        if interval is not None:
            request.interval.FromTimedelta(interval if isinstance(interval, timedelta) else timedelta(seconds=interval))
        return request

    def aggregate(
        self, request: query_pb2.AggregateRequest | None = None, *, timeout: float | None = None, **kwargs: Any
    ) -> query_pb2.AggregateResponse:
        """One Aggregate call: the groups of the matching records with their metrics, top N per
        bucket and the rest in `other`. Pass an AggregateRequest or build_aggregate's keywords."""
        if request is None:
            request = self.build_aggregate(**kwargs)
        elif kwargs:
            raise TypeError("give an AggregateRequest or keyword arguments, not both")
        return self._unary(self.query_stub.Aggregate, request, timeout)

    def tail(
        self,
        *,
        region: str,
        project: str,
        log_stores: str | Sequence[str],
        filter: str = "",
        start: datetime | Timestamp | str | None = None,
        cursor: str = "",
        heartbeats: bool = False,
    ) -> TailStream:
        """Follows LogStores live until cancelled (`.cancel()`, or stop iterating and close the
        client). `start` replays from that time; `cursor` resumes after a previous message."""
        stores = [log_stores] if isinstance(log_stores, str) else list(log_stores)
        request = query_pb2.TailRequest(
            region=region, project=project, log_stores=stores, filter=filter, resume_cursor=cursor
        )
        if start is not None:
            request.start_time.CopyFrom(to_ts(start, datetime.now(timezone.utc)))
        return TailStream(self, self.query_stub.Tail(request), heartbeats)

    # -- ingest ------------------------------------------------------------------------------

    def ingest(
        self,
        flow_log_id: str,
        batches: Iterable[Iterable[record_pb2.FlowRecord] | ingest_pb2.IngestRequest],
        *,
        timeout: float | None = None,
    ) -> ingest_pb2.IngestResponse:
        """Streams batches of records (each at most 10,000) in one Ingest call; returns the
        accepted/rejected counts once every accepted record is durable. A batch may also be
        a ready IngestRequest. No deadline unless `timeout` is given: a large upload takes
        as long as it takes."""

        def requests() -> Iterator[ingest_pb2.IngestRequest]:
            for batch in batches:
                if isinstance(batch, ingest_pb2.IngestRequest):
                    yield batch
                else:
                    yield ingest_pb2.IngestRequest(flow_log_id=flow_log_id, records=list(batch))

        with self._errors():
            return self.ingest_stub.Ingest(requests(), timeout=timeout)

    def ingest_records(
        self,
        flow_log_id: str,
        records: Iterable[record_pb2.FlowRecord],
        *,
        batch_size: int = 1000,
        timeout: float | None = None,
    ) -> ingest_pb2.IngestResponse:
        """ingest() with the batching done here."""
        if not 1 <= batch_size <= MAX_INGEST_BATCH:
            raise ValueError(f"batch_size must be 1-{MAX_INGEST_BATCH}")
        iterator = iter(records)

        def chunks() -> Iterator[list[record_pb2.FlowRecord]]:
            while chunk := list(itertools.islice(iterator, batch_size)):
                yield chunk

        return self.ingest(flow_log_id, chunks(), timeout=timeout)

    def import_files(
        self,
        flow_log_id: str,
        paths: Sequence[str],
        format: str,
        *,
        batch_size: int = 1000,
        call_records: int = 100_000,
        on_problem: Callable[[Any], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
        max_problems: int = 1000,
        stdin: Any = None,
        aws_fields: Sequence[str] | None = None,
    ) -> Any:
        """Imports cloud flow-log files into a flow log through Ingest; returns an
        importers.send.ImportResult (accepted, rejected, skipped, the first problems).

        `format` is `aws` (VPC Flow Logs: text with or without a header line, gzip, Parquet) or
        `azure` (VNet / NSG flow log JSON); `paths` are files, directories (walked, oldest
        first) or `-` for `stdin` (default: sys.stdin.buffer). A line that cannot become a
        record, and a record the server refuses, is a problem with its file and line: it is
        counted, passed to `on_problem`, and the rest goes on. `on_progress` gets an
        ImportProgress after every batch. `aws_fields`: the field names of AWS lines before any
        header line (a custom format exported without its header). Batches of `batch_size` records go out on Ingest
        calls of up to `call_records` records each, durable call by call. Raises
        FileNotFoundError for a missing path (before sending anything) and FlowLogError when
        the server refuses the flow log (NOT_FOUND, FAILED_PRECONDITION when paused...)."""
        from clients.importers import send

        if not 1 <= batch_size <= MAX_INGEST_BATCH:
            raise ValueError(f"batch_size must be 1-{MAX_INGEST_BATCH}")
        return send.import_files(
            self,
            flow_log_id,
            paths,
            format,
            batch_size=batch_size,
            call_records=max(call_records, batch_size),
            on_problem=on_problem,
            on_progress=on_progress,
            max_problems=max_problems,
            stdin=stdin,
            aws_fields=aws_fields,
        )


def to_ts(value: datetime | Timestamp | str, now: datetime) -> Timestamp:
    """Like format.to_timestamp, but relative times count from the given `now`."""
    if isinstance(value, str):
        value = parse.parse_time(value, now=now)
    return parse.to_timestamp(value)


class _StubWithHelper:
    """A generated stub that is also callable as the client's helper of the same name.

    The API names both the raw stubs and the helpers `query` / `ingest`; this keeps both
    spellings working: attribute access goes to the stub (`client.query.Tail`), a call goes
    to the helper (`client.query(region=...)`).
    """

    def __init__(self, stub: Any, helper: Any) -> None:
        self._stub = stub
        self._helper = helper
        self.__doc__ = helper.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._helper(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def __repr__(self) -> str:
        return f"<{type(self._stub).__name__} + helper {self._helper.__name__}()>"


class _ErrorTranslator:
    """`with client._errors():` turns grpc.RpcError into FlowLogError (with the client's
    target, for the UNAVAILABLE hint)."""

    def __init__(self, client: FlowLogClient) -> None:
        self._client = client

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, grpc.RpcError):
            raise FlowLogError.from_rpc_error(exc, target=self._client.target, tls=self._client.tls) from None
