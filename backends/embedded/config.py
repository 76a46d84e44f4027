"""Typed configuration of the embedded backends: the `embedded:` section of the server's config
(server.config nests this class; FLOWLOG_EMBEDDED_<KEY> in the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class EmbeddedConfig:
    # DuckDB's memory cap for the embedded record store (DuckDB's own default is 80% of RAM).
    # DuckDB keeps every block it writes cached up to this cap (~50 MB per million records), so
    # a long ingest grows the server's RSS by up to this much; 256MB bounds that growth and is
    # plenty for the top-N and count queries of Query (bench: 10M records, same latencies).
    memory_limit: str = "256MB"
    # DuckDB's worker threads; 0: half the machine's cores, at least one. DuckDB's pool takes
    # every core by default, and its threads then competed with the gRPC threads for the same
    # cores: on 2 cores one DuckDB thread ingested 207k instead of 195k records/s and took
    # 6.7 instead of 7.5 us of server CPU per record; count queries over 10M records took
    # 82 instead of 43 ms (first batches unchanged). python -m bench --only ingest,query.
    threads: int = 0
    # DuckDB's worker threads while an Aggregate runs; 0: every core. DuckDB's thread count is one
    # setting of the database, raised while at least one Aggregate runs and back to `threads` after
    # the last: an Aggregate is one interactive GROUP BY that scales with cores (top 10 talkers of
    # 10M records: ~2x faster on 2 cores), while ingest keeps its one thread the rest of the time.
    # Ingest running during an Aggregate shares the cores with it. python -m bench --only aggregate.
    aggregate_threads: int = 0

    def duckdb_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 2) // 2)

    def duckdb_aggregate_threads(self) -> int:
        return self.aggregate_threads or max(1, os.cpu_count() or 2)

    def problems(self) -> list[str]:
        out = ["threads must be 0 (half the cores) or more"] if self.threads < 0 else []
        if self.aggregate_threads < 0:
            out.append("aggregate_threads must be 0 (every core) or more")
        return out
