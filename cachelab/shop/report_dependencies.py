"""What the revenue report (``REPORT_SQL``) reads of the shop, as row-level dependencies:
the context a change-capture trigger records with a row, the tags a cached report
registers, and the tags a captured change touches."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachelab.caching.dependencies import Change

# What a row-level rule needs to know of a changed row beyond its own columns, captured
# by the trigger in the same transaction ({row} is OLD or NEW).
REPORT_CONTEXT = {
    "orders": {"city": "SELECT city FROM users WHERE id = {row}.user_id"},
    "order_items": {
        "ordered_on": "SELECT ordered_on FROM orders WHERE id = {row}.order_id",
        "status": "SELECT status FROM orders WHERE id = {row}.order_id",
        "city": "SELECT u.city FROM orders o JOIN users u ON u.id = o.user_id "
                "WHERE o.id = {row}.order_id"},
    "products": {"category": "SELECT name FROM categories WHERE id = {row}.category_id"},
}


def report_tags(params: tuple[Any, ...], rows: list[dict[str, Any]]) -> set[str]:
    """Row-level tags of one report: each (city, day) it sums, its city, its categories.

    Categories come from the result itself: a product that moves between categories
    changes an entry only if that entry already counts the product's old category.
    """
    start, end, city = params
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    days = ((first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1))
    return ({f"sale:{city}:{day}" for day in days} | {f"city:{city}"}
            | {f"category:{row['category']}" for row in rows})


# The columns of each table whose values the report can see; an update that leaves them
# all as they were cannot change any result.
_RELEVANT = {
    "orders": ("id", "city", "ordered_on", "counted"),
    "order_items": ("order_id", "product_id", "quantity", "price_cents", "city",
                    "ordered_on", "counted"),
    "products": ("id", "category"),
    "categories": ("id", "name"),
    "users": ("id", "city"),
}


def report_rule(change: Change) -> set[str]:
    """Row-level tags a change touches: the sales, city or categories it can alter."""
    relevant = _RELEVANT.get(change.table)
    if relevant is None:
        return set()
    images = [{**image, "counted": image.get("status") != "refunded"}
              for image in change.images()]
    if len(images) == 2 and all(images[0].get(c) == images[1].get(c) for c in relevant):
        return set()
    tags: set[str] = set()
    for image in images:
        if change.table in ("orders", "order_items"):
            if image["counted"] and image.get("city") is not None:
                tags.add(f"sale:{image['city']}:{image['ordered_on']}")
        elif change.table == "products":
            tags.add(f"category:{image['category']}")
        elif change.table == "categories":
            tags.add(f"category:{image['name']}")
        else:
            tags.add(f"city:{image['city']}")
    return tags
