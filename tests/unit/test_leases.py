"""The generator-lease rules (server.core.leases): fair share, rendezvous choice, the window a
new owner starts at. Pure functions driven with hand-made store answers and an explicit clock;
the store itself (PostgreSQL) is tested in tests/replicas/test_leases_postgres.py."""

from __future__ import annotations

import pytest

from server.core.leases import (
    Plan,
    affinity,
    fair_share,
    first_window,
    latest_finished,
    owed_window,
    plan,
    renew_interval_ms,
)
from server.core.ports import Lease, LeaseView

MIN = 60_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window boundary
FLOW_LOGS = [f"fl-{i:08x}" for i in range(10)]


def lease(flow_log_id: str, owner: str, next_ms: int = 0, epoch: int = 1) -> Lease:
    return Lease(flow_log_id, owner, epoch, next_ms, T0 + MIN)


def view(owner: str, mine: list[str], unowned: list[str], live: int) -> LeaseView:
    return LeaseView(tuple(lease(f, owner) for f in mine), tuple(unowned), live)


@pytest.mark.parametrize(
    ("flow_logs", "replicas", "share"),
    [(0, 3, 0), (1, 3, 1), (3, 3, 1), (10, 3, 4), (10, 2, 5), (10, 1, 10), (10, 0, 10), (9, 3, 3)],
)
def test_fair_share_is_the_ceiling_of_an_even_split(flow_logs, replicas, share):
    assert fair_share(flow_logs, replicas) == share


def test_a_replica_alone_claims_everything():
    p = plan("a", view("a", [], FLOW_LOGS, 1), FLOW_LOGS)
    assert p.claim == tuple(FLOW_LOGS) and p.release == ()


def test_three_replicas_claiming_in_turn_split_ten_flow_logs_four_four_two():
    """Each replica plans from what the store says after the previous one claimed (the store
    serialises the claims); nobody moves afterwards."""
    owner: dict[str, str] = {}
    for replica in ("a", "b", "c"):
        mine = [f for f, o in owner.items() if o == replica]
        unowned = [f for f in FLOW_LOGS if f not in owner]
        p = plan(replica, view(replica, mine, unowned, 3), FLOW_LOGS)
        assert not p.release
        owner.update((f, replica) for f in p.claim)
    counts = sorted(list(owner.values()).count(r) for r in "abc")
    assert counts == [2, 4, 4] and len(owner) == 10
    for replica in "abc":  # a steady state: no claim, no release
        mine = [f for f, o in owner.items() if o == replica]
        assert plan(replica, view(replica, mine, [], 3), FLOW_LOGS) == Plan()


def test_a_replica_above_its_share_releases_the_surplus_when_others_join():
    """'a' held everything alone; 'b' and 'c' joined: 'a' keeps 4 (its share) and releases 6."""
    p = plan("a", view("a", FLOW_LOGS, [], 3), FLOW_LOGS)
    assert len(p.release) == 6 and not p.claim
    kept = set(FLOW_LOGS) - set(p.release)
    # The released ones are those 'a' has the least affinity for: the same choice every time.
    assert min(affinity("a", f) for f in kept) > max(affinity("a", f) for f in p.release)
    assert plan("a", view("a", FLOW_LOGS, [], 3), FLOW_LOGS) == p


def test_when_a_replica_dies_the_survivors_take_its_share_over():
    """9 flow logs on a, b, c (3 each); c died. While c still counts as live nobody grabs more
    than its share; once c's heartbeat expired (2 live), b and a each take some of c's."""
    a, b, c = FLOW_LOGS[0:3], FLOW_LOGS[3:6], FLOW_LOGS[6:9]
    nine = FLOW_LOGS[:9]
    assert plan("a", view("a", a, c, 3), nine).claim == ()  # share 3, holds 3
    pa = plan("a", view("a", a, c, 2), nine)  # share 5: takes 2 of c's 3
    assert len(pa.claim) == 2 and set(pa.claim) <= set(c)
    rest = [f for f in c if f not in pa.claim]
    pb = plan("b", view("b", b, rest, 2), nine)
    assert pb.claim == tuple(rest)


def test_flow_logs_no_longer_active_do_not_count():
    p = plan("a", view("a", ["fl-gone"], ["fl-x", "fl-paused"], 1), ["fl-x"])
    assert p.claim == ("fl-x",) and p.release == ()


def test_replicas_claiming_at_once_mostly_want_different_flow_logs():
    """Rendezvous hashing: from the same view, two replicas' first choices differ, so their
    concurrent claims seldom collide (the store settles any collision: one wins)."""
    many = [f"fl-{i:08x}" for i in range(300)]
    pa = plan("replica-a", view("replica-a", [], many, 3), many)
    pb = plan("replica-b", view("replica-b", [], many, 3), many)
    assert len(pa.claim) == len(pb.claim) == 100
    assert len(set(pa.claim) & set(pb.claim)) < 60  # ~33 expected for independent choices


def test_a_new_flow_log_starts_at_the_latest_finished_window():
    now = T0 + 5 * MIN + 1_234
    latest = latest_finished(now, MIN)
    assert latest == T0 + 4 * MIN
    assert first_window(0, latest_ms=latest, window_ms=MIN, max_backlog_windows=10) == latest


def test_a_taken_over_flow_log_goes_on_where_the_last_owner_committed():
    latest = T0 + 20 * MIN
    for behind in (0, 1, 3, 9):  # within the backlog bound: no window skipped
        stored = latest - behind * MIN
        assert first_window(stored, latest_ms=latest, window_ms=MIN, max_backlog_windows=10) == stored
    # A window not finished yet is kept as it is (nothing is owed until it finishes).
    assert first_window(latest + MIN, latest_ms=latest, window_ms=MIN, max_backlog_windows=10) == latest + MIN


def test_no_backfill_after_the_whole_cluster_was_down():
    """Unowned for longer than the backlog bound: like a single server restarting, only the
    latest finished window, not the hours missed."""
    latest = T0 + 600 * MIN
    assert first_window(T0, latest_ms=latest, window_ms=MIN, max_backlog_windows=10) == latest
    assert first_window(latest - 10 * MIN, latest_ms=latest, window_ms=MIN, max_backlog_windows=10) == latest


def test_owed_window_skips_an_old_backlog_and_never_precedes_creation():
    latest = T0 + 30 * MIN
    due = owed_window(T0, latest_ms=latest, window_ms=MIN, max_backlog_windows=10, create_time_ms=0)
    assert due.start_ms == latest - 9 * MIN and due.skipped == 21
    created = latest - 2 * MIN + 5_000  # created inside a window: that window is its first
    due = owed_window(latest - 5 * MIN, latest_ms=latest, window_ms=MIN, max_backlog_windows=10, create_time_ms=created)
    assert due.start_ms == latest - 2 * MIN and due.skipped == 0
    due = owed_window(latest + MIN, latest_ms=latest, window_ms=MIN, max_backlog_windows=10, create_time_ms=0)
    assert due.start_ms is None and due.next_ms == latest + MIN


def test_leases_are_renewed_three_times_per_ttl():
    assert renew_interval_ms(15_000) == 5_000
    assert renew_interval_ms(1) == 1


def test_the_lease_ttl_setting_is_checked_and_named():
    from server.config import ConfigError, load

    assert load(env={}).generator.lease_ttl_seconds == 15.0
    assert load(env={"FLOWLOG_GENERATOR_LEASE_TTL_SECONDS": "3"}).generator.lease_ttl_seconds == 3.0
    with pytest.raises(ConfigError, match="generator.lease_ttl_seconds"):
        load(env={"FLOWLOG_GENERATOR_LEASE_TTL_SECONDS": "0.5"})
