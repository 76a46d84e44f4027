"""The Tail use case: records of several LogStores as they are stored, from the pipeline.

acquire() counts the stream against the account's and the server's bounds
(limits.max_tail_streams_per_account, limits.max_tail_streams: each open Tail holds a thread of
the server's Tail pool while it waits for records, so no account may take them all); open()
checks the LogStores and the filter, and opens the pipeline's session (replay from the spool by
start time or resume cursor, then live) that ends with NOT_FOUND once one of its LogStores is
deleted (server.core.lifecycle.ScopeWatch). release() gives the slot back.
"""

from __future__ import annotations

from server.core import filter as flt
from server.core import query as query_core
from server.core.lifecycle import ScopeWatch
from server.core.limits import Bound, Limiter
from server.core.ports import MetadataStore, RecordPipeline, TailEvents
from server.core.rules import RegionCatalogue


class Tail:
    def __init__(
        self,
        metadata: MetadataStore,
        pipeline: RecordPipeline,
        *,
        max_streams_per_account: int,
        heartbeat_s: float,
        regions: RegionCatalogue | None = None,
        slots: Limiter | None = None,
    ) -> None:
        self.metadata = metadata
        self.regions = regions
        self.pipeline = pipeline
        self.max_streams_per_account = max_streams_per_account
        self.heartbeat_s = heartbeat_s
        # Per account and in total; without a server-wide limiter, per account only.
        self.slots = slots or Limiter(
            "Tail streams",
            Bound(max_streams_per_account, "limits.max_tail_streams_per_account"),
            Bound(0, "limits.max_tail_streams"),
        )

    def acquire(self, account: str) -> None:
        """Take one Tail slot; RESOURCE_EXHAUSTED naming the setting when all are taken. Cheap."""
        self.slots.acquire(account)

    def release(self, account: str) -> None:
        self.slots.release(account)

    def open(
        self,
        account: str,
        *,
        region: str,
        project: str,
        log_stores: list[str],
        filter_text: str,
        start_ms: int | None,
        cursor: str | None,
    ) -> TailEvents:
        """The session (close it). Blocks on the metadata store and the spool: call it on a worker thread."""
        scope = query_core.resolve_scope(self.metadata, account, region, project, log_stores, self.regions)
        predicate = flt.compile_predicate(flt.parse(filter_text))
        watch = ScopeWatch(self.metadata, scope.account_id, scope.keys, scope.generation)
        return self.pipeline.tail(
            scope.account_id,
            scope.region,
            scope.project,
            scope.log_stores,
            predicate,
            start_ms=start_ms,
            cursor=cursor,
            heartbeat_s=self.heartbeat_s,
            check=watch.check,
            filter_text=filter_text,
        )
