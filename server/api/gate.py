"""What every request goes through before a servicer sees it, so that no client can make the
server spend memory or threads it has not been allowed (issue 15):

- The API key is checked before a single byte of the request's body is read. Every method is
  registered with gRPC as request-streaming, whatever its proto says: gRPC then calls us as soon
  as the metadata is in and reads a message only when we ask for one. An unauthenticated call
  costs its headers; its body is never read (the transport's flow-control window holds ~64 KiB).
- A request's bytes are bounded before they are decoded: the transport refuses any message over
  `limits.max_message_bytes` from its length prefix (Ingest messages may be that big), every
  other request over `limits.max_request_bytes` is refused unread by protobuf, and no repeated
  field may hold more than `limits.max_repeated_values` values before the request is turned
  into Python objects. Larger messages are decoded on a worker thread, off the event loop.
- A streamed response (Query) whose client stops reading is ended after
  `limits.stream_send_timeout_seconds`: the servicer's generator is closed, which gives back its
  reader threads and the backend's read transaction. (Tail has its own bound: a subscriber that
  falls behind its queue ends with RESOURCE_EXHAUSTED and its resume cursor.)

The caller's account is put in CURRENT_ACCOUNT for the servicer (server.api.services reads it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from typing import TYPE_CHECKING, Any, Callable

import grpc

from server.api.errors import internal_status, parse_message, to_status
from server.core.errors import DomainError, InvalidArgument, ResourceExhausted
from server.core.limits import Bound, Limiter

if TYPE_CHECKING:
    from server.app import App

# The authenticated account of the request being served (set before the servicer runs).
CURRENT_ACCOUNT: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowlog_account", default=None)

# Requests up to this size are decoded on the event loop (microseconds); larger ones on a thread.
PARSE_INLINE_BYTES = 8 * 1024
# How long a call waits for room to receive its request (limits.max_receiving_bytes*), and for
# its request to arrive once it has room.
RECEIVE_WAIT_S = 10.0
RECEIVE_TIMEOUT_S = 30.0


@functools.lru_cache(maxsize=None)
def _repeated_fields(descriptor, depth: int = 0) -> bool:
    """Whether messages of this type can hold a repeated field (at any depth that we check)."""
    if depth > 8:
        return False
    for f in descriptor.fields:
        if f.is_repeated:
            return True
        if f.message_type is not None and _repeated_fields(f.message_type, depth + 1):
            return True
    return False


def check_repeated(message, limit: int, prefix: str = "", depth: int = 0) -> None:
    """INVALID_ARGUMENT naming the first repeated field of `message` (at any depth) holding more
    than `limit` values. Counts without turning the values into Python objects (len() of a
    repeated field is its size); only singular sub-messages and the elements of repeated
    messages that themselves can hold repeated fields are visited."""
    if depth > 16:
        return
    for f in message.DESCRIPTOR.fields:
        name = prefix + f.name
        if f.is_repeated:
            values = getattr(message, f.name)
            n = len(values)
            if n > limit:
                raise InvalidArgument.field(name, f"at most {limit} values (has {n}; limits.max_repeated_values)")
            if (
                f.message_type is not None
                and not f.message_type.GetOptions().map_entry
                and _repeated_fields(f.message_type)
            ):
                for i, v in enumerate(values):
                    check_repeated(v, limit, f"{name}[{i}].", depth + 1)
        elif f.message_type is not None and message.HasField(f.name) and _repeated_fields(f.message_type):
            check_repeated(getattr(message, f.name), limit, name + ".", depth + 1)


class _Messages:
    """The request messages of a call, read with context.read(). Not grpc's own request
    iterator: an async generator left before its end (a handler that refuses a message) kept
    the last message it read alive, ~2 MiB per refused call (measured on grpcio 1.85)."""

    def __init__(self, context) -> None:
        self._context = context

    def __aiter__(self) -> "_Messages":
        return self

    async def __anext__(self) -> bytes:
        raw = await self._context.read()
        if raw is grpc.aio.EOF:
            raise StopAsyncIteration
        return raw


class Gate:
    """Builds the gRPC method handlers of a service around its servicer's methods."""

    def __init__(self, app: "App") -> None:
        self.app = app
        lim = app.config.limits
        self.max_request_bytes = lim.max_request_bytes
        self.max_repeated = lim.max_repeated_values
        self.send_timeout = lim.stream_send_timeout_seconds
        self.max_message_bytes = lim.max_message_bytes
        self.receiving = Limiter(
            "bytes of requests being received",
            Bound(lim.max_receiving_bytes_per_account, "limits.max_receiving_bytes_per_account"),
            Bound(lim.max_receiving_bytes, "limits.max_receiving_bytes"),
        )
        self._released: asyncio.Event | None = None

    # -- the steps ---------------------------------------------------------------------------

    def authenticate(self, context) -> str:
        return self.app.auth.account(context)

    async def read_one(self, context, account: str) -> bytes:
        """The request of a unary-request method (its one message), refused unparsed when it is
        bigger than limits.max_request_bytes. gRPC receives the whole message, up to
        limits.max_message_bytes, before we can see its size: the call first waits for that much
        room under limits.max_receiving_bytes(_per_account)."""
        await self._reserve(account)
        try:
            raw = await asyncio.wait_for(context.read(), RECEIVE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ResourceExhausted(f"the request did not arrive within {RECEIVE_TIMEOUT_S:g} s") from None
        finally:
            self.receiving.release(account, self.max_message_bytes)
            if self._released is not None:
                self._released.set()
                self._released = None
        if raw is grpc.aio.EOF:
            raise InvalidArgument.field("request", "no request message was sent")
        size = len(raw)
        if size > self.max_request_bytes:
            del raw  # not kept alive by the error's traceback
            raise ResourceExhausted(
                f"request is {size} bytes; at most {self.max_request_bytes} bytes are "
                "accepted (limits.max_request_bytes)"
            )
        return raw

    async def _reserve(self, account: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECEIVE_WAIT_S
        while True:
            try:
                self.receiving.acquire(account, self.max_message_bytes)
                return
            except ResourceExhausted:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                if self._released is None:
                    self._released = asyncio.Event()
                try:
                    await asyncio.wait_for(self._released.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def parse(self, cls, raw: bytes):
        if len(raw) > PARSE_INLINE_BYTES:
            message = await asyncio.get_running_loop().run_in_executor(self.app.executor, parse_message, cls, raw)
        else:
            message = parse_message(cls, raw)
        check_repeated(message, self.max_repeated)
        return message

    async def send(self, context, item) -> None:
        try:
            await asyncio.wait_for(context.write(item), self.send_timeout)
        except grpc.aio.AbortError:
            raise
        except asyncio.TimeoutError:
            raise ResourceExhausted(
                f"the client read nothing for {self.send_timeout:g} s (limits.stream_send_timeout_seconds); "
                "the stream was ended to free its reader: read responses as they come, and retry"
            ) from None

    # -- handlers ----------------------------------------------------------------------------

    def handler(self, method, req_cls, impl: Callable[..., Any], serialize) -> grpc.RpcMethodHandler:
        """The gRPC handler of one method: always request-streaming (see the module docstring).
        `impl` is the servicer's method; client-streaming methods marked `takes_bytes` get the raw
        messages (Ingest, for its compiled fast path)."""
        gate = self

        if method.client_streaming:
            takes_bytes = getattr(impl, "takes_bytes", False)

            async def stream_in(request_iterator, context):
                try:
                    CURRENT_ACCOUNT.set(gate.authenticate(context))
                except DomainError as e:
                    status = to_status(e)
                else:
                    status = None
                if status is not None:
                    await context.abort_with_status(status)
                if takes_bytes:
                    return await impl(_Messages(context), context)

                async def parsed():
                    async for raw in _Messages(context):
                        yield await gate.parse(req_cls, raw)

                return await impl(parsed(), context)

            return grpc.stream_unary_rpc_method_handler(stream_in, response_serializer=serialize)

        async def request_of(context):
            # Aborted after the except blocks, the errors' tracebacks dropped: see
            # server.api.errors.handle_errors (a refused request must not stay referenced).
            try:
                account = gate.authenticate(context)
                raw = await gate.read_one(context, account)
                request = await gate.parse(req_cls, raw)
                del raw
                CURRENT_ACCOUNT.set(account)
                return request
            except DomainError as e:
                status = to_status(e)
                e.__traceback__ = None
            except Exception as e:  # noqa: BLE001 - never UNKNOWN with a Python message
                status = internal_status(method.full_name, e)
                e.__traceback__ = None
            await context.abort_with_status(status)

        if method.server_streaming:
            # A servicer method with its own bound on a client that does not read (Tail: its
            # bounded queue ends it with a resume cursor) is not timed out here: an end without
            # the cursor would cost the client a gap.
            timed = not getattr(impl, "own_backpressure", False)

            async def stream_out(request_iterator, context):
                request = await request_of(context)
                responses = impl(request, context)
                status = None
                try:
                    async for item in responses:
                        try:
                            if timed:
                                await gate.send(context, item)
                            else:
                                await context.write(item)
                        except DomainError as e:
                            status = to_status(e)
                            break
                        except Exception:  # noqa: BLE001 - a write to a call the client cancelled
                            if context.cancelled():
                                return
                            raise
                finally:
                    await responses.aclose()  # the reader's threads and transaction, now
                if status is not None:
                    await context.abort_with_status(status)

            return grpc.stream_stream_rpc_method_handler(stream_out, response_serializer=serialize)

        async def unary(request_iterator, context):
            request = await request_of(context)
            return await impl(request, context)

        return grpc.stream_unary_rpc_method_handler(unary, response_serializer=serialize)


class _Capture:
    """Stands in for the server when generated add_*Servicer_to_server functions register their
    handlers, so that we can register them through Gate.open_handler instead."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers also come through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.services[service] = dict(handlers)


def register_open_service(gate: Gate, server, add_to_server: Callable[[Any], None]) -> None:
    """Register a service that needs no API key (health, reflection) with its requests bounded
    the same way: read by us, refused unparsed above limits.max_request_bytes."""
    capture = _Capture()
    add_to_server(capture)
    for service, handlers in capture.services.items():
        wrapped = {name: open_handler(gate, h) for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))


def open_handler(gate: Gate, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`h` (a handler with its deserializer) as a request-streaming handler reading raw bytes."""
    deserialize = h.request_deserializer or (lambda raw: raw)

    async def one(request_iterator, context):
        try:
            return deserialize(await gate.read_one(context, ""))
        except DomainError as e:
            status = to_status(e)
            e.__traceback__ = None
        except Exception as e:  # noqa: BLE001 - not a valid message of the type
            status = to_status(InvalidArgument.field("request", "is not a valid message of its type"))
            e.__traceback__ = None
        await context.abort_with_status(status)

    async def many(request_iterator, context):
        async for raw in _Messages(context):
            if len(raw) > gate.max_request_bytes:
                await context.abort_with_status(
                    to_status(
                        ResourceExhausted(
                            f"request is {len(raw)} bytes; at most {gate.max_request_bytes} bytes are accepted "
                            "(limits.max_request_bytes)"
                        )
                    )
                )
            try:
                request = deserialize(raw)
            except Exception as e:  # noqa: BLE001
                e.__traceback__ = None
                request = None
            if request is None:
                await context.abort_with_status(
                    to_status(InvalidArgument.field("request", "is not a valid message of its type"))
                )
            yield request

    async def send_all(result, context):
        if hasattr(result, "__aiter__"):
            status = None
            async for item in result:
                try:
                    await gate.send(context, item)
                except DomainError as e:
                    status = to_status(e)
                    break
            if status is not None:
                await result.aclose()
                await context.abort_with_status(status)
        elif asyncio.iscoroutine(result):
            await result  # writes its responses itself (context.write)

    ser = h.response_serializer
    if h.unary_unary:

        async def uu(request_iterator, context):
            return await h.unary_unary(await one(request_iterator, context), context)

        return grpc.stream_unary_rpc_method_handler(uu, response_serializer=ser)
    if h.unary_stream:

        async def us(request_iterator, context):
            await send_all(h.unary_stream(await one(request_iterator, context), context), context)

        return grpc.stream_stream_rpc_method_handler(us, response_serializer=ser)
    if h.stream_unary:

        async def su(request_iterator, context):
            return await h.stream_unary(many(request_iterator, context), context)

        return grpc.stream_unary_rpc_method_handler(su, response_serializer=ser)

    async def ss(request_iterator, context):
        await send_all(h.stream_stream(many(request_iterator, context), context), context)

    return grpc.stream_stream_rpc_method_handler(ss, response_serializer=ser)
