"""Client processes: the benchmark's gRPC clients run here, never in the process that measures the
server, so client work shows up as what it is (another process on the same 2 cores).

A Worker is a `spawn`ed Python process running `_serve`, which executes commands sent over a
pipe. Times are time.monotonic() values: CLOCK_MONOTONIC is system-wide on Linux, so times taken
in different processes compare directly.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from typing import Any

_CTX = mp.get_context("spawn")


class Worker:
    def __init__(self, name: str = "client") -> None:
        self._conn, child = _CTX.Pipe()
        self.proc = _CTX.Process(target=_serve, args=(child,), name=f"bench-{name}", daemon=True)
        self.proc.start()
        child.close()

    def call(self, cmd: str, timeout: float | None = None, **kw: Any) -> Any:
        self.send(cmd, **kw)
        return self.recv(timeout)

    def send(self, cmd: str, **kw: Any) -> None:
        self._conn.send((cmd, kw))

    def recv(self, timeout: float | None = None) -> Any:
        if timeout is not None and not self._conn.poll(timeout):
            raise TimeoutError("client worker did not answer in time")
        ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"client worker failed: {value}")
        return value

    def poll(self, timeout: float = 0) -> bool:
        return self._conn.poll(timeout)

    def close(self) -> None:
        try:
            self._conn.send(("exit", {}))
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _serve(conn) -> None:
    import traceback

    state: dict[str, Any] = {}
    while True:
        try:
            cmd, kw = conn.recv()
        except EOFError:
            return
        if cmd == "exit":
            return
        try:
            result = _COMMANDS[cmd](state, **kw)
            conn.send((True, result))
        except Exception:  # noqa: BLE001 - reported to the parent
            conn.send((False, traceback.format_exc()))


def _channel(address: str):
    import grpc

    from bench.common import GRPC_OPTIONS

    ch = grpc.insecure_channel(address, options=GRPC_OPTIONS)
    grpc.channel_ready_future(ch).result(timeout=30)
    return ch


# -- ingest ----------------------------------------------------------------------------------------


def _load_frames(state, path: str) -> int:
    from bench.dataset import read_frames

    state["frames"] = read_frames(path)
    return len(state["frames"])


def _ingest(state, address: str, streams: int, msgs_per_call: int, rate_msgs: float = 0.0) -> dict:
    """Send the loaded IngestRequest frames over `streams` concurrent streams, in Ingest calls of
    `msgs_per_call` messages, as fast as possible (or at rate_msgs messages/s in total).
    Returns when every call is acknowledged: the server acknowledges a call once all its records
    are durable."""
    from bench.common import MD
    from flowlog.v1 import ingest_pb2

    frames: list[bytes] = state["frames"]
    ch = _channel(address)
    # Pre-serialised requests: the client costs nothing but the transport.
    call = ch.stream_unary(
        "/flowlog.v1.IngestService/Ingest",
        request_serializer=None,
        response_deserializer=ingest_pb2.IngestResponse.FromString,
    )
    per_stream = [frames[i::streams] for i in range(streams)]
    acks: list[tuple[float, float, int, int]] = []  # (sent, acked, messages, first message index) per call
    totals = {"accepted": 0, "rejected": 0, "first_rejection": ""}
    lock = threading.Lock()
    errors: list[str] = []
    t0 = time.monotonic()
    wall_t0 = time.time()
    interval = streams / rate_msgs if rate_msgs else 0.0

    def run(mine: list[bytes], k: int) -> None:
        try:
            nxt = t0 + k * (interval / streams if interval else 0)
            for i in range(0, len(mine), msgs_per_call):
                part = mine[i : i + msgs_per_call]
                if interval:
                    now = time.monotonic()
                    if nxt > now:
                        time.sleep(nxt - now)
                    nxt += interval * len(part)
                sent = time.monotonic()
                resp = call(iter(part), metadata=MD, timeout=600)
                acked = time.monotonic()
                with lock:
                    acks.append((sent, acked, len(part), k + i * streams))
                    totals["accepted"] += resp.accepted
                    totals["rejected"] += resp.rejected
                    if resp.rejections and not totals["first_rejection"]:
                        rj = resp.rejections[0]
                        totals["first_rejection"] = f"{rj.field}: {rj.reason}"
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(m, k)) for k, m in enumerate(per_stream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1 = time.monotonic()
    ch.close()
    if errors:
        raise RuntimeError(errors[0])
    return {"t0": t0, "wall_t0": wall_t0, "t_acked": t1, "acks": acks, **totals}


# -- query -----------------------------------------------------------------------------------------


def _query(state, address: str, request: bytes, reps: int) -> list[tuple[float, float, int, int]]:
    """Run the (serialised) QueryRequest `reps` times: (first batch s, completion s, records,
    matched) per run."""
    from bench.common import MD
    from flowlog.v1 import query_pb2

    ch = state.get(("ch", address))
    if ch is None:
        ch = state[("ch", address)] = _channel(address)
    call = ch.unary_stream(
        "/flowlog.v1.QueryService/Query",
        request_serializer=None,
        response_deserializer=query_pb2.QueryResponse.FromString,
    )
    out = []
    for _ in range(reps):
        t0 = time.monotonic()
        first = None
        n = 0
        matched = -1
        for resp in call(request, metadata=MD, timeout=600):
            if resp.HasField("batch"):
                if first is None:
                    first = time.monotonic()
                n += len(resp.batch.records)
            else:
                matched = resp.summary.matched
        t1 = time.monotonic()
        out.append(((first or t1) - t0, t1 - t0, n, matched))
    return out


# -- tail ------------------------------------------------------------------------------------------


def _tail_start(
    state, address: str, tails: int, request: bytes, base_ms: int, settle: float = 0.5, shared: bool = False
) -> str:
    """Open `tails` Tail streams (grpc.aio, one event loop thread; each on its own connection, or
    all on one when `shared`) and record, per event, its arrival time and the range of message
    numbers it covers (start_time - base_ms of its first and last record: the tail benchmark
    gives every record of message k start_time = base_ms + k)."""
    import asyncio

    import grpc

    from bench.common import GRPC_OPTIONS, MD
    from flowlog.v1 import query_pb2

    stats: dict[str, Any] = {
        "events": [[] for _ in range(tails)],
        "records": [0] * tails,
        "errors": [],
        "opened": 0,
        "heartbeats": 0,
    }
    state["tail_stats"] = stats
    ready = threading.Event()
    stop_evt: dict[str, Any] = {}

    async def one(stub, k: int, started) -> None:
        call = stub(request, metadata=MD)
        ev = stats["events"][k]
        mono = time.monotonic
        try:
            first = True
            async for resp in call:
                if first:
                    first = False
                if resp.HasField("batch"):
                    recs = resp.batch.records
                    n = len(recs)
                    if n:
                        a = recs[0].start_time
                        b = recs[n - 1].start_time
                        ev.append(
                            (
                                mono(),
                                a.seconds * 1000 + a.nanos // 1_000_000 - base_ms,
                                b.seconds * 1000 + b.nanos // 1_000_000 - base_ms,
                                n,
                            )
                        )
                        stats["records"][k] += n
                else:
                    stats["heartbeats"] += 1
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                stats["errors"].append(f"{e.code().name}: {e.details()[:200]}")

    async def main() -> None:
        # One connection per tail, as separate subscribers have (a channel of its own, not the
        # process-wide subchannel pool), or all of them multiplexed on one.
        opts = GRPC_OPTIONS if shared else GRPC_OPTIONS + [("grpc.use_local_subchannel_pool", 1)]
        chans = [grpc.aio.insecure_channel(address, options=opts) for _ in range(1 if shared else tails)]
        try:
            for c in chans:
                await c.channel_ready()
            stubs = [
                c.unary_stream(
                    "/flowlog.v1.QueryService/Tail",
                    request_serializer=None,
                    response_deserializer=query_pb2.TailResponse.FromString,
                )
                for c in chans
            ]
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            stop_evt["set"] = lambda: loop.call_soon_threadsafe(stop.set)
            tasks = [asyncio.create_task(one(stubs[k % len(stubs)], k, None)) for k in range(tails)]
            # Tail streams start streaming at the head; give the server a moment to subscribe them.
            if settle:
                await asyncio.sleep(settle + tails * 0.01)
            ready.set()
            await stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for c in chans:
                await c.close()

    th = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    th.start()
    state["tail_thread"] = th
    state["tail_stop"] = stop_evt
    if not ready.wait(60):
        raise RuntimeError("tails did not start")
    return "ok"


def _tail_records(state) -> list[int]:
    return list(state["tail_stats"]["records"])


def _tail_progress(state) -> tuple[list[int], int]:
    s = state["tail_stats"]
    return list(s["records"]), len(s["errors"])


def _tail_stop(state) -> dict:
    state["tail_stop"]["set"]()
    state["tail_thread"].join(30)
    s = state.pop("tail_stats")
    return {"events": s["events"], "records": s["records"], "errors": s["errors"], "heartbeats": s["heartbeats"]}


_COMMANDS = {
    "load_frames": _load_frames,
    "ingest": _ingest,
    "query": _query,
    "tail_start": _tail_start,
    "tail_records": _tail_records,
    "tail_progress": _tail_progress,
    "tail_stop": _tail_stop,
}
