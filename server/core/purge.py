"""Purging deleted LogStores: every backend, retried until done, across restarts.

DeleteLogStore (server.core.service) replaces the LogStore by a tombstone in one metadata
transaction: from then on no API sees it. Its records are then removed step by step (the
steps are ports given by the wiring: end open Tails, drop the spool's batches, drop the query
backend's records, delete the archive's objects). Every step is idempotent, so a purge that
failed half way (a backend down, the process killed) is simply run again from the first step:
by the deletion itself first, then by the background loop (server.purge_loop) with back-off,
and at every start for the tombstones left by a previous process. Only when every step has
succeeded is the tombstone removed, which frees the name for a new LogStore.

With several replicas (`cluster` given) the first steps are each replica's own (its Tails, its
spool) and the rest are shared (the query backend, the archive). Every replica runs its own steps
for every tombstone and records that it did (an ack in the shared metadata); the shared steps run,
and the tombstone goes, only once every replica of the directory has acked, on one replica at a time
(a cluster-wide lock, inside which the tombstone and the acks are read again). Otherwise a replica
whose spool still held undelivered batches of the LogStore could write them into Elasticsearch or
S3 after the shared deletion (and a new LogStore of the same name would show them). A replica that
is down but not yet forgotten by the directory therefore holds the name until it returns (its
purge loop runs the pending tombstones at start) or is forgotten (replica.forget_after_seconds);
the LogStore is gone from the API at once either way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from server.core.model import LogStoreKey
from server.core.ports import MetadataStore, SharedMetadata, Tombstone

log = logging.getLogger(__name__)

PurgeStep = Callable[[str, LogStoreKey], object]


@dataclass
class PurgeCluster:
    """How a replica takes part in purges shared with other replicas (see the module docstring)."""

    replica_id: str
    members: Callable[[], list[str]]  # the replica ids of the directory (live, or down but not forgotten)
    acks: SharedMetadata
    local_steps: int  # how many of the first steps are this replica's own


class Purger:
    def __init__(
        self, metadata: MetadataStore, steps: Sequence[tuple[str, PurgeStep]], cluster: PurgeCluster | None = None
    ) -> None:
        self.metadata = metadata
        self.steps = list(steps)
        self.cluster = cluster
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
            c = self.cluster
            if c is None:
                if not self._run(self.steps, account, key):
                    return False
                self.metadata.remove_tombstone(account, key)
            else:
                if not self._run(self.steps[: c.local_steps], account, key):
                    return False
                c.acks.purge_ack(account, key, c.replica_id)
                # The shared steps and the tombstone's removal run under one cluster-wide lock,
                # and everything they depend on is read again inside it: a replica that got here
                # first may have finished this purge already, and the name may since have been
                # used and deleted again (a new tombstone, which this replica has not acked yet).
                # Without the lock a slower replica could drop a new LogStore's records.
                with c.acks.exclusive(f"purge:{account}:{key.region}/{key.project}/{key.name}", wait=False) as held:
                    if not held:
                        return False  # another replica is running the shared steps right now
                    if not self._tombstone_exists(account, key):
                        return True  # done by another replica
                    if not self._all_acked(account, key):
                        return False
                    if not self._run(self.steps[c.local_steps :], account, key):
                        return False
                    self.metadata.remove_tombstone(account, key)
            log.info("LogStore purged", extra={"account": account, "log_store": str(key)})
            return True
        finally:
            with self._lock:
                self._busy.discard(ident)

    def _run(self, steps: Sequence[tuple[str, PurgeStep]], account: str, key: LogStoreKey) -> bool:
        """Run steps in order; False (the error kept with the tombstone) at the first failure."""
        for name, step in steps:
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
        return True

    def _tombstone_exists(self, account: str, key: LogStoreKey) -> bool:
        with self.metadata.transaction() as tx:
            return tx.tombstone_exists(account, key)

    def _all_acked(self, account: str, key: LogStoreKey) -> bool:
        """True once every replica of the directory has acked its own steps."""
        c = self.cluster
        assert c is not None
        missing = set(c.members()) - c.acks.purge_acks(account, key)
        if missing:
            log.info(
                "LogStore purge waits for other replicas' own steps",
                extra={"account": account, "log_store": str(key), "replicas": sorted(missing)},
            )
        return not missing

    def pending(self) -> list[Tombstone]:
        return self.metadata.tombstones()

    def run_pending(self) -> int:
        """Try every tombstone once; returns how many remain."""
        left = 0
        for t in self.pending():
            if not self.purge(t.account_id, t.key):
                left += 1
        return left
