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
    return Result()


def _run_positional(lab: object, n: int = 1) -> Result:
    return Result()


def _run_untyped(lab, *, n=1):  # type: ignore[no-untyped-def]
    return Result()


def _run_list(lab: object, *, n: list[int] | None = None) -> Result:
    return Result()


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


def test_a_non_literal_info_falls_back_to_importing(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cachelab.registry import _literal_info

    module = tmp_path / "e77_computed.py"
    module.write_text('"""Doc."""\nTITLE = "t"\nINFO = ExerciseInfo(\n    id="exercise-77",'
                      ' title=TITLE,\n)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _literal_info("e77_computed") is None
