"""Warming from a stream, the lock-protected loader and XFetch, on a real redis-server."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from cachelab.caching.warming import (
    LockedCache,
    StreamWatcher,
    Warmer,
    XFetchCache,
    xfetch_due,
)
from cachelab.lab import Lab
from cachelab.workload.measure import wait_for_expiry
from cachelab.workload.threads import run_concurrently


@pytest.fixture
def client(lab: Lab) -> redis.Redis:
    return lab.redis()


def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class SlowLoader:
    """A source of truth that takes ``delay_s`` per load and counts its calls."""

    def __init__(self, delay_s: float = 0.0, during: Callable[[], None] | None = None) -> None:
        self.delay_s = delay_s
        self.during = during
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, item: int) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            call = self.calls
        if self.during:
            self.during()
        time.sleep(self.delay_s)
        return {"id": item, "load": call}


class AlwaysDue(random.Random):
    """``1 - random()`` is 1e-12: ``-ln(u)`` is about 27.6, so any refresh test passes."""

    def random(self) -> float:
        return 1 - 1e-12


# ---------------------------------------------------------------------------- xfetch_due


@pytest.mark.parametrize(("remaining_s", "delta_s", "beta", "u", "due"), [
    (0.0, 0.01, 1.0, 1.0, True),  # at expiry every reader refreshes
    (0.001, 0.01, 1.0, 1.0, False),  # -ln(1) = 0: never before expiry
    (0.019, 0.01, 1.0, math.exp(-2), True),  # 2 * delta * beta >= remaining
    (0.021, 0.01, 1.0, math.exp(-2), False),
    (0.039, 0.01, 2.0, math.exp(-2), True),  # beta 2 doubles the reach
    (0.041, 0.01, 2.0, math.exp(-2), False),
    (1e-6, 10.0, 0.0, 1e-9, False),  # beta 0: no early refresh at all
])
def test_xfetch_due_follows_the_formula(remaining_s: float, delta_s: float, beta: float,
                                        u: float, due: bool) -> None:
    assert xfetch_due(remaining_s, delta_s, beta, u) is due


def test_xfetch_due_fires_with_probability_exp_of_minus_remaining_over_delta_beta() -> None:
    rng = random.Random(3)
    draws = 20_000
    # With remaining = delta * beta the chance is e**-1; with twice that, e**-2.
    for reach, expected in ((1.0, math.exp(-1)), (2.0, math.exp(-2))):
        fired = sum(xfetch_due(0.004 * reach, 0.002, 2.0, 1 - rng.random())
                    for _ in range(draws))
        assert fired / draws == pytest.approx(expected, abs=0.015)


@pytest.mark.parametrize("u", [0.0, -0.5, 1.5])
def test_xfetch_due_rejects_u_outside_zero_one(u: float) -> None:
    with pytest.raises(ValueError, match="u must be"):
        xfetch_due(1.0, 1.0, 1.0, u)


# ---------------------------------------------------------------------------- XFetchCache


def test_xfetch_stores_value_load_time_and_generation(client: redis.Redis) -> None:
    loader = SlowLoader(0.01)
    cache = XFetchCache(client, namespace="page", loader=loader, ttl_s=30)

    assert cache.fetch(7) == ({"id": 7, "load": 1}, False)

    entry = json.loads(client.get("page:7") or "null")
    assert entry["value"] == {"id": 7, "load": 1}
    assert entry["delta_ms"] >= 10  # the loader slept 10 ms
    assert entry["gen"] == 1 and client.get("page:7:gen") == "1"
    assert 0 < client.pttl("page:7") <= 30_000
    assert cache.loads_by_generation == {0: 1} and cache.loads_per_expiry() == {}


def test_xfetch_far_from_expiry_serves_without_loading(client: redis.Redis) -> None:
    loader = SlowLoader()
    cache = XFetchCache(client, namespace="page", loader=loader, ttl_s=60, beta=1.0,
                        rng=random.Random(1))

    results = [cache.fetch(1) for _ in range(300)]

    assert loader.calls == 1  # a load of microseconds is never due 60 s ahead
    assert all(hit for _, hit in results[1:])
    assert cache.stats.early_refreshes == 0


def test_xfetch_refreshes_early_and_keeps_the_entry_alive(client: redis.Redis) -> None:
    loader = SlowLoader(0.01)
    cache = XFetchCache(client, namespace="page", loader=loader, ttl_s=1, beta=10,
                        rng=AlwaysDue())
    cache.fetch(3)

    value, hit = cache.fetch(3)  # due at once: 10 ms * 10 * 27.6 is far more than 1 s

    assert (value, hit) == ({"id": 3, "load": 2}, True)
    assert cache.stats.early_refreshes == 1 and cache.stats.misses == 1  # only the first
    assert json.loads(client.get("page:3") or "null")["gen"] == 2
    assert cache.loads_per_expiry() == {1: 1}
    assert 0 < cache.refresh_leads_ms[0] <= 1000


def test_xfetch_with_lock_leaves_a_claimed_refresh_to_its_holder(client: redis.Redis) -> None:
    loader = SlowLoader(0.01)  # due at once, as above
    cache = XFetchCache(client, namespace="page", loader=loader, ttl_s=1, beta=10,
                        lock=True, rng=AlwaysDue())
    cache.fetch(3)
    client.set("page:3:lock:1", 1, px=5000)  # another reader is refreshing generation 1

    assert cache.fetch(3) == ({"id": 3, "load": 1}, True)  # the current value, no load
    assert loader.calls == 1 and cache.stats.refreshes_skipped == 1

    client.delete("page:3:lock:1")
    assert cache.fetch(3) == ({"id": 3, "load": 2}, True)  # now it refreshes itself


def test_a_miss_after_expiry_counts_against_the_expired_generation(
        client: redis.Redis) -> None:
    cache = XFetchCache(client, namespace="page", loader=SlowLoader(), ttl_s=0.05, beta=0)
    cache.fetch(5)
    assert wait_for_expiry(client, "page:5", timeout_s=5) is not None

    assert cache.fetch(5) == ({"id": 5, "load": 2}, False)
    assert cache.loads_per_expiry() == {1: 1}
    assert json.loads(client.get("page:5") or "null")["gen"] == 2


@pytest.mark.parametrize(("lock", "many"), [(False, True), (True, False)])
def test_concurrent_misses_stampede_unless_locked(client: redis.Redis, lock: bool,
                                                  many: bool) -> None:
    loader = SlowLoader(0.05)
    cache = XFetchCache(client, namespace=f"page-{lock}", loader=loader, ttl_s=30, lock=lock)
    values: list[Any] = [None] * 8

    def read(i: int) -> None:
        values[i] = cache.get(9)

    run_concurrently(read, workers=8, requests=8)

    assert (loader.calls > 1) is many
    assert lock is False or (loader.calls == 1 and cache.stats.waits == 7)
    assert all(v is not None and v["id"] == 9 for v in values)


# ---------------------------------------------------------------------------- LockedCache


def test_lock_loads_once_for_concurrent_misses(client: redis.Redis) -> None:
    loader = SlowLoader(0.05)
    cache = LockedCache(client, namespace="page", loader=loader, ttl_s=30)
    values: list[Any] = [None] * 16

    def read(i: int) -> None:
        values[i] = cache.get(4)

    run_concurrently(read, workers=16, requests=16)

    assert loader.calls == 1
    assert values == [{"id": 4, "load": 1}] * 16
    stats = cache.stats
    assert stats.hits + stats.misses == 16 and stats.waits == stats.misses - 1
    assert client.exists("page:4:lock") == 0  # released after the load
    assert 0 < client.pttl("page:4") <= 30_000


def test_a_crashed_holders_lock_expires_and_a_waiter_takes_over(client: redis.Redis) -> None:
    client.set("page:2:lock", "crashed", px=100)  # a holder that died before loading
    lock_during_load: list[str | None] = []
    cache = LockedCache(client, namespace="page", loader=SlowLoader(
        during=lambda: lock_during_load.append(client.get("page:2:lock"))), ttl_s=30)

    assert cache.fetch(2) == ({"id": 2, "load": 1}, False)

    assert cache.stats.takeovers == 1 and cache.stats.fallbacks == 0
    assert lock_during_load[0] not in (None, "crashed")  # it loaded under its own lock


def test_a_holder_that_outlived_its_lock_leaves_the_successors_lock(
        client: redis.Redis) -> None:
    def successor_takes_the_expired_lock() -> None:
        assert eventually(lambda: client.exists("page:6:lock") == 0)
        client.set("page:6:lock", "successor", px=10_000)

    cache = LockedCache(client, namespace="page", loader=SlowLoader(
        during=successor_takes_the_expired_lock), ttl_s=30, lock_ttl_ms=30)

    cache.fetch(6)

    assert client.get("page:6:lock") == "successor"


def test_waiting_for_a_lock_is_bounded(client: redis.Redis) -> None:
    client.set("page:8:lock", "stuck", px=60_000)  # a holder that never finishes
    loader = SlowLoader()
    cache = LockedCache(client, namespace="page", loader=loader, ttl_s=30, max_wait_ms=50)

    assert cache.fetch(8) == ({"id": 8, "load": 1}, False)
    assert cache.stats.fallbacks == 1 and loader.calls == 1
    assert client.get("page:8:lock") == "stuck"  # not ours to delete


@pytest.mark.parametrize("kwargs", [{"ttl_s": 0}, {"lock_ttl_ms": 0}, {"poll_ms": 0}])
def test_lock_rejects_non_positive_settings(kwargs: dict[str, Any]) -> None:
    settings = {"ttl_s": 1.0, **kwargs}
    with pytest.raises(ValueError, match="positive"):
        LockedCache(None, namespace="n", loader=str, **settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- warming


def test_the_watcher_warms_a_watched_accounts_page(lab: Lab, client: redis.Redis) -> None:
    shop = lab.shop()
    celebrity = int(shop.celebrity()["id"])
    other = 1 if celebrity != 1 else 2
    warmer = Warmer(client, namespace="page", loader=shop.account_page, ttl_s=60,
                    accounts={celebrity})

    with StreamWatcher(client, "posts", warmer.on_entry, block_ms=50) as watcher:
        client.xadd("posts", {"account_id": other, "post_id": 1})
        entry_id = client.xadd("posts", {"account_id": celebrity, "post_id": 2})
        assert eventually(lambda: len(warmer.records) == 1)
        assert watcher.running
    assert not watcher.running

    record = warmer.records[0]
    assert (record.entry_id, record.item) == (entry_id, celebrity)
    assert record.seen_ns <= record.loaded_ns <= record.written_ns
    assert json.loads(client.get(f"page:{celebrity}") or "null") == shop.account_page(celebrity)
    assert 0 < client.pttl(f"page:{celebrity}") <= 60_000
    assert (watcher.entries_seen, warmer.ignored) == (2, 1)
    assert client.exists(f"page:{other}") == 0


def test_the_watcher_reads_only_entries_added_after_start(client: redis.Redis) -> None:
    client.xadd("posts", {"account_id": 1})
    seen: list[str] = []

    with StreamWatcher(client, "posts", lambda entry_id, _: seen.append(entry_id),
                       block_ms=50):
        new = client.xadd("posts", {"account_id": 2})
        # Entries arrive in order: had the old one been read, it would come first.
        assert eventually(lambda: bool(seen))

    assert seen == [new]


def test_a_handler_error_ends_the_watcher_and_is_raised_by_stop(client: redis.Redis) -> None:
    def broken(entry_id: str, fields: dict[str, str]) -> None:
        raise ValueError(f"cannot warm {fields}")

    watcher = StreamWatcher(client, "posts", broken, block_ms=50).start()
    client.xadd("posts", {"account_id": 3})
    assert eventually(lambda: not watcher.running)

    with pytest.raises(ValueError, match="cannot warm"):
        watcher.stop()
    watcher.stop()  # stopping again is harmless, and raises nothing twice


def test_a_watcher_starts_once_and_needs_a_positive_block(client: redis.Redis) -> None:
    watcher = StreamWatcher(client, "posts", lambda *_: None, block_ms=20).start()
    with pytest.raises(RuntimeError, match="already started"):
        watcher.start()
    watcher.stop()
    assert not watcher.running
    with pytest.raises(ValueError, match="block forever"):
        StreamWatcher(client, "posts", lambda *_: None, block_ms=0)
