"""Polling until something holds, with a timeout that says what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from cachelab.errors import ServerStartError


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str,
               interval_s: float = 0.01) -> None:
    """Poll ``condition`` until true; a topology that never converges is a start error."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # a node that is still starting or promoting: ask again
        if time.monotonic() > deadline:
            raise ServerStartError(f"{what} within {timeout_s:g}s")
        time.sleep(interval_s)
