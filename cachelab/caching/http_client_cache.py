"""The client's side of RFC 9111: a crawler's own cache (hishel, private, in memory), with
a log of what really reaches the wire and the server's cost of every read."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from cachelab.caching.http_cache import parse_http_date
from cachelab.workload.redis_info import command_calls

if TYPE_CHECKING:
    import httpx
    import redis


class PageServer(Protocol):
    """The server the cache reads from: its URL and its own counters."""

    @property
    def url(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...


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


class PrivateClientCache:
    """A crawler's RFC 9111 cache (hishel, private, in memory) reading a few pages.

    :meth:`read_fresh` stores them and re-reads them at once; :meth:`read_stale` waits
    until max-age has passed by their Date and reads them again. What reaches the wire
    is logged below hishel; the API's page lookups (HGETALL in its Redis) and database
    queries are counted around every read. The lookups are Redis's own count on the
    lab's server; on a shared deployment, where other clients send HGETALL too, they
    are the API's own count of its page reads.
    """

    def __init__(self, api: PageServer, cache: redis.Redis, ids: Sequence[int], *,
                 max_age_s: int, shared: bool, user_agent: str) -> None:
        import hishel
        import httpx
        from hishel.httpx import CacheTransport

        self.api, self.cache, self.ids, self.max_age_s = api, cache, list(ids), max_age_s
        self.shared = shared
        self.wire: list[WireRecord] = []
        self.rows: list[list[Any]] = []
        storage = hishel.SqliteStorage(connection=sqlite3.connect(":memory:",
                                                                  check_same_thread=False))
        # A private cache, as a crawler's own is: freshness comes from max-age, not s-maxage.
        transport = CacheTransport(next_transport=wire_log_transport(self.wire),
                                   storage=storage, rfc=hishel.CacheOptions(shared=False))
        self.client = httpx.Client(base_url=api.url, transport=transport,
                                   headers={"User-Agent": user_agent}, timeout=10)
        self.first: list[ClientRead] = []
        self.again: list[ClientRead] = []
        self.stale: list[ClientRead] = []

    def close(self) -> None:
        self.client.close()

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
        """Read every page, then again at once (fresh: from the cache, if it works)."""
        self.first = self._read_all("first read")
        self.again = self._read_all("read again at once")

    def read_stale(self) -> None:
        """Once max-age has passed by their Date, read every page again."""
        # Every page must be older than max-age by its Date (RFC 9111 §4.2.3).
        newest = max(r.date for r in self.first)
        time.sleep(min(max(0.0, newest + self.max_age_s + 0.05 - time.time()),
                       self.max_age_s + 3.0))
        self.stale = self._read_all(f"read after max-age ({self.max_age_s}s)")


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

