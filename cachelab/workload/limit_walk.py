"""Walking a rate-limited HTTP API to its first refusal, as one new user, and one request
more once Retry-After has passed."""

from __future__ import annotations

import threading
import time
from typing import Any

Row = list[Any]  # one answer: its place, status and rate-limit headers


def walk_to_429(url: str, limit: int, *, decided_header: str, workers: int = 4
                ) -> tuple[list[Row], Row]:
    """Requests as a new user until a 429, then one more after waiting Retry-After.

    A few threads send them, so that the client outpaces a refill even at high limits;
    the answers are then put in the order the limiter decided them (its clock, from
    ``decided_header``, such as X-RateLimit-Decided-Us), up to the first 429.
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def row(n: int | str, answer: httpx.Response) -> Row:
        h = answer.headers
        return [n, answer.status_code, h.get("ratelimit-limit"), h.get("ratelimit-remaining"),
                h.get("ratelimit-reset"), h.get("retry-after"), h.get("x-cache")]

    refused = threading.Event()
    with httpx.Client(base_url=url, timeout=10, headers={"X-User-Id": "walker"}) as http:

        def one(_: int) -> httpx.Response | None:
            if refused.is_set():
                return None
            answer = http.get("/products/1")
            if answer.status_code != 200:
                refused.set()
            return answer

        with ThreadPoolExecutor(workers) as pool:
            answers = [a for a in pool.map(one, range(5 * limit + workers)) if a is not None]
        answers.sort(key=lambda a: int(a.headers.get(decided_header, 0)))
        rows: list[Row] = []
        for n, answer in enumerate(answers, start=1):
            rows.append(row(n, answer))
            if answer.status_code != 200:
                break
        retry_after = rows[-1][5]
        if rows[-1][1] != 429 or not str(retry_after).isdigit():
            return rows, ["after Retry-After", "not tried", None, None, None, None, None]
        time.sleep(int(retry_after))
        return rows, row("after Retry-After", http.get("/products/1"))


def shorten_rows(rows: list[Row], keep: int = 8) -> list[Row]:
    """The first and last ``keep`` rows of a long table, with a gap between."""
    if len(rows) <= 2 * keep + 1:
        return rows
    gap: Row = ["…"] + [""] * (len(rows[0]) - 1)
    return [*rows[:keep], gap, *rows[-keep:]]

