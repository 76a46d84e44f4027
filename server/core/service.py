"""Use cases of the flow-log product: every rule of API.md is enforced here, once.

`Service` is called by server/api with plain values and the caller's account, and talks to
storage only through ports: the metadata store, and `on_log_store_deleted` (the purge of a
deleted LogStore's records from the spool, the query backend and the archive; see
server.core.purge).

Regions come from a catalogue (the `regions` setting): a region outside it is INVALID_ARGUMENT
naming it, wherever it appears. Quotas (Quotas, the `quotas` settings) are checked in the same
serialised metadata transaction as the insert, so they are exact under any concurrency.
"""

from __future__ import annotations

import ipaddress
import secrets
import string
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from server.core import rules
from server.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, QuotaExceeded
from server.core.model import (
    DEFAULT_DENY_RULE_ID,
    RESOURCE_ID_PREFIX,
    Action,
    Direction,
    FlowLog,
    FlowLogState,
    LogStore,
    LogStoreKey,
    Page,
    Resource,
    ResourceType,
    RuleKind,
    SecurityRule,
    TrafficType,
)
from server.core.paging import TokenSigner, fingerprint
from server.core.ports import MetadataStore, MetadataTx
from server.core.security import complete_rule_ids

DEFAULT_FLOW_LOG_QUOTA = 10  # rule 1: per region per account; a server setting
DEFAULT_REGIONS = ("bj", "gz")  # the demo's regions: the catalogue when the `regions` setting is not given


@dataclass(frozen=True)
class Quotas:
    """Per-account limits, each a server setting (named in the QuotaFailure it causes)."""

    resources_per_account: int = 1000
    log_stores_per_account: int = 100
    flow_logs_per_region: int = DEFAULT_FLOW_LOG_QUOTA


_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str, length: int = 12) -> str:
    return prefix + "-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class NewLogStoreSpec:
    project: str
    name: str
    retention_days: int = 0
    region: str = ""


@dataclass(frozen=True)
class ExistingLogStoreSpec:
    project: str
    name: str
    region: str = ""


@dataclass(frozen=True)
class CreateFlowLog:
    region: str
    name: str
    resource_type: int
    resource_id: str
    network_id: str
    traffic_type: int
    destination: NewLogStoreSpec | ExistingLogStoreSpec | None
    description: str = ""
    client_token: str = ""
    state: int = 0


FLOW_LOG_MUTABLE = ("name", "description", "traffic_type", "state")
LOG_STORE_MUTABLE = ("retention_days", "description")


class Service:
    def __init__(
        self,
        metadata: MetadataStore,
        signer: TokenSigner,
        *,
        flow_log_quota: int | None = None,
        quotas: Quotas | None = None,
        regions: Iterable[str] = DEFAULT_REGIONS,
        on_log_store_deleted: Callable[[str, LogStoreKey], None] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.metadata = metadata
        self.signer = signer
        quotas = quotas or Quotas()
        if flow_log_quota is not None:
            quotas = replace(quotas, flow_logs_per_region=flow_log_quota)
        self.quotas = quotas
        self.regions = rules.RegionCatalogue(regions)
        self.on_log_store_deleted = on_log_store_deleted
        self.clock = clock

    @property
    def flow_log_quota(self) -> int:
        return self.quotas.flow_logs_per_region

    def _violations(self) -> rules.Violations:
        """Field checks that know the region catalogue."""
        return rules.Violations(self.regions)

    # -- resources ------------------------------------------------------------------------

    def register_resource(self, account: str, r: Resource) -> Resource:
        v = self._violations()
        v.resource_id("resource.id", r.id, required=False)
        v.enum("resource.type", r.type, ResourceType)
        v.region("resource.region", r.region)
        v.network_id("resource.network_id", r.network_id)
        if r.type == ResourceType.CSN and r.network_id and not r.network_id.startswith("csn-"):
            v.add("resource.network_id", "a CSN resource's network is its CSN instance ('csn-…')")
        if len(r.name) > 65:
            v.add("resource.name", f"must be at most 65 characters (has {len(r.name)})")
        if not r.addresses:
            v.add("resource.addresses", "at least one IP address or CIDR the resource owns is required")
        elif len(r.addresses) > rules.MAX_ADDRESSES:
            v.add("resource.addresses", f"at most {rules.MAX_ADDRESSES} addresses (has {len(r.addresses)})")
        else:
            for i, a in enumerate(r.addresses):
                v.address(f"resource.addresses[{i}]", a)
        if len(r.rules) > rules.MAX_RULES:
            v.add("resource.rules", f"at most {rules.MAX_RULES} rules (has {len(r.rules)})")
        else:
            ids: dict[str, int] = {}
            for i, rule in enumerate(r.rules):
                _check_rule(v, f"resource.rules[{i}]", rule)
                if rule.id:
                    if rule.id in ids:
                        v.add(
                            f"resource.rules[{i}].id",
                            f"{rule.id!r} is already the id of resource.rules[{ids[rule.id]}]; "
                            "rule ids must be unique within the resource",
                        )
                    else:
                        ids[rule.id] = i
        v.raise_if_any()
        try:
            rtype = ResourceType(r.type)
        except ValueError:  # pragma: no cover - refused above
            raise
        addresses = tuple(
            str(ipaddress.ip_network(a, strict=True)).removesuffix("/32").removesuffix("/128")
            if "/" in a
            else ipaddress.ip_address(a).compressed
            for a in r.addresses
        )
        resource = replace(
            r,
            id=r.id or new_id(RESOURCE_ID_PREFIX[rtype], 8),
            type=rtype,
            addresses=addresses,
            rules=complete_rule_ids(r.rules),
            account_id=account,
            create_time_ms=self.clock(),
        )
        with self.metadata.transaction() as tx:
            if tx.get_resource(account, resource.id) is not None:
                raise AlreadyExists(f"resource {resource.id} already exists")
            limit = self.quotas.resources_per_account
            count = tx.count_resources(account)
            if count >= limit:
                raise QuotaExceeded(
                    f"quotas.resources_per_account: account {account}",
                    f"the account already has {count} resources, the maximum is {limit} "
                    "(setting quotas.resources_per_account); delete one before registering another",
                )
            tx.insert_resource(resource)
        return resource

    def get_resource(self, account: str, resource_id: str) -> Resource:
        v = rules.Violations()
        v.resource_id("id", resource_id)
        v.raise_if_any()
        with self.metadata.transaction() as tx:
            return _resource_or_404(tx, account, resource_id)

    def list_resources(
        self,
        account: str,
        *,
        region: str = "",
        type: int = 0,
        network_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> Page:
        v = self._violations()
        v.region("region", region, required=False)
        v.enum("type", type, ResourceType, required=False)
        if network_id:
            v.network_id("network_id", network_id)
        v.raise_if_any()
        size = rules.page_size(page_size)
        bound = fingerprint(region, type, network_id)
        after = self.signer.decode(page_token, "resources", account, bound) if page_token else ""
        with self.metadata.transaction() as tx:
            items = tx.list_resources(
                account, region=region, type=ResourceType(type), network_id=network_id, after=str(after), limit=size + 1
            )
        return self._page(items[:size], len(items) > size, "resources", account, bound, lambda r: r.id)

    def delete_resource(self, account: str, resource_id: str) -> None:
        v = self._violations()
        v.resource_id("id", resource_id)
        v.raise_if_any()
        with self.metadata.transaction() as tx:
            _resource_or_404(tx, account, resource_id)
            users = tx.flow_logs_using_resource(account, resource_id)
            if users:
                raise FailedPrecondition(
                    f"resource {resource_id} is used by flow log(s) {', '.join(users)}; delete them first"
                )
            tx.delete_resource(account, resource_id)

    # -- LogStores ------------------------------------------------------------------------

    def create_log_store(self, account: str, ls: LogStore) -> LogStore:
        v = self._violations()
        self._check_log_store_fields(v, ls, "log_store.")
        v.raise_if_any()
        now = self.clock()
        store = replace(
            ls,
            retention_days=ls.retention_days or rules.RETENTION_DEFAULT,
            account_id=account,
            create_time_ms=now,
            update_time_ms=now,
        )
        with self.metadata.transaction() as tx:
            if tx.get_log_store(account, store.key) is not None:
                raise AlreadyExists(f"LogStore {store.key} already exists")
            self._check_log_store_insert(tx, account, store.key, "log_store")
            tx.insert_log_store(store)
        return store

    def get_log_store(self, account: str, key: LogStoreKey) -> LogStore:
        _check_key(key, regions=self.regions)
        with self.metadata.transaction() as tx:
            return _log_store_or_404(tx, account, key)

    def list_log_stores(
        self, account: str, *, region: str = "", project: str = "", page_size: int = 0, page_token: str = ""
    ) -> Page:
        v = self._violations()
        v.region("region", region, required=False)
        v.store_name("project", project, "project", required=False)
        v.raise_if_any()
        size = rules.page_size(page_size)
        bound = fingerprint(region, project)
        after = self.signer.decode(page_token, "log_stores", account, bound) if page_token else None
        if after is not None and not (isinstance(after, list) and len(after) == 3):
            raise InvalidArgument.field("page_token", "is not a valid token for this request")
        with self.metadata.transaction() as tx:
            items = tx.list_log_stores(
                account, region=region, project=project, after=tuple(after) if after else None, limit=size + 1
            )
        return self._page(
            items[:size], len(items) > size, "log_stores", account, bound, lambda s: [s.region, s.project, s.name]
        )

    def update_log_store(self, account: str, ls: LogStore, mask: Iterable[str]) -> LogStore:
        key = ls.key
        _check_key(key, prefix="log_store.", regions=self.regions)
        paths = _check_mask(mask, LOG_STORE_MUTABLE, "log_store")
        v = self._violations()
        if "retention_days" in paths:
            v.retention_days("log_store.retention_days", ls.retention_days)
        if "description" in paths:
            v.description("log_store.description", ls.description)
        v.raise_if_any()
        with self.metadata.transaction() as tx:
            current = _log_store_or_404(tx, account, key)
            changes: dict[str, Any] = {}
            if "retention_days" in paths:
                changes["retention_days"] = ls.retention_days or rules.RETENTION_DEFAULT
            if "description" in paths:
                changes["description"] = ls.description
            updated = replace(current, update_time_ms=self.clock(), **changes)
            tx.update_log_store(updated)
        return updated

    def delete_log_store(self, account: str, key: LogStoreKey) -> None:
        """Deletes the LogStore and its records; refused while a flow log delivers to it.

        Atomic from the user's view: one metadata transaction replaces the LogStore by a
        tombstone, so it is gone from every API at once, and a retry is NOT_FOUND. The records
        are purged after that (on_log_store_deleted: tried at once, then by the background purger
        until it is done in every backend, across restarts); the name cannot be used again
        until then (see _check_log_store_insert)."""
        _check_key(key, regions=self.regions)
        with self.metadata.transaction() as tx:
            _log_store_or_404(tx, account, key)
            users = tx.flow_logs_delivering_to(account, key)
            if users:
                raise FailedPrecondition(
                    f"LogStore {key} receives records from flow log(s) {', '.join(users)}; "
                    "delete them or point them elsewhere first"
                )
            tx.delete_log_store(account, key)
            tx.insert_tombstone(account, key, self.clock())
        if self.on_log_store_deleted is not None:
            self.on_log_store_deleted(account, key)

    def _check_log_store_insert(self, tx: MetadataTx, account: str, key: LogStoreKey, field: str) -> None:
        """A new LogStore: not while the records of a deleted one of the same name are being
        purged, and within the account's LogStore quota.

        Why the name waits for the purge instead of each LogStore getting an incarnation id kept
        with its records: records are addressed by (account, region, project, LogStore) in every
        backend (DuckDB rows, Elasticsearch index names, archive prefixes, the spool, the `log_store`
        filter and group-by field), so an incarnation would change every backend's layout and
        every query; and a healthy purge takes milliseconds (DeleteLogStore tries it before
        returning), so only a deletion during a backend outage makes a user wait for the name."""
        if tx.tombstone_exists(account, key):
            raise FailedPrecondition(
                f"LogStore {key} was deleted and its records are still being purged (a backend "
                "was unavailable); its name can be used again once the purge is done: retry later"
            )
        limit = self.quotas.log_stores_per_account
        count = tx.count_log_stores(account)
        if count >= limit:
            raise QuotaExceeded(
                f"quotas.log_stores_per_account: account {account}",
                f"the account already has {count} LogStores, the maximum is {limit} "
                f"(setting quotas.log_stores_per_account); delete one before creating another "
                f"({field})",
            )

    def _check_log_store_fields(self, v: rules.Violations, ls: LogStore, prefix: str) -> None:
        v.region(prefix + "region", ls.region)
        v.store_name(prefix + "project", ls.project, "project")
        v.store_name(prefix + "name", ls.name, "LogStore name")
        v.retention_days(prefix + "retention_days", ls.retention_days)
        v.description(prefix + "description", ls.description)

    # -- flow logs ------------------------------------------------------------------------

    def create_flow_log(self, account: str, req: CreateFlowLog) -> FlowLog:
        v = self._violations()
        v.region("region", req.region)
        v.flow_log_name("name", req.name)
        v.enum("resource_type", req.resource_type, ResourceType)
        v.resource_id("resource_id", req.resource_id)
        v.network_id("network_id", req.network_id)
        v.enum("traffic_type", req.traffic_type, TrafficType)  # rule 6
        v.description("description", req.description)  # rule 3
        v.enum("state", req.state, FlowLogState, required=False)
        if len(req.client_token) > 64:
            v.add("client_token", f"must be at most 64 characters (has {len(req.client_token)})")
        dest = req.destination
        if dest is None:
            v.add("destination_choice", "is required: existing_log_store or new_log_store")
        elif isinstance(dest, NewLogStoreSpec):
            v.store_name("new_log_store.project", dest.project, "project")
            v.store_name("new_log_store.name", dest.name, "LogStore name")
            v.retention_days("new_log_store.retention_days", dest.retention_days)
            v.region("new_log_store.region", dest.region, required=False)
        else:
            v.store_name("existing_log_store.project", dest.project, "project")
            v.store_name("existing_log_store.name", dest.name, "LogStore name")
            v.region("existing_log_store.region", dest.region, required=False)
        v.raise_if_any()
        assert dest is not None
        request_fp = fingerprint(
            req.region,
            req.name,
            req.resource_type,
            req.resource_id,
            req.network_id,
            req.traffic_type,
            req.description,
            req.state,
            type(dest).__name__,
            dest.project,
            dest.name,
            getattr(dest, "retention_days", 0),
            dest.region,
        )

        with self.metadata.transaction() as tx:
            if req.client_token:  # rule 9
                seen = tx.get_client_token(account, req.client_token)
                if seen is not None:
                    seen_fp, flow_log_id = seen
                    if seen_fp != request_fp:
                        raise AlreadyExists(
                            f"client_token {req.client_token!r} was already used for a different "
                            "request; use a new token for a new flow log"
                        )
                    existing = tx.get_flow_log(account, flow_log_id)
                    if existing is None:
                        raise NotFound(
                            f"flow log {flow_log_id}, created with this client_token, has since been deleted"
                        )
                    return existing

            # rule 5: the resource exists, is of the type, in the region and in the network
            resource = tx.get_resource(account, req.resource_id)
            if resource is None:
                raise NotFound(f"resource {req.resource_id} not found")
            rv = self._violations()
            if resource.type != req.resource_type:
                rv.add(
                    "resource_type",
                    f"resource {resource.id} is a {ResourceType(resource.type).name}, "
                    f"not a {ResourceType(req.resource_type).name}",
                )
            if resource.region != req.region:
                rv.add("region", f"resource {resource.id} is in region {resource.region!r}, not {req.region!r}")
            if resource.network_id != req.network_id:
                rv.add(
                    "network_id",
                    f"resource {resource.id} is in network {resource.network_id!r}, not {req.network_id!r}",
                )
            rv.raise_if_any()

            # rule 2: the destination LogStore is in the flow log's region
            dest_field = "new_log_store" if isinstance(dest, NewLogStoreSpec) else "existing_log_store"
            if dest.region and dest.region != req.region:
                raise FailedPrecondition(
                    f"{dest_field} is in region {dest.region!r} but the flow log is in "
                    f"{req.region!r}: a flow log delivers only to a LogStore of its own region"
                )
            key = LogStoreKey(req.region, dest.project, dest.name)
            if isinstance(dest, NewLogStoreSpec):  # rule 7, atomically with the flow log
                if tx.get_log_store(account, key) is not None:
                    raise AlreadyExists(f"LogStore {key} already exists; use existing_log_store to deliver to it")
                self._check_log_store_insert(tx, account, key, "new_log_store")
            elif tx.get_log_store(account, key) is None:
                raise NotFound(f"LogStore {dest.project}/{dest.name} not found in region {req.region!r}")

            # rule 4: unique name per region and account
            if tx.flow_log_name_taken(account, req.region, req.name):
                raise AlreadyExists(f"a flow log named {req.name!r} already exists in region {req.region!r}")
            # rule 1: quota per region per account, exact under concurrency (serialised tx)
            count = tx.count_flow_logs(account, req.region)
            limit = self.quotas.flow_logs_per_region
            if count >= limit:
                raise QuotaExceeded(
                    f"quotas.flow_logs_per_region: account {account}, region {req.region}",
                    f"region {req.region!r} already has {count} flow logs, the maximum is {limit} "
                    "(setting quotas.flow_logs_per_region, formerly flow_log_quota); delete one "
                    "before creating another",
                )

            now = self.clock()
            if isinstance(dest, NewLogStoreSpec):
                tx.insert_log_store(
                    LogStore(
                        req.region,
                        dest.project,
                        dest.name,
                        dest.retention_days or rules.RETENTION_DEFAULT,
                        "",
                        now,
                        now,
                        account,
                    )
                )
            flow_log = FlowLog(
                id=new_id("fl"),
                region=req.region,
                name=req.name,
                resource_type=ResourceType(req.resource_type),
                resource_id=req.resource_id,
                network_id=req.network_id,
                traffic_type=TrafficType(req.traffic_type),
                project=dest.project,
                log_store=dest.name,
                description=req.description,
                state=FlowLogState(req.state or FlowLogState.ACTIVE),
                create_time_ms=now,
                update_time_ms=now,
                account_id=account,
            )
            tx.insert_flow_log(flow_log)
            if req.client_token:
                tx.put_client_token(account, req.client_token, request_fp, flow_log.id)
        return flow_log

    def get_flow_log(self, account: str, flow_log_id: str) -> FlowLog:
        rules.check_flow_log_id(flow_log_id)
        with self.metadata.transaction() as tx:
            return _flow_log_or_404(tx, account, flow_log_id)

    def list_flow_logs(
        self,
        account: str,
        *,
        region: str = "",
        resource_id: str = "",
        state: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page:
        v = self._violations()
        v.region("region", region, required=False)
        v.resource_id("resource_id", resource_id, required=False)
        v.enum("state", state, FlowLogState, required=False)
        v.raise_if_any()
        size = rules.page_size(page_size)
        bound = fingerprint(region, resource_id, state)
        after = self.signer.decode(page_token, "flow_logs", account, bound) if page_token else ""
        with self.metadata.transaction() as tx:
            items = tx.list_flow_logs(
                account,
                region=region,
                resource_id=resource_id,
                state=FlowLogState(state),
                after=str(after),
                limit=size + 1,
            )
        return self._page(items[:size], len(items) > size, "flow_logs", account, bound, lambda f: f.id)

    def update_flow_log(self, account: str, flow_log_id: str, changes: dict[str, Any], mask: Iterable[str]) -> FlowLog:
        """`changes` holds the new values of the masked fields (name, description, traffic_type, state)."""
        rules.check_flow_log_id(flow_log_id)
        paths = _check_mask(mask, FLOW_LOG_MUTABLE, "flow_log")
        v = self._violations()
        if "name" in paths:
            v.flow_log_name("flow_log.name", changes.get("name", ""))
        if "description" in paths:
            v.description("flow_log.description", changes.get("description", ""))
        if "traffic_type" in paths:
            v.enum("flow_log.traffic_type", changes.get("traffic_type", 0), TrafficType)
        if "state" in paths:
            v.enum("flow_log.state", changes.get("state", 0), FlowLogState)
        v.raise_if_any()
        with self.metadata.transaction() as tx:
            current = _flow_log_or_404(tx, account, flow_log_id)
            new: dict[str, Any] = {}
            if "name" in paths:
                if changes["name"] != current.name and tx.flow_log_name_taken(
                    account, current.region, changes["name"], exclude_id=flow_log_id
                ):
                    raise AlreadyExists(
                        f"a flow log named {changes['name']!r} already exists in region {current.region!r}"
                    )
                new["name"] = changes["name"]
            if "description" in paths:
                new["description"] = changes["description"]
            if "traffic_type" in paths:
                new["traffic_type"] = TrafficType(changes["traffic_type"])
            if "state" in paths:
                new["state"] = FlowLogState(changes["state"])
            updated = replace(current, update_time_ms=self.clock(), **new)
            tx.update_flow_log(updated)
        return updated

    def delete_flow_log(self, account: str, flow_log_id: str) -> None:
        """Rule 8: the LogStore and the records already in it stay."""
        rules.check_flow_log_id(flow_log_id)
        with self.metadata.transaction() as tx:
            _flow_log_or_404(tx, account, flow_log_id)
            tx.delete_flow_log(account, flow_log_id)

    # -- helpers --------------------------------------------------------------------------

    def _page(
        self, items: list[Any], more: bool, kind: str, account: str, bound: str, position: Callable[[Any], Any]
    ) -> Page:
        token = self.signer.encode(kind, account, bound, position(items[-1])) if more and items else ""
        return Page(items, token)


def _check_rule(v: rules.Violations, f: str, rule: SecurityRule) -> None:
    if not 1 <= rule.priority <= 1000:
        v.add(f + ".priority", f"must be 1-1000 (got {rule.priority})")
    v.enum(f + ".direction", rule.direction, Direction)
    v.enum(f + ".action", rule.action, Action)
    if not 0 <= rule.protocol <= 255:
        v.add(f + ".protocol", f"must be an IANA protocol number 0-255, 0 for any (got {rule.protocol})")
    if rule.peer_cidr:
        v.address(f + ".peer_cidr", rule.peer_cidr)
    if not (0 <= rule.port_from <= 65535 and 0 <= rule.port_to <= 65535):
        v.add(f + ".port_from", "ports must be 0-65535")
    elif rule.port_from > rule.port_to:
        v.add(f + ".port_to", f"must not be below port_from ({rule.port_from})")
    v.rule_id(f + ".id", rule.id)
    if rule.id == DEFAULT_DENY_RULE_ID:
        v.add(f + ".id", f"{DEFAULT_DENY_RULE_ID!r} is reserved for flows no rule matched; choose another id")
    if rule.kind not in (RuleKind.UNSPECIFIED, RuleKind.ACL, RuleKind.SECURITY_GROUP):
        v.add(
            f + ".kind",
            f"must be RULE_KIND_ACL or RULE_KIND_SECURITY_GROUP (unspecified: security group), not {rule.kind}",
        )


def _check_key(key: LogStoreKey, prefix: str = "", regions: "rules.RegionCatalogue | None" = None) -> None:
    v = rules.Violations(regions)
    v.region(prefix + "region", key.region)
    v.store_name(prefix + "project", key.project, "project")
    v.store_name(prefix + "name", key.name, "LogStore name")
    v.raise_if_any()


def _check_mask(mask: Iterable[str], mutable: tuple[str, ...], what: str) -> set[str]:
    paths = {p.removeprefix(what + ".") for p in mask}
    if not paths:
        raise InvalidArgument.field("update_mask", f"is required: name the fields to change ({', '.join(mutable)})")
    fixed = sorted(p for p in paths if p not in mutable)
    if fixed:
        raise InvalidArgument.field(
            "update_mask", f"{', '.join(fixed)} cannot be changed; mutable fields: {', '.join(mutable)}"
        )
    return paths


def _resource_or_404(tx: MetadataTx, account: str, resource_id: str) -> Resource:
    r = tx.get_resource(account, resource_id)
    if r is None:
        raise NotFound(f"resource {resource_id} not found")
    return r


def _log_store_or_404(tx: MetadataTx, account: str, key: LogStoreKey) -> LogStore:
    s = tx.get_log_store(account, key)
    if s is None:
        raise NotFound(f"LogStore {key} not found")
    return s


def _flow_log_or_404(tx: MetadataTx, account: str, flow_log_id: str) -> FlowLog:
    f = tx.get_flow_log(account, flow_log_id)
    if f is None:
        raise NotFound(f"flow log {flow_log_id} not found")
    return f
