"""The seeded shop database and ShopDatabase's counting and modelled latency."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachelab.shop.database import CATEGORIES, ShopDatabase, ShopSize, build_shop

SCALE = 0.05


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        dump = {t: conn.execute(f"SELECT * FROM [{t}] ORDER BY rowid").fetchall() for t in tables}
    conn.close()
    return dump


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[ShopDatabase]:
    path = tmp_path / "shop.db"
    db = ShopDatabase(path, latency_ms=0, size=build_shop(path, scale=SCALE, seed=3))
    yield db
    db.close()


def test_same_seed_gives_same_rows(tmp_path: Path) -> None:
    build_shop(tmp_path / "a.db", scale=SCALE, seed=11)
    build_shop(tmp_path / "b.db", scale=SCALE, seed=11)
    first = _dump(tmp_path / "a.db")
    assert first["users"]
    assert first == _dump(tmp_path / "b.db")


def test_different_seed_gives_different_rows(tmp_path: Path) -> None:
    build_shop(tmp_path / "a.db", scale=SCALE, seed=11)
    build_shop(tmp_path / "b.db", scale=SCALE, seed=12)
    first, second = _dump(tmp_path / "a.db"), _dump(tmp_path / "b.db")
    assert first.keys() == second.keys()
    assert first["users"] != second["users"]
    assert first["products"] != second["products"]


def test_rebuild_replaces_the_old_database(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    build_shop(path, scale=SCALE, seed=1)
    build_shop(path, scale=SCALE, seed=2)
    fresh = tmp_path / "fresh.db"
    build_shop(fresh, scale=SCALE, seed=2)
    assert _dump(path) == _dump(fresh)


@pytest.mark.parametrize("scale", [0.0001, 0.05, 0.3])
def test_table_sizes_follow_the_scale(tmp_path: Path, scale: float) -> None:
    path = tmp_path / "shop.db"
    size = build_shop(path, scale=scale, seed=5)
    assert size == ShopSize.at(scale)
    counts = {table: len(rows) for table, rows in _dump(path).items()}
    assert counts["users"] == counts["profiles"] == size.users
    assert counts["products"] == size.products
    assert counts["orders"] == size.orders
    assert counts["accounts"] == size.accounts
    assert counts["posts"] == size.posts
    assert counts["comments"] == size.comments
    assert counts["categories"] == len(CATEGORIES)
    assert size.orders <= counts["order_items"] <= 5 * size.orders


def test_shop_size_scales_and_never_drops_to_zero() -> None:
    assert ShopSize.at(1.0) == ShopSize(users=1000, products=200, orders=4000, accounts=100,
                                        posts=400, comments=1600)
    assert ShopSize.at(0.5).users == 500
    assert ShopSize.at(0.0) == ShopSize(1, 1, 1, 1, 1, 1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exactly_one_celebrity_the_most_followed(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "shop.db"
    build_shop(path, scale=0.5, seed=seed)
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        accounts = conn.execute("SELECT id, followers, celebrity FROM accounts").fetchall()
    conn.close()
    assert len(accounts) == ShopSize.at(0.5).accounts
    celebrities = [a for a in accounts if a["celebrity"]]
    assert len(celebrities) == 1
    assert celebrities[0]["followers"] == max(a["followers"] for a in accounts)


def test_every_query_and_execute_is_counted(shop: ShopDatabase) -> None:
    assert shop.queries == 0
    assert shop.query("SELECT count(*) AS n FROM users") == [{"n": shop.size.users}]
    assert shop.user_profile(1) is not None
    assert shop.user_profile(10**6) is None  # a query that finds nothing still counts
    assert shop.execute("UPDATE products SET stock = stock + 1 WHERE id = ?", [1]) == 1
    assert shop.queries == 4


def test_rows_is_not_counted(shop: ShopDatabase) -> None:
    rows = list(shop.rows("SELECT id FROM users WHERE id <= ?", [3]))
    assert rows == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert shop.queries == 0


def test_modelled_latency_is_paid_by_every_query(tmp_path: Path) -> None:
    """A lower bound only: each query sleeps latency_ms before it runs."""
    path = tmp_path / "shop.db"
    build_shop(path, scale=SCALE, seed=3)
    db = ShopDatabase(path, latency_ms=5)
    try:
        start = time.perf_counter()
        for user_id in range(1, 21):
            db.user_profile(user_id)
        elapsed_s = time.perf_counter() - start
    finally:
        db.close()
    assert db.queries == 20
    assert elapsed_s >= 20 * 5 / 1000


def test_update_profile_bumps_version_and_changes_bio(shop: ShopDatabase) -> None:
    before = shop.user_profile(2)
    assert before is not None and before["version"] == 1

    shop.update_profile(2, bio="likes caches")
    shop.update_profile(2, bio="likes fresh caches")

    after = shop.user_profile(2)
    assert after is not None
    assert after["version"] == 3
    assert after["bio"] == "likes fresh caches"
    assert shop.user_profile(3)["version"] == 1  # type: ignore[index]



def test_size_is_counted_when_not_given(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    built = build_shop(path, scale=SCALE, seed=3)
    db = ShopDatabase(path, latency_ms=0)
    assert db.size == built
    db.close()


def test_products_update_and_bump_their_version(shop: ShopDatabase) -> None:
    before = shop.product_details(1)
    assert before is not None and before["category"] in CATEGORIES
    shop.update_product(1, price_cents=999, stock=3)
    after = shop.product_now(1)
    assert after is not None
    assert (after["price_cents"], after["stock"], after["version"]) == (999, 3,
                                                                       before["version"] + 1)


def test_posted_comments_are_counted_and_listed_newest_first(shop: ShopDatabase) -> None:
    count = shop.comment_count(1)
    first = shop.post_comment(1, user_id=2, body="first")
    second = shop.post_comment(1, user_id=3, body="second")
    assert second > first
    assert shop.comment_count(1) == count + 2
    assert [c["body"] for c in shop.latest_comments(1, limit=2)] == ["second", "first"]


def test_celebrity_page(shop: ShopDatabase) -> None:
    celebrity = shop.celebrity()
    page = shop.account_page(celebrity["id"], posts=3)
    assert page is not None and page["handle"] == celebrity["handle"]
    assert len(page["posts"]) <= 3
    assert shop.account_page(10**6) is None
