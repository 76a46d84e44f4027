"""Lifecycle rules in the core and the pipeline: the region catalogue, per-account quotas,
tombstoned DeleteLogStore with a resumable purge, and how changes reach open streams
(metadata generation watches, the submit barrier, Tail subscriptions of a deleted LogStore).

Real parts only: the SQLite metadata store, the spool, DuckDB and a local-folder archive; a
failing purge step is our own port raising, not an imitation of a backend."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from backends.embedded.metadata import SqliteMetadataStore
from backends.embedded.objects import LocalObjectStore
from backends.embedded.records import EmbeddedRecordStore
from server.archive import Archive
from server.config import ConfigError, load
from server.core.errors import FailedPrecondition, InvalidArgument, NotFound, QuotaExceeded
from server.core.ingest import flow_log_for_ingest
from server.core.lifecycle import ActiveFlowLogs, FlowLogWatch, ScopeWatch, deleted_error
from server.core.model import FlowLogState, LogStore, LogStoreKey, Resource, ResourceType, TrafficType
from server.core.paging import TokenSigner
from server.core.purge import Purger
from server.core.query import resolve_scope
from server.core.service import CreateFlowLog, NewLogStoreSpec, Quotas, Service
from server.demo import demo_resources
from server.pipeline import Pipeline
from tests.unit.test_pipeline import (
    ACCOUNT,
    PROJECT,
    REGION,
    SECRET,
    count_archive,
    count_query,
    make_records,
)
from tests.waiting import wait_for

A = "acct-a"
KEY = LogStoreKey("bj", "proj", "web")


@pytest.fixture
def meta(metadata_store):  # every metadata backend (tests/unit/conftest.py)
    return metadata_store


def service(meta, **kw) -> Service:
    s = Service(meta, TokenSigner(b"k" * 32), **kw)
    for r in demo_resources():
        if r.region in s.regions:
            s.register_resource(A, r)
    return s


def flow_log_req(name="web-fl", store="web", region="bj") -> CreateFlowLog:
    return CreateFlowLog(
        region=region,
        name=name,
        resource_type=ResourceType.EIP,
        resource_id=f"eip-{region}-01",
        network_id=f"vpc-{region}demo",
        traffic_type=TrafficType.ALL,
        destination=NewLogStoreSpec("proj", store),
    )


# -- regions ----------------------------------------------------------------------------------------


def test_unknown_region_is_invalid_argument_naming_it_everywhere(meta):
    s = service(meta)
    checks = [
        (
            "resource.region",
            lambda: s.register_resource(
                A, Resource("eip-x-01", ResourceType.EIP, "r1", "vpc-x", "x", addresses=("198.51.100.1",))
            ),
        ),
        ("log_store.region", lambda: s.create_log_store(A, LogStore("r1", "proj", "x"))),
        ("region", lambda: s.get_log_store(A, LogStoreKey("r1", "proj", "x"))),
        ("region", lambda: s.delete_log_store(A, LogStoreKey("r1", "proj", "x"))),
        ("region", lambda: s.create_flow_log(A, flow_log_req(region="r1"))),
        ("region", lambda: s.list_resources(A, region="r1")),
        ("region", lambda: s.list_log_stores(A, region="r1")),
        ("region", lambda: s.list_flow_logs(A, region="r1")),
        ("region", lambda: resolve_scope(meta, A, "r1", "proj", ["x"], s.regions)),
    ]
    for field, call in checks:
        with pytest.raises(InvalidArgument) as e:
            call()
        assert field in {v.field for v in e.value.violations}, (field, e.value.message)
        assert "unknown region 'r1'" in e.value.message and "bj, gz" in e.value.message


def test_the_catalogue_is_a_setting(meta):
    s = service(meta, regions=["bj", "sh"])
    s.create_log_store(A, LogStore("sh", "proj", "x"))
    with pytest.raises(InvalidArgument):
        s.create_log_store(A, LogStore("gz", "proj", "x"))


def test_regions_and_quotas_from_file_env_and_legacy_key(tmp_path):
    cfg = load(None, env={})
    assert cfg.regions == ["bj", "gz"] and cfg.quotas.flow_logs_per_region == 10
    assert load(None, env={"FLOWLOG_REGIONS": "bj, sh ,gz"}).regions == ["bj", "sh", "gz"]
    f = tmp_path / "c.yaml"
    f.write_text("flow_log_quota: 3\nregions: [sh]\nquotas: {resources_per_account: 5, log_stores_per_account: 6}\n")
    cfg = load(str(f), env={})
    assert (
        cfg.regions,
        cfg.quotas.flow_logs_per_region,
        cfg.quotas.resources_per_account,
        cfg.quotas.log_stores_per_account,
    ) == (["sh"], 3, 5, 6)
    assert load(str(f), env={"FLOWLOG_QUOTAS_FLOW_LOGS_PER_REGION": "3"}).quotas.flow_logs_per_region == 3
    with pytest.raises(ConfigError, match="same setting"):
        load(str(f), env={"FLOWLOG_QUOTAS_FLOW_LOGS_PER_REGION": "4"})
    with pytest.raises(ConfigError, match="not a region"):
        load(None, env={"FLOWLOG_REGIONS": "bj,Bad Region"})
    with pytest.raises(ConfigError, match="at least 1"):
        load(None, env={"FLOWLOG_QUOTAS_LOG_STORES_PER_ACCOUNT": "0"})


# -- quotas -----------------------------------------------------------------------------------------


def test_resource_and_log_store_quotas_name_their_setting(meta):
    demo = len(demo_resources())
    s = service(meta, quotas=Quotas(resources_per_account=demo + 1, log_stores_per_account=2))
    s.register_resource(
        A, Resource("eip-bj-99", ResourceType.EIP, "bj", "vpc-bjdemo", "x", addresses=("198.51.100.9",))
    )
    with pytest.raises(QuotaExceeded) as e:
        s.register_resource(
            A, Resource("eip-bj-98", ResourceType.EIP, "bj", "vpc-bjdemo", "x", addresses=("198.51.100.8",))
        )
    assert "quotas.resources_per_account" in e.value.subject and f"maximum is {demo + 1}" in e.value.message
    s.create_log_store(A, LogStore("bj", "proj", "one"))
    s.create_flow_log(A, flow_log_req(store="two"))  # new_log_store counts too
    with pytest.raises(QuotaExceeded) as e:
        s.create_log_store(A, LogStore("gz", "proj", "three"))
    assert "quotas.log_stores_per_account" in e.value.subject
    with pytest.raises(QuotaExceeded):
        s.create_flow_log(A, flow_log_req(name="other", store="three"))
    assert [f.name for f in s.list_flow_logs(A).items] == ["web-fl"]  # the refused one left nothing behind


def test_log_store_quota_is_exact_under_concurrency(meta):
    s = service(meta, quotas=Quotas(log_stores_per_account=7))

    def create(i):
        try:
            s.create_log_store(A, LogStore("bj", "proj", f"c{i}"))
            return "ok"
        except QuotaExceeded:
            return "quota"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(create, range(40)))
    assert results.count("ok") == 7 and len(s.list_log_stores(A, page_size=100).items) == 7


# -- tombstones and the purge --------------------------------------------------------------------------


class Steps:
    """Purge steps that record their calls; `fail` names the step that raises."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: str | None = None

    def step(self, name):
        def run(account, key):
            self.calls.append(name)
            if self.fail == name:
                raise ConnectionError(f"{name} is down")

        return name, run


def test_delete_log_store_is_a_tombstone_until_every_step_succeeds(meta):
    steps = Steps()
    purger = Purger(meta, [steps.step("tails"), steps.step("spool"), steps.step("query"), steps.step("archive")])
    s = service(meta, on_log_store_deleted=purger.purge)
    s.create_log_store(A, LogStore("bj", "proj", "web"))
    steps.fail = "query"
    g = meta.generation()
    s.delete_log_store(A, KEY)
    assert meta.generation() != g
    assert steps.calls == ["tails", "spool", "query"]
    # gone from every API at once; a retry is NOT_FOUND
    with pytest.raises(NotFound):
        s.get_log_store(A, KEY)
    assert s.list_log_stores(A).items == [] and meta.all_log_stores() == []
    with pytest.raises(NotFound):
        s.delete_log_store(A, KEY)
    # the name waits for the purge
    with pytest.raises(FailedPrecondition, match="still being purged"):
        s.create_log_store(A, LogStore("bj", "proj", "web"))
    with pytest.raises(FailedPrecondition, match="still being purged"):
        s.create_flow_log(A, flow_log_req())
    [t] = meta.tombstones()
    assert (t.account_id, t.key, t.attempts) == (A, KEY, 1) and "query is down" in t.last_error
    # a new purger (a restart) resumes it; every step runs again, idempotent
    steps.fail = None
    steps.calls.clear()
    assert Purger(meta, purger.steps).run_pending() == 0
    assert steps.calls == ["tails", "spool", "query", "archive"] and meta.tombstones() == []
    s.create_log_store(A, LogStore("bj", "proj", "web"))


def test_the_purge_drops_the_records_everywhere_and_a_new_log_store_starts_empty(tmp_path):
    store = EmbeddedRecordStore(tmp_path / "records.duckdb", checkpoint_interval_s=0)
    archive = Archive(LocalObjectStore(tmp_path / "archive"))
    p = Pipeline(
        tmp_path / "data",
        store,
        archive,
        cursor_secret=SECRET,
        archive_max_age_s=0.1,
        backoff_min_s=0.02,
        backoff_max_s=0.1,
    )
    p.start()
    key = LogStoreKey(REGION, PROJECT, "web")
    try:
        seq = p.submit(make_records(300))
        assert p.wait_delivered(seq, 20)
        assert count_query(store) == 300 and count_archive(archive) == 300
        sub = p.hub.subscribe(ACCOUNT, REGION, PROJECT, ["web", "other"])
        meta = SqliteMetadataStore(tmp_path / "meta.db")
        purger = Purger(
            meta,
            [
                ("tails", lambda a, k: p.end_tails(a, k, deleted_error(k))),
                ("spool", p.drop_log_store),
                ("query", store.drop_log_store),
                ("archive", archive.delete_log_store),
            ],
        )
        with meta.transaction() as tx:
            tx.insert_tombstone(ACCOUNT, key, 1)
        assert purger.run_pending() == 0
        with pytest.raises(NotFound, match="was deleted"):
            sub.get(5)
        assert count_query(store) == 0 and count_archive(archive) == 0
        assert [b for b in p.spool.read_after(0, None) if b.records] == []
        seq = p.submit(make_records(5, start=1000))  # the same name again: only its own records
        assert p.wait_delivered(seq, 20)
        assert count_query(store) == 5
        meta.close()
    finally:
        p.stop(5)
        store.close()


# -- open streams ------------------------------------------------------------------------------------


def test_flow_log_watch_sees_pause_and_delete_with_one_read_per_change(meta):
    s = service(meta)
    fl = s.create_flow_log(A, flow_log_req())
    loads = []

    def load(m, account, fid):
        loads.append(fid)
        return flow_log_for_ingest(m, account, fid)

    w = FlowLogWatch(meta, A, fl.id, load)
    for _ in range(1000):
        assert w.current().id == fl.id
    assert len(loads) == 1  # nothing changed: no read per message
    s.create_log_store(A, LogStore("gz", "proj", "unrelated"))
    w.current()
    assert len(loads) == 2  # some change: one read, still fine
    s.update_flow_log(A, fl.id, {"state": FlowLogState.PAUSED}, ["state"])
    with pytest.raises(FailedPrecondition, match="PAUSED"):
        w.current()
    s.update_flow_log(A, fl.id, {"state": FlowLogState.ACTIVE}, ["state"])
    assert w.current().state == FlowLogState.ACTIVE
    s.delete_flow_log(A, fl.id)
    with pytest.raises(NotFound):
        w.current()


def test_scope_watch_ends_once_a_log_store_is_deleted(meta):
    s = service(meta)
    s.create_log_store(A, LogStore("bj", "proj", "web"))
    s.create_log_store(A, LogStore("bj", "proj", "db"))
    scope = resolve_scope(meta, A, "bj", "proj", ["web", "db"], s.regions)
    w = ScopeWatch(meta, A, scope.keys, scope.generation)
    w.check()
    s.create_log_store(A, LogStore("bj", "proj", "more"))
    w.check()
    s.delete_log_store(A, LogStoreKey("bj", "proj", "db"))
    with pytest.raises(NotFound, match="bj/proj/db was deleted"):
        w.check()


def test_a_drop_waits_for_submits_in_flight_and_later_ones_see_the_change(tmp_path):
    """The barrier: a submit whose admit passed before the drop is spooled before the drop (and
    so dropped); a submit that starts after the drop runs its admit, which refuses."""
    store = EmbeddedRecordStore(tmp_path / "records.duckdb", checkpoint_interval_s=0)
    p = Pipeline(tmp_path / "data", store, None, cursor_secret=SECRET, backoff_min_s=0.02, backoff_max_s=0.1)
    p.start()
    gone = threading.Event()
    admitted = threading.Event()
    release = threading.Event()

    def slow_admit():
        admitted.set()
        assert release.wait(10)

    def admit_after():
        if gone.is_set():
            raise NotFound("flow log deleted")

    try:
        t = threading.Thread(target=p.submit, args=(make_records(50),), kwargs={"admit": slow_admit})
        t.start()
        assert admitted.wait(10)
        dropper = threading.Thread(target=p.drop_log_store, args=(ACCOUNT, LogStoreKey(REGION, PROJECT, "web")))
        gone.set()  # the metadata change comes first, then the drop
        dropper.start()
        wait_for(lambda: p._epoch == 1, "the drop at its barrier (epoch 1)")
        with pytest.raises(NotFound):
            p.submit(make_records(5, start=100), admit=admit_after)  # later submits are not held up
        release.set()
        t.join(10)
        dropper.join(10)
        assert not dropper.is_alive()
        # the submit that was in flight landed before the drop marked the LogStore's batches
        assert [b for b in p.spool.read_after(0, None) if b.records] == []
        store.drop_log_store(ACCOUNT, LogStoreKey(REGION, PROJECT, "web"))  # the purge's next step
        assert p.stop(5)
        assert count_query(store) == 0
    finally:
        release.set()
        if p.spool is not None and p.workers["query"].alive:
            p.stop(1)
        store.close()


def test_sources_check_their_flow_log_once_per_change(meta):
    s = service(meta)
    fl = s.create_flow_log(A, flow_log_req())
    check = ActiveFlowLogs(meta)
    assert check.is_active(A, fl.id) and check.is_active(A, fl.id)
    assert not check.is_active("acct-b", fl.id)
    s.update_flow_log(A, fl.id, {"state": FlowLogState.PAUSED}, ["state"])
    assert not check.is_active(A, fl.id)
    s.update_flow_log(A, fl.id, {"state": FlowLogState.ACTIVE}, ["state"])
    assert check.is_active(A, fl.id)
    s.delete_flow_log(A, fl.id)
    assert not check.is_active(A, fl.id)
