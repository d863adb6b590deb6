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

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from cachelab.caching.http_cache import (
    PAGE_NAMESPACE,
    CachePolicy,
    conditional_request_cases,
    parse_cache_control,
    parse_http_date,
    strong_etag,
)
from cachelab.caching.http_client_cache import PrivateClientCache
from cachelab.errors import UsageError
from cachelab.exercise import ExerciseInfo, Opt, Result
from cachelab.workload.crawler import CRAWL_COLUMNS, GOOGLEBOT, Crawl, Crawler, Fetch, price_in_page
from cachelab.workload.keyspace import Keyspace

if TYPE_CHECKING:
    import redis

    from cachelab.lab import Lab
    from cachelab.shop.database import ShopDatabase

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
        client_cache = lab.closing(PrivateClientCache(
            api, cache, client_ids, max_age_s=max_age_s, shared=lab.shared,
            user_agent=GOOGLEBOT))
        client_cache.read_fresh()
        _check_redis_pages(result, cache, redis_server.keys, cached)
        _check_speed(result, cold, cached)
        recrawl = crawler.crawl("conditional recrawl", ids, conditional=True)
        _check_recrawl(result, recrawl, cold, n)

        before_update = {i: crawler.held[i] for i in changed_ids}
        rng = lab.rng("prices")
        for product_id in changed_ids:
            price = rng.randint(199, 19999)
            price += price == _product(db, product_id)["price_cents"]  # the page must change
            http.put(f"/products/{product_id}", json={"price_cents": price,
                                                      "stock": rng.randint(0, 500)}
                     ).raise_for_status()
        _check_invalidation(result, cache, redis_server.keys, changed_ids, unchanged_ids)
        after = crawler.crawl("recrawl after updates", ids, conditional=True)
        fresh = _check_changed(result, after, before_update, db, k)

        probe = crawler.held[unchanged_ids[0]]
        conditional_rows = _check_conditionals(result, crawler, probe)

    client_cache.read_stale()
    fresh_hits, revalidations = _check_client_cache(result, client_cache, db,
                                                    set(changed_ids))

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
                 [[f.product_id, before_update[f.product_id].etag[:13] + '…"', f.etag[:13] + '…"',
                   f.status, price_in_page(f.body),
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
        key = keys(f"{PAGE_NAMESPACE}:{f.product_id}")
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


def _check_invalidation(result: Result, cache: redis.Redis, keys: Keyspace,
                        changed_ids: Sequence[int], unchanged_ids: Sequence[int]) -> None:
    gone = sum(not cache.exists(keys(f"{PAGE_NAMESPACE}:{i}")) for i in changed_ids)
    kept = sum(bool(cache.exists(keys(f"{PAGE_NAMESPACE}:{i}"))) for i in unchanged_ids)
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
    cases = conditional_request_cases(page.etag, page.headers["last-modified"])
    rows, right = [], 0
    for label, headers, expected in cases:
        got = crawler.fetch(page.product_id, headers)
        right += got.status == expected and (got.status != 304 or got.body == b"")
        rows.append([label, expected, got.status])
    result.check("conditional requests follow RFC 9110 (If-None-Match before "
                 "If-Modified-Since)", right == len(cases),
                 f"{right}/{len(cases)} answered as RFC 9110 says")
    return rows


def _check_client_cache(result: Result, reads: PrivateClientCache, db: ShopDatabase,
                        changed: set[int]) -> tuple[int, int]:
    """Record both client-cache checks; returns (fresh hits, revalidations)."""
    from cachelab.shop.app import render_product_page

    # Fresh: younger than max-age by the first answer's Date once the re-read was done.
    dates = {r.product_id: r.date for r in reads.first}
    fresh = [r for r in reads.again
             if int(r.done_at - dates[r.product_id]) < reads.max_age_s]
    hits = sum(r.status["from_cache"] and not r.wire and not r.lookups and not r.queries
               for r in fresh)
    result.check("the RFC 9111 client serves fresh pages from its cache",
                 bool(fresh) and hits == len(fresh),
                 f"{hits}/{len(fresh)} pages still fresh by their Date "
                 f"({len(reads.again)} re-read) served by hishel with nothing on the wire, "
                 "no page lookup in the API's Redis ("
                 + ("by the API's own count: the shared server's HGETALL calls include "
                    "other clients'" if reads.shared else "by Redis's commandstats")
                 + ") and no database query")

    held = {r.product_id: r for r in reads.first}
    revalidated = 0
    for r in reads.stale:
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
    moved = sorted(changed & set(reads.ids))
    result.check("the RFC 9111 client revalidates stale pages",
                 revalidated == len(reads.stale) == len(reads.ids),
                 f"{revalidated}/{len(reads.ids)} stale pages revalidated with one "
                 f"conditional request each: unchanged ones answered 304 and served from "
                 f"the client's copy, changed ones ({', '.join(map(str, moved))}) 200 "
                 "with their new content")
    return hits, revalidated


def _product(db: ShopDatabase, product_id: int) -> dict[str, Any]:
    product = db.product_now(product_id)
    assert product is not None, product_id
    return product

