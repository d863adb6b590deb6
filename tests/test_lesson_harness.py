"""The mechanics that left the exercise files, on real redis-servers and a real shop."""

from __future__ import annotations

import random

import pytest

from cachelab.caching import CacheAside
from cachelab.lab import Lab
from cachelab.shop.writes import WRITE_KINDS, apply_write, write_stream
from cachelab.workload.redis_info import key_values, memory_usage, read_values
from cachelab.workload.restart import Restart, Restarter, WindowedStart


def test_a_restart_is_a_new_empty_process_unless_the_snapshot_goes_back(lab: Lab) -> None:
    restarter = lab.closing(Restarter(lab.own_redis_server("cache", dbfilename="dump.rdb")))
    restarter.client.mset({"user:1": "a", "user:2": "b", "other": "c"})
    saved = key_values(restarter.client, "user:*")
    restarter.set_snapshot_aside()

    plain = restarter.restart()
    from_rdb = restarter.restart(with_snapshot=True)

    assert saved == {"user:1": "a", "user:2": "b"}
    assert plain.new_process and not plain.had_dump and plain.keys == 0
    assert from_rdb.new_process and from_rdb.had_dump and from_rdb.keys == 3
    assert from_rdb.old_run_id == plain.new_run_id
    assert key_values(restarter.client, "user:*") == saved


def test_a_windowed_start_counts_hits_and_database_reads_per_window(lab: Lab) -> None:
    db = lab.shop()
    profiles = CacheAside(lab.redis(), namespace="user", loader=db.user_profile, ttl_s=60)
    start = WindowedStart("cold", Restart(0.1, "old", "new", had_dump=False, keys=0))
    stream = [1, 2, 1, 2, 3, 1, 3]

    start.play(profiles.fetch, stream, range(0, len(stream), 3), 3, lambda: db.queries)

    assert start.requests == [3, 3, 1]
    assert start.hits == [1, 2, 1]
    assert start.db_reads == [2, 1, 0]
    assert start.window_ratio(1) == 2 / 3 and start.hit_ratio == 4 / 7


def test_every_kind_of_shop_write_changes_rows(lab: Lab) -> None:
    db = lab.shop()
    rng = random.Random(3)
    before = db.rows("SELECT COUNT(*) AS n FROM comments")[0]["n"]

    changed = {kind: apply_write(db, kind, rng) for kind in WRITE_KINDS}

    assert all(rows >= 1 for rows in changed.values()), changed
    assert db.rows("SELECT COUNT(*) AS n FROM comments")[0]["n"] == before + 1
    with pytest.raises(ValueError, match="unknown write"):
        apply_write(db, "drop table", rng)


def test_the_write_stream_holds_every_kind_among_the_reads() -> None:
    stream = write_stream(random.Random(1), operations=50, write_ratio=0.3)

    assert len(stream) == 50 and stream.count(None) == 35
    assert set(WRITE_KINDS) <= set(stream)
    assert stream == write_stream(random.Random(1), operations=50, write_ratio=0.3)


def test_memory_usage_reads_a_full_instance_and_its_evictions(lab: Lab) -> None:
    full = lab.closing(lab.redis_server("full", maxmemory="3mb",
                                        maxmemory_policy="allkeys-lru").client())
    unlimited = lab.closing(lab.redis_server("unlimited").client())
    assert memory_usage(full).evicted_keys == 0 and memory_usage(unlimited).used_ratio == 0.0
    for batch in range(40):  # about 4 MB into 3 MB
        full.mset({f"k:{batch}:{i}": "v" * 1000 for i in range(100)})

    usage = memory_usage(full)
    assert usage.keys == full.dbsize() < 4000 and usage.evicted_keys > 0
    assert 0.9 < usage.used_ratio <= 1.05 and 2.5 < usage.used_mb < 3.2


def test_read_values_reads_every_key_in_batches(lab: Lab) -> None:
    client = lab.redis()
    client.mset({f"k:{i}": str(i) for i in range(7)})
    keys = [f"k:{i}" for i in range(7)] + ["absent"]
    assert read_values(client, keys, batch=3) == {**{f"k:{i}": str(i) for i in range(7)},
                                                  "absent": None}
