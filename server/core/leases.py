"""Generator leases: which replica generates which flow log when several replicas share one
metadata store, and which window each flow log is owed. Pure rules: no I/O, no clock of its own
(every function is given `now_ms`), so they are tested without a database or a server.

How the generator uses them (server.generator_loop, GeneratorLoop with a GeneratorLeases port):
- Every ACTIVE flow log has at most one live lease (a row in the metadata store: owner = the
  replica id, i.e. its spool id; an expiry; a fencing epoch; the next window owed). A replica
  renews its leases at every tick; a replica that dies stops renewing, its leases expire after
  the TTL and the others claim them.
- Fair share (`plan`): a replica holds at most ceil(active flow logs / live replicas). Below it,
  it claims unowned flow logs up to its share; above it (a replica joined), it releases the
  surplus, whose next window is already committed, so the taker goes on where it stopped. The
  ceiling keeps the split stable (three replicas and ten flow logs: 4 + 4 + 2, nobody moves).
  Which ones: rendezvous hashing on (replica, flow log), so replicas claiming at the same moment
  mostly want different flow logs and the choice is the same at every tick.
- The next owed window is stored with the lease and advanced only after the sink accepted the
  window, by the current owner (a fenced commit: owner and epoch must match). A window is
  therefore generated again only when a replica spooled it and died (or lost its lease) before
  committing; the generator being deterministic for (flow log, window, seed) and the seed shared
  by all replicas, the new owner makes the same records with the same record ids, which every
  store writes idempotently.
- No backfill (`first_window`): a flow log no replica has generated yet starts at the latest
  finished window; so does one whose lease was left unowned longer than the backlog bound (the
  whole cluster was down), exactly as a single server that restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from server.core.ports import LeaseView


def latest_finished(now_ms: int, window_ms: int) -> int:
    """Start of the latest window that has finished by `now_ms` (windows align on the epoch)."""
    return now_ms - now_ms % window_ms - window_ms


def fair_share(flow_logs: int, replicas: int) -> int:
    """How many flow logs one replica may hold: the ceiling of an even split."""
    if flow_logs <= 0:
        return 0
    return -(-flow_logs // max(1, replicas))


def affinity(replica_id: str, flow_log_id: str) -> int:
    """Rendezvous weight of a flow log for a replica: the same in every process."""
    key = f"{replica_id}|{flow_log_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Plan:
    """What a replica does with the leases at one tick: claim these, release those."""

    claim: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


def plan(replica_id: str, view: LeaseView, active: Collection[str]) -> Plan:
    """Claim unowned flow logs up to this replica's fair share, or release what is above it.

    `view.mine` and `view.unowned` are read from the store; only flow logs in `active` count.
    """
    share = fair_share(len(active), view.live_replicas)
    mine = [lease.flow_log_id for lease in view.mine if lease.flow_log_id in active]
    if len(mine) > share:
        surplus = sorted(mine, key=lambda f: (affinity(replica_id, f), f))[: len(mine) - share]
        return Plan(release=tuple(sorted(surplus)))
    room = share - len(mine)
    candidates = [f for f in view.unowned if f in active and f not in mine]
    if room <= 0 or not candidates:
        return Plan()
    wanted = sorted(candidates, key=lambda f: (-affinity(replica_id, f), f))[:room]
    return Plan(claim=tuple(sorted(wanted)))


def first_window(stored_next_ms: int, *, latest_ms: int, window_ms: int, max_backlog_windows: int) -> int:
    """The window a replica owes a flow log whose lease it has just acquired.

    0 (never generated) or older than the backlog bound: the latest finished window (no
    backfill, as for a flow log seen first). Otherwise the stored next window: a flow log taken
    over from a replica that died goes on where that one stopped, so no window is skipped.
    """
    oldest_allowed = latest_ms - (max(1, max_backlog_windows) - 1) * window_ms
    if stored_next_ms <= 0 or stored_next_ms < oldest_allowed:
        return latest_ms
    return stored_next_ms


@dataclass(frozen=True)
class Owed:
    """The window to generate now (None: nothing finished yet), and windows skipped to get there."""

    start_ms: int | None
    next_ms: int
    skipped: int


def owed_window(next_ms: int, *, latest_ms: int, window_ms: int, max_backlog_windows: int, create_time_ms: int) -> Owed:
    """The oldest owed window that has finished, for a flow log owed `next_ms` onwards.

    Windows more than `max_backlog_windows` behind are skipped (counted in `skipped`); none
    ends at or before the flow log's create time. Shared by the single-process generator and
    the leased one, so both keep the same rules.
    """
    oldest_allowed = latest_ms - (max(1, max_backlog_windows) - 1) * window_ms
    skipped = 0
    if next_ms < oldest_allowed:
        skipped = (oldest_allowed - next_ms) // window_ms
        next_ms = oldest_allowed
    first_allowed = create_time_ms - create_time_ms % window_ms
    next_ms = max(next_ms, first_allowed)
    return Owed(next_ms if next_ms <= latest_ms else None, next_ms, skipped)


def renew_interval_ms(ttl_ms: int) -> int:
    """How often a replica renews its leases: three renewals per TTL, so one late or failed
    renewal does not lose a lease."""
    return max(1, ttl_ms // 3)
