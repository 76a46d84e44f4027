"""Waiting on conditions in tests, never on the clock: a test polls for what it needs (the first
tail message, a delivered offset, a thread that returned) with a generous deadline, and fails
with a message saying what did not happen. A deadline is a bound on a hang, not a speed check:
speed belongs in bench/."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

DEADLINE_S = 30.0


def wait_for(
    probe: Callable[[], Any],
    what: str,
    timeout: float = DEADLINE_S,
    step: float = 0.01,
    *,
    until: Callable[[Any], Any] = bool,
    ignoring: tuple[type[BaseException], ...] = (),
    describe: Callable[[Any], str] | None = None,
) -> Any:
    """The first value of probe() that is truthy (or for which until(value) is): the one condition wait of
    the tests. probe() is called every `step` seconds; an exception of the `ignoring` types counts as "not yet"
    (a server still starting). AssertionError if none comes within `timeout`, saying what was awaited and
    what was last seen (the exception, or the value as describe(value) puts it, else its cut repr)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if until(value):
                return value
            last = describe(value) if describe else _shown(value)
        except ignoring as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}; last seen: {last}")
        time.sleep(step)  # the polling interval of the condition above


def poll(probe: Callable[[], Any], timeout: float, step: float = 0.01, *, until: Callable[[Any], Any] = bool) -> Any:
    """The first value of probe() that is truthy (or for which until(value) is), else its last value once
    `timeout` has passed: for a test that judges what came itself, e.g. that a ninth record did NOT come
    within 3 s (a wait that must succeed is wait_for, whose failure says what it waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value) or time.monotonic() >= deadline:
            return value
        time.sleep(step)  # the polling interval of the condition above


def _shown(value: Any, limit: int = 300) -> str:
    """A value in a failure message: its repr, cut at `limit` characters, with its length when it has one."""
    text = repr(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{text} ({len(value)} items)" if isinstance(value, (list, tuple, set, frozenset, dict)) else text


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
