"""Caching strategies as a small library: no printing, no CLI.

Every strategy is importable from here (``from cachelab.caching import CacheAside``);
each module loads on first use, so that listing the exercises never pays for all of them.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AccessRecorder": "cachelab.caching.warmup",
    "CacheAside": "cachelab.caching.cache_aside",
    "CacheStats": "cachelab.caching.cache_aside",
    "ChangeNotifier": "cachelab.caching.dependencies",
    "CommentCache": "cachelab.caching.outbox",
    "ConsistencyChecker": "cachelab.caching.consistency",
    "DependencyIndex": "cachelab.caching.dependencies",
    "DependentQueryCache": "cachelab.caching.dependencies",
    "DoubleDeleteCache": "cachelab.caching.leases",
    "EVICTION_POLICIES": "cachelab.caching.eviction",
    "install_change_capture": "cachelab.caching.dependencies",
    "install_outbox": "cachelab.caching.outbox",
    "LeaseCache": "cachelab.caching.leases",
    "lfu_top": "cachelab.caching.warmup",
    "LocalCache": "cachelab.caching.invalidation",
    "LockedCache": "cachelab.caching.warming",
    "lru_sampling_trial": "cachelab.caching.eviction",
    "measure_capacity": "cachelab.caching.eviction",
    "NaiveCache": "cachelab.caching.leases",
    "normalise_sql": "cachelab.caching.query_cache",
    "OutboxListener": "cachelab.caching.outbox",
    "preload": "cachelab.caching.eager",
    "PubSubSubscriber": "cachelab.caching.invalidation",
    "query_key": "cachelab.caching.query_cache",
    "QueryCache": "cachelab.caching.query_cache",
    "replay_cache_aside": "cachelab.caching.eviction",
    "modulo_shard": "cachelab.caching.sharding",
    "ring_hash": "cachelab.caching.sharding",
    "ShardRing": "cachelab.caching.sharding",
    "FixedWindowLimiter": "cachelab.caching.rate_limit",
    "parse_limit": "cachelab.caching.rate_limit",
    "SlidingCounterLimiter": "cachelab.caching.rate_limit",
    "SlidingLogLimiter": "cachelab.caching.rate_limit",
    "TokenBucketLimiter": "cachelab.caching.rate_limit",
    "StreamSubscriber": "cachelab.caching.invalidation",
    "StreamWatcher": "cachelab.caching.warming",
    "topk_overlap": "cachelab.caching.warmup",
    "TopKWarmer": "cachelab.caching.warmup",
    "TrackingSubscriber": "cachelab.caching.invalidation",
    "VersionedCache": "cachelab.caching.leases",
    "Warmer": "cachelab.caching.warming",
    "wilson_interval": "cachelab.caching.consistency",
    "write_and_publish": "cachelab.caching.invalidation",
    "WriteOutcome": "cachelab.caching.eager",
    "WriteThrough": "cachelab.caching.eager",
    "WriteThroughStats": "cachelab.caching.eager",
    "xfetch_due": "cachelab.caching.warming",
    "XFetchCache": "cachelab.caching.warming",
    "ReplicaBalancer": "cachelab.caching.replicas",
    "LagSampler": "cachelab.caching.replicas",
    "wait_converged": "cachelab.caching.replicas",
    "ShardedWriter": "cachelab.caching.sharding",
    "SlotMap": "cachelab.caching.sharding",
    "ketama_hash": "cachelab.caching.sharding",
    "check_placement": "cachelab.caching.sharding",
    "ReplicationMove": "cachelab.caching.migration",
    "copy_keys": "cachelab.caching.migration",
    "SequenceWriter": "cachelab.caching.failover",
    "HealthCheckFailover": "cachelab.caching.failover",
    "SentinelEvents": "cachelab.caching.failover",
    "MigratingRouter": "cachelab.caching.resharding",
    "SlotMigration": "cachelab.caching.resharding",
    "plan_reshard": "cachelab.caching.resharding",
}

__all__ = sorted(_WHERE)

def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
