"""Typed configuration of the Elasticsearch query backend.

One frozen object, given to ElasticsearchRecordStore once at construction (Feast's habit: each
store gets its own config, never the whole app config). `from_mapping` reads the `elasticsearch:`
section of the server's config file (or the same keys from the environment, already gathered by
the caller) and rejects unknown keys, so a typo is an error and not a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_INTERVAL_RE = re.compile(r"^(-1|\d+(ms|s|m|h))$")
REFRESH_MODES = ("wait_for", "true")


@dataclass(frozen=True)
class ElasticsearchConfig:
    """Connection and index settings.

    hosts: URLs of the cluster's nodes (`url` is accepted in from_mapping as a single host).
    username/password or api_key: credentials (none when the cluster has security off).
    ca_certs / verify_certs: TLS verification for https hosts.
    index_prefix: every index and the index template start with `<index_prefix>-records`; lower
        case letters, digits, `-` and `_` only (no dots: the index naming relies on that).
    number_of_shards / number_of_replicas: per day index; one shard holds a LogStore's day well.
    refresh_interval: the indices' own refresh interval (how often ES makes new writes visible
        in the background).
    refresh: how write() makes its records searchable before returning: "wait_for" (the bulk
        waits for the next scheduled refresh: up to refresh_interval of latency, no extra
        segments) or "true" (an explicit refresh of the touched indices right after the bulk:
        lowest latency, more small segments to merge).
    codec: "best_compression" (zstd stored fields: flow logs compress well) or "default".
    index_sort: sort each index's segments by (start_time, record_id) descending, so that the
        default newest-first query can stop early in big indices; costs ~10-25% of bulk+refresh
        time. Applies to indices created after a change.
    request_timeout_s / max_retries: for every request; kept short so a down cluster surfaces as
        an error quickly instead of hanging a query.
    health_timeout_s: healthy() answers within about this long.
    pit_keep_alive: how long a search's point in time survives between two batches.
    bulk_chunk_size: documents per bulk request.
    """

    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    username: str = ""
    password: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)
    ca_certs: str = ""
    verify_certs: bool = True
    index_prefix: str = "flowlog"
    number_of_shards: int = 1
    number_of_replicas: int = 0
    refresh_interval: str = "1s"
    refresh: str = "true"
    codec: str = "best_compression"
    index_sort: bool = True
    request_timeout_s: float = 30.0
    max_retries: int = 2
    health_timeout_s: float = 2.0
    pit_keep_alive: str = "5m"
    bulk_chunk_size: int = 5000

    def __post_init__(self) -> None:
        if isinstance(self.hosts, str):  # one URL, or several separated by commas (env vars)
            object.__setattr__(self, "hosts", tuple(h.strip() for h in self.hosts.split(",") if h.strip()))
        else:
            object.__setattr__(self, "hosts", tuple(self.hosts))
        problems = self.problems()
        if problems:
            raise ValueError("invalid elasticsearch config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if not self.hosts or any(not h.startswith(("http://", "https://")) for h in self.hosts):
            out.append("hosts: give at least one http:// or https:// URL")
        if self.api_key and (self.username or self.password):
            out.append("api_key: give either api_key or username/password, not both")
        if bool(self.username) != bool(self.password):
            out.append("username/password: give both or neither")
        if not _PREFIX_RE.match(self.index_prefix):
            out.append("index_prefix: 1-48 of a-z, 0-9, '-', '_', starting with a letter or digit")
        if self.number_of_shards < 1 or self.number_of_replicas < 0:
            out.append("number_of_shards must be >= 1 and number_of_replicas >= 0")
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

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "ElasticsearchConfig":
        """Build from a config-file section; unknown keys are an error. `url` = one host."""
        data = dict(data)
        if "url" in data:
            if "hosts" in data:
                raise ValueError("invalid elasticsearch config: give url or hosts, not both")
            data["hosts"] = (data.pop("url"),)
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ValueError(f"invalid elasticsearch config: unknown key(s) {', '.join(unknown)}")
        for key, value in list(data.items()):  # values from the environment arrive as text
            if isinstance(value, str):
                data[key] = _from_text(key, types[key], value)
        return cls(**data)


def _from_text(key: str, typ: object, value: str) -> object:
    try:
        if typ == "bool":
            low = value.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return low in ("1", "true", "yes", "on")
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"invalid elasticsearch config: {key}: {value!r} is not a {typ}") from None
    return value
