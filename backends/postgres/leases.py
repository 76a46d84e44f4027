"""The GeneratorLeases port on PostgreSQL: which replica generates which flow log.

Two tables of its own, created at open (CREATE ... IF NOT EXISTS under an advisory lock, so
replicas starting together do not race on the catalogue):
- `generator_replicas(replica_id, expires_ms)`: one heartbeat row per replica whose generator
  runs; a replica is live while its row has not expired. The fair share divides by their count.
  (Not the replica directory of Tail, backends/postgres/replicas.py: a replica with
  `generator.enabled: false` is in that directory but must not count here, or the others would
  leave its share of flow logs ungenerated.)
- `generator_leases(flow_log_id, owner, epoch, next_window_ms, expires_ms)`: at most one row per
  flow log, so at most one owner. A claim is `INSERT ... ON CONFLICT DO UPDATE ... WHERE the
  lease expired`: under READ COMMITTED PostgreSQL locks the row and re-checks the condition on
  its latest version, so of concurrent claimers exactly one gets it, whichever transaction order.
  Every claim draws a new epoch from the sequence `generator_lease_epochs` (the fencing token);
  a commit updates `next_window_ms` only where owner and epoch still match, so a replica that
  lost its lease (paused past the TTL, or partitioned away) can never move another owner's
  position. Ids are claimed in sorted order, so two claimers lock rows in the same order.

Times come from the caller (`now_ms`, the replica's clock, the one its windows are cut with):
the store compares them, it does not read a clock of its own. Each call is one transaction,
committed when it returns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Callable

from server.core.ports import Lease, LeaseView

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generator_replicas (
    replica_id text PRIMARY KEY,
    expires_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS generator_leases (
    flow_log_id text PRIMARY KEY,
    owner text NOT NULL,
    epoch bigint NOT NULL,
    next_window_ms bigint NOT NULL DEFAULT 0,
    expires_ms bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS generator_leases_owner ON generator_leases (owner);
CREATE SEQUENCE IF NOT EXISTS generator_lease_epochs;
"""
_SCHEMA_LOCK = 0x666C_6C65_6173_6531  # pg_advisory_xact_lock key: "flleaseq"
_COLUMNS = "flow_log_id, owner, epoch, next_window_ms, expires_ms"
# Heartbeat rows of replicas dead this many TTLs are removed (they count as dead long before).
_FORGET_REPLICAS_AFTER_TTLS = 100


def _lease(row: Sequence[Any]) -> Lease:
    return Lease(str(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]))


class PostgresGeneratorLeases:
    """GeneratorLeases (server.core.ports) in the metadata store's PostgreSQL database.

    `connection` gives a psycopg connection for one unit of work (a pool's `connection()`,
    which commits on normal exit and rolls back on error)."""

    def __init__(self, connection: Callable[[], AbstractContextManager[Any]], pool: Any = None) -> None:
        self._connection = connection
        self._pool = pool  # closed by close() when the store made it (open())
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_SCHEMA)

    @classmethod
    def open(cls, dsn: str, max_size: int = 2) -> PostgresGeneratorLeases:
        """A store with a small pool of its own on `dsn` (tests, tools)."""
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(dsn, min_size=1, max_size=max_size, open=True, kwargs={"autocommit": True})
        try:
            return cls(pool.connection, pool)
        except Exception:
            pool.close()
            raise

    def sync(self, replica_id: str, active: Sequence[str], now_ms: int, ttl_ms: int) -> LeaseView:
        expires = now_ms + ttl_ms
        active = sorted(set(active))
        with self._connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO generator_replicas (replica_id, expires_ms) VALUES (%s, %s) "
                "ON CONFLICT (replica_id) DO UPDATE SET expires_ms = EXCLUDED.expires_ms",
                (replica_id, expires),
            )
            conn.execute(
                "DELETE FROM generator_replicas WHERE expires_ms < %s",
                (now_ms - _FORGET_REPLICAS_AFTER_TTLS * ttl_ms,),
            )
            row = conn.execute("SELECT count(*) FROM generator_replicas WHERE expires_ms > %s", (now_ms,)).fetchone()
            live = int(row[0]) if row else 1
            # Paused or deleted flow logs: forget their leases (a resumed one starts afresh, with
            # no backfill), ours at once, others' once expired (their owner died or released).
            conn.execute(
                "DELETE FROM generator_leases WHERE NOT (flow_log_id = ANY(%s)) AND (owner = %s OR expires_ms <= %s)",
                (active, replica_id, now_ms),
            )
            mine = conn.execute(
                f"UPDATE generator_leases SET expires_ms = %s WHERE owner = %s RETURNING {_COLUMNS}",
                (expires, replica_id),
            ).fetchall()
            held = conn.execute(
                "SELECT flow_log_id FROM generator_leases WHERE flow_log_id = ANY(%s) AND expires_ms > %s",
                (active, now_ms),
            ).fetchall()
        owned = {str(r[0]) for r in held}
        return LeaseView(
            tuple(sorted((_lease(r) for r in mine), key=lambda x: x.flow_log_id)),
            tuple(f for f in active if f not in owned),
            max(1, live),
        )

    def claim(self, replica_id: str, flow_log_ids: Sequence[str], now_ms: int, ttl_ms: int) -> list[Lease]:
        ids = sorted(set(flow_log_ids))
        if not ids:
            return []
        with self._connection() as conn, conn.transaction():
            rows = conn.execute(
                "INSERT INTO generator_leases AS l (flow_log_id, owner, epoch, next_window_ms, expires_ms) "
                "SELECT id, %s, nextval('generator_lease_epochs'), 0, %s FROM unnest(%s::text[]) AS id ORDER BY id "
                "ON CONFLICT (flow_log_id) DO UPDATE "
                "SET owner = EXCLUDED.owner, epoch = EXCLUDED.epoch, expires_ms = EXCLUDED.expires_ms "
                f"WHERE l.expires_ms <= %s RETURNING {_COLUMNS}",
                (replica_id, now_ms + ttl_ms, ids, now_ms),
            ).fetchall()
        return sorted((_lease(r) for r in rows), key=lambda x: x.flow_log_id)

    def commit(self, replica_id: str, windows: Sequence[tuple[str, int, int]], now_ms: int, ttl_ms: int) -> set[str]:
        if not windows:
            return set()
        ids = [w[0] for w in windows]
        epochs = [int(w[1]) for w in windows]
        nexts = [int(w[2]) for w in windows]
        with self._connection() as conn, conn.transaction():
            rows = conn.execute(
                "UPDATE generator_leases AS l SET next_window_ms = w.next_ms, expires_ms = %s "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS w(id, epoch, next_ms) "
                "WHERE l.flow_log_id = w.id AND l.owner = %s AND l.epoch = w.epoch "
                "AND l.next_window_ms < w.next_ms RETURNING l.flow_log_id",
                (now_ms + ttl_ms, ids, epochs, nexts, replica_id),
            ).fetchall()
        return {str(r[0]) for r in rows}

    def release(self, replica_id: str, flow_log_ids: Sequence[str]) -> None:
        ids = sorted(set(flow_log_ids))
        if not ids:
            return
        with self._connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE generator_leases SET owner = '', expires_ms = 0 WHERE owner = %s AND flow_log_id = ANY(%s)",
                (replica_id, ids),
            )

    def leave(self, replica_id: str) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute("UPDATE generator_leases SET owner = '', expires_ms = 0 WHERE owner = %s", (replica_id,))
            conn.execute("DELETE FROM generator_replicas WHERE replica_id = %s", (replica_id,))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
