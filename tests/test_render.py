"""Rendering is deterministic: a record renders to the same text every time."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from cachelab.render import fmt, print_record, summary_table, to_markdown

RECORD: dict[str, Any] = {
    "exercise": "exercise-1", "slug": "lazy-caching", "title": "Lazy caching",
    "params": {"requests": 10, "seed": 42, "db_latency_ms": 1.0},
    "verdict": "fail",
    "checks": [{"name": "hits counted", "passed": True, "detail": "7/7"},
               {"name": "hits faster", "passed": False, "detail": "0.2 ms vs 0.1 ms"}],
    "metrics": {"requests": 1234, "hit_ratio": 0.7, "p50_ms": 0.00012},
    "tables": [{"title": "Reads", "columns": ["", "count"], "rows": [["hit", 7], ["miss", 3]]}],
    "notes": ["Try --distribution uniform."],
    "environment": {"redis_version": "7.0.15", "redis_source": "PATH", "backend": "local"},
    "run_id": "abc123", "started_at": "2026-11-27T10:00:00+00:00", "duration_s": 1.5,
}


def render(renderable_printer: Any) -> str:
    out = io.StringIO()
    renderable_printer(Console(file=out, width=100, color_system=None))
    return out.getvalue()


def test_numbers_read_as_people_read_them() -> None:
    assert [fmt(v) for v in (1234, 0.7, 1234.5, 0.00012, 0, True)] == [
        "1,234", "0.7", "1,234.5", "1.20e-04", "0", "yes"]


def test_record_shows_environment_tables_checks_and_verdict() -> None:
    text = render(lambda console: print_record(console, RECORD))
    assert text == render(lambda console: print_record(console, RECORD))
    for expected in ("exercise-1 Lazy caching", "redis-server 7.0.15 (PATH)",
                     "SQLite + 1 ms modelled round trip", "seed 42", "Reads", "1,234",
                     "✓   hits counted", "✗   hits faster", "Try --distribution uniform.",
                     "FAIL  1/2 checks · 1.50s · run abc123"):
        assert expected in text, expected


def test_markdown_has_github_tables() -> None:
    text = to_markdown(RECORD)
    assert text.startswith("## exercise-1: Lazy caching\n")
    assert "| metric    | value    |" in text
    assert "| FAIL | hits faster  | 0.2 ms vs 0.1 ms |" in text
    assert "**Verdict: fail**" in text


def test_summary_has_a_row_per_run() -> None:
    text = render(lambda console: console.print(summary_table([RECORD], ["hit_ratio"])))
    assert "exercise-1" in text and "fail" in text and "hit_ratio" in text and "0.7" in text


def test_charts_render_as_bars_and_markdown_tables() -> None:
    from cachelab.exercise import Result
    from exercises.e01_lazy_caching import INFO

    result = Result(INFO)
    result.chart("Hit ratio by memory", "maxmemory", ["1mb", "2mb"],
                 {"lru": [0.25, 0.5], "lfu": [0.3, 0.6]})
    with pytest.raises(ValueError, match="needs 2 values"):
        result.chart("bad", "x", [1, 2], {"s": [1.0]})
    record = {**RECORD, "charts": result.to_dict()["charts"]}
    text = render(lambda console: print_record(console, record))
    assert "Hit ratio by memory" in text
    bars = {value: len(bar) for bar, value in re.findall(r"(█+)\s+([\d.]+)", text)}
    assert bars == {"0.25": 17, "0.3": 20, "0.5": 33, "0.6": 40}  # scaled to the largest
    assert "| 2mb         | 0.5   | 0.6   |" in to_markdown(record)


def test_a_run_without_the_shop_database_does_not_describe_it() -> None:
    record = {**RECORD, "environment": {**RECORD["environment"], "shop_database": False}}
    text = render(lambda console: print_record(console, record))
    assert "SQLite" not in text and "redis-server 7.0.15 (PATH)" in text
