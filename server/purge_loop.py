"""The background purger: resumes the purge of deleted LogStores (server.core.purge) until done.

One daemon thread. At start it runs every tombstone a previous process left (killed during a
purge, or a backend down then); afterwards it runs whenever a deletion could not finish its
purge at once (wake()), retrying with back-off (1 s doubling to 60 s) while any remain.

With several replicas on one metadata store (`generation` given), a LogStore deleted through
another replica must be purged here too: this replica's own Tails and spooled batches of it are
local (server.core.purge's first steps). So the loop also runs a round whenever the metadata
generation moves (checked every `poll_s`), which is how another replica's tombstone shows up;
the shared steps (query backend, archive) are idempotent, so every replica running them is safe.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from server.core.purge import Purger

log = logging.getLogger(__name__)


class PurgeLoop:
    def __init__(
        self,
        purger: Purger,
        min_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        generation: Callable[[], int] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.purger = purger
        self.generation = generation
        self.poll_s = poll_s
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowlog-purger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.min_delay_s
        while not self._stop.is_set():
            self._wake.clear()
            seen = self.generation() if self.generation is not None else 0  # before the round reads tombstones
            try:
                left = self.purger.run_pending()
            except Exception:  # noqa: BLE001 - e.g. metadata closing: try again later
                log.exception("purger round failed")
                left = 1
            if left:
                log.info("LogStore purges pending; retrying", extra={"pending": left, "retry_in_s": delay})
                woken = self._wake.wait(delay)
                delay = self.min_delay_s if woken else min(delay * 2, self.max_delay_s)
            else:
                delay = self.min_delay_s
                self._idle(seen)

    def _idle(self, seen: int) -> None:
        """Until woken; with a shared metadata store, also until its generation moves from `seen`."""
        if self.generation is None:
            self._wake.wait()
            return
        while not self._wake.wait(self.poll_s):
            if self.generation() != seen:
                return
