"""Concurrency and in-flight limits, per account and in total: what keeps one tenant (or a few)
from taking every reader thread, DuckDB read transaction or byte of memory the server has.

A limit is checked when work starts and given back when it ends (a context manager), from any
thread. Over a limit the caller gets ResourceExhausted naming the setting to raise, at once:
waiting would only move the pile-up into the server. Use cases call these (Query, Tail,
Aggregate, Ingest); server/app.py builds them from the `limits:` settings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from server.core.errors import ResourceExhausted


@dataclass(frozen=True)
class Bound:
    """One bound: its value (0 = none) and the setting that sets it, e.g. limits.max_query_streams."""

    value: int
    setting: str


class Limiter:
    """Units of one kind of work (streams, bytes) held at once, per account and over all accounts.

    `what` says in the error what the units are ("Query streams", "bytes of Ingest messages")."""

    def __init__(self, what: str, per_account: Bound, total: Bound) -> None:
        self.what = what
        self.per_account = per_account
        self.total = total
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._sum = 0

    def held(self, account: str | None = None) -> int:
        with self._lock:
            return self._sum if account is None else self._held.get(account, 0)

    def acquire(self, account: str, n: int = 1) -> None:
        """Take n units for `account`, or raise ResourceExhausted naming the bound it would pass.

        A single request larger than a whole bound is still let through when nothing else of that
        account is held (so a bound below one message's size slows a client, never blocks it)."""
        with self._lock:
            mine = self._held.get(account, 0)
            pa, tot = self.per_account.value, self.total.value
            if pa and mine + n > pa and mine > 0:
                raise self._refused(self.per_account, "per account")
            if tot and self._sum + n > tot and self._sum > 0:
                raise self._refused(self.total, "on this server")
            self._held[account] = mine + n
            self._sum += n

    def release(self, account: str, n: int = 1) -> None:
        with self._lock:
            left = self._held.get(account, 0) - n
            if left > 0:
                self._held[account] = left
            else:
                self._held.pop(account, None)
            self._sum = max(0, self._sum - n)

    @contextmanager
    def hold(self, account: str, n: int = 1) -> Iterator[None]:
        self.acquire(account, n)
        try:
            yield
        finally:
            self.release(account, n)

    def _refused(self, bound: Bound, scope: str) -> ResourceExhausted:
        return ResourceExhausted(
            f"too many {self.what} at once: at most {bound.value} {scope} ({bound.setting}); "
            "finish or close some and retry"
        )


@dataclass
class Limits:
    """The limiters of one server, shared by every use case that starts such work."""

    query_streams: Limiter
    aggregate_calls: Limiter
    tail_streams: Limiter
    ingest_bytes: Limiter

    @classmethod
    def build(
        cls,
        *,
        max_query_streams_per_account: int,
        max_query_streams: int,
        max_aggregate_calls_per_account: int,
        max_aggregate_calls: int,
        max_tail_streams_per_account: int,
        max_tail_streams: int,
        max_ingest_inflight_bytes_per_account: int,
        max_ingest_inflight_bytes: int,
    ) -> "Limits":
        s = "limits."
        return cls(
            query_streams=Limiter(
                "Query streams",
                Bound(max_query_streams_per_account, s + "max_query_streams_per_account"),
                Bound(max_query_streams, s + "max_query_streams"),
            ),
            aggregate_calls=Limiter(
                "Aggregate calls",
                Bound(max_aggregate_calls_per_account, s + "max_aggregate_calls_per_account"),
                Bound(max_aggregate_calls, s + "max_aggregate_calls"),
            ),
            tail_streams=Limiter(
                "Tail streams",
                Bound(max_tail_streams_per_account, s + "max_tail_streams_per_account"),
                Bound(max_tail_streams, s + "max_tail_streams"),
            ),
            ingest_bytes=Limiter(
                "bytes of Ingest messages in flight",
                Bound(max_ingest_inflight_bytes_per_account, s + "max_ingest_inflight_bytes_per_account"),
                Bound(max_ingest_inflight_bytes, s + "max_ingest_inflight_bytes"),
            ),
        )
