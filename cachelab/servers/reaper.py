"""The last line of defence: what this process started and did not stop, it stops at exit.

Every server, container and child process registers here when it starts and leaves when
it is stopped; one atexit hook stops whatever is still registered, the last started
first. A process killed with SIGKILL runs no atexit hook: for local processes the
parent-death signal (:mod:`cachelab.servers.spawn`) covers that case, for containers
``cachelab doctor --clean``.
"""

from __future__ import annotations

import atexit
import subprocess
import threading
from collections.abc import Callable

#: A stop function (called with no arguments), or a process to kill outright.
Stoppable = Callable[[], object] | subprocess.Popen[bytes]

_LOCK = threading.Lock()
# A dict as an ordered set: registration order is start order.
_REGISTERED: dict[Stoppable, None] = {}


def register(what: Stoppable) -> None:
    """Stop ``what`` at exit unless it is unregistered first (a bound method counts once)."""
    with _LOCK:
        _REGISTERED[what] = None


def unregister(what: Stoppable) -> None:
    """``what`` was stopped: forget it (harmless when it was never registered)."""
    with _LOCK:
        _REGISTERED.pop(what, None)


def reap() -> list[str]:
    """Stop everything still registered, the last started first; returns what it stopped.

    Runs at exit; a test calls it to find what a test left running.
    """
    with _LOCK:  # stop functions unregister themselves: not under the lock
        left = list(_REGISTERED)
        _REGISTERED.clear()
    for what in reversed(left):
        try:
            if isinstance(what, subprocess.Popen):
                if what.poll() is None:
                    what.kill()
                    what.wait()
            else:
                what()
        except Exception:  # e.g. the Docker engine is gone: doctor --clean remains
            pass  # at exit there is nobody to tell, and the others must still be stopped
    return [repr(getattr(what, "__self__", what)) for what in left]


atexit.register(reap)
