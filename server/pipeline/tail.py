"""Tail sessions: replay the recent past from the spool, then follow the live hub, with cursors.

A position in the stream is (next_seq, skip): every record of batches before next_seq, and the
first `skip` records of batch next_seq, have been passed (delivered or filtered out). Each
event carries the cursor of the position right after it; reconnecting with it continues exactly
there: no gap, no duplicate.

Where a session starts:
- `cursor`: strictly after the cursor's position;
- `start_ms`: at the first record STORED at or after start_ms (the spool's commit time, which
  is monotonic; not the records' own start_time: a collector may send old windows late, and a
  tail follows arrival order);
- neither: at the head (live only).
Positions before the spool's retained range are refused with FailedPrecondition: Tail only
replays the spool's tail retention; Query serves history.

Replay then live without gap or duplicate: the session first replays from the spool without a
subscription (long replays cannot overflow anything), then subscribes to the hub, replays once
more up to the head read AFTER subscribing, and then takes live batches, skipping those at or
before its position. A batch committed before the subscription is in that last replay; one
committed after it is in the subscription's queue (the hub publishes after each commit, in seq
order), possibly in both, and then skipped once by position.

Cursors are signed (HMAC, server.core.paging.TokenSigner) and bound to the account and to the
(region, project, LogStores) of the request: a tampered cursor or one from another scope is
INVALID_ARGUMENT. They name the spool they come from: a cursor from another server's (or a
reset) spool is FAILED_PRECONDITION.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator, NamedTuple, Sequence

from server.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from server.core.model import FlowRecord
from server.core.paging import TokenSigner, fingerprint
from server.core.records import MAX_TIME_MS, MIN_TIME_MS
from server.pipeline.hub import Hub, HubClosed, Subscription, SubscriptionOverflow
from server.pipeline.spool import CursorExpired, Spool, SpoolBatch

log = logging.getLogger(__name__)

CURSOR_VERSION = 1
_KIND = "tail"


class Event(NamedTuple):
    """("records", records, cursor) or ("heartbeat", [], cursor): always three fields, so a
    handler can unpack `kind, records, cursor = event` whatever the kind."""

    kind: str
    records: list[FlowRecord]
    cursor: str


class CursorCodec:
    """Signs and checks resume cursors; bound to one spool (its id)."""

    def __init__(self, secret: bytes, spool_id: str) -> None:
        self._signer = TokenSigner(secret)
        self.spool_id = spool_id

    @staticmethod
    def scope(region: str, project: str, log_stores: Sequence[str]) -> str:
        return fingerprint("tail", region, project, sorted(set(log_stores)))

    def encode(self, account: str, scope: str, next_seq: int, skip: int) -> str:
        return self._signer.encode(_KIND, account, scope, [CURSOR_VERSION, self.spool_id, next_seq, skip])

    def decode(self, token: str, account: str, scope: str) -> tuple[int, int]:
        """(next_seq, skip). InvalidArgument when tampered / another account or scope;
        FailedPrecondition when it was issued by another spool."""
        pos = self._signer.decode(token, _KIND, account, scope, field="resume_cursor")
        if (
            not isinstance(pos, list)
            or len(pos) != 4
            or pos[0] != CURSOR_VERSION
            or not all(isinstance(v, int) and v >= 0 for v in pos[2:])
        ):
            raise InvalidArgument.field("resume_cursor", "is not a valid cursor of this server version")
        if pos[1] != self.spool_id:
            raise FailedPrecondition(
                "resume_cursor was issued by another server, or before this server's spool "
                "was reset: start a new tail (with start_time) and use Query for the gap"
            )
        return pos[2], pos[3]


def _expired(what: str, retention_s: float) -> FailedPrecondition:
    return FailedPrecondition(
        f"{what} is older than what Tail can replay (the server keeps about the last {retention_s / 60:.0f} "
        f"minutes of stored records for Tail): use Query for older records, then tail without a cursor"
    )


class TailSession:
    """An iterator of Event("records", records, cursor) and Event("heartbeat", [], cursor).

    Blocks in next() for at most heartbeat_s. Raises ResourceExhausted when the client fell
    behind the live stream (the message and `.cursor` give the cursor to reconnect with),
    Unavailable when the server stops, FailedPrecondition when replay hits trimmed data.
    close() (from any thread) unsubscribes and ends the iteration.

    With both `cursor` and `start_ms`, the cursor wins. `position` (next_seq, skip) is a cursor's
    content, unsigned: for a replica serving its spool to another one (server.pipeline.replicated),
    which signs the cursors itself; such a session may have no codec (its events' cursors are "").
    The start position is validated in the constructor (bad or expired cursors raise there,
    before any streaming); the replay and the hub subscription start at the first next().
    `predicate=None` (no filter) takes a faster path than a match-everything predicate.
    """

    def __init__(
        self,
        spool: Spool,
        hub: Hub,
        codec: CursorCodec | None,
        account_id: str,
        region: str,
        project: str,
        log_stores: Sequence[str],
        predicate: Callable[[FlowRecord], bool] | None = None,
        *,
        start_ms: int | None = None,
        cursor: str | None = None,
        position: tuple[int, int] | None = None,
        heartbeat_s: float = 15.0,
        max_event_records: int = 1000,
        replay_page_records: int = 20_000,
        buffer_records: int | None = None,
        check: Callable[[], object] | None = None,
    ) -> None:
        if not log_stores:
            raise InvalidArgument.field("log_stores", "name at least one LogStore")
        self._spool = spool
        self._hub = hub
        self._codec = codec
        self.account_id = account_id
        self.region = region
        self.project = project
        self.log_stores = tuple(dict.fromkeys(log_stores))
        self._predicate = predicate
        self._start_ms = start_ms
        self._heartbeat_s = heartbeat_s
        self._max_event = max_event_records
        self._page = replay_page_records
        self._buffer_records = buffer_records
        # Raises when the LogStores are gone (server.core.lifecycle.ScopeWatch.check): called once
        # subscribed (a deletion before that ended no subscription of ours) and when idle.
        self._check = check
        self._scope = CursorCodec.scope(region, project, self.log_stores)
        self._sub: Subscription | None = None
        self._closed = threading.Event()
        self._last_event = time.monotonic()
        # Where the session starts; validated now so that a bad request fails before streaming.
        if cursor or position is not None:
            if position is not None:
                self._next_seq, self._skip = position
            else:
                assert codec is not None and cursor
                self._next_seq, self._skip = codec.decode(cursor, account_id, self._scope)
            if self._next_seq <= spool.trimmed_through:
                raise _expired("resume_cursor", spool.tail_retention_s)
            if self._next_seq > spool.head_seq + 1:
                raise FailedPrecondition("resume_cursor is ahead of this server's spool: start a new tail")
            self._start_ms = None
        elif start_ms is not None:
            if not MIN_TIME_MS <= start_ms <= MAX_TIME_MS:
                raise InvalidArgument.field(
                    "start_time", "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z"
                )
            try:
                self._next_seq = spool.first_seq_stored_since(start_ms)
            except CursorExpired:
                raise _expired("start_time", spool.tail_retention_s) from None
            self._skip = 0
        else:
            self._next_seq, self._skip = spool.head_seq + 1, 0
        self._gen = self._events()

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._closed.is_set():
            raise StopIteration
        return next(self._gen)

    @property
    def cursor(self) -> str:
        """The cursor of the current position (after the last event returned); "" for a
        session without a codec (a replica's stream, which carries raw positions)."""
        if self._codec is None:
            return ""
        return self._codec.encode(self.account_id, self._scope, self._next_seq, self._skip)

    @property
    def position(self) -> tuple[int, int]:
        """(next_seq, skip) after the last event returned: what `cursor` signs."""
        return self._next_seq, self._skip

    def close(self) -> None:
        """Stop the session and free its hub subscription. Safe from any thread, also while
        another thread is blocked in next()."""
        self._closed.set()
        sub = self._sub
        if sub is not None:
            sub.close()

    # -- internals ----------------------------------------------------------------------------

    def _heartbeat_due(self) -> bool:
        return time.monotonic() - self._last_event >= self._heartbeat_s

    def _heartbeat(self) -> Event:
        self._last_event = time.monotonic()
        return Event("heartbeat", [], self.cursor)

    def _emit(self, batch: SpoolBatch) -> Iterator[Event]:
        """Events for one batch from the current position; advances the position."""
        seq = batch.seq
        if seq < self._next_seq:
            return
        start = self._skip if seq == self._next_seq else 0
        records = batch.records
        if batch.skipped or (self._start_ms is not None and batch.stored_ms < self._start_ms):
            self._next_seq, self._skip = seq + 1, 0
            return
        pred = self._predicate
        n = len(records)
        idx: Sequence[int]
        if pred is None:
            idx = range(start, n)
        else:
            idx = [i for i in range(start, n) if pred(records[i])]
        m = len(idx)
        for k in range(0, m, self._max_event):
            chunk = idx[k : k + self._max_event]
            if k + self._max_event < m:
                self._next_seq, self._skip = seq, chunk[-1] + 1
            else:
                self._next_seq, self._skip = seq + 1, 0
            out = records[chunk[0] : chunk[-1] + 1] if pred is None else [records[i] for i in chunk]
            self._last_event = time.monotonic()
            yield Event("records", list(out), self.cursor)
        self._next_seq, self._skip = seq + 1, 0

    def _replay(self, upto: int | None) -> Iterator[Event]:
        """Replay from the spool up to `upto` (None: the head at each read) until caught up."""
        while not self._closed.is_set():
            try:
                res = self._spool.scan(
                    self._next_seq - 1,
                    self.account_id,
                    self.region,
                    self.project,
                    self.log_stores,
                    self._page,
                    upto=upto,
                )
            except CursorExpired:
                raise _expired("the tail's position", self._spool.tail_retention_s) from None
            for b in res.batches:
                yield from self._emit(b)
            if res.through >= self._next_seq:
                self._next_seq, self._skip = res.through + 1, 0
            if self._heartbeat_due():
                yield self._heartbeat()
            if res.complete:
                return

    def _events(self) -> Iterator[Event]:
        try:
            yield from self._replay(None)
            if self._closed.is_set():
                return
            self._sub = self._hub.subscribe(
                self.account_id, self.region, self.project, self.log_stores, max_records=self._buffer_records
            )
            if self._closed.is_set():
                return
            if self._check is not None:
                self._check()
            yield from self._replay(self._spool.head_seq)
            sub = self._sub
            while not self._closed.is_set():
                wait = self._heartbeat_s - (time.monotonic() - self._last_event)
                try:
                    batch = sub.get(max(0.0, wait))
                except SubscriptionOverflow:
                    e = ResourceExhausted(
                        f"tail fell behind: more than {sub.max_records} records were waiting "
                        f"for this client; reconnect with resume_cursor={self.cursor}"
                    )
                    e.cursor = self.cursor  # type: ignore[attr-defined]
                    raise e from None
                except HubClosed:
                    e2 = Unavailable(f"the server is stopping; reconnect with resume_cursor={self.cursor}")
                    e2.cursor = self.cursor  # type: ignore[attr-defined]
                    raise e2 from None
                if batch is not None:
                    yield from self._emit(batch)
                    continue
                if self._closed.is_set():
                    return
                if self._heartbeat_due():
                    if self._check is not None:
                        self._check()
                    through = sub.idle_through()
                    if through is not None and through >= self._next_seq:
                        self._next_seq, self._skip = through + 1, 0
                    yield self._heartbeat()
        finally:
            if self._sub is not None:
                self._sub.close()
