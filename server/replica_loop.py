"""This replica's heartbeat in the replica directory, and the directory snapshot Tail sessions use.

One daemon thread: every `replica.heartbeat_seconds` it refreshes this replica's row (id = its
spool's id, the address the other replicas reach it at) and reads the whole directory into a
snapshot that merged Tail sessions (server.pipeline.replicated) read without I/O. The first
heartbeat is written by start(), synchronously, before the server spools anything: a replica
is in the directory before any record of its spool exists (what the merged cursor's `known_ms`
relies on). A failing directory (the metadata store down) keeps the last snapshot and retries at
the next beat; the failure is logged once, and again when it recovers.
"""

from __future__ import annotations

import logging
import threading
import time

from server.core.ports import ReplicaDirectory, ReplicaSnapshot

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ReplicaLoop:
    def __init__(
        self,
        directory: ReplicaDirectory,
        replica_id: str,
        address: str,
        *,
        heartbeat_s: float = 2.0,
        forget_s: float = 3600.0,
    ) -> None:
        self.directory = directory
        self.replica_id = replica_id
        self.address = address
        self.heartbeat_s = heartbeat_s
        self.forget_ms = int(forget_s * 1000)
        self.started_ms = _now_ms()
        self._snapshot = ReplicaSnapshot(0, ())
        self._failing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowlog-replica-heartbeat", daemon=True)

    def snapshot(self) -> ReplicaSnapshot:
        """The directory as last read (cheap: no I/O)."""
        return self._snapshot

    def beat(self) -> None:
        """Refresh this replica's row, then read the directory. Raises what the directory raises."""
        self.directory.heartbeat(self.replica_id, self.address, self.started_ms)
        read_ms = _now_ms()  # before the read: every replica registered before it is in the result
        replicas = self.directory.list(self.forget_ms)
        self._snapshot = ReplicaSnapshot(read_ms, tuple(replicas))

    def start(self) -> None:
        """The first heartbeat (raises when the directory cannot be written: the server must not
        start spooling unregistered), then the loop."""
        self.beat()
        log.info(
            "replica registered",
            extra={
                "replica_id": self.replica_id,
                "address": self.address,
                "replicas": [r.replica_id for r in self._snapshot.replicas],
            },
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - the metadata store down: keep the last snapshot
                if not self._failing:
                    log.warning("replica heartbeat failed; retrying", extra={"error": repr(e)})
                self._failing = True
                continue
            if self._failing:
                log.info("replica heartbeat works again")
                self._failing = False
