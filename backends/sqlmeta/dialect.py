"""What differs between the SQL dialects of the metadata backends, and the tables they share.

The shared statements are written with `?` placeholders and SQLite's spelling; a Dialect says how
its database spells the few things that differ (placeholders, a 64-bit integer, a byte string,
text ordered by code point, an insert that skips an existing key).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    placeholder: str  # how a statement's parameters are written: "?" (sqlite3) or "%s" (psycopg)
    bigint: str  # a column of milliseconds since the epoch
    blob: str  # a column of bytes
    collate: str  # appended to a text column compared or ordered: code-point order, as the API pages by
    insert_ignore: str  # the start of an INSERT that skips a row whose key exists ...
    on_conflict_ignore: str  # ... and its end

    def sql(self, text: str) -> str:
        """`text` (written with `?` placeholders) in this dialect's placeholders."""
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def ordered(self, column: str) -> str:
        """`column` as compared and ordered by the API's paging (code-point order)."""
        return column + self.collate


def schema(d: Dialect) -> str:
    """The tables every SQL metadata backend has (a backend may add its own after them)."""
    return f"""
CREATE TABLE IF NOT EXISTS resources (
  account_id TEXT NOT NULL, id TEXT NOT NULL, type INTEGER NOT NULL, region TEXT NOT NULL,
  network_id TEXT NOT NULL, name TEXT NOT NULL, addresses TEXT NOT NULL, rules TEXT NOT NULL,
  create_time_ms {d.bigint} NOT NULL, PRIMARY KEY (account_id, id));
CREATE TABLE IF NOT EXISTS log_stores (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  retention_days INTEGER NOT NULL, description TEXT NOT NULL, create_time_ms {d.bigint} NOT NULL,
  update_time_ms {d.bigint} NOT NULL, PRIMARY KEY (account_id, region, project, name));
CREATE TABLE IF NOT EXISTS flow_logs (
  account_id TEXT NOT NULL, id TEXT NOT NULL, region TEXT NOT NULL, name TEXT NOT NULL,
  resource_type INTEGER NOT NULL, resource_id TEXT NOT NULL, network_id TEXT NOT NULL,
  traffic_type INTEGER NOT NULL, project TEXT NOT NULL, log_store TEXT NOT NULL,
  description TEXT NOT NULL, state INTEGER NOT NULL, create_time_ms {d.bigint} NOT NULL,
  update_time_ms {d.bigint} NOT NULL, PRIMARY KEY (account_id, id));
CREATE UNIQUE INDEX IF NOT EXISTS flow_logs_name ON flow_logs (account_id, region, name);
CREATE INDEX IF NOT EXISTS flow_logs_resource ON flow_logs (account_id, resource_id);
CREATE INDEX IF NOT EXISTS flow_logs_dest ON flow_logs (account_id, region, project, log_store);
CREATE TABLE IF NOT EXISTS client_tokens (
  account_id TEXT NOT NULL, token TEXT NOT NULL, fingerprint TEXT NOT NULL, flow_log_id TEXT NOT NULL,
  PRIMARY KEY (account_id, token));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value {d.blob} NOT NULL);
CREATE TABLE IF NOT EXISTS log_store_tombstones (
  account_id TEXT NOT NULL, region TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
  deleted_ms {d.bigint} NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (account_id, region, project, name));
"""
