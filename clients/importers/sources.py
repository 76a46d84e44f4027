"""The I/O side of `flowlog import`: which files to read, in which order, and how to open them.

- `-` is standard input; a directory is walked recursively (AWS's S3 layout
  `AWSLogs/<account>/vpcflowlogs/<region>/<yyyy>/<mm>/<dd>/*.log.gz`, with or without Hive-style
  `year=`/`month=` folders, or Azure's `.../y=<yyyy>/m=<mm>/d=<dd>/h=<hh>/m=<mm>/.../PT1H.json`),
  taking the files of the format and ordering them by the time in their names, then by path;
  files named explicitly are read in the order given.
- Content is recognised by its first bytes, not by its name: gzip (1f 8b), Parquet (`PAR1`),
  else plain text. Text is read as UTF-8, a BOM skipped (undecodable bytes become U+FFFD and fail their
  line).
- A file that cannot be opened, or ends early (a truncated gzip), becomes a LineError; what was
  read before stays imported.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import sys
import tempfile
import zlib
from typing import IO, Iterator, Sequence

from clients.importers import FORMATS, Items, LineError, aws, azure

STDIN = "-"
STDIN_NAME = "<stdin>"
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"

# Files a directory walk takes, per format (anything else there, e.g. AWS's
# `aws-logs-write-test` object, is not a flow log).
SUFFIXES = {
    "aws": (".log", ".log.gz", ".txt", ".txt.gz", ".gz", ".parquet"),
    "azure": (".json", ".json.gz"),
}
# AWS: <account>_vpcflowlogs_<region>_<flow-log-id>_<yyyymmddThhmm>Z_<hash>.log.gz
_AWS_TIME = re.compile(r"_(\d{8}T\d{4})Z")
# Azure: .../y=2022/m=09/d=14/h=09/m=00/...
_AZURE_TIME = re.compile(r"y=(\d{4})/m=(\d{1,2})/d=(\d{1,2})/h=(\d{1,2})(?:/m=(\d{1,2}))?")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def expand(paths: Sequence[str], fmt: str) -> list[str]:
    """The files to read: explicit files as given, directories walked (see the module docstring).

    Raises FileNotFoundError for a path that does not exist, so nothing is sent when a name is
    mistyped; `-` may appear once.
    """
    check_format(fmt)
    files: list[str] = []
    for path in paths:
        if path == STDIN:
            files.append(STDIN)
        elif os.path.isdir(path):
            files.extend(walk(path, fmt))
        elif os.path.exists(path):
            files.append(path)
        else:
            raise FileNotFoundError(2, "no such file or directory", path)
    if files.count(STDIN) > 1:
        raise ValueError("'-' (standard input) can be given only once")
    return files


def walk(directory: str, fmt: str) -> list[str]:
    """The flow-log files under `directory`, oldest first (by the time in their names)."""
    found = []
    suffixes = SUFFIXES[fmt]
    for root, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and name.lower().endswith(suffixes):
                found.append(os.path.join(root, name))
    return sorted(found, key=lambda p: (time_key(p, fmt), p))


def time_key(path: str, fmt: str) -> str:
    """A sortable time from a delivered file's name or folders ('' when there is none)."""
    unix = path.replace(os.sep, "/")
    if fmt == "aws":
        match = _AWS_TIME.search(os.path.basename(unix))
        return match.group(1) if match else ""
    match = _AZURE_TIME.search(unix)
    if not match:
        return ""
    return "".join(f"{int(g or 0):02d}" if i else g for i, g in enumerate(match.groups()))


def display_name(path: str) -> str:
    return STDIN_NAME if path == STDIN else path


def read(path: str, fmt: str, stdin: IO[bytes] | None = None, aws_fields: Sequence[str] | None = None) -> Items:
    """The items of one file (or `-`: `stdin`, default sys.stdin.buffer); `aws_fields`: see
    aws.parse_lines."""
    source = display_name(path)
    try:
        raw: IO[bytes] = (stdin or sys.stdin.buffer) if path == STDIN else open(path, "rb")
    except OSError as e:
        yield LineError(source, 0, f"cannot read: {e.strerror or e}")
        return
    try:
        yield from _read_stream(raw, source, fmt, aws_fields)
    finally:
        if path != STDIN:
            raw.close()


def _read_stream(raw: IO[bytes], source: str, fmt: str, aws_fields: Sequence[str] | None = None) -> Items:
    buffered: io.BufferedReader = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type,type-var]
    try:
        head = buffered.peek(4)[:4]
    except OSError as e:
        yield LineError(source, 0, f"cannot read: {e.strerror or e}")
        return
    if head.startswith(PARQUET_MAGIC):
        if fmt != "aws":
            yield LineError(source, 0, f"is a Parquet file; the {fmt} format has no Parquet form")
            return
        yield from _parquet(buffered, source)
        return
    stream: IO[bytes] = (
        gzip.GzipFile(fileobj=buffered, mode="rb") if head.startswith(GZIP_MAGIC) else buffered  # type: ignore[assignment]
    )
    if fmt == "azure":
        try:
            data = stream.read()
        except (OSError, EOFError, zlib.error) as e:
            yield LineError(source, 0, f"cannot read: {e}")
            return
        yield from azure.parse_document(data, source)
        return
    lines = _Lines(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline=None))
    yield from aws.parse_lines(lines, source, aws_fields)
    if lines.error is not None:
        yield LineError(source, lines.count + 1, f"cannot read further (truncated or corrupt): {lines.error}")


def _parquet(buffered: IO[bytes], source: str) -> Items:
    """Parquet needs to seek (its footer is at the end): a pipe is copied to a temporary file."""
    if buffered.seekable():
        yield from aws.parse_parquet(buffered, source)
        return
    with tempfile.TemporaryFile() as copy:
        shutil.copyfileobj(buffered, copy, 1 << 20)
        copy.seek(0)
        yield from aws.parse_parquet(copy, source)


class _Lines:
    """Lines of a text stream; a read error ends the iteration and is kept in `.error`."""

    def __init__(self, text: IO[str]) -> None:
        self._text = text
        self.count = 0
        self.error: BaseException | None = None

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        try:
            line = self._text.readline()
        except (OSError, EOFError, zlib.error) as e:
            self.error = e
            raise StopIteration from None
        if not line:
            raise StopIteration
        self.count += 1
        return line


def read_all(
    files: Sequence[str], fmt: str, stdin: IO[bytes] | None = None, aws_fields: Sequence[str] | None = None
) -> Iterator[tuple[int, Items]]:
    """(index in `files`, items) of each file, in order."""
    for i, path in enumerate(files):
        yield i, read(path, fmt, stdin, aws_fields)
