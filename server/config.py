"""All server settings in one typed object, read from defaults, a YAML file, the environment
and flags, in that order of precedence (flags win).

Every setting has an environment variable: FLOWLOG_ + its path in upper case joined by "_",
e.g. `generator.window_seconds` -> FLOWLOG_GENERATOR_WINDOW_SECONDS,
`elasticsearch.url` -> FLOWLOG_ELASTICSEARCH_URL. API keys come as `api_keys` in the file
(a mapping key -> account) or FLOWLOG_API_KEYS="key1=account1,key2=account2".
Unknown keys in the file are refused (a typo never silently does nothing).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# Each backend owns the config of its section (Feast's habit); these modules import nothing heavy.
from backends.elasticsearch.config import ElasticsearchConfig
from backends.embedded.config import EmbeddedConfig
from backends.minio.config import MinioConfig
from backends.postgres.config import PostgresConfig


class ConfigError(Exception):
    """A bad setting; the message names it and says what is expected."""


@dataclass
class GeneratorConfig:
    # Produce records for every ACTIVE flow log. Off when only real collectors push records.
    enabled: bool = True
    # Aggregation window length. 60 s by default; the demo uses a few seconds.
    window_seconds: float = 60.0
    # Fixed seed for reproducible records (tests); empty = random per process.
    seed: int | None = None
    # Flows per window scale with this (1.0 ~ tens to hundreds per minute per flow log).
    intensity: float = 1.0


@dataclass
class PipelineConfig:
    # Refuse ingestion (RESOURCE_EXHAUSTED) once this much undelivered data is spooled.
    max_spool_bytes: int = 2 * 1024**3
    # How long stored batches stay in the spool for Tail replay and resume cursors.
    tail_retention_seconds: float = 3600.0
    # Archive objects are written when this many records or this age is reached.
    archive_max_records: int = 50_000
    archive_max_age_seconds: float = 60.0
    # Backpressure: while a healthy backend is further behind than the spool keeps in memory,
    # an Ingest call (or a generator batch) waits up to this long for it before being spooled.
    # 0: never wait (the spool absorbs everything up to max_spool_bytes).
    ingest_pace_max_seconds: float = 0.25


@dataclass
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""
    # When set, clients must present a certificate signed by this CA.
    client_ca_file: str = ""


@dataclass
class LimitsConfig:
    # The largest message the server receives (the gRPC transport's cap: bigger ones are refused
    # from their length prefix, before their bytes are buffered). Ingest messages may be this big:
    # 10,000 IPv4 records take ~0.8 MB, IPv6 ~1.5 MB.
    max_message_bytes: int = 2 * 1024 * 1024
    max_records_per_message: int = 10_000
    # Records one Tail subscriber may have queued before it is told to resume from its cursor.
    tail_buffer_records: int = 50_000
    tail_heartbeat_seconds: float = 15.0
    query_page_size: int = 1000
    # Tail streams one account may have open at once (0 = no limit); the next one is refused
    # with RESOURCE_EXHAUSTED. An open Tail holds a thread of a pool shared by every account
    # while it waits for records; without a bound, one account's tails could starve the others'.
    max_tail_streams_per_account: int = 100
    # Aggregate (owner agg): the most groups one call may hold (the backend stops and answers
    # RESOURCE_EXHAUSTED past it), how long it may run, and the longest time range it covers.
    aggregate_max_groups: int = 100_000
    aggregate_timeout_seconds: float = 30.0
    aggregate_max_range_days: float = 31.0
    # -- resource bounds against hostile or misbehaving clients (owner: issue 15) -------------
    # Every request but Ingest's messages: at most this many bytes (read only after the API key
    # is checked) and this many values in any repeated field, checked before it is decoded
    # further. The largest legitimate one (a resource with 100 rules) takes ~15 KB.
    max_request_bytes: int = 64 * 1024
    max_repeated_values: int = 1000
    # Open Tail streams over all accounts (each holds a thread of the Tail pool, sized by this).
    max_tail_streams: int = 1000
    # Query streams open at once, per account and in total (each holds up to three threads of
    # the Query pool, sized by this, and a read transaction or point in time of the backend).
    max_query_streams_per_account: int = 8
    max_query_streams: int = 64
    # Aggregate calls running at once, per account and in total.
    max_aggregate_calls_per_account: int = 4
    max_aggregate_calls: int = 8
    # Bytes the Ingest streams may hold, per account and in total: each open stream may be
    # receiving a message of max_message_bytes at any moment (gRPC buffers it whole, and about
    # three copies exist while it is handed over), so each holds that much while it is open:
    # with the defaults, 8 streams per account and 32 in all.
    max_ingest_inflight_bytes_per_account: int = 16 * 1024 * 1024
    max_ingest_inflight_bytes: int = 64 * 1024 * 1024
    # The same for the one message of every other call while it is being received (a client may
    # send max_message_bytes before the server can tell it is over max_request_bytes): a call
    # waits up to 10 s for room, then is RESOURCE_EXHAUSTED. Legitimate requests take
    # microseconds to receive.
    max_receiving_bytes_per_account: int = 4 * 1024 * 1024
    max_receiving_bytes: int = 16 * 1024 * 1024
    # A Query stream whose client reads nothing for this long is ended with RESOURCE_EXHAUSTED,
    # giving back its threads and its read transaction (a Tail ends by tail_buffer_records).
    stream_send_timeout_seconds: float = 60.0


# -- regions and quotas (owner: lifecycle) ----------------------------------------------------

DEFAULT_REGIONS = ["bj", "gz"]


@dataclass
class QuotasConfig:
    """Per-account quotas, each answered with RESOURCE_EXHAUSTED + google.rpc.QuotaFailure naming
    the setting. Regions come from a catalogue (`regions`), so a per-region quota is bounded too."""

    # Resources (RegisterResource) one account may hold, over all regions.
    resources_per_account: int = 1000
    # LogStores one account may hold, over all regions (a LogStore being purged does not count).
    log_stores_per_account: int = 100
    # Flow logs per region per account (API.md rule 1). The top-level `flow_log_quota` is the
    # older name of this setting and still works; giving both with different values is refused.
    flow_logs_per_region: int | None = None  # None: flow_log_quota, else 10


@dataclass
class CollectorConfig:
    # HOST:PORT of the NetFlow v5/v9/IPFIX UDP port (--collector-listen); empty: no collector.
    listen: str = ""
    # Exporter address (or CIDR block) -> account. Without API keys every exporter feeds the
    # local account; with API keys, datagrams from exporters not named here are dropped (counted).
    exporters: dict[str, str] = field(default_factory=dict)
    # The socket's receive buffer: absorbs bursts while the pipeline is busy (SO_RCVBUFFORCE as
    # root, else SO_RCVBUF capped by net.core.rmem_max).
    receive_buffer_bytes: int = 16 * 1024 * 1024
    # Template caches: per (exporter, observation domain) and in all (server/sources/flows.py Limits).
    max_templates_per_exporter: int = 512
    max_exporters: int = 4096
    # Data sets that arrive before their template are held this long, then counted undecodable.
    hold_seconds: float = 10.0
    # A status line with every counter is logged this often.
    status_log_seconds: float = 60.0
    # <data_dir>/collector-status.json (what `flowlog collector status` prints) is rewritten this often.
    status_file_seconds: float = 1.0


@dataclass
class HttpConfig:
    # The web console and the API as JSON over HTTP (Connect protocol), HOST:PORT; empty: off.
    # Without API keys it must be a loopback address, like `listen`.
    listen: str = ""


# -- replicas: Tail across replicas (owner: tail, issue 19) -----------------------------------


@dataclass
class ReplicaConfig:
    """How this replica takes part in Tail across replicas (metadata_backend postgres only)."""

    # HOST:PORT the other replicas reach this one's gRPC port at (its ReplicaService). Empty: the
    # listen address with the port actually bound, which must then not be a wildcard (0.0.0.0, ::).
    advertise: str = ""
    # How often this replica refreshes its row in the directory and reads the others'.
    heartbeat_seconds: float = 2.0
    # A replica not heard from for this long counts as down: Tails retry it only once it
    # heartbeats again (its records wait in its durable spool meanwhile).
    down_after_seconds: float = 10.0
    # A replica not heard from for this long leaves the directory: Tails stop waiting for it.
    forget_after_seconds: float = 3600.0
    # How far the replicas' clocks may disagree: a spool a Tail cursor does not know yet starts at
    # the records it stored since the cursor's directory time minus this.
    clock_skew_seconds: float = 2.0
    # PEM file of the CA (or self-signed certificate) the replicas' TLS certificates are checked
    # against, when the server listens with tls.cert_file; empty: tls.cert_file itself.
    ca_file: str = ""


@dataclass
class Config:
    listen: str = "127.0.0.1:50051"
    data_dir: str = "./data"
    # api key -> account id. Empty: one local account ("local"), loopback only.
    api_keys: dict[str, str] = field(default_factory=dict)
    # The older name of quotas.flow_logs_per_region (flow logs per region per account).
    flow_log_quota: int | None = None
    # The region catalogue: every region a resource, LogStore, flow log, query or list filter may
    # name; anything else is INVALID_ARGUMENT. FLOWLOG_REGIONS="bj,gz". Removing a region that
    # holds objects hides them from the API (the server warns about it at start-up).
    regions: list[str] = field(default_factory=lambda: list(DEFAULT_REGIONS))
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    # How often the retention pass drops whole days past each LogStore's retention_days (the
    # first pass runs this long after start, at most 30 s).
    retention_interval_seconds: float = 600.0
    # Load the demo inventory (resources of every type in two regions) into every account.
    demo: bool = False
    # Also create a few demo flow logs (project "sample") in the local account on a fresh data dir,
    # so the web console opens on traffic. On with no config file (`make run`), like `demo`.
    demo_flow_logs: bool = False
    # Metadata backend: "embedded" (SQLite under data_dir) or "postgres" (a PostgreSQL database
    # shared by several replicas: the `postgres:` section, postgres.dsn / FLOWLOG_POSTGRES_DSN).
    metadata_backend: str = "embedded"
    # Query backend: "embedded" (DuckDB under data_dir) or "elasticsearch".
    query_backend: str = "embedded"
    # Archive backend: "embedded" (a folder under data_dir), "minio" (any S3) or "none".
    archive_backend: str = "embedded"
    log_level: str = "INFO"
    # Ingest through the compiled fast path (server/native/_fastingest.c) when it is built; false:
    # always the pure-Python path (same results, more CPU per record).
    native_ingest: bool = True
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    elasticsearch: ElasticsearchConfig = field(default_factory=ElasticsearchConfig)
    minio: MinioConfig = field(default_factory=MinioConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    # With API keys and a listen address off loopback the server needs tls (keys would travel in
    # plaintext) unless this says a TLS-terminating proxy sits in front of it.
    allow_plaintext: bool = False
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def validate(self) -> None:
        if self.metadata_backend not in ("embedded", "postgres"):
            raise ConfigError(f"metadata_backend must be 'embedded' or 'postgres', not {self.metadata_backend!r}")
        if self.query_backend not in ("embedded", "elasticsearch"):
            raise ConfigError(f"query_backend must be 'embedded' or 'elasticsearch', not {self.query_backend!r}")
        if self.archive_backend not in ("embedded", "minio", "none"):
            raise ConfigError(f"archive_backend must be 'embedded', 'minio' or 'none', not {self.archive_backend!r}")
        if self.query_backend == "elasticsearch" and not self.elasticsearch.url:
            raise ConfigError(
                "query_backend is 'elasticsearch' but elasticsearch.url (FLOWLOG_ELASTICSEARCH_URL) is empty"
            )
        if self.archive_backend == "minio" and not (
            self.minio.endpoint and self.minio.access_key and self.minio.secret_key
        ):
            raise ConfigError(
                "archive_backend is 'minio' but minio.endpoint/access_key/secret_key "
                "(FLOWLOG_MINIO_ENDPOINT, FLOWLOG_MINIO_ACCESS_KEY, FLOWLOG_MINIO_SECRET_KEY) are not all set"
            )
        chosen: list[tuple[str, ElasticsearchConfig | MinioConfig | EmbeddedConfig | PostgresConfig]] = (
            [("elasticsearch", self.elasticsearch)] if self.query_backend == "elasticsearch" else []
        )
        chosen += [("postgres", self.postgres)] if self.metadata_backend == "postgres" else []
        chosen += [("minio", self.minio)] if self.archive_backend == "minio" else []
        for section, backend_cfg in chosen + [("embedded", self.embedded)]:
            problems = backend_cfg.problems()
            if problems:
                raise ConfigError(f"{section}: " + f"; {section}: ".join(problems))
        self._validate_regions_and_quotas()
        if self.pipeline.ingest_pace_max_seconds < 0:
            raise ConfigError("pipeline.ingest_pace_max_seconds must be 0 (never wait) or more")
        if self.limits.aggregate_max_groups < 1:
            raise ConfigError("limits.aggregate_max_groups must be at least 1 (Aggregate's memory bound)")
        if self.limits.aggregate_timeout_seconds <= 0:
            raise ConfigError("limits.aggregate_timeout_seconds must be positive")
        if self.limits.aggregate_max_range_days < 0:
            raise ConfigError("limits.aggregate_max_range_days must be 0 (no limit) or more")
        if self.generator.window_seconds < 0.5:
            raise ConfigError("generator.window_seconds must be at least 0.5")
        if bool(self.tls.cert_file) != bool(self.tls.key_file):
            raise ConfigError("tls.cert_file and tls.key_file go together")
        if self.tls.client_ca_file and not self.tls.cert_file:
            raise ConfigError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        self._validate_collector()
        self._validate_replica()
        lim = self.limits
        if lim.max_message_bytes < 1024 or lim.max_request_bytes < 1024:
            raise ConfigError("limits.max_message_bytes and limits.max_request_bytes must be at least 1024")
        if lim.stream_send_timeout_seconds <= 0:
            raise ConfigError("limits.stream_send_timeout_seconds must be more than 0")
        for name in (
            "max_repeated_values",
            "max_tail_streams",
            "max_query_streams_per_account",
            "max_query_streams",
            "max_aggregate_calls_per_account",
            "max_aggregate_calls",
            "max_ingest_inflight_bytes_per_account",
            "max_ingest_inflight_bytes",
            "max_receiving_bytes_per_account",
            "max_receiving_bytes",
        ):
            if getattr(lim, name) < 1:
                raise ConfigError(f"limits.{name} must be at least 1")
        for key, account in self.api_keys.items():
            if len(key) < 16:
                raise ConfigError(f"API key for account {account!r} is too short: use at least 16 random characters")
            if not account:
                raise ConfigError("every API key needs an account id")

    def _validate_replica(self) -> None:
        r = self.replica
        if r.heartbeat_seconds < 0.1:
            raise ConfigError("replica.heartbeat_seconds must be at least 0.1")
        if r.down_after_seconds < 2 * r.heartbeat_seconds:
            raise ConfigError("replica.down_after_seconds must be at least twice replica.heartbeat_seconds")
        if r.forget_after_seconds < r.down_after_seconds:
            raise ConfigError("replica.forget_after_seconds must be at least replica.down_after_seconds")
        if r.clock_skew_seconds < 0:
            raise ConfigError("replica.clock_skew_seconds must be 0 or more")
        if r.advertise:
            host, sep, port = r.advertise.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"replica.advertise must be HOST:PORT (e.g. 10.0.0.5:50051), not {r.advertise!r}")

    def _validate_collector(self) -> None:
        import ipaddress

        c = self.collector
        if c.listen:
            from server.collector import parse_listen

            try:
                parse_listen(c.listen)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        for key, account in c.exporters.items():
            try:
                ipaddress.ip_network(key.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"collector.exporters: {key!r} is not an IP address or CIDR block") from None
            if not account:
                raise ConfigError(f"collector.exporters: exporter {key} needs an account id")
        if c.max_templates_per_exporter < 1 or c.max_exporters < 1:
            raise ConfigError("collector.max_templates_per_exporter and collector.max_exporters must be at least 1")
        if c.status_file_seconds < 0.05 or c.status_log_seconds <= 0:
            raise ConfigError("collector.status_file_seconds must be at least 0.05 and status_log_seconds above 0")
        if c.hold_seconds < 0:
            raise ConfigError("collector.hold_seconds must be 0 or more")

    def _validate_regions_and_quotas(self) -> None:
        import re

        if not self.regions:
            raise ConfigError('regions must name at least one region (e.g. [bj, gz]; FLOWLOG_REGIONS="bj,gz")')
        for r in self.regions:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", r):
                raise ConfigError(
                    f"regions: {r!r} is not a region name: 1-32 lowercase letters, digits or '-', "
                    "starting with a letter"
                )
        if len(set(self.regions)) != len(self.regions):
            raise ConfigError(f"regions: {self.regions} names a region twice")
        if self.retention_interval_seconds < 0.5:
            raise ConfigError("retention_interval_seconds must be at least 0.5")
        q = self.quotas
        legacy, new = self.flow_log_quota, q.flow_logs_per_region
        if legacy is not None and new is not None and legacy != new:
            raise ConfigError(
                f"flow_log_quota ({legacy}) and quotas.flow_logs_per_region ({new}) are the same "
                "setting with different values: keep one (quotas.flow_logs_per_region)"
            )
        q.flow_logs_per_region = new if new is not None else legacy if legacy is not None else 10
        self.flow_log_quota = q.flow_logs_per_region
        for name in ("resources_per_account", "log_stores_per_account", "flow_logs_per_region"):
            if getattr(q, name) < 1:
                legacy_name = name == "flow_logs_per_region" and legacy is not None
                raise ConfigError(f"{'flow_log_quota' if legacy_name else 'quotas.' + name} must be at least 1")


def _convert(value: Any, typ: Any, name: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or value == "":
            return None
        return _convert(value, args[0], name)
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{name}: expected text, got {value!r}")
        return str(value)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{name}: expected a list (in the environment: values separated by commas)")
        (item_type,) = typing.get_args(typ) or (str,)
        return [
            _convert(v.strip() if isinstance(v, str) else v, item_type, name)
            for v in items
            if not (isinstance(v, str) and not v.strip())
        ]
    if origin is dict:
        if isinstance(value, str):
            pairs = [p for p in value.split(",") if p.strip()]
            out = {}
            for p in pairs:
                if "=" not in p:
                    raise ConfigError(f"{name}: expected key=account pairs separated by commas")
                k, v = p.split("=", 1)
                out[k.strip()] = v.strip()
            return out
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping")
        return {str(k): str(v) for k, v in value.items()}
    return value


def _apply(obj: Any, data: Mapping[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown setting {prefix}{key!r}; known: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{key}: expected a section (mapping)")
            _apply(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, _convert(value, hints[key], prefix + key))


def _apply_env(obj: Any, env: Mapping[str, str], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        current = getattr(obj, f.name)
        var = f"{prefix}_{f.name.upper()}"
        if dataclasses.is_dataclass(current):
            _apply_env(current, env, var)
        elif var in env:
            setattr(obj, f.name, _convert(env[var], hints[f.name], var))


def load(
    path: str | None = None, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Defaults < file < environment < overrides (flags). With no file, the demo inventory is on
    and the generator uses 5-second windows, so a newcomer sees records at once."""
    env = os.environ if env is None else env
    cfg = Config()
    if path is None:
        cfg.demo = True
        cfg.demo_flow_logs = True
        cfg.generator.window_seconds = 5.0
    else:
        import yaml  # only needed with a file

        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        _apply(cfg, data, "")
    _apply_env(cfg, env, "FLOWLOG")
    for key, value in (overrides or {}).items():
        if value is not None:
            _apply(cfg, {key: value}, "")
    cfg.validate()
    return cfg
