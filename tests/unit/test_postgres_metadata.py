"""What the PostgreSQL metadata store adds to the port's contract (the contract itself runs on it
through tests/unit/conftest.py's `metadata_store`): several stores on one database behave as the
replicas they stand for. Real PostgreSQL (tests/fixtures_postgres.py), no mocks."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psycopg
import pytest

from backends.embedded.metadata import SqliteMetadataStore
from backends.postgres.config import PostgresConfig
from backends.postgres.metadata import PostgresMetadataStore
from server.config import ConfigError, load
from server.core.errors import QuotaExceeded
from server.core.model import FlowLogState, LogStoreKey, ResourceType, TrafficType
from server.core.paging import TokenSigner
from server.core.ports import SharedMetadata
from server.core.service import CreateFlowLog, NewLogStoreSpec, Quotas, Service
from server.demo import demo_resources
from tests.waiting import wait_for

A = "acct-a"


@pytest.fixture
def two_replicas(postgres_dsn):
    """Two stores on one database: what two flowlog-server processes hold."""
    a = PostgresMetadataStore(PostgresConfig(dsn=postgres_dsn))
    b = PostgresMetadataStore(PostgresConfig(dsn=postgres_dsn))
    yield a, b
    a.close()
    b.close()


def _service(store, quota=10) -> Service:
    s = Service(store, TokenSigner(b"k" * 32), quotas=Quotas(flow_logs_per_region=quota))
    return s


def _req(i: int) -> CreateFlowLog:
    return CreateFlowLog(
        region="bj",
        name=f"fl{i}",
        resource_type=ResourceType.EIP,
        resource_id="eip-bj-01",
        network_id="vpc-bjdemo",
        traffic_type=TrafficType.ALL,
        destination=NewLogStoreSpec("proj", f"store{i}"),
    )


def test_generation_reflects_changes_committed_by_another_replica(two_replicas):
    a, b = two_replicas
    sa = _service(a)
    for r in demo_resources():
        sa.register_resource(A, r)
    before = b.generation()
    fl = sa.create_flow_log(A, _req(1))
    assert a.generation() > before  # its own commit: at once
    wait_for(lambda: b.generation() > before, "replica b to see replica a's CreateFlowLog in its generation")
    g = b.generation()
    with a.transaction() as tx:
        tx.update_flow_log(replace(tx.get_flow_log(A, fl.id), state=FlowLogState.PAUSED))
    wait_for(lambda: b.generation() > g, "replica b to see the pause")
    with b.transaction() as tx:
        assert tx.get_flow_log(A, fl.id).state == FlowLogState.PAUSED
    g = b.generation()
    with a.transaction() as tx:  # a resource is not watched: no change for open streams
        tx.insert_resource(replace(demo_resources()[0], id="eip-extra", account_id=A))
    with a.transaction() as tx:
        tx.insert_tombstone(A, LogStoreKey("bj", "proj", "gone"), 1)
    wait_for(lambda: b.generation() > g, "replica b to see a tombstone")


def test_settings_are_shared_and_the_first_value_wins(two_replicas):
    a, b = two_replicas
    assert a.setting("token_secret", b"from-a") == b"from-a"
    assert b.setting("token_secret", b"from-b") == b"from-a"
    assert isinstance(a, SharedMetadata)
    b.put_setting("marker", b"1")
    assert a.setting("marker", b"") == b"1"


def test_quota_exact_when_two_replicas_create_at_once(two_replicas):
    a, b = two_replicas
    services = [_service(a, quota=7), _service(b, quota=7)]
    for r in demo_resources():
        services[0].register_resource(A, r)

    def create(i: int) -> str:
        try:
            services[i % 2].create_flow_log(A, _req(i))
            return "ok"
        except QuotaExceeded:
            return "quota"

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(create, range(40)))
    assert results.count("ok") == 7, results
    with psycopg.connect(a.db.cfg.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM flow_logs WHERE account_id=%s", (A,)).fetchone() == (7,)


def test_exclusive_lock_is_held_by_one_replica_and_freed_when_it_ends(two_replicas):
    a, b = two_replicas
    with a.exclusive("retention", wait=False) as mine:
        assert mine
        with b.exclusive("retention", wait=False) as theirs:
            assert not theirs
    with b.exclusive("retention", wait=False) as theirs:
        assert theirs


def test_rules_are_stored_as_the_embedded_store_stores_them(postgres_dsn, tmp_path):
    pg = PostgresMetadataStore(PostgresConfig(dsn=postgres_dsn))
    lite = SqliteMetadataStore(tmp_path / "meta.db")
    try:
        for store in (pg, lite):
            with store.transaction() as tx:
                for r in demo_resources():
                    tx.insert_resource(replace(r, account_id=A))
        with psycopg.connect(postgres_dsn) as conn:
            pg_rows = dict(conn.execute("SELECT id, rules FROM resources").fetchall())
        lite_rows = dict(lite._conn.execute("SELECT id, rules FROM resources").fetchall())
        assert pg_rows == lite_rows and len(pg_rows) == len(demo_resources())
        for r in demo_resources():
            assert pg.resource_of(A, r.id).rules == lite.resource_of(A, r.id).rules
    finally:
        pg.close()
        lite.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_dsn_names_the_setting_host_and_port(tmp_path):
    from server.app import App

    port = _closed_port()
    cfg = load(
        None,
        env={},
        overrides={
            "data_dir": str(tmp_path / "d"),
            "metadata_backend": "postgres",
            "postgres": {"dsn": f"postgresql://flowlog@127.0.0.1:{port}/flowlog", "connect_timeout_seconds": 2},
        },
    )
    with pytest.raises(ConfigError) as e:
        App(cfg)
    msg = str(e.value)
    assert "postgres.dsn" in msg and f"127.0.0.1:{port}" in msg and "FLOWLOG_POSTGRES_DSN" in msg


def test_postgres_without_dsn_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match=r"postgres: dsn is empty: set postgres.dsn \(FLOWLOG_POSTGRES_DSN\)"):
        load(None, env={"FLOWLOG_METADATA_BACKEND": "postgres"})
    cfg = load(None, env={"FLOWLOG_METADATA_BACKEND": "postgres", "FLOWLOG_POSTGRES_DSN": "postgresql://x@h/db"})
    assert cfg.postgres.dsn == "postgresql://x@h/db"


def test_a_purge_waits_for_every_replicas_own_steps_before_the_shared_ones(two_replicas):
    from server.core.purge import PurgeCluster, Purger

    a, b = two_replicas
    key = LogStoreKey("bj", "proj", "gone")
    done: list[tuple[str, str]] = []  # (replica, step) in the order they ran
    members = lambda: ["r-a", "r-b"]  # noqa: E731 - the directory's replicas

    def purger(store, rid: str) -> Purger:
        steps = [
            ("tails", lambda acct, k: done.append((rid, "tails"))),
            ("spool", lambda acct, k: done.append((rid, "spool"))),
            ("query backend", lambda acct, k: done.append((rid, "query"))),
        ]
        return Purger(store, steps, PurgeCluster(rid, members, store, local_steps=2))

    with a.transaction() as tx:
        tx.insert_tombstone(A, key, 1)
    pa, pb = purger(a, "r-a"), purger(b, "r-b")
    assert pa.purge(A, key) is False  # r-b has not dropped its spool yet: nothing shared is deleted
    assert done == [("r-a", "tails"), ("r-a", "spool")] and [t.key for t in a.tombstones()] == [key]
    assert pb.purge(A, key) is True  # the last replica's own steps, then the shared ones
    assert done[2:] == [("r-b", "tails"), ("r-b", "spool"), ("r-b", "query")]
    assert a.tombstones() == [] and a.purge_acks(A, key) == set()


def test_a_replica_that_comes_second_to_a_purge_runs_no_shared_step(two_replicas):
    """Two replicas purge the same LogStore at once: the one that gets there second must not run
    the shared steps after the first removed the tombstone (by then the name may be a new
    LogStore's, whose records a late deletion would drop), nor leave an ack behind that would
    count for the next deletion of the name."""
    from server.core.purge import PurgeCluster, Purger

    a, b = two_replicas
    key = LogStoreKey("bj", "proj", "raced")
    done: list[tuple[str, str]] = []
    members = lambda: ["r-a", "r-b"]  # noqa: E731 - the directory's replicas
    interleave: list = []

    def spool_a(acct, k):
        done.append(("r-a", "spool"))
        while interleave:  # r-b finishes the whole purge while r-a is still in its own steps
            assert interleave.pop()() is True

    pa = Purger(
        a,
        [
            ("tails", lambda acct, k: None),
            ("spool", spool_a),
            ("query backend", lambda acct, k: done.append(("r-a", "query"))),
        ],
        PurgeCluster("r-a", members, a, local_steps=2),
    )
    pb = Purger(
        b,
        [
            ("tails", lambda acct, k: None),
            ("spool", lambda acct, k: None),
            ("query backend", lambda acct, k: done.append(("r-b", "query"))),
        ],
        PurgeCluster("r-b", members, b, local_steps=2),
    )
    with a.transaction() as tx:
        tx.insert_tombstone(A, key, 1)
    assert pa.purge(A, key) is False  # r-a acked; r-b has not
    interleave.append(lambda: pb.purge(A, key))
    assert pa.purge(A, key) is True  # done by r-b meanwhile
    assert [d for d in done if d[1] == "query"] == [("r-b", "query")]
    assert a.tombstones() == [] and a.purge_acks(A, key) == set()


def test_the_readmes_replica_config_loads():
    """README "Running several replicas": its YAML is real settings (unknown keys are refused)."""
    import re
    from pathlib import Path

    import yaml

    from server.config import Config, _apply

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### What each replica needs") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = Config()
    _apply(cfg, yaml.safe_load(block), "")
    cfg.validate()
    assert cfg.metadata_backend == "postgres" and cfg.postgres.dsn.startswith("postgresql://")
    assert (cfg.query_backend, cfg.archive_backend) == ("elasticsearch", "minio")


def test_a_postgres_outage_is_unavailable_and_the_store_recovers_by_itself():
    """PostgreSQL stopped under a running store: metadata calls are UNAVAILABLE (the API's retry
    signal), not a crash; once it is back on the same port the pool and the change listener
    reconnect with no help. Its own server (the session's is shared by other tests)."""
    from server.core.errors import Unavailable
    from tests.fixtures_services import _svc

    info = _svc.start("postgres", owner_pid=__import__("os").getpid())
    store = other = None
    try:
        dsn = info["dsn"]
        store = PostgresMetadataStore(PostgresConfig(dsn=dsn, connect_timeout_seconds=2))
        assert store.setting("k", b"v") == b"v"
        _svc.stop(info, keep_data=True)  # a clean stop, data kept
        with pytest.raises(Unavailable, match="PostgreSQL at 127.0.0.1"):
            with store.transaction() as tx:
                tx.count_flow_logs(A, "bj")
        info = _svc.start("postgres", data_dir=info["data_dir"], port=int(info["port"]))

        def works() -> bool:
            try:
                return store.setting("k", b"other") == b"v"
            except Unavailable:
                return False

        wait_for(works, "the pool to reconnect after PostgreSQL came back")
        other = PostgresMetadataStore(PostgresConfig(dsn=dsn))
        g = store.generation()
        with other.transaction() as tx:
            tx.insert_tombstone(A, LogStoreKey("bj", "proj", "x"), 1)
        wait_for(lambda: store.generation() > g, "the change listener to reconnect and see another replica's change")
    finally:
        for s in (store, other):
            if s is not None:
                s.close()
        _svc.stop(info)
