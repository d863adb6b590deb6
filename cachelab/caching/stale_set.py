"""Cache-aside's stale-set race, reproduced on two real threads in a fixed order.

A reader misses and loads a profile; a writer updates the row and invalidates the key;
only then does the reader store what it loaded, a version the database no longer
holds. :func:`race` plays that order once against any of the caches in
:mod:`cachelab.caching.leases` and records what each thread did and saw;
:func:`race_all` plays it on many users and counts the stale entries left behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachelab.caching.leases import DoubleDeleteCache, NaiveCache
from cachelab.workload.threads import ThreadGroup


class ProfileDatabase(Protocol):
    """What the race needs of the shop database (counted reads, an update, the truth)."""

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]: ...
    def user_profile(self, user_id: int) -> dict[str, Any] | None: ...
    def profile_now(self, user_id: int) -> dict[str, Any] | None: ...
    def update_profile(self, user_id: int, *, bio: str) -> None: ...


@dataclass
class RaceTrial:
    """One reader-writer race on one profile, as the two threads saw it."""

    user_id: int
    steps: list[tuple[float, str, str]] = field(default_factory=list)  # (ms, actor, what)
    loaded_version: int = 0
    committed_version: int = 0
    stored: bool = False
    stale: bool = False
    next_read_fresh: bool = False


def race(cache: NaiveCache, db: ProfileDatabase, user_id: int, *, window_s: float,
         timeout_s: float = 10.0) -> RaceTrial:
    """Reader-load, writer-update-and-invalidate, reader-set, on two real threads.

    Events fix the order; after the writer is done the reader still waits ``window_s``,
    the rest of its load-to-set window, before it stores what it loaded.
    """
    trial = RaceTrial(user_id)
    loaded, written, abort = threading.Event(), threading.Event(), threading.Event()
    t0 = time.monotonic()

    def step(actor: str, what: str) -> None:
        trial.steps.append(((time.monotonic() - t0) * 1000, actor, what))

    def reader() -> None:
        value, ticket = cache.lookup(user_id)
        step("reader", "miss" if value is None else "hit (unexpected)")
        row = db.user_profile(user_id)
        trial.loaded_version = row["version"] if row else 0
        step("reader", f"loaded version {trial.loaded_version}")
        loaded.set()
        if not written.wait(timeout_s) or abort.wait(window_s):
            return
        trial.stored = cache.fill(user_id, ticket, row, trial.loaded_version)
        step("reader", f"stored version {trial.loaded_version}" if trial.stored
             else "store refused")

    def writer() -> None:
        if not loaded.wait(timeout_s) or abort.is_set():
            return
        db.update_profile(user_id, bio=f"updated during race at {time.monotonic():.6f}")
        trial.committed_version = db.query(
            "SELECT version FROM profiles WHERE user_id = ?", [user_id])[0]["version"]
        step("writer", f"committed version {trial.committed_version}")
        cache.invalidate(user_id, trial.committed_version)
        step("writer", "invalidated")
        written.set()

    # A thread's error sets abort, and so does leaving the block (Ctrl-C, a timeout):
    # the other thread stops waiting and returns; the first error is raised on the way out.
    with ThreadGroup({"race-reader": reader, "race-writer": writer}, stopping=abort) as threads:
        threads.join(timeout_s + window_s + 1)
    if not (loaded.is_set() and written.is_set()):
        raise TimeoutError(f"race on user {user_id} did not complete in {timeout_s:g}s")

    cache.settle()
    truth = db.profile_now(user_id)
    cached = cache.peek(user_id)
    trial.stale = cached is not None and cached != truth
    # The next ordinary read: does the cache now serve the committed row?
    value, ticket = cache.lookup(user_id)
    if value is None:
        value = db.user_profile(user_id)
        cache.fill(user_id, ticket, value, value["version"] if value else 0)
    trial.next_read_fresh = value == truth
    return trial


@dataclass
class RaceOutcome:
    """Every race one cache strategy ran, and what they left behind."""

    label: str
    trials: list[RaceTrial]
    cleared: int = 0  # double delete: stale sets the second delete removed

    @property
    def stale(self) -> int:
        return sum(t.stale for t in self.trials)

    @property
    def stored(self) -> int:
        return sum(t.stored for t in self.trials)

    @property
    def fresh(self) -> int:
        return sum(t.next_read_fresh for t in self.trials)


def race_all(cache: NaiveCache, db: ProfileDatabase, users: Iterable[int], *, label: str,
             window_s: float) -> RaceOutcome:
    """One :func:`race` per user, one after the other, against ``cache``."""
    outcome = RaceOutcome(label, [race(cache, db, user_id, window_s=window_s)
                                  for user_id in users])
    if isinstance(cache, DoubleDeleteCache):
        outcome.cleared = sum(removed for _, _, removed in cache.second_deletes)
    return outcome
