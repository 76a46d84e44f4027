"""Domain errors -> gRPC status codes with google.rpc details, for unary and streaming handlers."""

from __future__ import annotations

import functools
import inspect
import logging

import grpc
from google.protobuf import any_pb2
from google.protobuf import message as pb_message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.core import errors as E

log = logging.getLogger("flowlog.api")

_CODES: list[tuple[type, grpc.StatusCode, int]] = [
    (E.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    (E.NotFound, grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    (E.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    (E.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    (E.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    (E.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    (E.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    (E.Unavailable, grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
]


def parse_message(cls, raw: bytes):
    """The request `cls` parsed from `raw`; bytes that are not a valid message are INVALID_ARGUMENT
    naming the message type (gRPC's own deserialiser would answer UNKNOWN)."""
    try:
        return cls.FromString(raw)
    except pb_message.DecodeError as e:
        raise E.InvalidArgument.field(
            "request",
            f"is not a valid {cls.DESCRIPTOR.full_name} message ({e}); send a protobuf-encoded request of that type",
        ) from None


def to_status(err: E.DomainError) -> grpc.Status:
    for cls, _, code in _CODES:
        if isinstance(err, cls):
            break
    else:  # pragma: no cover - every DomainError subclass is listed
        code = code_pb2.INTERNAL
    status = status_pb2.Status(code=code, message=err.message)
    detail = None
    if isinstance(err, E.InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.violations
            ]
        )
    elif isinstance(err, E.QuotaExceeded):
        detail = error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject=err.subject, description=err.description)]
        )
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def internal_status(method: str, exc: BaseException) -> grpc.Status:
    log.exception("internal error in %s", method, exc_info=exc)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; the server log has the details")
    )


def handle_errors(fn):
    """Wrap an async servicer method (unary or streaming) so domain errors become statuses.

    Unexpected exceptions become INTERNAL with the traceback logged, never a crashed server.
    The call is aborted after the except block, with the error's traceback dropped: an abort
    raised inside it chained the error, its traceback and the frames' locals (a refused 2 MiB
    Ingest message) to what gRPC keeps of the call, and the raised collector thresholds
    (server.main.configure_gc) left them there: ~2 MiB of RSS per refused message (issue 15).
    """
    name = fn.__qualname__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
                return
            except E.DomainError as err:
                status = to_status(err)
                err.__traceback__ = None
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence
                status = internal_status(name, exc)
                exc.__traceback__ = None
            await context.abort_with_status(status)

        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            return await fn(self, request, context)
        except E.DomainError as err:
            status = to_status(err)
            err.__traceback__ = None
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            status = internal_status(name, exc)
            exc.__traceback__ = None
        await context.abort_with_status(status)

    return unary
