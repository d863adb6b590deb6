"""Measuring tools: latency histograms, seeded key choices, ratios and balance."""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from cachelab.workload.poll import poll_until

if TYPE_CHECKING:  # redis is imported by whoever builds the client
    import redis

Distribution = Literal["zipf", "uniform"]

# Microsecond resolution from 1 us to 60 s, three significant digits.
_LOWEST_US, _HIGHEST_US, _DIGITS = 1, 60_000_000, 3


class LatencyHistogram:
    """An HDR histogram of durations, reported in milliseconds."""

    def __init__(self) -> None:
        from hdrh.histogram import HdrHistogram  # deferred: `cachelab list` never needs it

        self._hist = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)

    def record_ns(self, duration_ns: int) -> None:
        self._hist.record_value(min(max(1, duration_ns // 1000), _HIGHEST_US))

    @contextmanager
    def time(self) -> Iterator[None]:
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.record_ns(time.perf_counter_ns() - start)

    @property
    def count(self) -> int:
        return int(self._hist.get_total_count())

    def percentile_ms(self, percentile: float) -> float:
        if self.count == 0:
            return 0.0
        return float(self._hist.get_value_at_percentile(percentile)) / 1000

    def encode(self) -> bytes:
        """HdrHistogram's compressed form (base64), to send it to another process."""
        encoded: bytes = self._hist.encode()
        return encoded

    def add_encoded(self, encoded: bytes) -> None:
        """Add a histogram another process encoded (its worker's latencies)."""
        self._hist.decode_and_add(encoded)

    def record_us_counts(self, counts: Mapping[int, int]) -> None:
        """Record ``count`` durations of ``us`` microseconds for each pair, at once."""
        highest = self._hist.highest_trackable_value
        for us, count in counts.items():
            self._hist.record_value(min(max(1, us), highest), count)

    def summary_ms(self) -> dict[str, float]:
        """p50, p95, p99 and max in milliseconds."""
        return {
            "p50": self.percentile_ms(50),
            "p95": self.percentile_ms(95),
            "p99": self.percentile_ms(99),
            "max": float(self._hist.get_max_value()) / 1000 if self.count else 0.0,
        }


def key_sampler(
    n_keys: int, distribution: Distribution, *, zipf_s: float = 1.1, rng: random.Random
) -> Callable[[], int]:
    """Return a function drawing ids in ``1..n_keys``; Zipf ranks are shuffled onto ids.

    With Zipf, the probability of the k-th most popular id is proportional to
    ``1 / k**zipf_s``; which id is k-th is itself drawn from ``rng``, so that the hot
    set is not simply the lowest ids.
    """
    ids = list(range(1, n_keys + 1))
    if distribution == "uniform":
        return lambda: rng.randint(1, n_keys)
    if distribution != "zipf":
        raise ValueError(f"unknown distribution {distribution!r}; use zipf or uniform")
    rng.shuffle(ids)
    cumulative = list(itertools.accumulate(1 / rank**zipf_s for rank in range(1, n_keys + 1)))
    total = cumulative[-1]
    return lambda: ids[bisect.bisect_left(cumulative, rng.random() * total)]


def ratio(part: float, whole: float) -> float:
    """``part / whole``, or 0.0 when there is no whole."""
    return part / whole if whole else 0.0


LATENCY_COLUMNS = ["", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"]


def latency_row(label: str, hist: LatencyHistogram) -> list[object]:
    """A table row under :data:`LATENCY_COLUMNS`."""
    s = hist.summary_ms()
    return [label, hist.count, s["p50"], s["p95"], s["p99"], s["max"]]


def wait_for_expiry(client: redis.Redis, key: str, timeout_s: float) -> float | None:
    """Poll until ``key`` is gone; seconds waited, or None if it outlived ``timeout_s``."""
    start = time.monotonic()
    if poll_until(lambda: not client.exists(key), timeout_s=timeout_s,
                  what=f"{key} to expire", interval_s=0.02, error=None) is None:
        return None
    return time.monotonic() - start


def balance(counts: Iterable[int]) -> tuple[float, float]:
    """``max / mean`` and ``min / mean`` of per-node counts: (1.0, 1.0) is a perfect split;
    (0.0, 0.0) when nothing was counted."""
    values = list(counts)
    mean = sum(values) / len(values) if values else 0.0
    if not mean:
        return 0.0, 0.0
    return max(values) / mean, min(values) / mean
