"""The metadata store written once in SQL: MetadataTx's statements, the store's reads over every
account, and the row <-> model mapping, for every SQL metadata backend.

A backend subclasses SqlMetadataTx (giving it a Dialect and the two ways to run a statement of an
account: fetch() and execute(), where it may take that account's lock first) and
SqlMetadataStoreBase (giving it transaction(), _query() and _write()); its connections, its
isolation and its change counter (generation()) stay its own. See backends/embedded/metadata.py
and backends/postgres/metadata.py.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol, Sequence

from backends.sqlmeta.dialect import Dialect
from server.core.model import (
    FlowLog,
    FlowLogState,
    LogStore,
    LogStoreKey,
    Resource,
    ResourceType,
    TrafficType,
)
from server.core.ports import Tombstone
from server.core.rules_json import rules_from_json, rules_to_json

Args = Sequence[Any]


class Row(Protocol):
    """A result row read by column name (sqlite3.Row, psycopg's dict_row)."""

    def __getitem__(self, key: str, /) -> Any: ...


def resource_of_row(row: Row) -> Resource:
    return Resource(
        id=row["id"],
        type=ResourceType(row["type"]),
        region=row["region"],
        network_id=row["network_id"],
        name=row["name"],
        addresses=tuple(json.loads(row["addresses"])),
        rules=rules_from_json(row["rules"]),
        create_time_ms=row["create_time_ms"],
        account_id=row["account_id"],
    )


def log_store_of_row(row: Row) -> LogStore:
    return LogStore(
        region=row["region"],
        project=row["project"],
        name=row["name"],
        retention_days=row["retention_days"],
        description=row["description"],
        create_time_ms=row["create_time_ms"],
        update_time_ms=row["update_time_ms"],
        account_id=row["account_id"],
    )


def flow_log_of_row(row: Row) -> FlowLog:
    return FlowLog(
        id=row["id"],
        region=row["region"],
        name=row["name"],
        resource_type=ResourceType(row["resource_type"]),
        resource_id=row["resource_id"],
        network_id=row["network_id"],
        traffic_type=TrafficType(row["traffic_type"]),
        project=row["project"],
        log_store=row["log_store"],
        description=row["description"],
        state=FlowLogState(row["state"]),
        create_time_ms=row["create_time_ms"],
        update_time_ms=row["update_time_ms"],
        account_id=row["account_id"],
    )


def tombstone_of_row(row: Row) -> Tombstone:
    return Tombstone(
        row["account_id"],
        LogStoreKey(row["region"], row["project"], row["name"]),
        row["deleted_ms"],
        row["attempts"],
        row["last_error"],
    )


_BY_KEY = "account_id=? AND region=? AND project=? AND name=?"  # one LogStore (or its tombstone)


def _key_args(account: str, key: LogStoreKey) -> tuple[str, str, str, str]:
    return (account, key.region, key.project, key.name)


class SqlMetadataTx:
    """MetadataTx (server.core.ports) on one open transaction of a SQL database. Every statement
    belongs to one account (the first argument of fetch() and execute()). `changed` is set when a
    flow log, a LogStore or a tombstone was written: the store then bumps its generation."""

    dialect: ClassVar[Dialect]

    def __init__(self) -> None:
        self.changed = False

    # -- what a backend provides (`sql` is in its dialect's placeholders) ----------------------

    def fetch(self, account: str, sql: str, args: Args) -> list[Row]:
        raise NotImplementedError

    def execute(self, account: str, sql: str, args: Args) -> None:
        raise NotImplementedError

    # -- statements written with `?` placeholders -----------------------------------------------

    def _rows(self, account: str, sql: str, args: Args) -> list[Row]:
        return self.fetch(account, self.dialect.sql(sql), args)

    def _one(self, account: str, sql: str, args: Args) -> Row | None:
        rows = self._rows(account, sql, args)
        return rows[0] if rows else None

    def _exec(self, account: str, sql: str, args: Args) -> None:
        self.execute(account, self.dialect.sql(sql), args)

    def _count(self, account: str, sql: str, args: Args) -> int:
        row = self._one(account, sql, args)
        assert row is not None
        return int(row["n"])

    def _page(
        self, account: str, table: str, start: tuple[str, Args] | None, equal: dict[str, Any], order: str, limit: int
    ) -> list[Row]:
        """One page of `account`'s rows of `table`: after `start` (a condition and its arguments),
        with each column of `equal` whose value is set (not empty, not 0) equal to it, in `order`."""
        sql = f"SELECT * FROM {table} WHERE account_id=?"
        args: list[Any] = [account]
        if start is not None:
            sql += f" AND {start[0]}"
            args.extend(start[1])
        for column, value in equal.items():
            if value:
                sql += f" AND {column}=?"
                args.append(value)
        sql += f" ORDER BY {order} LIMIT ?"
        args.append(limit)
        return self._rows(account, sql, args)

    # resources
    def get_resource(self, account: str, resource_id: str) -> Resource | None:
        row = self._one(account, "SELECT * FROM resources WHERE account_id=? AND id=?", (account, resource_id))
        return resource_of_row(row) if row else None

    def list_resources(
        self, account: str, *, region: str, type: ResourceType, network_id: str, after: str, limit: int
    ) -> list[Resource]:
        equal = {"region": region, "type": int(type), "network_id": network_id}
        by_id = self.dialect.ordered("id")
        rows = self._page(account, "resources", (f"{by_id} > ?", (after,)), equal, by_id, limit)
        return [resource_of_row(r) for r in rows]

    def insert_resource(self, r: Resource) -> None:
        self._exec(
            r.account_id,
            "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?)",
            (
                r.account_id,
                r.id,
                int(r.type),
                r.region,
                r.network_id,
                r.name,
                json.dumps(list(r.addresses)),
                rules_to_json(r.rules),
                r.create_time_ms,
            ),
        )

    def delete_resource(self, account: str, resource_id: str) -> None:
        self._exec(account, "DELETE FROM resources WHERE account_id=? AND id=?", (account, resource_id))

    def count_resources(self, account: str) -> int:
        return self._count(account, "SELECT count(*) AS n FROM resources WHERE account_id=?", (account,))

    # LogStores
    def get_log_store(self, account: str, key: LogStoreKey) -> LogStore | None:
        row = self._one(account, f"SELECT * FROM log_stores WHERE {_BY_KEY}", _key_args(account, key))
        return log_store_of_row(row) if row else None

    def list_log_stores(
        self, account: str, *, region: str, project: str, after: tuple[str, str, str] | None, limit: int
    ) -> list[LogStore]:
        by_key = ", ".join(self.dialect.ordered(c) for c in ("region", "project", "name"))
        start = (f"({by_key}) > (?, ?, ?)", after) if after else None
        rows = self._page(account, "log_stores", start, {"region": region, "project": project}, by_key, limit)
        return [log_store_of_row(r) for r in rows]

    def insert_log_store(self, s: LogStore) -> None:
        self.changed = True
        self._exec(
            s.account_id,
            "INSERT INTO log_stores VALUES (?,?,?,?,?,?,?,?)",
            (
                s.account_id,
                s.region,
                s.project,
                s.name,
                s.retention_days,
                s.description,
                s.create_time_ms,
                s.update_time_ms,
            ),
        )

    def update_log_store(self, s: LogStore) -> None:
        self.changed = True
        self._exec(
            s.account_id,
            f"UPDATE log_stores SET retention_days=?, description=?, update_time_ms=? WHERE {_BY_KEY}",
            (s.retention_days, s.description, s.update_time_ms, s.account_id, s.region, s.project, s.name),
        )

    def delete_log_store(self, account: str, key: LogStoreKey) -> None:
        self.changed = True
        self._exec(account, f"DELETE FROM log_stores WHERE {_BY_KEY}", _key_args(account, key))

    def count_log_stores(self, account: str) -> int:
        return self._count(account, "SELECT count(*) AS n FROM log_stores WHERE account_id=?", (account,))

    # LogStores being purged (deleted from the user's view, records not yet gone everywhere)
    def insert_tombstone(self, account: str, key: LogStoreKey, deleted_ms: int) -> None:
        self.changed = True
        d = self.dialect
        self._exec(
            account,
            f"{d.insert_ignore} log_store_tombstones (account_id, region, project, name, deleted_ms) "
            f"VALUES (?,?,?,?,?){d.on_conflict_ignore}",
            (*_key_args(account, key), deleted_ms),
        )

    def tombstone_exists(self, account: str, key: LogStoreKey) -> bool:
        sql = f"SELECT 1 AS x FROM log_store_tombstones WHERE {_BY_KEY}"
        return self._one(account, sql, _key_args(account, key)) is not None

    # flow logs
    def get_flow_log(self, account: str, flow_log_id: str) -> FlowLog | None:
        row = self._one(account, "SELECT * FROM flow_logs WHERE account_id=? AND id=?", (account, flow_log_id))
        return flow_log_of_row(row) if row else None

    def list_flow_logs(
        self, account: str, *, region: str, resource_id: str, state: FlowLogState, after: str, limit: int
    ) -> list[FlowLog]:
        equal = {"region": region, "resource_id": resource_id, "state": int(state)}
        by_id = self.dialect.ordered("id")
        rows = self._page(account, "flow_logs", (f"{by_id} > ?", (after,)), equal, by_id, limit)
        return [flow_log_of_row(r) for r in rows]

    def count_flow_logs(self, account: str, region: str) -> int:
        sql = "SELECT count(*) AS n FROM flow_logs WHERE account_id=? AND region=?"
        return self._count(account, sql, (account, region))

    def flow_logs_using_resource(self, account: str, resource_id: str) -> list[str]:
        sql = f"SELECT id FROM flow_logs WHERE account_id=? AND resource_id=? ORDER BY {self.dialect.ordered('id')}"
        return [r["id"] for r in self._rows(account, sql, (account, resource_id))]

    def flow_logs_delivering_to(self, account: str, key: LogStoreKey) -> list[str]:
        sql = (
            "SELECT id FROM flow_logs WHERE account_id=? AND region=? AND project=? AND log_store=? "
            f"ORDER BY {self.dialect.ordered('id')}"
        )
        return [r["id"] for r in self._rows(account, sql, _key_args(account, key))]

    def flow_log_name_taken(self, account: str, region: str, name: str, exclude_id: str = "") -> bool:
        sql = "SELECT 1 AS x FROM flow_logs WHERE account_id=? AND region=? AND name=? AND id<>?"
        return self._one(account, sql, (account, region, name, exclude_id)) is not None

    def insert_flow_log(self, f: FlowLog) -> None:
        self.changed = True
        self._exec(
            f.account_id,
            "INSERT INTO flow_logs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                f.account_id,
                f.id,
                f.region,
                f.name,
                int(f.resource_type),
                f.resource_id,
                f.network_id,
                int(f.traffic_type),
                f.project,
                f.log_store,
                f.description,
                int(f.state),
                f.create_time_ms,
                f.update_time_ms,
            ),
        )

    def update_flow_log(self, f: FlowLog) -> None:
        self.changed = True
        self._exec(
            f.account_id,
            "UPDATE flow_logs SET name=?, description=?, traffic_type=?, state=?, update_time_ms=? "
            "WHERE account_id=? AND id=?",
            (f.name, f.description, int(f.traffic_type), int(f.state), f.update_time_ms, f.account_id, f.id),
        )

    def delete_flow_log(self, account: str, flow_log_id: str) -> None:
        self.changed = True
        self._exec(account, "DELETE FROM flow_logs WHERE account_id=? AND id=?", (account, flow_log_id))

    # idempotency of CreateFlowLog
    def get_client_token(self, account: str, token: str) -> tuple[str, str] | None:
        row = self._one(
            account,
            "SELECT fingerprint, flow_log_id FROM client_tokens WHERE account_id=? AND token=?",
            (account, token),
        )
        return (row["fingerprint"], row["flow_log_id"]) if row else None

    def put_client_token(self, account: str, token: str, fingerprint: str, flow_log_id: str) -> None:
        self._exec(account, "INSERT INTO client_tokens VALUES (?,?,?,?)", (account, token, fingerprint, flow_log_id))


class SqlMetadataStoreBase:
    """The MetadataStore methods (server.core.ports) that are the same SQL on every backend. A
    backend provides transaction(), _query() (a read outside any transaction) and _write() (one
    statement in a transaction of its own that changes nothing a stream watches)."""

    dialect: ClassVar[Dialect]
    # what remove_tombstone() deletes (a backend may keep more per tombstone, e.g. purge acks)
    tombstone_tables: ClassVar[tuple[str, ...]] = ("log_store_tombstones",)

    def transaction(self) -> AbstractContextManager[SqlMetadataTx]:
        raise NotImplementedError

    def _query(self, sql: str, args: Args = ()) -> list[Row]:
        raise NotImplementedError

    def _write(self, sql: str, args: Args) -> None:
        raise NotImplementedError

    def tombstones(self) -> list[Tombstone]:
        return [tombstone_of_row(r) for r in self._query("SELECT * FROM log_store_tombstones ORDER BY deleted_ms")]

    def purge_failed(self, account: str, key: LogStoreKey, error: str) -> None:
        sql = f"UPDATE log_store_tombstones SET attempts = attempts + 1, last_error = ? WHERE {_BY_KEY}"
        self._write(self.dialect.sql(sql), (error[:500], *_key_args(account, key)))

    def remove_tombstone(self, account: str, key: LogStoreKey) -> None:
        with self.transaction() as tx:
            tx.changed = True
            for table in self.tombstone_tables:
                tx._exec(account, f"DELETE FROM {table} WHERE {_BY_KEY}", _key_args(account, key))

    def regions_in_use(self) -> dict[str, int]:
        """Objects (resources, LogStores, flow logs) per region, over every account."""
        out: dict[str, int] = {}
        for table in ("resources", "log_stores", "flow_logs"):
            for r in self._query(f"SELECT region, count(*) AS n FROM {table} GROUP BY region"):
                out[r["region"]] = out.get(r["region"], 0) + int(r["n"])
        return out

    def all_flow_logs(self) -> list[FlowLog]:
        by = f"{self.dialect.ordered('account_id')}, {self.dialect.ordered('id')}"
        return [flow_log_of_row(r) for r in self._query(f"SELECT * FROM flow_logs ORDER BY {by}")]

    def all_log_stores(self) -> list[LogStore]:
        return [log_store_of_row(r) for r in self._query("SELECT * FROM log_stores")]
