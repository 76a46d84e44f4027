"""ReplicaService: how replicas serve their spools to each other's Tails, both ends.

Server end (`ReplicaServicer`): StreamSpool runs the ordinary Tail logic (server.pipeline.tail,
replay from the spool then live, filtered here at the source) on raw positions, for the merged
Tail session of another replica. Client end (`GrpcPeers`): the server.pipeline.replicated.
PeerStreams that those merged sessions open calls with, mapping gRPC statuses to domain errors
(Unavailable for anything worth retrying).

Authentication: the metadata `flowlog-replica-secret` must carry the secret the replicas share
through the metadata store (`setting("replica_secret")`); client API keys are not accepted here.
The service exists only with a replica directory (metadata_backend postgres).
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import Any, Iterator

import grpc

from flowlog.v1 import replica_pb2, replica_pb2_grpc
from server.api import wire
from server.api.errors import handle_errors
from server.api.gate import Gate
from server.api.services import Runner, _Base
from server.core import filter as flt
from server.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from server.core.limits import Limiter
from server.pipeline import Pipeline
from server.pipeline.replicated import PeerMessage, Position, Subscription

log = logging.getLogger("flowlog.replica")

SECRET_HEADER = "flowlog-replica-secret"
SERVICE_NAME = replica_pb2.DESCRIPTOR.services_by_name["ReplicaService"].full_name
# The pseudo-account the receiving-bytes bound (server.api.gate) counts replica calls under.
_REPLICAS = "\x00replicas"


class ReplicaGate(Gate):
    """The Gate of ReplicaService: the replicas' shared secret instead of an API key."""

    def __init__(self, app: Any, secret: str) -> None:
        super().__init__(app)
        self._secret = secret.encode()

    def authenticate(self, context) -> str:
        given = b""
        for key, value in context.invocation_metadata() or ():
            if key == SECRET_HEADER:
                given = value.encode() if isinstance(value, str) else value
                break
        if not given or not hmac.compare_digest(given, self._secret):
            raise Unauthenticated(
                "ReplicaService is internal to flowlog replicas: it needs the replicas' shared secret "
                f"(metadata {SECRET_HEADER}), not an API key"
            )
        return _REPLICAS


def _response(batch: bytes, records: int, position: tuple[int, int], fell_behind: bool = False) -> bytes:
    return replica_pb2.StreamSpoolResponse(
        batch=batch, records=records, next_seq=position[0], skip=position[1], fell_behind=fell_behind
    ).SerializeToString()


class ReplicaServicer(_Base):
    def __init__(self, runner: Runner, pipeline: Pipeline, slots: Limiter) -> None:
        super().__init__(runner)
        self.pipeline = pipeline
        # The same slots as client Tails (limits.max_tail_streams*): each stream holds a thread
        # of the Tail pool here, so a Tail takes a slot on every replica it follows.
        self.slots = slots
        self._shared = wire.SharedBatches()

    @handle_errors
    async def StreamSpool(self, request, context):
        account = request.account_id
        if not account or not request.log_stores:
            raise InvalidArgument.field("account_id", "account_id and log_stores are required")
        spool = self.pipeline.spool
        if spool is None or request.spool_id != spool.spool_id:
            # The caller's directory is behind (another data dir at this address): it retries.
            raise Unavailable(
                f"this replica's spool is {spool.spool_id if spool else '(closed)'}, not {request.spool_id}"
            )
        self.slots.acquire(account)
        try:
            predicate = flt.compile_predicate(flt.parse(request.filter)) if request.filter.strip() else None
            position = (request.next_seq, request.skip) if request.has_position else None
            heartbeat_s = (request.heartbeat_ms or 15_000) / 1000
            session = await self.run(
                lambda: self.pipeline.spool_stream(
                    account,
                    request.region,
                    request.project,
                    list(request.log_stores),
                    predicate,
                    position=position,
                    start_ms=None if position is not None else request.stored_since_ms,
                    heartbeat_s=max(0.1, heartbeat_s),
                )
            )
            # The first message says where the stream starts (a stored-since start resolved).
            yield _response(b"", 0, session.position)
            shared = self._shared
            async with self.feed(lambda: _next_message(session, shared), session) as feed:
                async for response in feed:
                    yield response
        finally:
            self.slots.release(account)

    # Ends by its own bounded queue (fell_behind), like Tail.
    StreamSpool.own_backpressure = True


def _next_message(session, shared: wire.SharedBatches) -> bytes | None:
    try:
        event = next(session, None)
    except ResourceExhausted:  # the subscription overflowed: the caller resumes from its position
        return _response(b"", 0, session.position, fell_behind=True)
    if event is None:
        return None
    kind, records, _ = event
    if kind == "records":
        return _response(shared.get(records), len(records), session.position)
    return _response(b"", 0, session.position)


# -- the client end ------------------------------------------------------------------------------

_RETRY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAUTHENTICATED,  # a secret being rotated, a replica of another deployment
    grpc.StatusCode.UNIMPLEMENTED,  # a replica not yet upgraded
}


class _Call:
    def __init__(self, call: Any, spool_id: str, address: str) -> None:
        self._call = call
        self._where = f"replica {spool_id} ({address})"

    def __iter__(self) -> Iterator[PeerMessage]:
        try:
            for m in self._call:
                yield PeerMessage(m.batch, m.records, m.next_seq, m.skip, m.fell_behind)
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            if code in _RETRY:
                raise Unavailable(f"{self._where}: {code.name}: {details}") from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(f"{self._where}: {details}") from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhausted(f"{self._where}: {details}") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(details) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument.field("filter", f"{self._where}: {details}") from None
            raise Unavailable(f"{self._where}: {code.name}: {details}") from None

    def cancel(self) -> None:
        self._call.cancel()


class GrpcPeers:
    """server.pipeline.replicated.PeerStreams over gRPC: one channel per peer address, reconnecting
    quickly (a replica restarting is back within seconds), keepalive so a peer that vanished
    without closing its connections is noticed."""

    def __init__(self, secret: str, *, root_certificates: bytes | None = None, max_message_bytes: int) -> None:
        self._metadata = ((SECRET_HEADER, secret),)
        self._roots = root_certificates
        self._options = [
            ("grpc.max_receive_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, Any]] = {}

    def _stub(self, address: str) -> Any:
        with self._lock:
            found = self._stubs.get(address)
            if found is None:
                if self._roots is not None:
                    channel = grpc.secure_channel(
                        address, grpc.ssl_channel_credentials(self._roots), options=self._options
                    )
                else:
                    channel = grpc.insecure_channel(address, options=self._options)
                found = (channel, replica_pb2_grpc.ReplicaServiceStub(channel))
                self._stubs[address] = found
            return found[1]

    def open(
        self, address: str, spool_id: str, subscription: Subscription, position: Position, heartbeat_s: float
    ) -> _Call:
        request = replica_pb2.StreamSpoolRequest(
            account_id=subscription.account_id,
            region=subscription.region,
            project=subscription.project,
            log_stores=list(subscription.log_stores),
            filter=subscription.filter_text,
            spool_id=spool_id,
            has_position=not position.pending,
            next_seq=0 if position.pending else position.next_seq,
            skip=0 if position.pending else position.skip,
            stored_since_ms=position.since_ms if position.pending else 0,
            heartbeat_ms=int(heartbeat_s * 1000),
        )
        return _Call(self._stub(address).StreamSpool(request, metadata=self._metadata), spool_id, address)

    def close(self) -> None:
        with self._lock:
            stubs, self._stubs = self._stubs, {}
        for channel, _ in stubs.values():
            channel.close()
