"""The exercise contract, checked over the live registry so docs and code stay honest."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest

from cachelab.errors import ExerciseContractError, UnknownExercise
from cachelab.exercise import ExerciseInfo, Result
from cachelab.registry import Exercise, exercises, load_exercise, resolve

README = (Path(__file__).parents[1] / "README.md").read_text()
ALL = exercises()


def test_exercises_are_registered_in_order() -> None:
    numbers = [e.info.number for e in ALL]
    assert numbers == sorted(numbers) and len(numbers) >= 3


@pytest.mark.parametrize("exercise", ALL, ids=lambda e: e.info.id)
def test_exercise_is_described(exercise: Exercise) -> None:
    info = exercise.info
    assert info.title and info.concept and len(info.scenario) > 80
    assert len(info.walkthrough) >= 3 and info.checks and info.fixtures
    assert exercise.doc.splitlines()[0].endswith(".")
    assert f"`{info.id}`" in README and f"`{info.slug}`" in README
    module_file = Path(exercise.module.__file__ or "")
    assert module_file.name.startswith(f"e{info.number:02d}_")


@pytest.mark.parametrize("exercise", ALL, ids=lambda e: e.info.id)
def test_options_have_help_and_valid_defaults(exercise: Exercise) -> None:
    for option in exercise.options:
        assert option.help, f"{exercise.info.id} {option.flag} has no help"
        option.validate(option.default)


@pytest.mark.parametrize("exercise", ALL, ids=lambda e: e.info.id)
@pytest.mark.parametrize("form", ["{id}", "{n}", "exercise-{n:02d}", "exercise-{n:03d}",
                                  "{slug}", "{ID}"])
def test_names_resolve(exercise: Exercise, form: str) -> None:
    info = exercise.info
    name = form.format(id=info.id, n=info.number, slug=info.slug, ID=info.id.upper())
    assert resolve(name) is exercise


def test_unknown_name_suggests() -> None:
    with pytest.raises(UnknownExercise) as caught:
        resolve("invalidaton")
    assert caught.value.suggestions[0] == "invalidation"
    assert str(caught.value).startswith("Unknown exercise 'invalidaton'. Did you mean")


def _module(name: str = "e99_broken", doc: str | None = "A broken one.", **attrs: object
            ) -> types.ModuleType:
    module = types.ModuleType(f"exercises.{name}", doc)
    module.__file__ = f"/x/exercises/{name}.py"
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


INFO = ExerciseInfo(id="exercise-99", slug="broken", title="t", concept="c", scenario="s",
                    walkthrough=("a",), fixtures=("redis",), checks=("c",), metrics=("m",),
                    headline="m")


def _run_ok(lab: object, *, n: int = 1) -> Result:
    return Result(INFO)


def _run_positional(lab: object, n: int = 1) -> Result:
    return Result(INFO)


def _run_untyped(lab, *, n=1):  # type: ignore[no-untyped-def]
    return Result(INFO)


def _run_list(lab: object, *, n: list[int] | None = None) -> Result:
    return Result(INFO)


@pytest.mark.parametrize(("attrs", "message"), [
    ({"run": _run_ok}, "define INFO = ExerciseInfo(...)"),
    ({"INFO": INFO}, "define run(lab, *, ...)"),
    ({"INFO": INFO, "run": _run_positional}, "must be keyword-only"),
    ({"INFO": INFO, "run": _run_untyped}, "needs a type hint and a default"),
    ({"INFO": INFO, "run": _run_list}, "use int, float, str, bool or Literal"),
    ({"INFO": dataclasses.replace(INFO, headline="n"), "run": _run_ok},
     "INFO.headline 'n' must be one of INFO.metrics"),
    ({"INFO": dataclasses.replace(INFO, checks=("c", "d", "c")), "run": _run_ok},
     "INFO.checks names c twice"),
])
def test_broken_contract_names_the_file(attrs: dict[str, object], message: str) -> None:
    with pytest.raises(ExerciseContractError) as caught:
        load_exercise(_module(**attrs))
    assert str(caught.value).startswith("/x/exercises/e99_broken.py: ")
    assert message in str(caught.value)


def test_missing_docstring_is_a_contract_error() -> None:
    with pytest.raises(ExerciseContractError, match="docstring"):
        load_exercise(_module(doc=None, INFO=INFO, run=_run_ok))


def test_a_valid_module_loads_its_options() -> None:
    exercise = load_exercise(_module(INFO=INFO, run=_run_ok))
    assert [(o.name, o.type, o.default, o.flag) for o in exercise.options] == [
        ("n", int, 1, "--n")]


def test_a_misspelt_check_or_metric_fails_at_the_call() -> None:
    result = Result(dataclasses.replace(INFO, checks=("hits match Redis INFO",),
                                        metrics=("hit_ratio", "hits"), headline="hits"))
    with pytest.raises(ExerciseContractError) as caught:
        result.check("hit match Redis INFO", True, "")
    assert str(caught.value) == ("exercise-99: 'hit match Redis INFO' is not one of "
                                 "INFO.checks; did you mean 'hits match Redis INFO'?")
    with pytest.raises(ExerciseContractError) as caught:
        result.add_metrics({"hits": 3, "hit_rate": 0.5})
    assert str(caught.value) == ("exercise-99: 'hit_rate' is not one of INFO.metrics; "
                                 "did you mean 'hit_ratio'?")
    with pytest.raises(ExerciseContractError, match="'p99' is not one of INFO.metrics; "
                                                    "declare it in INFO.metrics"):
        result.metric("p99", 1.0)
    assert not result.checks and result.metrics == {"hits": 3}


@pytest.mark.parametrize(("shared", "server", "passed"), [
    (False, (7, 3), True), (False, (8, 3), False),  # a server the lab owns: exactly ours
    (True, (8, 3), True), (True, (7, 2), False),  # a shared one: at least ours
])
def test_server_counts_are_exact_on_an_owned_server_and_a_floor_on_a_shared_one(
        shared: bool, server: tuple[int, int], passed: bool) -> None:
    result = Result(INFO)
    assert result.check_counts("c", (7, 3), server, shared=shared, detail="7/3") is passed
    assert result.checks[0].detail == ("7/3; on a shared server Redis's counts include other "
                                       "clients', so they must be at least this run's"
                                       if shared else "7/3")


def _run_records_the_metric(lab: object, *, n: int = 1) -> Result:
    result = Result(INFO)
    result.metric("m", n)
    return result


def _run_records_the_check(lab: object, *, n: int = 1) -> Result:
    result = Result(INFO)
    result.check("c", True, "held")
    return result


def _run_records_both(lab: object, *, n: int = 1) -> Result:
    result = _run_records_the_check(lab)
    result.metric("m", n)
    return result


def _run_of_another_info(lab: object, *, n: int = 1) -> Result:
    result = Result(dataclasses.replace(INFO, id="exercise-98"))
    result.check("c", True, "held")
    result.metric("m", n)
    return result


@pytest.mark.parametrize(("run", "message"), [
    (_run_records_the_metric, "exercise-99: run() recorded no check 'c'; record each, or "
                              "drop it from INFO"),
    (_run_records_the_check, "exercise-99: run() recorded no metric 'm'; record each, or "
                             "drop it from INFO"),
    (_run_of_another_info, "exercise-99: run() must return Result(INFO), made from its own "
                           "INFO"),
])
def test_a_run_that_breaks_its_contract_fails(run: object, message: str) -> None:
    from cachelab.lab import Lab

    exercise = load_exercise(_module(INFO=INFO, run=run))
    with pytest.raises(ExerciseContractError) as caught:
        exercise.run(Lab(), n=2)
    assert str(caught.value) == message


def test_a_run_that_keeps_its_contract_returns_its_result() -> None:
    from cachelab.lab import Lab

    result = load_exercise(_module(INFO=INFO, run=_run_records_both)).run(Lab(), n=2)
    assert result.to_dict()["checks"] == [{"name": "c", "passed": True, "detail": "held"}]
    assert result.metrics == {"m": 2} and result.verdict == "pass"


def test_the_catalogue_reads_every_info_without_importing_and_matches_the_modules() -> None:
    import subprocess
    import sys

    from cachelab.registry import catalogue

    assert [entry.info for entry in catalogue()] == [e.info for e in ALL]
    probe = ("import sys; from cachelab.registry import catalogue; catalogue(); "
             "print(sorted(m for m in sys.modules if m.startswith('exercises.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"  # `cachelab list` imports no exercise


def test_an_exercise_module_imports_no_third_party_package() -> None:
    """Keep module import cheap (the contract in cachelab.exercise): `show`, `run --help`
    and `run all` import every module they name before anything runs."""
    import subprocess
    import sys

    probe = ("import importlib, sys; from cachelab.registry import catalogue; "
             "entries = catalogue(); before = set(sys.modules); "
             "[importlib.import_module(e.module_name) for e in entries]; "
             "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} "
             "- set(sys.stdlib_module_names) - {'cachelab', 'exercises', '__mp_main__'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"  # redis, httpx, fastapi, ... are imported inside run()


def test_a_non_literal_info_falls_back_to_importing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cachelab.registry import _literal_info

    module = tmp_path / "e77_computed.py"
    module.write_text('"""Doc."""\nTITLE = "t"\nINFO = ExerciseInfo(\n    id="exercise-77",'
                      ' title=TITLE,\n)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _literal_info("e77_computed") is None
