"""Comparisons of saved runs, and runs of one exercise with one option varied."""

from __future__ import annotations

import statistics
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cachelab.errors import UsageError
from cachelab.record import RunRecord
from cachelab.registry import Exercise


@dataclass
class Comparison:
    """Runs side by side: metric rows with deltas and ratios against the first run."""

    run_ids: list[str]
    metric_rows: list[list[Any]] = field(default_factory=list)
    param_rows: list[list[Any]] = field(default_factory=list)
    check_rows: list[list[Any]] = field(default_factory=list)
    environment_rows: list[list[Any]] = field(default_factory=list)

    @property
    def metric_columns(self) -> list[str]:
        columns = ["metric", *self.run_ids]
        for run_id in self.run_ids[1:]:
            columns += [f"Δ {run_id}", f"× {run_id}"]
        return columns


def _differing(records: Sequence[RunRecord], section: Literal["params", "environment"]
               ) -> list[list[Any]]:
    names = sorted({name for r in records for name in r.get(section, {})})
    rows = []
    for name in names:
        values = [r.get(section, {}).get(name, "—") for r in records]
        if any(v != values[0] for v in values):
            rows.append([name, *values])
    return rows


def compare_records(records: Sequence[RunRecord]) -> Comparison:
    """Metrics of every run, with the change from the first; what else differs."""
    comparison = Comparison([r["run_id"] for r in records])
    first = records[0]["metrics"]
    names = list(dict.fromkeys(name for r in records for name in r["metrics"]))
    for name in names:
        values = [r["metrics"].get(name) for r in records]
        row: list[Any] = [name, *("—" if v is None else v for v in values)]
        for value in values[1:]:
            base = first.get(name)
            if isinstance(value, (int, float)) and isinstance(base, (int, float)):
                row += [value - base, value / base if base else "—"]
            else:
                row += ["—", "—"]
        comparison.metric_rows.append(row)
    comparison.param_rows = _differing(records, "params")
    comparison.environment_rows = _differing(records, "environment")
    outcomes = [{c["name"]: c["passed"] for c in r["checks"]} for r in records]
    for name in dict.fromkeys(n for outcome in outcomes for n in outcome):
        states = [outcome.get(name) for outcome in outcomes]
        if any(s != states[0] for s in states):
            comparison.check_rows.append(
                [name, *("—" if s is None else ("pass" if s else "fail") for s in states)])
    return comparison


def parse_vary(exercise: Exercise, spec: str) -> tuple[str, list[Any]]:
    """``NAME=V1,V2`` into the option's name and typed, validated values."""
    name, sep, raw = spec.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    options = {o.name: o for o in exercise.options}
    if not sep or not raw:
        raise UsageError(f"--vary wants NAME=V1,V2,..., got {spec!r}")
    if name not in options:
        raise UsageError(f"{exercise.info.id} has no option {name!r}; its options are "
                         f"{', '.join(sorted(options))}")
    option = options[name]
    values = []
    for text in raw.split(","):
        value = _convert(option.type, text.strip(), f"--vary {name}")
        try:
            option.validate(value)
        except ValueError as exc:
            raise UsageError(f"--vary {name}: {text.strip()!r} is not allowed ({exc})") from None
        values.append(value)
    return name, values


def _convert(kind: Any, text: str, where: str) -> Any:
    if typing.get_origin(kind) is typing.Literal:
        return text  # validate() checks the choices
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise UsageError(f"{where}: {text!r} is not a valid {kind.__name__}") from None


@dataclass
class Variation:
    """Metrics of an exercise by the value of one option, over trials."""

    option: str
    values: list[Any]
    records: dict[Any, list[RunRecord]]

    def rows(self) -> tuple[list[str], list[list[Any]]]:
        """Metric rows; a cell is the median, with ``min–max`` when there were trials."""
        columns = ["metric", *(f"{self.option}={v}" for v in self.values)]
        first = self.records[self.values[0]][0]["metrics"]
        rows = []
        for name in first:
            row: list[Any] = [name]
            for value in self.values:
                samples = [r["metrics"].get(name) for r in self.records[value]]
                numbers = [s for s in samples if isinstance(s, (int, float))]
                if not numbers:
                    row.append("—")
                elif len(numbers) == 1:
                    row.append(numbers[0])
                else:
                    row.append(f"{statistics.median(numbers):.4g} "
                               f"({min(numbers):.4g}–{max(numbers):.4g})")
            rows.append(row)
        verdicts = ["verdicts"] + ["/".join(r["verdict"] for r in self.records[v])
                                   for v in self.values]
        return columns, [verdicts, *rows]


def vary(option: str, values: Sequence[Any], trials: int,
         run: Callable[[dict[str, Any], int], RunRecord]) -> Variation:
    """Run once per value and trial through ``run(given, trial)``; trials differ by seed."""
    records: dict[Any, list[RunRecord]] = {}
    for value in values:
        records[value] = [run({option: value}, trial) for trial in range(trials)]
    return Variation(option, list(values), records)
