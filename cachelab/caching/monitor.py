"""Watching a cache at work: an access log, live counters and a Prometheus exporter.

Any exercise can switch them on around a :class:`~cachelab.caching.CacheAside`::

    monitor = CacheMonitor(log=lab.enter_context(AccessLog(path)),
                           exporter=PrometheusExporter())
    lab.enter_context(monitor.exporter.serve(port=0))
    pages = MonitoredCache(CacheAside(...), monitor)
    with lab.live("cache", monitor.snapshot):
        pages.fetch(42)

Every access is timed once and fanned out to the counters (always on), the JSON-lines
log and the Prometheus metrics. Nothing here prints; prometheus_client is imported
only by whoever exports.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cachelab.errors import UsageError
from cachelab.workload.measure import LatencyHistogram, ratio

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from cachelab.caching.cache_aside import CacheAside, CacheStats

K = TypeVar("K")

#: Histogram buckets in seconds: a Redis hit takes tens of microseconds, a miss a
#: database round trip; prometheus_client's defaults start at 5 ms and would lump
#: every hit into one bucket.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                     0.1, 0.25, 0.5, 1.0)
_SPARKS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Access:
    """One cache read: when (Unix seconds), which key, hit or miss, and how long it took."""

    time: float
    key: str
    hit: bool
    latency_ms: float

    def to_json(self) -> str:
        return json.dumps({"time": round(self.time, 6), "key": self.key,
                           "result": "hit" if self.hit else "miss",
                           "latency_ms": round(self.latency_ms, 4)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Access:
        data = json.loads(line)
        if data["result"] not in ("hit", "miss"):
            raise ValueError(f"result must be hit or miss, not {data['result']!r}")
        return cls(float(data["time"]), str(data["key"]), data["result"] == "hit",
                   float(data["latency_ms"]))


class AccessLog:
    """Appends one JSON line per access to ``path``; safe to share between threads.

    The file is created at once (its folder too), replacing an older one so that it
    holds exactly this log's accesses; :meth:`close` or the end of a ``with`` block
    flushes and closes it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w", encoding="utf-8")  # closed by close()
        self._lock = threading.Lock()
        self.lines = 0

    def write(self, access: Access) -> None:
        line = access.to_json() + "\n"
        with self._lock:
            self._file.write(line)
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> AccessLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_access_log(path: Path) -> list[Access]:
    """Every access in a log written by :class:`AccessLog`; a bad line names its number."""
    accesses = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            try:
                accesses.append(Access.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not an access record: {exc}") from None
    return accesses


def hit_ratio_by_slice(accesses: Sequence[Access], slices: int) -> list[tuple[int, float]]:
    """Split the accesses into ``slices`` runs of equal length: (first index, hit ratio)."""
    if not accesses:
        return []
    bounds = sorted({len(accesses) * i // slices for i in range(slices)} | {len(accesses)})
    return [(start, ratio(sum(a.hit for a in accesses[start:end]), end - start))
            for start, end in zip(bounds, bounds[1:], strict=False)]


class AccessCounters:
    """Hits, misses and latencies in total and over recent time windows.

    Args:
        window_s: length of one window of the timeline, in seconds.
        windows_kept: how many recent windows the timeline keeps.
    """

    def __init__(self, window_s: float = 0.5, windows_kept: int = 24) -> None:
        self.window_s = window_s
        self.hits = 0
        self.misses = 0
        self.hit_latency = LatencyHistogram()
        self.miss_latency = LatencyHistogram()
        self._all_latency = LatencyHistogram()
        self._started = time.monotonic()
        # [window number, hits, misses]; the last one is still filling.
        self._windows: deque[list[int]] = deque(maxlen=windows_kept)
        self._lock = threading.Lock()

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_ratio(self) -> float:
        return ratio(self.hits, self.requests)

    def record(self, hit: bool, latency_ns: int) -> None:
        window = int((time.monotonic() - self._started) / self.window_s)
        with self._lock:
            if hit:
                self.hits += 1
                self.hit_latency.record_ns(latency_ns)
            else:
                self.misses += 1
                self.miss_latency.record_ns(latency_ns)
            self._all_latency.record_ns(latency_ns)
            if not self._windows or self._windows[-1][0] != window:
                self._windows.append([window, 0, 0])
            self._windows[-1][1 if hit else 2] += 1

    def snapshot(self) -> dict[str, float | int | str]:
        """What a live view shows: totals, the hit-ratio trend, recent ops/s, latency."""
        with self._lock:
            now = int((time.monotonic() - self._started) / self.window_s)
            done = [w for w in self._windows if w[0] < now]
            latest = done[-1] if done and done[-1][0] == now - 1 else [now - 1, 0, 0]
            trend = "".join(_SPARKS[min(len(_SPARKS) - 1, int(ratio(h, h + m) * len(_SPARKS)))]
                            for _, h, m in done)
            latency = self._all_latency.summary_ms()
            return {
                "requests": self.requests, "hits": self.hits, "misses": self.misses,
                "hit ratio": self.hit_ratio,
                "hit ratio, last window": ratio(latest[1], latest[1] + latest[2]),
                f"hit ratio trend ({self.window_s:g} s a bar)": trend or "…",
                "ops/s, last window": (latest[1] + latest[2]) / self.window_s,
                "latency p50 ms": latency["p50"], "latency p99 ms": latency["p99"],
            }


class MetricsServer:
    """Serves a Prometheus registry over HTTP on 127.0.0.1 from a thread, until stopped.

    Args:
        registry: the ``prometheus_client.CollectorRegistry`` to expose.
        port: the TCP port; 0 lets the OS pick a free one (see :attr:`port`).
        host: the address to bind; loopback unless you mean to expose it.
    """

    def __init__(self, registry: Any, port: int = 0, host: str = "127.0.0.1") -> None:
        self.registry = registry
        self.host = host
        self.requested_port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics server is not running")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        class Handler(WSGIRequestHandler):
            timeout = 5  # a stalled scraper cannot hold up stop() for longer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape is not news; stderr stays clean for the CLI

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = False  # request threads are joined by server_close()

        try:
            self._server = make_server(self.host, self.requested_port,
                                       make_wsgi_app(self.registry), Server, Handler)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            why = "in use" if exc.errno == errno.EADDRINUSE else "not allowed for this user"
            raise UsageError(f"cannot serve metrics on {self.host}:{self.requested_port}: the "
                             f"port is {why}; pick another port, or 0 for any free one") from None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"metrics-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class PrometheusExporter:
    """Request counters labelled hit and miss, and a latency histogram, in its own registry.

    Exposes ``<namespace>_cache_requests_total{cache, result}`` and
    ``<namespace>_cache_request_duration_seconds{cache, result}``. Using a registry of
    its own (not prometheus_client's global one) lets several exporters, and several
    runs in one process, live side by side.
    """

    def __init__(self, cache: str = "cache", namespace: str = "cachelab") -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.cache = cache
        self.namespace = namespace
        self.registry = CollectorRegistry()
        self._requests = Counter("cache_requests", "Cache reads, by result (hit or miss).",
                                 ["cache", "result"], namespace=namespace,
                                 registry=self.registry)
        self._latency = Histogram("cache_request_duration_seconds",
                                  "Time to answer a cache read, loading included on a miss.",
                                  ["cache", "result"], namespace=namespace,
                                  registry=self.registry, buckets=LATENCY_BUCKETS_S)
        # Both series exist from the start, at zero, so a dashboard's ratio is defined.
        self._series = {hit: (self._requests.labels(cache, result),
                              self._latency.labels(cache, result))
                        for hit, result in ((True, "hit"), (False, "miss"))}

    def observe(self, hit: bool, latency_s: float) -> None:
        requests, latency = self._series[hit]
        requests.inc()
        latency.observe(latency_s)

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """A :class:`MetricsServer` for this registry; start it with ``with`` (or the Lab)."""
        return MetricsServer(self.registry, port, host)


@dataclass(frozen=True)
class ScrapedTotals:
    """What a Prometheus scrape of :class:`PrometheusExporter` says about one cache."""

    hits: float
    misses: float
    latency_count: float


def scrape_totals(url: str, cache: str = "cache", namespace: str = "cachelab",
                  timeout_s: float = 5.0) -> ScrapedTotals:
    """GET ``url`` and read the totals back with prometheus_client's own text parser."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    totals = {"hit": 0.0, "miss": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("cache") != cache:
                continue
            if sample.name == f"{namespace}_cache_requests_total":
                totals[sample.labels["result"]] += sample.value
            elif sample.name == f"{namespace}_cache_request_duration_seconds_count":
                totals["count"] += sample.value
    return ScrapedTotals(totals["hit"], totals["miss"], totals["count"])


class CacheMonitor:
    """Fans every access out to the counters and, when given, the log and the exporter."""

    def __init__(self, *, log: AccessLog | None = None,
                 exporter: PrometheusExporter | None = None,
                 counters: AccessCounters | None = None) -> None:
        self.log = log
        self.exporter = exporter
        self.counters = counters or AccessCounters()

    def observe(self, key: str, hit: bool, latency_ns: int) -> None:
        self.counters.record(hit, latency_ns)
        if self.log is not None:
            self.log.write(Access(time.time(), key, hit, latency_ns / 1e6))
        if self.exporter is not None:
            self.exporter.observe(hit, latency_ns / 1e9)

    def snapshot(self) -> dict[str, float | int | str]:
        """For ``lab.live``: only reads the counters."""
        return self.counters.snapshot()


class MonitoredCache(Generic[K]):
    """A cache-aside whose every read is timed and reported to a :class:`CacheMonitor`.

    It adds no Redis command, so Redis's own counters still match the cache's.
    """

    def __init__(self, cache: CacheAside[K], monitor: CacheMonitor) -> None:
        self.cache = cache
        self.monitor = monitor

    @property
    def stats(self) -> CacheStats:
        return self.cache.stats

    def key(self, item: K) -> str:
        return self.cache.key(item)

    def fetch(self, item: K) -> tuple[Any, bool]:
        """``(value, hit)`` from the wrapped cache; the latency includes a miss's load."""
        start = time.perf_counter_ns()
        value, hit = self.cache.fetch(item)
        self.monitor.observe(self.cache.key(item), hit, time.perf_counter_ns() - start)
        return value, hit

    def get(self, item: K) -> Any:
        return self.fetch(item)[0]

    def invalidate(self, item: K) -> bool:
        return self.cache.invalidate(item)
