"""cachelab: a hands-on lab for caching strategies on real Redis and SQLite."""

__version__ = "0.1.0"
