"""Waiting on conditions in tests, never on the clock: a test polls for what it needs (the first
tail message, a delivered offset, a thread that returned) with a generous deadline, and fails
with a message saying what did not happen. A deadline is a bound on a hang, not a speed check:
speed belongs in bench/."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

DEADLINE_S = 30.0


def wait_for(cond: Callable[[], Any], what: str, timeout: float = DEADLINE_S, step: float = 0.01) -> Any:
    """cond()'s first truthy value; AssertionError naming `what` if none comes within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(step)  # the polling interval of the condition above


def finishes(fn: Callable[..., Any], *args: Any, what: str, timeout: float = DEADLINE_S) -> Any:
    """fn(*args)'s result, run on a thread; AssertionError naming `what` if it has not returned
    within `timeout` (a hang), re-raising what fn raised."""
    out: list[Any] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn(*args))
        except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
            err.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"{what} did not return within {timeout:.0f} s")
    if err:
        raise err[0]
    return out[0]
