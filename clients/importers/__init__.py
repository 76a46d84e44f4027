"""Readers of cloud flow-log files (`flowlog import`): AWS VPC Flow Logs and Azure VNet flow logs.

The parsers (`aws.py`, `azure.py`) are pure functions: lines, rows or a JSON document in, and out
an iterator of items, each one of
- `(line, FlowRecord)`: a record to send, with the 1-based line (or Parquet row) it came from;
- `LineError`: a line that cannot become a record, with its file, line and the reason;
- `Skipped`: a line that is valid but carries nothing to store (e.g. Azure's flow-begin tuples).
A bad line never stops a file: the next line is read as if nothing happened.

Records leave `record_id` empty (the server derives it from the flow window, so importing the
same file twice stores each record once) and leave identity fields (account, region, resource,
network) to the server, which takes them from the flow log. When a format has no direction the
record says DIRECTION_UNSPECIFIED and the server derives it from the resource's addresses.

`sources.py` does the I/O: files, directories, standard input, gzip and Parquet detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

from flowlog.v1 import record_pb2

FORMATS = ("aws", "azure")


@dataclass(frozen=True, slots=True)
class LineError:
    """A line (or Parquet row, or Azure flow tuple) that could not become a record."""

    source: str
    line: int  # 1-based; 0 when the problem is the whole file
    reason: str
    field: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        field = f"{self.field}: " if self.field else ""
        return f"{where}: {field}{self.reason}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A valid line with nothing to store (counted, not sent)."""

    source: str
    line: int
    reason: str


Item = Union[tuple[int, record_pb2.FlowRecord], LineError, Skipped]
Items = Iterator[Item]
