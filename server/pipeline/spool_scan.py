"""The spool's Tail scan: a Tail's replay read of one project's LogStores after a seq (in one
SQLite snapshot, so the trim check and the rows agree), and where a start time begins. A mixin of
server.pipeline.spool.Spool (its read connections and batch rows).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any, Callable, NamedTuple, Sequence

from server.pipeline.spool_codec import SpoolBatch


class ScanResult(NamedTuple):
    """A Tail's read: the matching batches, and the seq through which the spool was read
    (batches after `after` up to `through` that are not listed did not match)."""

    batches: list[SpoolBatch]
    through: int
    complete: bool  # True when `through` reached the requested end (nothing more to read now)


class CursorExpired(Exception):
    """The requested position has been trimmed from the spool."""


class TailScan:
    """Spool's methods for Tail's replay (see the module docstring)."""

    # Provided by Spool.
    head_seq: int
    trimmed_through: int
    trimmed_stored_ms: int
    _reading: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _batch: Callable[[tuple[Any, ...]], SpoolBatch]

    def scan(
        self,
        after_seq: int,
        account_id: str,
        region: str,
        project: str,
        log_stores: Sequence[str],
        max_records: int,
        *,
        upto: int | None = None,
    ) -> ScanResult:
        """A Tail's replay read: batches of the given LogStores after after_seq, up to about
        max_records records. Raises CursorExpired when batches after after_seq were trimmed."""
        head = self.head_seq if upto is None else min(upto, self.head_seq)
        if head <= after_seq:
            return ScanResult([], after_seq, True)
        stores = list(dict.fromkeys(log_stores))
        raw = []
        n = 0
        through = head
        with self._reading() as conn:
            conn.execute("BEGIN")  # one snapshot: the trim check and the rows agree
            try:
                row = conn.execute("SELECT v FROM meta WHERE k = 'trimmed_through'").fetchone()
                if row is not None and after_seq < int(row[0]):
                    raise CursorExpired(f"records after seq {after_seq} were trimmed (through {row[0]})")
                cur = conn.execute(
                    "SELECT b.seq, b.stored_ms, b.account_id, b.region, b.project, b.log_store, b.n, b.skipped, "
                    "p.data FROM batches b LEFT JOIN payloads p ON p.seq = b.seq "
                    "WHERE b.seq > ? AND b.seq <= ? AND b.account_id = ? AND b.region = ? AND b.project = ? "
                    f"AND b.log_store IN ({','.join('?' * len(stores))}) AND b.skipped = 0 ORDER BY b.seq",
                    (after_seq, head, account_id, region, project, *stores),
                )
                for r in cur:
                    raw.append(r)
                    n += r[6]
                    if n >= max_records:
                        through = r[0]
                        break
                cur.close()
            finally:
                conn.execute("COMMIT")
        return ScanResult([self._batch(r) for r in raw], through, through >= head)

    def first_seq_stored_since(self, start_ms: int) -> int:
        """The seq of the first batch stored at or after start_ms (stored_ms is monotonic), or
        head + 1 when none. Raises CursorExpired when such batches were already trimmed."""
        head = self.head_seq
        if self.trimmed_stored_ms >= start_ms and self.trimmed_through > 0:
            raise CursorExpired(f"batches stored since {start_ms} were trimmed")
        with self._reading() as conn:
            row = conn.execute(
                "SELECT min(seq) FROM batches WHERE stored_ms >= ? AND seq <= ?", (start_ms, head)
            ).fetchone()
        return row[0] if row and row[0] is not None else head + 1
