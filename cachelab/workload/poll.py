"""Polling until something holds, with a timeout that says what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, overload

from cachelab.errors import WaitTimeout

T = TypeVar("T")


@overload
def poll_until(condition: Callable[[], T | None], *, timeout_s: float, what: str,
               interval_s: float = ..., error: type[Exception] = ...,
               ignoring: tuple[type[Exception], ...] = ...) -> T: ...


@overload
def poll_until(condition: Callable[[], T | None], *, timeout_s: float, what: str,
               interval_s: float = ..., error: None,
               ignoring: tuple[type[Exception], ...] = ...) -> T | None: ...


def poll_until(condition: Callable[[], T | None], *, timeout_s: float, what: str,
               interval_s: float = 0.01, error: type[Exception] | None = WaitTimeout,
               ignoring: tuple[type[Exception], ...] = ()) -> T | None:
    """Call ``condition`` every ``interval_s`` until it returns something true; return that.

    Args:
        condition: returns a true value (``True``, or what was awaited) once it holds.
        timeout_s: how long to keep asking.
        what: what is awaited, for the error ("replica-1 in sync with the primary").
        interval_s: the pause between two calls.
        error: raised, with a message naming ``what`` and ``timeout_s``, when the time
            is up; ``None`` returns ``None`` instead, for callers to whom a timeout is
            a measurement (a key that never expired), not a failure.
        ignoring: exceptions of ``condition`` that mean "not yet" (a node still starting).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if value := condition():
                return value
        except ignoring:
            pass
        if time.monotonic() > deadline:
            if error is None:
                return None
            raise error(f"gave up waiting for {what} after {timeout_s:g}s")
        time.sleep(interval_s)
