"""The live hub: hands every newly spooled batch to the Tail sessions that want its LogStore.

Publishing happens on the spool's writer thread, right after a commit and in seq order, so it
must never block and must stay cheap with a hundred tails: it only routes by LogStore key (a
dict lookup per batch) and appends a reference to each interested subscriber's queue. Filtering
(the Tail's filter expression) happens later, in the subscriber's own thread.

Each subscription's queue is bounded (records and batches). A subscriber that lets it fill up
is marked overflowed and dropped from the routes at once; its next get() raises
SubscriptionOverflow. It loses nothing for good: the spool still holds what it missed, and the
Tail tells the client to reconnect with its last cursor.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
from typing import Iterable, Sequence

from server.core.errors import ResourceExhausted, Unavailable
from server.pipeline.spool import BatchKey, SpoolBatch

log = logging.getLogger(__name__)


class SubscriptionOverflow(ResourceExhausted):
    """The subscriber's queue filled up: it was disconnected from the hub."""


class HubClosed(Unavailable):
    """The hub was closed (the server is stopping)."""


class Subscription:
    """One subscriber's bounded queue of batches. Created by Hub.subscribe()."""

    def __init__(self, hub: "Hub", keys: frozenset[BatchKey], max_records: int, max_batches: int) -> None:
        self._hub = hub
        self.keys = keys
        self.max_records = max_records
        self.max_batches = max_batches
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[SpoolBatch] = collections.deque()
        self._queued_records = 0
        self.overflowed = False
        self.closed = False  # closed by its consumer
        self.hub_closed = False
        self.ended: Exception | None = None  # a LogStore it reads was deleted (Hub.end_key)

    def _offer(self, batch: SpoolBatch) -> bool:
        """Called by the publisher. Never blocks beyond this subscription's own short lock;
        returns False when the subscription must be dropped (it just overflowed)."""
        n = len(batch.records)
        with self._cond:
            if self.overflowed or self.closed:
                return True
            if self._queue and (self._queued_records + n > self.max_records or len(self._queue) >= self.max_batches):
                self.overflowed = True
                self._queue.clear()
                self._queued_records = 0
                self._cond.notify_all()
                return False
            self._queue.append(batch)
            self._queued_records += n
            self._cond.notify()
        return True

    def get(self, timeout: float | None) -> SpoolBatch | None:
        """The next batch; None on timeout or once closed by its consumer. Raises
        SubscriptionOverflow after an overflow and HubClosed when the hub closed."""
        with self._cond:
            if not self._queue and not (self.overflowed or self.closed or self.hub_closed or self.ended):
                self._cond.wait(timeout)
            if self.ended is not None and not self.closed:
                raise copy.copy(self.ended)  # one exception object per consumer thread
            if self.overflowed:
                raise SubscriptionOverflow("tail fell behind")
            if self.closed:
                return None
            if self._queue:
                batch = self._queue.popleft()
                self._queued_records -= len(batch.records)
                return batch
            if self.hub_closed:
                raise HubClosed("the server is stopping")
            return None

    def idle_through(self) -> int | None:
        """When the queue is empty: the hub's last published seq, i.e. every batch up to it
        that this subscriber wanted has already been taken. None while batches are queued.
        (last_seq is read before the queue is checked; publish() queues before raising it.)"""
        last = self._hub.last_seq
        with self._cond:
            return None if self._queue else last

    @property
    def queued_records(self) -> int:
        return self._queued_records

    def close(self) -> None:
        """Unsubscribe: frees the queue and wakes a consumer blocked in get()."""
        with self._cond:
            self.closed = True
            self._queue.clear()
            self._queued_records = 0
            self._cond.notify_all()
        self._hub._remove(self)


class Hub:
    def __init__(self, *, max_records: int = 50_000, max_batches: int = 1_000) -> None:
        self.default_max_records = max_records
        self.default_max_batches = max_batches
        self._lock = threading.Lock()
        # Copy-on-write: publish() reads the current dict without taking the lock.
        self._routes: dict[BatchKey, tuple[Subscription, ...]] = {}
        self._subs: set[Subscription] = set()
        self.last_seq = 0
        self._closed = False

    def subscribe(
        self,
        account_id: str,
        region: str,
        project: str,
        log_stores: Iterable[str],
        *,
        max_records: int | None = None,
        max_batches: int | None = None,
    ) -> Subscription:
        keys = frozenset(BatchKey(account_id, region, project, s) for s in log_stores)
        sub = Subscription(self, keys, max_records or self.default_max_records, max_batches or self.default_max_batches)
        with self._lock:
            if self._closed:
                raise HubClosed("the server is stopping")
            routes = dict(self._routes)
            for k in keys:
                routes[k] = routes.get(k, ()) + (sub,)
            self._routes = routes
            self._subs.add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub not in self._subs:
                return
            self._subs.discard(sub)
            routes = dict(self._routes)
            for k in sub.keys:
                rest = tuple(s for s in routes.get(k, ()) if s is not sub)
                if rest:
                    routes[k] = rest
                else:
                    routes.pop(k, None)
            self._routes = routes

    def publish(self, batches: Sequence[SpoolBatch]) -> None:
        """Hand committed batches (in seq order) to their subscribers. Never blocks."""
        routes = self._routes
        if routes:
            for b in batches:
                subs = routes.get(b.key)
                if subs:
                    for s in subs:
                        if not s._offer(b):
                            log.warning(
                                "tail subscriber overflowed; disconnected",
                                extra={"log_store": "/".join(b.key), "max_records": s.max_records},
                            )
                            self._remove(s)
                self.last_seq = b.seq
        elif batches:
            self.last_seq = batches[-1].seq

    def end_key(self, key: BatchKey, error: Exception) -> int:
        """Disconnect every subscriber of the LogStore `key`: its get() raises `error` at once
        (what it had queued is dropped with it: the LogStore is gone). Returns how many."""
        with self._lock:
            subs = [s for s in self._subs if key in s.keys]
        for s in subs:
            with s._cond:
                s.ended = error
                s._queue.clear()
                s._queued_records = 0
                s._cond.notify_all()
            self._remove(s)
        return len(subs)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        """Disconnect every subscriber (their get() raises HubClosed once drained)."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            self._subs.clear()
            self._routes = {}
        for s in subs:
            with s._cond:
                s.hub_closed = True
                s._cond.notify_all()
