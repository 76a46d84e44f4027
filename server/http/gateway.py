"""The API as JSON over HTTP (the Connect protocol) and the web console's static files.

Every RPC of flowlog.v1 is served at `POST /flowlog.v1.<Service>/<Method>`, transcoded from the
service descriptors (no per-RPC code: an RPC added to a proto is served as soon as the gRPC server
serves it) and forwarded to the server's OWN gRPC services over a private channel (a Unix socket
only this process knows). So the console goes through the same servicers, use cases, auth
(the `Authorization: Bearer` header becomes the `authorization` metadata), limits and error
mapping as gRPC clients; nothing here knows a rule.

Protocol (https://connectrpc.com/docs/protocol, the subset a browser needs):
- unary: `Content-Type: application/json` (or `application/proto`), the body is the request
  message; 200 with the response message, or an error status with a Connect error body
  `{"code": "invalid_argument", "message": ..., "details": [{"type", "value", "debug"}]}`;
  google.rpc details (BadRequest field violations, QuotaFailure) are kept, with a JSON `debug`
  copy the console reads.
- streaming (Query, Tail; Ingest as client streaming): `Content-Type: application/connect+json`
  (or `+proto`), enveloped messages (1 flag byte, 4-byte big-endian length); the response is 200
  with enveloped messages and one end-of-stream envelope (flag 2) `{"error": ...}` or `{}`.
- `Connect-Timeout-Ms` sets the call's deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool, json_format
from google.protobuf import message as pb_message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2, status_pb2

log = logging.getLogger("flowlog.http")

# gRPC code -> (Connect code name, HTTP status of a unary error), as the Connect protocol maps them.
CODES: dict[grpc.StatusCode, tuple[str, int]] = {
    grpc.StatusCode.CANCELLED: ("canceled", 499),
    grpc.StatusCode.UNKNOWN: ("unknown", 500),
    grpc.StatusCode.INVALID_ARGUMENT: ("invalid_argument", 400),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    grpc.StatusCode.NOT_FOUND: ("not_found", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("already_exists", 409),
    grpc.StatusCode.PERMISSION_DENIED: ("permission_denied", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    grpc.StatusCode.FAILED_PRECONDITION: ("failed_precondition", 400),
    grpc.StatusCode.ABORTED: ("aborted", 409),
    grpc.StatusCode.OUT_OF_RANGE: ("out_of_range", 400),
    grpc.StatusCode.UNIMPLEMENTED: ("unimplemented", 501),
    grpc.StatusCode.INTERNAL: ("internal", 500),
    grpc.StatusCode.UNAVAILABLE: ("unavailable", 503),
    grpc.StatusCode.DATA_LOSS: ("data_loss", 500),
    grpc.StatusCode.UNAUTHENTICATED: ("unauthenticated", 401),
}
# google.rpc detail types the console reads; others are passed on without a `debug` copy.
_DETAIL_TYPES = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.BadRequest,
        error_details_pb2.QuotaFailure,
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.ResourceInfo,
    )
}

END_STREAM = 0x02
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
SECURITY_HEADERS = {
    # The console loads nothing from elsewhere (no CDN): say so, so injected markup can't either.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ProtocolError(Exception):
    """A request the gateway cannot even hand to gRPC (wrong content type, bad envelope, bad JSON)."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Method:
    path: str  # "/flowlog.v1.QueryService/Query"
    request: type[pb_message.Message]
    response: type[pb_message.Message]
    client_streaming: bool
    server_streaming: bool


def service_methods(service_names: list[str]) -> dict[str, Method]:
    """Every method of the named services, from the default descriptor pool (the generated
    modules registered them on import)."""
    pool = descriptor_pool.Default()
    out = {}
    for name in service_names:
        service = pool.FindServiceByName(name)
        for m in service.methods:
            path = f"/{service.full_name}/{m.name}"
            out[path] = Method(
                path,
                GetMessageClass(m.input_type),
                GetMessageClass(m.output_type),
                m.client_streaming,
                m.server_streaming,
            )
    return out


class Codec:
    """JSON (proto3's canonical JSON mapping, lowerCamelCase names, enums by name, 64-bit
    integers as strings) or binary protobuf."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def decode(self, cls: type[pb_message.Message], data: bytes) -> Any:
        if not self.json:
            try:
                return cls.FromString(data)
            except pb_message.DecodeError as e:
                raise ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the body is not a valid {cls.DESCRIPTOR.full_name} message ({e})",
                ) from None
        msg = cls()
        if not data.strip():
            return msg
        try:
            json_format.Parse(data.decode("utf-8"), msg)
        except UnicodeDecodeError:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "the body is not UTF-8 text") from None
        except json_format.ParseError as e:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the body is not a valid {cls.DESCRIPTOR.full_name} in JSON: {e}",
                field=_field_of(str(e)),
            ) from None
        return msg

    def encode(self, msg: Any) -> bytes:
        if not self.json:
            return msg.SerializeToString()
        return json_format.MessageToJson(msg, indent=None, ensure_ascii=False).encode("utf-8")


def _field_of(parse_error: str) -> str:
    """The field json_format names in its message ('Failed to parse log_stores field: ...' or
    'Message type "X" has no field named "y"'), so the console can show it next to the field."""
    for marker in ("Failed to parse ", 'has no field named "'):
        i = parse_error.find(marker)
        if i >= 0:
            rest = parse_error[i + len(marker) :]
            return rest.split(" ", 1)[0].rstrip('".') if marker.startswith("Failed") else rest.split('"', 1)[0]
    return "request"


def envelope(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def parse_envelopes(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    i = 0
    while i < len(body):
        if len(body) - i < 5:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "truncated envelope: a streaming request is "
                "messages each prefixed by 1 flag byte and a 4-byte big-endian length",
            )
        flags, n = struct.unpack_from(">BI", body, i)
        i += 5
        if len(body) - i < n:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT, f"truncated envelope: {n} bytes announced, {len(body) - i} sent"
            )
        if flags & 0x01:
            raise ProtocolError(
                grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported; send them uncompressed"
            )
        out.append((flags, body[i : i + n]))
        i += n
    return out


def error_json(code: grpc.StatusCode, message: str, details: list[Any] | None = None) -> dict:
    """A Connect error body. Each google.rpc detail is the Any's type and base64 value, plus a
    `debug` JSON copy of the detail's fields (what the console reads to place violations)."""
    out: dict[str, Any] = {"code": CODES.get(code, ("unknown", 500))[0], "message": message}
    items = []
    for any_msg in details or ():
        type_name = any_msg.type_url.rsplit("/", 1)[-1]
        item: dict[str, Any] = {"type": type_name, "value": base64.b64encode(any_msg.value).decode().rstrip("=")}
        cls = _DETAIL_TYPES.get(type_name)
        if cls is not None:
            detail = cls()
            if any_msg.Unpack(detail):
                item["debug"] = json_format.MessageToDict(detail)
        items.append(item)
    if items:
        out["details"] = items
    return out


def rpc_error_json(err: grpc.aio.AioRpcError) -> dict:
    details: list[Any] = []
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                details = list(status_pb2.Status.FromString(value).details)
            except pb_message.DecodeError:
                details = []
    return error_json(err.code(), err.details() or "", details)


def protocol_error_json(e: ProtocolError) -> dict:
    details = []
    if e.code == grpc.StatusCode.INVALID_ARGUMENT:
        from google.protobuf import any_pb2

        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=e.field or "request", description=e.message)
                ]
            )
        )
        details.append(packed)
    return error_json(e.code, e.message, details)


def _timeout(request: web.Request) -> float | None:
    raw = request.headers.get("Connect-Timeout-Ms")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise ProtocolError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "Connect-Timeout-Ms must be a positive integer of at most 10 digits",
            field="Connect-Timeout-Ms",
        )
    return int(raw) / 1000.0


def _metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    auth = request.headers.get("Authorization")
    return (("authorization", auth),) if auth else ()


class _HeaderContext:
    """Just enough of a grpc ServicerContext for server.api.auth.Authenticator.account."""

    def __init__(self, authorization: str | None) -> None:
        self._md = (("authorization", authorization),) if authorization else ()

    def invocation_metadata(self) -> tuple:
        return self._md


# Bodies larger than this are parsed off the event loop (JSON parsing of a large request would
# otherwise stall every other stream of the server for its duration).
PARSE_INLINE_BYTES = 64 * 1024


class Gateway:
    """The HTTP listener: Connect routes for `methods`, forwarded over `channel`, and the static
    console from `static_dir` (with the charting library from `vendor_files`).

    `authenticator` (server.api.auth.Authenticator) is asked about the Authorization header
    before the body is read, so a caller without a valid key cannot make the server read or parse
    anything (the gRPC side checks the key again: this is only the early refusal)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        methods: dict[str, Method],
        static_dir: Path,
        vendor_files: dict[str, Path],
        max_body_bytes: int,
        authenticator: Any = None,
    ) -> None:
        self.authenticator = authenticator
        self.channel = channel
        self.methods = methods
        self.static_dir = static_dir.resolve()
        self.vendor_files = vendor_files
        self.max_body_bytes = max_body_bytes
        self.runner: web.AppRunner | None = None
        self.port = 0

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._headers])
        app.router.add_post("/{service}/{method}", self.rpc)
        app.router.add_get("/", self.index)
        app.router.add_get("/vendor/{name}", self.vendor)
        app.router.add_get("/{name}", self.static)
        return app

    async def start(self, listen: str, ssl_context: ssl.SSLContext | None = None) -> int:
        host, _, port = listen.rpartition(":")
        # handler_cancellation: a browser that goes away cancels its handler, and so its gRPC
        # call (a Tail would otherwise stay open until its next heartbeat fails to write).
        # shutdown_timeout: on stop, open streams (Tail) are cancelled after this grace instead of
        # holding the shutdown for aiohttp's default minute.
        self.runner = web.AppRunner(
            self.application(), handler_cancellation=True, access_log=None, shutdown_timeout=2.0
        )
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=ssl_context, reuse_address=True
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else int(port)
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.channel.close()

    @web.middleware
    async def _headers(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        response = await handler(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    # ---- static console -------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._file(self.static_dir / "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (self.static_dir / name).resolve()
        if path.parent != self.static_dir or path.suffix not in STATIC_TYPES:
            raise web.HTTPNotFound(text="not found")
        return self._file(path)

    async def vendor(self, request: web.Request) -> web.StreamResponse:
        path = self.vendor_files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound(text="not found")
        if not path.is_file():
            raise web.HTTPServiceUnavailable(text=f"{path.name} is not built: run `make web` (npm ci in clients/web)")
        return self._file(path)

    def _file(self, path: Path) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound(text="not found")
        ctype = STATIC_TYPES.get(path.suffix, "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})

    # ---- RPCs --------------------------------------------------------------------------------
    async def rpc(self, request: web.Request) -> web.StreamResponse:
        path = f"/{request.match_info['service']}/{request.match_info['method']}"
        method = self.methods.get(path)
        if method is None:
            return self._unary_error(
                ProtocolError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"no RPC {path[1:]}; the "
                    "services are " + ", ".join(sorted({p.split("/")[1] for p in self.methods})),
                )
            )
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        streaming = method.client_streaming or method.server_streaming
        expected = (
            ("application/connect+json", "application/connect+proto")
            if streaming
            else ("application/json", "application/proto")
        )
        if ctype not in expected:
            # Connect: an unsupported content type is HTTP 415, with no Connect body.
            return web.json_response(
                {
                    "code": "invalid_argument",
                    "message": f"{path[1:]} takes Content-Type {' or '.join(expected)}, not {ctype or 'none'}",
                },
                status=415,
                headers={"Accept-Post": ", ".join(expected)},
            )
        codec = Codec(ctype.endswith("json"))
        try:
            self._authenticate(request)
            timeout = _timeout(request)
            body = await request.read()
        except ProtocolError as e:
            return self._unary_error(e) if not streaming else await self._stream_error(request, codec, e)
        except web.HTTPRequestEntityTooLarge:
            big = ProtocolError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request body larger than {self.max_body_bytes} bytes (limits.max_message_bytes)",
            )
            return self._unary_error(big) if not streaming else await self._stream_error(request, codec, big)
        if streaming:
            return await self._streaming(request, method, codec, body, timeout)
        return await self._unary(method, codec, body, timeout, _metadata(request))

    def _authenticate(self, request: web.Request) -> None:
        if self.authenticator is None:
            return
        from server.core.errors import Unauthenticated

        try:
            self.authenticator.account(_HeaderContext(request.headers.get("Authorization")))
        except Unauthenticated as e:
            raise ProtocolError(grpc.StatusCode.UNAUTHENTICATED, e.message) from None

    async def _decode(self, codec: Codec, cls: type[pb_message.Message], data: bytes) -> Any:
        if len(data) <= PARSE_INLINE_BYTES:
            return codec.decode(cls, data)
        return await asyncio.get_running_loop().run_in_executor(None, codec.decode, cls, data)

    def _unary_error(self, e: ProtocolError) -> web.Response:
        return web.json_response(protocol_error_json(e), status=CODES[e.code][1])

    async def _unary(self, method: Method, codec: Codec, body: bytes, timeout: float | None, md: tuple) -> web.Response:
        try:
            req = await self._decode(codec, method.request, body)
        except ProtocolError as e:
            return self._unary_error(e)
        call = self.channel.unary_unary(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )
        try:
            resp = await call(req, metadata=md, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return web.json_response(rpc_error_json(err), status=CODES.get(err.code(), ("unknown", 500))[1])
        return web.Response(
            body=codec.encode(resp), content_type="application/json" if codec.json else "application/proto"
        )

    async def _stream_error(self, request: web.Request, codec: Codec, e: ProtocolError) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": self._stream_ctype(codec)})
        await resp.prepare(request)
        await resp.write(envelope(END_STREAM, json.dumps({"error": protocol_error_json(e)}).encode()))
        await resp.write_eof()
        return resp

    @staticmethod
    def _stream_ctype(codec: Codec) -> str:
        return "application/connect+json" if codec.json else "application/connect+proto"

    async def _streaming(
        self, request: web.Request, method: Method, codec: Codec, body: bytes, timeout: float | None
    ) -> web.StreamResponse:
        try:
            messages = [await self._decode(codec, method.request, data) for _, data in parse_envelopes(body)]
            if not method.client_streaming and len(messages) != 1:
                raise ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{method.path[1:]} takes exactly one request message, got {len(messages)}",
                )
        except ProtocolError as e:
            return await self._stream_error(request, codec, e)
        md = _metadata(request)
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": self._stream_ctype(codec),
                "Cache-Control": "no-store",
                # no proxy buffering: Tail is live
                "X-Accel-Buffering": "no",
            },
        )
        await resp.prepare(request)
        end: dict[str, Any] = {}
        call: Any = None
        try:
            if method.client_streaming:
                stub = self.channel.stream_unary(
                    method.path,
                    request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString,
                )

                async def requests() -> AsyncIterator[Any]:
                    for m in messages:
                        yield m

                call = stub(requests(), metadata=md, timeout=timeout)
                await resp.write(envelope(0, codec.encode(await call)))
            else:
                stub = self.channel.unary_stream(
                    method.path,
                    request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString,
                )
                call = stub(messages[0], metadata=md, timeout=timeout)
                async for item in call:
                    await resp.write(envelope(0, codec.encode(item)))
        except grpc.aio.AioRpcError as err:
            end = {"error": rpc_error_json(err)}
        except (asyncio.CancelledError, ConnectionError):
            if call is not None:
                call.cancel()
            raise
        await resp.write(envelope(END_STREAM, json.dumps(end).encode()))
        await resp.write_eof()
        return resp


def server_ssl_context(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext:
    """HTTPS with the gRPC server's own certificate (and client-certificate rule)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
