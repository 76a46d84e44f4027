"""Sending imported records through Ingest: FlowLogClient.import_files does its work here.

Records go out in batches (IngestRequest messages) on a client stream, so reading, parsing and
sending overlap. One Ingest call carries at most `call_records` records: the server answers a
call once its records are durable, so a long import is durable call by call, and a call's
rejections (which the server reports by position in the call) are mapped back to the file and
line they came from with two small arrays instead of a table of every record of the import.
Importing the same files again is safe: the server derives each record's id from its flow
window, so records it already holds are not stored twice.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Callable, Iterator, Sequence

from clients.importers import LineError, Skipped, sources
from flowlog.v1 import flow_log_pb2, ingest_pb2, record_pb2

if TYPE_CHECKING:
    from clients.client import FlowLogClient

DEFAULT_BATCH = 1000
DEFAULT_CALL_RECORDS = 100_000


@dataclass
class ImportProgress:
    """Where an import is; handed to `on_progress` after every batch sent and every file read."""

    files_total: int
    files_done: int = 0
    source: str = ""
    records: int = 0  # sent to the server so far
    bad: int = 0  # lines that could not become records
    skipped: int = 0
    accepted: int = 0  # known when a call completes
    rejected_by_server: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Records sent per second so far."""
        elapsed = self.elapsed
        return self.records / elapsed if elapsed > 0 else 0.0


@dataclass
class ImportResult:
    """What an import did. `rejected` counts the lines that could not be parsed and the records
    the server refused; `problems` holds the first `max_problems` of them, each with its file
    and line (a rejection the server did not detail has none)."""

    flow_log: flow_log_pb2.FlowLog
    files: list[str]
    records: int
    accepted: int
    rejected: int
    skipped: int
    calls: int
    elapsed: float
    problems: list[LineError]
    undetailed: int = 0  # rejections the server counted without saying which record


class _Run:
    def __init__(
        self,
        files: Sequence[str],
        on_problem: Callable[[LineError], None] | None,
        on_progress: Callable[[ImportProgress], None] | None,
        max_problems: int,
    ) -> None:
        self.files = files
        self.progress = ImportProgress(files_total=len(files))
        self.on_problem = on_problem
        self.on_progress = on_progress
        self.max_problems = max_problems
        self.problems: list[LineError] = []
        self.rejected = 0
        self.undetailed = 0
        self.error: BaseException | None = None

    def problem(self, problem: LineError) -> None:
        self.rejected += 1
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)
        if self.on_problem is not None:
            self.on_problem(problem)

    def report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def records(
        self, fmt: str, stdin: IO[bytes] | None, aws_fields: Sequence[str] | None
    ) -> Iterator[tuple[int, int, record_pb2.FlowRecord]]:
        """(file index, line, record) of every record of every file; problems and skips are
        counted on the way."""
        p = self.progress
        for index, items in sources.read_all(self.files, fmt, stdin, aws_fields):
            p.source = sources.display_name(self.files[index])
            self.report()
            for item in items:
                if type(item) is tuple:
                    yield index, item[0], item[1]
                elif isinstance(item, LineError):
                    p.bad += 1
                    self.problem(item)
                elif isinstance(item, Skipped):
                    p.skipped += 1
            p.files_done += 1
            self.report()


def import_files(
    client: "FlowLogClient",
    flow_log_id: str,
    paths: Sequence[str],
    fmt: str,
    *,
    batch_size: int = DEFAULT_BATCH,
    call_records: int = DEFAULT_CALL_RECORDS,
    on_problem: Callable[[LineError], None] | None = None,
    on_progress: Callable[[ImportProgress], None] | None = None,
    max_problems: int = 1000,
    stdin: IO[bytes] | None = None,
    aws_fields: Sequence[str] | None = None,
) -> ImportResult:
    """See FlowLogClient.import_files."""
    files = sources.expand(paths, fmt)  # a missing path fails here, before anything is sent
    flow_log = client.get_flow_log(flow_log_id)  # NOT_FOUND before reading a single file
    run = _Run(files, on_problem, on_progress, max_problems)
    records = run.records(fmt, stdin, aws_fields)
    calls = 0
    first = next(records, None)
    while first is not None:
        calls += 1
        first = _one_call(client, flow_log_id, first, records, run, batch_size, call_records)
    run.report()
    p = run.progress
    return ImportResult(
        flow_log=flow_log,
        files=[sources.display_name(f) for f in files],
        records=p.records,
        accepted=p.accepted,
        rejected=run.rejected,
        skipped=p.skipped,
        calls=calls,
        elapsed=p.elapsed,
        problems=run.problems,
        undetailed=run.undetailed,
    )


def _one_call(
    client: "FlowLogClient",
    flow_log_id: str,
    first: tuple[int, int, record_pb2.FlowRecord],
    records: Iterator[tuple[int, int, record_pb2.FlowRecord]],
    run: _Run,
    batch_size: int,
    call_records: int,
) -> tuple[int, int, record_pb2.FlowRecord] | None:
    """One Ingest call of up to call_records records starting with `first`; returns the first
    record of the next call (None when all are sent)."""
    where_file = array("L")
    where_line = array("L")
    p = run.progress

    def requests() -> Iterator[ingest_pb2.IngestRequest]:
        # Runs on gRPC's thread: an exception here would cancel the call with a vague message,
        # so it is kept, the call ends normally (what was sent is kept) and it is raised after.
        try:
            batch: list[record_pb2.FlowRecord] = []
            item: tuple[int, int, record_pb2.FlowRecord] | None = first
            sent = 0
            while item is not None:
                index, line, record = item
                where_file.append(index)
                where_line.append(line)
                batch.append(record)
                sent += 1
                if len(batch) >= batch_size:
                    yield ingest_pb2.IngestRequest(flow_log_id=flow_log_id, records=batch)
                    p.records += len(batch)
                    batch = []
                    run.report()
                if sent >= call_records:
                    break
                item = next(records, None)
            if batch:
                yield ingest_pb2.IngestRequest(flow_log_id=flow_log_id, records=batch)
                p.records += len(batch)
                run.report()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread below
            run.error = e

    with client._errors():
        response = client.ingest_stub.Ingest(requests())
    if run.error is not None:
        raise run.error
    p.accepted += response.accepted
    p.rejected_by_server += response.rejected
    detailed = 0
    for rejection in sorted(response.rejections, key=lambda r: r.index):
        i = rejection.index
        if i < len(where_line):
            detailed += 1
            source = sources.display_name(run.files[where_file[i]])
            run.problem(LineError(source, where_line[i], rejection.reason, rejection.field))
    # The server details the first 1,000 rejections of a call; the rest are counted.
    run.rejected += response.rejected - detailed
    run.undetailed += response.rejected - detailed
    if len(where_line) < call_records:
        return None
    return next(records, None)
