"""Query-result caching: cache-aside keyed by a hash of the normalised SQL and parameters."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cachelab.caching.cache_aside import CacheAside

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

Query = tuple[str, tuple[Any, ...]]

# A quoted string or identifier, or a run of anything else.
_TOKENS = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|[^'"]+)""")


def normalise_sql(sql: str) -> str:
    """Collapse whitespace and case outside quotes, drop a trailing semicolon.

    Two spellings of the same query then share one cache key, while quoted literals
    (whose case matters) are left exactly as written.
    """
    parts = []
    for token in _TOKENS.findall(sql):
        if token[0] in "'\"":
            parts.append(token)
        else:
            spaced = re.sub(r"\s+", " ", token).lower()
            parts.append(re.sub(r"\s*([(),=<>;])\s*", r"\1", spaced))
    return "".join(parts).strip().rstrip(";").strip()


def query_key(sql: str, params: Sequence[Any] = (), *, prefix: str = "query") -> str:
    """``query:<sha256 of normalised SQL and parameters>``; parameter types count."""
    payload = json.dumps([normalise_sql(sql), [[type(p).__name__, p] for p in params]],
                         default=str, separators=(",", ":"))
    return f"{prefix}:{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


class QueryCache(CacheAside[Query]):
    """Cache the rows of read queries; ``run_query(sql, params)`` is the database."""

    def __init__(
        self,
        client: redis.Redis,
        run_query: Callable[[str, Sequence[Any]], list[dict[str, Any]]],
        *,
        ttl_s: float,
        jitter: float = 0.0,
        rng: random.Random | None = None,
        namespace: str = "query",
    ) -> None:
        super().__init__(client, namespace=namespace, loader=lambda q: run_query(q[0], q[1]),
                         ttl_s=ttl_s, jitter=jitter, rng=rng)

    def key(self, item: Query) -> str:
        return query_key(item[0], item[1], prefix=self.namespace)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[dict[str, Any]], bool]:
        """``(rows, hit)`` for one query."""
        return self.fetch((sql, tuple(params)))
