"""Runs one exercise inside its own Lab and wraps the Result with what a record needs."""

from __future__ import annotations

import platform
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cachelab import __version__
from cachelab.errors import UsageError
from cachelab.exercise import Result
from cachelab.lab import Lab, LabSettings, LiveFactory, ProgressFactory
from cachelab.record import RunRecord
from cachelab.registry import Exercise


@dataclass
class FinishedRun:
    """One finished run: the exercise, its parameters, its Result and where it ran."""

    exercise: Exercise
    params: dict[str, Any]
    result: Result
    environment: dict[str, Any]
    run_id: str
    started_at: str
    duration_s: float

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @property
    def headline(self) -> tuple[str, Any]:
        name = self.exercise.info.headline
        return name, self.result.metrics.get(name)

    def to_dict(self) -> RunRecord:
        """The run record that ``--json`` prints and the results store saves."""
        info = self.exercise.info
        result = self.result.to_dict()
        return {
            "exercise": info.id, "slug": info.slug, "title": info.title,
            "params": self.params, "verdict": result["verdict"], "checks": result["checks"],
            "metrics": result["metrics"], "tables": result["tables"], "charts": result["charts"],
            "notes": result["notes"],
            "environment": self.environment, "run_id": self.run_id,
            "started_at": self.started_at, "duration_s": round(self.duration_s, 3),
        }


def resolve_params(exercise: Exercise, given: dict[str, Any]) -> dict[str, Any]:
    """The exercise's defaults overlaid with ``given``, each value checked."""
    unknown = set(given) - {o.name for o in exercise.options}
    if unknown:
        raise UsageError(f"{exercise.info.id} has no option {', '.join(sorted(unknown))}; "
                         f"see 'cachelab run {exercise.info.id} --help'")
    params = exercise.defaults() | given
    for option in exercise.options:
        try:
            option.validate(params[option.name])
        except ValueError as exc:
            raise UsageError(f"{exc} (exercise {exercise.info.id})") from None
    return params


def run_exercise(exercise: Exercise, given: dict[str, Any] | None = None,
                 settings: LabSettings | None = None,
                 progress: ProgressFactory | None = None,
                 live: LiveFactory | None = None) -> FinishedRun:
    """Run ``exercise`` with its options in a fresh Lab; every fixture is gone on return."""
    settings = settings or LabSettings()
    params = resolve_params(exercise, given or {})
    target = settings.target
    if target is not None and exercise.info.own_servers:
        from cachelab.deployment.target import TargetRefused

        raise TargetRefused(f"{exercise.info.id} {exercise.info.own_servers}, so it runs only "
                            f"on servers cachelab starts; run it without {target.flag}")
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    with Lab(settings, progress=progress, live=live) as lab:
        result = exercise.run(lab, **params)
    # Read after the lab closed: on an existing deployment it counts the keys it deleted.
    environment = {"cachelab": __version__, "python": platform.python_version(),
                   "platform": platform.platform(terse=True), **lab.environment()}
    environment["db_latency_ms"] = settings.db_latency_ms
    return FinishedRun(
        exercise=exercise,
        params={**params, "seed": settings.seed, "db_latency_ms": settings.db_latency_ms,
                "scale": settings.scale},
        result=result,
        environment=environment,
        run_id=uuid.uuid4().hex[:12],
        started_at=started_at,
        duration_s=time.perf_counter() - start,
    )
