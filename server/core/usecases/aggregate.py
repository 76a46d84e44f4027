"""The Aggregate use case: answers, not rows, computed where the records are.

The scope (LogStores of one project and region, the caller's account) is Query's
(server.core.query.resolve_scope, not written twice); the request model, ranking and `other`
are server.core.aggregate's; the groups come from the query backend's `RecordAggregation`
ability, chosen once at wiring.

Why not the archive: the archive (Parquet) follows the same retention_days as the query backend
(App.enforce_retention drops whole days of both), so there is no time range the archive keeps
and the query backend does not: a range before retention is empty in both. Reading the archive
would only matter if the two retentions diverge (e.g. a longer archive retention), which
flowlog does not offer yet (README, "Aggregate").
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from server.core import aggregate as agg
from server.core import query as query_core
from server.core.errors import FailedPrecondition
from server.core.limits import Limiter
from server.core.ports import MetadataStore, RecordAggregation
from server.core.rules import RegionCatalogue


class Aggregate:
    def __init__(
        self,
        metadata: MetadataStore,
        records: object,
        limits: agg.Limits,
        regions: RegionCatalogue | None = None,
        slots: Limiter | None = None,
    ) -> None:
        self.metadata = metadata
        # Calls running at once, per account and in total (limits.max_aggregate_calls_per_account,
        # max_aggregate_calls): each holds a worker thread and the backend while it runs.
        self.slots = slots
        self.limits = limits
        self.regions = regions  # the server's region catalogue (rules.RegionCatalogue)
        self._records: RecordAggregation | None = records if isinstance(records, RecordAggregation) else None
        self._backend = getattr(records, "name", type(records).__name__)

    def slot(self, account: str) -> AbstractContextManager[None]:
        """Hold one for the whole call, taken before it waits for a thread (so a full server
        refuses at once): RESOURCE_EXHAUSTED naming the setting when none is free."""
        return self.slots.hold(account) if self.slots is not None else nullcontext()

    def run(
        self,
        account: str,
        *,
        region: str,
        project: str,
        log_stores: list[str],
        start_ms: int | None,
        end_ms: int | None,
        filter_text: str,
        group_by: list[str],
        interval_ms: int | None,
        metrics: list[str],
        order_by: str,
        limit: int,
    ) -> agg.AggregateResult:
        """Blocks (metadata, then the backend): call it off the event loop."""
        scope = query_core.resolve_scope(self.metadata, account, region, project, log_stores, self.regions)
        q = agg.plan(
            scope,
            start_ms=start_ms,
            end_ms=end_ms,
            filter_text=filter_text,
            group_by=group_by,
            interval_ms=interval_ms,
            metrics=metrics,
            order_by=order_by,
            limit=limit,
            limits=self.limits,
        )
        if self._records is None:
            raise FailedPrecondition(
                f"the query backend {self._backend!r} cannot aggregate; use query_backend embedded or elasticsearch"
            )
        return agg.finish(q, self._records.aggregate(q))
