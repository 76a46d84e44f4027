"""PostgreSQL connections for flowlog's shared stores (metadata here; replicas.py and leases.py
build on it too): a connection pool, transactions, cluster-wide locks, and errors that say what to
fix.

- `Database.open(config)` checks the server is reachable first, with a message naming the
  setting, host and port when it is not (a replica must not start on a store it cannot reach),
  then opens a psycopg_pool.ConnectionPool. Pooled connections are autocommit; a transaction is
  `with db.transaction() as conn:` (BEGIN ... COMMIT, ROLLBACK on error). Each connection handed
  out is checked first (a PostgreSQL restart costs one failed check, not a failed request).
- A request that cannot get a working connection within `connect_timeout_seconds` raises
  `server.core.errors.Unavailable`: the API answers UNAVAILABLE and clients retry.
- `exclusive(name)` is a cluster-wide lock held for a block: a session-level advisory lock on a
  connection of its own, so PostgreSQL releases it by itself if the replica holding it dies.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from backends.postgres.config import PostgresConfig
from server.core.errors import Unavailable

log = logging.getLogger(__name__)


class DatabaseUnreachable(RuntimeError):
    """PostgreSQL cannot be reached at start-up; the message names postgres.dsn, the host and the port."""


def where(dsn: str) -> str:
    """`host:port/dbname` of a DSN, without its password (for messages)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(a DSN libpq cannot parse)"
    host = str(parts.get("host") or parts.get("hostaddr") or "localhost (Unix socket)")
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or parts.get('user') or ''}"


def lock_key(name: str) -> str:
    """The text an advisory lock is keyed by (hashed by PostgreSQL's hashtextextended)."""
    return f"flowlog:{name}"


class Database:
    """A pool of connections to one PostgreSQL database (see the module docstring)."""

    def __init__(self, cfg: PostgresConfig, pool: ConnectionPool) -> None:
        self.cfg = cfg
        self.pool = pool
        self.where = where(cfg.dsn)

    @classmethod
    def open(cls, cfg: PostgresConfig, name: str = "flowlog") -> "Database":
        problems = cfg.problems()
        if problems:
            raise DatabaseUnreachable("postgres: " + "; postgres: ".join(problems))
        try:
            psycopg.connect(cfg.dsn, connect_timeout=max(1, int(cfg.connect_timeout_seconds))).close()
        except psycopg.ProgrammingError as e:
            raise DatabaseUnreachable(f"postgres.dsn is not a valid libpq connection string or URL: {e}") from None
        except psycopg.OperationalError as e:
            detail = " ".join(str(e).split())
            raise DatabaseUnreachable(
                f"postgres.dsn: cannot connect to PostgreSQL at {where(cfg.dsn)}: {detail}. Start PostgreSQL "
                "there (or make it reachable from this host), or fix postgres.dsn (FLOWLOG_POSTGRES_DSN)"
            ) from None
        pool = ConnectionPool(
            cfg.dsn,
            min_size=1,
            max_size=cfg.pool_size,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            timeout=cfg.connect_timeout_seconds,
            name=name,
            open=False,
        )
        pool.open(wait=True, timeout=cfg.connect_timeout_seconds)
        return cls(cfg, pool)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection; Unavailable when none works within the timeout."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise Unavailable(
                f"the metadata store (PostgreSQL at {self.where}) is unreachable; retry shortly"
            ) from None
        except psycopg.OperationalError as e:
            raise Unavailable(
                f"the metadata store (PostgreSQL at {self.where}) failed: {' '.join(str(e).split())[:200]}"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """BEGIN (READ COMMITTED) ... COMMIT on a pooled connection; ROLLBACK when the block raises."""
        with self.connection() as conn:
            with conn.transaction():
                yield conn

    def dedicated(self) -> psycopg.Connection[Any]:
        """A connection outside the pool (LISTEN, held locks): the caller closes it."""
        try:
            return psycopg.connect(
                self.cfg.dsn, autocommit=True, connect_timeout=max(1, int(self.cfg.connect_timeout_seconds))
            )
        except psycopg.OperationalError as e:
            raise Unavailable(
                f"the metadata store (PostgreSQL at {self.where}) is unreachable: {' '.join(str(e).split())[:200]}"
            ) from None

    @contextmanager
    def exclusive(self, name: str, wait: bool = True) -> Iterator[bool]:
        """Hold the cluster-wide lock `name` for the block. wait=False: yields False at once when
        another replica holds it (the block should then skip its work). The lock is a session
        advisory lock on a connection of its own: released at the end of the block, or by
        PostgreSQL when the holder dies."""
        conn = self.dedicated()
        try:
            if wait:
                conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_key(name),))
                got = True
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key(name),)).fetchone()
                got = bool(row and row[0])
            yield got
        finally:
            conn.close()  # ends the session: its advisory locks go with it

    def close(self) -> None:
        self.pool.close()
