"""A daemon thread that works until asked to stop: live traffic, watchers, samplers.

Every live workload in the lab has the same life: start a thread, let it loop until an
Event says stop, join it, and hand any exception that ended it back to the owner, who
would otherwise never see it. This is that life, written once.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TypeVar

S = TypeVar("S", bound="StartedWith")
W = TypeVar("W", bound="BackgroundWorker")


class StartedWith:
    """``with x:`` is ``x.start()`` then ``x.stop()``; an error of ``stop`` is raised only
    when no other exception is already on its way out, so it never hides the first."""

    def start(self: S) -> S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        except Exception:
            if exc is None:
                raise


class BackgroundWorker(StartedWith):
    """Runs :meth:`_work` in one daemon thread from :meth:`start` until :meth:`stop`.

    Subclasses loop while ``not self.stopping`` (or sleep with ``self._stop.wait``),
    prepare in :meth:`_before_start` (in the owner's thread, so that what it sets up is
    ready when ``start`` returns) and clean up in :meth:`_after_stop`. An exception that
    ends the thread is raised again by ``stop``; leaving a ``with`` block that is already
    raising never hides that first error.
    """

    #: Extra seconds ``stop`` waits, e.g. for a blocking read already in flight.
    join_grace_s = 0.0

    def __init__(self, name: str) -> None:
        self.thread_name = name
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self: W) -> W:
        if self._thread is not None:
            raise RuntimeError(f"{self.thread_name} was already started")
        self._before_start()
        self._thread = threading.Thread(target=self._guarded, name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def _before_start(self) -> None:
        """Set-up that must be done before ``start`` returns."""

    def _work(self) -> None:
        raise NotImplementedError

    def _after_stop(self) -> None:
        """Clean-up once the thread has ended (close clients, subscriptions)."""

    def _guarded(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # raised again by stop(), in the owner's thread
            self.error = exc

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to end, wait for it, and raise what ended it, if anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.join_grace_s + timeout_s)
            if self._thread.is_alive():
                raise RuntimeError(f"{self.thread_name} did not stop within {timeout_s:g}s")
        self._after_stop()
        error, self.error = self.error, None
        if error is not None:
            raise error

