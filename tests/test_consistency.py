"""The consistency checker on a real redis-server, and its Wilson score interval."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis

from cachelab.caching.consistency import (
    INJECTIONS,
    ConsistencyChecker,
    found,
    inject,
    profile_loader,
    wilson_interval,
    wrong_findings,
)
from cachelab.lab import Lab


class Database:
    """Records by id; counts the batches the checker asks for."""

    def __init__(self, records: dict[int, Any]) -> None:
        self.records = records
        self.batches: list[list[int]] = []

    def load_many(self, ids: Sequence[int]) -> Mapping[int, Any]:
        self.batches.append(list(ids))
        return {i: self.records[i] for i in ids if i in self.records}


@pytest.fixture
def client(lab: Lab) -> redis.Redis:
    return lab.redis()


def _setup(client: redis.Redis, n: int = 40, **kwargs: Any
           ) -> tuple[Database, ConsistencyChecker]:
    db = Database({i: {"id": i, "name": f"user{i}", "version": 1} for i in range(1, n + 1)})
    checker = ConsistencyChecker(client, namespace="profile", registry="index:profile",
                                 load_many=db.load_many, ttl_s=60, **kwargs)
    checker.store(dict(db.records))
    return db, checker


def _break(client: redis.Redis, db: Database, checker: ConsistencyChecker) -> dict[int, str]:
    """One of each kind, plus a cached value that differs only after a JSON round trip."""
    db.records[3] = {**db.records[3], "version": 2}          # missed invalidation: stale
    client.set(checker.key(5), json.dumps({"id": 5, "name": "bug", "version": 1}))  # stale
    del db.records[7]                                         # orphan
    client.delete(checker.key(9))                             # missing
    return {3: "stale", 5: "stale", 7: "orphan", 9: "missing"}


def test_full_scan_classifies_exactly_what_was_broken(client: redis.Redis) -> None:
    db, checker = _setup(client)
    expected = _break(client, db, checker)

    report = checker.check(dry_run=True)

    assert {f.item: f.kind for f in report.findings} == expected
    assert report.full_scan and len(report.checked) == 40 and report.population == 40
    assert report.by_kind() == {"missing": 1, "stale": 2, "orphan": 1}
    orphan = next(f for f in report.findings if f.kind == "orphan")
    assert orphan.actual is None and orphan.cached == {"id": 7, "name": "user7", "version": 1}
    # Batches of 100 by default: 40 ids are one MGET and one database query.
    assert db.batches == [list(range(1, 41))]


def test_dry_run_changes_nothing(client: redis.Redis) -> None:
    db, checker = _setup(client)
    _break(client, db, checker)

    def state() -> tuple[dict[str, str | None], set[str]]:
        return ({key: client.get(key) for key in client.scan_iter("profile:*")},
                client.smembers("index:profile"))

    before = state()

    first = checker.check(dry_run=True)
    second = checker.check(dry_run=True)

    assert first.repaired == 0
    assert state() == before
    assert [(f.item, f.kind) for f in second.findings] == [(f.item, f.kind)
                                                           for f in first.findings]


def test_repair_refreshes_and_deletes_then_a_second_pass_finds_none(client: redis.Redis
                                                                    ) -> None:
    db, checker = _setup(client)
    _break(client, db, checker)

    report = checker.check()
    after = checker.check(dry_run=True)

    assert report.repaired == 4 and after.findings == []
    assert json.loads(client.get(checker.key(3)) or "null") == db.records[3]
    assert json.loads(client.get(checker.key(9)) or "null") == db.records[9]
    assert client.exists(checker.key(7)) == 0
    assert not client.sismember("index:profile", 7)
    assert 0 < client.pttl(checker.key(9)) <= 60_000


def test_full_scan_also_checks_unregistered_keys(client: redis.Redis) -> None:
    db, checker = _setup(client, n=10)
    client.set(checker.key(99), json.dumps({"id": 99}))       # cached, never registered, no row
    client.set(checker.key(4), json.dumps({"id": 4}))
    client.srem("index:profile", 4)                           # cached, stale, unregistered

    sampled = checker.check(sample=10, rng=random.Random(1), dry_run=True)
    full = checker.check(dry_run=True)

    assert sorted(sampled.checked) == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert sampled.findings == []
    assert {f.item: f.kind for f in full.findings} == {4: "stale", 99: "orphan"}


def test_a_seeded_sample_is_repeatable_and_only_checks_its_ids(client: redis.Redis) -> None:
    db, checker = _setup(client, n=200, batch=16)
    _break(client, db, checker)

    one = checker.check(sample=50, rng=random.Random(5), dry_run=True)
    two = checker.check(sample=50, rng=random.Random(5), dry_run=True)
    other = checker.check(sample=50, rng=random.Random(6), dry_run=True)

    assert one.checked == two.checked and len(set(one.checked)) == 50
    assert one.checked != other.checked
    assert {f.item for f in one.findings} == {3, 5, 7, 9} & set(one.checked)
    assert all(len(batch) <= 16 for batch in db.batches)
    assert one.population == 200 and not one.full_scan


def test_the_estimate_of_a_full_scan_is_exact(client: redis.Redis) -> None:
    db, checker = _setup(client)
    _break(client, db, checker)

    estimate = checker.check(dry_run=True).estimate()

    assert estimate.rate == estimate.low == estimate.high == 4 / 40
    assert estimate.contains(0.1) and not estimate.contains(0.11)


def test_registry_key_must_not_be_an_entry(client: redis.Redis) -> None:
    with pytest.raises(ValueError):
        ConsistencyChecker(client, namespace="profile", registry="profile:index",
                           load_many=lambda ids: {}, ttl_s=1)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    # No success seen: the interval still has a useful upper bound, unlike p ± z*se.
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Higher confidence, wider interval.
    assert wilson_interval(5, 50, confidence=0.99)[1] > wilson_interval(5, 50)[1]


def test_finite_population_correction_narrows_to_the_exact_rate() -> None:
    plain = wilson_interval(10, 200)
    corrected = wilson_interval(10, 200, population=400)
    assert plain[0] < corrected[0] < 0.05 < corrected[1] < plain[1]
    assert wilson_interval(10, 200, population=200) == (0.05, 0.05)
    assert wilson_interval(10, 200, population=10**9) == pytest.approx(plain)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(1, 20, population=10)


def test_wilson_interval_covers_the_true_rate_about_as_often_as_it_says() -> None:
    """Sample without replacement from a population with a known rate, many times."""
    rng = random.Random(2024)
    population, bad, n = 1000, 50, 250
    items = [i < bad for i in range(population)]
    trials = 2000
    covered = 0
    for _ in range(trials):
        hits = sum(rng.sample(items, n))
        low, high = wilson_interval(hits, n, population=population)
        covered += low <= bad / population <= high
    assert 0.92 <= covered / trials <= 0.99


def test_injections_on_the_shop_are_found_as_their_kind(lab: Lab) -> None:
    db, client = lab.shop(), lab.redis()
    checker = ConsistencyChecker(client, namespace="profile", registry="index:profile",
                                 load_many=profile_loader(db), ttl_s=60)
    ids = list(range(1, 41))
    queries = db.queries
    checker.store(profile_loader(db)(ids))
    assert db.queries == queries + 1  # one counted query for the batch
    truth = inject(db, client, checker, ids, 0.2, random.Random(3))
    assert len(truth) == 8
    assert sorted(how for how, _ in truth.values()) == sorted(list(INJECTIONS) * 2)
    scan = checker.check(dry_run=True)
    assert found(scan.findings, truth) == set(truth)
    assert wrong_findings(scan.findings, truth) == 0
    assert wrong_findings(scan.findings, {}) == len(scan.findings) == 8
