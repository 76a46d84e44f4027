"""The metadata store on PostgreSQL, shared by every replica (metadata_backend: postgres).

Durable when a transaction commits (PostgreSQL's WAL). The tables and statements are the embedded
store's, written once in backends.sqlmeta and spoken here in PostgreSQL's dialect; this module holds
what is PostgreSQL's own: the per-account locks, the change counter, settings, purge acks.

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

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg.rows import dict_row

from backends.postgres.config import PostgresConfig
from backends.postgres.db import Database, lock_key
from backends.sqlmeta.dialect import Dialect, schema
from backends.sqlmeta.metadata import Args, Row, SqlMetadataStoreBase, SqlMetadataTx, resource_of_row
from server.core.model import LogStoreKey, Resource

log = logging.getLogger(__name__)

CHANNEL = "flowlog_metadata"
POLL_SECONDS = 5.0  # the listener re-reads the counter this often (a lost NOTIFY costs at most this)
WAKE_SECONDS = 0.5

POSTGRES = Dialect(
    placeholder="%s",
    bigint="BIGINT",
    blob="BYTEA",
    collate=' COLLATE "C"',  # the API pages in code-point order, whatever the database's collation
    insert_ignore="INSERT INTO",
    on_conflict_ignore=" ON CONFLICT DO NOTHING",
)

# The shared tables (backends.sqlmeta) and PostgreSQL's own: purge acks per replica, the change counter.
SCHEMA = (
    schema(POSTGRES)
    + """CREATE TABLE IF NOT EXISTS log_store_purge_acks (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  replica_id TEXT NOT NULL, acked_ms BIGINT NOT NULL,
  PRIMARY KEY (account_id, region, project, name, replica_id));
CREATE TABLE IF NOT EXISTS metadata_generation (id INTEGER PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
INSERT INTO metadata_generation VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
"""
)


class PostgresMetadataTx(SqlMetadataTx):
    """MetadataTx on one open PostgreSQL transaction (see server.core.ports.MetadataTx and the
    module docstring: the first statement for an account takes that account's lock)."""

    dialect = POSTGRES

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()  # `changed`: a flow log, LogStore or tombstone was written: bump the generation
        self.c = conn
        self._locked: set[str] = set()

    def _lock(self, account: str) -> None:
        if account not in self._locked:
            self.c.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key("account:" + account),))
            self._locked.add(account)

    def fetch(self, account: str, sql: str, args: Args) -> list[Row]:
        self._lock(account)
        with self.c.cursor(row_factory=dict_row) as cur:
            return list(cur.execute(sql, args).fetchall())

    def execute(self, account: str, sql: str, args: Args) -> None:
        self._lock(account)
        self.c.execute(sql, args)


class PostgresMetadataStore(SqlMetadataStoreBase):
    """MetadataStore on a PostgreSQL database shared by every replica (see the module docstring)."""

    dialect = POSTGRES
    tombstone_tables = ("log_store_tombstones", "log_store_purge_acks")

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

    def _query(self, sql: str, args: Args = ()) -> list[Row]:
        with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return list(cur.execute(sql, args).fetchall())

    def _write(self, sql: str, args: Args) -> None:
        with self.db.transaction() as conn:
            conn.execute(sql, args)

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

    def resource_of(self, account: str, resource_id: str) -> Resource | None:
        rows = self._query("SELECT * FROM resources WHERE account_id=%s AND id=%s", (account, resource_id))
        return resource_of_row(rows[0]) if rows else None

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
