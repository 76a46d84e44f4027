"""Query and Tail requests: which LogStores, which time range, which filter, where to resume.

Rules (API.md, QueryService): several LogStores ("topics") of ONE project in ONE region per
call; a LogStore named with another project or region is INVALID_ARGUMENT, a missing one (or
another account's) NOT_FOUND; the time range is required; newest first by default; a page
token continues exactly where the previous call stopped and is bound to the same request.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core import filter as flt
from server.core import rules
from server.core.errors import InvalidArgument, NotFound
from server.core.model import LogStoreKey
from server.core.paging import TokenSigner, fingerprint
from server.core.ports import MetadataStore, RecordQuery
from server.core.records import MAX_TIME_MS, MIN_TIME_MS

MAX_LOG_STORES = 20
MAX_LIMIT = 100_000


@dataclass(frozen=True)
class Scope:
    """The LogStores one Query or Tail reads, already checked against the caller's account."""

    account_id: str
    region: str
    project: str
    log_stores: tuple[str, ...]
    # The metadata generation read before the LogStores were looked up (server.core.lifecycle).
    generation: int = 0

    @property
    def keys(self) -> tuple[LogStoreKey, ...]:
        return tuple(LogStoreKey(self.region, self.project, n) for n in self.log_stores)


def resolve_scope(
    metadata: MetadataStore,
    account: str,
    region: str,
    project: str,
    log_stores: list[str],
    regions: rules.RegionCatalogue | None = None,
) -> Scope:
    """`regions`: the server's region catalogue (a region outside it is INVALID_ARGUMENT)."""
    v = rules.Violations(regions)
    v.region("region", region)
    v.store_name("project", project, "project")
    if not log_stores:
        v.add("log_stores", "name at least one LogStore of the project")
    elif len(log_stores) > MAX_LOG_STORES:
        v.add("log_stores", f"at most {MAX_LOG_STORES} LogStores per call (got {len(log_stores)})")
    names: list[str] = []
    for i, entry in enumerate(log_stores[:MAX_LOG_STORES]):
        parts = entry.split("/")
        if len(parts) > 3 or not all(parts):
            v.add(
                f"log_stores[{i}]", f"{entry[:80]!r} is not a LogStore: 'name', 'project/name' or 'region/project/name'"
            )
            continue
        name = parts[-1]
        if len(parts) >= 2 and parts[-2] != project:
            v.add(
                f"log_stores[{i}]",
                f"LogStore {entry!r} is in project {parts[-2]!r}; one call searches one project ({project!r})",
            )
        if len(parts) == 3 and parts[0] != region:
            v.add(
                f"log_stores[{i}]",
                f"LogStore {entry!r} is in region {parts[0]!r}; one call searches one region ({region!r})",
            )
        v.store_name(f"log_stores[{i}]", name, "LogStore name")
        if name not in names:
            names.append(name)
    v.raise_if_any()
    generation = metadata.generation()
    with metadata.transaction() as tx:
        for name in names:
            if tx.get_log_store(account, LogStoreKey(region, project, name)) is None:
                raise NotFound(f"LogStore {region}/{project}/{name} not found")
    return Scope(account, region, project, tuple(names), generation)


@dataclass(frozen=True)
class PlannedQuery:
    query: RecordQuery
    bound: str  # what the page token is bound to


def plan_query(
    scope: Scope,
    signer: TokenSigner,
    *,
    start_ms: int | None,
    end_ms: int | None,
    filter_text: str,
    limit: int,
    newest_first: bool,
    page_token: str,
    default_limit: int,
) -> PlannedQuery:
    v = rules.Violations()
    if start_ms is None:
        v.add("start_time", "is required")
    if end_ms is None:
        v.add("end_time", "is required")
    for name, ms in (("start_time", start_ms), ("end_time", end_ms)):
        if ms is not None and not MIN_TIME_MS <= ms <= MAX_TIME_MS:
            v.add(name, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        v.add("end_time", "must be after start_time")
    if limit < 0:
        v.add("limit", f"must not be negative (got {limit})")
    v.raise_if_any()
    assert start_ms is not None and end_ms is not None  # required: refused above
    expr = flt.parse(filter_text)
    bound = fingerprint(
        scope.region, scope.project, sorted(scope.log_stores), start_ms, end_ms, filter_text, newest_first
    )
    after = None
    if page_token:
        pos = signer.decode(page_token, "query", scope.account_id, bound)
        if not (isinstance(pos, list) and len(pos) == 2 and isinstance(pos[0], int) and isinstance(pos[1], str)):
            raise InvalidArgument.field("page_token", "is not a valid token for this request")
        after = (pos[0], pos[1])
    q = RecordQuery(
        account_id=scope.account_id,
        region=scope.region,
        project=scope.project,
        log_stores=scope.log_stores,
        start_ms=start_ms,
        end_ms=end_ms,
        filter=expr,
        newest_first=newest_first,
        after=after,
        limit=min(limit or default_limit, MAX_LIMIT),
    )
    return PlannedQuery(q, bound)


def next_page_token(signer: TokenSigner, planned: PlannedQuery, last: tuple[int, str]) -> str:
    return signer.encode("query", planned.query.account_id, planned.bound, [last[0], last[1]])
