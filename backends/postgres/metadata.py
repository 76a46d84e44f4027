"""The metadata store on PostgreSQL, shared by every replica (metadata_backend: postgres).

Durable when a transaction commits (PostgreSQL's WAL). The tables mirror the embedded store's
(backends/embedded/metadata.py), rules in the same JSON form (server.core.rules_json).

Exact quotas and unique names across replicas: per-account advisory locks, not SERIALIZABLE.
Every MetadataTx method is scoped to one account, and every rule that must hold under concurrency
(flow logs per region, LogStores and resources per account, unique names, client tokens,
tombstoned names) is a rule within one account. So the first statement a transaction runs for an
account takes `pg_advisory_xact_lock(<account>)`, held until COMMIT/ROLLBACK: transactions of one
account run one after the other on every replica, and since each statement of a READ COMMITTED
transaction sees everything committed before it started, the core's check-then-insert sees the
previous transaction's insert. Different accounts never wait for each other. SERIALIZABLE was
the alternative: it must retry a transaction that fails with a serialization error, which means
re-running the caller's block, and the port's transaction is a `with` block the store cannot
re-run; without retries users would see spurious errors under load. (A transaction that touched
two accounts in opposite orders could deadlock; PostgreSQL would then abort one. The core never
does that.)

Change counter (generation()): one row, bumped in every committing transaction that changed a flow
log, a LogStore or a tombstone, on whichever replica, and announced with NOTIFY on commit. Each
replica LISTENs on a connection of its own (a background thread) and keeps the newest value in
memory, so generation() is a read of an attribute; the thread also re-reads the row after every
reconnect and every 5 s, so a lost notification delays a change by 5 s at most. A replica's own
commits update its copy at once.

Settings (setting()) are one table for all replicas: the page-token and Tail-cursor secret is
stored by the first replica and read by the others, so a token from one is accepted by another.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg.rows import dict_row

from backends.postgres.config import PostgresConfig
from backends.postgres.db import Database, lock_key
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

log = logging.getLogger(__name__)

CHANNEL = "flowlog_metadata"
POLL_SECONDS = 5.0  # the listener re-reads the counter this often (a lost NOTIFY costs at most this)
WAKE_SECONDS = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
  account_id TEXT NOT NULL, id TEXT NOT NULL, type INTEGER NOT NULL, region TEXT NOT NULL,
  network_id TEXT NOT NULL, name TEXT NOT NULL, addresses TEXT NOT NULL, rules TEXT NOT NULL,
  create_time_ms BIGINT NOT NULL, PRIMARY KEY (account_id, id));
CREATE TABLE IF NOT EXISTS log_stores (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  retention_days INTEGER NOT NULL, description TEXT NOT NULL, create_time_ms BIGINT NOT NULL,
  update_time_ms BIGINT NOT NULL, PRIMARY KEY (account_id, region, project, name));
CREATE TABLE IF NOT EXISTS flow_logs (
  account_id TEXT NOT NULL, id TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL,
  resource_type INTEGER NOT NULL, resource_id TEXT NOT NULL, network_id TEXT NOT NULL,
  traffic_type INTEGER NOT NULL, project TEXT NOT NULL, log_store TEXT NOT NULL,
  description TEXT NOT NULL, state INTEGER NOT NULL, create_time_ms BIGINT NOT NULL,
  update_time_ms BIGINT NOT NULL, PRIMARY KEY (account_id, id));
CREATE UNIQUE INDEX IF NOT EXISTS flow_logs_name ON flow_logs (account_id, region, name);
CREATE INDEX IF NOT EXISTS flow_logs_resource ON flow_logs (account_id, resource_id);
CREATE INDEX IF NOT EXISTS flow_logs_dest ON flow_logs (account_id, region, project, log_store);
CREATE TABLE IF NOT EXISTS client_tokens (
  account_id TEXT NOT NULL, token TEXT NOT NULL, fingerprint TEXT NOT NULL, flow_log_id TEXT NOT NULL,
  PRIMARY KEY (account_id, token));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS log_store_tombstones (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  deleted_ms BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (account_id, region, project, name));
CREATE TABLE IF NOT EXISTS log_store_purge_acks (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  replica_id TEXT NOT NULL, acked_ms BIGINT NOT NULL,
  PRIMARY KEY (account_id, region, project, name, replica_id));
CREATE TABLE IF NOT EXISTS metadata_generation (id INTEGER PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
INSERT INTO metadata_generation VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""

Row = dict[str, Any]


def _resource(row: Row) -> Resource:
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


def _log_store(row: Row) -> LogStore:
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


def _flow_log(row: Row) -> FlowLog:
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


class PostgresMetadataTx:
    """MetadataTx on one open PostgreSQL transaction (see server.core.ports.MetadataTx and the
    module docstring: the first statement for an account takes that account's lock)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.c = conn
        self.changed = False  # a flow log, LogStore or tombstone was written: bump the generation
        self._locked: set[str] = set()

    def _lock(self, account: str) -> None:
        if account not in self._locked:
            self.c.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key("account:" + account),))
            self._locked.add(account)

    def _rows(self, account: str, sql: str, args: tuple | list) -> list[Row]:
        self._lock(account)
        with self.c.cursor(row_factory=dict_row) as cur:
            return cur.execute(sql, args).fetchall()

    def _one(self, account: str, sql: str, args: tuple | list) -> Row | None:
        rows = self._rows(account, sql, args)
        return rows[0] if rows else None

    def _exec(self, account: str, sql: str, args: tuple | list) -> None:
        self._lock(account)
        self.c.execute(sql, args)

    def _count(self, account: str, sql: str, args: tuple) -> int:
        row = self._one(account, sql, args)
        assert row is not None
        return int(row["n"])

    # resources
    def get_resource(self, account, resource_id):
        row = self._one(account, "SELECT * FROM resources WHERE account_id=%s AND id=%s", (account, resource_id))
        return _resource(row) if row else None

    def list_resources(self, account, *, region, type, network_id, after, limit):
        sql = 'SELECT * FROM resources WHERE account_id=%s AND id COLLATE "C" > %s'
        args: list = [account, after]
        if region:
            sql += " AND region=%s"
            args.append(region)
        if type:
            sql += " AND type=%s"
            args.append(int(type))
        if network_id:
            sql += " AND network_id=%s"
            args.append(network_id)
        sql += ' ORDER BY id COLLATE "C" LIMIT %s'
        args.append(limit)
        return [_resource(r) for r in self._rows(account, sql, args)]

    def insert_resource(self, r):
        self._exec(
            r.account_id,
            "INSERT INTO resources VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
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

    def delete_resource(self, account, resource_id):
        self._exec(account, "DELETE FROM resources WHERE account_id=%s AND id=%s", (account, resource_id))

    def count_resources(self, account):
        return self._count(account, "SELECT count(*) AS n FROM resources WHERE account_id=%s", (account,))

    # LogStores
    def get_log_store(self, account, key: LogStoreKey):
        row = self._one(
            account,
            "SELECT * FROM log_stores WHERE account_id=%s AND region=%s AND project=%s AND name=%s",
            (account, key.region, key.project, key.name),
        )
        return _log_store(row) if row else None

    def list_log_stores(self, account, *, region, project, after, limit):
        sql = "SELECT * FROM log_stores WHERE account_id=%s"
        args: list = [account]
        if after:
            sql += ' AND (region COLLATE "C", project COLLATE "C", name COLLATE "C") > (%s, %s, %s)'
            args.extend(after)
        if region:
            sql += " AND region=%s"
            args.append(region)
        if project:
            sql += " AND project=%s"
            args.append(project)
        sql += ' ORDER BY region COLLATE "C", project COLLATE "C", name COLLATE "C" LIMIT %s'
        args.append(limit)
        return [_log_store(r) for r in self._rows(account, sql, args)]

    def insert_log_store(self, s):
        self.changed = True
        self._exec(
            s.account_id,
            "INSERT INTO log_stores VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
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
        self._exec(
            s.account_id,
            "UPDATE log_stores SET retention_days=%s, description=%s, update_time_ms=%s "
            "WHERE account_id=%s AND region=%s AND project=%s AND name=%s",
            (s.retention_days, s.description, s.update_time_ms, s.account_id, s.region, s.project, s.name),
        )

    def delete_log_store(self, account, key):
        self.changed = True
        self._exec(
            account,
            "DELETE FROM log_stores WHERE account_id=%s AND region=%s AND project=%s AND name=%s",
            (account, key.region, key.project, key.name),
        )

    def count_log_stores(self, account):
        return self._count(account, "SELECT count(*) AS n FROM log_stores WHERE account_id=%s", (account,))

    # LogStores being purged
    def insert_tombstone(self, account, key, deleted_ms):
        self.changed = True
        self._exec(
            account,
            "INSERT INTO log_store_tombstones (account_id, region, project, name, deleted_ms) "
            "VALUES (%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
            (account, key.region, key.project, key.name, deleted_ms),
        )

    def tombstone_exists(self, account, key):
        return (
            self._one(
                account,
                "SELECT 1 AS x FROM log_store_tombstones WHERE account_id=%s AND region=%s AND project=%s AND name=%s",
                (account, key.region, key.project, key.name),
            )
            is not None
        )

    # flow logs
    def get_flow_log(self, account, flow_log_id):
        row = self._one(account, "SELECT * FROM flow_logs WHERE account_id=%s AND id=%s", (account, flow_log_id))
        return _flow_log(row) if row else None

    def list_flow_logs(self, account, *, region, resource_id, state, after, limit):
        sql = 'SELECT * FROM flow_logs WHERE account_id=%s AND id COLLATE "C" > %s'
        args: list = [account, after]
        if region:
            sql += " AND region=%s"
            args.append(region)
        if resource_id:
            sql += " AND resource_id=%s"
            args.append(resource_id)
        if state:
            sql += " AND state=%s"
            args.append(int(state))
        sql += ' ORDER BY id COLLATE "C" LIMIT %s'
        args.append(limit)
        return [_flow_log(r) for r in self._rows(account, sql, args)]

    def count_flow_logs(self, account, region):
        return self._count(
            account, "SELECT count(*) AS n FROM flow_logs WHERE account_id=%s AND region=%s", (account, region)
        )

    def flow_logs_using_resource(self, account, resource_id):
        return [
            r["id"]
            for r in self._rows(
                account,
                'SELECT id FROM flow_logs WHERE account_id=%s AND resource_id=%s ORDER BY id COLLATE "C"',
                (account, resource_id),
            )
        ]

    def flow_logs_delivering_to(self, account, key):
        return [
            r["id"]
            for r in self._rows(
                account,
                "SELECT id FROM flow_logs WHERE account_id=%s AND region=%s AND project=%s AND log_store=%s "
                'ORDER BY id COLLATE "C"',
                (account, key.region, key.project, key.name),
            )
        ]

    def flow_log_name_taken(self, account, region, name, exclude_id=""):
        return (
            self._one(
                account,
                "SELECT 1 AS x FROM flow_logs WHERE account_id=%s AND region=%s AND name=%s AND id<>%s",
                (account, region, name, exclude_id),
            )
            is not None
        )

    def insert_flow_log(self, f):
        self.changed = True
        self._exec(
            f.account_id,
            "INSERT INTO flow_logs VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
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
        self._exec(
            f.account_id,
            "UPDATE flow_logs SET name=%s, description=%s, traffic_type=%s, state=%s, update_time_ms=%s "
            "WHERE account_id=%s AND id=%s",
            (f.name, f.description, int(f.traffic_type), int(f.state), f.update_time_ms, f.account_id, f.id),
        )

    def delete_flow_log(self, account, flow_log_id):
        self.changed = True
        self._exec(account, "DELETE FROM flow_logs WHERE account_id=%s AND id=%s", (account, flow_log_id))

    # idempotency of CreateFlowLog
    def get_client_token(self, account, token):
        row = self._one(
            account,
            "SELECT fingerprint, flow_log_id FROM client_tokens WHERE account_id=%s AND token=%s",
            (account, token),
        )
        return (row["fingerprint"], row["flow_log_id"]) if row else None

    def put_client_token(self, account, token, fingerprint, flow_log_id):
        self._exec(
            account, "INSERT INTO client_tokens VALUES (%s,%s,%s,%s)", (account, token, fingerprint, flow_log_id)
        )


class PostgresMetadataStore:
    """MetadataStore on a PostgreSQL database shared by every replica (see the module docstring)."""

    def __init__(self, cfg: PostgresConfig) -> None:
        self.db = Database.open(cfg, name="flowlog-metadata")
        with self.db.connection() as conn:
            # One replica creates the tables; the others wait for it (CREATE ... IF NOT EXISTS
            # run concurrently can fail on the catalog's unique index).
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key("schema:metadata"),))
                conn.execute(SCHEMA)
            row = conn.execute("SELECT value FROM metadata_generation WHERE id = 1").fetchone()
        self._generation = int(row[0]) if row else 0
        self._gen_lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="flowlog-pg-metadata-listen", daemon=True)
        self._listener.start()

    # -- the change counter -------------------------------------------------------------------

    def _seen(self, value: int) -> None:
        with self._gen_lock:
            if value > self._generation:
                self._generation = value

    def _listen(self) -> None:
        """LISTEN for other replicas' commits; re-read the counter on (re)connect and every POLL_SECONDS."""
        backoff = 0.5
        while not self._closed.is_set():
            conn = None
            try:
                conn = self.db.dedicated()
                conn.execute(f"LISTEN {CHANNEL}")
                backoff = 0.5
                next_read = 0.0
                while not self._closed.is_set():
                    if time.monotonic() >= next_read:
                        row = conn.execute("SELECT value FROM metadata_generation WHERE id = 1").fetchone()
                        if row:
                            self._seen(int(row[0]))
                        next_read = time.monotonic() + POLL_SECONDS
                    # wakes at once on a NOTIFY; at least every WAKE_SECONDS to notice close()
                    for note in conn.notifies(timeout=WAKE_SECONDS, stop_after=1):
                        if note.payload.isdigit():
                            self._seen(int(note.payload))
            except Exception as e:  # noqa: BLE001 - PostgreSQL down or restarting: reconnect with back-off
                if not self._closed.is_set():
                    log.warning("metadata change listener lost its connection; reconnecting", extra={"error": str(e)})
            finally:
                if conn is not None:
                    conn.close()
            self._closed.wait(backoff)
            backoff = min(backoff * 2, 10.0)

    def generation(self) -> int:
        """See MetadataStore.generation: an attribute read (the listener thread keeps it current)."""
        return self._generation

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[PostgresMetadataTx]:
        bumped = None
        with self.db.transaction() as conn:
            tx = PostgresMetadataTx(conn)
            yield tx
            if tx.changed:
                row = conn.execute(
                    "UPDATE metadata_generation SET value = value + 1 WHERE id = 1 RETURNING value"
                ).fetchone()
                bumped = int(row[0]) if row else None
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(bumped)))
        if bumped is not None:  # committed
            self._seen(bumped)

    def _query(self, sql: str, args: tuple = ()) -> list[Row]:
        with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(sql, args).fetchall()

    def tombstones(self) -> list[Tombstone]:
        return [
            Tombstone(
                r["account_id"],
                LogStoreKey(r["region"], r["project"], r["name"]),
                r["deleted_ms"],
                r["attempts"],
                r["last_error"],
            )
            for r in self._query("SELECT * FROM log_store_tombstones ORDER BY deleted_ms")
        ]

    def purge_failed(self, account: str, key: LogStoreKey, error: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE log_store_tombstones SET attempts = attempts + 1, last_error = %s "
                "WHERE account_id=%s AND region=%s AND project=%s AND name=%s",
                (error[:500], account, key.region, key.project, key.name),
            )

    def remove_tombstone(self, account: str, key: LogStoreKey) -> None:
        with self.transaction() as tx:
            tx.changed = True
            for table in ("log_store_tombstones", "log_store_purge_acks"):
                tx._exec(
                    account,
                    f"DELETE FROM {table} WHERE account_id=%s AND region=%s AND project=%s AND name=%s",
                    (account, key.region, key.project, key.name),
                )

    def purge_ack(self, account: str, key: LogStoreKey, replica_id: str) -> None:
        with self.db.transaction() as conn:
            # Only while the tombstone is there: an ack written after another replica finished
            # the purge would outlive it and count for the next deletion of the same name.
            conn.execute(
                "INSERT INTO log_store_purge_acks "
                "SELECT %s,%s,%s,%s,%s,(extract(epoch FROM now()) * 1000)::bigint WHERE EXISTS ("
                "SELECT 1 FROM log_store_tombstones WHERE account_id=%s AND region=%s AND project=%s AND name=%s) "
                "ON CONFLICT DO NOTHING",
                (account, key.region, key.project, key.name, replica_id, account, key.region, key.project, key.name),
            )

    def purge_acks(self, account: str, key: LogStoreKey) -> set[str]:
        rows = self._query(
            "SELECT replica_id FROM log_store_purge_acks WHERE account_id=%s AND region=%s AND project=%s AND name=%s",
            (account, key.region, key.project, key.name),
        )
        return {r["replica_id"] for r in rows}

    def regions_in_use(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for table in ("resources", "log_stores", "flow_logs"):
            for r in self._query(f"SELECT region, count(*) AS n FROM {table} GROUP BY region"):
                out[r["region"]] = out.get(r["region"], 0) + int(r["n"])
        return out

    def all_flow_logs(self) -> list[FlowLog]:
        return [
            _flow_log(r) for r in self._query('SELECT * FROM flow_logs ORDER BY account_id COLLATE "C", id COLLATE "C"')
        ]

    def all_log_stores(self) -> list[LogStore]:
        return [_log_store(r) for r in self._query("SELECT * FROM log_stores")]

    def resource_of(self, account: str, resource_id: str) -> Resource | None:
        rows = self._query("SELECT * FROM resources WHERE account_id=%s AND id=%s", (account, resource_id))
        return _resource(rows[0]) if rows else None

    def setting(self, key: str, default: bytes) -> bytes:
        """Shared by every replica: the first replica's value wins (INSERT ... ON CONFLICT DO NOTHING
        waits for a concurrent insert of the same key to commit, then the SELECT sees it)."""
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO settings VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, default))
            row = conn.execute("SELECT value FROM settings WHERE key=%s", (key,)).fetchone()
        assert row is not None
        return bytes(row[0])

    # -- the SharedMetadata ability (server.core.ports): what replicas coordinate through ------

    def put_setting(self, key: str, value: bytes) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO settings VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key, value),
            )

    def exclusive(self, name: str, wait: bool = True):
        """A cluster-wide lock for a block (backends.postgres.db.Database.exclusive)."""
        return self.db.exclusive(name, wait)

    def close(self) -> None:
        self._closed.set()
        self._listener.join(timeout=WAKE_SECONDS + 2)
        self.db.close()
