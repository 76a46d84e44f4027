"""The contract suite's backends: one fixture, parametrised over every RecordStore.

A backend plugs in here with a few lines (build it, say how to clean up, optionally how to
count the server-side resources a search holds); tests/contract/test_record_store.py runs the
whole battery against each, and never names a backend (Jaeger's integration-suite habit).

Elasticsearch is the real server from tests/fixtures_services.py (`-p tests.fixtures_services`),
asked for only by the Elasticsearch cases, so the embedded cases never wait for it. Each store
gets a unique index prefix and its indices and template are deleted afterwards.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import pytest

from server.core.model import Action, Direction, FlowRecord, LogStatus, ResourceType, RuleKind
from server.core.ports import RecordStore
from server.core.records import with_id

BACKENDS = ["embedded", "elasticsearch"]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# The data set lives on three UTC days from here (a fixed past date: tests pass `now` explicitly).
DAY0_MS = int(datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp() * 1000)

# The scope most tests query: one account, region and project, with LogStore names chosen to
# trip careless index naming (a name that is a prefix of another, names differing only in case).
ACCOUNT = "acct-1"
REGION = "ap-guangzhou"
PROJECT = "proj-a"
LOG_STORES = ("ls-a", "ls-a-b", "Web", "web")
# Same LogStore name in another account, region and project: never returned by the scope above.
OTHERS = (
    ("acct-2", REGION, PROJECT, "ls-a"),
    (ACCOUNT, "ap-shanghai", PROJECT, "ls-a"),
    (ACCOUNT, REGION, "proj-b", "ls-a"),
)


# ---------------------------------------------------------------------------------------------
# Realistic records
# ---------------------------------------------------------------------------------------------

_V4_OUTSIDE = [f"203.0.113.{i}" for i in range(1, 40)] + [f"198.51.100.{i}" for i in range(1, 40)]
_V4_INSIDE = (
    [f"10.0.{i // 50}.{i % 50 + 1}" for i in range(120)]
    + [f"10.1.2.{i}" for i in range(1, 20)]
    + [f"172.16.0.{i}" for i in range(1, 20)]
)
_V6_OUTSIDE = [str(ipaddress.IPv6Address(0x2400_CB00 << 96 | i)) for i in range(1, 40)]
_V6_INSIDE = (
    [str(ipaddress.IPv6Address(0x2001_0DB8 << 96 | i)) for i in range(1, 30)]
    + [str(ipaddress.IPv6Address(0x2001_0DB8_0000_0001 << 64 | i)) for i in range(1, 30)]
    + [str(ipaddress.IPv6Address(0xFD00 << 112 | i)) for i in range(1, 10)]
)
# IPv4-mapped IPv6 is the IPv4 address on both sides (filter rule 2): a few such rows.
_V4_MAPPED = ["::ffff:a00:5", "::ffff:cb00:7101"]
_SERVICE_PORTS = (22, 53, 80, 443, 3306, 3389, 8080)


def make_records(
    account: str,
    region: str,
    project: str,
    log_store: str,
    n: int,
    seed: int,
    first_ms: int = DAY0_MS + 12 * HOUR_MS,
    span_ms: int = 2 * DAY_MS,
) -> list[FlowRecord]:
    """n distinct records of one LogStore, start times in [first_ms, first_ms + span_ms).

    Start times fall on few distinct instants (whole hours, or a minute past), so many
    records share a start_time and ordering must break ties by record_id. Mixes IPv4, IPv6 and
    IPv4-mapped addresses, TCP/UDP/ICMP/ICMPv6, ACCEPT/REJECT, both directions, NODATA and
    SKIPDATA rows (no addresses); the rule that decided (ACL, security group, default-deny for
    some REJECTs) and a sampling rate on the flows, drawn from their own generator.
    """
    rnd = random.Random(seed)
    rules = random.Random(seed + 10_000)
    flow_log_id = "fl-" + "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    resource_type = rnd.choice((ResourceType.EIP, ResourceType.NAT_GATEWAY, ResourceType.IPV6_GATEWAY))
    resource_id = f"eip-{rnd.randrange(16**8):08x}"
    network_id = f"vpc-{rnd.randrange(16**8):08x}"
    out: dict[str, FlowRecord] = {}
    hours = span_ms // HOUR_MS
    while len(out) < n:
        start = first_ms + rnd.randrange(hours) * HOUR_MS + rnd.choice((0, 0, 60_000))
        end = start + 60_000
        kind = rnd.random()
        if kind < 0.06:  # no traffic in the window, or skipped: no addresses, nothing counted
            status = LogStatus.NODATA if kind < 0.04 else LogStatus.SKIPDATA
            r = FlowRecord(
                "",
                0,
                account,
                flow_log_id,
                region,
                project,
                log_store,
                int(resource_type),
                resource_id,
                network_id,
                "",
                "",
                0,
                0,
                0,
                0,
                0,
                start,
                end,
                int(Action.UNSPECIFIED),
                int(status),
                int(Direction.UNSPECIFIED),
                0,
            )
        else:
            v6 = kind > 0.7
            if kind > 0.97:
                outside, inside = rnd.choice(_V4_MAPPED), rnd.choice(_V4_INSIDE)
            elif v6:
                outside, inside = rnd.choice(_V6_OUTSIDE), rnd.choice(_V6_INSIDE)
            else:
                outside, inside = rnd.choice(_V4_OUTSIDE), rnd.choice(_V4_INSIDE)
            protocol = rnd.choice((6, 6, 6, 17, 17, 58 if v6 else 1))
            service = rnd.choice(_SERVICE_PORTS) if protocol in (6, 17) else 0
            ephemeral = rnd.randrange(32768, 61000) if protocol in (6, 17) else 0
            direction = rnd.choice((Direction.INGRESS, Direction.EGRESS))
            if direction == Direction.INGRESS:
                src, dst, sport, dport = outside, inside, ephemeral, service
            else:
                src, dst, sport, dport = inside, outside, service, ephemeral
            action = Action.REJECT if rnd.random() < 0.25 else Action.ACCEPT
            packets = rnd.randint(1, 5000)
            nbytes = packets * rnd.randint(40, 1500)
            flags = rnd.choice((2, 18, 19, 27)) if protocol == 6 else 0
            kind = rules.choice(
                (RuleKind.ACL, RuleKind.SECURITY_GROUP, RuleKind.SECURITY_GROUP)
                + ((RuleKind.DEFAULT,) if action == Action.REJECT else ())
            )
            rule_id = (
                "default-deny"
                if kind == RuleKind.DEFAULT
                else f"{'acl' if kind == RuleKind.ACL else 'sg'}-{rules.randint(1, 3)}"
            )
            r = FlowRecord(
                "",
                0,
                account,
                flow_log_id,
                region,
                project,
                log_store,
                int(resource_type),
                resource_id,
                network_id,
                src,
                dst,
                sport,
                dport,
                protocol,
                packets,
                nbytes,
                start,
                end,
                int(action),
                int(LogStatus.OK),
                int(direction),
                flags,
                rule_id,
                int(kind),
                rules.choice((0, 0, 1, 100, 4096)),
            )
        r = with_id(r)
        out.setdefault(r.record_id, r)
    return list(out.values())


@dataclass(frozen=True)
class DataSet:
    """Everything the shared store holds; tests compute expectations from it in Python."""

    records: tuple[FlowRecord, ...]


def build_dataset() -> DataSet:
    records: list[FlowRecord] = []
    for i, name in enumerate(LOG_STORES):
        records += make_records(ACCOUNT, REGION, PROJECT, name, 300, seed=100 + i)
    for i, (acct, region, project, name) in enumerate(OTHERS):
        records += make_records(acct, region, project, name, 60, seed=200 + i)
    return DataSet(tuple(records))


def write_shuffled(
    store: RecordStore, records: list[FlowRecord] | tuple[FlowRecord, ...], batch: int = 250, seed: int = 7
) -> None:
    """Write in random order and uneven batches: stored order must not matter."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    for i in range(0, len(shuffled), batch):
        store.write(shuffled[i : i + batch])


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """A store under test, how to clean up after it, and optionally how many server-side
    search resources (contexts, points in time) are open right now (None: nothing to count)."""

    store: RecordStore
    cleanup: Callable[[], None]
    open_resources: Callable[[], int | None] = field(default=lambda: None)


def _embedded(request: pytest.FixtureRequest, tmp: Path) -> Backend:
    from backends.embedded.records import EmbeddedRecordStore

    # As the server runs it on 2 cores: one DuckDB thread, two while an Aggregate runs.
    store = EmbeddedRecordStore(tmp / "records.duckdb", threads=1, aggregate_threads=2)
    return Backend(store, store.close)


def _elasticsearch(request: pytest.FixtureRequest, tmp: Path) -> Backend:
    from elasticsearch import ConnectionError, Elasticsearch

    from backends.elasticsearch.config import ElasticsearchConfig
    from backends.elasticsearch.records import ElasticsearchRecordStore

    service = request.getfixturevalue("es_service")
    prefix = f"ct-{uuid.uuid4().hex[:10]}"
    store = ElasticsearchRecordStore(ElasticsearchConfig(url=service["url"], index_prefix=prefix))
    admin = Elasticsearch(service["url"], request_timeout=30)

    def open_contexts() -> int:
        stats = admin.nodes.stats(metric="indices", index_metric="search")
        return sum(n["indices"]["search"]["open_contexts"] for n in stats["nodes"].values())

    def cleanup() -> None:
        store.close()
        try:
            names = [
                i["name"]
                for i in admin.indices.resolve_index(name=f"{prefix}-*", expand_wildcards="all").get("indices", [])
            ]
            for i in range(0, len(names), 20):
                admin.indices.delete(index=",".join(names[i : i + 20]), ignore_unavailable=True)
            for template in (f"{prefix}-flows", f"{prefix}-records"):
                admin.options(ignore_status=404).indices.delete_index_template(name=template)
        except ConnectionError:
            # The service fixture stops Elasticsearch at session end, which can come before the
            # teardown of a module fixture (e.g. after -x): its data dir goes away with it.
            warnings.warn(f"could not delete the test indices {prefix}-*: Elasticsearch is gone")
        finally:
            admin.close()

    return Backend(store, cleanup, open_contexts)


_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Backend]] = {
    "embedded": _embedded,
    "elasticsearch": _elasticsearch,
}
assert list(_FACTORIES) == BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty store of each backend, for tests that write or delete."""
    b = _FACTORIES[request.param](request, tmp_path)
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def record_store(backend: Backend) -> RecordStore:
    """A fresh, empty RecordStore of each backend."""
    return backend.store


@pytest.fixture(scope="session")
def dataset() -> DataSet:
    return build_dataset()


@pytest.fixture(scope="module", params=BACKENDS)
def filled_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dataset: DataSet
) -> Iterator[RecordStore]:
    """A store of each backend holding `dataset`, shared by the read-only tests of a module."""
    b = _FACTORIES[request.param](request, tmp_path_factory.mktemp(request.param))
    try:
        write_shuffled(b.store, dataset.records)
        yield b.store
    finally:
        b.cleanup()
