"""The embedded metadata store: SQLite under --data-dir.

Durable when a transaction commits (WAL, synchronous=FULL). All transactions go through one
connection behind a lock and start with BEGIN IMMEDIATE, so they are serialised: the core's
check-then-insert (quota, unique names, client tokens) is exact under any concurrency.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
  account_id TEXT NOT NULL, id TEXT NOT NULL, type INTEGER NOT NULL, region TEXT NOT NULL,
  network_id TEXT NOT NULL, name TEXT NOT NULL, addresses TEXT NOT NULL, rules TEXT NOT NULL,
  create_time_ms INTEGER NOT NULL, PRIMARY KEY (account_id, id));
CREATE TABLE IF NOT EXISTS log_stores (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  retention_days INTEGER NOT NULL, description TEXT NOT NULL, create_time_ms INTEGER NOT NULL,
  update_time_ms INTEGER NOT NULL, PRIMARY KEY (account_id, region, project, name));
CREATE TABLE IF NOT EXISTS flow_logs (
  account_id TEXT NOT NULL, id TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL,
  resource_type INTEGER NOT NULL, resource_id TEXT NOT NULL, network_id TEXT NOT NULL,
  traffic_type INTEGER NOT NULL, project TEXT NOT NULL, log_store TEXT NOT NULL,
  description TEXT NOT NULL, state INTEGER NOT NULL, create_time_ms INTEGER NOT NULL,
  update_time_ms INTEGER NOT NULL, PRIMARY KEY (account_id, id));
CREATE UNIQUE INDEX IF NOT EXISTS flow_logs_name ON flow_logs (account_id, region, name);
CREATE INDEX IF NOT EXISTS flow_logs_resource ON flow_logs (account_id, resource_id);
CREATE INDEX IF NOT EXISTS flow_logs_dest ON flow_logs (account_id, region, project, log_store);
CREATE TABLE IF NOT EXISTS client_tokens (
  account_id TEXT NOT NULL, token TEXT NOT NULL, fingerprint TEXT NOT NULL, flow_log_id TEXT NOT NULL,
  PRIMARY KEY (account_id, token));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log_store_tombstones (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  deleted_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (account_id, region, project, name));
"""

# Writes to these tables change what an open Ingest or Tail stream may do: they bump the
# store's generation (MetadataStore.generation).
_WATCHED = ("flow_logs", "log_stores", "log_store_tombstones")


# The rules' JSON form is shared with the other metadata backends (server.core.rules_json).
_rules_to_json = rules_to_json
_rules_from_json = rules_from_json


def _resource(row: sqlite3.Row) -> Resource:
    return Resource(
        id=row["id"],
        type=ResourceType(row["type"]),
        region=row["region"],
        network_id=row["network_id"],
        name=row["name"],
        addresses=tuple(json.loads(row["addresses"])),
        rules=_rules_from_json(row["rules"]),
        create_time_ms=row["create_time_ms"],
        account_id=row["account_id"],
    )


def _log_store(row: sqlite3.Row) -> LogStore:
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


def _flow_log(row: sqlite3.Row) -> FlowLog:
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


class SqliteMetadataTx:
    """MetadataTx on one open SQLite transaction (see server.core.ports.MetadataTx)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn
        self.changed = False  # a watched table was written (see _WATCHED)

    def _one(self, sql: str, args: tuple):
        return self.c.execute(sql, args).fetchone()

    # resources
    def get_resource(self, account, resource_id):
        row = self._one("SELECT * FROM resources WHERE account_id=? AND id=?", (account, resource_id))
        return _resource(row) if row else None

    def list_resources(self, account, *, region, type, network_id, after, limit):
        sql = "SELECT * FROM resources WHERE account_id=? AND id>?"
        args: list = [account, after]
        if region:
            sql += " AND region=?"
            args.append(region)
        if type:
            sql += " AND type=?"
            args.append(int(type))
        if network_id:
            sql += " AND network_id=?"
            args.append(network_id)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [_resource(r) for r in self.c.execute(sql, args)]

    def insert_resource(self, r):
        self.c.execute(
            "INSERT INTO resources VALUES (?,?,?,?,?,?,?,?,?)",
            (
                r.account_id,
                r.id,
                int(r.type),
                r.region,
                r.network_id,
                r.name,
                json.dumps(list(r.addresses)),
                _rules_to_json(r.rules),
                r.create_time_ms,
            ),
        )

    def delete_resource(self, account, resource_id):
        self.c.execute("DELETE FROM resources WHERE account_id=? AND id=?", (account, resource_id))

    def count_resources(self, account):
        return self._one("SELECT count(*) FROM resources WHERE account_id=?", (account,))[0]

    # LogStores
    def get_log_store(self, account, key: LogStoreKey):
        row = self._one(
            "SELECT * FROM log_stores WHERE account_id=? AND region=? AND project=? AND name=?",
            (account, key.region, key.project, key.name),
        )
        return _log_store(row) if row else None

    def list_log_stores(self, account, *, region, project, after, limit):
        sql = "SELECT * FROM log_stores WHERE account_id=?"
        args: list = [account]
        if after:
            sql += " AND (region, project, name) > (?, ?, ?)"
            args.extend(after)
        if region:
            sql += " AND region=?"
            args.append(region)
        if project:
            sql += " AND project=?"
            args.append(project)
        sql += " ORDER BY region, project, name LIMIT ?"
        args.append(limit)
        return [_log_store(r) for r in self.c.execute(sql, args)]

    def insert_log_store(self, s):
        self.changed = True
        self.c.execute(
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

    def update_log_store(self, s):
        self.changed = True
        self.c.execute(
            "UPDATE log_stores SET retention_days=?, description=?, update_time_ms=? "
            "WHERE account_id=? AND region=? AND project=? AND name=?",
            (s.retention_days, s.description, s.update_time_ms, s.account_id, s.region, s.project, s.name),
        )

    def delete_log_store(self, account, key):
        self.changed = True
        self.c.execute(
            "DELETE FROM log_stores WHERE account_id=? AND region=? AND project=? AND name=?",
            (account, key.region, key.project, key.name),
        )

    # flow logs
    def get_flow_log(self, account, flow_log_id):
        row = self._one("SELECT * FROM flow_logs WHERE account_id=? AND id=?", (account, flow_log_id))
        return _flow_log(row) if row else None

    def list_flow_logs(self, account, *, region, resource_id, state, after, limit):
        sql = "SELECT * FROM flow_logs WHERE account_id=? AND id>?"
        args: list = [account, after]
        if region:
            sql += " AND region=?"
            args.append(region)
        if resource_id:
            sql += " AND resource_id=?"
            args.append(resource_id)
        if state:
            sql += " AND state=?"
            args.append(int(state))
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [_flow_log(r) for r in self.c.execute(sql, args)]

    def count_flow_logs(self, account, region):
        return self._one("SELECT count(*) FROM flow_logs WHERE account_id=? AND region=?", (account, region))[0]

    def flow_logs_using_resource(self, account, resource_id):
        return [
            r[0]
            for r in self.c.execute(
                "SELECT id FROM flow_logs WHERE account_id=? AND resource_id=? ORDER BY id", (account, resource_id)
            )
        ]

    def flow_logs_delivering_to(self, account, key):
        return [
            r[0]
            for r in self.c.execute(
                "SELECT id FROM flow_logs WHERE account_id=? AND region=? AND project=? AND log_store=? ORDER BY id",
                (account, key.region, key.project, key.name),
            )
        ]

    def flow_log_name_taken(self, account, region, name, exclude_id=""):
        return (
            self._one(
                "SELECT 1 FROM flow_logs WHERE account_id=? AND region=? AND name=? AND id!=?",
                (account, region, name, exclude_id),
            )
            is not None
        )

    def insert_flow_log(self, f):
        self.changed = True
        self.c.execute(
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

    def update_flow_log(self, f):
        self.changed = True
        self.c.execute(
            "UPDATE flow_logs SET name=?, description=?, traffic_type=?, state=?, update_time_ms=? "
            "WHERE account_id=? AND id=?",
            (f.name, f.description, int(f.traffic_type), int(f.state), f.update_time_ms, f.account_id, f.id),
        )

    def delete_flow_log(self, account, flow_log_id):
        self.changed = True
        self.c.execute("DELETE FROM flow_logs WHERE account_id=? AND id=?", (account, flow_log_id))

    def count_log_stores(self, account):
        return self._one("SELECT count(*) FROM log_stores WHERE account_id=?", (account,))[0]

    # LogStores being purged (deleted from the user's view, records not yet gone everywhere)
    def insert_tombstone(self, account, key, deleted_ms):
        self.changed = True
        self.c.execute(
            "INSERT OR IGNORE INTO log_store_tombstones (account_id, region, project, name, deleted_ms) "
            "VALUES (?,?,?,?,?)",
            (account, key.region, key.project, key.name, deleted_ms),
        )

    def tombstone_exists(self, account, key):
        return (
            self._one(
                "SELECT 1 FROM log_store_tombstones WHERE account_id=? AND region=? AND project=? AND name=?",
                (account, key.region, key.project, key.name),
            )
            is not None
        )

    def get_client_token(self, account, token):
        row = self._one(
            "SELECT fingerprint, flow_log_id FROM client_tokens WHERE account_id=? AND token=?", (account, token)
        )
        return (row[0], row[1]) if row else None

    def put_client_token(self, account, token, fingerprint, flow_log_id):
        self.c.execute("INSERT INTO client_tokens VALUES (?,?,?,?)", (account, token, fingerprint, flow_log_id))


class SqliteMetadataStore:
    """MetadataStore on a SQLite file (see the module docstring for durability and isolation)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.RLock()
        # Bumped after every commit that changed a flow log, a LogStore or a tombstone. One
        # process owns the file (the data dir lock), so an in-memory counter sees every change.
        self._generation = 0

    @contextmanager
    def transaction(self) -> Iterator[SqliteMetadataTx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            tx = SqliteMetadataTx(self._conn)
            try:
                yield tx
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
                if tx.changed:
                    self._generation += 1

    def generation(self) -> int:
        """See MetadataStore.generation: a counter read, no query."""
        return self._generation

    def tombstones(self) -> list[Tombstone]:
        with self._lock:
            return [
                Tombstone(
                    r["account_id"],
                    LogStoreKey(r["region"], r["project"], r["name"]),
                    r["deleted_ms"],
                    r["attempts"],
                    r["last_error"],
                )
                for r in self._conn.execute("SELECT * FROM log_store_tombstones ORDER BY deleted_ms")
            ]

    def purge_failed(self, account: str, key: LogStoreKey, error: str) -> None:
        with self.transaction() as tx:
            tx.c.execute(
                "UPDATE log_store_tombstones SET attempts = attempts + 1, last_error = ? "
                "WHERE account_id=? AND region=? AND project=? AND name=?",
                (error[:500], account, key.region, key.project, key.name),
            )

    def remove_tombstone(self, account: str, key: LogStoreKey) -> None:
        with self.transaction() as tx:
            tx.changed = True
            tx.c.execute(
                "DELETE FROM log_store_tombstones WHERE account_id=? AND region=? AND project=? AND name=?",
                (account, key.region, key.project, key.name),
            )

    def regions_in_use(self) -> dict[str, int]:
        """Objects (resources, LogStores, flow logs) per region, over every account."""
        with self._lock:
            out: dict[str, int] = {}
            for table in ("resources", "log_stores", "flow_logs"):
                for region, n in self._conn.execute(f"SELECT region, count(*) FROM {table} GROUP BY region"):
                    out[region] = out.get(region, 0) + n
            return out

    def all_flow_logs(self) -> list[FlowLog]:
        with self._lock:
            return [_flow_log(r) for r in self._conn.execute("SELECT * FROM flow_logs ORDER BY account_id, id")]

    def all_log_stores(self) -> list[LogStore]:
        with self._lock:
            return [_log_store(r) for r in self._conn.execute("SELECT * FROM log_stores")]

    def resource_of(self, account: str, resource_id: str) -> Resource | None:
        with self.transaction() as tx:
            return tx.get_resource(account, resource_id)

    def setting(self, key: str, default: bytes) -> bytes:
        """A server setting kept with the metadata (e.g. the token secret); `default` is stored on first use."""
        with self.transaction() as tx:
            row = tx.c.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
            if row:
                return bytes(row[0])
            tx.c.execute("INSERT INTO settings VALUES (?,?)", (key, default))
            return default

    def close(self) -> None:
        with self._lock:
            self._conn.close()
