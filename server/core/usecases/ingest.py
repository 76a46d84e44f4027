"""The Ingest use case: records pushed by collectors, checked and spooled, message by message.

One `IngestStream` per Ingest call: it looks each flow log up once per stream (the caller's
and ACTIVE, server.core.ingest.flow_log_for_ingest) and keeps watching it
(server.core.lifecycle.FlowLogWatch: a pause or a deletion reaches the open stream at its next
message), takes a message whose records all pass every
check through the compiled path when the server has one (the `CompiledIngest` ability, chosen
once at wiring), parses any other message and checks it record by record in Python
(server.core.ingest, which alone decides rejections and their messages), and hands the good
records to the pipeline with their spool payload and Arrow table when the compiled path made
them. Durable when add() returns.

A record may leave `direction` unspecified (API.md, "Flows from real sources"): it is derived
from the addresses of the flow log's resource (server.core.attribution, compiled once per flow
log per stream) before the record id is made, by either path: the compiled path gets the
resource's ranges (AddressMatcher.packed()) and applies the same rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from server.core import columns
from server.core import ingest as ingest_core
from server.core.attribution import AddressMatcher
from server.core.errors import InvalidArgument
from server.core.ingest import Rejection
from server.core.lifecycle import FlowLogWatch
from server.core.limits import Limiter
from server.core.model import FlowRecord
from server.core.ports import CompiledIngest, MetadataStore, RecordPipeline

MAX_REJECTION_DETAILS = 1000  # rejections listed in one IngestResponse (all are counted)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class ParsedMessage:
    """One IngestRequest as the API layer parsed it: its flow log, its record count and its
    records as the 19 columns of server.core.ingest.accept_columns (made when asked)."""

    flow_log_id: str
    count: int
    columns: Callable[[], Sequence[Sequence[Any]]]


# Parses an IngestRequest's bytes; raises InvalidArgument naming the message when they are not one.
Parser = Callable[[bytes], ParsedMessage]


@dataclass(frozen=True)
class Message:
    """A message of the stream, split: `data` (its bytes) when the compiled path may read it,
    else `parsed`."""

    flow_log_id: str
    count: int
    data: bytes | None = None
    parsed: ParsedMessage | None = None


@dataclass
class IngestResult:
    accepted: int = 0
    rejected: int = 0
    rejections: list[Rejection] | None = None  # the first MAX_REJECTION_DETAILS


class Ingest:
    """Built once (server.app); open() one stream per Ingest call."""

    def __init__(
        self,
        metadata: MetadataStore,
        pipeline: RecordPipeline,
        *,
        max_records_per_message: int,
        compiled: CompiledIngest | None = None,
        clock: Callable[[], int] = now_ms,
        inflight: Limiter | None = None,
        stream_bytes: int = 0,
    ) -> None:
        self.metadata = metadata
        self.pipeline = pipeline
        self.max_records_per_message = max_records_per_message
        self.compiled = compiled
        self.clock = clock
        # Bytes the open streams may hold (limits.max_ingest_inflight_bytes[_per_account]): each
        # open stream may be receiving a message of up to `stream_bytes` at any moment (the
        # transport buffers it whole before it is handed over), so each holds that much.
        self.inflight = inflight
        self.stream_bytes = stream_bytes

    def open(self, account: str, parse: Parser) -> "IngestStream":
        """One stream; RESOURCE_EXHAUSTED naming the setting when the account (or the server)
        holds its bytes in flight already. close() it when the call ends."""
        if self.inflight is not None:
            self.inflight.acquire(account, self.stream_bytes)
        return IngestStream(self, account, parse)


class IngestStream:
    """One Ingest call. split() is cheap (call it on the event loop); load_flow_log() and add()
    block (SQLite, fsync): call them on a worker thread."""

    def __init__(self, ingest: Ingest, account: str, parse: Parser) -> None:
        self._ingest = ingest
        self._compiled = ingest.compiled
        self.account = account
        self._parse = parse
        self._flow_logs: dict[str, FlowLogWatch] = {}
        self._matchers: dict[str, AddressMatcher] = {}  # flow log id -> its resource's addresses
        self._index = 0
        self.result = IngestResult(rejections=[])
        self._closed = False

    def close(self) -> None:
        """Give the stream's bytes in flight back (once)."""
        if not self._closed:
            self._closed = True
            if self._ingest.inflight is not None:
                self._ingest.inflight.release(self.account, self._ingest.stream_bytes)

    def head(self, data: bytes) -> Message | None:
        """The message as the compiled path reads it, from its bytes without decoding its records
        (cheap: call it on the event loop), or None when it cannot: then count its records
        (check_count), parse it off the event loop and split() that."""
        head = self._compiled.split(data) if self._compiled is not None else None
        if head is None:
            return None
        self.check_count(head[1])
        return Message(head[0], head[1], data=data)

    def check_count(self, count: int | None) -> None:
        """INVALID_ARGUMENT past max_records_per_message, before anything is decoded: a message of
        millions of empty records (two bytes each) would take ~100 times its size decoded."""
        limit = self._ingest.max_records_per_message
        if count is not None and count > limit:
            raise InvalidArgument.field(
                "records",
                f"at most {limit} records per message (got {count}); split the batch (limits.max_records_per_message)",
            )

    def split(self, message: bytes | ParsedMessage) -> Message:
        """The message's flow log and size; INVALID_ARGUMENT past max_records_per_message."""
        if type(message) is bytes:
            msg = self.head(message)
            if msg is not None:
                return msg
            parsed = self._parse(message)
            msg = Message(parsed.flow_log_id, parsed.count, parsed=parsed)
        else:
            assert isinstance(message, ParsedMessage)
            msg = Message(message.flow_log_id, message.count, parsed=message)
        self.check_count(msg.count)
        return msg

    def needs_flow_log(self, msg: Message) -> bool:
        return msg.flow_log_id not in self._flow_logs

    def load_flow_log(self, msg: Message) -> FlowLogWatch:
        """The watch on the message's flow log, made once per stream (NOT_FOUND, FAILED_PRECONDITION)."""
        watch = self._flow_logs.get(msg.flow_log_id)
        if watch is None:
            try:
                watch = FlowLogWatch(
                    self._ingest.metadata, self.account, msg.flow_log_id, ingest_core.flow_log_for_ingest
                )
            except Exception:
                if msg.data is not None:
                    self._parse(msg.data)  # a message that is not valid says so first
                raise
            self._flow_logs[msg.flow_log_id] = watch
        return watch

    def add(self, msg: Message) -> tuple[int, list[Rejection]]:
        """Check and complete the message's records, spool the good ones (durable on return)."""
        watch = self.load_flow_log(msg)
        n_ok, bad = self._accept_and_submit(watch, msg)
        self._index += msg.count
        r = self.result
        r.accepted += n_ok
        r.rejected += len(bad)
        details = r.rejections if r.rejections is not None else []
        room = MAX_REJECTION_DETAILS - len(details)
        if room > 0:
            details.extend(bad[:room])
        return n_ok, bad

    def _accept_and_submit(self, watch: FlowLogWatch, msg: Message) -> tuple[int, list[Rejection]]:
        """The compiled path takes the message if every record of it passes every check; anything
        else is parsed and goes the Python way (server.core.ingest), which finds and explains the
        bad records. The flow log is checked again inside the submit (its `admit`), which a
        LogStore's purge waits for."""
        fl = watch.current()  # NOT_FOUND / FAILED_PRECONDITION once the flow log is deleted / paused
        ok: list[FlowRecord] | None = None
        prepared = None
        bad: list[Rejection] = []
        parsed = msg.parsed
        clock = self._ingest.clock
        matcher = self._matchers.get(fl.id)
        if matcher is None:  # the resource of a flow log never changes
            matcher = self._matchers[fl.id] = ingest_core.resource_matcher(self._ingest.metadata, fl)
        if msg.data is not None:
            head = ingest_core.stored_head(fl)
            assert self._compiled is not None
            got = self._compiled.accept(msg.data, head, FlowRecord, clock(), True, matcher.packed())
            if got is None:
                parsed = self._parse(msg.data)
            else:  # the records, and their spool payload and Arrow table made alongside
                ok, raw, buffers = got
                prepared = (raw, columns.table_of_buffers(len(ok), head, buffers))
        if ok is None:
            assert parsed is not None
            ok, bad = ingest_core.accept_columns(fl, parsed.columns(), self._index, clock(), matcher)
        if ok:
            self._ingest.pipeline.submit(ok, prepared, admit=watch.current)
        return len(ok), bad
