"""The NetFlow v5 / v9 / IPFIX collector: a UDP port feeding decoded flows into the record pipeline.

    UDP socket ──> receiver thread: Decoder (server.sources) ──> attribution (AccountIndex)
                                         │ per flow log, the flow tuples and their directions
                                         │ (≤ batch_records or ≤ 50 ms old)
                                         ▼ bounded queue
                   submit threads (3): the Ingest rules (server.core.ingest.accept_flows) ──> Pipeline.submit

No Python object is made per flow past the decoder's tuple: attribution appends the tuple itself
and a direction byte per flow log it goes to, and the compiled path (server/native/_fastingest.c,
accept_flows) checks the batch, makes the record ids, the records, the spool's payload and its
Arrow buffers in one call, with the GIL released for the checks and hashing; a batch it is not sure
of takes the Python path (server.core.ingest.accept_columns), which rejects the bad flows by name.

One port takes all three versions (the decoder tells them apart by the version field). The
exporter's account comes from `collector.exporters` (exporter address or CIDR -> account); without
API keys every exporter feeds the local account; with API keys a datagram from an exporter the
map does not name is dropped and counted. Records go through exactly what Ingest does (checks,
record_id, durable spool, dedupe, Tail): a submit that raises (spool full, stopping) drops that
batch and counts it. The receiver never waits for the pipeline longer than the queue allows:
while the submit threads are behind, the socket's receive buffer (receive_buffer_bytes) absorbs
bursts, and past it the kernel drops datagrams (UDP has no backpressure).

Counters (Collector.status()) go to the health detail of `flowlog.collector`, to a log line
every status_log_seconds, and to <data_dir>/collector-status.json every second, which `flowlog
collector status` prints.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from server.core.model import FlowLog, FlowRecord, Resource
from server.pipeline.spool_codec import MAX_BATCH_RECORDS
from server.sources import Decoder, Limits
from server.sources.attribution import AccountIndex, Group
from server.sources.flows import COUNTER_HELP

log = logging.getLogger("flowlog.collector")

ListFlowLogs = Callable[[], Sequence[tuple[FlowLog, Resource]]]
# (flow log, Flow tuples, their directions) -> (accepted records, rejections, prepared spool payload and
# Arrow table or None): the Ingest rules, server.core.ingest.accept_flows
Accept = Callable[[FlowLog, list, bytes], tuple[list[FlowRecord], list, Any]]
# (records of one flow log, prepared or None) -> spool seq (0: dropped, the flow log is gone)
Submit = Callable[[list[FlowRecord], Any], int]

COLLECTOR_COUNTER_HELP: dict[str, str] = {
    "unknown_exporter": "datagrams dropped: the exporter is not in collector.exporters (server with API keys)",
    "unattributed": "flows no ACTIVE flow log took (no resource holds either address, or traffic type)",
    "records": "records spooled (durable): one flow makes one per flow log and direction it goes to",
    "rejected": "records the Ingest checks refused (e.g. end before start, a time far in the future)",
    "dropped": "records lost because the pipeline refused them (spool full, server stopping)",
    "receive_errors": "errors reading the socket or handling a datagram (logged at most once a minute)",
    "flow_logs": "ACTIVE flow logs flows are delivered to (re-read on every change, and every 2 s)",
    "inventory_time_ms": "when the collector last read the flow logs and resources (epoch ms)",
    "held_bytes": "bytes of data sets held for their template",
    "receive_buffer_bytes": "the socket's receive buffer as the kernel granted it",
    "sessions": "(exporter, version, observation domain) template caches kept",
}


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT) -> (host, port); ValueError naming what is wrong."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"collector.listen must be HOST:PORT, not {listen!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"collector.listen port must be 0-65535, not {port}")
    return host.strip("[]"), int(port)


class ExporterMap:
    """collector.exporters: an exporter's address -> account (exact addresses and CIDR blocks;
    the most specific block wins). `default`: the account for every other exporter, or None to
    drop them."""

    def __init__(self, exporters: dict[str, str], default: str | None) -> None:
        self.default = default
        self._exact: dict[str, str] = {}
        self._nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for key, account in exporters.items():
            net = ipaddress.ip_network(key.strip(), strict=False)
            if net.num_addresses == 1:
                self._exact[str(net.network_address)] = account
            else:
                self._nets.append((net, account))
        self._nets.sort(key=lambda na: -na[0].prefixlen)
        self._cache: dict[str, str | None] = {}

    def account(self, address: str) -> str | None:
        try:
            return self._cache[address]
        except KeyError:
            pass
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.version == 6 and ip.ipv4_mapped:  # an IPv4 exporter on a dual-stack socket
            ip = ip.ipv4_mapped
        found = self._exact.get(str(ip))
        if found is None and self._nets:
            found = next((a for n, a in self._nets if ip.version == n.version and ip in n), None)
        if found is None:
            found = self.default
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[address] = found
        return found


class Collector:
    """The UDP listener. start() binds (raises OSError when the port is taken), stop() ends both
    threads after handing over what was decoded."""

    MERGE_RECORDS = 50_000  # rows the submit thread merges from queued batches into one round of submits
    # Submit threads. Each submit waits for its spool commit and, while a sink is behind, up to
    # pipeline.ingest_pace_max_seconds; one thread made the collector wait out every pause in turn
    # (17k flows/s where the same run's paced-off collector did 31k). Several overlap their
    # waits and share group commits, as Ingest's concurrent streams do.
    SUBMITTERS = 3

    def __init__(
        self,
        listen: str,
        exporters: ExporterMap,
        list_flow_logs: ListFlowLogs,
        accept: Accept,
        submit: Submit,
        *,
        limits: Limits | None = None,
        receive_buffer_bytes: int = 16 * 1024 * 1024,
        batch_records: int = 8192,
        batch_seconds: float = 0.05,
        inventory_seconds: float = 2.0,
        status_path: Path | None = None,
        status_log_seconds: float = 60.0,
        status_file_seconds: float = 1.0,
        generation: Callable[[], int] | None = None,
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.exporters = exporters
        self._list_flow_logs = list_flow_logs
        self._accept = accept
        self._submit = submit
        self.decoder = Decoder(limits)
        self.receive_buffer_bytes = receive_buffer_bytes
        self.batch_records = batch_records
        self.batch_seconds = batch_seconds
        self.inventory_seconds = inventory_seconds
        self.status_path = status_path
        self.status_log_seconds = status_log_seconds
        self.status_file_seconds = status_file_seconds
        self.counts = dict.fromkeys(COLLECTOR_COUNTER_HELP, 0)
        self._indexes: dict[str, AccountIndex] = {}
        self._inventory_at = float("-inf")
        self._error_logged = float("-inf")
        # metadata's change counter (MetadataStore.generation): a change here is seen at once
        self._generation = generation
        self._generation_seen: int | None = None
        self.inventory_flow_logs = 0  # ACTIVE flow logs the collector delivers to
        self.inventory_time_ms = 0  # when it last read them (epoch ms)
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # counters read while the threads write them
        self.error = ""
        self.receive_buffer = 0  # what the kernel granted (bytes)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
                if opt is None:
                    continue
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, self.receive_buffer_bytes)
                    break
                except OSError:
                    continue
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.2)
        self._sock = sock
        # Linux reports twice what it grants; without CAP_NET_ADMIN the grant stops at net.core.rmem_max
        self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if self.receive_buffer < self.receive_buffer_bytes:
            log.warning(
                "the collector's socket got a smaller receive buffer than collector.receive_buffer_bytes: "
                "raise net.core.rmem_max (sysctl) or run with CAP_NET_ADMIN, or bursts may be dropped",
                extra={"wanted": self.receive_buffer_bytes, "got": self.receive_buffer},
            )
        self.port = sock.getsockname()[1]
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._receive_loop, name="flowlog-collector-recv", daemon=True),
            *(
                threading.Thread(target=self._submit_loop, args=(k,), name=f"flowlog-collector-submit-{k}", daemon=True)
                for k in range(self.SUBMITTERS)
            ),
        ]
        for t in self._threads:
            t.start()
        log.info("collector listening for NetFlow v5/v9/IPFIX", extra={"listen": f"{self.host}:{self.port}"})

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._write_status()
        log.info("collector stopped", extra=self.status())

    @property
    def running(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    # -- status -------------------------------------------------------------------------------------

    def status(self) -> dict[str, int]:
        """Every counter: the decoder's (server.sources.flows.COUNTER_HELP) and the collector's."""
        with self._lock:
            out = self.decoder.counters.as_dict()
            out.update(self.counts)
        out["held_bytes"] = self.decoder.held_bytes
        out["flow_logs"] = self.inventory_flow_logs
        out["receive_buffer_bytes"] = self.receive_buffer
        out["inventory_time_ms"] = self.inventory_time_ms
        out["sessions"] = len(self.decoder.sessions)
        return out

    def health(self) -> tuple[bool, str]:
        """(serving, detail): serving while both threads run; the detail is the counters."""
        s = self.status()
        detail = " ".join(f"{k}={v}" for k, v in s.items())
        if not self.running:
            return False, f"collector not running{': ' + self.error if self.error else ''}; {detail}"
        return True, detail

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        doc = {
            "listen": f"{self.host}:{self.port}",
            "running": self.running,
            "time": time.time(),
            "pid": os.getpid(),
            "counters": self.status(),
            "help": {**COUNTER_HELP, **COLLECTOR_COUNTER_HELP},
        }
        tmp = self.status_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
            os.replace(tmp, self.status_path)
        except OSError:
            log.warning("cannot write the collector status file", extra={"path": str(self.status_path)})

    # -- receiving ----------------------------------------------------------------------------------

    def _inventory(self, now: float) -> None:
        gen = self._generation() if self._generation is not None else None
        if now - self._inventory_at < self.inventory_seconds and (
            gen == self._generation_seen or now - self._inventory_at < 0.05
        ):
            return  # flow logs changed by this server are seen at once, by another replica within a second
        self._inventory_at = now
        self._generation_seen = gen
        try:
            pairs = list(self._list_flow_logs())
        except Exception:  # noqa: BLE001 - keep the last good index
            log.exception("collector could not list flow logs; keeping the previous inventory")
            return
        by_account: dict[str, list] = {}
        for fl, resource in pairs:
            by_account.setdefault(fl.account_id, []).append((fl, resource))
        # An account whose flow logs and resources did not change keeps its index and its caches.
        old = self._indexes
        self._indexes = {
            account: old[account] if account in old and old[account].pairs == p else AccountIndex(p)
            for account, p in by_account.items()
        }
        self.inventory_flow_logs = sum(len(ix.flow_logs) for ix in self._indexes.values())
        self.inventory_time_ms = time.time_ns() // 1_000_000 - 1  # the listing started before this

    def _receive_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        recv = sock.recvfrom
        groups: dict[str, Group] = {}
        pending = 0
        first_at = 0.0
        empty = AccountIndex(())
        while not self._stop.is_set():
            try:
                data, addr = recv(65535)
            except socket.timeout:
                data = None
            except OSError:
                if self._stop.is_set():
                    break
                with self._lock:
                    self.counts["receive_errors"] += 1
                continue
            now = time.monotonic()
            self._inventory(now)
            if data is not None:
                try:
                    pending = self._take(data, addr, now, groups, empty, pending)
                except Exception:  # noqa: BLE001 - a bug must not stop the collector: count, log, go on
                    with self._lock:
                        self.counts["receive_errors"] += 1
                    if now >= self._error_logged + 60:
                        self._error_logged = now
                        log.exception("collector could not handle a datagram", extra={"exporter": addr[0]})
                if pending and not first_at:
                    first_at = now
            if pending and (pending >= self.batch_records or now - first_at >= self.batch_seconds):
                self._hand_over(groups, index_of=self._indexes)
                groups = {}
                pending = 0
                first_at = 0.0
        if groups:
            self._hand_over(groups, index_of=self._indexes)
        for _ in range(self.SUBMITTERS):  # one end marker each
            self._queue.put(None)

    def _take(
        self, data: bytes, addr: tuple, now: float, groups: dict[str, Group], empty: AccountIndex, pending: int
    ) -> int:
        """Decode one datagram and attribute its flows into `groups`; the records now pending.

        Templates are kept per transport session, the exporter's address and source port (RFC
        7011 section 10.3.1: a restarted exporter, on a new port, starts afresh, without the
        templates and sampling options of its previous life); accounts go by address."""
        decoder = self.decoder
        account = self.exporters.account(addr[0])
        with self._lock:
            if account is None:
                decoder.counters.datagrams += 1
                self.counts["unknown_exporter"] += 1
                return pending
            flows = decoder.decode(data, (addr[0], addr[1]), now)
        if not flows:
            return pending
        index = self._indexes.get(account, empty)
        missed = index.attribute(flows, groups) if index else len(flows)
        if missed:
            with self._lock:
                self.counts["unattributed"] += missed
        return sum(map(len, groups.values()))

    def _hand_over(self, groups: dict[str, Group], index_of: dict[str, AccountIndex]) -> None:
        batch = []
        for fid, group in groups.items():
            fl = next((ix.flow_logs[fid] for ix in index_of.values() if fid in ix.flow_logs), None)
            if fl is not None:
                batch.append((fl, group))
        while not self._stop.is_set():
            try:
                self._queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue
        self._queue.put(batch)  # stopping: the submit threads drain until the end marker

    # -- submitting ---------------------------------------------------------------------------------

    def _submit_loop(self, k: int) -> None:
        """Submit thread k (0 also writes the status file and the status log line)."""
        next_status = time.monotonic() + self.status_file_seconds
        next_log = time.monotonic() + self.status_log_seconds
        while True:
            try:
                batch = self._queue.get(timeout=min(0.5, self.status_file_seconds))
            except queue.Empty:
                batch = ()
            end = batch is None
            # Whatever queued up while the last submit was waiting for its commit goes in one
            # submit per flow log (fewer, larger spool commits: the pipeline's group commit).
            merged: dict[str, tuple[FlowLog, Group]] = {}
            size = 0
            while batch:
                for fl, group in batch:
                    into = merged.get(fl.id)
                    if into is None:
                        merged[fl.id] = (fl, group)
                    else:
                        into[1].extend(group)
                    size += len(group)
                if size >= self.MERGE_RECORDS:
                    break
                try:
                    batch = self._queue.get_nowait()
                except queue.Empty:
                    break
                if batch is None:
                    end = True
                    break
            for fl, group in merged.values():
                for i in range(0, len(group), MAX_BATCH_RECORDS):  # one spool batch each
                    self._ingest(
                        fl, group.flows[i : i + MAX_BATCH_RECORDS], group.directions[i : i + MAX_BATCH_RECORDS]
                    )
            if end:
                break
            if k:
                continue
            now = time.monotonic()
            if now >= next_status:
                next_status = now + self.status_file_seconds
                self._write_status()
            if now >= next_log:
                next_log = now + self.status_log_seconds
                log.info("collector status", extra=self.status())

    def _ingest(self, fl: FlowLog, flows: list, directions: bytes | bytearray) -> None:
        try:
            ok, bad, prepared = self._accept(fl, flows, bytes(directions))
            if ok:
                self._submit(ok, prepared)
        except Exception as e:  # noqa: BLE001 - a refused batch is counted, the collector goes on
            with self._lock:
                self.counts["dropped"] += len(flows)
            log.warning(
                "collector batch not spooled",
                extra={"flow_log_id": fl.id, "records": len(flows), "error": str(e)[:200]},
            )
            return
        with self._lock:
            self.counts["records"] += len(ok)
            self.counts["rejected"] += len(bad)
