"""The stale-set race on two real threads, against real Redis and the real shop database."""

from __future__ import annotations

from cachelab.caching.leases import DoubleDeleteCache, NaiveCache, VersionedCache
from cachelab.caching.stale_set import race, race_all
from cachelab.lab import Lab


def test_the_race_leaves_naive_cache_aside_stale_in_the_fixed_order(lab: Lab) -> None:
    db, client = lab.shop(), lab.redis()
    before = db.profile_now(1)
    assert before is not None
    trial = race(NaiveCache(client, namespace="naive", ttl_s=60), db, 1, window_s=0.01)
    assert [actor for _, actor, _ in trial.steps] == [
        "reader", "reader", "writer", "writer", "reader"]
    assert trial.loaded_version == before["version"] < trial.committed_version
    assert trial.stored and trial.stale and not trial.next_read_fresh


def test_race_all_counts_what_each_strategy_leaves_behind(lab: Lab) -> None:
    db, client = lab.shop(), lab.redis()
    versioned = race_all(VersionedCache(client, namespace="v", ttl_s=60), db, [1, 2, 3],
                         label="versioned", window_s=0.01)
    assert [t.user_id for t in versioned.trials] == [1, 2, 3]
    assert versioned.stale == versioned.stored == 0 and versioned.fresh == 3
    with DoubleDeleteCache(client, namespace="dd", ttl_s=60, delay_s=0.3) as cache:
        doubled = race_all(cache, db, [4, 5], label="double delete", window_s=0.01)
    assert doubled.stored == 2 and doubled.cleared == 2 and doubled.stale == 0
