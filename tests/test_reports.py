"""Run history, comparisons and reports, made from real runs."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cachelab.cli import app
from cachelab.store import ResultsStore, default_store_path

runner = CliRunner()
QUICK = {"1": ["--requests", "200", "--expiry-ttl-s", "0.2"],
         "2": ["--requests", "40", "--expiry-ttl-s", "0.2"]}


def invoke(args: list[str]) -> Any:
    return runner.invoke(app, args, prog_name="cachelab")


@pytest.fixture
def saved() -> list[dict[str, Any]]:
    """Three real runs in the store: exercise-1 twice (zipf, uniform) and exercise-2."""
    for args in (["run", "1", *QUICK["1"]],
                 ["run", "1", *QUICK["1"], "--distribution", "uniform"],
                 ["run", "2", *QUICK["2"]]):
        assert invoke(args).exit_code == 0
    return ResultsStore(default_store_path()).runs()


def _rows() -> list[tuple[Any, ...]]:
    with sqlite3.connect(default_store_path()) as conn:
        rows = conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
    conn.close()
    return rows


def test_empty_store_says_how_to_make_a_first_run() -> None:
    listed = invoke(["runs"])
    assert listed.exit_code == 0
    assert listed.stderr.endswith("make a first run with: cachelab run exercise-1\n")
    reported = invoke(["report"])
    assert reported.exit_code == 2
    assert "make a first run with: cachelab run exercise-1" in reported.stderr
    assert not default_store_path().exists()  # reading never creates a store


def test_runs_lists_shows_and_never_alters(saved: list[dict[str, Any]]) -> None:
    before = _rows()
    listed = json.loads(invoke(["runs", "--json"]).stdout)
    assert [r["run_id"] for r in listed] == [r["run_id"] for r in saved]
    assert listed[0]["headline"] == "hit_ratio"
    assert listed[0]["value"] == saved[0]["metrics"]["hit_ratio"]
    only_2 = json.loads(invoke(["runs", "--exercise", "query-caching", "--json"]).stdout)
    assert [r["exercise"] for r in only_2] == ["exercise-2"]
    shown = invoke(["runs", "show", saved[0]["run_id"][:6], "--json"])
    assert json.loads(shown.stdout) == saved[0]
    printed = invoke(["runs", "show", saved[0]["run_id"]])
    assert f"run {saved[0]['run_id']}" in printed.stdout and "Profile reads" in printed.stdout
    for args in (["compare", saved[0]["run_id"], saved[1]["run_id"]], ["report"],
                 ["report", "--format", "html"]):
        assert invoke(args).exit_code == 0
    assert _rows() == before


def test_unknown_run_is_exit_2_with_a_hint(saved: list[dict[str, Any]]) -> None:
    for args in (["runs", "show", "nosuchrun"], ["compare", saved[0]["run_id"], "nosuchrun"],
                 ["report", "nosuchrun"], ["runs", "delete", "nosuchrun"]):
        result = invoke(args)
        assert result.exit_code == 2
        assert result.stderr == ("Error: No saved run 'nosuchrun'. See 'cachelab runs' for "
                                 "the saved ones.\n")


def test_delete_and_prune(saved: list[dict[str, Any]]) -> None:
    deleted = invoke(["runs", "delete", saved[2]["run_id"]])
    assert deleted.stdout == f"Deleted run {saved[2]['run_id']}.\n"
    pruned = invoke(["runs", "prune", "--keep", "1"])
    assert pruned.stdout.startswith("Deleted 1 run(s)")
    assert [r["run_id"] for r in ResultsStore(default_store_path()).runs()] == [
        saved[1]["run_id"]]  # the newest exercise-1 run is kept


def test_a_run_compared_with_itself_has_zero_deltas(saved: list[dict[str, Any]]) -> None:
    run_id = saved[0]["run_id"]
    result = json.loads(invoke(["compare", run_id, run_id, "--json"]).stdout)
    metrics = result["Metrics"]["rows"]
    assert [row[0] for row in metrics] == list(saved[0]["metrics"])
    assert all(row[3] == 0 and row[4] in (1, "—") for row in metrics)
    assert all(not result[s]["rows"] for s in ("Parameters that differ", "Checks that differ",
                                               "Environment that differs"))


def test_compare_shows_what_differs(saved: list[dict[str, Any]]) -> None:
    zipf, uniform = saved[0], saved[1]
    result = json.loads(invoke(["compare", zipf["run_id"], uniform["run_id"], "--json"]).stdout)
    assert ["distribution", "zipf", "uniform"] in result["Parameters that differ"]["rows"]
    hits = next(r for r in result["Metrics"]["rows"] if r[0] == "hits")
    assert hits[3] == uniform["metrics"]["hits"] - zipf["metrics"]["hits"]


def test_vary_runs_and_saves_each_value() -> None:
    result = invoke(["compare", "exercise-2", "--vary", "requests=20,40", "--json",
                     "--trials", "2"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert table["columns"] == ["metric", "requests=20", "requests=40"]
    assert table["rows"][0] == ["verdicts", "pass/pass", "pass/pass"]
    assert ["requests", "20 (20–20)", "40 (40–40)"] in table["rows"]
    assert len(ResultsStore(default_store_path()).runs()) == 4


@pytest.mark.parametrize(("vary", "named"), [
    ("nosuch=1,2", "has no option 'nosuch'"),
    ("requests=10,ten", "'ten' is not a valid int"),
    ("requests=0", "'0' is not allowed"),
    ("requests", "--vary wants NAME=V1,V2"),
])
def test_vary_with_a_bad_name_or_value_is_exit_2(vary: str, named: str) -> None:
    result = invoke(["compare", "exercise-2", "--vary", vary])
    assert result.exit_code == 2
    assert named in result.stderr and result.stderr.count("\n") == 1


def test_report_holds_every_selected_run(saved: list[dict[str, Any]], tmp_path: Path) -> None:
    chosen = [saved[0], saved[2]]
    for fmt in ("markdown", "html"):
        out = tmp_path / f"report.{fmt}"
        result = invoke(["report", *(r["run_id"] for r in chosen), "--format", fmt, "-o",
                         str(out)])
        assert result.exit_code == 0
        text = out.read_text()
        for record in chosen:
            assert record["run_id"] in text
            for check in record["checks"]:
                assert check["name"] in text
            for metric in record["metrics"]:
                assert metric in text
        assert saved[1]["run_id"] not in text
    assert "<svg" in (tmp_path / "report.html").read_text()
    page = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch


def _distinct_pixel_bytes(png: bytes) -> int:
    """How many different byte values the decoded image holds (a blank page has ~2)."""
    data, pos = b"", 8
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            data += png[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(data)))


def test_html_report_renders_in_headless_chromium(saved: list[dict[str, Any]],
                                                   tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    assert invoke(["report", "--format", "html", "-o", str(page)]).exit_code == 0
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400",
                    f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert _distinct_pixel_bytes(shot.read_bytes()) > 20
