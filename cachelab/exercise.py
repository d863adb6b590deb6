"""The exercise contract: what an exercise declares and the Result it returns.

An exercise is one module under ``exercises/`` with a docstring, an ``INFO``
(:class:`ExerciseInfo`) and a ``run(lab, *, option=default, ...)`` function whose
keyword parameters are its options. ``Annotated[int, Opt(min=1)]`` adds help text and
bounds; ``Literal[...]`` lists choices. The CLI turns those into typed options.
``run`` returns ``Result(INFO)``, which holds it to the names INFO declares.

Keep module import cheap: ``cachelab show``, ``run --help`` and ``run all`` import an
exercise's module before anything runs (``cachelab list`` never does; it reads a literal
INFO from the source). Import at the top the standard library and cachelab's strategies,
harness and shop database. Import inside ``run()``, or the function that needs it, any
third-party package: redis (which ``cachelab.lab``, ``caching.migration``,
``caching.failover`` and ``workload.redis_info`` load), fastapi and uvicorn
(``cachelab.shop.app``), httpx, hishel, psutil, docker; and the child-process machinery
one step uses (``cachelab.children``, ``cachelab.shop.server``, ``workload.loadgen``),
which brings logging, concurrent.futures, multiprocessing and http.client with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cachelab.errors import ExerciseContractError


@dataclass(frozen=True)
class Opt:
    """Help and bounds for one exercise option, used inside ``Annotated[...]``."""

    help: str = ""
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class ExerciseInfo:
    """What an exercise is, in the project's own words.

    Attributes:
        id: ``exercise-N``.
        slug: a short name that also resolves, e.g. ``lazy-caching``.
        title: one line.
        concept: the caching concept it teaches.
        scenario: the situation, a short paragraph.
        walkthrough: the steps the exercise performs, in order.
        fixtures: what it starts (``redis``, ``shop-db``, ...).
        checks: the claims it checks, by the names its Result uses.
        metrics: the numbers it measures, by the names its Result uses (stable names:
            reports and comparisons key on them).
        headline: the metric shown for it in ``run all`` summaries, one of ``metrics``.
        own_servers: why it must start its own servers (it restarts, kills or
            reconfigures them, or needs replicas or a cluster of its own); empty when it
            can run on an existing deployment (``--redis-url`` and friends).
    """

    id: str
    slug: str
    title: str
    concept: str
    scenario: str
    walkthrough: tuple[str, ...]
    fixtures: tuple[str, ...]
    checks: tuple[str, ...]
    metrics: tuple[str, ...]
    headline: str
    own_servers: str = ""

    @property
    def number(self) -> int:
        return int(self.id.rsplit("-", 1)[1])


@dataclass(frozen=True)
class Check:
    """One claim of an exercise and whether this run's measurements upheld it."""

    name: str
    passed: bool
    detail: str


@dataclass
class Table:
    """A titled table of rows, rendered on the terminal, in JSON and in Markdown."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Chart:
    """A small chart: one or more series of numbers over the same x values.

    It renders as horizontal bars on the terminal; in JSON it is plain data, so reports
    can draw it properly.
    """

    title: str
    x_label: str
    x: list[Any]
    series: dict[str, list[float]]
    unit: str = ""


@dataclass
class Result:
    """Everything one exercise run measured and concluded, held to its exercise's INFO.

    Made as ``Result(INFO)``: a check or metric that INFO does not declare (a misspelt
    name) raises at the call, not after a whole run, and a run that returns without
    recording one INFO declares fails too (see :meth:`ensure_complete`).
    """

    info: ExerciseInfo
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, float | int] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str) -> bool:
        """Record one of INFO.checks; returns ``passed`` so callers can branch on it."""
        self._declared(name, "checks")
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    def check_counts(self, name: str, ours: Sequence[int], server: Sequence[int], *,
                     shared: bool, detail: str) -> bool:
        """Check counts Redis keeps for the whole server (INFO, commandstats) against the
        run's own: equal on a server the lab owns, at least the run's on a shared one
        (``lab.shared``), where other clients' commands add to Redis's."""
        if not shared:
            return self.check(name, tuple(server) == tuple(ours), detail)
        return self.check(name, all(s >= o for s, o in zip(server, ours, strict=True)),
                          f"{detail}; on a shared server Redis's counts include other "
                          "clients', so they must be at least this run's")

    def metric(self, name: str, value: float | int) -> None:
        """Record one of INFO.metrics (a float rounded to four places)."""
        self._declared(name, "metrics")
        self.metrics[name] = round(value, 4) if isinstance(value, float) else value

    def add_metrics(self, values: Mapping[str, float | int]) -> None:
        for name, value in values.items():
            self.metric(name, value)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append(Table(title, columns, [list(row) for row in rows]))

    def chart(self, title: str, x_label: str, x: Sequence[Any],
              series: Mapping[str, Sequence[float]], unit: str = "") -> None:
        """Add a chart; every series must have one value per x."""
        if any(len(values) != len(x) for values in series.values()):
            raise ValueError(f"chart {title!r}: every series needs {len(x)} values")
        self.charts.append(Chart(title, x_label, list(x),
                                 {name: list(values) for name, values in series.items()}, unit))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _declared(self, name: str, kind: Literal["checks", "metrics"]) -> None:
        declared = self.info.checks if kind == "checks" else self.info.metrics
        if name in declared:
            return
        import difflib  # only a misspelt name needs it

        close = difflib.get_close_matches(name, declared, n=3, cutoff=0.6)
        hint = (f"did you mean {' or '.join(map(repr, close))}?" if close
                else f"declare it in INFO.{kind}")
        raise ExerciseContractError(f"{self.info.id}: {name!r} is not one of INFO.{kind}; "
                                    f"{hint}")

    def ensure_complete(self) -> None:
        """Raise unless every check and metric INFO declares was recorded: a check that
        silently went missing would let the run pass without it."""
        recorded = {c.name for c in self.checks}
        missing = [f"check {n!r}" for n in self.info.checks if n not in recorded]
        missing += [f"metric {n!r}" for n in self.info.metrics if n not in self.metrics]
        if missing:
            raise ExerciseContractError(f"{self.info.id}: run() recorded no {', '.join(missing)}; "
                                        "record each, or drop it from INFO")

    @property
    def verdict(self) -> str:
        return "pass" if self.checks and all(c.passed for c in self.checks) else "fail"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "checks": [asdict(c) for c in self.checks],
            "metrics": dict(self.metrics),
            "tables": [asdict(t) for t in self.tables],
            "notes": list(self.notes),
            "charts": [asdict(c) for c in self.charts],
        }
