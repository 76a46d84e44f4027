"""Tail across replicas: one session that follows this replica's spool and every peer's.

Replicas are flowlog-server processes sharing the metadata store; each has its own durable spool
(server.pipeline.spool), so a record lives in exactly one spool, the one of the replica that
acknowledged it. A merged session has one *source* per spool: the local one is an ordinary
TailSession on raw positions; each peer's is a ReplicaService.StreamSpool call (the same
TailSession logic, run by the peer on its own spool, filtered there), opened through an injected
`PeerStreams` (server.api.peers: this module imports no gRPC).

Order promised: the records of one spool arrive in that spool's commit order (the order the
replica acknowledged them); records of different spools interleave as they arrive, with no order
between them. A flow log fed through one replica (one Ingest stream, or the generator on the
replica that holds its lease) therefore arrives in order.

The cursor is a signed vector {spool_id: (next_seq, skip)} plus `known_ms`, the time (clock of
the replica that read it, taken before the read) of the newest directory snapshot the session had
taken in: every replica registered before known_ms is in the vector, and since a replica
registers before it spools anything, a spool missing from the vector holds only records stored
after known_ms. Such a spool starts at the records stored since known_ms minus
`replica.clock_skew_seconds` (the replicas' clocks may disagree; starting earlier can never
duplicate, since nothing of that spool was delivered under this cursor). A spool whose first
position is not known yet (its replica is down) stays in the vector as "stored since T".
Entries of spools this replica does not know (yet) are carried forward unchanged, so a cursor
resumed on a replica whose directory is a few seconds behind loses nothing. The single-spool
cursor of a server without replicas (version 1) is accepted: its spool resumes exactly, the
others start at the time it is resumed.

Each source runs a pump thread that pushes its events into the session's queue; a pump blocks
while its source has `queue_records` records queued, so a slow client never makes this process
buffer more than that per source: the local source's hub subscription, or the peer's, then
overflows (limits.tail_buffer_records) and the session ends with RESOURCE_EXHAUSTED and the
resume cursor, as a single-process Tail does. Positions are applied when an event is taken from
the queue, so every cursor names exactly what the client has received.

A peer that cannot be reached (down, restarting, its address changing) is retried from its last
position with back-off, and only while its heartbeat in the directory is fresh: a dead replica
costs nothing until it heartbeats again, and then its records (durable in its spool) arrive.
A replica that appears while the session runs is picked up at the next directory refresh.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

from server.core.errors import DomainError, FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from server.core.paging import TokenSigner
from server.core.ports import ReplicaSnapshot
from server.pipeline.tail import CURSOR_VERSION, Event, TailSession

log = logging.getLogger(__name__)

VECTOR_CURSOR_VERSION = 2
_KIND = "tail"
# At most this many spools in a cursor (the token stays under server.core.paging's 4 KiB).
MAX_CURSOR_SPOOLS = 64


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the cursor -----------------------------------------------------------------------------------


class Position(NamedTuple):
    """Where a source stands: after (next_seq, skip), or, before its first position is known,
    at the first batch stored at or after since_ms (next_seq == -1)."""

    next_seq: int
    skip: int = 0

    @classmethod
    def since(cls, since_ms: int) -> "Position":
        return cls(-1, since_ms)

    @property
    def pending(self) -> bool:
        return self.next_seq < 0

    @property
    def since_ms(self) -> int:
        return self.skip


class VectorCursor(NamedTuple):
    positions: dict[str, Position]
    known_ms: int | None  # None: a version-1 cursor (one spool, no directory)


class VectorCursorCodec:
    """Signs and checks merged cursors (version 2) and reads single-spool ones (version 1)."""

    def __init__(self, secret: bytes) -> None:
        self._signer = TokenSigner(secret)

    def encode(self, account: str, scope: str, cursor: VectorCursor) -> str:
        vec = {sid: ([p.since_ms] if p.pending else [p.next_seq, p.skip]) for sid, p in cursor.positions.items()}
        return self._signer.encode(_KIND, account, scope, [VECTOR_CURSOR_VERSION, vec, cursor.known_ms])

    def decode(self, token: str, account: str, scope: str) -> VectorCursor:
        pos = self._signer.decode(token, _KIND, account, scope, field="resume_cursor")
        bad = InvalidArgument.field("resume_cursor", "is not a valid cursor of this server version")
        if isinstance(pos, list) and len(pos) == 4 and pos[0] == CURSOR_VERSION:
            _, sid, seq, skip = pos
            if not (isinstance(sid, str) and _nat(seq) and _nat(skip)):
                raise bad
            return VectorCursor({sid: Position(seq, skip)}, None)
        if not (isinstance(pos, list) and len(pos) == 3 and pos[0] == VECTOR_CURSOR_VERSION):
            raise bad
        _, vec, known = pos
        if not isinstance(vec, dict) or not _nat(known):
            raise bad
        out: dict[str, Position] = {}
        for sid, p in vec.items():
            if isinstance(p, list) and len(p) == 2 and _nat(p[0]) and _nat(p[1]):
                out[sid] = Position(p[0], p[1])
            elif isinstance(p, list) and len(p) == 1 and _nat(p[0]):
                out[sid] = Position.since(p[0])
            else:
                raise bad
        return VectorCursor(out, known)


def _nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# -- what the session needs from outside -----------------------------------------------------------


class PeerMessage(NamedTuple):
    """One message of a peer's spool stream: `batch` is an encoded flowlog.v1.RecordBatch (empty
    in a heartbeat) of `records` records; the position after it; `fell_behind` ends the stream."""

    batch: bytes
    records: int
    next_seq: int
    skip: int
    fell_behind: bool


@dataclass(frozen=True)
class Subscription:
    """What a merged session follows in every peer's spool: these LogStores of one account, the
    records filtered at the source by `filter_text` (the Tail filter language)."""

    account_id: str
    region: str
    project: str
    log_stores: Sequence[str]
    filter_text: str


class PeerCall(Protocol):
    """An open StreamSpool call: iterate its messages; cancel() from any thread ends it."""

    def __iter__(self) -> Iterator[PeerMessage]: ...

    def cancel(self) -> None: ...


class PeerStreams(Protocol):
    """Opens StreamSpool calls to peers (server.api.peers). Iterating a call raises Unavailable
    for anything worth retrying (unreachable, restarting, another spool at that address), and
    FailedPrecondition / ResourceExhausted / InvalidArgument / NotFound as the peer answered."""

    def open(
        self, address: str, spool_id: str, subscription: Subscription, position: Position, heartbeat_s: float
    ) -> PeerCall: ...


@dataclass(frozen=True)
class ReplicaTails:
    """What merged sessions share (server.app wires it): the peer connections, the directory
    snapshot kept fresh by the heartbeat loop (server.replica_loop), the cursor codec, how old a
    heartbeat may be for its replica to count as up, and the clocks' skew allowance."""

    peers: PeerStreams
    snapshot: Callable[[], ReplicaSnapshot]
    codec: VectorCursorCodec
    live_ms: int
    skew_ms: int


class EncodedRecords(bytes):
    """Records already encoded as a flowlog.v1.RecordBatch (from a peer): sent to the client as
    they are. `n_records` is how many."""

    n_records: int

    def __new__(cls, data: bytes, n_records: int) -> "EncodedRecords":
        obj = super().__new__(cls, data)
        obj.n_records = n_records
        return obj


# -- the session -----------------------------------------------------------------------------------


class _Item(NamedTuple):
    source: "_Source"
    payload: Any  # list[FlowRecord] | EncodedRecords | None (a position only)
    n_records: int
    position: Position


class _Source:
    """One spool's stream inside a merged session."""

    def __init__(self, spool_id: str, start: Position) -> None:
        self.spool_id = spool_id
        self.start = start
        self.queued = 0
        self.thread: threading.Thread | None = None
        self.call: PeerCall | None = None
        self.local: TailSession | None = None


class MergedTailSession:
    """An iterator of Event("records", records, cursor) and Event("heartbeat", [], cursor) over
    every replica's spool (see the module docstring). Same contract as TailSession: the start is
    validated in the constructor, next() blocks at most about heartbeat_s, close() from any
    thread ends it; ResourceExhausted (with `.cursor`) when the client fell behind."""

    def __init__(
        self,
        *,
        local_spool_id: str,
        open_local: Callable[..., TailSession],
        peers: PeerStreams,
        snapshot: Callable[[], ReplicaSnapshot],
        live_ms: int,
        codec: VectorCursorCodec,
        account_id: str,
        region: str,
        project: str,
        log_stores: Sequence[str],
        scope: str,
        filter_text: str,
        start_ms: int | None = None,
        cursor: str | None = None,
        heartbeat_s: float = 15.0,
        queue_records: int = 5_000,
        skew_ms: int = 2_000,
        refresh_s: float = 1.0,
        backoff_min_s: float = 0.25,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.account_id = account_id
        self.region = region
        self.project = project
        self.log_stores = tuple(dict.fromkeys(log_stores))
        self._scope = scope
        self._filter = filter_text
        self._subscription = Subscription(account_id, region, project, self.log_stores, filter_text)
        self._codec = codec
        self._peers = peers
        self._snapshot = snapshot
        self._live_ms = live_ms
        self._local_id = local_spool_id
        self._heartbeat_s = heartbeat_s
        self._queue_records = queue_records
        self._skew_ms = skew_ms
        self._refresh_s = refresh_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._cond = threading.Condition(threading.Lock())
        self._items: collections.deque[_Item] = collections.deque()
        self._error: Exception | None = None
        self._closed = False
        self._started = False
        self._sources: dict[str, _Source] = {}
        self._last_event = time.monotonic()
        self._last_refresh = time.monotonic()

        snap = snapshot()
        now = _now_ms()
        decoded = codec.decode(cursor, account_id, scope) if cursor else None
        # The vector this session stands at (what the client has received), and since when a
        # spool it does not know yet starts.
        self._vec: dict[str, Position] = {}
        if decoded is not None:
            self._vec.update(decoded.positions)
            if decoded.known_ms is None:  # a single-spool cursor: it must name a spool we know
                (sid,) = decoded.positions
                if sid != local_spool_id and all(r.replica_id != sid for r in snap.replicas):
                    raise FailedPrecondition(
                        "resume_cursor was issued by another server, or before its spool was reset: "
                        "start a new tail (with start_time) and use Query for the gap"
                    )
                self._known_ms = now
            else:
                self._known_ms = max(decoded.known_ms, snap.read_ms)
            unknown_since = (decoded.known_ms if decoded.known_ms is not None else now) - skew_ms
        else:
            self._known_ms = snap.read_ms
            unknown_since = start_ms if start_ms is not None else now

        # The local source first: a bad or expired position fails here, before any streaming.
        local_start = self._vec.get(local_spool_id)
        if local_start is None:
            if decoded is None and start_ms is None:
                local_start = None  # live only: from the head
            else:
                local_start = Position.since(max(0, unknown_since))
        if local_start is None:
            session = open_local(position=None, start_ms=None)
        elif local_start.pending:
            session = open_local(position=None, start_ms=local_start.since_ms)
        else:
            session = open_local(position=(local_start.next_seq, local_start.skip), start_ms=None)
        src = _Source(local_spool_id, Position(*session.position))
        src.local = session
        self._sources[local_spool_id] = src
        self._vec[local_spool_id] = src.start
        self._unknown_since = max(0, unknown_since)
        for r in snap.replicas:
            if r.replica_id != local_spool_id:
                self._add_peer(r.replica_id)

    # -- sources ----------------------------------------------------------------------------

    def _add_peer(self, spool_id: str) -> None:
        start = self._vec.get(spool_id) or Position.since(self._unknown_since)
        self._vec[spool_id] = start
        self._sources[spool_id] = _Source(spool_id, start)
        if self._started:
            self._start_pump(self._sources[spool_id])

    def _start_pump(self, src: _Source) -> None:
        target = self._pump_local if src.local is not None else self._pump_peer
        src.thread = threading.Thread(target=target, args=(src,), name=f"flowlog-tail-{src.spool_id}", daemon=True)
        src.thread.start()

    def _refresh(self) -> None:
        """Take in a newer directory snapshot: start a source for each replica that appeared."""
        self._last_refresh = time.monotonic()
        snap = self._snapshot()
        if snap.read_ms <= self._known_ms:
            return
        with self._cond:
            for r in snap.replicas:
                if r.replica_id not in self._sources:
                    log.info("tail: following a new replica", extra={"replica_id": r.replica_id})
                    self._add_peer(r.replica_id)
            self._known_ms = snap.read_ms
            self._unknown_since = max(0, snap.read_ms - self._skew_ms)

    def _push(self, src: _Source, payload: Any, count: int, position: Position) -> bool:
        """Queue one event of `src`; blocks while `src` has queue_records records queued. False
        once the session is closed or ended."""
        with self._cond:
            while src.queued >= self._queue_records and not (self._closed or self._error):
                self._cond.wait(1.0)
            if self._closed or self._error:
                return False
            self._items.append(_Item(src, payload, count, position))
            src.queued += count
            self._cond.notify_all()
            return True

    def _fail(self, error: Exception) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def _pump_local(self, src: _Source) -> None:
        session = src.local
        assert session is not None
        last = src.start
        try:
            for kind, records, _ in session:
                pos = Position(*session.position)
                if kind == "records":
                    if not self._push(src, records, len(records), pos):
                        return
                elif pos != last and not self._push(src, None, 0, pos):
                    return
                last = pos
        except DomainError as e:
            self._fail(e)
        except Exception as e:  # noqa: BLE001 - never leave the client waiting on a dead pump
            log.exception("tail: the local source failed")
            self._fail(Unavailable(f"the tail failed ({e!r}); reconnect with resume_cursor"))

    def _peer_live(self, spool_id: str) -> tuple[str, bool]:
        """(address, heartbeat fresh) of a peer in the newest snapshot; ("", False) if absent."""
        for r in self._snapshot().replicas:
            if r.replica_id == spool_id:
                return r.address, r.heartbeat_age_ms <= self._live_ms
        return "", False

    def _pump_peer(self, src: _Source) -> None:
        pos = src.start
        delay = self._backoff[0]
        failures = 0
        while not (self._closed or self._error):
            address, live = self._peer_live(src.spool_id)
            if not address or (failures and not live):
                self._wait(self._refresh_s)
                continue
            try:
                call = self._peers.open(
                    address, src.spool_id, self._subscription, pos, heartbeat_s=max(0.2, self._heartbeat_s / 2)
                )
                src.call = call
                if self._closed:
                    call.cancel()
                    return
                for m in call:
                    new = Position(m.next_seq, m.skip)
                    if m.fell_behind:
                        self._fail(ResourceExhausted("tail fell behind"))
                        return
                    if m.records:
                        if not self._push(src, EncodedRecords(m.batch, m.records), m.records, new):
                            return
                    elif new != pos and not self._push(src, None, 0, new):
                        return
                    pos = new
                    delay, failures = self._backoff[0], 0
                if self._closed or self._error:
                    return
                raise Unavailable("the stream ended")  # the peer is stopping: reconnect
            except Unavailable as e:
                if self._closed or self._error:
                    return
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning(
                        "tail: a replica's stream failed; retrying from its last position",
                        extra={"replica_id": src.spool_id, "address": address, "error": str(e)},
                    )
                self._wait(delay)
                delay = min(self._backoff[1], delay * 2)
            except DomainError as e:
                self._fail(e)
                return
            except Exception as e:  # noqa: BLE001
                log.exception("tail: a replica's stream failed unexpectedly", extra={"replica_id": src.spool_id})
                self._fail(Unavailable(f"the tail failed ({e!r}); reconnect with resume_cursor"))
                return
            finally:
                src.call = None

    def _wait(self, seconds: float) -> None:
        with self._cond:
            if not (self._closed or self._error):
                self._cond.wait(seconds)

    # -- iteration -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Event]:
        return self

    @property
    def cursor(self) -> str:
        positions = dict(self._vec)
        if len(positions) > MAX_CURSOR_SPOOLS:  # keep the spools this session follows first
            keep = [s for s in positions if s in self._sources]
            keep += [s for s in positions if s not in self._sources][: max(0, MAX_CURSOR_SPOOLS - len(keep))]
            positions = {s: positions[s] for s in keep}
        return self._codec.encode(self.account_id, self._scope, VectorCursor(positions, self._known_ms))

    def __next__(self) -> Event:
        if not self._started:
            self._started = True
            for src in list(self._sources.values()):
                self._start_pump(src)
        while True:
            if time.monotonic() - self._last_refresh >= self._refresh_s:
                self._refresh()
            with self._cond:
                if self._closed:
                    raise StopIteration
                item = self._items.popleft() if self._items else None
                if item is not None:
                    item.source.queued -= item.n_records
                    self._cond.notify_all()
                    self._vec[item.source.spool_id] = item.position
                elif self._error is not None:
                    raise self._ended(self._error)
                else:
                    wait = min(
                        self._heartbeat_s - (time.monotonic() - self._last_event),
                        self._refresh_s - (time.monotonic() - self._last_refresh),
                    )
                    if wait > 0:
                        self._cond.wait(wait)
                    if self._items or self._error or self._closed:
                        continue
            if item is not None:
                if item.payload is None:
                    continue
                self._last_event = time.monotonic()
                return Event("records", item.payload, self.cursor)
            if time.monotonic() - self._last_event >= self._heartbeat_s:
                self._last_event = time.monotonic()
                return Event("heartbeat", [], self.cursor)

    def _ended(self, error: Exception) -> Exception:
        cursor = self.cursor
        if isinstance(error, ResourceExhausted) and str(error).startswith("tail fell behind"):
            e: Exception = ResourceExhausted(
                f"tail fell behind: more records were waiting for this client than a replica keeps "
                f"(limits.tail_buffer_records); reconnect with resume_cursor={cursor}"
            )
        elif isinstance(error, Unavailable):
            e = Unavailable(f"the server is stopping; reconnect with resume_cursor={cursor}")
        else:
            return error
        e.cursor = cursor  # type: ignore[attr-defined]
        return e

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
        for src in list(self._sources.values()):
            if src.local is not None:
                src.local.close()
            call = src.call
            if call is not None:
                call.cancel()
