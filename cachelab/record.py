"""The run record: the dict a finished run becomes, as ``--json`` prints it, the results
store saves it, and render, compare and report read it (see DESIGN.md, "Results")."""

from __future__ import annotations

from typing import Any, TypedDict


class CheckRecord(TypedDict):
    """One check of a run: a claim and whether this run's measurements upheld it."""

    name: str
    passed: bool
    detail: str


class TableRecord(TypedDict):
    """A titled table of rows."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


class ChartRecord(TypedDict):
    """Series of numbers over the same x values, drawn as bars."""

    title: str
    x_label: str
    x: list[Any]
    series: dict[str, list[float]]
    unit: str


class _SavedBeforeCharts(TypedDict, total=False):
    # Runs saved before results had charts have no such key; readers use .get().
    charts: list[ChartRecord]


class RunRecord(_SavedBeforeCharts):
    """One finished run of one exercise."""

    exercise: str  # exercise-11
    slug: str
    title: str
    #: The exercise's options as run, and the lab's seed, db_latency_ms and scale.
    params: dict[str, Any]
    verdict: str  # "pass" only when every check passed, else "fail"
    checks: list[CheckRecord]
    metrics: dict[str, float | int]
    tables: list[TableRecord]
    notes: list[str]
    #: What it ran on: versions, the redis-server or image or deployment, the backend.
    environment: dict[str, Any]
    run_id: str
    started_at: str  # ISO 8601, UTC
    duration_s: float
