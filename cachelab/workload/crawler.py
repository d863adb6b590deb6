"""A search engine's crawler of the shop's product pages: it keeps the last 200 of each
page, sends its validators back when asked to, and times every request."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cachelab.workload.measure import LatencyHistogram

if TYPE_CHECKING:
    import httpx

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


class Counted(Protocol):
    """The server under crawl: its own counters, ``db_queries`` among them."""

    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Fetch:
    """One page request as the crawler saw it."""

    product_id: int
    status: int
    headers: Mapping[str, str]
    body: bytes
    received_at: float  # time.time() when the answer arrived

    @property
    def etag(self) -> str:
        return self.headers.get("etag", "")


@dataclass
class Crawl:
    """One pass over the pages, with its timings and the server's database queries."""

    name: str
    fetches: list[Fetch] = field(default_factory=list)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    started_at: float = field(default_factory=time.time)
    db_queries: int = 0
    bytes_saved: int = 0  # body bytes a 304 spared: the size of the page the crawler holds

    def count(self, status: int) -> int:
        return sum(f.status == status for f in self.fetches)

    def row(self) -> list[Any]:
        s = self.latency.summary_ms()
        return [self.name, self.count(200), self.count(304),
                sum(len(f.body) for f in self.fetches),
                sum(f.headers.get("x-cache") == "hit" for f in self.fetches),
                self.db_queries, s["p50"], s["p95"], s["p99"], s["max"]]


CRAWL_COLUMNS = ["crawl", "200", "304", "body bytes sent", "Redis page hits", "db queries",
                 "p50 ms", "p95 ms", "p99 ms", "max ms"]


class Crawler:
    """Fetches pages like a search engine's crawler: it keeps the last 200 of each page
    and, when asked to, sends its validators back."""

    def __init__(self, http: httpx.Client, api: Counted) -> None:
        self.http = http
        self.api = api
        self.held: dict[int, Fetch] = {}

    def fetch(self, product_id: int, headers: Mapping[str, str] | None = None) -> Fetch:
        reply = self.http.get(f"/products/{product_id}/page", headers=headers)
        return Fetch(product_id, reply.status_code, dict(reply.headers), reply.content,
                     time.time())

    def crawl(self, name: str, ids: Sequence[int], *, conditional: bool) -> Crawl:
        crawl = Crawl(name)
        self._visit(crawl, ids, conditional=conditional)
        return crawl

    def crawl_cold_then_cached(self, blocks: Iterable[Sequence[int]]) -> tuple[Crawl, Crawl]:
        """The first crawl (the page cache empty) and an unconditional second one, block by
        block: both then run under the same load from the rest of the machine."""
        cold, cached = Crawl("cold (Redis empty)"), Crawl("cached (unconditional)")
        for block in blocks:
            self._visit(cold, block, conditional=False)
            self._visit(cached, block, conditional=False)
        return cold, cached

    def _visit(self, crawl: Crawl, ids: Sequence[int], *, conditional: bool) -> None:
        before = self.api.stats()["db_queries"]
        for product_id in ids:
            held = self.held.get(product_id)
            headers = {}
            if conditional and held is not None:
                headers = {"If-None-Match": held.etag,
                           "If-Modified-Since": held.headers.get("last-modified", "")}
            start = time.perf_counter_ns()
            fetched = self.fetch(product_id, headers)
            crawl.latency.record_ns(time.perf_counter_ns() - start)
            crawl.fetches.append(fetched)
            if fetched.status == 200:
                self.held[product_id] = fetched
            elif fetched.status == 304 and held is not None:
                crawl.bytes_saved += len(held.body)
        crawl.db_queries += self.api.stats()["db_queries"] - before


def price_in_page(body: bytes) -> str:
    """The price a shop product page shows, as written in it ("-" when it shows none)."""
    text = body.decode()
    start = text.find('<p class="price">')
    return text[start + len('<p class="price">'):text.find(" EUR", start)] if start >= 0 else "-"
