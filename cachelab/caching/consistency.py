"""A consistency checker: compare cached entries with the database, report, repair.

The application caches one JSON value per record under ``namespace:<id>`` and lists
every id it caches in a registry set. The checker reads ids from that registry (a seeded
sample, or all of them plus every ``namespace:*`` key a SCAN finds), reads the same
records from the database in batches, and sorts each entry into one of three kinds:

- ``missing``: the registry lists the id, the record exists, but the key is gone;
- ``stale``: the cached value differs from the record;
- ``orphan``: the record no longer exists, but the key (or its registry entry) does.

Unless it runs dry, it repairs what it found: ``missing`` and ``stale`` entries are
refreshed from the database, ``orphan`` entries deleted. From a sample it estimates the
share of inconsistent entries with a Wilson score interval.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

Kind = Literal["missing", "stale", "orphan"]
KINDS: tuple[Kind, ...] = ("missing", "stale", "orphan")

#: ``load_many(ids)`` returns the records that exist, by id; an absent id has no record.
LoadMany = Callable[[Sequence[int]], Mapping[int, Any]]


@dataclass(frozen=True)
class Finding:
    """One inconsistent entry: what the cache held and what the database holds."""

    item: int
    kind: Kind
    cached: Any  # None when the key is gone
    actual: Any  # None when the record is gone


@dataclass(frozen=True)
class RateEstimate:
    """The share of inconsistent entries, estimated from a sample, with its interval."""

    rate: float
    low: float
    high: float
    sampled: int
    population: int
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass
class CheckReport:
    """What one pass of the checker compared, found and repaired."""

    population: int  # ids the registry listed when the pass began
    checked: list[int] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    repaired: int = 0
    dry_run: bool = True
    full_scan: bool = False

    def by_kind(self) -> dict[str, int]:
        return {kind: sum(f.kind == kind for f in self.findings) for kind in KINDS}

    def estimate(self, confidence: float = 0.95) -> RateEstimate:
        """The inconsistent share of the registry, from this pass's sample.

        A full scan checked everything: its interval is the exact rate.
        """
        sampled = len(self.checked)
        population = max(self.population, sampled)
        low, high = wilson_interval(len(self.findings), sampled, population=population,
                                    confidence=confidence)
        rate = len(self.findings) / sampled if sampled else 0.0
        return RateEstimate(rate, low, high, sampled, population, confidence)


def wilson_interval(successes: int, n: int, *, population: int | None = None,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``.

    With ``population``, the sample was drawn without replacement from that many, and
    the finite-population correction narrows the interval (to the exact proportion when
    the sample is the whole population). Wilson, unlike the normal approximation, stays
    inside [0, 1] and gives a useful interval when no success was seen.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, not {successes}")
    p = successes / n
    n_eff = float(n)
    if population is not None and population > 1:
        if n > population:
            raise ValueError(f"a sample of {n} cannot come from a population of {population}")
        fpc = (population - n) / (population - 1)
        if fpc <= 0:
            return p, p
        n_eff = n / fpc
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2 = z * z
    denominator = 1 + z2 / n_eff
    centre = (p + z2 / (2 * n_eff)) / denominator
    half = z * math.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff * n_eff)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; rounding would leave a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


class ConsistencyChecker:
    """Checks ``namespace:<id>`` JSON entries listed in ``registry`` against the database.

    Args:
        client: a redis-py client with ``decode_responses=True``.
        namespace: key prefix, e.g. ``profile`` for ``profile:42``.
        registry: the set in which the application lists the ids it cached.
        load_many: reads records from the database by id (one query per batch).
        ttl_s: the TTL a refreshed entry gets.
        batch: ids compared per round trip (one pipeline of GETs, one database query).
    """

    def __init__(self, client: redis.Redis, *, namespace: str, registry: str,
                 load_many: LoadMany, ttl_s: float, batch: int = 100) -> None:
        if ttl_s <= 0 or batch < 1:
            raise ValueError("ttl_s must be positive and batch at least 1")
        if registry.startswith(f"{namespace}:"):
            raise ValueError("the registry key must not look like a cached entry")
        self.client = client
        self.namespace = namespace
        self.registry = registry
        self.load_many = load_many
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.batch = batch

    def key(self, item: int) -> str:
        return f"{self.namespace}:{item}"

    def store(self, values: Mapping[int, Any]) -> None:
        """Cache values and register their ids, as the application does when it fills."""
        with self.client.pipeline(transaction=False) as pipe:
            for item, value in values.items():
                pipe.set(self.key(item), json.dumps(value), px=self.ttl_ms)
                pipe.sadd(self.registry, item)
            pipe.execute()

    def registered(self) -> list[int]:
        """Every registered id, sorted (SSCAN: the server is never blocked by a big set)."""
        return sorted(int(item) for item in self.client.sscan_iter(self.registry, count=1000))

    def cached(self) -> list[int]:
        """Every id with a key under the namespace, registered or not (SCAN)."""
        prefix = f"{self.namespace}:"
        return sorted(int(key[len(prefix):])
                      for key in self.client.scan_iter(f"{prefix}*", count=1000)
                      if key[len(prefix):].isdigit())

    def check(self, *, sample: int | None = None, rng: random.Random | None = None,
              dry_run: bool = False) -> CheckReport:
        """Compare a sample of ``sample`` registered ids, or all of them when ``None``.

        The full scan also checks keys that are cached but not registered. Unless
        ``dry_run``, every finding is repaired before the method returns.
        """
        registered = self.registered()
        report = CheckReport(population=len(registered), dry_run=dry_run,
                             full_scan=sample is None)
        if sample is None:
            items = sorted(set(registered) | set(self.cached()))
        else:
            # Sampling ids is cheap (they are listed anyway); the comparisons are what cost.
            items = sorted((rng or random.Random()).sample(registered,
                                                           min(sample, len(registered))))
        registered_set = set(registered)
        for start in range(0, len(items), self.batch):
            chunk = items[start:start + self.batch]
            findings = self._compare(chunk, registered_set)
            report.checked.extend(chunk)
            report.findings.extend(findings)
            if not dry_run:
                report.repaired += self.repair(findings)
        return report

    def _compare(self, items: Sequence[int], registered: set[int]) -> list[Finding]:
        raw = self.client.mget([self.key(item) for item in items])
        records = self.load_many(items)
        findings = []
        for item, text in zip(items, raw, strict=True):
            cached = None if text is None else json.loads(text)
            actual = records.get(item)
            if actual is None:
                if text is not None or item in registered:
                    findings.append(Finding(item, "orphan", cached, None))
            elif text is None:
                if item in registered:
                    findings.append(Finding(item, "missing", None, actual))
            elif cached != actual:
                findings.append(Finding(item, "stale", cached, actual))
        return findings

    def repair(self, findings: Iterable[Finding]) -> int:
        """Refresh missing and stale entries from what was read, delete orphans."""
        count = 0
        with self.client.pipeline(transaction=True) as pipe:
            for finding in findings:
                key = self.key(finding.item)
                if finding.kind == "orphan":
                    pipe.delete(key)
                    pipe.srem(self.registry, finding.item)
                else:
                    pipe.set(key, json.dumps(finding.actual), px=self.ttl_ms)
                    pipe.sadd(self.registry, finding.item)
                count += 1
            if count:
                pipe.execute()
        return count


# --- the exercise's ground truth: profiles, and inconsistencies injected on purpose ----

PROFILES_SQL = """
    SELECT u.id, u.name, u.email, u.city, p.bio, p.theme, p.version
    FROM users u JOIN profiles p ON p.user_id = u.id WHERE u.id IN ({})"""

#: Each way of breaking an entry, and the kind the checker must call it.
INJECTIONS: dict[str, Kind] = {
    "missed invalidation": "stale", "altered value": "stale", "orphan": "orphan",
    "missing key": "missing",
}

#: id -> (the injection, the kind it shows up as)
Truth = Mapping[int, tuple[str, str]]


class ShopProfiles(Protocol):
    """The shop database as the injections use it: counted queries and writes."""

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]: ...
    def execute(self, sql: str, params: Any = ()) -> int: ...
    def update_profile(self, user_id: int, *, bio: str) -> None: ...


def profile_loader(db: ShopProfiles) -> LoadMany:
    """``load_many`` for the checker: one counted query per batch of user ids."""
    def load_many(ids: Sequence[int]) -> Mapping[int, Any]:
        if not ids:
            return {}
        rows = db.query(PROFILES_SQL.format(",".join("?" * len(ids))), list(ids))
        return {row["id"]: row for row in rows}
    return load_many


def inject(db: ShopProfiles, cache: redis.Redis, checker: ConsistencyChecker,
           ids: Sequence[int], rate: float, rng: random.Random) -> dict[int, tuple[str, str]]:
    """Break ``round(rate * len(ids))`` entries, each of :data:`INJECTIONS` in turn;
    returns the ground truth, which the checker never sees."""
    chosen = rng.sample(list(ids), max(1, round(rate * len(ids))))
    how = list(INJECTIONS)
    truth: dict[int, tuple[str, str]] = {}
    for n, item in enumerate(chosen):
        injection = how[n % len(how)]
        if injection == "missed invalidation":
            db.update_profile(item, bio=f"edited, invalidation lost ({n})")
        elif injection == "altered value":
            value = json.loads(cache.get(checker.key(item)) or "{}")
            value["bio"] = f"{value.get('bio', '')} (written by a buggy deploy)"
            cache.set(checker.key(item), json.dumps(value), keepttl=True)
        elif injection == "orphan":
            db.execute("DELETE FROM profiles WHERE user_id = ?", [item])
            db.execute("DELETE FROM users WHERE id = ?", [item])
        else:
            cache.delete(checker.key(item))
        truth[item] = (injection, INJECTIONS[injection])
    return truth


def found(findings: Sequence[Finding], truth: Truth) -> set[int]:
    """The injected items found as the kind they were injected as."""
    return {f.item for f in findings if f.item in truth and truth[f.item][1] == f.kind}


def wrong_findings(findings: Sequence[Finding], truth: Truth) -> int:
    """Findings that are not an injected inconsistency of that very kind."""
    return sum(truth.get(f.item, ("", ""))[1] != f.kind for f in findings)
