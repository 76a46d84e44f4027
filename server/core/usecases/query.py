"""The Query use case: records of several LogStores of one project, a page at a time.

plan() checks the request against the caller's account (server.core.query: scope, time range,
filter, page token); the store is read in batches, as Arrow tables when it has the `ArrowSearch`
ability (chosen once at wiring) or as FlowRecord lists; summary() then says how many records
match in all, whether there are more, and the signed token that continues exactly after the
last record returned (keyset paging: one probe for the next record and one count per page).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

from server.core import query as query_core
from server.core.limits import Limiter
from server.core.model import FlowRecord
from server.core.paging import TokenSigner
from server.core.ports import ArrowSearch, MetadataStore, RecordStore
from server.core.query import PlannedQuery
from server.core.rules import RegionCatalogue

BATCH = 1000  # records per streamed batch


@dataclass(frozen=True)
class QuerySummary:
    returned: int
    matched: int
    more: bool
    next_page_token: str


class Query:
    def __init__(
        self,
        metadata: MetadataStore,
        records: RecordStore,
        signer: TokenSigner,
        *,
        default_limit: int,
        regions: RegionCatalogue | None = None,
        slots: Limiter | None = None,
    ) -> None:
        self.metadata = metadata
        # Open Query streams per account and in total (limits.max_query_streams_per_account,
        # max_query_streams): each holds reader threads and a read transaction (DuckDB) or point
        # in time (Elasticsearch) until it ends. None: no bound.
        self.slots = slots
        self.regions = regions
        self.records = records
        self.signer = signer
        self.default_limit = default_limit
        self._arrow: ArrowSearch | None = records if isinstance(records, ArrowSearch) else None

    def acquire(self, account: str) -> None:
        """Take a Query slot before reading; RESOURCE_EXHAUSTED naming the setting when none is free.
        release() it once the reader has stopped and closed the store's cursor."""
        if self.slots is not None:
            self.slots.acquire(account)

    def release(self, account: str) -> None:
        if self.slots is not None:
            self.slots.release(account)

    @property
    def arrow(self) -> bool:
        """True: read with tables(); False: with batches()."""
        return self._arrow is not None

    def plan(
        self,
        account: str,
        *,
        region: str,
        project: str,
        log_stores: list[str],
        start_ms: int | None,
        end_ms: int | None,
        filter_text: str,
        limit: int,
        newest_first: bool,
        page_token: str,
    ) -> PlannedQuery:
        """Blocks on the metadata store (the LogStores must exist and be the account's)."""
        scope = query_core.resolve_scope(self.metadata, account, region, project, log_stores, self.regions)
        return query_core.plan_query(
            scope,
            self.signer,
            start_ms=start_ms,
            end_ms=end_ms,
            filter_text=filter_text,
            limit=limit,
            newest_first=newest_first,
            page_token=page_token,
            default_limit=self.default_limit,
        )

    def tables(self, planned: PlannedQuery, batch_size: int = BATCH) -> Iterator[Any]:
        """The page as Arrow tables of at most batch_size records (a generator: close it)."""
        assert self._arrow is not None
        return self._arrow.search_arrow(planned.query, batch_size=batch_size)

    def batches(self, planned: PlannedQuery, batch_size: int = BATCH) -> Iterator[list[FlowRecord]]:
        """The page as FlowRecord lists of at most batch_size records (a generator: close it)."""
        return self.records.search(planned.query, batch_size=batch_size)

    def summary(self, planned: PlannedQuery, returned: int, last: tuple[int, str] | None) -> QuerySummary:
        """After the page: `last` is (start_time, record_id) of its last record. Blocks."""
        q = planned.query
        more = False
        token = ""
        if last is not None and returned >= q.limit:
            probe = dataclasses.replace(q, after=last, limit=1)
            more = next(iter(self.records.search(probe, batch_size=1)), None) is not None
            if more:
                token = query_core.next_page_token(self.signer, planned, last)
        return QuerySummary(returned, self.records.count(q), more, token)
