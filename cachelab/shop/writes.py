"""The shop's own writes, of every kind the application makes, and a seeded stream of them."""

from __future__ import annotations

import random
from datetime import timedelta

from cachelab.shop.database import CATEGORIES, CITIES, DAYS, FIRST_DAY, ShopDatabase

WRITE_KINDS = {  # kind: (weight, table it changes)
    "new order": (3.0, "orders"), "order status": (3.0, "orders"),
    "item quantity": (1.0, "order_items"), "cancel order": (0.5, "orders"),
    "product price": (2.0, "products"), "product category": (1.0, "products"),
    "category rename": (0.5, "categories"), "user moves": (1.0, "users"),
    "new comment": (2.0, "comments"), "profile edit": (2.0, "profiles"),
}


def apply_write(db: ShopDatabase, kind: str, rng: random.Random) -> int:
    """Make one application write of ``kind``; returns the rows it changed."""
    size = db.size
    if kind == "new order":
        order_id = int(db.rows("SELECT COALESCE(MAX(id), 0) + 1 AS n FROM orders")[0]["n"])
        day = (FIRST_DAY + timedelta(days=rng.randrange(DAYS))).isoformat()
        rows = db.execute("INSERT INTO orders (id, user_id, ordered_on, status) "
                          "VALUES (?, ?, ?, 'paid')", [order_id, rng.randint(1, size.users), day])
        for _ in range(rng.randint(1, 3)):
            rows += db.execute("INSERT INTO order_items (order_id, product_id, quantity, "
                               "price_cents) SELECT ?, id, ?, price_cents FROM products "
                               "WHERE id = ?",
                               [order_id, rng.randint(1, 4), rng.randint(1, size.products)])
        return rows
    if kind == "order status":
        return db.execute("UPDATE orders SET status = ? WHERE id = ?",
                          [rng.choice(("paid", "shipped", "shipped", "refunded")),
                           rng.randint(1, size.orders)])
    if kind == "item quantity":
        last = int(db.rows("SELECT MAX(rowid) AS n FROM order_items")[0]["n"])
        return db.execute("UPDATE order_items SET quantity = quantity + 1 WHERE rowid = ?",
                          [rng.randint(1, last)])
    if kind == "cancel order":
        order_id = rng.randint(1, size.orders)
        return (db.execute("DELETE FROM order_items WHERE order_id = ?", [order_id])
                + db.execute("DELETE FROM orders WHERE id = ?", [order_id]))
    if kind == "product price":
        return db.execute("UPDATE products SET price_cents = ?, stock = stock + 1, "
                          "version = version + 1 WHERE id = ?",
                          [rng.randint(199, 19999), rng.randint(1, size.products)])
    if kind == "product category":
        return db.execute("UPDATE products SET category_id = ? WHERE id = ?",
                          [rng.randint(1, len(CATEGORIES)), rng.randint(1, size.products)])
    if kind == "category rename":
        return db.execute("UPDATE categories SET name = CASE WHEN name LIKE '%+' "
                          "THEN substr(name, 1, length(name) - 1) ELSE name || '+' END "
                          "WHERE id = ?", [rng.randint(1, len(CATEGORIES))])
    if kind == "user moves":
        return db.execute("UPDATE users SET city = ? WHERE id = ?",
                          [rng.choice(CITIES), rng.randint(1, size.users)])
    if kind == "new comment":
        db.post_comment(rng.randint(1, size.posts), rng.randint(1, size.users), "dependency")
        return 1
    if kind == "profile edit":
        return db.execute("UPDATE profiles SET bio = ?, version = version + 1 "
                          "WHERE user_id = ?", [f"edited {rng.random():.6f}",
                                                rng.randint(1, size.users)])
    raise ValueError(f"unknown write {kind!r}")


def write_stream(rng: random.Random, operations: int, write_ratio: float) -> list[str | None]:
    """The seeded stream: ``None`` is a read; every kind of write appears at least once."""
    writes = max(len(WRITE_KINDS), round(operations * write_ratio))
    kinds = list(WRITE_KINDS)
    weights = [weight for weight, _ in WRITE_KINDS.values()]
    chosen = kinds + rng.choices(kinds, weights, k=writes - len(kinds))
    stream: list[str | None] = [*chosen, *([None] * max(1, operations - writes))]
    rng.shuffle(stream)
    return stream
