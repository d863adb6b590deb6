"""Caching strategies as a small library: no printing, no CLI."""

from cachelab.caching.cache_aside import CacheAside, CacheStats
from cachelab.caching.query_cache import QueryCache, normalise_sql, query_key

__all__ = ["CacheAside", "CacheStats", "QueryCache", "normalise_sql", "query_key"]
