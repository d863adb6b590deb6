"""A product launch: a burst of concurrent readers while the back office changes products,
every read of a changed product compared with the row its update left behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachelab.workload.measure import LatencyHistogram, ratio
from cachelab.workload.redis_info import counter_delta, keyspace_counters
from cachelab.workload.threads import run_concurrently

if TYPE_CHECKING:
    import redis

    from cachelab.shop.database import ShopDatabase

Fetch = Callable[[int], "tuple[Any, bool]"]
Update = Callable[[int, int, int], bool]  # (product, price_cents, stock) -> cache updated


@dataclass
class Launch:
    """What one play of the launch measured."""

    requests: int = 0
    hits: int = 0
    db_reads: int = 0  # product reads the storefront's database connection counted
    office_queries: int = 0  # the back office's writes (and write-through's read-backs)
    updates: int = 0
    cache_updated: int = 0  # updates whose cache write (or delete) succeeded
    next_reads_fresh: int = 0  # reads right after an update that equal the database
    reads_after_update: int = 0
    stale_reads: int = 0
    seconds: float = 0.0
    redis: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    opening: LatencyHistogram = field(default_factory=LatencyHistogram)  # the first tenth
    changes: list[list[object]] = field(default_factory=list)

    @property
    def hit_ratio(self) -> float:
        return ratio(self.hits, self.requests)


def is_stale(value: dict[str, Any] | None, acknowledged: dict[str, Any]) -> bool:
    """Older than (or different from) the row an already finished update left behind."""
    if value is None or value["version"] < acknowledged["version"]:
        return True
    return value["version"] == acknowledged["version"] and value != acknowledged


def play_launch(cache: redis.Redis, storefront: ShopDatabase, office: ShopDatabase, *,
                stream: list[int], plan: dict[int, tuple[int, int]], fetch: Fetch,
                update: Update, workers: int) -> Launch:
    """Play the burst: ``stream[i]`` is request i's product; ``plan[i]`` updates it first.

    Reads go through ``fetch`` on ``workers`` threads; an update goes through ``update``,
    one at a time (as write-through assumes), and its writer reads the product right
    after. Database reads are counted on ``storefront``, the back office's on ``office``.
    """
    n = len(stream)
    durations, hits, checked, stale = [0] * n, [False] * n, [False] * n, [False] * n
    acknowledged: dict[int, dict[str, Any]] = {}  # product -> row its last finished update left
    out = Launch(requests=n)
    back_office = threading.Lock()  # one writer at a time, as write-through assumes

    def read(i: int, product: int) -> Any:
        floor = acknowledged.get(product)  # taken before the read starts
        t0 = time.perf_counter_ns()
        value, hits[i] = fetch(product)
        durations[i] = time.perf_counter_ns() - t0
        if floor is not None:
            checked[i], stale[i] = True, is_stale(value, floor)
        return value

    def request(i: int) -> None:
        product = stream[i]
        if i not in plan:
            read(i, product)
            return
        with back_office:
            before = storefront.product_now(product)
            cached = update(product, *plan[i])
            truth = storefront.product_now(product)
            if truth is None:  # the plan only changes products that exist
                raise LookupError(f"product {product} vanished from the shop database")
            acknowledged[product] = truth
            value = read(i, product)  # the very next read, by the one who wrote
            out.updates += 1
            out.cache_updated += cached
            out.next_reads_fresh += value == truth
            out.changes.append([product, before["version"] if before else None,
                                truth["version"], value["version"] if value else None,
                                "hit" if hits[i] else "miss", value == truth])

    redis_before, reads_before = keyspace_counters(cache), storefront.queries
    office_before = office.queries
    out.seconds = run_concurrently(request, workers=workers, requests=n)
    out.redis = counter_delta(redis_before, keyspace_counters(cache))
    out.db_reads = storefront.queries - reads_before
    out.office_queries = office.queries - office_before
    out.hits = sum(hits)
    out.reads_after_update, out.stale_reads = sum(checked), sum(stale)
    for i, ns in enumerate(durations):
        out.latency.record_ns(ns)
        if i < n // 10:  # while a lazy cache is still cold
            out.opening.record_ns(ns)
    return out
