"""Caching strategies as a small library: no printing, no CLI."""

from cachelab.caching.cache_aside import CacheAside, CacheStats
from cachelab.caching.consistency import ConsistencyChecker, wilson_interval
from cachelab.caching.dependencies import (
    ChangeNotifier,
    DependencyIndex,
    DependentQueryCache,
    install_change_capture,
)
from cachelab.caching.eager import WriteOutcome, WriteThrough, WriteThroughStats, preload
from cachelab.caching.eviction import (
    EVICTION_POLICIES,
    lru_sampling_trial,
    measure_capacity,
    replay_cache_aside,
)
from cachelab.caching.invalidation import (
    LocalCache,
    PubSubSubscriber,
    StreamSubscriber,
    TrackingSubscriber,
    write_and_publish,
)
from cachelab.caching.leases import DoubleDeleteCache, LeaseCache, NaiveCache, VersionedCache
from cachelab.caching.outbox import CommentCache, ListenerProcess, OutboxListener, install_outbox
from cachelab.caching.query_cache import QueryCache, normalise_sql, query_key
from cachelab.caching.rate_limit import SlidingWindowLimiter
from cachelab.caching.sharding import ShardRing, ring_hash
from cachelab.caching.warming import LockedCache, StreamWatcher, Warmer, XFetchCache, xfetch_due
from cachelab.caching.warmup import AccessRecorder, TopKWarmer, lfu_top, topk_overlap

__all__ = [
    "ConsistencyChecker", "wilson_interval", "DoubleDeleteCache", "LeaseCache", "NaiveCache",
    "VersionedCache",
    "LocalCache", "PubSubSubscriber", "StreamSubscriber", "TrackingSubscriber",
    "write_and_publish",
    "ChangeNotifier", "DependencyIndex", "DependentQueryCache", "install_change_capture",
    "EVICTION_POLICIES", "lru_sampling_trial", "measure_capacity", "replay_cache_aside",
    "AccessRecorder", "CacheAside", "CacheStats", "CommentCache", "ListenerProcess",
    "LockedCache", "OutboxListener", "QueryCache", "ShardRing", "SlidingWindowLimiter",
    "StreamWatcher", "TopKWarmer", "Warmer",
    "WriteOutcome", "WriteThrough", "WriteThroughStats", "XFetchCache", "install_outbox",
    "lfu_top", "normalise_sql", "preload", "query_key", "ring_hash", "topk_overlap", "xfetch_due",
]
