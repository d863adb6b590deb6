"""Profile reads and edits played through a cache, every read compared with the database."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cachelab.caching.cache_aside import CacheAside
    from cachelab.shop.database import ShopDatabase


@dataclass
class EditOutcome:
    """What one play of the stream of profile reads and edits measured."""

    reads: int = 0
    updates: int = 0
    stale_reads: int = 0
    max_stale_age_s: float = 0.0
    first_reads_after_update: int = 0
    repopulations: int = 0  # first reads after an update that missed and returned new data
    db_queries: int = 0
    hits: int = 0
    example: list[object] = field(default_factory=list)  # the first stale read


def play_profile_edits(profiles: CacheAside[int], db: ShopDatabase, *, invalidate: bool,
                       operations: Iterable[int], update_ratio: float, rng: random.Random,
                       next_user: Callable[[], int]) -> EditOutcome:
    """Read or edit (``update_ratio``) a ``next_user()`` profile once per item of
    ``operations``; an edit deletes the cached entry only when ``invalidate``."""
    outcome, updated_at, awaiting_read = EditOutcome(), {}, set()
    q0 = db.queries
    for i in operations:
        user_id = next_user()
        if rng.random() < update_ratio:
            db.update_profile(user_id, bio=f"edited in operation {i}")
            if invalidate:
                profiles.invalidate(user_id)
            updated_at[user_id] = time.monotonic()
            awaiting_read.add(user_id)
            outcome.updates += 1
            continue
        profile, hit = profiles.fetch(user_id)
        truth = db.profile_now(user_id)
        outcome.reads += 1
        if profile != truth:
            outcome.stale_reads += 1
            age = time.monotonic() - updated_at.get(user_id, time.monotonic())
            outcome.max_stale_age_s = max(outcome.max_stale_age_s, age)
            if not outcome.example:
                outcome.example = [user_id, profile["version"], truth and truth["version"]]
        if user_id in awaiting_read:
            awaiting_read.discard(user_id)
            outcome.first_reads_after_update += 1
            outcome.repopulations += (not hit) and profile == truth
    outcome.db_queries = db.queries - q0
    outcome.hits = profiles.stats.hits
    return outcome
