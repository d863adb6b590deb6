"""Instructor packs: exercises from a folder or an installed package, outside cachelab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cachelab import registry
from cachelab.cli import app
from cachelab.registry import catalogue, exercises, resolve

REPOSITORY = Path(__file__).parents[1]

# A whole exercise as an instructor would write it: it starts its own redis-server and
# checks the counter against what Redis itself counted.
COUNTER = '''"""A counter in Redis: INCR from one client, read back, and counted by Redis.

Metrics: increments, counter, incr_calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from cachelab.exercise import ExerciseInfo, Opt, Result

if TYPE_CHECKING:
    from cachelab.lab import Lab

INFO = ExerciseInfo(
    id="exercise-{number}",
    slug="{slug}",
    title="A counter in Redis",
    concept="INCR is atomic",
    scenario="A page counts its views in Redis; every view is one INCR of one key.",
    walkthrough=("Start a redis-server.", "INCR one key once per view.",
                 "Read the key back and Redis's own count of INCRBY calls."),
    fixtures=("redis",),
    checks=("the counter equals the views", "Redis counted every INCRBY"),
    metrics=("increments", "counter", "incr_calls"),
    headline="counter",
)


def run(lab: Lab, *, views: Annotated[int, Opt("Page views.", min=1)] = 25) -> Result:
    result = Result(INFO)
    client = lab.redis()
    for _ in range(views):
        client.incr("views")
    counter = int(client.get("views"))
    # redis-py's incr() sends INCRBY: Redis's own count says so.
    incr_calls = client.info("commandstats")["cmdstat_incrby"]["calls"]
    result.check("the counter equals the views", counter == views, f"{{counter}}/{{views}}")
    result.check("Redis counted every INCRBY", incr_calls == views, f"{{incr_calls}} calls")
    result.add_metrics({{"increments": views, "counter": counter, "incr_calls": incr_calls}})
    return result
'''

runner = CliRunner()


def invoke(args: list[str]):  # type: ignore[no-untyped-def]
    return runner.invoke(app, args, prog_name="cachelab")


def write_exercise(folder: Path, number: int = 101, slug: str = "pack-counter",
                   source: str = COUNTER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"e{number}_{slug.replace('-', '_')}.py"
    path.write_text(source.format(number=number, slug=slug))
    return path.resolve()  # as the registry names it


@pytest.fixture(autouse=True)
def _no_pack_left() -> Iterator[None]:
    """An invocation leaves its folders set until the next one: drop them, so that the
    tests after these see the built-in exercises alone."""
    yield
    registry.set_exercise_dirs(())


def test_a_pack_folder_is_listed_shown_and_run(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    write_exercise(pack)
    built_in = [e.info.id for e in exercises()]
    listed = invoke(["--exercises-dir", str(pack), "list", "--json"])
    assert listed.exit_code == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == built_in + ["exercise-101"]

    shown = invoke(["--exercises-dir", str(pack), "show", "pack-counter"])
    assert shown.exit_code == 0, shown.stderr
    for text in ("A counter in Redis", "--views", "Redis counted every INCRBY"):
        assert text in shown.stdout

    ran = invoke(["--exercises-dir", str(pack), "run", "exercise-101", "--views", "40",
                  "--json", "--no-save"])
    assert ran.exit_code == 0, ran.stderr
    record = json.loads(ran.stdout)
    assert record["verdict"] == "pass"
    assert record["metrics"] == {"increments": 40, "counter": 40, "incr_calls": 40}

    # The next invocation, without the option, no longer knows the pack.
    assert "exercise-101" not in invoke(["list"]).stdout
    unknown = invoke(["show", "exercise-101"])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("Error: Unknown exercise")


def test_a_pack_runs_in_a_real_process_from_another_folder(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    write_exercise(pack)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.run(
        [sys.executable, "-m", "cachelab", "--exercises-dir", str(pack), "run",
         "exercise-101", "--json", "--no-save"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    record = json.loads(process.stdout)
    assert (record["exercise"], record["verdict"]) == ("exercise-101", "pass")
    assert record["metrics"]["incr_calls"] == 25


def test_the_environment_variable_adds_folders(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write_exercise(tmp_path / "one", 101, "pack-one")
    write_exercise(tmp_path / "two", 102, "pack-two")
    monkeypatch.setenv("CACHELAB_EXERCISES_DIR",
                       os.pathsep.join([str(tmp_path / "one"), str(tmp_path / "two")]))
    assert [e.info.slug for e in catalogue()][-2:] == ["pack-one", "pack-two"]
    assert resolve("102").info.slug == "pack-two"
    # The option adds to the variable's folders.
    write_exercise(tmp_path / "three", 103, "pack-three")
    listed = invoke(["--exercises-dir", str(tmp_path / "three"), "list", "--json"])
    assert [row["id"] for row in json.loads(listed.stdout)][-3:] == [
        "exercise-101", "exercise-102", "exercise-103"]
    monkeypatch.delenv("CACHELAB_EXERCISES_DIR")
    assert "pack-one" not in {e.info.slug for e in catalogue()}


def test_a_folder_that_does_not_exist_is_a_usage_error(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    by_option = invoke(["--exercises-dir", str(missing), "list"])
    assert by_option.exit_code == 2
    assert by_option.stderr.startswith("Error: Invalid value for '--exercises-dir'")
    monkeypatch.setenv("CACHELAB_EXERCISES_DIR", str(missing))
    by_variable = invoke(["show", "1"])
    assert by_variable.exit_code == 2
    assert by_variable.stderr == (f"Error: CACHELAB_EXERCISES_DIR names {str(missing)!r}, "
                                  "which is not a folder\n")


def test_a_pack_exercise_may_not_take_a_built_in_id(tmp_path: Path) -> None:
    clash = write_exercise(tmp_path / "pack", 1, "pack-clash")
    built_in = exercises()[0].module.__file__
    result = invoke(["--exercises-dir", str(tmp_path / "pack"), "show", "pack-clash"])
    assert result.exit_code == 3
    assert result.stderr == f"Error: {built_in} and {clash} both use 'exercise-1'\n"


@pytest.mark.parametrize(("change", "error"), [
    (("from cachelab.exercise import", "import no_such_module\nfrom cachelab.exercise import"),
     "ModuleNotFoundError: No module named 'no_such_module'"),
    (("def run(", "def not_run("), "define run(lab, *, ...) -> Result"),
])
def test_a_broken_pack_module_names_its_file(tmp_path: Path, change: tuple[str, str],
                                             error: str) -> None:
    broken = write_exercise(tmp_path / "pack", 104, "pack-broken",
                            COUNTER.replace(*change))
    # Its INFO is a literal, so listing does not import it; showing it does.
    listed = invoke(["--exercises-dir", str(tmp_path / "pack"), "list"])
    assert listed.exit_code == 0 and "pack-broken" in listed.stdout
    result = invoke(["--exercises-dir", str(tmp_path / "pack"), "show", "104"])
    assert result.exit_code == 3
    assert result.stderr == f"Error: {broken}: {error}\n"


def test_run_all_runs_the_pack_exercises(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Set the twenty built-in exercises aside (an empty package in their place), so that
    # `run all` runs the pack's alone.
    no_exercises = types.ModuleType("no_built_in_exercises")
    no_exercises.__path__ = []
    monkeypatch.setitem(sys.modules, no_exercises.__name__, no_exercises)
    monkeypatch.setattr(registry, "_builtin_package", lambda: no_exercises.__name__)
    write_exercise(tmp_path / "pack", 101, "pack-one")
    write_exercise(tmp_path / "pack", 102, "pack-two")
    result = invoke(["--exercises-dir", str(tmp_path / "pack"), "run", "all", "--json",
                     "--no-save"])
    assert result.exit_code == 0, result.stderr
    assert [(r["exercise"], r["verdict"]) for r in json.loads(result.stdout)] == [
        ("exercise-101", "pass"), ("exercise-102", "pass")]


@pytest.fixture
def installed_pack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package of exercises and its metadata in a folder on sys.path, as `pip install`
    would leave them in site-packages."""
    name, site = "cachelab_test_pack", tmp_path / "site"
    write_exercise(site / name, 105, "installed-counter")
    (site / name / "__init__.py").write_text('"""A pack."""\n')
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cachelab.exercises]\ncounters = {name}\n")
    monkeypatch.syspath_prepend(str(site))
    yield name
    for module in [m for m in sys.modules if m.split(".")[0] == name]:
        del sys.modules[module]


def test_an_installed_pack_is_found_by_its_entry_point(installed_pack: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    entry_point = EntryPoint(name="counters", value=installed_pack, group="cachelab.exercises")
    monkeypatch.setattr(registry, "_pack_entry_points", lambda: (entry_point,))
    assert catalogue()[-1].info.id == "exercise-105"
    module = resolve("installed-counter").module
    assert module.__name__ == f"{installed_pack}.e105_installed_counter"
    listed = invoke(["list", "--json"])
    assert json.loads(listed.stdout)[-1]["slug"] == "installed-counter"


def test_an_entry_point_that_names_no_package_says_so(installed_pack: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    entry_point = EntryPoint(name="counters", value=f"{installed_pack}.e105_installed_counter",
                             group="cachelab.exercises")
    monkeypatch.setattr(registry, "_pack_entry_points", lambda: (entry_point,))
    result = invoke(["show", "1"])
    assert result.exit_code == 3
    assert result.stderr == (f"Error: entry point counters = {entry_point.value} (group "
                             "cachelab.exercises) must name a package of exercise modules\n")


def test_an_installed_pack_is_listed_by_a_real_process(installed_pack: str,
                                                       tmp_path: Path) -> None:
    def cachelab_python(code: str, *path: Path) -> str:
        pythonpath = os.pathsep.join([*map(str, path), str(REPOSITORY)])
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": pythonpath}).stdout

    listing = ("import json, sys; from cachelab.registry import catalogue; "
               "print(json.dumps([[e.info.id for e in catalogue()], "
               "'importlib.metadata' in sys.modules]))")
    ids, read_metadata = json.loads(cachelab_python(listing, tmp_path / "site"))
    assert ids[-1] == "exercise-105" and len(ids) == 21 and read_metadata
    # Where no distribution declares a pack, listing never pays for importlib.metadata.
    ids, read_metadata = json.loads(cachelab_python(listing))
    assert len(ids) == 20 and not read_metadata
