"""The composition root: build_app(config) wires metadata, backends, pipeline, generator and the
gRPC server. Nothing heavy happens at import time; backends are imported only when chosen, so
the embedded default never loads the Elasticsearch or MinIO clients.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from server.config import Config, ConfigError
from server.core.limits import Limits
from server.core.model import FlowLogState, FlowRecord, LogStoreKey
from server.core.paging import TokenSigner
from server.core.ports import (
    CompiledIngest,
    GeneratorLeases,
    MetadataStore,
    RecordArchive,
    RecordStore,
    ReplicaDirectory,
    SharedMetadata,
)
from server.core.purge import Purger
from server.core.service import Quotas, Service
from server.core.usecases.ingest import Ingest
from server.core.usecases.query import Query
from server.core.usecases.tail import Tail

if TYPE_CHECKING:  # imported when replicas are configured (server.api.replica imports grpc)
    from server.api.replica import GrpcPeers
    from server.replica_loop import ReplicaLoop

log = logging.getLogger("flowlog.app")


# -- backend registry: an explicit name -> factory map (no lookup by class-name suffix) -------


def _embedded_metadata(cfg: Config) -> MetadataStore:
    from backends.embedded.metadata import SqliteMetadataStore

    return SqliteMetadataStore(cfg.data_path / "metadata.db")


def _postgres_metadata(cfg: Config) -> MetadataStore:
    from backends.postgres.db import DatabaseUnreachable
    from backends.postgres.metadata import PostgresMetadataStore

    try:
        return PostgresMetadataStore(cfg.postgres)
    except DatabaseUnreachable as e:
        raise ConfigError(str(e)) from None


def _embedded_records(cfg: Config):
    from backends.embedded.records import EmbeddedRecordStore

    return EmbeddedRecordStore(
        cfg.data_path / "records.duckdb",
        memory_limit=cfg.embedded.memory_limit or None,
        threads=cfg.embedded.duckdb_threads(),
        aggregate_threads=cfg.embedded.duckdb_aggregate_threads(),
    )


def _elasticsearch_records(cfg: Config):
    from backends.elasticsearch.records import ElasticsearchRecordStore

    return ElasticsearchRecordStore(cfg.elasticsearch)


def _embedded_objects(cfg: Config):
    from backends.embedded.objects import LocalObjectStore

    return LocalObjectStore(cfg.data_path / "archive")


def _minio_objects(cfg: Config):
    from backends.minio.objects import S3ObjectStore

    return S3ObjectStore.from_config(cfg.minio)


METADATA_BACKENDS: dict[str, Callable[[Config], MetadataStore]] = {
    "embedded": _embedded_metadata,
    "postgres": _postgres_metadata,
}
QUERY_BACKENDS: dict[str, Callable[[Config], Any]] = {
    "embedded": _embedded_records,
    "elasticsearch": _elasticsearch_records,
}
ARCHIVE_BACKENDS: dict[str, Callable[[Config], Any]] = {"embedded": _embedded_objects, "minio": _minio_objects}


def _postgres_replicas(cfg: Config) -> ReplicaDirectory:
    from backends.postgres.replicas import PostgresReplicaDirectory

    return PostgresReplicaDirectory(cfg.postgres.dsn)


# Metadata backends shared by several replicas, and their replica directory (Tail across replicas).
REPLICA_DIRECTORIES: dict[str, Callable[[Config], ReplicaDirectory]] = {"postgres": _postgres_replicas}


def _postgres_leases(cfg: Config) -> GeneratorLeases:
    from dataclasses import replace

    from backends.postgres.db import Database
    from backends.postgres.leases import PostgresGeneratorLeases

    db = Database.open(replace(cfg.postgres, pool_size=2), name="flowlog-leases")  # one tick at a time
    try:
        return PostgresGeneratorLeases(db.connection, db)
    except Exception:
        db.close()
        raise


# Metadata backends shared by several replicas, and the leases that split the generator's work.
GENERATOR_LEASES: dict[str, Callable[[Config], GeneratorLeases]] = {"postgres": _postgres_leases}


def advertise_address(cfg: Config, port: int | None) -> str:
    """Where the other replicas reach this one: replica.advertise, else the listen address with
    the port bound (a wildcard host is refused: the others could not dial it)."""
    if cfg.replica.advertise:
        return cfg.replica.advertise
    host, _, listen_port = cfg.listen.rpartition(":")
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        raise ConfigError(
            f"listen is {cfg.listen}, which other replicas cannot dial: set replica.advertise "
            "(FLOWLOG_REPLICA_ADVERTISE) to the HOST:PORT they reach this replica at"
        )
    return f"{host}:{port or listen_port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen_address(cfg: Config) -> None:
    """Without API keys the server serves one local account: refuse anything but loopback. With
    API keys off loopback, refuse to start without TLS (the keys would cross the network in
    plaintext) unless `allow_plaintext` says a TLS-terminating proxy is in front."""
    host = cfg.listen.rsplit(":", 1)[0].strip("[]")
    if cfg.api_keys:
        check_tls(cfg, cfg.listen, host, "listen")
        if cfg.http.listen:  # the console's JSON API takes the same keys (Authorization: Bearer)
            check_tls(cfg, cfg.http.listen, cfg.http.listen.rpartition(":")[0].strip("[]"), "http.listen")
        return
    if not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {cfg.listen} without API keys: with no keys anyone who can reach "
            "the port would act as the local account. Configure api_keys (FLOWLOG_API_KEYS="
            "'<key>=<account>') or listen on 127.0.0.1"
        )


def check_tls(cfg: Config, listen: str, host: str, setting: str) -> None:
    """API keys on a non-loopback address need TLS, or allow_plaintext: true."""
    if cfg.tls.cert_file or cfg.allow_plaintext or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {listen} ({setting}) with API keys but without TLS: every client's "
        "API key would cross the network in plaintext. Set tls.cert_file and tls.key_file, or, when a "
        "TLS-terminating proxy in front of the server does TLS, allow_plaintext: true "
        "(FLOWLOG_ALLOW_PLAINTEXT=true)"
    )


class CollectorBindError(RuntimeError):
    """The collector's UDP port cannot be opened."""


class DataDirInUse(RuntimeError):
    """Another flowlog server holds the data dir."""


def lock_data_dir(path: Path) -> int:
    """Hold `path`/server.lock for the life of the process (released by the OS when it exits);
    DataDirInUse when another server holds it. Taken before any store is opened, so a second
    server on the same data dir says so instead of failing in whichever store it opens first
    (DuckDB's own lock error)."""
    import fcntl
    import os

    fd = os.open(path / "server.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DataDirInUse(
            f"the data dir {path} is in use by another flowlog server"
            f"{f' (pid {holder})' if holder.isdigit() else ''}: stop it, or give this one "
            "another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class _FlowLogGone(Exception):
    """A generated window's flow log was paused or deleted after the generator listed it."""


class App:
    """The composition root: builds the backends chosen by config, the pipeline and the use cases
    once, and runs the background jobs (generator, collector, retention, purges, health probes).
    server/api wires each servicer to the use cases it serves (server.api.server.servicers)."""

    def __init__(self, cfg: Config) -> None:
        from server.api.auth import LOCAL_ACCOUNT, Authenticator
        from server.archive import Archive
        from server.native.fastpath import compiled_ingest
        from server.pipeline import Pipeline

        check_listen_address(cfg)
        self.config = cfg
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        self._dir_lock: int | None = lock_data_dir(cfg.data_path)
        self.metadata: MetadataStore = METADATA_BACKENDS[cfg.metadata_backend](cfg)
        secret = self.metadata.setting("token_secret", secrets.token_bytes(32))
        self.signer = TokenSigner(secret)
        self.signer_secret = secret
        self.auth = Authenticator(cfg.api_keys)
        self.records: RecordStore = QUERY_BACKENDS[cfg.query_backend](cfg)
        self.archive: RecordArchive | None = (
            Archive(ARCHIVE_BACKENDS[cfg.archive_backend](cfg)) if cfg.archive_backend != "none" else None
        )
        p = cfg.pipeline
        self.pipeline = Pipeline(
            cfg.data_path,
            self.records,
            self.archive,
            max_spool_bytes=p.max_spool_bytes,
            tail_retention_s=p.tail_retention_seconds,
            archive_max_records=p.archive_max_records,
            archive_max_age_s=p.archive_max_age_seconds,
            cursor_secret=secret,
            tail_buffer_records=cfg.limits.tail_buffer_records,
            pace_max_s=p.ingest_pace_max_seconds,
        )
        q = cfg.quotas
        self.service = Service(
            self.metadata,
            self.signer,
            regions=cfg.regions,
            quotas=Quotas(
                resources_per_account=q.resources_per_account,
                log_stores_per_account=q.log_stores_per_account,
                flow_logs_per_region=q.flow_logs_per_region or cfg.flow_log_quota or 10,
            ),
            on_log_store_deleted=self._log_store_deleted,
        )
        self._warn_unknown_regions()
        from server.purge_loop import PurgeLoop

        self.purger = Purger(self.metadata, self._purge_steps())
        # several replicas: another replica's deletion reaches this one's purge loop (its local steps)
        shared_meta = isinstance(self.metadata, SharedMetadata)
        self.purge_loop = PurgeLoop(self.purger, generation=self.metadata.generation if shared_meta else None)
        from server.core.lifecycle import ActiveFlowLogs

        self._active_check = ActiveFlowLogs(self.metadata)
        lim = cfg.limits
        # Concurrency per account and in total (server.core.limits), used by the use cases.
        self.limits = Limits.build(
            max_query_streams_per_account=lim.max_query_streams_per_account,
            max_query_streams=lim.max_query_streams,
            max_aggregate_calls_per_account=lim.max_aggregate_calls_per_account,
            max_aggregate_calls=lim.max_aggregate_calls,
            max_tail_streams_per_account=lim.max_tail_streams_per_account,
            max_tail_streams=lim.max_tail_streams,
            max_ingest_inflight_bytes_per_account=lim.max_ingest_inflight_bytes_per_account,
            max_ingest_inflight_bytes=lim.max_ingest_inflight_bytes,
        )
        from server.core.aggregate import Limits as AggregateLimits
        from server.core.usecases.aggregate import Aggregate

        self.aggregate = Aggregate(
            self.metadata,
            self.records,
            AggregateLimits(
                max_groups=lim.aggregate_max_groups,
                timeout_s=lim.aggregate_timeout_seconds,
                max_range_days=lim.aggregate_max_range_days,
            ),
            regions=self.service.regions,
            slots=self.limits.aggregate_calls,
        )
        compiled = compiled_ingest(cfg.native_ingest)
        if compiled is not None and not isinstance(compiled, CompiledIngest):
            raise TypeError("server.native._fastingest lacks split/accept/accept_flows: rebuild it (make install)")
        self.ingest = Ingest(
            self.metadata,
            self.pipeline,
            max_records_per_message=lim.max_records_per_message,
            compiled=compiled,
            inflight=self.limits.ingest_bytes,
            stream_bytes=lim.max_message_bytes,
        )
        self.query = Query(
            self.metadata,
            self.records,
            self.signer,
            default_limit=lim.query_page_size,
            regions=self.service.regions,
            slots=self.limits.query_streams,
        )
        self.tail = Tail(
            self.metadata,
            self.pipeline,
            max_streams_per_account=lim.max_tail_streams_per_account,
            heartbeat_s=lim.tail_heartbeat_seconds,
            regions=self.service.regions,
            slots=self.limits.tail_streams,
        )
        self.executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="flowlog-rpc")
        # Separate pools, each big enough for what its limits let in, so that neither kind of
        # stream can starve the other or the short calls: a Tail holds one thread while it
        # waits for records, a Query up to three (reading, encoding, handing over).
        self.stream_executor = ThreadPoolExecutor(
            max_workers=lim.max_tail_streams + 4, thread_name_prefix="flowlog-tail"
        )
        self.query_executor = ThreadPoolExecutor(
            max_workers=3 * lim.max_query_streams + 4, thread_name_prefix="flowlog-query"
        )
        self.generator = None
        self.generator_leases: GeneratorLeases | None = None
        self._resources: dict = {}  # the leased generator's resources (_leased_flow_logs)
        self._resources_generation = -1
        if cfg.generator.enabled:
            from server.generator_loop import GeneratorLoop, Leasing

            listing: Callable[[], Any]
            seed, leasing, listing = cfg.generator.seed, None, self._active_flow_logs
            if cfg.metadata_backend in GENERATOR_LEASES:
                # Several replicas: each flow log is generated by the replica holding its lease, with
                # one seed for all of them, so a window that a new owner generates again (its last
                # owner died before committing it) is the very same records, stored once.
                self.generator_leases = GENERATOR_LEASES[cfg.metadata_backend](cfg)
                if seed is None:
                    seed = int.from_bytes(self.metadata.setting("generator_seed", secrets.token_bytes(8)), "big") >> 1
                leasing = Leasing(self.generator_leases, self._replica_id, cfg.generator.lease_ttl_seconds)
                listing = self._leased_flow_logs
            self.generator = GeneratorLoop(
                listing,
                self._submit_checked,
                window_seconds=cfg.generator.window_seconds,
                seed=seed,
                intensity=cfg.generator.intensity,
                leasing=leasing,
            )
        self.collector = self._build_collector(cfg) if cfg.collector.listen else None
        # Replicas (metadata shared in PostgreSQL): the directory, the secret of ReplicaService
        # (shared through the metadata store), and the heartbeat loop started by start().
        self.replica_directory: ReplicaDirectory | None = None
        self.replica_secret = ""
        self.replica_loop: ReplicaLoop | None = None
        self._peers: GrpcPeers | None = None
        if cfg.metadata_backend in REPLICA_DIRECTORIES:
            self.replica_secret = self.metadata.setting("replica_secret", secrets.token_bytes(32)).hex()
            advertise_address(cfg, None)  # refuses a wildcard listen without replica.advertise, now
            self.replica_directory = REPLICA_DIRECTORIES[cfg.metadata_backend](cfg)
        self._stop = threading.Event()
        self._probe_ok: dict[str, bool] = {}
        self._retention = threading.Thread(target=self._retention_loop, name="flowlog-retention", daemon=True)
        if cfg.demo:
            self._load_demos(sorted(set(cfg.api_keys.values())) or [LOCAL_ACCOUNT])

    def _load_demos(self, accounts: list[str]) -> None:
        """The demo inventory (and demo flow logs) of each account. With several replicas on one
        metadata store (SharedMetadata), it is loaded once: under a cluster-wide lock, and only
        where no replica has marked it loaded (a marker per account in the shared settings), so
        replicas starting together or restarting later never load it twice."""
        from contextlib import nullcontext

        from server.api.auth import LOCAL_ACCOUNT

        shared = self.metadata if isinstance(self.metadata, SharedMetadata) else None
        with shared.exclusive("demo") if shared is not None else nullcontext(True):
            for account in accounts:
                marker = f"demo_loaded:{account}"
                if shared is not None and self.metadata.setting(marker, b"") == b"1":
                    continue
                self._load_demo(account)
                if self.config.demo_flow_logs and not self.config.api_keys and account == LOCAL_ACCOUNT:
                    self._load_demo_flow_logs(account)
                if shared is not None:
                    shared.put_setting(marker, b"1")

    def _build_collector(self, cfg: Config):
        """The NetFlow/IPFIX listener: its flows go through the Ingest rules and the pipeline."""
        from server.api.auth import LOCAL_ACCOUNT
        from server.collector import Collector, ExporterMap
        from server.core import ingest as ingest_core
        from server.native.fastpath import compiled_ingest
        from server.sources import Limits

        c = cfg.collector
        exporters = ExporterMap(c.exporters, None if cfg.api_keys else LOCAL_ACCOUNT)
        if not cfg.api_keys and c.exporters:
            exporters = ExporterMap({k: LOCAL_ACCOUNT for k in c.exporters}, LOCAL_ACCOUNT)

        compiled = compiled_ingest(cfg.native_ingest)

        def accept(fl, flows, directions):  # the Ingest rules, on the compiled path when built
            return ingest_core.accept_flows(fl, flows, directions, time.time_ns() // 1_000_000, compiled)

        limits = Limits(
            max_sessions=c.max_exporters,
            max_templates_per_session=c.max_templates_per_exporter,
            hold_seconds=c.hold_seconds,
        )
        return Collector(
            c.listen,
            exporters,
            self._active_flow_logs,
            accept,
            self._submit_checked,
            limits=limits,
            receive_buffer_bytes=c.receive_buffer_bytes,
            status_path=cfg.data_path / "collector-status.json",
            status_log_seconds=c.status_log_seconds,
            status_file_seconds=c.status_file_seconds,
            generation=self.metadata.generation,
        )

    def _load_demo(self, account: str) -> None:
        from dataclasses import replace

        from server.demo import demo_resources

        now = time.time_ns() // 1_000_000
        with self.metadata.transaction() as tx:
            for r in demo_resources():
                if r.region in self.service.regions and tx.get_resource(account, r.id) is None:
                    tx.insert_resource(replace(r, account_id=account, create_time_ms=now))

    def _load_demo_flow_logs(self, account: str) -> None:
        """The demo flow logs, through the same use case as CreateFlowLog, on a fresh data dir
        only (an account that has any flow log is left as it is)."""
        from server.core.errors import DomainError
        from server.demo import demo_flow_logs

        if self.service.list_flow_logs(account, page_size=1).items:
            return
        for req in demo_flow_logs(self.service.regions):
            try:
                self.service.create_flow_log(account, req)
            except DomainError as e:  # e.g. a quota of 1: the demo is a courtesy, never a failure
                log.warning("demo flow log %s not created: %s", req.name, e)
                break

    def _replica_id(self) -> str:
        """This replica's id: its spool's id, stable across restarts of the same data dir."""
        spool = self.pipeline.spool
        if spool is None:
            raise RuntimeError("the pipeline is not started: the replica has no id yet")
        return spool.spool_id

    def _leased_flow_logs(self):
        """_active_flow_logs for the leased generator, which lists every few seconds: resources
        never change (no update exists), so they are kept until the metadata's generation moves
        (a resource deleted and created again under its id can only gain a flow log by a change
        that moves it), instead of one query per resource per tick."""
        generation = self.metadata.generation()
        if generation != self._resources_generation or len(self._resources) > 100_000:
            self._resources, self._resources_generation = {}, generation
        return self._active_flow_logs(self._resources)

    def _active_flow_logs(self, cache: dict | None = None):
        out = []
        cache = {} if cache is None else cache
        for fl in self.metadata.all_flow_logs():
            if fl.state != FlowLogState.ACTIVE:
                continue
            key = (fl.account_id, fl.resource_id)
            if key not in cache:
                cache[key] = self.metadata.resource_of(fl.account_id, fl.resource_id)
            if cache[key] is not None:
                out.append((fl, cache[key]))
        return out

    def _submit_checked(self, records: list[FlowRecord], prepared: tuple[bytes, object] | None = None) -> int:
        """The sink of the generator and the collector: records of one flow log, spooled unless
        that flow log was paused or deleted since they listed it (checked inside the submit, so
        a LogStore purge waits for it: see Pipeline.submit). `prepared`: their spool payload and
        Arrow table when the compiled path made them. Returns the spool seq, 0 if dropped."""

        def admit() -> None:
            if records:
                r = records[0]
                if not self._active_check.is_active(r.account_id, r.flow_log_id):
                    raise _FlowLogGone()

        try:
            return self.pipeline.submit(records, prepared, admit=admit)
        except _FlowLogGone:
            return 0

    def _warn_unknown_regions(self) -> None:
        outside = {r: n for r, n in self.metadata.regions_in_use().items() if r not in self.service.regions}
        if outside:
            log.warning(
                "the metadata holds objects in regions outside the `regions` setting; the API refuses those "
                "regions, so these objects cannot be read or deleted until the regions are added back",
                extra={"regions": outside, "catalogue": list(self.service.regions)},
            )

    def _purge_steps(self):
        """The purge of a deleted LogStore, step by step (server.core.purge): each idempotent."""
        from server.core.lifecycle import deleted_error

        steps = [
            ("tails", lambda account, key: self.pipeline.end_tails(account, key, deleted_error(key))),
            ("spool", lambda account, key: self.pipeline.drop_log_store(account, key, timeout=10.0)),
            (f"query backend ({self.config.query_backend})", self.records.drop_log_store),
        ]
        if self.archive is not None:
            steps.append((f"archive ({self.config.archive_backend})", self.archive.delete_log_store))
        return steps

    def _log_store_deleted(self, account: str, key: LogStoreKey) -> None:
        """DeleteLogStore committed its tombstone: purge now; what fails is the purger's to retry."""
        if not self.purger.purge(account, key):
            self.purge_loop.wake()

    def _retention_loop(self) -> None:
        """Drop whole days past each LogStore's retention: shortly after start, then every
        retention_interval_seconds (10 minutes by default)."""
        interval = self.config.retention_interval_seconds
        delay = min(30.0, interval)
        while not self._stop.wait(delay):
            self.enforce_retention()
            delay = interval

    def enforce_retention(self) -> None:
        """One retention pass. With several replicas on one metadata store, the replica holding
        the cluster lock "retention" runs it and the others skip that round (each step is
        idempotent anyway: this only saves the repeated work)."""
        if isinstance(self.metadata, SharedMetadata):
            with self.metadata.exclusive("retention", wait=False) as mine:
                if mine:
                    self._enforce_retention()
        else:
            self._enforce_retention()

    def _enforce_retention(self) -> None:
        now = time.time_ns() // 1_000_000
        for ls in self.metadata.all_log_stores():
            try:
                self.records.enforce_retention(ls.account_id, ls.key, ls.retention_days, now)
                if self.archive is not None:
                    self.archive.enforce_retention(ls.account_id, ls.key, ls.retention_days, now)
            except Exception:  # noqa: BLE001 - retry next round
                log.exception("retention failed for LogStore %s", ls.key)

    def _probe(self, role: str, ok: bool) -> bool:
        """A backend probe's result; when it turns from failing to ok, the backend is back and its
        sink, pausing between retries for up to 30 s, retries now."""
        if ok and not self._probe_ok.get(role, True):
            self.pipeline.retry_now(role)
            self.purge_loop.wake()  # a purge waiting for this backend goes on now
        self._probe_ok[role] = ok
        return ok

    def health(self) -> dict[str, tuple[bool, str]]:
        """(ok, detail) per backend role."""
        out: dict[str, tuple[bool, str]] = {}
        sinks = self.pipeline.health()
        q_ok = self._probe("query", self.records.healthy())
        q_sink = sinks.get("query", (True, ""))
        out["query"] = (q_ok and q_sink[0], q_sink[1] if not q_sink[0] else ("" if q_ok else "backend unreachable"))
        if self.archive is not None:
            a_ok = self._probe("archive", self.archive.healthy())
            a_sink = sinks.get("archive", (True, ""))
            out["archive"] = (
                a_ok and a_sink[0],
                a_sink[1] if not a_sink[0] else ("" if a_ok else "backend unreachable"),
            )
        if self.collector is not None:
            out["collector"] = self.collector.health()
        return out

    def start(self, port: int | None = None) -> None:
        """Start the background work. `port`: the gRPC port bound (for replica.advertise's default)."""
        self.pipeline.start()
        if self.replica_directory is not None:
            self._start_replica(port)
        if self.collector is not None:
            try:
                self.collector.start()
            except OSError as e:
                raise CollectorBindError(
                    f"cannot listen for NetFlow/IPFIX on {self.config.collector.listen}: "
                    f"{e.strerror or e} (is another collector using the port?)"
                ) from None
        if self.generator is not None:
            self.generator.start()
        self._retention.start()
        self.purge_loop.start()  # resumes the purges a previous process left unfinished

    def _start_replica(self, port: int | None) -> None:
        """Register in the replica directory (before anything is spooled: the generator, the
        collector and the gRPC server start after this) and let Tails follow every replica."""
        from server.api.replica import GrpcPeers
        from server.pipeline.replicated import ReplicaTails, VectorCursorCodec
        from server.replica_loop import ReplicaLoop

        cfg = self.config
        r = cfg.replica
        spool = self.pipeline.spool
        assert spool is not None and self.replica_directory is not None
        roots = None
        if cfg.tls.cert_file:
            with open(r.ca_file or cfg.tls.cert_file, "rb") as f:
                roots = f.read()
        self.replica_loop = ReplicaLoop(
            self.replica_directory,
            spool.spool_id,
            advertise_address(cfg, port),
            heartbeat_s=r.heartbeat_seconds,
            forget_s=r.forget_after_seconds,
        )
        self.replica_loop.start()
        if isinstance(self.metadata, SharedMetadata):  # purges wait for every replica's own steps
            from server.core.purge import PurgeCluster

            loop = self.replica_loop
            self.purger.cluster = PurgeCluster(
                replica_id=spool.spool_id,
                members=lambda: [r.replica_id for r in loop.snapshot().replicas],
                acks=self.metadata,
                local_steps=2,  # "tails" and "spool" (see _purge_steps)
            )
        self._peers = GrpcPeers(
            self.replica_secret, root_certificates=roots, max_message_bytes=cfg.limits.max_message_bytes
        )
        self.pipeline.attach_replicas(
            ReplicaTails(
                peers=self._peers,
                snapshot=self.replica_loop.snapshot,
                codec=VectorCursorCodec(self.signer_secret),
                live_ms=int(r.down_after_seconds * 1000),
                skew_ms=int(r.clock_skew_seconds * 1000),
            )
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop producing, drain what was acknowledged to the backends (bounded), close."""
        self._stop.set()
        if self.replica_loop is not None:
            self.replica_loop.stop()
        self.purge_loop.stop()
        if self.generator is not None:
            self.generator.stop()  # gives its leases up: the other replicas take its flow logs at once
        if self.generator_leases is not None:
            self.generator_leases.close()
        if self.collector is not None:
            self.collector.stop()
        self.pipeline.stop(timeout=timeout)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.stream_executor.shutdown(wait=False, cancel_futures=True)
        self.query_executor.shutdown(wait=False, cancel_futures=True)
        self.records.close()
        if self.archive is not None:
            self.archive.close()
        if self._peers is not None:
            self._peers.close()
        if self.replica_directory is not None:
            self.replica_directory.close()
        self.metadata.close()
        if self._dir_lock is not None:  # another server may take the data dir now
            import os

            os.close(self._dir_lock)
            self._dir_lock = None


def build_app(cfg: Config) -> App:
    return App(cfg)
