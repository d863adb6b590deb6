"""A celebrity's post and the readers it sends: a surge released together after the post,
and steady paced traffic across the expiries of one entry; every read compared with the
page the database holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cachelab.workload.measure import LatencyHistogram
from cachelab.workload.threads import run_concurrently

if TYPE_CHECKING:
    import redis

    from cachelab.caching.warming import XFetchCache
    from cachelab.shop.database import ShopDatabase

K = TypeVar("K")
V = TypeVar("V")


class CountingLoader(Generic[K, V]):
    """``load`` that counts its calls (the loads), from any thread."""

    def __init__(self, load: Callable[[K], V]) -> None:
        self.load = load
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, item: K) -> V:
        with self._lock:
            self.calls += 1
        return self.load(item)


@dataclass
class TrafficRow:
    """One strategy under one kind of traffic (surge or steady), as measured."""

    strategy: str
    loads: int = 0
    db_queries: int = 0
    misses: int = 0
    wrong: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    per_expiry: dict[int, int] = field(default_factory=dict)

    @property
    def max_per_expiry(self) -> int:
        return max(self.per_expiry.values(), default=0)

    @property
    def ms(self) -> dict[str, float]:
        return self.latency.summary_ms()


@dataclass
class Surge:
    """When things happened around one post, in ``time.monotonic_ns()``."""

    entry_id: str
    post_ns: int
    first_read_ns: int
    post_on_top: bool  # the page the readers must get shows the new post first


def play_surge(client: redis.Redis, db: ShopDatabase, account_id: int,
               fetch: Callable[[int], tuple[Any, bool]], row: TrafficRow, *, readers: int,
               requests: int, delay_ms: float, loads: Callable[[], int], title: str,
               stream: str, settle: Callable[[], None] = lambda: None) -> Surge:
    """Post, announce it on ``stream``, and release ``readers`` threads together
    ``delay_ms`` later, ``requests`` reads of the account page through ``fetch``.

    ``settle`` runs after the readers and before the counts are read (it stops a watcher).
    """
    post_id = db.save_post(account_id, title)
    expected = db.account_page(account_id)  # the truth, read before the counts start
    q0, loads0 = db.queries, loads()
    post_ns = time.monotonic_ns()
    entry_id = str(client.xadd(stream, {"account_id": account_id, "post_id": post_id}))
    surge_at_ns = post_ns + int(delay_ms * 1e6)
    starts, durations = [0] * requests, [0] * requests
    hits, wrong = [False] * requests, [False] * requests

    def read(i: int) -> None:
        pause_s = (surge_at_ns - time.monotonic_ns()) / 1e9
        if pause_s > 0:  # followers react a moment after the post; nobody waits on a warmer
            time.sleep(pause_s)
        starts[i] = time.monotonic_ns()
        value, hits[i] = fetch(account_id)
        durations[i] = time.monotonic_ns() - starts[i]
        wrong[i] = value != expected

    run_concurrently(read, workers=readers, requests=requests)
    settle()
    for duration in durations:
        row.latency.record_ns(duration)
    row.misses, row.wrong = hits.count(False), sum(wrong)
    row.loads, row.db_queries = loads() - loads0, db.queries - q0
    row.per_expiry = {1: row.loads}  # the empty cache at the post is the one expiry
    on_top = bool(expected and expected["posts"] and expected["posts"][0]["id"] == post_id)
    return Surge(entry_id, post_ns, min(starts), on_top)


def play_steady(cache: XFetchCache[int], loader: CountingLoader[int, Any], db: ShopDatabase,
                account_id: int, expected: Any, row: TrafficRow, *, rate: int,
                duration_s: float, readers: int) -> None:
    """Paced reads of one entry through ``cache`` (whose loader is ``loader``), at
    ``rate`` a second for ``duration_s`` on ``readers`` threads, counted into ``row``."""
    cache.fetch(account_id)  # the first fill happens before the traffic and is not counted
    q0, loads0, misses0 = db.queries, loader.calls, cache.stats.misses
    requests = max(1, round(rate * duration_s))
    durations, wrong = [0] * requests, [False] * requests
    start_ns = time.monotonic_ns() + 20_000_000  # time for the reader threads to start

    def read(i: int) -> None:
        pause_s = (start_ns + i * 1e9 / rate - time.monotonic_ns()) / 1e9
        if pause_s > 0:  # open loop: read i is due at i/rate, however slow the others are
            time.sleep(pause_s)
        t0 = time.monotonic_ns()
        value, _ = cache.fetch(account_id)
        durations[i] = time.monotonic_ns() - t0
        wrong[i] = value != expected

    run_concurrently(read, workers=readers, requests=requests)
    for duration in durations:
        row.latency.record_ns(duration)
    row.loads, row.db_queries = loader.calls - loads0, db.queries - q0
    row.misses, row.wrong = cache.stats.misses - misses0, sum(wrong)
    row.per_expiry = cache.loads_per_expiry()
