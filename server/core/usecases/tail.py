"""The Tail use case: records of several LogStores as they are stored, from the pipeline.

open() counts the stream against the account's quota (limits.max_tail_streams_per_account:
each open Tail holds a thread of the server's stream pool while it waits for records, so one
account must not take them all), checks the LogStores and the filter, and opens the pipeline's
session (replay from the spool by start time or resume cursor, then live) that ends with
NOT_FOUND once one of its LogStores is deleted (server.core.lifecycle.ScopeWatch). release()
gives the slot back.
"""
from __future__ import annotations

import threading

from server.core import filter as flt
from server.core import query as query_core
from server.core.errors import ResourceExhausted
from server.core.lifecycle import ScopeWatch
from server.core.ports import MetadataStore, RecordPipeline, TailEvents
from server.core.rules import RegionCatalogue


class Tail:
    def __init__(self, metadata: MetadataStore, pipeline: RecordPipeline, *, max_streams_per_account: int,
                 heartbeat_s: float, regions: RegionCatalogue | None = None) -> None:
        self.metadata = metadata
        self.regions = regions
        self.pipeline = pipeline
        self.max_streams_per_account = max_streams_per_account
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def acquire(self, account: str) -> None:
        """Take one of the account's Tail slots; RESOURCE_EXHAUSTED when all are taken. Cheap."""
        limit = self.max_streams_per_account
        with self._lock:
            if limit and self._open.get(account, 0) >= limit:
                raise ResourceExhausted(f"at most {limit} Tail streams may be open at once per account "
                                        "(limits.max_tail_streams_per_account); close one and retry")
            self._open[account] = self._open.get(account, 0) + 1

    def release(self, account: str) -> None:
        with self._lock:
            n = self._open.pop(account, 1) - 1
            if n > 0:
                self._open[account] = n

    def open(self, account: str, *, region: str, project: str, log_stores: list[str], filter_text: str,
             start_ms: int | None, cursor: str | None) -> TailEvents:
        """The session (close it). Blocks on the metadata store and the spool: call it on a worker thread."""
        scope = query_core.resolve_scope(self.metadata, account, region, project, log_stores, self.regions)
        predicate = flt.compile_predicate(flt.parse(filter_text))
        watch = ScopeWatch(self.metadata, scope.account_id, scope.keys, scope.generation)
        return self.pipeline.tail(scope.account_id, scope.region, scope.project, scope.log_stores, predicate,
                                  start_ms=start_ms, cursor=cursor, heartbeat_s=self.heartbeat_s, check=watch.check)
