"""Rendered pages of the shop: what a page cache stores, at a realistic size."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachelab.shop.database import ShopDatabase


class ProfilePages:
    """Renders a user's profile page from the database, keeping each page it rendered
    (so that a replay can serve the same pages without the database)."""

    def __init__(self, db: ShopDatabase, value_kb: int) -> None:
        self.db = db
        self.size = value_kb * 1024
        self.pages: dict[int, dict[str, Any]] = {}

    def __call__(self, user_id: int) -> dict[str, Any] | None:
        profile = self.db.user_profile(user_id)
        if profile is None:
            return None
        # Stands in for the page's HTML: the real size of a value is what memory holds.
        block = f"<section>{profile['name']} · {profile['city']} · {profile['bio']}</section>"
        html = (block * (self.size // len(block) + 1))[:self.size]
        self.pages[user_id] = page = {"profile": profile, "html": html}
        return page
