"""Finds the exercises, checks each one's contract, and resolves names to them."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import pkgutil
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from cachelab.errors import ExerciseContractError, UnknownExercise
from cachelab.exercise import ExerciseInfo, Opt, Result

if TYPE_CHECKING:
    from cachelab.lab import Lab

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
    """A registered exercise: its metadata, its module and the options of its ``run``."""

    info: ExerciseInfo
    module: ModuleType
    options: tuple[ExerciseOption, ...]

    def run(self, lab: Lab, **params: Any) -> Result:
        """The module's ``run(lab, **params)``, its Result held to the contract: made from
        this exercise's INFO, with every declared check and metric recorded."""
        result = self.module.run(lab, **params)
        if not isinstance(result, Result) or result.info != self.info:
            raise ExerciseContractError(f"{self.info.id}: run() must return Result(INFO), "
                                        "made from its own INFO")
        result.ensure_complete()
        return result

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
    for field, names in (("checks", info.checks), ("metrics", info.metrics)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ExerciseContractError(f"{name}: INFO.{field} names {', '.join(twice)} twice")
    if info.headline not in info.metrics:
        raise ExerciseContractError(f"{name}: INFO.headline {info.headline!r} must be one of "
                                    "INFO.metrics")
    return Exercise(info, module, _options(name, run))


@dataclass(frozen=True)
class Entry:
    """An exercise as the catalogue knows it before importing it: its INFO and module."""

    info: ExerciseInfo
    module_name: str


def _module_names() -> list[str]:
    import exercises as package

    return [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
            if not m.name.startswith("_")]


def _literal_info(module_name: str) -> ExerciseInfo | None:
    """``INFO`` read from the module's source without running it, when it is a literal."""
    import ast

    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return None
    try:
        source = Path(spec.origin).read_text()
        # Parse just the INFO statement (it ends at a closing parenthesis in column 0):
        # parsing every whole module would cost more than importing some of them.
        start = source.index("\nINFO = ExerciseInfo(") + 1
        call = ast.parse(source[start:source.index("\n)", start) + 2]).body[0]
        assert isinstance(call, ast.Assign) and isinstance(call.value, ast.Call)
        fields = {str(k.arg): ast.literal_eval(k.value) for k in call.value.keywords}
        return ExerciseInfo(**fields)
    except (OSError, SyntaxError, ValueError, TypeError, AssertionError, IndexError):
        return None  # not a plain literal: the module is imported instead


@functools.cache
def catalogue() -> tuple[Entry, ...]:
    """Every exercise's INFO, ordered by number, importing a module only when its INFO is
    not a plain literal: listing twenty exercises should not load twenty modules."""
    entries = []
    for module_name in _module_names():
        info = _literal_info(module_name)
        if info is None:
            info = load_exercise(importlib.import_module(module_name)).info
        entries.append(Entry(info, module_name))
    entries.sort(key=lambda e: e.info.number)
    seen: dict[str, Entry] = {}
    for entry in entries:
        for value in (entry.info.id, entry.info.slug):
            if value in seen:
                raise ExerciseContractError(f"{seen[value].module_name} and "
                                            f"{entry.module_name} both use {value!r}")
            seen[value] = entry
    return tuple(entries)


@functools.cache
def _load(module_name: str) -> Exercise:
    return load_exercise(importlib.import_module(module_name))


def exercises() -> tuple[Exercise, ...]:
    """Every exercise, loaded and checked against the contract, ordered by number."""
    return tuple(_load(entry.module_name) for entry in catalogue())


def _names(info: ExerciseInfo) -> set[str]:
    n = info.number
    return {info.id, info.slug, str(n), f"{n:02d}", f"{n:03d}",
            f"exercise-{n:02d}", f"exercise-{n:03d}", f"e{n:02d}", f"ex{n}"}


def resolve(name: str) -> Exercise:
    """The exercise named ``name`` (``exercise-11``, ``11``, ``exercise-011`` or its slug)."""
    wanted = name.strip().lower()
    for entry in catalogue():
        if wanted in _names(entry.info):
            exercise = _load(entry.module_name)
            if exercise.info != entry.info:  # the source said one thing, the module another
                raise ExerciseContractError(f"{entry.module_name}: INFO changed on import")
            return exercise
    import difflib  # only a miss needs it; `cachelab list` should not pay for it

    known = [e.info.id for e in catalogue()] + [e.info.slug for e in catalogue()]
    raise UnknownExercise(name, difflib.get_close_matches(wanted, known, n=3, cutoff=0.5))
