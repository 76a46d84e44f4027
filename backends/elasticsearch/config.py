"""Typed configuration of the Elasticsearch query backend: the `elasticsearch:` section of the
server's config (server.config nests this class; FLOWLOG_ELASTICSEARCH_<KEY> in the environment).

The backend owns it (Feast's habit: each store gets its own config once, at construction, never
the whole app config); server.config.Config.validate() reports problems() when the backend is
chosen, and the store refuses a config with problems.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_INTERVAL_RE = re.compile(r"^(-1|\d+(ms|s|m|h))$")
REFRESH_MODES = ("wait_for", "true")


@dataclass
class ElasticsearchConfig:
    """Connection and index settings.

    url: the cluster's node URL, or several separated by commas.
    username/password or api_key: credentials (none when the cluster has security off).
    ca_file / verify_certs: TLS verification for https URLs.
    index_prefix: every index and the index template start with `<index_prefix>-records`; lower
        case letters, digits, `-` and `_` only (no dots: the index naming relies on that).
    shards / replicas: per shared day index (all LogStores' records of one UTC day): raise
        `shards` when a day of records outgrows ~30 GB per shard; replicas per production needs.
    max_shards: the most shards (primaries + replicas) flowlog's indices may hold on the cluster;
        creating a day index past it fails with a message naming this setting (warning from
        80% on). Keep it below cluster.max_shards_per_node (1,000 by default) x data nodes, minus
        what else the cluster holds. Days kept x shards x (1 + replicas) + 1 must fit.
    sweep_interval_s: how often (at most) retention looks for whole shared day indices in which
        every LogStore is past retention or deleted, to drop them; reads hide such records at
        once whatever this is.
    refresh_interval: the indices' own refresh interval (how often ES makes new writes visible
        in the background).
    refresh: how write() makes its records searchable before returning: "wait_for" (the bulk
        waits for the next scheduled refresh: up to refresh_interval of latency, no extra
        segments) or "true" (an explicit refresh of the touched indices right after the bulk:
        lowest latency, more small segments to merge).
    codec: "best_compression" (zstd stored fields: flow logs compress well) or "default".
    index_sort: sort each shared day index by (ls_key, start_time desc, record_id desc), so that a
        LogStore's records are contiguous and newest first: a query of a few LogStores reads a
        few runs of neighbouring documents instead of blocks scattered over the whole day. Costs
        ~10-25% of bulk+refresh time. Applies to indices created after a change.
    request_timeout_s / max_retries: for every request; kept short so a down cluster surfaces as
        an error quickly instead of hanging a query.
    health_timeout_s: healthy() answers within about this long.
    pit_keep_alive: how long a search's point in time survives between two batches.
    bulk_chunk_size: documents per bulk request.
    """

    url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)
    ca_file: str = ""
    verify_certs: bool = True
    index_prefix: str = "flowlog"
    shards: int = 1
    replicas: int = 0
    max_shards: int = 900
    sweep_interval_s: float = 300.0
    refresh_interval: str = "1s"
    refresh: str = "true"
    codec: str = "best_compression"
    index_sort: bool = True
    request_timeout_s: float = 30.0
    max_retries: int = 2
    health_timeout_s: float = 2.0
    pit_keep_alive: str = "5m"
    bulk_chunk_size: int = 5000

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.url.split(",") if h.strip())

    def problems(self) -> list[str]:
        out = []
        if not self.hosts or any(not h.startswith(("http://", "https://")) for h in self.hosts):
            out.append("url: give at least one http:// or https:// URL")
        if self.api_key and (self.username or self.password):
            out.append("api_key: give either api_key or username/password, not both")
        if bool(self.username) != bool(self.password):
            out.append("username/password: give both or neither")
        if not _PREFIX_RE.match(self.index_prefix):
            out.append("index_prefix: 1-48 of a-z, 0-9, '-', '_', starting with a letter or digit")
        if self.shards < 1 or self.replicas < 0:
            out.append("shards must be >= 1 and replicas >= 0")
        if self.max_shards < self.shards * (1 + self.replicas) + 1:
            out.append("max_shards: at least shards x (1 + replicas) + 1 (one day index and the registry)")
        if self.sweep_interval_s < 0:
            out.append("sweep_interval_s must be >= 0")
        if not _INTERVAL_RE.match(self.refresh_interval):
            out.append("refresh_interval: a time like '1s' or '500ms', or '-1'")
        if self.refresh not in REFRESH_MODES:
            out.append(f"refresh: one of {', '.join(REFRESH_MODES)}")
        if self.codec not in ("default", "best_compression"):
            out.append("codec: 'default' or 'best_compression'")
        if self.request_timeout_s <= 0 or self.health_timeout_s <= 0:
            out.append("timeouts must be positive")
        if self.max_retries < 0:
            out.append("max_retries must be >= 0")
        if not _INTERVAL_RE.match(self.pit_keep_alive) or self.pit_keep_alive == "-1":
            out.append("pit_keep_alive: a time like '5m'")
        if not 1 <= self.bulk_chunk_size <= 100_000:
            out.append("bulk_chunk_size: 1-100000")
        return out

    def check(self) -> None:
        """ValueError naming every problem."""
        problems = self.problems()
        if problems:
            raise ValueError("invalid elasticsearch config: " + "; ".join(problems))
