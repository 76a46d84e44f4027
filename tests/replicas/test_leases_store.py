"""Generator leases on a real PostgreSQL (backends/postgres/leases.py), without server processes:
concurrent claimers on separate connections, fencing, and GeneratorLoops of several "replicas"
in this process sharing one lease store, driven by an explicit clock (so a lease's expiry is a
step of the clock, not a wait). tests/replicas/test_generator_failover.py does the same with
real server processes and kill -9."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

import pytest

from backends.postgres.leases import PostgresGeneratorLeases
from server.core.generator import generate_window
from server.core.model import FlowLog, FlowRecord, Resource, ResourceType
from server.generator_loop import GeneratorLoop, Leasing
from tests.unit.test_generator import make

SEC = 1_000
WINDOW = 10 * SEC
TTL = 30 * SEC
T0 = 1_767_225_600_000  # a window boundary
SEED = 424242


@pytest.fixture
def stores(postgres_dsn):
    """A factory of lease stores, each with its own connection pool (a replica's); all closed after."""
    made: list[PostgresGeneratorLeases] = []

    def open_store() -> PostgresGeneratorLeases:
        store = PostgresGeneratorLeases.open(postgres_dsn)
        made.append(store)
        return store

    yield open_store
    for store in made:
        store.close()


def ids(n: int) -> list[str]:
    return [f"fl-lease{i:05d}" for i in range(n)]


def test_concurrent_claimers_on_separate_connections_each_get_disjoint_flow_logs(stores):
    """Six replicas claim the same 120 flow logs at the same moment (a barrier), twice: fresh,
    then after every lease expired. Each time every flow log has exactly one owner, the one the
    store reports, and the second round gives every lease a new epoch."""
    flow_logs = ids(120)
    replicas = [(f"replica-{i}", stores()) for i in range(6)]

    def race(now_ms: int) -> dict[str, list]:
        barrier = threading.Barrier(len(replicas))
        got: dict[str, list] = {}
        errors: list[BaseException] = []

        def claim(name: str, store: PostgresGeneratorLeases) -> None:
            try:
                barrier.wait(timeout=30)
                got[name] = store.claim(
                    name, list(reversed(flow_logs)) if name[-1] in "135" else flow_logs, now_ms, TTL
                )
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=claim, args=r) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        return got

    first = race(T0)
    owners = Counter(lease.flow_log_id for leases in first.values() for lease in leases)
    assert set(owners) == set(flow_logs) and set(owners.values()) == {1}
    for name, leases in first.items():
        assert all(x.owner == name and x.next_window_ms == 0 and x.expires_ms == T0 + TTL for x in leases)
    # What each replica's next sync says agrees: its own leases, nothing unowned.
    for i, (name, store) in enumerate(replicas):
        view = store.sync(name, flow_logs, T0 + SEC, TTL)
        assert {x.flow_log_id for x in view.mine} == {x.flow_log_id for x in first[name]}
        assert view.unowned == () and view.live_replicas == i + 1  # a heartbeat is a sync, not a claim

    epochs = {x.flow_log_id: x.epoch for leases in first.values() for x in leases}
    second = race(T0 + SEC + TTL)  # every lease (renewed at T0 + 1 s) has expired
    owners = Counter(x.flow_log_id for leases in second.values() for x in leases)
    assert set(owners) == set(flow_logs) and set(owners.values()) == {1}
    assert all(x.epoch > epochs[x.flow_log_id] for leases in second.values() for x in leases)


def test_a_live_lease_cannot_be_claimed_and_an_expired_one_moves_with_its_next_window(stores):
    a, b = stores(), stores()
    (lease,) = a.claim("a", ["fl-one"], T0, TTL)
    assert a.commit("a", [("fl-one", lease.epoch, T0 + WINDOW)], T0 + SEC, TTL) == {"fl-one"}
    assert b.claim("b", ["fl-one"], T0 + TTL, TTL) == []  # renewed by the commit until T0 + 1 s + TTL
    (taken,) = b.claim("b", ["fl-one"], T0 + SEC + TTL, TTL)
    assert taken.owner == "b" and taken.epoch > lease.epoch and taken.next_window_ms == T0 + WINDOW


def test_commits_are_fenced_by_owner_and_epoch(stores):
    """A replica that lost its lease (here: paused past the TTL) cannot move the new owner's
    position, even with the old epoch in hand; the new owner's commit goes through."""
    a, b = stores(), stores()
    (old,) = a.claim("a", ["fl-one"], T0, TTL)
    (new,) = b.claim("b", ["fl-one"], T0 + TTL, TTL)
    assert a.commit("a", [("fl-one", old.epoch, T0 + WINDOW)], T0 + TTL, TTL) == set()
    assert a.commit("a", [("fl-one", new.epoch, T0 + WINDOW)], T0 + TTL, TTL) == set()  # not its lease
    assert b.commit("b", [("fl-one", old.epoch, T0 + WINDOW)], T0 + TTL, TTL) == set()  # not its epoch
    assert b.commit("b", [("fl-one", new.epoch, T0 + 2 * WINDOW)], T0 + TTL, TTL) == {"fl-one"}
    # Positions never go back, even for the owner (a retried commit that already went through).
    assert b.commit("b", [("fl-one", new.epoch, T0 + WINDOW)], T0 + TTL, TTL) == set()
    view = a.sync("a", ["fl-one"], T0 + TTL + SEC, TTL)
    assert view.mine == () and view.unowned == ()
    (mine,) = b.sync("b", ["fl-one"], T0 + TTL + SEC, TTL).mine
    assert mine.next_window_ms == T0 + 2 * WINDOW


def test_sync_counts_live_replicas_forgets_inactive_flow_logs_and_leave_frees_everything(stores):
    a, b = stores(), stores()
    assert a.sync("a", ids(4), T0, TTL).live_replicas == 1
    assert b.sync("b", ids(4), T0, TTL).live_replicas == 2
    a.claim("a", ids(4)[:2], T0, TTL)
    b.claim("b", ids(4)[2:], T0, TTL)
    # fl 0 paused: a forgets its own lease at once; b's lease on fl 3 is live, so a leaves it.
    view = a.sync("a", ids(4)[1:3], T0 + SEC, TTL)
    assert [x.flow_log_id for x in view.mine] == [ids(4)[1]] and view.unowned == ()
    # fl 0 resumed: unowned, claimable, and with no stored window (it starts afresh).
    view = a.sync("a", ids(4), T0 + 2 * SEC, TTL)
    assert view.unowned == (ids(4)[0],)
    (back,) = a.claim("a", [ids(4)[0]], T0 + 2 * SEC, TTL)
    assert back.next_window_ms == 0
    # b stops: its leases are free at once and it no longer counts.
    b.leave("b")
    view = a.sync("a", ids(4), T0 + 3 * SEC, TTL)
    assert view.live_replicas == 1 and view.unowned == tuple(ids(4)[2:])
    # a replica that stops renewing stops counting after the TTL
    b.sync("b", ids(4), T0 + 3 * SEC, TTL)
    assert a.sync("a", ids(4), T0 + 3 * SEC + TTL - 1, TTL).live_replicas == 2
    assert a.sync("a", ids(4), T0 + 3 * SEC + TTL, TTL).live_replicas == 1


# --- GeneratorLoops of several replicas on one lease store ----------------------------------


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Replica:
    """One replica's generator: its own lease-store connection, a GeneratorLoop and the records
    its sink accepted (what its spool would hold)."""

    def __init__(self, name: str, store: PostgresGeneratorLeases, inventory, clock: Clock) -> None:
        self.name = name
        self.records: list[FlowRecord] = []
        self.die_after_sink = False  # accept the window, then "die" before committing it
        self.loop = GeneratorLoop(
            inventory,
            self._sink,
            window_seconds=WINDOW / 1000,
            seed=SEED,
            clock=clock,
            leasing=Leasing(store, lambda: name, ttl_seconds=TTL / 1000),
        )

    def _sink(self, batch: list[FlowRecord]) -> None:
        self.records.extend(batch)
        if self.die_after_sink:
            raise SystemError(f"{self.name} died between spooling a window and committing it")


def inventory_of(n: int) -> tuple[list[tuple[FlowLog, Resource]], callable]:
    kinds = list(ResourceType)[1:]
    pairs = [make(kinds[i % len(kinds)], fl_id=f"fl-gen{i:05d}") for i in range(n)]
    return pairs, lambda: pairs


def windows_by_flow_log(records: list[FlowRecord]) -> dict[str, Counter]:
    """Per flow log: window start -> number of distinct records (the oracle's view of a store)."""
    seen: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        seen[r.flow_log_id][r.start_time - r.start_time % WINDOW].add(r.record_id)
    return {f: Counter({w: len(s) for w, s in per.items()}) for f, per in seen.items()}


def test_three_replicas_split_the_flow_logs_and_a_dead_ones_move_without_gap_or_double_window(stores):
    """Nine flow logs, three replicas ticking at every window. They split 3/3/3. Replica c then
    delivers a window and dies before committing it: after the TTL the two others take its
    flow logs over, regenerate exactly that window with the same record ids (the shared seed),
    and go on. Per flow log the windows delivered are contiguous; apart from that one window
    per flow log, no window was delivered twice."""
    pairs, inventory = inventory_of(9)
    clock = Clock(T0 + 3 * WINDOW + 1)
    reps = {n: Replica(n, stores(), inventory, clock) for n in ("a", "b", "c")}

    def tick(names) -> None:
        for n in names:  # like the loop's thread: at once again while behind (a backlog)
            while reps[n].loop.run_once(clock.now).behind:
                pass

    tick("abc")  # a claims all 9 (it is alone live when it syncs), b and c claim nothing yet
    tick("abc")  # a releases down to its share as b and c count, b and c claim theirs
    tick("abc")
    held = {n: set(r.loop.held()) for n, r in reps.items()}
    assert sorted(len(h) for h in held.values()) == [3, 3, 3], held
    assert set().union(*held.values()) == {fl.id for fl, _ in pairs}

    for _ in range(3):
        clock.now += WINDOW
        tick("abc")
    reps["c"].die_after_sink = True
    clock.now += WINDOW
    tick("ab")
    reps["c"].loop.run_once(clock.now)  # c delivers its flow logs' window and dies before committing
    died_at = clock.now
    lost = held["c"]

    while clock.now < died_at + TTL + 2 * WINDOW:  # c is dead: a and b tick on
        clock.now += WINDOW
        tick("ab")
    after = {n: set(reps[n].loop.held()) for n in "ab"}
    assert after["a"] | after["b"] == {fl.id for fl, _ in pairs}
    assert lost <= after["a"] | after["b"] and abs(len(after["a"]) - len(after["b"])) <= 1

    # The oracle: from the records alone.
    everything = [r for rep in reps.values() for r in rep.records]
    stored = windows_by_flow_log(everything)  # what an idempotent store (ES, DuckDB) keeps
    delivered: Counter = Counter()
    for rep in reps.values():  # how often each (flow log, window) was handed to a sink
        delivered.update({(r.flow_log_id, r.start_time - r.start_time % WINDOW) for r in rep.records})
    latest = clock.now - clock.now % WINDOW - WINDOW
    for fl, res in pairs:
        starts = sorted(stored[fl.id])
        assert starts == list(range(starts[0], latest + 1, WINDOW)), f"{fl.id}: windows not contiguous"
        twice = [w for w in starts if delivered[(fl.id, w)] > 1]
        assert twice == ([died_at - died_at % WINDOW - WINDOW] if fl.id in lost else []), (fl.id, twice)
        for w in twice:  # the window regenerated by the new owner: the very same records
            by_replica = [
                sorted(
                    r.record_id
                    for r in rep.records
                    if r.flow_log_id == fl.id and r.start_time - r.start_time % WINDOW == w
                )
                for rep in reps.values()
            ]
            copies = [x for x in by_replica if x]
            assert len(copies) == 2 and copies[0] == copies[1]
            assert copies[0] == sorted(r.record_id for r in generate_window(fl, res, w, WINDOW, SEED))


def test_a_slow_sink_does_not_keep_leases_from_being_renewed(stores):
    """Each delivery takes a whole renewal interval (the clock moves in the sink): a tick stops
    after its budget, says it is behind, and the next tick renews the leases before going on with
    the rest; every flow log gets its window, the most overdue first."""
    pairs, inventory = inventory_of(4)
    clock = Clock(T0 + 3 * WINDOW + 1)
    delivered: list[str] = []

    def slow_sink(batch: list[FlowRecord]) -> None:
        delivered.append(batch[0].flow_log_id)
        clock.now += SEC  # a renewal interval of the 3-second TTL below

    store = stores()
    loop = GeneratorLoop(
        inventory,
        slow_sink,
        window_seconds=WINDOW / 1000,
        seed=SEED,
        clock=clock,
        leasing=Leasing(store, lambda: "slow", ttl_seconds=3),
    )
    results = [loop.run_once(clock.now)]
    while results[-1].behind and len(results) < 10:
        results.append(loop.run_once(clock.now))
    assert sorted(delivered) == sorted(fl.id for fl, _ in pairs)
    assert [r.windows for r in results] == [1, 1, 1, 1] and results[-1].behind is False
    # Every tick renewed the leases: none expired although the whole run took longer than the TTL.
    assert clock.now - (T0 + 3 * WINDOW + 1) > 3 * SEC
    assert store.claim("other", [fl.id for fl, _ in pairs], clock.now, TTL) == []


def test_no_backfill_with_leases_for_a_new_or_resumed_flow_log(stores):
    """Leased, as on a single server: a flow log seen first starts at the latest finished window,
    and one paused for a while starts afresh at the latest window when resumed (its lease was
    dropped while paused), never with the windows of the pause."""
    (pair,) = inventory_of(1)[0]
    listed = [pair]
    clock = Clock(T0 + 50 * WINDOW + 1)
    starts: list[int] = []
    loop = GeneratorLoop(
        lambda: listed,
        lambda batch: starts.append(batch[0].start_time - batch[0].start_time % WINDOW),
        window_seconds=WINDOW / 1000,
        seed=SEED,
        clock=clock,
        leasing=Leasing(stores(), lambda: "solo", ttl_seconds=TTL / 1000),
    )
    assert loop.run_once(clock.now).windows == 1
    assert starts == [T0 + 49 * WINDOW]  # the latest finished window, not the 49 before it
    clock.now += WINDOW
    loop.run_once(clock.now)
    listed.clear()  # paused
    for _ in range(5):
        clock.now += WINDOW
        assert loop.run_once(clock.now).windows == 0
    listed.append(pair)  # resumed
    clock.now += WINDOW
    loop.run_once(clock.now)
    assert starts == [T0 + 49 * WINDOW, T0 + 50 * WINDOW, T0 + 56 * WINDOW]
