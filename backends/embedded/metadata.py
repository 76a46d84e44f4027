"""The embedded metadata store: SQLite under --data-dir.

Durable when a transaction commits (WAL, synchronous=FULL). All transactions go through one
connection behind a lock and start with BEGIN IMMEDIATE, so they are serialised: the core's
check-then-insert (quota, unique names, client tokens) is exact under any concurrency.

The tables and statements are shared with the other SQL metadata backend (backends.sqlmeta); this
module holds SQLite's dialect, its connection and transactions, and the change counter.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from backends.sqlmeta.dialect import Dialect, schema
from backends.sqlmeta.metadata import Args, Row, SqlMetadataStoreBase, SqlMetadataTx
from server.core.model import Resource

SQLITE = Dialect(
    placeholder="?",
    bigint="INTEGER",
    blob="BLOB",
    collate="",  # SQLite compares text by its bytes (BINARY): code-point order already
    insert_ignore="INSERT OR IGNORE INTO",
    on_conflict_ignore="",
)

SCHEMA = schema(SQLITE)

# Writes to these tables change what an open Ingest or Tail stream may do: they bump the
# store's generation (MetadataStore.generation).
_WATCHED = ("flow_logs", "log_stores", "log_store_tombstones")


class SqliteMetadataTx(SqlMetadataTx):
    """MetadataTx on one open SQLite transaction (see server.core.ports.MetadataTx)."""

    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()  # `changed`: a watched table was written (see _WATCHED)
        self.c = conn

    def fetch(self, account: str, sql: str, args: Args) -> list[Row]:
        return self.c.execute(sql, args).fetchall()

    def execute(self, account: str, sql: str, args: Args) -> None:
        self.c.execute(sql, args)


class SqliteMetadataStore(SqlMetadataStoreBase):
    """MetadataStore on a SQLite file (see the module docstring for durability and isolation)."""

    dialect = SQLITE

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

    def _query(self, sql: str, args: Args = ()) -> list[Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _write(self, sql: str, args: Args) -> None:
        with self.transaction() as tx:
            tx.c.execute(sql, args)

    def regions_in_use(self) -> dict[str, int]:
        """Objects (resources, LogStores, flow logs) per region, over every account (one read:
        no transaction commits between the three counts)."""
        with self._lock:
            return super().regions_in_use()

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
