"""Caching content for crawlers: product pages with HTTP validators, cached in Redis.

A search engine's crawler fetches every product page again and again, and most pages
have not changed since its last visit. The shop API serves each page as HTML with
``Cache-Control`` (public, max-age, s-maxage, stale-while-revalidate), a strong ``ETag``
computed from the page's bytes and a ``Last-Modified``; it caches the rendered page in
Redis with those validators, so that a conditional request (``If-None-Match``,
``If-Modified-Since``) is answered ``304 Not Modified`` from Redis alone, with no body
and no database query. A product update drops its page from Redis, so the next crawl
gets the new page with a new ETag. hishel, an RFC 9111 client cache, then checks the
same headers from the client's side: fresh pages come from its cache, stale ones are
revalidated.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching.http_cache import (
    PAGE_NAMESPACE,
    CachePolicy,
    http_date,
    parse_cache_control,
    parse_http_date,
    strong_etag,
)
from cachelab.errors import UsageError
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.keyspace import Keyspace
from cachelab.workload.measure import LatencyHistogram
from cachelab.workload.redis_info import command_calls

if TYPE_CHECKING:
    import httpx
    import redis

    from cachelab.lab import Lab
    from cachelab.shop.database import ShopDatabase
    from cachelab.shop.server import ApiServer

INFO = ExerciseInfo(
    id="exercise-20",
    slug="crawler-caching",
    title="Caching product pages for crawlers with HTTP validators",
    concept="Caching for SEO: HTTP caching headers, conditional requests, rendered pages",
    scenario=(
        "Googlebot recrawls the shop's product pages every day, and each crawl renders "
        "every page from the database although few have changed. Serve the pages with "
        "caching headers and validators, keep the rendered pages in Redis, answer a "
        "recrawl of unchanged pages with bodiless 304s that never reach the database, "
        "and make sure a changed product reaches the crawler at once."
    ),
    walkthrough=(
        "Start the shop API (lazy caching) with its own Redis and database; product pages "
        "carry Cache-Control, a strong ETag from their bytes and Last-Modified.",
        "Crawl N product pages as Googlebot with Redis's page cache empty (each page "
        "rendered from the database) and again unconditionally (served from Redis), ten "
        "pages of one then ten of the other, so that both crawls run under the same load; "
        "every request timed in an HDR histogram.",
        "Read a few of those pages through hishel (an RFC 9111 client cache, private, in "
        "memory), one of them a product about to change, and re-read them at once, logging "
        "what reaches the wire and the server.",
        "Recrawl conditionally, sending back each page's ETag and Last-Modified; count the "
        "304s, their bodies, and the server's database queries (/_lab/stats).",
        "Change some products through the API, check which pages left Redis, and recrawl "
        "conditionally: changed pages must come back 200 with a new ETag and the "
        "database's new content, unchanged ones 304.",
        "Send one page each kind of conditional request RFC 9110 describes, including "
        "If-None-Match and If-Modified-Since together (If-None-Match decides).",
        "Once max-age has passed by their Date, read the client cache's pages again: "
        "each must be revalidated with one conditional request.",
    ),
    fixtures=("redis", "shop-db", "shop-api"),
    checks=(
        "every page carries Cache-Control, a strong ETag and Last-Modified",
        "Redis holds every crawled page as it was served",
        "cached pages are faster than cold ones at p50",
        "the conditional recrawl of unchanged pages is all 304 with no database queries",
        "every 304 carries the ETag and Cache-Control of its 200 and no body",
        "a product update removes exactly its page from Redis",
        "changed pages come back 200 with a new ETag and the new content",
        "conditional requests follow RFC 9110 (If-None-Match before If-Modified-Since)",
        "the RFC 9111 client serves fresh pages from its cache",
        "the RFC 9111 client revalidates stale pages",
    ),
    metrics=(
        "pages", "crawl_cold_p50_ms", "crawl_cached_p50_ms", "crawl_conditional_p50_ms",
        "not_modified_ratio_recrawl", "db_queries_cold_crawl", "db_queries_cached_crawl",
        "db_queries_recrawl", "changed_pages", "db_queries_after_update", "fresh_after_update",
        "bytes_saved", "client_cache_fresh_hits", "client_cache_revalidations",
    ),
    headline="not_modified_ratio_recrawl",
)

BLOCK = 10  # pages crawled cold, then cached, before the next block
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


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

    def __init__(self, http: httpx.Client, api: ApiServer) -> None:
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


@dataclass(frozen=True)
class WireRecord:
    """A request the client cache let through to the server, and the answer."""

    path: str
    status: int
    if_none_match: str | None
    if_modified_since: str | None


def wire_log_transport(log: list[WireRecord]) -> httpx.BaseTransport:
    """An httpx transport that records every request that really goes out."""
    import httpx

    class WireLog(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            log.append(WireRecord(request.url.path, response.status_code,
                                  request.headers.get("if-none-match"),
                                  request.headers.get("if-modified-since")))
            return response

    return WireLog()


def page_lookups(client: redis.Redis) -> int:
    """Page reads the API made in its Redis (PageCache.get is its only HGETALL), by the
    server's own count: on a server the lab owns, nobody else sends HGETALL."""
    return command_calls(client, ("hgetall",))


def run(
    lab: Lab,
    *,
    pages: Annotated[int, Opt("Product pages crawled (at most the shop's products).",
                              min=2, max=100_000)] = 100,
    changed: Annotated[int, Opt("Products changed between the recrawls (fewer than the "
                                "pages).", min=1)] = 10,
    max_age_s: Annotated[int, Opt("Cache-Control max-age of a page, in seconds; the "
                                  "client-cache step waits this long for pages to go "
                                  "stale.", min=2, max=30)] = 3,
    s_maxage_s: Annotated[int, Opt("Cache-Control s-maxage (shared caches, CDNs), in "
                                   "seconds.", min=0)] = 60,
    stale_while_revalidate_s: Annotated[int, Opt("Cache-Control stale-while-revalidate, "
                                                 "in seconds.", min=0)] = 30,
    client_pages: Annotated[int, Opt("Pages read through the RFC 9111 client cache, one "
                                     "of them among the changed products.", min=2,
                                     max=50)] = 5,
) -> Result:
    import httpx

    result = Result(INFO)
    policy = CachePolicy(max_age_s=max_age_s, s_maxage_s=s_maxage_s,
                         stale_while_revalidate_s=stale_while_revalidate_s)
    db = lab.shop("api-shop")
    n = min(pages, db.size.products)
    if n < 2:
        raise UsageError(f"the shop has {db.size.products} product(s); crawling needs at "
                         "least 2: raise --scale")
    if n < pages:
        result.note(f"The shop has {db.size.products} products: crawling {n} pages, not "
                    f"{pages}.")
    k = min(changed, n - 1)  # one page at least stays unchanged, to be answered 304
    if k < changed:
        result.note(f"Changing {k} products, not {changed}: one crawled page at least must "
                    "stay unchanged.")
    redis_server = lab.redis_server("api-redis")
    api = lab.shop_api("lazy", redis_server=redis_server, shop=db,
                       page_cache_control=policy.header())
    cache = lab.closing(redis_server.client())

    ids = sorted(lab.rng("crawl").sample(range(1, db.size.products + 1), n))
    changed_ids = sorted(lab.rng("changes").sample(ids, k))
    unchanged_ids = [i for i in ids if i not in set(changed_ids)]
    h = min(client_pages, len(unchanged_ids) + 1)
    client_ids = [*unchanged_ids[:h - 1], changed_ids[0]]

    with httpx.Client(base_url=api.url, headers={"User-Agent": GOOGLEBOT},
                      timeout=10) as http:
        http.get("/health")  # the connection is opened before anything is timed
        crawler = Crawler(http, api)
        blocks = [ids[i:i + BLOCK] for i in range(0, n, BLOCK)]
        cold, cached = crawler.crawl_cold_then_cached(
            lab.track(blocks, "cold and cached crawls", len(blocks)))
        _check_headers(result, cold, policy)
        # The client cache stores a few pages now; they go stale while the recrawls go on.
        client_cache = ClientCache(lab, api, cache, client_ids, policy)
        client_cache.read_fresh()
        _check_redis_pages(result, cache, redis_server.keys, cached)
        _check_speed(result, cold, cached)
        recrawl = crawler.crawl("conditional recrawl", ids, conditional=True)
        _check_recrawl(result, recrawl, cold, n)

        before_update = {i: crawler.held[i] for i in changed_ids}
        _update_products(lab, http, db, changed_ids)
        _check_invalidation(result, cache, redis_server.keys, changed_ids, unchanged_ids)
        after = crawler.crawl("recrawl after updates", ids, conditional=True)
        fresh = _check_changed(result, after, before_update, db, k)

        probe = crawler.held[unchanged_ids[0]]
        conditional_rows = _check_conditionals(result, crawler, probe)

    client_cache.read_stale()
    fresh_hits, revalidations = client_cache.check(result, db, set(changed_ids))

    crawls = [cold, cached, recrawl, after]
    result.table(f"Crawls of {n} product pages as Googlebot (HDR latency per request)",
                 CRAWL_COLUMNS, [c.row() for c in crawls])
    header_rows = [[name, cold.fetches[0].headers.get(name, "-"),
                    recrawl.fetches[0].headers.get(name, "-")]
                   for name in ("cache-control", "etag", "last-modified", "content-type",
                                "content-length", "x-cache")]
    result.table(f"Headers of /products/{ids[0]}/page: 200, then 304",
                 ["header", "200", "304"], header_rows)
    result.table("Changed pages (first five)",
                 ["product", "ETag before", "ETag after", "status", "price in page",
                  "price in database"],
                 [[f.product_id, _short(before_update[f.product_id].etag), _short(f.etag),
                   f.status, _price(f.body),
                   f"{_product(db, f.product_id)['price_cents'] / 100:.2f}"]
                  for f in after.fetches if f.product_id in before_update][:5])
    result.table(f"Conditional requests on /products/{probe.product_id}/page "
                 "(RFC 9110 §13.1, §13.2.2)", ["request headers", "expected", "got"],
                 conditional_rows)
    result.table("RFC 9111 client cache (hishel, private, in memory)",
                 ["step", "page", "status", "hishel", "on the wire", "server page lookups",
                  "db queries"], client_cache.rows)

    saved = recrawl.bytes_saved + after.bytes_saved
    result.add_metrics({
        "pages": n,
        "crawl_cold_p50_ms": cold.latency.percentile_ms(50),
        "crawl_cached_p50_ms": cached.latency.percentile_ms(50),
        "crawl_conditional_p50_ms": recrawl.latency.percentile_ms(50),
        "not_modified_ratio_recrawl": recrawl.count(304) / n,
        "db_queries_cold_crawl": cold.db_queries,
        "db_queries_cached_crawl": cached.db_queries,
        "db_queries_recrawl": recrawl.db_queries,
        "changed_pages": k,
        "db_queries_after_update": after.db_queries,
        "fresh_after_update": fresh,
        "bytes_saved": saved,
        "client_cache_fresh_hits": fresh_hits,
        "client_cache_revalidations": revalidations,
    })
    sent = sum(len(f.body) for f in recrawl.fetches + after.fetches)
    result.note(f"The two conditional recrawls sent {sent} body bytes and saved {saved}: "
                "a 304 carries headers only. Googlebot sends If-None-Match and "
                "If-Modified-Since, as this crawler does.")
    result.note(f"Pages are served with {policy.header()!r} (--max-age-s, --s-maxage-s, "
                "--stale-while-revalidate-s). A private cache such as a crawler's uses "
                "max-age; a CDN uses s-maxage and may serve a stale page while it "
                "revalidates.")
    result.note("Last-Modified is when the pages first saw the product's current version "
                "(the shop keeps no updated_at); the ETag is the strong validator, which is "
                "why If-None-Match decides when both are sent.")
    result.note(f"Each cold page paid a database round trip ({db.describe_latency()}); try "
                "--db-latency-ms 0, or --pages 200 --changed 50.")
    if lab.shared:
        result.note("Redis is the existing deployment: pages live under "
                    f"{redis_server.keys(PAGE_NAMESPACE)}:, and the client-cache table's page "
                    "lookups are the API's own count, since the shared server's HGETALL calls "
                    "include other clients'.")
    return result


def _check_headers(result: Result, crawl: Crawl, policy: CachePolicy) -> None:
    wanted = parse_cache_control(policy.header())
    good, problems = 0, list[str]()
    for f in crawl.fetches:
        modified = parse_http_date(f.headers.get("last-modified", ""))
        faults = [what for what, bad in (
            ("status", f.status != 200),
            ("Cache-Control", parse_cache_control(f.headers.get("cache-control")) != wanted),
            ("ETag", f.etag.startswith("W/") or f.etag != strong_etag(f.body)),
            ("Last-Modified", modified is None
             # whole seconds: the second the crawl began counts as this run
             or not int(crawl.started_at) <= modified <= f.received_at)) if bad]
        good += not faults
        if faults and len(problems) < 3:
            problems.append(f"page {f.product_id}: {', '.join(faults)}")
    result.check("every page carries Cache-Control, a strong ETag and Last-Modified",
                 good == len(crawl.fetches),
                 f"{good}/{len(crawl.fetches)} pages: Cache-Control as configured, ETag = "
                 "SHA-256 of the bytes received, Last-Modified a date of this run"
                 + (f"; {'; '.join(problems)}" if problems else ""))


def _check_redis_pages(result: Result, cache: redis.Redis, keys: Keyspace, crawl: Crawl
                       ) -> None:
    same = 0
    for f in crawl.fetches:
        key = _page_key(keys, f.product_id)
        stored: dict[str, str] = cache.hgetall(key)  # type: ignore[assignment]
        same += (stored.get("html", "").encode() == f.body and stored.get("etag") == f.etag
                 and cache.pttl(key) > 0)
    result.check("Redis holds every crawled page as it was served", same == len(crawl.fetches),
                 f"{same}/{len(crawl.fetches)} pages read back from Redis equal the bytes and "
                 "ETag served, each with a TTL")


def _check_speed(result: Result, cold: Crawl, cached: Crawl) -> None:
    cold_ms, cached_ms = cold.latency.percentile_ms(50), cached.latency.percentile_ms(50)
    hits = sum(f.headers.get("x-cache") == "hit" for f in cached.fetches)
    result.check("cached pages are faster than cold ones at p50",
                 hits == len(cached.fetches) and cached.db_queries == 0
                 and cached_ms < cold_ms,
                 f"cached p50 {cached_ms:.3f} ms ({hits}/{len(cached.fetches)} Redis hits, "
                 f"{cached.db_queries} db queries), cold p50 {cold_ms:.3f} ms "
                 f"({cold.db_queries} db queries)")


def _check_recrawl(result: Result, recrawl: Crawl, cold: Crawl, n: int) -> None:
    empty = sum(f.status == 304 and f.body == b"" for f in recrawl.fetches)
    result.check("the conditional recrawl of unchanged pages is all 304 with no database "
                 "queries", empty == n and recrawl.db_queries == 0,
                 f"{recrawl.count(304)}/{n} answered 304 ({empty} with an empty body), "
                 f"{recrawl.db_queries} database queries")
    first = {f.product_id: f for f in cold.fetches}
    alike = 0
    for f in recrawl.fetches:
        ok_200 = first[f.product_id]
        alike += (f.status == 304 and f.body == b""
                  and f.headers.get("content-length", "0") == "0"
                  and all(f.headers.get(h) == ok_200.headers.get(h)
                          for h in ("etag", "cache-control", "last-modified")))
    result.check("every 304 carries the ETag and Cache-Control of its 200 and no body",
                 alike == n, f"{alike}/{n} 304s repeat their 200's ETag, Cache-Control and "
                 "Last-Modified, with no body (RFC 9110 §15.4.5)")


def _update_products(lab: Lab, http: httpx.Client, db: ShopDatabase,
                     changed_ids: Sequence[int]) -> None:
    rng = lab.rng("prices")
    for product_id in changed_ids:
        old = _product(db, product_id)
        price = rng.randint(199, 19999)
        price += price == old["price_cents"]  # the page must change
        reply = http.put(f"/products/{product_id}",
                         json={"price_cents": price, "stock": rng.randint(0, 500)})
        reply.raise_for_status()


def _check_invalidation(result: Result, cache: redis.Redis, keys: Keyspace,
                        changed_ids: Sequence[int], unchanged_ids: Sequence[int]) -> None:
    gone = sum(not cache.exists(_page_key(keys, i)) for i in changed_ids)
    kept = sum(bool(cache.exists(_page_key(keys, i))) for i in unchanged_ids)
    result.check("a product update removes exactly its page from Redis",
                 gone == len(changed_ids) and kept == len(unchanged_ids),
                 f"{gone}/{len(changed_ids)} changed pages gone, {kept}/{len(unchanged_ids)} "
                 "unchanged pages still cached")


def _check_changed(result: Result, after: Crawl, before: Mapping[int, Fetch], db: ShopDatabase,
                   k: int) -> int:
    from cachelab.shop.app import render_product_page

    fresh = unchanged_304 = 0
    for f in after.fetches:
        if f.product_id in before:
            truth = render_product_page(_product(db, f.product_id)).encode()
            fresh += (f.status == 200 and f.etag != before[f.product_id].etag
                      and f.body == truth)
        else:
            unchanged_304 += f.status == 304
    unchanged = len(after.fetches) - len(before)
    result.check("changed pages come back 200 with a new ETag and the new content",
                 fresh == k and unchanged_304 == unchanged and after.db_queries == k,
                 f"{fresh}/{k} changed pages 200 with a new ETag and the database's content, "
                 f"{unchanged_304}/{unchanged} unchanged pages 304, {after.db_queries} "
                 "database queries (one per changed page)")
    return fresh


def _check_conditionals(result: Result, crawler: Crawler, page: Fetch) -> list[list[Any]]:
    """Send ``page`` each kind of conditional request; returns the table's rows."""
    etag, modified = page.etag, page.headers["last-modified"]
    seconds = parse_http_date(modified)
    assert seconds is not None
    day = 86_400
    rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(seconds))
    cases: list[tuple[str, dict[str, str], int]] = [
        ("If-None-Match: its ETag", {"If-None-Match": etag}, 304),
        ("If-None-Match: W/ its ETag (weak comparison)", {"If-None-Match": f"W/{etag}"}, 304),
        ('If-None-Match: "other", its ETag', {"If-None-Match": f'"other", {etag}'}, 304),
        ("If-None-Match: *", {"If-None-Match": "*"}, 304),
        ('If-None-Match: "other"', {"If-None-Match": '"other"'}, 200),
        ('If-None-Match: "other" + If-Modified-Since: its Last-Modified',
         {"If-None-Match": '"other"', "If-Modified-Since": modified}, 200),
        ("If-None-Match: its ETag + If-Modified-Since: a day earlier",
         {"If-None-Match": etag, "If-Modified-Since": http_date(seconds - day)}, 304),
        ("If-Modified-Since: its Last-Modified", {"If-Modified-Since": modified}, 304),
        ("If-Modified-Since: its Last-Modified, RFC 850 form", {"If-Modified-Since": rfc850},
         304),
        ("If-Modified-Since: a day earlier", {"If-Modified-Since": http_date(seconds - day)},
         200),
        ("If-Modified-Since: not a date", {"If-Modified-Since": "yesterday"}, 200),
    ]
    rows, right = [], 0
    for label, headers, expected in cases:
        got = crawler.fetch(page.product_id, headers)
        right += got.status == expected and (got.status != 304 or got.body == b"")
        rows.append([label, expected, got.status])
    result.check("conditional requests follow RFC 9110 (If-None-Match before "
                 "If-Modified-Since)", right == len(cases),
                 f"{right}/{len(cases)} answered as RFC 9110 says")
    return rows


class ClientCache:
    """A crawler's RFC 9111 cache (hishel, private, in memory) reading a few pages.

    :meth:`read_fresh` stores them and re-reads them at once; :meth:`read_stale` waits
    until max-age has passed by their Date and reads them again. What reaches the wire
    is logged below hishel; the API's page lookups (HGETALL in its Redis) and database
    queries are counted around every read. The lookups are Redis's own count on the
    lab's server; on a shared deployment, where other clients send HGETALL too, they
    are the API's own count of its page reads.
    """

    def __init__(self, lab: Lab, api: ApiServer, cache: redis.Redis, ids: Sequence[int],
                 policy: CachePolicy) -> None:
        import hishel
        import httpx
        from hishel.httpx import CacheTransport

        self.api, self.cache, self.ids, self.policy = api, cache, list(ids), policy
        self.shared = lab.shared
        self.wire: list[WireRecord] = []
        self.rows: list[list[Any]] = []
        storage = hishel.SqliteStorage(connection=sqlite3.connect(":memory:",
                                                                  check_same_thread=False))
        # A private cache, as a crawler's own is: freshness comes from max-age, not s-maxage.
        transport = CacheTransport(next_transport=wire_log_transport(self.wire),
                                   storage=storage, rfc=hishel.CacheOptions(shared=False))
        self.client = lab.enter_context(httpx.Client(
            base_url=api.url, transport=transport, headers={"User-Agent": GOOGLEBOT},
            timeout=10))
        self.first: list[ClientRead] = []
        self.again: list[ClientRead] = []
        self.stale: list[ClientRead] = []

    def _read_all(self, step: str) -> list[ClientRead]:
        reads = []
        for product_id in self.ids:
            lookups, queries = self._counts()
            sent = len(self.wire)
            reply = self.client.get(f"/products/{product_id}/page")
            lookups_after, queries_after = self._counts()
            reads.append(ClientRead(product_id, reply, time.time(), self.wire[sent:],
                                    lookups_after - lookups, queries_after - queries))
        self.rows.extend([step, *r.row()] for r in reads)
        return reads

    def _counts(self) -> tuple[int, int]:
        """The API's page lookups and database queries so far."""
        stats = self.api.stats()
        lookups = stats["page_lookups"] if self.shared else page_lookups(self.cache)
        return int(lookups), int(stats["db_queries"])

    def read_fresh(self) -> None:
        self.first = self._read_all("first read")
        self.again = self._read_all("read again at once")

    def read_stale(self) -> None:
        # Every page must be older than max-age by its Date (RFC 9111 §4.2.3).
        newest = max(r.date for r in self.first)
        time.sleep(min(max(0.0, newest + self.policy.max_age_s + 0.05 - time.time()),
                       self.policy.max_age_s + 3.0))
        self.stale = self._read_all(f"read after max-age ({self.policy.max_age_s}s)")

    def check(self, result: Result, db: ShopDatabase, changed: set[int]) -> tuple[int, int]:
        """Record both client-cache checks; returns (fresh hits, revalidations)."""
        from cachelab.shop.app import render_product_page

        # Fresh: younger than max-age by the first answer's Date once the re-read was done.
        dates = {r.product_id: r.date for r in self.first}
        fresh = [r for r in self.again
                 if int(r.done_at - dates[r.product_id]) < self.policy.max_age_s]
        hits = sum(r.status["from_cache"] and not r.wire and not r.lookups and not r.queries
                   for r in fresh)
        result.check("the RFC 9111 client serves fresh pages from its cache",
                     bool(fresh) and hits == len(fresh),
                     f"{hits}/{len(fresh)} pages still fresh by their Date "
                     f"({len(self.again)} re-read) served by hishel with nothing on the wire, "
                     "no page lookup in the API's Redis ("
                     + ("by the API's own count: the shared server's HGETALL calls include "
                        "other clients'" if self.shared else "by Redis's commandstats")
                     + ") and no database query")

        held = {r.product_id: r for r in self.first}
        revalidated = 0
        for r in self.stale:
            was = held[r.product_id]
            conditional = (len(r.wire) == 1
                           and r.wire[0].if_none_match == was.reply.headers["etag"])
            if r.product_id in changed:
                # The conditional request gets the new page, which replaces the copy.
                new = render_product_page(_product(db, r.product_id)).encode()
                revalidated += (conditional and r.wire[0].status == 200
                                and r.status["revalidated"] and r.reply.content == new)
            else:
                revalidated += (conditional and r.wire[0].status == 304
                                and r.status["from_cache"] and r.status["revalidated"]
                                and r.reply.status_code == 200
                                and r.reply.content == was.reply.content)
        moved = sorted(changed & set(self.ids))
        result.check("the RFC 9111 client revalidates stale pages",
                     revalidated == len(self.stale) == len(self.ids),
                     f"{revalidated}/{len(self.ids)} stale pages revalidated with one "
                     f"conditional request each: unchanged ones answered 304 and served from "
                     f"the client's copy, changed ones ({', '.join(map(str, moved))}) 200 "
                     "with their new content")
        return hits, revalidated


@dataclass(frozen=True)
class ClientRead:
    """One read through the client cache, and what it cost the wire and the server."""

    product_id: int
    reply: httpx.Response
    done_at: float
    wire: list[WireRecord]
    lookups: int  # page lookups in the API's Redis
    queries: int  # the API's database queries

    @property
    def status(self) -> Mapping[str, bool]:
        """hishel's account: from_cache, revalidated, stored."""
        return self.reply.extensions["caching"]

    @property
    def date(self) -> float:
        return float(parse_http_date(self.reply.headers["date"]) or 0)

    def row(self) -> list[Any]:
        s = self.status
        how = ("from cache, revalidated" if s["from_cache"] and s["revalidated"]
               else "from cache" if s["from_cache"]
               else "revalidated, replaced" if s["revalidated"]
               else "stored" if s["stored"] else "not stored")
        went = ", ".join(f"{w.status}{' (conditional)' if w.if_none_match else ''}"
                         for w in self.wire) or "nothing"
        return [self.product_id, self.reply.status_code, how, went, self.lookups, self.queries]


def _page_key(keys: Keyspace, product_id: int) -> str:
    """Where the API's page cache keeps a product's page (the API names its keys in its
    server's keyspace, as the lab does)."""
    return keys(f"{PAGE_NAMESPACE}:{product_id}")


def _product(db: ShopDatabase, product_id: int) -> dict[str, Any]:
    product = db.product_now(product_id)
    assert product is not None, product_id
    return product


def _short(etag: str) -> str:
    return etag[:13] + '…"'


def _price(body: bytes) -> str:
    text = body.decode()
    start = text.find('<p class="price">')
    return text[start + len('<p class="price">'):text.find(" EUR", start)] if start >= 0 else "-"
