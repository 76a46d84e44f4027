"""The compiled Ingest path (server/api/_fastingest.c), loaded and checked once at import.

The C file reads IngestRequest and FlowRecord bytes by field number and applies the record limits
itself, so it exports what it was built with (FIELDS, INGEST_FIELDS, LIMITS). check() compares
them with the proto descriptors and server.core's constants, and refuses a module that disagrees
(ImportError naming every difference): a field or a limit changed in one place cannot silently
diverge from the other. `compiled` is the checked module, or None when it is not built.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from flowlog.v1 import ingest_pb2, record_pb2
from server.core import records, rules
from server.core.model import RuleKind


def expected() -> dict[str, dict[str, int]]:
    """What the compiled path must have been built with."""
    return {
        "FIELDS": {f.name: f.number for f in record_pb2.FlowRecord.DESCRIPTOR.fields},
        "INGEST_FIELDS": {f.name: f.number for f in ingest_pb2.IngestRequest.DESCRIPTOR.fields},
        "LIMITS": {
            "max_future_ms": records.MAX_FUTURE_MS,
            "max_past_ms": records.MAX_PAST_MS,
            "max_window_ms": records.MAX_WINDOW_MS,
            "rule_id_max": rules.RULE_ID_MAX,
            "sampling_rate_max": rules.SAMPLING_RATE_MAX,
            "rule_kind_max": max(RuleKind),
        },
    }


def check(module: Any) -> None:
    """ImportError listing every constant of `module` that differs from expected()."""
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
            "server/api/_fastingest.c disagrees with the protos / server.core: "
            + ", ".join(problems)
            + ". Update the C file's #defines and rebuild (make install)"
        )


def _load() -> ModuleType | None:
    try:
        module = importlib.import_module("server.api._fastingest")
    except ImportError:  # pragma: no cover - built wherever a C compiler is (setup.py: optional)
        return None
    check(module)
    return module


compiled = _load()
