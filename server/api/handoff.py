"""Thread hand-offs of the streaming RPCs: a generator run on a worker thread a few items ahead
of its consumer (Query's read-ahead, Tail's feed), so reading and encoding the next batch
overlaps with sending the current one (DuckDB, pyarrow and gRPC's transport work outside the GIL).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Generator
from concurrent.futures import Executor
from typing import Any, Callable, Iterator, Protocol


class Closable(Protocol):
    def close(self) -> None: ...


class Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead:
    """Runs a generator on a thread of `executor`, up to `depth` items ahead of its consumer:
    reading and encoding the next chunk overlaps with sending the current one (DuckDB, pyarrow and
    gRPC's transport all work outside the GIL). next_item() blocks: call it from a worker thread.
    close() stops the producer and waits until it has closed the generator (and so the store's
    cursor or point in time)."""

    _END = object()

    def __init__(self, gen: Iterator[Any], executor: Executor, depth: int = 1) -> None:
        self._gen = gen
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended = False
        self._done = executor.submit(self._run)

    def _run(self) -> None:
        try:
            for item in self._gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(Failed(e))
        finally:
            if isinstance(self._gen, Generator):  # the store's cursor or point in time
                self._gen.close()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        """The items, in order, on the consumer's thread (for chaining one read-ahead into another)."""
        while (item := self.next_item()) is not None:
            yield item

    def next_item(self):
        if self._ended:
            return None
        while True:
            try:
                item = self._queue.get(timeout=0.2)
                break
            except queue.Empty:
                # Closed while this thread waited (its coroutine was cancelled: the client went
                # away, or the stream timed out): end, or the thread would wait here for good.
                if self._stop.is_set():
                    self._ended = True
                    return None
        if item is self._END:
            self._ended = True
            return None
        if isinstance(item, Failed):
            self._ended = True
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._done.result()


class Feed:
    """Runs `produce` on a stream thread, up to `depth` items ahead of the coroutine that takes
    them with get(): e.g. Tail's next response is taken from the hub and encoded while the current
    one is sent, instead of one thread round trip (and GIL hand-over) per response. In order; an
    error of `produce` arrives after the items before it; `produce` returning None ends the feed.
    Uses one thread per feed. close() stops it; the caller then closes what `produce` reads,
    which wakes a producer blocked waiting for it.

    A stream pumps it with `async with Feed(..., source=session) as feed: async for item in feed:`:
    leaving the block (the end, an error, the client going away) closes the feed, then `source`."""

    def __init__(
        self, produce: Callable[[], Any], executor: Executor, depth: int = 4, *, source: Closable | None = None
    ) -> None:
        self._source = source
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._done = executor.submit(self._run, produce)

    def _hand_over(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (the server stopped)
            self._stop.set()

    def _run(self, produce: Callable[[], Any]) -> None:
        try:
            while not self._stop.is_set():
                while not self._slots.acquire(timeout=0.2):  # `depth` items not yet taken
                    if self._stop.is_set():
                        return
                item = produce()
                self._hand_over(item)
                if item is None:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the coroutine, which raises it
            self._hand_over(Failed(e))

    async def get(self) -> Any:
        item = await self._queue.get()
        self._slots.release()
        if isinstance(item, Failed):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()

    async def __aenter__(self) -> Feed:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        if self._source is not None:
            self._source.close()

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Any:
        item = await self.get()
        if item is None:
            raise StopAsyncIteration
        return item
