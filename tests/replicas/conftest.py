"""The replica harness: N real `flowlog-server` processes on one PostgreSQL (metadata), one
Elasticsearch (query backend) and one S3 server (archive), each with its own data dir and free
loopback port, as "Running several replicas" in the README describes.

    def test_something(replica_cluster):
        cluster = replica_cluster(3)                 # started and SERVING (grpc.health) each
        with cluster.stubs(0, KEY_A) as a, cluster.stubs(2, KEY_A) as c: ...
        cluster[1].kill()                            # SIGKILL: a crash, its data dir kept
        cluster[1].restart()                         # same data dir and port; waits for SERVING

`replica_cluster(n, settings=None)` may be called more than once in a test; every cluster it
made is stopped at the end of the test and its database, Elasticsearch indices and templates
are removed (the S3 bucket is per cluster and left to the throwaway server). `settings` are
merged over the harness defaults (below) for every replica; `cluster.start_replica(settings)`
adds one more. The servers, PostgreSQL, Elasticsearch and S3 are the real ones from
tests/fixtures_postgres.py and tests/fixtures_services.py, shared by the session.

Defaults: API keys KEY_A/KEY_B (tests/e2e/conftest.py), `demo: true`, the generator OFF (a test
that wants it sets `generator: {enabled: true, ...}`), a 1 s archive age so objects appear soon.
"""

from __future__ import annotations

import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.e2e.conftest import KEY_A, KEY_B, ServerProcess, Stubs, free_port, start_server
from tests.fixtures_postgres import create_database, drop_database

__all__ = ["KEY_A", "KEY_B", "Cluster", "Replica"]

START_TIMEOUT_S = 120.0  # three servers booting at once on a loaded 2-core machine


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Replica:
    """One flowlog-server process of a cluster; its data dir and port survive kill() and restart()."""

    index: int
    tmp: Path
    port: int
    settings: dict
    process: ServerProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    def start(self) -> "Replica":
        self.process = start_server(
            self.tmp, self.settings, data_dir=self.data_dir, port=self.port, timeout=START_TIMEOUT_S
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed or closed)."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM, a clean stop; the exit code (0 when it stopped cleanly)."""
        return self.process.stop() if self.process is not None else None

    def restart(self) -> "Replica":
        """Start again on the same data dir and port (after kill() or stop())."""
        if self.alive():
            self.stop()
        return self.start()

    def log_tail(self, n: int = 60) -> str:
        return self.process.log_tail(n) if self.process is not None else ""


@dataclass
class Cluster:
    """Replicas sharing one PostgreSQL database, one Elasticsearch index prefix and one S3 bucket."""

    root: Path
    settings: dict
    dsn: str
    index_prefix: str
    bucket: str
    replicas: list[Replica] = field(default_factory=list)

    def __getitem__(self, i: int) -> Replica:
        return self.replicas[i]

    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def start_replica(self, settings: dict | None = None) -> Replica:
        return self.start_replicas(1, settings)[0]

    def start_replicas(self, n: int, settings: dict | None = None) -> list[Replica]:
        """Start n more replicas at once (as a deployment does); returns them when each is SERVING."""
        new = []
        for _ in range(n):
            i = len(self.replicas)
            r = Replica(i, self.root / f"replica-{i}", free_port(), _merge(self.settings, settings or {}))
            self.replicas.append(r)
            new.append(r)
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(Replica.start, new))  # re-raises the first failure (with that server's log)
        return new

    def stubs(self, i: int, key: str | None = KEY_A) -> "_StubsContext":
        return _StubsContext(self.replicas[i].address, key)

    def logs(self) -> str:
        return "\n".join(f"--- replica {r.index} ({r.address}):\n{r.log_tail(40)}" for r in self.replicas)

    def stop(self) -> dict[int, int | None]:
        codes = {}
        for r in self.replicas:
            codes[r.index] = r.stop() if r.alive() else None
        return codes


class _StubsContext:
    def __init__(self, address: str, key: str | None) -> None:
        self.stubs = Stubs(address, key)

    def __enter__(self) -> Stubs:
        return self.stubs

    def __exit__(self, *exc: object) -> None:
        self.stubs.close()


def _cleanup_es(url: str, prefix: str) -> None:
    from elasticsearch import Elasticsearch

    es = Elasticsearch(url, request_timeout=30)
    try:
        names = list(es.indices.get(index=f"{prefix}*", allow_no_indices=True, ignore_unavailable=True))
        for i in range(0, len(names), 50):  # explicit names: wildcard deletes are refused by default
            es.indices.delete(index=",".join(names[i : i + 50]), ignore_unavailable=True)
        found = es.options(ignore_status=404).indices.get_index_template(name=f"{prefix}*")
        templates = found.get("index_templates", [])
        for t in templates:
            es.indices.delete_index_template(name=t["name"])
    except Exception as e:  # noqa: BLE001 - cleanup of throwaway indices: report, do not fail the test
        print(f"replica harness: could not clean Elasticsearch prefix {prefix}: {e}")
    finally:
        es.close()


@pytest.fixture
def replica_cluster(
    tmp_path: Path, postgres_service: dict, es_service: dict, minio_service: dict
) -> Iterator[Callable[..., Cluster]]:
    """A factory of clusters (see the module docstring); everything it started is stopped after the test."""
    made: list[tuple[Cluster, dict]] = []

    def make(n: int = 3, settings: dict | None = None) -> Cluster:
        dsn = create_database(postgres_service)
        tag = uuid.uuid4().hex[:8]
        base: dict[str, Any] = {
            "metadata_backend": "postgres",
            "postgres": {"dsn": dsn},
            "query_backend": "elasticsearch",
            "elasticsearch": {"url": es_service["url"], "index_prefix": f"rep{tag}"},
            "archive_backend": "minio",
            "minio": {
                "endpoint": minio_service["endpoint"],
                "access_key": minio_service["access_key"],
                "secret_key": minio_service["secret_key"],
                "bucket": f"rep-{tag}",
                "region": minio_service.get("region") or "us-east-1",
            },
            "generator": {"enabled": False},
            "pipeline": {"archive_max_age_seconds": 1.0},
            "demo": True,
        }
        cluster = Cluster(tmp_path / f"cluster-{tag}", _merge(base, settings or {}), dsn, f"rep{tag}", f"rep-{tag}")
        made.append((cluster, es_service))
        cluster.start_replicas(n)
        return cluster

    yield make
    for cluster, es in made:
        for r in cluster.replicas:
            if r.alive():
                r.process.stop(signal.SIGTERM, timeout=30)  # type: ignore[union-attr]
        _cleanup_es(es["url"], cluster.index_prefix)
        drop_database(postgres_service, cluster.dsn)
