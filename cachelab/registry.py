"""Finds the exercises (built in, and an instructor's own packs), checks each one's
contract, and resolves names to them."""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from cachelab.errors import ExerciseContractError, UnknownExercise, UsageError
from cachelab.exercise import ExerciseInfo, Opt, Result

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

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


# A folder of exercises, or a package of them, that an instructor adds without editing
# cachelab: folders by option or environment variable, packages by entry point.
PACK_GROUP = "cachelab.exercises"
EXERCISES_DIR_ENV = "CACHELAB_EXERCISES_DIR"
_option_dirs: tuple[Path, ...] = ()
_dir_packages: dict[Path, str] = {}


def set_exercise_dirs(dirs: Iterable[Path]) -> None:
    """Use these folders of exercise modules (``--exercises-dir``), besides the ones
    ``CACHELAB_EXERCISES_DIR`` names; an empty list drops the previous ones."""
    global _option_dirs
    _option_dirs = tuple(Path(d).resolve() for d in dirs)


def _pack_dirs() -> tuple[Path, ...]:
    from_env = []
    for part in os.environ.get(EXERCISES_DIR_ENV, "").split(os.pathsep):
        if part:
            folder = Path(part).resolve()
            if not folder.is_dir():
                raise UsageError(f"{EXERCISES_DIR_ENV} names {part!r}, which is not a folder")
            from_env.append(folder)
    return _option_dirs + tuple(from_env)


@functools.cache
def _pack_entry_points() -> tuple[EntryPoint, ...]:
    """Installed packs: each entry point of the group names a package of exercise modules."""
    if not _may_declare_packs():
        return ()
    from importlib.metadata import entry_points

    return tuple(entry_points(group=PACK_GROUP))


def _may_declare_packs() -> bool:
    """Whether an installed distribution may declare the group. importlib.metadata costs
    `cachelab list` a sixth of its start-up (it imports email, zipfile and csv) to say
    "none", as it will on most machines; so first read what its standard finder would
    read, the entry_points.txt of each *.dist-info or *.egg-info folder on sys.path.
    Anything else that may hold distributions (a zip, an egg, another finder) is a yes."""
    standard = importlib.machinery.PathFinder
    if any(finder is not standard and hasattr(finder, "find_distributions")
           for finder in sys.meta_path):
        return True
    for entry in sys.path:
        folder = entry or "."
        if folder.lower().endswith(".egg") or os.path.isfile(folder):
            return True
        try:
            infos = [e.name for e in os.scandir(folder)
                     if e.name.lower().endswith((".dist-info", ".egg-info"))]
        except OSError:  # a folder on sys.path that does not exist
            continue
        for info in infos:
            try:
                if PACK_GROUP in Path(folder, info, "entry_points.txt").read_text("utf-8"):
                    return True
            except (OSError, UnicodeDecodeError):
                pass
    return False


@functools.cache
def _builtin_package() -> str:
    # The wheel ships the exercises inside cachelab (a top-level `exercises` in site-packages
    # would collide with other projects'); a checkout keeps them in its top-level folder,
    # which an editable install and the tests have on sys.path. Tests and import-linter
    # then see them as `exercises`, the name under which the repository keeps them.
    return "cachelab.exercises" if importlib.util.find_spec("cachelab.exercises") else "exercises"


def _entry_point_package(entry_point: EntryPoint) -> str:
    where = f"entry point {entry_point.name} = {entry_point.value} (group {PACK_GROUP})"
    try:
        package = entry_point.load()
    except Exception as exc:
        raise ExerciseContractError(f"{where}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(package, ModuleType) or not hasattr(package, "__path__"):
        raise ExerciseContractError(f"{where} must name a package of exercise modules")
    return package.__name__


def _dir_package(folder: Path) -> str:
    """A package, made up here, whose modules are the folder's: a name of their own keeps
    them from shadowing, or being shadowed by, any module on sys.path."""
    if folder not in _dir_packages:
        name = f"_cachelab_dir_pack_{len(_dir_packages)}"
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        sys.modules[name] = importlib.util.module_from_spec(spec)
        _dir_packages[folder] = name
    return _dir_packages[folder]


def _module_names(package_name: str) -> list[str]:
    package = importlib.import_module(package_name)
    return [f"{package_name}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
            if not m.name.startswith("_")]


def _file(module_name: str) -> str:
    spec = importlib.util.find_spec(module_name)
    return spec.origin if spec is not None and spec.origin else module_name


def _import(module_name: str) -> ModuleType:
    """Import an exercise module; a pack's module that fails to is named by its file."""
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        if module_name.startswith(_builtin_package() + "."):
            raise  # a built-in exercise that does not import is a bug in cachelab
        raise ExerciseContractError(f"{_file(module_name)}: {type(exc).__name__}: {exc}"
                                    ) from exc


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


def catalogue() -> tuple[Entry, ...]:
    """Every exercise's INFO, built in and from packs, ordered by number, importing a
    module only when its INFO is not a plain literal: listing twenty exercises should not
    load twenty modules."""
    return _catalogue(_pack_entry_points(), _pack_dirs())


@functools.cache  # keyed by the packs, so a run with other packs gets its own catalogue
def _catalogue(entry_points: tuple[EntryPoint, ...], dirs: tuple[Path, ...]
               ) -> tuple[Entry, ...]:
    packages = [_builtin_package(), *map(_entry_point_package, entry_points),
                *map(_dir_package, dirs)]
    entries = []
    for module_name in (name for package in packages for name in _module_names(package)):
        info = _literal_info(module_name)
        if info is None:
            info = load_exercise(_import(module_name)).info
        entries.append(Entry(info, module_name))
    entries.sort(key=lambda e: e.info.number)
    seen: dict[str, Entry] = {}
    for entry in entries:
        for value in (entry.info.id, entry.info.slug):
            if value in seen:
                raise ExerciseContractError(f"{_file(seen[value].module_name)} and "
                                            f"{_file(entry.module_name)} both use {value!r}")
            seen[value] = entry
    return tuple(entries)


@functools.cache
def _load(module_name: str) -> Exercise:
    return load_exercise(_import(module_name))


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
                raise ExerciseContractError(f"{_file(entry.module_name)}: INFO changed on import")
            return exercise
    import difflib  # only a miss needs it; `cachelab list` should not pay for it

    known = [e.info.id for e in catalogue()] + [e.info.slug for e in catalogue()]
    raise UnknownExercise(name, difflib.get_close_matches(wanted, known, n=3, cutoff=0.5))
