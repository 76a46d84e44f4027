"""The generator's scheduler: one daemon thread that turns finished windows into records.

Every `window_seconds` (aligned: window starts are multiples of the window length since the
epoch) it asks the wiring for the ACTIVE flow logs, generates the window that just finished for
each and hands the records to the pipeline's sink.

Guarantees, and how they are kept:
- No backfill. A flow log seen for the first time (a new flow log, a resumed one, or any flow
  log after a server restart: this state lives in memory only) starts at the latest finished
  window, never earlier, and never at a window that ended at or before its create_time. A server
  that was down therefore generates only the latest finished window, not the hours it missed.
- No duplicates. Per flow log the loop remembers the next window it owes; a window is handed
  to the sink once, and only that one window per flow log per tick.
- No loss on sink failures. When the sink raises, the window stays owed and is retried at the
  next tick (after a short back-off); record ids are derived from the records, so even a window
  that the sink half-wrote before failing is safe to hand over again. A backlog (the sink was
  failing for several windows) is worked off one window per flow log per tick with no wait in
  between, up to `max_backlog_windows`; windows older than that are skipped with a warning.
- PAUSED and deleted flow logs stop at once: the list is re-read every tick.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from server.core.generator import generate_window
from server.core.model import FlowLog, FlowLogState, FlowRecord, Resource

log = logging.getLogger(__name__)

ListFlowLogs = Callable[[], Sequence[tuple[FlowLog, Resource]]]
Sink = Callable[[list[FlowRecord]], object]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class TickResult(NamedTuple):
    """What one tick did: records handed over, windows generated, sink failures, and whether
    some flow log is still behind (more owed windows than this tick could generate)."""

    records: int
    windows: int
    failures: int
    behind: bool


@dataclass
class _Owed:
    next_start: int  # start of the next window owed to this flow log


class GeneratorLoop:
    """Generates records for every ACTIVE flow log, one finished window at a time."""

    def __init__(
        self,
        list_flow_logs: ListFlowLogs,
        sink: Sink,
        window_seconds: float = 60,
        seed: int | None = None,
        intensity: float = 1.0,
        clock: Callable[[], int] = wall_clock_ms,
        max_backlog_windows: int = 10,
        retry_seconds: float = 1.0,
    ) -> None:
        window_ms = round(window_seconds * 1000)
        if window_ms < 1:
            raise ValueError("window_seconds must be at least 1 ms")
        if intensity < 0:
            raise ValueError("intensity must not be negative")
        self._list_flow_logs = list_flow_logs
        self._sink = sink
        self.window_ms = window_ms
        # None: a fresh seed per process, so two servers do not invent the same traffic.
        self.seed = seed if seed is not None else random.SystemRandom().getrandbits(63)
        self.intensity = intensity
        self._clock = clock
        self.max_backlog_windows = max(1, max_backlog_windows)
        self.retry_seconds = retry_seconds
        self._owed: dict[str, _Owed] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # run_once from the thread and from a caller never overlap

    # -- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("GeneratorLoop already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="flowlog-generator", daemon=True)
        self._thread.start()
        log.info("generator started", extra={"window_ms": self.window_ms, "intensity": self.intensity})

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to stop and wait up to `timeout` seconds; True when it has ended.

        Returns at once when the thread is waiting for the next window (Event.wait); only a tick
        in progress (a sink applying back-pressure) can make it wait, and never past timeout.
        """
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("generator thread still busy after stop(); it is a daemon and exits with the process")
            return False
        self._thread = None
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.run_once(self._clock())
            except Exception:  # never let the thread die: log and try again later
                log.exception("generator tick failed")
                result = TickResult(0, 0, 1, False)
            if self._stop.is_set():
                break
            self._stop.wait(self._delay(result))

    def _delay(self, result: TickResult) -> float:
        """Seconds until the next tick: the next window boundary, sooner to retry or catch up."""
        if result.failures:
            return min(self.retry_seconds, self.window_ms / 1000)
        if result.behind:
            return 0.0
        now = self._clock()
        next_boundary = now - now % self.window_ms + self.window_ms
        return max(0.0, (next_boundary - now) / 1000)

    # -- one tick -----------------------------------------------------------------------------
    def run_once(self, now_ms: int) -> TickResult:
        """Generate, for each ACTIVE flow log, the oldest window it is owed that has finished by
        `now_ms` (normally the one that just finished), and hand its records to the sink."""
        with self._lock:
            return self._tick(now_ms)

    def _tick(self, now_ms: int) -> TickResult:
        wms = self.window_ms
        latest = now_ms - now_ms % wms - wms  # start of the latest finished window
        try:
            pairs = list(self._list_flow_logs())
        except Exception:
            log.exception("generator could not list flow logs; will retry")
            return TickResult(0, 0, 1, False)

        listed: set[str] = set()
        records = windows = failures = 0
        behind = False
        for flow_log, resource in pairs:
            if flow_log.state != FlowLogState.ACTIVE or flow_log.id in listed:
                continue
            listed.add(flow_log.id)
            owed = self._owed.get(flow_log.id)
            if owed is None:
                owed = self._owed[flow_log.id] = _Owed(latest)
            oldest_allowed = latest - (self.max_backlog_windows - 1) * wms
            if owed.next_start < oldest_allowed:
                log.warning(
                    "generator skips windows it could not deliver in time",
                    extra={"flow_log_id": flow_log.id, "skipped_windows": (oldest_allowed - owed.next_start) // wms},
                )
                owed.next_start = oldest_allowed
            # No window that ended at or before the flow log was created.
            first_allowed = flow_log.create_time_ms - flow_log.create_time_ms % wms
            owed.next_start = max(owed.next_start, first_allowed)
            start = owed.next_start
            if start > latest:
                continue
            try:
                batch = generate_window(flow_log, resource, start, wms, self.seed, self.intensity)
                self._sink(batch)
            except Exception:
                failures += 1
                log.exception(
                    "generator window not delivered; retrying next tick",
                    extra={"flow_log_id": flow_log.id, "window_start_ms": start},
                )
                continue
            owed.next_start = start + wms
            records += len(batch)
            windows += 1
            if owed.next_start <= latest:
                behind = True

        # Forget flow logs no longer listed (paused, deleted) once forgetting cannot make a
        # resumed one regenerate a window it already had: only when nothing recent was sent.
        for flow_log_id in [k for k, o in self._owed.items() if k not in listed and o.next_start <= latest]:
            del self._owed[flow_log_id]
        return TickResult(records, windows, failures, behind)
