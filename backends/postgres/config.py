"""Typed configuration of the PostgreSQL metadata backend: the `postgres:` section of the server's
config (server.config nests this class; FLOWLOG_POSTGRES_<KEY> in the environment, so the DSN is
FLOWLOG_POSTGRES_DSN). Imports nothing heavy: psycopg is loaded only when the backend is chosen."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PostgresConfig:
    """dsn: a libpq connection string (`host=db1 port=5432 dbname=flowlog user=flowlog`) or URL
        (`postgresql://flowlog:secret@db1:5432/flowlog`); every replica names the same database.
    pool_size: connections each replica keeps at most (plus one for change notifications and
        one per held cluster lock); PostgreSQL's max_connections must cover replicas x this.
    connect_timeout_seconds: how long start-up and each request wait for a connection before the
        store is reported unreachable (start-up: refused with the host and port; a request:
        UNAVAILABLE, which clients retry).
    """

    dsn: str = field(default="", repr=False)  # may hold a password
    pool_size: int = 10
    connect_timeout_seconds: float = 10.0

    def problems(self) -> list[str]:
        out = []
        if not self.dsn.strip():
            out.append(
                "dsn is empty: set postgres.dsn (FLOWLOG_POSTGRES_DSN) to a libpq connection string or URL, "
                "e.g. postgresql://flowlog@db1:5432/flowlog"
            )
        if self.pool_size < 2:
            out.append("pool_size must be at least 2")
        if self.connect_timeout_seconds <= 0:
            out.append("connect_timeout_seconds must be more than 0")
        return out
