"""Change capture, the dependency index and the notifier, on real redis-server and SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
import redis

from cachelab.caching.dependencies import (
    Change,
    ChangeNotifier,
    DependencyIndex,
    DependentQueryCache,
    install_change_capture,
    read_changes,
    table_rule,
    table_tags,
)
from cachelab.lab import Lab
from cachelab.shop.database import REPORT_SQL, ShopDatabase
from cachelab.shop.report_dependencies import REPORT_CONTEXT, report_rule, report_tags
from exercises.e13_cache_dependencies import DEPENDENT_TABLES, UNRELATED_TABLES


@pytest.fixture
def db(lab: Lab) -> ShopDatabase:
    shop = lab.shop()
    install_change_capture(shop.path, DEPENDENT_TABLES + UNRELATED_TABLES, REPORT_CONTEXT)
    return shop


@pytest.fixture
def conn(db: ShopDatabase) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(db.path, timeout=10, isolation_level=None)
    yield connection
    connection.close()


def test_triggers_capture_each_committed_row_with_its_images(
        db: ShopDatabase, conn: sqlite3.Connection) -> None:
    install_change_capture(db.path, ["users"])  # a second install changes nothing
    city = db.rows("SELECT city FROM users WHERE id = 1")[0]["city"]
    db.execute("UPDATE users SET city = 'Atlantis' WHERE id = 1")
    db.execute("INSERT INTO categories (id, name) VALUES (99, 'maps')")
    db.execute("DELETE FROM categories WHERE id = 99")
    update, insert, delete = read_changes(conn, 0)
    assert (update.table, update.op) == ("users", "update")
    assert update.old is not None and update.new is not None
    assert (update.old["city"], update.new["city"]) == (city, "Atlantis")
    assert (insert.op, insert.old, insert.new) == ("insert", None, {"id": 99, "name": "maps"})
    assert (delete.op, delete.old, delete.new) == ("delete", {"id": 99, "name": "maps"}, None)
    assert update.id < insert.id < delete.id
    assert read_changes(conn, delete.id) == []


def test_a_rolled_back_write_leaves_no_change(db: ShopDatabase, conn: sqlite3.Connection
                                              ) -> None:
    conn.execute("BEGIN")
    conn.execute("UPDATE products SET price_cents = 1 WHERE id <= 3")
    assert len(read_changes(conn, 0)) == 3  # visible inside the writing transaction
    conn.execute("ROLLBACK")
    assert read_changes(conn, 0) == []
    conn.execute("BEGIN")
    conn.execute("UPDATE products SET price_cents = 1 WHERE id <= 3")
    conn.execute("COMMIT")
    assert [c.table for c in read_changes(conn, 0)] == ["products"] * 3


def test_context_is_captured_with_the_row(db: ShopDatabase, conn: sqlite3.Connection) -> None:
    item = db.rows("SELECT oi.rowid AS id, o.ordered_on, u.city FROM order_items oi "
                   "JOIN orders o ON o.id = oi.order_id JOIN users u ON u.id = o.user_id "
                   "LIMIT 1")[0]
    db.execute("UPDATE order_items SET quantity = quantity + 1 WHERE rowid = ?", [item["id"]])
    (change,) = read_changes(conn, 0)
    assert change.new is not None
    assert (change.new["city"], change.new["ordered_on"]) == (item["city"], item["ordered_on"])


def test_unknown_table_is_an_error(db: ShopDatabase) -> None:
    with pytest.raises(ValueError, match="nope"):
        install_change_capture(db.path, ["nope"])


def test_index_drops_only_what_the_tags_reach(lab: Lab) -> None:
    client = lab.redis()
    index = DependencyIndex(client, prefix="t")
    pipe = client.pipeline()
    for key, tags in (("a", {"x", "y"}), ("b", {"y"}), ("c", {"z"})):
        pipe.set(key, key.upper())
        index.register(pipe, key, tags)
    pipe.execute()
    assert index.dependents("y") == {"a", "b"} and index.tags_of("a") == {"x", "y"}

    assert index.invalidate(["x"]) == {"a": "A"}
    assert client.exists("a", "b", "c") == 2
    # "a" is forgotten under every tag, not only the one that dropped it.
    assert index.dependents("y") == {"b"} and index.tags_of("a") == set()
    assert index.invalidate(["x", "nothing"]) == {}
    assert index.invalidate([]) == {}

    client.delete("b")  # gone already (expired, evicted): not reported as dropped
    assert index.invalidate(["y"]) == {}
    assert index.dependents("y") == set() and client.get("c") == "C"


def test_dependent_cache_registers_and_recomputes(lab: Lab, db: ShopDatabase) -> None:
    client = lab.redis()
    index = DependencyIndex(client, prefix="deps")
    cache = DependentQueryCache(client, db.query, index=index, ttl_s=60,
                                tags=lambda p, rows: table_tags(DEPENDENT_TABLES))
    params = ("2025-01-01", "2025-12-31", "Oslo")
    rows, hit = cache.rows(REPORT_SQL, params)
    key = cache.key((REPORT_SQL, params))
    assert not hit and rows == db.rows(REPORT_SQL, params)
    assert index.tags_of(key) == table_tags(DEPENDENT_TABLES)
    before = db.queries
    assert cache.rows(REPORT_SQL, params) == (rows, True) and db.queries == before
    assert set(index.invalidate(["table:users"])) == {key}
    again, hit = cache.rows(REPORT_SQL, params)
    assert not hit and again == rows and db.queries == before + 1


@pytest.fixture
def setup(lab: Lab, db: ShopDatabase) -> tuple[redis.Redis, dict[str, DependentQueryCache],
                                                ChangeNotifier]:
    client = lab.redis()
    indexes = {"table": DependencyIndex(client, prefix="dt"),
               "row": DependencyIndex(client, prefix="dr")}
    caches = {
        "table": DependentQueryCache(client, db.query, index=indexes["table"], ttl_s=60,
                                     tags=lambda p, rows: table_tags(DEPENDENT_TABLES),
                                     namespace="rt"),
        "row": DependentQueryCache(client, db.query, index=indexes["row"], ttl_s=60,
                                   tags=report_tags, namespace="rr"),
    }
    notifier = ChangeNotifier(db.path, client, {"table": (indexes["table"], table_rule),
                                                "row": (indexes["row"], report_rule)})
    lab.callback(notifier.close)
    return client, caches, notifier


OSLO = ("2025-03-01", "2025-05-31", "Oslo")
LIMA = ("2025-03-01", "2025-05-31", "Lima")


def test_notifier_drops_by_policy(setup: tuple[redis.Redis, dict[str, DependentQueryCache],
                                               ChangeNotifier], db: ShopDatabase) -> None:
    client, caches, notifier = setup
    for cache in caches.values():
        cache.rows(REPORT_SQL, OSLO)
        cache.rows(REPORT_SQL, LIMA)

    def dropped(policy: str) -> set[tuple[str, ...]]:
        keys = {caches[policy].key((REPORT_SQL, p)): p for p in (OSLO, LIMA)}
        return {keys[k] for inv in notifier.drain() if inv.policy == policy for k in inv.dropped}

    # An unrelated table: nothing anywhere.
    db.post_comment(1, 1, "hello")
    done = notifier.drain()
    assert len(done) == 2 and all(not inv.dropped for inv in done)

    # A new Oslo order in range: table-level drops both, row-level only Oslo.
    user = db.rows("SELECT id FROM users WHERE city = 'Oslo' LIMIT 1")[0]["id"]
    db.execute("INSERT INTO orders (id, user_id, ordered_on, status) "
               "VALUES (100000, ?, '2025-04-10', 'paid')", [user])
    db.execute("INSERT INTO order_items (order_id, product_id, quantity, price_cents) "
               "VALUES (100000, 1, 2, 500)")
    done = notifier.drain()
    assert {inv.change.table for inv in done} == {"orders", "order_items"}
    table_drops = {k for inv in done if inv.policy == "table" for k in inv.dropped}
    row_drops = {k for inv in done if inv.policy == "row" for k in inv.dropped}
    assert table_drops == {caches["table"].key((REPORT_SQL, p)) for p in (OSLO, LIMA)}
    assert row_drops == {caches["row"].key((REPORT_SQL, OSLO))}
    rows, hit = caches["row"].rows(REPORT_SQL, OSLO)
    assert not hit and rows == db.rows(REPORT_SQL, OSLO)
    assert caches["row"].rows(REPORT_SQL, LIMA)[0] == db.rows(REPORT_SQL, LIMA)

    # A price change the report cannot see: row-level keeps everything.
    caches["table"].rows(REPORT_SQL, OSLO)
    db.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 2")
    assert dropped("row") == set()
    caches["table"].rows(REPORT_SQL, OSLO)
    db.execute("UPDATE products SET price_cents = price_cents + 1 WHERE id = 2")
    assert dropped("table") == {OSLO}


def test_notifier_cursor_survives_a_restart(
        setup: tuple[redis.Redis, dict[str, DependentQueryCache], ChangeNotifier],
        db: ShopDatabase) -> None:
    client, caches, notifier = setup
    db.execute("UPDATE users SET city = 'Oslo' WHERE id = 1")
    first = notifier.drain()
    assert len(first) == 2 and notifier.cursor == first[0].change.id
    again = ChangeNotifier(db.path, client, notifier.policies)
    try:
        assert again.drain() == []  # the cursor is in Redis, not in the notifier
        db.execute("UPDATE users SET city = 'Lima' WHERE id = 1")
        assert [inv.change.new for inv in again.drain()][0]["city"] == "Lima"  # type: ignore[index]
        db.execute("UPDATE users SET city = 'Pune' WHERE id = 1")
        assert again.skip_to_end() == again.cursor and again.drain() == []
    finally:
        again.close()


def change(table: str, old: dict[str, object] | None, new: dict[str, object] | None) -> Change:
    return Change(1, table, "update" if old and new else "insert" if new else "delete",
                  old, new)


def test_report_rule_sees_only_what_the_report_reads() -> None:
    order = {"id": 5, "city": "Oslo", "ordered_on": "2025-04-10", "status": "paid",
             "user_id": 3}
    assert report_rule(change("orders", order, {**order, "status": "shipped"})) == set()
    assert report_rule(change("orders", order, {**order, "status": "refunded"})) == {
        "sale:Oslo:2025-04-10"}
    assert report_rule(change("orders", order, {**order, "ordered_on": "2025-05-01"})) == {
        "sale:Oslo:2025-04-10", "sale:Oslo:2025-05-01"}
    assert report_rule(change("orders", None, {**order, "status": "refunded"})) == set()
    product = {"id": 2, "category": "books", "price_cents": 100}
    assert report_rule(change("products", product, {**product, "price_cents": 9})) == set()
    assert report_rule(change("products", product, {**product, "category": "toys"})) == {
        "category:books", "category:toys"}
    assert report_rule(change("users", {"id": 1, "city": "Oslo", "email": "a"},
                              {"id": 1, "city": "Oslo", "email": "b"})) == set()
    assert report_rule(change("users", {"id": 1, "city": "Oslo"},
                              {"id": 1, "city": "Lima"})) == {"city:Oslo", "city:Lima"}
    assert report_rule(change("comments", None, {"id": 1})) == set()
    assert table_rule(change("comments", None, {"id": 1})) == {"table:comments"}


def test_report_tags_cover_days_city_and_categories() -> None:
    tags = report_tags(("2025-02-27", "2025-03-02", "Lima"), [{"category": "toys"}])
    assert tags == {"sale:Lima:2025-02-27", "sale:Lima:2025-02-28", "sale:Lima:2025-03-01",
                    "sale:Lima:2025-03-02", "city:Lima", "category:toys"}
