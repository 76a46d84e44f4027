"""The compiled record path (server/native/_fastingest.c), loaded, configured and checked once at import.

The C file reads IngestRequest and FlowRecord bytes by field number, so it exports the numbers it
was built with (FIELDS, INGEST_FIELDS); check() compares them with the proto descriptors and
refuses a module that disagrees (ImportError naming every difference). The record limits (time
window and bounds, port/protocol/flag ranges, rule ids, sampling rate) are written only in
server.core.records: _load() hands them to the module (configure), which applies exactly those.
`compiled` is the ready module, or None when it is not built.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from flowlog.v1 import ingest_pb2, record_pb2
from server.core import records


def expected() -> dict[str, dict[str, int]]:
    """The field numbers the compiled path must have been built with."""
    return {
        "FIELDS": {f.name: f.number for f in record_pb2.FlowRecord.DESCRIPTOR.fields},
        "INGEST_FIELDS": {f.name: f.number for f in ingest_pb2.IngestRequest.DESCRIPTOR.fields},
    }


def check(module: Any) -> None:
    """ImportError listing every field number of `module` that differs from expected()."""
    problems = []
    for table, want in expected().items():
        got = getattr(module, table, None)
        if got != want:
            keys = sorted(set(want) | set(got or {}))
            diff = [
                f"{k}: C {None if got is None else got.get(k)!r}, Python {want.get(k)!r}"
                for k in keys
                if (got or {}).get(k) != want.get(k)
            ]
            problems.append(f"{table} ({'; '.join(diff)})")
    if problems:
        raise ImportError(
            "server/native/_fastingest.c disagrees with the protos: "
            + ", ".join(problems)
            + ". Update the C file's #defines and rebuild (make install)"
        )


def _load() -> ModuleType | None:
    try:
        module = importlib.import_module("server.native._fastingest")
    except ImportError:  # pragma: no cover - built wherever a C compiler is (setup.py: optional)
        return None
    check(module)
    module.configure(records.record_limits())
    return module


compiled = _load()


def compiled_ingest(enabled: bool = True) -> Any:
    """The compiled Ingest path (server.core.ports.CompiledIngest) when built and enabled, else None."""
    return compiled if enabled else None
