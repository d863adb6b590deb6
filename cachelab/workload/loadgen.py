"""An async load driver: a seeded plan of requests, played over real sockets.

``concurrency`` connections each keep one request in flight (a closed loop, like wrk
``-c`` and redis-benchmark ``-c``). A warm-up phase runs first and is left out of
every figure; then the measured phase runs until the plan's request count or the
duration is used up, recording each answer's latency in an HDR histogram and each
failure by kind. With ``processes > 1`` the connections are split over worker
processes (multiprocessing, spawn context), each of which returns its encoded
histogram and counts for the parent to merge.

Two targets: :class:`HttpTarget` (HTTP/1.1 GETs with keep-alive, counting the values
of a response header such as ``X-Cache``) and :class:`RedisTarget` (raw ``GET`` of a
key, counting hits and misses). The driver speaks both protocols itself on asyncio
(uvloop when installed), parsing answers with the C parsers the project already has
(httptools, hiredis). On the lab's 2-core machine httpx 0.28 spent about 1.5 ms of
client CPU per request and redis.asyncio about 0.12 ms per GET, against about 0.07 ms
and 0.02 ms here: with them, a load test on a small machine measures its own client.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from cachelab.errors import EnvironmentProblem
from cachelab.workload.measure import Distribution, LatencyHistogram, key_sampler

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


T = TypeVar("T")


class LoadError(EnvironmentProblem):
    """The load driver could not reach its target, or a worker process failed."""


# ------------------------------------------------------------------ the request plan


@dataclass(frozen=True)
class Resource:
    """One kind of request in a plan: its items (paths or keys) and its share of the plan."""

    items: tuple[str, ...]
    weight: float = 1.0

    @classmethod
    def ids(cls, template: str, count: int, weight: float = 1.0) -> Resource:
        """``template`` filled with the ids ``1..count``, e.g. ``/users/{}``."""
        return cls(tuple(template.format(i) for i in range(1, count + 1)), weight)


def request_plan(resources: Sequence[Resource], count: int, *, rng: random.Random,
                 distribution: Distribution = "zipf", zipf_s: float = 1.1) -> list[str]:
    """``count`` requests: a resource drawn by weight, then one of its items.

    Items follow ``distribution`` (Zipf ranks are shuffled onto items by ``rng``, so the
    hot set is not simply the first items). The same seed gives the same plan, so runs
    with and without caching, or two tools, can be handed exactly the same workload.
    """
    if count < 0 or not resources or any(not r.items or r.weight <= 0 for r in resources):
        raise ValueError("a plan needs resources with items and positive weights, count >= 0")
    samplers = [key_sampler(len(r.items), distribution, zipf_s=zipf_s, rng=rng)
                for r in resources]
    cumulative = list(itertools.accumulate(r.weight for r in resources))
    plan = []
    for _ in range(count):
        i = bisect.bisect_left(cumulative, rng.random() * cumulative[-1])
        plan.append(resources[i].items[samplers[i]() - 1])
    return plan


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP/1.1 server; plan items are paths, answered by GETs on kept-alive connections.

    Args:
        host: its address.
        port: its port.
        header: the response header whose values are counted (``hit``, ``miss``, ...).
    """

    host: str
    port: int
    header: str = "x-cache"

    @classmethod
    def from_url(cls, url: str, header: str = "x-cache") -> HttpTarget:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: the driver speaks plain http://host:port only")
        return cls(parts.hostname, parts.port or 80, header)

    def encode(self, item: str) -> bytes:
        return f"GET {item} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()

    def link(self, engine: _Engine, slot: _Slot) -> _Link:
        return _HttpLink(engine, slot, self.header.lower().encode())


@dataclass(frozen=True)
class RedisTarget:
    """A Redis server; plan items are keys, each read with one ``GET``."""

    host: str
    port: int

    def encode(self, item: str) -> bytes:
        key = item.encode()
        return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)

    def link(self, engine: _Engine, slot: _Slot) -> _Link:
        return _RedisLink(engine, slot)


Target = HttpTarget | RedisTarget


# ------------------------------------------------------------------ one process's engine


@dataclass
class PhaseCounts:
    """What one phase saw: answers, failures by kind, header values or hits/misses."""

    responses: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    start_ns: int = 0  # time.monotonic_ns(): one clock for every process of the machine
    end_ns: int = 0

    def merge(self, other: PhaseCounts) -> None:
        self.responses += other.responses
        self.errors.update(other.errors)
        self.outcomes.update(other.outcomes)
        self.start_ns = min(self.start_ns, other.start_ns) if self.start_ns else other.start_ns
        self.end_ns = max(self.end_ns, other.end_ns)

    def as_dict(self) -> dict[str, Any]:
        return {"responses": self.responses, "errors": dict(self.errors),
                "outcomes": dict(self.outcomes), "start_ns": self.start_ns,
                "end_ns": self.end_ns}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseCounts:
        return cls(d["responses"], Counter(d["errors"]), Counter(d["outcomes"]),
                   d["start_ns"], d["end_ns"])


class _Link(asyncio.Protocol):
    """One connection of a slot; each target's subclass parses its answers and hands
    each complete one to ``engine.answered``."""

    def __init__(self, engine: _Engine, slot: _Slot) -> None:
        self.engine, self.slot = engine, slot
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def garbled(self) -> None:
        """An answer the parser refused: count it and drop the connection."""
        self.engine.failed(self.slot, "bad response")
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot.link is self:
            self.engine.lost(self.slot, exc)


class _HttpLink(_Link):
    """httptools callbacks: one answer per complete response, status >= 400 an error."""

    def __init__(self, engine: _Engine, slot: _Slot, header: bytes) -> None:
        import httptools

        super().__init__(engine, slot)
        self._parser = httptools.HttpResponseParser(self)
        self._parse_error = httptools.HttpParserError
        self._header = header
        self._outcome: str | None = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._parse_error:
            self.garbled()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == self._header:
            self._outcome = value.decode("latin-1")

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        outcome, self._outcome = self._outcome, None
        self.engine.answered(self.slot, f"HTTP {status}" if status >= 400 else None, outcome,
                             self._parser.should_keep_alive())


class _RedisLink(_Link):
    """hiredis: a nil reply is a miss, a value a hit, an error reply an error by its code."""

    def __init__(self, engine: _Engine, slot: _Slot) -> None:
        import hiredis

        super().__init__(engine, slot)
        self._reader = hiredis.Reader()
        self._reply_error = hiredis.ReplyError
        self._protocol_error = hiredis.ProtocolError

    def data_received(self, data: bytes) -> None:
        reader, answered = self._reader, self.engine.answered
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if reply is None:
                    answered(self.slot, None, "miss", True)
                elif isinstance(reply, self._reply_error):
                    answered(self.slot, f"redis {str(reply).split(' ', 1)[0]}", None, True)
                else:
                    answered(self.slot, None, "hit", True)
        except self._protocol_error:
            self.garbled()


@dataclass(eq=False)
class _Slot:
    """One unit of concurrency: a connection with at most one request in flight."""

    link: _Link | None = None
    sent_ns: int = 0  # when the request in flight was written; 0 when none is
    busy: bool = False  # holds work in this phase (a request in flight or a reconnect)


class _Engine:
    """Plays plan indices ``offset, offset + stride, ...`` over ``connections`` slots."""

    def __init__(self, target: Target, plan: Sequence[str], *, connections: int,
                 offset: int = 0, stride: int = 1, timeout_s: float = 5.0) -> None:
        self.target = target
        self.requests = [target.encode(item) for item in plan]
        self.slots = [_Slot() for _ in range(connections)]
        self.offset, self.stride, self.timeout_ns = offset, stride, int(timeout_s * 1e9)
        self._loop = asyncio.get_running_loop()
        self._next = self._stop = 0
        self._deadline_ns: int | None = None
        self._latencies: Latencies | None = None
        # Microseconds wait here, by outcome, and enter the histograms (and the outcome
        # counts) in bulk: one by one (Python code in hdrh) would cost more than a GET.
        self._pending: dict[str | None, list[int]] = {}
        self._counts = PhaseCounts()
        self._finished: asyncio.Future[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def _connect(self, slot: _Slot) -> None:
        _, link = await asyncio.wait_for(
            self._loop.create_connection(lambda: self.target.link(self, slot),
                                         self.target.host, self.target.port),
            self.timeout_ns / 1e9)
        slot.link = link

    async def open(self) -> None:
        outcomes = await asyncio.gather(*(self._connect(s) for s in self.slots),
                                        return_exceptions=True)
        for exc in outcomes:
            if isinstance(exc, (OSError, asyncio.TimeoutError)):
                why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise LoadError(f"cannot connect to {self.target.host}:{self.target.port}: "
                                f"{why}") from exc
            if isinstance(exc, BaseException):
                raise exc

    async def phase(self, first: int, count: int, *, duration_s: float | None = None,
                    latencies: Latencies | None = None,
                    alive: Callable[[], bool] = lambda: True) -> PhaseCounts:
        """Play plan indices ``first .. first + count - 1`` that are this engine's."""
        self._counts = PhaseCounts(start_ns=time.monotonic_ns())
        self._latencies = latencies
        self._next = first + (self.offset - first) % self.stride
        self._stop = first + count
        self._deadline_ns = (time.perf_counter_ns() + int(duration_s * 1e9)
                             if duration_s else None)
        self._finished = self._loop.create_future()
        for slot in self.slots:
            slot.busy = True
        for slot in self.slots:
            self._issue(slot)
        watchdog = self._loop.create_task(self._watch(alive))
        try:
            await self._finished
        finally:
            watchdog.cancel()
        self._counts.end_ns = time.monotonic_ns()
        self._flush_latencies()
        return self._counts

    def _flush_latencies(self) -> None:
        for outcome, values in self._pending.items():
            if outcome is not None:
                self._counts.outcomes[outcome] += len(values)
            if self._latencies is not None:
                self._latencies.record_counts(outcome, Counter(values))
        self._pending.clear()

    def _used_up(self, now_ns: int) -> bool:
        return (self._next >= self._stop or self._closing
                or (self._deadline_ns is not None and now_ns >= self._deadline_ns))

    def _issue(self, slot: _Slot) -> None:
        """Send the slot its next request, or let it rest when the phase is used up."""
        now = time.perf_counter_ns()
        if self._used_up(now):
            self._rest(slot)
            return
        if slot.link is None or slot.link.transport is None:
            # The server closed it between phases: reconnect, then come back here.
            task = self._loop.create_task(self._reconnect(slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        index, self._next = self._next, self._next + self.stride
        slot.sent_ns = now
        slot.link.transport.write(self.requests[index % len(self.requests)])

    def _rest(self, slot: _Slot) -> None:
        if slot.busy:
            slot.busy = False
            if not any(s.busy for s in self.slots) and self._finished is not None \
                    and not self._finished.done():
                self._finished.set_result(None)

    def answered(self, slot: _Slot, error: str | None, outcome: str | None,
                 keep_alive: bool) -> None:
        """A complete answer: count it, then send the slot its next request."""
        now = time.perf_counter_ns()
        sent_ns = slot.sent_ns
        if not sent_ns:
            return  # an answer to a request already counted as timed out
        counts = self._counts
        counts.responses += 1
        if error is not None:
            counts.errors[error] += 1
        pending = self._pending.get(outcome)
        if pending is None:
            pending = self._pending[outcome] = []
        pending.append((now - sent_ns) // 1000)
        if len(pending) >= 1 << 16:
            self._flush_latencies()
        # The common case inlined (this runs once per request): send the next one now.
        if (keep_alive and self._next < self._stop and not self._closing
                and (self._deadline_ns is None or now < self._deadline_ns)
                and slot.link is not None and slot.link.transport is not None):
            index, self._next = self._next, self._next + self.stride
            slot.sent_ns = time.perf_counter_ns()
            slot.link.transport.write(self.requests[index % len(self.requests)])
            return
        slot.sent_ns = 0
        if not keep_alive:  # the server closes this connection: carry on over a new one
            self._drop(slot)
        self._issue(slot)

    def failed(self, slot: _Slot, kind: str) -> None:
        """The request in flight got no usable answer."""
        if slot.sent_ns:
            slot.sent_ns = 0
            self._counts.errors[kind] += 1

    def lost(self, slot: _Slot, exc: Exception | None) -> None:
        in_flight = bool(slot.sent_ns)
        self.failed(slot, f"connection lost ({type(exc).__name__})" if exc
                    else "connection closed")
        self._drop(slot)
        if in_flight:
            self._issue(slot)

    def _drop(self, slot: _Slot) -> None:
        """Forget the slot's connection; its next request opens a new one."""
        old, slot.link = slot.link, None
        if old is not None and old.transport is not None:
            old.transport.abort()

    async def _reconnect(self, slot: _Slot) -> None:
        while not self._used_up(time.perf_counter_ns()):
            try:
                await self._connect(slot)
            except (OSError, asyncio.TimeoutError) as exc:
                failure = f"connect ({type(exc).__name__})"
            else:
                if slot.link is not None and slot.link.transport is not None:
                    self._issue(slot)
                    return
                failure = "connect (closed at once)"
            # A failed attempt uses up one request, so a dead server ends the phase.
            self._next += self.stride
            self._counts.errors[failure] += 1
            await asyncio.sleep(0.01)
        self._rest(slot)

    async def _watch(self, alive: Callable[[], bool]) -> None:
        """Time out requests that wait too long; stop everything if told to."""
        while True:
            await asyncio.sleep(min(0.05, self.timeout_ns / 4e9))
            if not alive():
                self._closing = True
            now = time.perf_counter_ns()
            for slot in self.slots:
                if slot.sent_ns and (self._closing or now - slot.sent_ns > self.timeout_ns):
                    self.failed(slot, "timeout" if not self._closing else "stopped")
                    self._drop(slot)
                    self._issue(slot)

    def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for slot in self.slots:
            if slot.link is not None and slot.link.transport is not None:
                slot.link.transport.abort()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop has no Windows build; asyncio's own loop still works
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a new loop; on any exit (Ctrl-C included) cancel what is left, so
    that every ``finally`` runs and every connection closes, then close the loop."""
    loop = _new_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.close()


# ------------------------------------------------------------------ the driver


@dataclass(frozen=True)
class LoadSpec:
    """How hard and how long to load.

    Args:
        concurrency: connections, each with one request in flight.
        requests: measured requests (plan entries after the warm-up; the plan repeats
            when it is shorter).
        duration_s: stop issuing measured requests after this long (None: no limit).
        warmup: requests played first and left out of every figure.
        processes: worker processes sharing the connections (1: in this process).
        timeout_s: a request unanswered this long counts as a ``timeout`` error.
    """

    concurrency: int = 16
    requests: int = 2000
    duration_s: float | None = None
    warmup: int = 0
    processes: int = 1
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.requests < 1 or self.warmup < 0:
            raise ValueError("concurrency and requests must be >= 1, warmup >= 0")
        if not 1 <= self.processes <= self.concurrency:
            raise ValueError("processes must be between 1 and the concurrency")
        if self.timeout_s <= 0 or (self.duration_s is not None and self.duration_s <= 0):
            raise ValueError("timeout_s and duration_s must be positive")


@dataclass
class LoadResult:
    """The measured phase: latencies, answers, failures, and the warm-up's counts."""

    spec: LoadSpec
    latencies: Latencies
    measured: PhaseCounts
    warmup: PhaseCounts

    @property
    def latency(self) -> LatencyHistogram:
        """Every answer of the measured phase."""
        return self.latencies.all

    @property
    def latency_by_outcome(self) -> dict[str, LatencyHistogram]:
        """The answers of each outcome (``hit``, ``miss``, ``bypass``), apart."""
        return dict(self.latencies.by_outcome)

    @property
    def elapsed_s(self) -> float:
        return (self.measured.end_ns - self.measured.start_ns) / 1e9

    @property
    def responses(self) -> int:
        return self.measured.responses

    @property
    def rps(self) -> float:
        """Answers per second of the measured phase."""
        return self.responses / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return sum(self.measured.errors.values())

    @property
    def outcomes(self) -> Counter[str]:
        return self.measured.outcomes


class Latencies:
    """The HDR histograms of a measured phase: every answer, and each outcome's apart."""

    def __init__(self) -> None:
        self.all = LatencyHistogram()
        self.by_outcome: dict[str, LatencyHistogram] = {}

    def record_counts(self, outcome: str | None, counts: Mapping[int, int]) -> None:
        """``counts[us]`` answers of ``outcome`` (None: none said) took ``us`` microseconds."""
        self.all.record_us_counts(counts)
        if outcome is not None:
            self.by_outcome.setdefault(outcome, LatencyHistogram()).record_us_counts(counts)

    def encode(self) -> dict[str, bytes]:
        return {"": self.all.encode(), **{f"outcome:{name}": hist.encode()
                                          for name, hist in self.by_outcome.items()}}

    def add_encoded(self, encoded: Mapping[str, bytes]) -> None:
        for name, blob in encoded.items():
            if name == "":
                self.all.add_encoded(blob)
            else:
                outcome = name.removeprefix("outcome:")
                self.by_outcome.setdefault(outcome, LatencyHistogram()).add_encoded(blob)


Hook = Callable[[], object]


def run_load(target: Target, plan: Sequence[str], spec: LoadSpec, *,
             before_measure: Hook | None = None,
             after_measure: Hook | None = None) -> LoadResult:
    """Play ``plan`` against ``target``: the warm-up, then the measured phase.

    ``before_measure`` runs once every connection is warm, right before the measured
    phase; ``after_measure`` right after its last answer (read the server's counters
    there: nothing is in flight). Worker processes are always ended, even on Ctrl-C.
    """
    if not plan:
        raise ValueError("the plan is empty")
    if spec.processes == 1:
        return _run_here(target, plan, spec, before_measure, after_measure)
    return _run_workers(target, plan, spec, before_measure, after_measure)


def _run_here(target: Target, plan: Sequence[str], spec: LoadSpec,
              before: Hook | None, after: Hook | None) -> LoadResult:
    latencies = Latencies()

    async def play() -> tuple[PhaseCounts, PhaseCounts]:
        engine = _Engine(target, plan, connections=spec.concurrency, timeout_s=spec.timeout_s)
        try:
            await engine.open()
            warm = await engine.phase(0, spec.warmup)
            if before is not None:
                before()
            measured = await engine.phase(spec.warmup, spec.requests,
                                          duration_s=spec.duration_s, latencies=latencies)
            if after is not None:
                after()
            return warm, measured
        finally:
            engine.close()

    warm, measured = _run(play())
    return LoadResult(spec, latencies, measured, warm)


# ------------------------------------------------------------------ worker processes


@dataclass(frozen=True)
class _WorkerSpec:
    target: Target
    plan: Sequence[str]
    spec: LoadSpec
    connections: int
    offset: int
    parent_pid: int


def _worker(job: _WorkerSpec, pipe: Connection) -> None:
    """A worker process: warm up, say so, wait for the go, play, send the counts back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    spec = job.spec

    def alive() -> bool:
        return os.getppid() == job.parent_pid

    async def play() -> None:
        engine = _Engine(job.target, job.plan, connections=job.connections,
                         offset=job.offset, stride=spec.processes, timeout_s=spec.timeout_s)
        try:
            await engine.open()
            warm = await engine.phase(0, spec.warmup, alive=alive)
            pipe.send(("warm", warm.as_dict()))
            if pipe.recv() != "go":
                return
            latencies = Latencies()
            measured = await engine.phase(spec.warmup, spec.requests,
                                          duration_s=spec.duration_s, latencies=latencies,
                                          alive=alive)
            pipe.send(("done", {"measured": measured.as_dict(),
                                "latencies": latencies.encode()}))
        finally:
            engine.close()

    try:
        _run(play())
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone
    except BaseException as exc:
        with contextlib.suppress(OSError, EOFError):
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))


def _run_workers(target: Target, plan: Sequence[str], spec: LoadSpec,
                 before: Hook | None, after: Hook | None) -> LoadResult:
    ctx = multiprocessing.get_context("spawn")
    share, extra = divmod(spec.concurrency, spec.processes)
    workers: list[tuple[Any, Connection]] = []
    finished = False
    try:
        for i in range(spec.processes):
            here, there = ctx.Pipe()
            job = _WorkerSpec(target, list(plan), spec, share + (i < extra), i, os.getpid())
            process = ctx.Process(target=_worker, args=(job, there), daemon=True,
                                  name=f"cachelab-load-{i}")
            process.start()
            there.close()
            workers.append((process, here))
        warm = PhaseCounts()
        for counts in _collect(workers, "warm"):
            warm.merge(PhaseCounts.from_dict(counts))
        if before is not None:
            before()
        for _, pipe in workers:
            pipe.send("go")
        latencies, measured = Latencies(), PhaseCounts()
        for payload in _collect(workers, "done"):
            measured.merge(PhaseCounts.from_dict(payload["measured"]))
            latencies.add_encoded(payload["latencies"])
        finished = True
        if after is not None:
            after()
        return LoadResult(spec, latencies, measured, warm)
    finally:
        _end(workers, grace_s=2.0 if finished else 0.0)


def _collect(workers: list[tuple[Any, Connection]], stage: str) -> list[Any]:
    """One ``stage`` message from every worker; a worker that failed or died is an error."""
    from multiprocessing.connection import wait

    pending = {pipe: process for process, pipe in workers}
    answers = []
    while pending:
        for pipe in wait(list(pending), timeout=0.2):
            assert isinstance(pipe, multiprocessing.connection.Connection)
            process = pending.pop(pipe)
            try:
                kind, payload = pipe.recv()
            except EOFError:
                raise LoadError(f"load worker {process.name} exited with code "
                                f"{process.exitcode} before it reported") from None
            if kind == "error":
                raise LoadError(f"load worker {process.name} failed: {payload}")
            answers.append(payload)
        for pipe, process in list(pending.items()):
            if not process.is_alive() and not pipe.poll():
                raise LoadError(f"load worker {process.name} exited with code "
                                f"{process.exitcode} before it reported")
    return answers


def _end(workers: list[tuple[Any, Connection]], grace_s: float) -> None:
    """Every worker ends and is reaped: on its own within ``grace_s`` (it has reported
    and is leaving), else SIGTERM, then SIGKILL."""
    for process, pipe in workers:
        pipe.close()
        process.join(timeout=grace_s)
        if process.is_alive():
            process.terminate()
            process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join()
