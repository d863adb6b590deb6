"""Measured load runs against HTTP servers side by side: each run's answers, the server's
own counters and its CPU read around the measured phase, the median over trials, and the
tables that compare them."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cachelab.workload.measure import LATENCY_COLUMNS, latency_row, ratio

if TYPE_CHECKING:
    from cachelab.exercise import Result
    from cachelab.workload.loadgen import LatencyHistogram, LoadResult, LoadSpec


class MeasuredServer(Protocol):
    """A server process under load: its pid (for its CPU time), URL and own counters."""

    @property
    def pid(self) -> int: ...

    @property
    def url(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...


@dataclass
class ServerRun:
    """One measured run of the plan against one server."""

    load: LoadResult
    db_queries: int
    cache_hits: int
    cache_misses: int
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.load.rps

    def p(self, name: str) -> float:
        return self.load.latency.summary_ms()[name]

    @property
    def db_qps(self) -> float:
        return ratio(self.db_queries, self.load.elapsed_s)

    @property
    def db_per_request(self) -> float:
        return ratio(self.db_queries, self.load.responses)

    @property
    def hit_ratio(self) -> float:
        return ratio(self.cache_hits, self.cache_hits + self.cache_misses)

    @property
    def cpu_ms_per_request(self) -> float:
        return ratio(self.cpu_s * 1000, self.load.responses)

    @property
    def cpu_pct(self) -> float:
        return ratio(self.cpu_s * 100, self.load.elapsed_s)

    @property
    def errors(self) -> int:
        return self.load.errors + sum(self.load.warmup.errors.values())


@dataclass
class ServerRuns:
    """One server and its runs, trial by trial."""

    name: str
    api: MeasuredServer
    runs: list[ServerRun] = field(default_factory=list)

    def median(self, value: str) -> float:
        return float(statistics.median(getattr(r, value) for r in self.runs))

    def p_median(self, name: str) -> float:
        return float(statistics.median(r.p(name) for r in self.runs))

    def spread(self, value: str, fmt: str = "{:.1f}") -> str:
        values = [getattr(r, value) for r in self.runs]
        return f"{fmt.format(min(values))}–{fmt.format(max(values))}"

    def total(self, value: str) -> int:
        return sum(getattr(r, value) for r in self.runs)

    @property
    def requests(self) -> int:
        return sum(r.load.responses for r in self.runs)

    def by_outcome(self) -> dict[str, LatencyHistogram]:
        """Latencies of each X-Cache value, every trial together."""
        from cachelab.workload.loadgen import LatencyHistogram

        merged: dict[str, LatencyHistogram] = {}
        for r in self.runs:
            for outcome, hist in r.load.latencies.by_outcome.items():
                merged.setdefault(outcome, LatencyHistogram()).add_encoded(hist.encode())
        return merged

    def header_counts(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in self.runs:
            counts.update(r.load.outcomes)
        return counts

    def error_kinds(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in self.runs:
            counts.update(r.load.measured.errors)
            counts.update(r.load.warmup.errors)
        return counts



def measure_run(mode: ServerRuns, plan: list[str], spec: LoadSpec) -> ServerRun:
    """Play ``plan`` against ``mode``'s server, with its counters and CPU read around the
    measured phase (after the warm-up, with nothing in flight)."""
    import psutil

    from cachelab.workload.loadgen import HttpTarget, run_load

    server = psutil.Process(mode.api.pid)
    marks: list[tuple[dict[str, Any], float]] = []

    def mark() -> None:
        times = server.cpu_times()
        marks.append((mode.api.stats(), times.user + times.system))

    load = run_load(HttpTarget.from_url(mode.api.url), plan, spec,
                    before_measure=mark, after_measure=mark)
    (before, cpu0), (after, cpu1) = marks
    return ServerRun(load, after["db_queries"] - before["db_queries"],
               after["cache_hits"] - before["cache_hits"],
               after["cache_misses"] - before["cache_misses"], cpu1 - cpu0)



def report_side_by_side(result: Result, modes: list[ServerRuns]) -> None:
    """The side-by-side table, the per-trial table and a throughput chart."""
    none, cached = modes

    def row(label: str, value: str, fmt: str = "{:.1f}") -> list[object]:
        a, b = none.median(value), cached.median(value)
        return [label, fmt.format(a), none.spread(value, fmt), fmt.format(b),
                cached.spread(value, fmt), f"{ratio(b, a):.2f}x" if a else "-"]

    def p_row(name: str) -> list[object]:
        a, b = none.p_median(name), cached.p_median(name)
        spread = [f"{min(r.p(name) for r in m.runs):.2f}–{max(r.p(name) for r in m.runs):.2f}"
                  for m in modes]
        return [f"{name} ms", f"{a:.2f}", spread[0], f"{b:.2f}", spread[1],
                f"{ratio(b, a):.2f}x"]

    result.table(f"Median of {len(none.runs)} trials, caching off and on",
                 ["", "no cache", "range", "cache", "range", "cache / no cache"],
                 [row("throughput, requests/s", "rps", "{:.0f}"),
                  *(p_row(p) for p in ("p50", "p95", "p99", "max")),
                  row("errors", "errors", "{:.0f}"),
                  row("database queries/s", "db_qps", "{:.0f}"),
                  row("database queries per request", "db_per_request", "{:.3f}"),
                  row("hit ratio", "hit_ratio", "{:.3f}"),
                  row("server CPU ms per request", "cpu_ms_per_request", "{:.2f}"),
                  row("server CPU %", "cpu_pct", "{:.0f}")])
    result.table("Latency by X-Cache, every trial together", LATENCY_COLUMNS,
                 [latency_row(f"{m.name}: {outcome}", hist)
                  for m in modes for outcome, hist in sorted(m.by_outcome().items())])
    result.table("Trial by trial", ["trial", "server", "answers", "s", "rps", "p50 ms",
                                    "p99 ms", "db queries", "hits", "misses", "CPU ms/req"],
                 [[i + 1, m.name, r.load.responses, round(r.load.elapsed_s, 2), round(r.rps),
                   round(r.p("p50"), 2), round(r.p("p99"), 2), r.db_queries, r.cache_hits,
                   r.cache_misses, round(r.cpu_ms_per_request, 2)]
                  for i in range(len(none.runs)) for m in modes for r in [m.runs[i]]])
    result.chart("Throughput per trial", "trial", list(range(1, len(none.runs) + 1)),
                 {m.name: [round(r.rps) for r in m.runs] for m in modes}, unit=" rps")

