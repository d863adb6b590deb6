"""Finds the exercises, checks each one's contract, and resolves names to them."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from cachelab.errors import ExerciseContractError, UnknownExercise
from cachelab.exercise import ExerciseInfo, Opt, Result

_OPTION_TYPES = (int, float, str, bool)


@dataclass(frozen=True)
class ExerciseOption:
    """One keyword option of an exercise's ``run``."""

    name: str
    type: Any  # int, float, str, bool, or a Literal[...] of choices
    default: Any
    help: str
    min: float | None
    max: float | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple[Any, ...]:
        return typing.get_args(self.type) if typing.get_origin(self.type) is Literal else ()

    def validate(self, value: Any) -> None:
        """Raise ValueError naming the option when ``value`` is out of bounds or choices."""
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.flag} must be at least {self.min:g}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.flag} must be at most {self.max:g}")


@dataclass(frozen=True)
class Exercise:
    """A registered exercise: its metadata, options and ``run`` function."""

    info: ExerciseInfo
    module: ModuleType
    run: Callable[..., Result]
    options: tuple[ExerciseOption, ...]

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.module.__doc__ or "")

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}


def _options(module_name: str, run: Callable[..., Result]) -> tuple[ExerciseOption, ...]:
    # Exercises import Lab only for type checking (it pulls in redis), so stand it in here.
    hints = typing.get_type_hints(run, localns={"Lab": Any}, include_extras=True)
    params = list(inspect.signature(run).parameters.values())
    if not params or params[0].name != "lab":
        raise ExerciseContractError(f"{module_name}: run() must take the lab as its first "
                                    "parameter: def run(lab, *, option=default, ...)")
    options = []
    for param in params[1:]:
        where = f"{module_name}: run() option {param.name!r}"
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise ExerciseContractError(f"{where} must be keyword-only (put it after '*')")
        if param.default is inspect.Parameter.empty or param.name not in hints:
            raise ExerciseContractError(f"{where} needs a type hint and a default")
        hint, opt = hints[param.name], Opt()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            opt = next((e for e in extras if isinstance(e, Opt)), opt)
        if hint not in _OPTION_TYPES and typing.get_origin(hint) is not Literal:
            raise ExerciseContractError(f"{where} has type {hint!r}; use int, float, str, bool "
                                        "or Literal[...]")
        options.append(ExerciseOption(param.name, hint, param.default, opt.help, opt.min,
                                      opt.max))
    return tuple(options)


def load_exercise(module: ModuleType) -> Exercise:
    """Validate one module against the exercise contract; name the file when it is broken."""
    name = getattr(module, "__file__", None) or module.__name__
    info = getattr(module, "INFO", None)
    run = getattr(module, "run", None)
    if not isinstance(info, ExerciseInfo):
        raise ExerciseContractError(f"{name}: define INFO = ExerciseInfo(...)")
    if not callable(run):
        raise ExerciseContractError(f"{name}: define run(lab, *, ...) -> Result")
    if not (module.__doc__ or "").strip():
        raise ExerciseContractError(f"{name}: start the module with a docstring")
    if not re.fullmatch(r"exercise-[1-9]\d*", info.id):
        raise ExerciseContractError(f"{name}: INFO.id must look like 'exercise-11'")
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", info.slug):
        raise ExerciseContractError(f"{name}: INFO.slug must be lower-case words joined by '-'")
    return Exercise(info, module, run, _options(name, run))


@functools.cache
def exercises() -> tuple[Exercise, ...]:
    """Every exercise in the ``exercises`` package, ordered by number."""
    import exercises as package

    found = []
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        found.append(load_exercise(module))
    found.sort(key=lambda e: e.info.number)
    seen: dict[str, Exercise] = {}
    for exercise in found:
        for value in (exercise.info.id, exercise.info.slug):
            if value in seen:
                raise ExerciseContractError(f"{seen[value].module.__file__} and "
                                            f"{exercise.module.__file__} both use {value!r}")
            seen[value] = exercise
    return tuple(found)


def _names(exercise: Exercise) -> set[str]:
    n = exercise.info.number
    return {exercise.info.id, exercise.info.slug, str(n), f"{n:02d}", f"{n:03d}",
            f"exercise-{n:02d}", f"exercise-{n:03d}", f"e{n:02d}", f"ex{n}"}


def resolve(name: str) -> Exercise:
    """The exercise named ``name`` (``exercise-11``, ``11``, ``exercise-011`` or its slug)."""
    wanted = name.strip().lower()
    for exercise in exercises():
        if wanted in _names(exercise):
            return exercise
    import difflib  # only a miss needs it; `cachelab list` should not pay for it

    known = [e.info.id for e in exercises()] + [e.info.slug for e in exercises()]
    raise UnknownExercise(name, difflib.get_close_matches(wanted, known, n=3, cutoff=0.5))
