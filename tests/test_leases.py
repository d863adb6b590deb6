"""The stale-set race and its fixes, on a real redis-server, step by step."""

from __future__ import annotations

import time

import pytest
import redis

from cachelab.caching.leases import DoubleDeleteCache, LeaseCache, NaiveCache, VersionedCache
from cachelab.lab import Lab

OLD = {"id": 1, "bio": "old", "version": 1}
NEW = {"id": 1, "bio": "new", "version": 2}


@pytest.fixture
def client(lab: Lab) -> redis.Redis:
    return lab.redis()


def _race(cache: NaiveCache) -> bool:
    """Reader misses and loads OLD; writer commits NEW and invalidates; reader stores OLD."""
    value, ticket = cache.lookup(1)
    assert value is None
    cache.invalidate(1, NEW["version"])
    return cache.fill(1, ticket, OLD, OLD["version"])


def test_naive_cache_aside_keeps_the_stale_value(client: redis.Redis) -> None:
    cache = NaiveCache(client, namespace="p", ttl_s=60)
    assert _race(cache) is True
    assert cache.peek(1) == OLD
    assert cache.lookup(1)[0] == OLD  # the next reader is served the old row: a hit


def test_a_delete_voids_the_lease_and_the_next_reader_fills(client: redis.Redis) -> None:
    cache = LeaseCache(client, namespace="p", ttl_s=60)
    assert _race(cache) is False
    assert cache.peek(1) is None and client.exists(cache.lease_key(1)) == 0

    value, token = cache.lookup(1)
    assert value is None and token
    assert cache.fill(1, token, NEW, 2) is True
    assert cache.lookup(1) == (NEW, None)
    assert client.exists(cache.lease_key(1)) == 0  # a successful fill releases the lease
    assert 0 < client.pttl(cache.key(1)) <= 60_000


def test_only_one_reader_holds_a_lease(client: redis.Redis) -> None:
    cache = LeaseCache(client, namespace="p", ttl_s=60)
    _, first = cache.lookup(1)
    _, second = cache.lookup(1)
    assert first and second is None
    assert cache.fill(1, second, OLD, 1) is False
    assert cache.fill(1, "forged-token", OLD, 1) is False
    assert cache.fill(1, first, OLD, 1) is True
    assert cache.fill(1, first, NEW, 2) is False  # a token is good for one fill


def test_an_expired_lease_lets_another_reader_fill(client: redis.Redis) -> None:
    cache = LeaseCache(client, namespace="p", ttl_s=60, lease_ttl_s=0.05)
    _, crashed = cache.lookup(1)
    time.sleep(0.15)
    _, token = cache.lookup(1)
    assert token and token != crashed
    assert cache.fill(1, crashed, OLD, 1) is False
    assert cache.fill(1, token, NEW, 2) is True


def test_a_tombstone_refuses_the_older_version(client: redis.Redis) -> None:
    cache = VersionedCache(client, namespace="p", ttl_s=60, tombstone_ttl_s=30)
    assert _race(cache) is False
    assert cache.peek(1) is None and cache.version(1) == 2
    assert 0 < client.pttl(cache.key(1)) <= 30_000
    # The version the tombstone announced is welcome; then it is the entry.
    assert cache.fill(1, None, NEW, 2) is True
    assert cache.lookup(1) == (NEW, None) and cache.version(1) == 2
    assert cache.fill(1, None, NEW, 2) is False  # the same version is already there
    assert cache.fill(1, None, OLD, 1) is False


def test_versions_only_move_forward(client: redis.Redis) -> None:
    cache = VersionedCache(client, namespace="p", ttl_s=60)
    assert cache.fill(1, None, OLD, 1) is True
    assert cache.fill(1, None, NEW, 2) is True
    assert cache.fill(1, None, OLD, 1) is False
    cache.invalidate(1, 1)  # a late, older invalidation does not roll the version back
    assert cache.lookup(1)[0] == NEW and cache.version(1) == 2
    cache.invalidate(1, 3)
    assert cache.peek(1) is None and cache.version(1) == 3
    assert cache.fill(1, None, NEW, 2) is False


def test_the_second_delete_clears_a_stale_set_inside_its_delay(client: redis.Redis) -> None:
    with DoubleDeleteCache(client, namespace="p", ttl_s=60, delay_s=0.2) as cache:
        assert _race(cache) is True
        assert cache.peek(1) == OLD  # served stale until the second delete
        cache.settle()
        assert cache.peek(1) is None
        assert [(key, removed) for key, _, removed in cache.second_deletes] == [("p:1", True)]


def test_a_set_after_the_second_delete_stays_stale(client: redis.Redis) -> None:
    with DoubleDeleteCache(client, namespace="p", ttl_s=60, delay_s=0.0) as cache:
        _, ticket = cache.lookup(1)
        cache.invalidate(1, 2)
        cache.settle()
        assert cache.fill(1, ticket, OLD, 1) is True
        assert cache.peek(1) == OLD
        assert [removed for _, _, removed in cache.second_deletes] == [False]


def test_close_cancels_pending_second_deletes(client: redis.Redis) -> None:
    cache = DoubleDeleteCache(client, namespace="p", ttl_s=60, delay_s=30)
    cache.invalidate(1, 2)
    client.set("p:1", "written after the first delete")
    cache.close()  # joins the timer thread: it returns because the wait was cancelled
    assert client.get("p:1") == "written after the first delete"
    assert cache.second_deletes == []
