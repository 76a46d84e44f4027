"""How lifecycle changes reach streams that are already open.

An Ingest stream keeps its flow log and a Tail keeps its LogStores for as long as it runs.
Instead of reading the metadata per message (or per record), each keeps the metadata store's
generation (MetadataStore.generation: a counter that moves on every committed change to a flow
log, a LogStore or a tombstone) from when it last looked, and compares it per message: equal,
nothing changed and the cached view stands; different, it looks again, and a flow log paused
since is FAILED_PRECONDITION, one deleted NOT_FOUND, a LogStore deleted NOT_FOUND.

The generation is read BEFORE the metadata it vouches for, so a change committed while a stream
looks is seen at its next check. The record pipeline calls FlowLogWatch.current inside
Pipeline.submit (its `admit`), which a LogStore's purge waits for: no record checked there can
land behind the purge.
"""

from __future__ import annotations

import threading
from typing import Callable

from server.core.errors import NotFound
from server.core.model import FlowLog, FlowLogState, LogStoreKey
from server.core.ports import MetadataStore


class FlowLogWatch:
    """The flow log an Ingest stream writes to, as of the metadata's latest generation."""

    def __init__(
        self,
        metadata: MetadataStore,
        account: str,
        flow_log_id: str,
        load: Callable[[MetadataStore, str, str], FlowLog],
    ) -> None:
        """`load(metadata, account, flow_log_id)` returns the flow log if records may be ingested
        for it and raises otherwise (server.core.ingest.flow_log_for_ingest)."""
        self.metadata = metadata
        self.account = account
        self.flow_log_id = flow_log_id
        self._load = load
        self.generation = metadata.generation()
        self.flow_log = load(metadata, account, flow_log_id)

    def current(self) -> FlowLog:
        """The flow log; raises NotFound / FailedPrecondition once it is deleted / paused."""
        g = self.metadata.generation()
        if g != self.generation:
            self.flow_log = self._load(self.metadata, self.account, self.flow_log_id)
            self.generation = g
        return self.flow_log


class ScopeWatch:
    """The LogStores a Tail reads: check() raises NotFound once one of them is deleted."""

    def __init__(
        self, metadata: MetadataStore, account: str, keys: list[LogStoreKey] | tuple[LogStoreKey, ...], generation: int
    ) -> None:
        """`generation`: the metadata generation read before the LogStores were looked up."""
        self.metadata = metadata
        self.account = account
        self.keys = tuple(keys)
        self.generation = generation

    def check(self) -> None:
        g = self.metadata.generation()
        if g == self.generation:
            return
        with self.metadata.transaction() as tx:
            for key in self.keys:
                if tx.get_log_store(self.account, key) is None:
                    raise deleted_error(key)
        self.generation = g


def deleted_error(key: LogStoreKey) -> NotFound:
    return NotFound(f"LogStore {key} was deleted")


class ActiveFlowLogs:
    """For the record sources that list flow logs now and spool later (the generator, the
    collector): is this flow log still ACTIVE? One metadata read per flow log per generation,
    none while nothing changed. Thread-safe (each source has its own thread)."""

    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        self._lock = threading.Lock()
        self._generation = -1
        self._active: set[tuple[str, str]] = set()

    def is_active(self, account: str, flow_log_id: str) -> bool:
        ident = (account, flow_log_id)
        with self._lock:
            g = self.metadata.generation()  # before the read it vouches for
            if g != self._generation:
                self._generation = g
                self._active = set()
            elif ident in self._active:
                return True
            with self.metadata.transaction() as tx:
                fl = tx.get_flow_log(account, flow_log_id)
            if fl is None or fl.state != FlowLogState.ACTIVE:
                return False
            self._active.add(ident)
            return True
