"""Purging deleted LogStores: every backend, retried until done, across restarts.

DeleteLogStore (server.core.service) replaces the LogStore by a tombstone in one metadata
transaction: from then on no API sees it. Its records are then removed step by step (the
steps are ports given by the wiring: end open Tails, drop the spool's batches, drop the query
backend's records, delete the archive's objects). Every step is idempotent, so a purge that
failed half way (a backend down, the process killed) is simply run again from the first step:
by the deletion itself first, then by the background loop (server.purge_loop) with back-off,
and at every start for the tombstones left by a previous process. Only when every step has
succeeded is the tombstone removed, which frees the name for a new LogStore.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from server.core.model import LogStoreKey
from server.core.ports import MetadataStore, Tombstone

log = logging.getLogger(__name__)

PurgeStep = Callable[[str, LogStoreKey], object]


class Purger:
    def __init__(self, metadata: MetadataStore, steps: Sequence[tuple[str, PurgeStep]]) -> None:
        self.metadata = metadata
        self.steps = list(steps)
        self._lock = threading.Lock()
        self._busy: set[tuple[str, LogStoreKey]] = set()

    def purge(self, account: str, key: LogStoreKey) -> bool:
        """Run every step for one tombstone; True when all succeeded and the tombstone is gone.
        False (the error kept with the tombstone) when a step failed or another thread is
        purging the same LogStore right now."""
        ident = (account, key)
        with self._lock:
            if ident in self._busy:
                return False
            self._busy.add(ident)
        try:
            for name, step in self.steps:
                try:
                    step(account, key)
                except Exception as e:  # noqa: BLE001 - any backend error: keep the tombstone, retry later
                    error = f"{name}: {type(e).__name__}: {e}"
                    log.warning(
                        "LogStore purge incomplete; will retry",
                        extra={"account": account, "log_store": str(key), "error": error[:300]},
                    )
                    self.metadata.purge_failed(account, key, error)
                    return False
            self.metadata.remove_tombstone(account, key)
            log.info("LogStore purged", extra={"account": account, "log_store": str(key)})
            return True
        finally:
            with self._lock:
                self._busy.discard(ident)

    def pending(self) -> list[Tombstone]:
        return self.metadata.tombstones()

    def run_pending(self) -> int:
        """Try every tombstone once; returns how many remain."""
        left = 0
        for t in self.pending():
            if not self.purge(t.account_id, t.key):
                left += 1
        return left
