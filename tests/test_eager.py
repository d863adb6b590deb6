"""Eager caching on a real redis-server and the real shop database: preload, write-through,
and what happens when Redis refuses or cannot take a write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cachelab.caching.eager import WriteThrough, preload
from cachelab.lab import Lab
from cachelab.shop.database import ShopDatabase


@pytest.fixture
def client(lab: Lab) -> redis.Redis:
    return lab.redis()


@pytest.fixture
def shop(lab: Lab) -> ShopDatabase:
    return lab.shop()


def _products(client: redis.Redis, shop: ShopDatabase, **kwargs: Any) -> WriteThrough[int]:
    return WriteThrough(client, namespace="product", db_read=shop.product_details,
                        db_write=shop.update_product, **kwargs)


def _catalogue(shop: ShopDatabase) -> dict[int, dict[str, Any] | None]:
    return {i: shop.product_now(i) for i in range(1, shop.size.products + 1)}


@contextmanager
def _refusing_writes(client: redis.Redis) -> Iterator[None]:
    """Redis over its memory limit with noeviction: writes get OOM, reads and DEL work."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        yield
    finally:
        client.config_set("maxmemory", 0)


def test_preload_writes_every_value_in_batches(client: redis.Redis) -> None:
    values: dict[int, dict[str, object] | None] = {i: {"id": i, "name": f"p{i}"}
                                                   for i in range(1, 26)}
    values[26] = None  # a row that does not exist is not cached

    assert preload(client, "item", values, batch_size=4) == 25

    assert client.dbsize() == 25
    assert all(json.loads(client.get(f"item:{i}") or "null") == values[i] for i in range(1, 26))
    assert {client.pttl(f"item:{i}") for i in range(1, 26)} == {-1}  # no TTL by default


def test_preload_with_a_ttl_sets_it_on_every_key(client: redis.Redis) -> None:
    preload(client, "item", {i: i for i in range(10)}, ttl_s=60)

    assert all(55_000 < client.pttl(f"item:{i}") <= 60_000 for i in range(10))
    with pytest.raises(ValueError):
        preload(client, "item", {1: 1}, ttl_s=0)


def test_preloaded_reads_never_reach_the_database(client: redis.Redis,
                                                  shop: ShopDatabase) -> None:
    products = _products(client, shop)
    catalogue = _catalogue(shop)
    assert products.preload(catalogue) == len(catalogue)

    q0 = shop.queries
    for product_id, row in catalogue.items():
        assert products.fetch(product_id) == (row, True)

    assert shop.queries == q0
    assert (products.stats.hits, products.stats.misses) == (len(catalogue), 0)


def test_a_miss_falls_back_to_the_database_and_refills(client: redis.Redis,
                                                       shop: ShopDatabase) -> None:
    products = _products(client, shop)

    q0 = shop.queries
    assert products.fetch(3) == (shop.product_now(3), False)
    assert products.fetch(3) == (shop.product_now(3), True)
    assert shop.queries - q0 == 1
    assert client.pttl(products.key(3)) == -1


def test_update_writes_the_database_then_the_cache(client: redis.Redis,
                                                   shop: ShopDatabase) -> None:
    products = _products(client, shop)
    products.preload(_catalogue(shop))
    old = shop.product_now(5)
    seen_in_cache_during_db_write: list[Any] = []

    def db_write(product_id: int, **fields: Any) -> None:
        seen_in_cache_during_db_write.append(products.peek(product_id))
        shop.update_product(product_id, **fields)

    products.db_write = db_write
    outcome = products.update(5, price_cents=1234, stock=7)

    new = shop.product_now(5)
    assert new is not None and old is not None
    assert (new["price_cents"], new["stock"], new["version"]) == (1234, 7, old["version"] + 1)
    assert seen_in_cache_during_db_write == [old]  # the database went first
    assert outcome.cached and outcome.error is None and outcome.value == new
    assert products.peek(5) == new
    assert products.fetch(5) == (new, True)  # read-after-write, from the cache
    stats = products.stats
    assert (stats.writes, stats.read_backs, stats.cache_writes,
            stats.cache_write_failures) == (1, 1, 1, 0)


def test_read_back_can_use_the_writers_own_connection(lab: Lab, client: redis.Redis,
                                                      shop: ShopDatabase) -> None:
    office = ShopDatabase(shop.path, latency_ms=0, size=shop.size)
    lab.callback(office.close)
    products = WriteThrough(client, namespace="product", db_read=shop.product_details,
                            read_back=office.product_details, db_write=office.update_product)

    q_shop, q_office = shop.queries, office.queries
    outcome = products.update(9, price_cents=999, stock=1)

    assert outcome.value == shop.product_now(9) == products.peek(9)
    assert (shop.queries - q_shop, office.queries - q_office) == (0, 2)


def test_a_refill_never_overwrites_a_newer_update(client: redis.Redis,
                                                  shop: ShopDatabase) -> None:
    """A reader loads the old row, a writer updates and caches the new one, then the
    reader's refill arrives: SET NX keeps the newer value."""
    products: WriteThrough[int] = WriteThrough(
        client, namespace="product", db_read=lambda i: racing_read(i),
        read_back=shop.product_details, db_write=shop.update_product)

    def racing_read(product_id: int) -> Any:
        old = shop.product_details(product_id)
        products.update(product_id, price_cents=4321, stock=3)  # lands while the read runs
        return old

    old_version = shop.product_now(11)["version"]  # type: ignore[index]
    value, hit = products.fetch(11)

    assert not hit and value["version"] == old_version  # the reader got the row it loaded
    assert products.peek(11) == shop.product_now(11)  # the cache kept the newer one
    assert products.peek(11)["version"] == old_version + 1


def test_updating_a_missing_row_removes_its_entry(client: redis.Redis,
                                                  shop: ShopDatabase) -> None:
    products = _products(client, shop)
    client.set(products.key(999_999), json.dumps({"id": 999_999}))

    outcome = products.update(999_999, price_cents=1, stock=1)

    assert outcome.cached and outcome.value is None
    assert not client.exists(products.key(999_999))


def test_a_refused_write_is_reported_and_the_old_entry_deleted(client: redis.Redis,
                                                               shop: ShopDatabase) -> None:
    products = _products(client, shop)
    products.preload(_catalogue(shop))

    with _refusing_writes(client):
        outcome = products.update(2, price_cents=555, stock=5)
        assert not outcome.cached
        assert outcome.error and outcome.error.startswith("OutOfMemoryError")
        assert outcome.entry_removed and not outcome.unsynced
        assert not client.exists(products.key(2))  # no old price left to serve
        assert products.stats.cache_write_failures == 1
        # The next read misses and gets the new row; its refill is refused and counted too.
        assert products.fetch(2) == (shop.product_now(2), False)
        assert products.stats.cache_write_failures == 2

    assert products.unsynced == frozenset()
    assert products.fetch(2) == (shop.product_now(2), False)
    assert products.fetch(2) == (shop.product_now(2), True)


def test_an_unreachable_redis_is_reported_and_its_reads_bypass_the_cache(
        lab: Lab, shop: ShopDatabase) -> None:
    server = lab.redis_server("doomed")
    # No retries and short timeouts: redis-py would otherwise back off for seconds.
    doomed = server.client(retry=Retry(NoBackoff(), 0), socket_connect_timeout=0.5,
                           socket_timeout=0.5)
    lab.callback(doomed.close)
    products = _products(doomed, shop)
    products.preload(_catalogue(shop))
    server.stop()

    outcome = products.update(4, price_cents=777, stock=2)

    new = shop.product_now(4)
    assert shop.product_now(4)["price_cents"] == 777  # type: ignore[index]
    assert not outcome.cached and outcome.value == new
    assert outcome.error and outcome.error.startswith("ConnectionError")
    assert outcome.unsynced and not outcome.entry_removed
    assert products.unsynced == {4}
    assert products.stats.cache_write_failures == 1
    # Redis may still hold the old row when it comes back: reads of 4 go to the database.
    assert products.fetch(4) == (new, False)
    assert products.stats.bypassed_reads == 1
    # Other reads are not hidden behind the database: a dead cache is an error.
    with pytest.raises(redis.ConnectionError):
        products.fetch(5)
    # Still down: nothing repaired, 4 stays unsynced.
    assert products.resync() == 0 and products.unsynced == {4}

    products.client = lab.redis("replacement")
    assert products.resync() == 1
    assert products.unsynced == frozenset() and products.stats.resynced == 1
    assert products.peek(4) == new
    assert products.fetch(4) == (new, True)
