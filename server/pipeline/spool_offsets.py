"""The spool's sink offsets: per sink (the query backend, the archive) the highest seq it has
stored, durably, and the range it is writing (pending_to); its backlog; waiting for offsets and
backlogs to move. A mixin of server.pipeline.spool.Spool, whose writer thread makes every change
durable (_submit) and whose view (_v_offsets, _v_backlog) readers see without a lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger("server.pipeline.spool")


@dataclass(frozen=True)
class SinkOffset:
    seq: int
    pending_to: int | None


class SinkOffsets:
    """Spool's methods about sink offsets (see the module docstring)."""

    # Provided by Spool: its condition, the writer's state and the readers' view of it.
    _cond: threading.Condition
    _closed: bool
    _w_head: int
    _w_offsets: dict[str, list[Any]]
    _w_backlog: dict[str, list[int]]
    _v_offsets: dict[str, SinkOffset]
    _v_backlog: dict[str, tuple[int, int]]
    _submit: Callable[..., object]

    def sink_offset(self, sink: str) -> SinkOffset:
        return self._v_offsets[sink]

    def sink_offsets(self) -> dict[str, SinkOffset]:
        return dict(self._v_offsets)

    def backlog(self, sink: str) -> tuple[int, int]:
        """(records, bytes) spooled but not yet stored by the sink (committed view)."""
        return self._v_backlog.get(sink, (0, 0))

    def wait_offsets(self, seq: int, sinks: Iterable[str] | None, timeout: float) -> bool:
        """Wait until every named sink (default: all) has stored everything through seq."""
        names = list(self._v_offsets) if sinks is None else list(sinks)

        def done() -> bool:
            offs = self._v_offsets
            return all(name in offs and offs[name].seq >= seq for name in names)

        with self._cond:
            return self._cond.wait_for(done, timeout)

    def wait_backlog(self, records: int, sinks: Iterable[str], timeout: float) -> bool:
        """Wait until each named sink has at most `records` records spooled and not yet stored
        (or timeout, close)."""
        names = list(sinks)

        def done() -> bool:
            backlog = self._v_backlog
            return self._closed or all(backlog.get(name, (0, 0))[0] <= records for name in names)

        with self._cond:
            return self._cond.wait_for(done, timeout)

    def register_sinks(self, names: Sequence[str]) -> None:
        """Make these the spool's sinks. A new sink starts at the head (it receives what is
        appended from now on); a sink no longer named is forgotten, so it holds back neither
        trimming nor ingestion."""

        def register_op(c: sqlite3.Connection) -> None:
            for gone in [s for s in self._w_offsets if s not in names]:
                c.execute("DELETE FROM sink_offsets WHERE sink = ?", (gone,))
                del self._w_offsets[gone]
                del self._w_backlog[gone]
                log.warning("spool sink removed", extra={"sink": gone})
            for name in names:
                if name not in self._w_offsets:
                    c.execute(
                        "INSERT INTO sink_offsets (sink, seq, pending_to) VALUES (?, ?, NULL)", (name, self._w_head)
                    )
                    self._w_offsets[name] = [self._w_head, None]
                    self._w_backlog[name] = [0, 0]

        self._submit(register_op)

    def set_pending(self, sink: str, pending_to: int) -> None:
        """Durably note that the sink is writing the range (offset, pending_to]."""

        def pending_op(c: sqlite3.Connection) -> None:
            c.execute("UPDATE sink_offsets SET pending_to = ? WHERE sink = ?", (pending_to, sink))
            self._w_offsets[sink][1] = pending_to

        self._submit(pending_op)

    def commit_offset(self, sink: str, seq: int) -> None:
        """Durably record that the sink has stored every batch through seq (clears pending)."""

        def offset_op(c: sqlite3.Connection) -> None:
            off = self._w_offsets[sink]
            old = off[0]
            if seq > old:
                n, nbytes = c.execute(
                    "SELECT COALESCE(sum(n), 0), COALESCE(sum(bytes), 0) FROM batches "
                    "WHERE seq > ? AND seq <= ? AND skipped = 0",
                    (old, seq),
                ).fetchone()
                b = self._w_backlog[sink]
                b[0] -= n
                b[1] -= nbytes
            off[0] = max(old, seq)
            off[1] = None
            c.execute("UPDATE sink_offsets SET seq = ?, pending_to = NULL WHERE sink = ?", (off[0], sink))

        self._submit(offset_op)
