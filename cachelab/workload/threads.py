"""Threads that hand their first error back: one mechanism for every thread the lab runs.

Live traffic, watchers, samplers, racing readers and writers all have the same life:
start threads, let them work until done or until an Event says stop, join them, and
hand the exception that ended one back to the owner, who would otherwise never see it.
:class:`ThreadGroup` is that life, written once; :class:`BackgroundWorker` is a one-thread
loop built on it, and :func:`run_concurrently` a burst of requests on a group.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TypeVar

S = TypeVar("S", bound="StartedWith")
G = TypeVar("G", bound="ThreadGroup")
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


class ThreadGroup(StartedWith):
    """Runs each target on its own named daemon thread, and keeps the first error.

    The first exception a target raises is kept (later ones are dropped, never raised
    in its place), sets ``stopping`` so that the other targets can wind down, and is
    raised again by :meth:`stop` in the owner's thread, noted with the thread it came from.

    Args:
        targets: thread name -> what that thread runs.
        stopping: the Event the targets watch (a new one if not given); :meth:`stop`
            and the first error set it.
    """

    def __init__(self, targets: Mapping[str, Callable[[], object]], *,
                 stopping: threading.Event | None = None) -> None:
        self.stopping = stopping if stopping is not None else threading.Event()
        self.error: BaseException | None = None
        self._targets = dict(targets)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self: G) -> G:
        if self._threads:
            raise RuntimeError(f"{', '.join(self._targets)} already started")
        self._threads = [threading.Thread(target=self._guarded, args=(name, target),
                                          name=name, daemon=True)
                         for name, target in self._targets.items()]
        for thread in self._threads:
            thread.start()
        return self

    def _guarded(self, name: str, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:  # raised again by stop(), in the owner's thread
            with self._lock:
                if self.error is None:
                    if sys.version_info >= (3, 11):
                        exc.add_note(f"(raised in the thread {name!r})")
                    self.error = exc
            self.stopping.set()

    @property
    def running(self) -> bool:
        """Whether any thread is still running."""
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until every thread has ended, ``timeout_s`` at most; whether they all have."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not self.running

    def stop(self, timeout_s: float | None = 10.0) -> None:
        """Set ``stopping``, wait for every thread, and raise the first error, if any.

        Raises:
            RuntimeError: a thread is still running after ``timeout_s`` (and none failed).
        """
        self.stopping.set()
        ended = self.join(timeout_s)
        error, self.error = self.error, None
        if error is not None:
            raise error
        if not ended:
            alive = [t.name for t in self._threads if t.is_alive()]
            raise RuntimeError(f"{', '.join(alive)} did not stop within {timeout_s:g}s")


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
        self._stop = threading.Event()
        self._group: ThreadGroup | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._group is not None and self._group.running

    @property
    def error(self) -> BaseException | None:
        """What ended the thread, while it is not yet raised by ``stop``."""
        return None if self._group is None else self._group.error

    def start(self: W) -> W:
        if self._group is not None:
            raise RuntimeError(f"{self.thread_name} was already started")
        self._before_start()
        self._group = ThreadGroup({self.thread_name: self._work}, stopping=self._stop).start()
        return self

    def _before_start(self) -> None:
        """Set-up that must be done before ``start`` returns."""

    def _work(self) -> None:
        raise NotImplementedError

    def _after_stop(self) -> None:
        """Clean-up once the thread has ended (close clients, subscriptions)."""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to end, wait for it, and raise what ended it, if anything."""
        self._stop.set()
        if self._group is not None and not self._group.join(self.join_grace_s + timeout_s):
            # Still running: its clients stay open, _after_stop would pull them from under it.
            raise RuntimeError(f"{self.thread_name} did not stop within {timeout_s:g}s")
        self._after_stop()
        if self._group is not None:
            self._group.stop(0)


def run_concurrently(task: Callable[[int], object], *, workers: int, requests: int) -> float:
    """Run ``task(i)`` for every i in ``range(requests)`` on ``workers`` threads at once.

    The threads are released together by a barrier, so that the first requests really
    overlap (a surge, a stampede). Returns the wall-clock seconds from release to the last
    request done. The first exception a task raises stops the others taking new requests
    and is re-raised here.
    """
    barrier = threading.Barrier(workers + 1)
    next_index = itertools.count()

    def worker() -> None:
        barrier.wait()
        while not group.stopping.is_set():
            i = next(next_index)  # itertools.count is atomic under the GIL
            if i >= requests:
                return
            task(i)

    group = ThreadGroup({f"request worker {n}": worker for n in range(workers)}).start()
    barrier.wait()
    start = time.perf_counter()
    group.join()
    seconds = time.perf_counter() - start
    group.stop()
    return seconds
