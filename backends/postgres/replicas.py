"""The replica directory (server.core.ports.ReplicaDirectory) on PostgreSQL.

One table, `flowlog_replicas` (created at open if missing): a row per replica (id = its spool's
id), the address its ReplicaService is reached at, and the time of its last heartbeat. Times are
the database server's (`now()`): liveness is judged by one clock, whatever the replicas' clocks
say. A heartbeat is one autocommit UPSERT, durable when it returns.

One connection of its own, used by the heartbeat thread only (server.replica_loop), reopened
after a failure at the next call.
"""

from __future__ import annotations

import threading
from typing import Any

from server.core.ports import ReplicaInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flowlog_replicas (
    replica_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
)
"""


class PostgresReplicaDirectory:
    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        self._dsn = dsn
        self._timeout = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        import psycopg

        for attempt in range(3):
            try:
                with self._lock:
                    self._connection().execute(_SCHEMA)
                break
            except psycopg.errors.UniqueViolation:  # another replica created it at the same moment
                self.close()
                if attempt == 2:
                    raise

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout)
        return self._conn

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            conn = self._connection()
            try:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except Exception:
                conn.close()  # reopened at the next call
                raise

    def heartbeat(self, replica_id: str, address: str, started_ms: int) -> None:
        self._execute(
            "INSERT INTO flowlog_replicas (replica_id, address, started_ms, heartbeat_at) "
            "VALUES (%s, %s, %s, now()) ON CONFLICT (replica_id) DO UPDATE "
            "SET address = EXCLUDED.address, started_ms = EXCLUDED.started_ms, heartbeat_at = now()",
            (replica_id, address, started_ms),
        )

    def list(self, forget_ms: int) -> list[ReplicaInfo]:
        rows = self._execute(
            "SELECT replica_id, address, "
            "(extract(epoch FROM (now() - heartbeat_at)) * 1000)::bigint, started_ms "
            "FROM flowlog_replicas WHERE heartbeat_at >= now() - make_interval(secs => %s) "
            "ORDER BY replica_id",
            (forget_ms / 1000.0,),
        )
        return [ReplicaInfo(r[0], r[1], max(0, int(r[2])), int(r[3])) for r in rows]

    def remove(self, replica_id: str) -> None:
        self._execute("DELETE FROM flowlog_replicas WHERE replica_id = %s", (replica_id,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
