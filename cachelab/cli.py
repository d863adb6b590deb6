"""The cachelab command line: parse, call the core, render, map errors to exit codes.

No caching logic lives here; the commands for each exercise are generated from the
exercise registry, their options from each exercise's ``run`` signature.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from cachelab import __version__
from cachelab.errors import (
    CachelabError,
    ExitCode,
    RedisServerNotFound,
    StoreError,
    UsageError,
)
from cachelab.registry import Exercise, catalogue, exercises, resolve

if TYPE_CHECKING:
    from cachelab.record import RunRecord


def _err(message: str) -> None:
    """One line on stderr; stdout stays clean for --json."""
    typer.echo(message, err=True)


@contextmanager
def _reported(debug: bool = False) -> Iterator[None]:
    """Turn cachelab's errors and Ctrl-C into one line on stderr and the exit code."""
    try:
        yield
    except CachelabError as exc:
        if debug:
            traceback.print_exc()
        _err(f"Error: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err("Interrupted: every server this run started has been stopped.")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    except Exception as exc:
        if debug:
            raise
        # A server that died or refused mid-run is the environment; anything else is a bug.
        environment = isinstance(exc, OSError) or type(exc).__module__.startswith("redis")
        _err(f"Error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        raise typer.Exit(ExitCode.ENVIRONMENT if environment else ExitCode.CHECK_FAILED) from None


class _ExerciseGroup(TyperGroup):
    """``cachelab run`` resolves ``11``, ``exercise-011`` and slugs to the exercise's command."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)  # "all"
        if command is not None:
            return command
        with _reported():
            exercise = resolve(cmd_name)
        # Built on demand: only the exercise asked for is imported.
        single = typer.Typer()
        single.command(exercise.info.id)(_exercise_command(exercise))
        return typer.main.get_command(single)

    def list_commands(self, ctx: Any) -> list[str]:
        return [entry.info.id for entry in catalogue()] + ["all"]


class _LabGroup(TyperGroup):
    """The root command: usage errors become one ``Error:`` line, not a framed box."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        except typer.TyperException as exc:
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "cachelab"
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            _err(f"Error: {message.rstrip('.')}. See '{where} --help'.")
            code = getattr(exc, "exit_code", ExitCode.USAGE)
        if not standalone_mode:
            return code
        sys.exit(code or 0)


app = typer.Typer(
    cls=_LabGroup,
    help="A hands-on lab for caching strategies on real Redis and SQLite.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
run_app = typer.Typer(cls=_ExerciseGroup, no_args_is_help=True,
                      help="Run an exercise (or all of them) and print what it measured.")
app.add_typer(run_app, name="run")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cachelab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """cachelab: twenty caching exercises on real Redis and SQLite, measured."""


# ---------------------------------------------------------------- list and show


@app.command("list")
def list_exercises(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the exercises: id, slug, title, concept and fixtures.

    Example: cachelab list --json
    """
    rows: list[dict[str, Any]] = [
        {"id": e.info.id, "slug": e.info.slug, "title": e.info.title, "concept": e.info.concept,
         "fixtures": list(e.info.fixtures)} for e in catalogue()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("id", "slug", "title", "concept", "fixtures"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["slug"], row["title"], row["concept"],
                      ", ".join(row["fixtures"]))
    Console().print(table)


@app.command()
def show(exercise: Annotated[str, typer.Argument(help="exercise-1, 1, or a slug")]) -> None:
    """Explain an exercise: scenario, concept, walkthrough, options and checks.

    Example: cachelab show lazy-caching
    """
    from rich.console import Console
    from rich.table import Table

    with _reported():
        ex = resolve(exercise)
    info, console = ex.info, Console()
    console.print(f"[bold cyan]{info.id}[/] [bold]{info.title}[/]  ({info.slug})")
    console.print(f"[bold]Concept:[/] {info.concept}\n")
    console.print(info.scenario + "\n")
    console.print("[bold]Walkthrough[/]")
    for i, step in enumerate(info.walkthrough, 1):
        console.print(f"  {i}. {step}")
    options = Table(title="Options", title_justify="left", box=None, header_style="bold")
    for column in ("option", "type", "default", "help"):
        options.add_column(column)
    for opt in ex.options:
        kind = "|".join(map(str, opt.choices)) if opt.choices else opt.type.__name__
        options.add_row(opt.flag, kind, str(opt.default), opt.help)
    console.print()
    console.print(options)
    console.print("\n[bold]Checks[/]")
    for name in info.checks:
        console.print(f"  • {name}")
    console.print(f"\nFixtures: {', '.join(info.fixtures)}")
    if info.own_servers:
        console.print(f"Existing deployments: no. It {info.own_servers}, so it runs only on "
                      "servers cachelab starts.")
    else:
        console.print("Existing deployments: yes, with --redis-url, --sentinel HOST:PORT "
                      "--service NAME, or --cluster-url. There it writes only keys under a "
                      "per-run prefix (cachelab:{token}:), deletes exactly those at the end "
                      "(never FLUSHALL), changes no server configuration, and masks "
                      "credentials in everything it prints or saves.")
    console.print(f"Run it: cachelab run {info.id}   (options: cachelab run {info.id} --help)")


# ---------------------------------------------------------------- run

Backend = Literal["local", "docker"]


_PANEL = "Existing deployment"
#: The options that name an existing deployment (run and compare take them).
_TARGET_OPTIONS: dict[str, dict[str, Any]] = {
    "redis_url": {"help": "Run on an existing Redis (redis:// or rediss://) instead of "
                  "servers cachelab starts; password from the URL or "
                  "CACHELAB_REDIS_PASSWORD.", "rich_help_panel": _PANEL},
    "sentinel": {"metavar": "HOST:PORT", "help": "Run on the master a Sentinel names "
                 "(with --service).", "rich_help_panel": _PANEL},
    "service": {"help": "The Sentinel's name for the master, e.g. mymaster.",
                "rich_help_panel": _PANEL},
    "cluster_url": {"help": "Run on an existing Redis Cluster (any node's URL).",
                    "rich_help_panel": _PANEL},
}


class _Common:
    """The options every ``run`` command shares."""

    PARAMS = [
        ("as_json", bool, typer.Option(False, "--json",
                                       help="Print the result as one JSON object.")),
        ("markdown", bool, typer.Option(False, "--markdown", help="Print Markdown.")),
        ("seed", int, typer.Option(42, help="Seed of every workload and of the shop data.")),
        ("db_latency_ms", float, typer.Option(1.0, min=0, max=1000,
                                              help="Modelled network round trip per query.")),
        ("scale", float, typer.Option(1.0, min=0.01, max=100,
                                      help="Size of the shop database (1.0: 1000 users).")),
        ("redis_server", str | None, typer.Option(None, help="redis-server binary to run.")),
        ("backend", Backend, typer.Option("local", help="Run Redis as local processes, or "
                                          "as Docker containers of --image.")),
        ("image", str, typer.Option("redis:7", help="Image of --backend docker (a Valkey "
                                    "image works too).")),
        *((name, str | None, typer.Option(None, **option))
          for name, option in _TARGET_OPTIONS.items()),
        ("results", Path | None, typer.Option(None, help="Results store file.")),
        ("no_save", bool, typer.Option(False, "--no-save", help="Do not save the run.")),
        ("debug", bool, typer.Option(False, "--debug", help="Show tracebacks.")),
    ]
    NAMES = {name for name, _, _ in PARAMS}

    def __init__(self, values: dict[str, Any]) -> None:
        from cachelab.deployment.target import parse_target
        from cachelab.lab import LabSettings

        self.as_json: bool = values["as_json"]
        self.markdown: bool = values["markdown"]
        self.no_save: bool = values["no_save"]
        self.debug: bool = values["debug"]
        self.results: Path | None = values["results"]
        self.settings = LabSettings(seed=values["seed"], db_latency_ms=values["db_latency_ms"],
                                    scale=values["scale"], redis_server=values["redis_server"],
                                    backend=values["backend"], image=values["image"],
                                    target=parse_target(values["redis_url"], values["sentinel"],
                                                        values["service"],
                                                        values["cluster_url"]))
        if self.settings.target is not None and self.settings.backend != "local":
            raise UsageError(f"{self.settings.target.flag} runs on servers that already "
                             "exist; leave out --backend")

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[_Common, dict[str, Any]]:
        common = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.NAMES}
        return cls(common), kwargs

    @classmethod
    def parameters(cls) -> list[inspect.Parameter]:
        return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                  annotation=kind) for name, kind, default in cls.PARAMS]


def _interactive(common: _Common) -> bool:
    """Live output only on a terminal, never on a pipe or with --json/--markdown."""
    return not (common.as_json or common.markdown) and sys.stdout.isatty()


def _live_factory(common: _Common) -> Any:
    """A rich Live table of an exercise's snapshot, refreshed four times a second."""
    if not _interactive(common):
        return None
    from rich.live import Live
    from rich.table import Table

    from cachelab.render import fmt

    @contextmanager
    def live(title: str, snapshot: Callable[[], Any]) -> Iterator[None]:
        def view() -> Table:
            table = Table(title=title, title_justify="left", show_header=False, box=None)
            for name, value in snapshot().items():
                table.add_row(name, fmt(value))
            return table

        with Live(get_renderable=view, refresh_per_second=4, transient=True):
            yield

    return live


def _progress_factory(common: _Common) -> Any:
    """A rich progress bar on a terminal; nothing on a pipe or with --json."""
    if not _interactive(common):
        return None
    from rich.progress import Progress

    @contextmanager
    def progress(description: str, total: int | None) -> Iterator[Callable[[], None]]:
        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)

    return progress


def _save(common: _Common, record: RunRecord) -> None:
    if common.no_save:
        return
    from cachelab.store import ResultsStore

    try:
        ResultsStore(common.results).save(record)
    except StoreError as exc:
        _err(f"Warning: run {record['run_id']} was not saved: {exc} "
             "(use --results PATH or --no-save)")


def _print(common: _Common, record: RunRecord) -> None:
    if common.markdown:
        from cachelab.render import to_markdown

        typer.echo(to_markdown(record))
    elif not common.as_json:
        from rich.console import Console

        from cachelab.render import print_record

        print_record(Console(), record)


def _note_leftovers() -> None:
    """Say so when killed runs left folders behind (on Linux their servers died with them)."""
    from cachelab.servers.leftovers import find_leftovers

    found = find_leftovers()
    if found:
        _err(f"Note: {len(found)} folder(s) of killed cachelab runs are left "
             f"({sum(len(f.pids) for f in found)} server(s) running); "
             "'cachelab doctor --clean' removes them.")


def _run_one(exercise: Exercise, common: _Common, given: dict[str, Any]) -> RunRecord:
    from cachelab.runner import run_exercise

    record = run_exercise(exercise, given, common.settings, progress=_progress_factory(common),
                          live=_live_factory(common)).to_dict()
    _print(common, record)
    _save(common, record)  # at once, so that a later Ctrl-C loses no finished run
    return record


def _exercise_command(exercise: Exercise) -> Callable[..., None]:
    """A Typer command whose options are the exercise's own plus the common ones."""

    def command(**kwargs: Any) -> None:
        with _reported(kwargs["debug"]):
            common, given = _Common.split(kwargs)
        _note_leftovers()
        with _reported(common.debug):
            record = _run_one(exercise, common, given)
        if common.as_json:
            typer.echo(json.dumps(record))
        raise typer.Exit(ExitCode.OK if record["verdict"] == "pass" else ExitCode.CHECK_FAILED)

    own = []
    for opt in exercise.options:
        if opt.name in _Common.NAMES:
            raise CachelabError(f"{exercise.module.__file__}: option {opt.flag} clashes with "
                                "a common option of 'cachelab run'; rename it")
        own.append(inspect.Parameter(
            opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=opt.type,
            default=typer.Option(opt.default, opt.flag, help=opt.help, min=opt.min,
                                 max=opt.max, rich_help_panel="Exercise options")))
    command.__signature__ = inspect.Signature(own + _Common.parameters())  # type: ignore[attr-defined]
    info = exercise.info
    command.__doc__ = (f"{info.title}. {info.concept}.\n\n{info.scenario}\n\n"
                       f"Example: cachelab run {info.id} --json")
    return command


def _run_all(**kwargs: Any) -> None:
    """Run every exercise with its defaults, one after another, then a summary.

    Goes on after a failed check, or after an exercise whose servers would not start.
    Example: cachelab run all --json
    """
    with _reported(kwargs["debug"]):
        common, _ = _Common.split(kwargs)
    _note_leftovers()
    records: list[RunRecord] = []
    headlines: list[str] = []
    code = ExitCode.OK
    chosen = list(exercises())
    target = common.settings.target
    if target is not None:
        skipped = [e.info.id for e in chosen if e.info.own_servers]
        chosen = [e for e in chosen if not e.info.own_servers]
        _err(f"On {target.display}: skipping {', '.join(skipped)}, which need servers "
             "cachelab starts ('cachelab show N' says why).")
    from cachelab.deployment.target import DeploymentUnreachable

    with _reported(common.debug):
        for exercise in chosen:
            try:
                record = _run_one(exercise, common, {})
            except (RedisServerNotFound, DeploymentUnreachable):
                raise  # nothing else could run either
            except CachelabError as exc:
                _err(f"Error: {exercise.info.id}: {exc}")
                code = ExitCode.ENVIRONMENT
                continue
            records.append(record)
            headlines.append(exercise.info.headline)
            if record["verdict"] != "pass":
                code = max(code, ExitCode.CHECK_FAILED)
    if common.as_json:
        typer.echo(json.dumps(records))
    elif not common.markdown:
        from rich.console import Console

        from cachelab.render import summary_table

        Console().print(summary_table(records, headlines))
    raise typer.Exit(code)


_run_all.__signature__ = inspect.Signature(_Common.parameters())  # type: ignore[attr-defined]
run_app.command("all")(_run_all)


# ---------------------------------------------------------------- runs, compare, report

runs_app = typer.Typer(help="The saved runs: list, show, delete, prune.",
                       invoke_without_command=True)
app.add_typer(runs_app, name="runs")
ResultsOption = Annotated[Path | None, typer.Option("--results", help="Results store file.")]
FIRST_RUN_HINT = "make a first run with: cachelab run exercise-1"


def _store(results: Path | None) -> Any:
    from cachelab.store import ResultsStore

    return ResultsStore(results)


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console

    from cachelab.render import table_renderable

    if rows:
        Console().print(table_renderable(title, columns, rows))


@runs_app.callback()
def runs(
    ctx: typer.Context,
    exercise: Annotated[str | None, typer.Option(help="Only runs of this exercise.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    results: ResultsOption = None,
) -> None:
    """List the saved runs, newest last: id, exercise, time, verdict, duration, headline.

    Example: cachelab runs --exercise 11 --limit 5
    """
    if ctx.invoked_subcommand is not None:
        return
    with _reported():
        store = _store(results)
        wanted = resolve(exercise).info.id if exercise else None
        saved = store.runs(wanted)[-limit:]
    headlines = {e.info.id: e.info.headline for e in catalogue()}
    rows = [{"run_id": r["run_id"], "exercise": r["exercise"],
             "started_at": r["started_at"][:16].replace("T", " "),
             "verdict": r["verdict"], "duration_s": r["duration_s"],
             "headline": headlines.get(r["exercise"]),
             "value": r["metrics"].get(headlines.get(r["exercise"], ""))} for r in saved]
    if as_json:
        typer.echo(json.dumps(rows))
    elif not rows:
        _err(f"No saved runs in {store.path}; {FIRST_RUN_HINT}")
    else:
        _print_table("Saved runs", ["run", "exercise", "started", "verdict", "duration s",
                                    "headline", "value"],
                     [list(r.values()) for r in rows])


@runs_app.command("show")
def runs_show(run: Annotated[str, typer.Argument(help="A run id (or its start).")],
              as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
              results: ResultsOption = None) -> None:
    """Print a saved run again, as it was printed. Example: cachelab runs show 3fa2"""
    with _reported():
        record = _store(results).get(run)
    if as_json:
        typer.echo(json.dumps(record))
    else:
        from rich.console import Console

        from cachelab.render import print_record

        print_record(Console(), record)


@runs_app.command("delete")
def runs_delete(run: Annotated[str, typer.Argument(help="A run id (or its start).")],
                results: ResultsOption = None) -> None:
    """Delete one saved run. Example: cachelab runs delete 3fa2"""
    with _reported():
        run_id = _store(results).delete(run)
    typer.echo(f"Deleted run {run_id}.")


@runs_app.command("prune")
def runs_prune(keep: Annotated[int, typer.Option(min=0, help="Runs to keep per exercise.")],
               results: ResultsOption = None) -> None:
    """Keep only the newest runs of each exercise. Example: cachelab runs prune --keep 5"""
    with _reported():
        deleted = _store(results).prune(keep)
    typer.echo(f"Deleted {deleted} run(s); kept the newest {keep} of each exercise.")


@app.command()
def compare(
    items: Annotated[list[str], typer.Argument(help="Run ids, or one exercise with --vary.")],
    vary: Annotated[str | None, typer.Option(help="NAME=V1,V2,...: run the exercise once "
                                             "per value.")] = None,
    trials: Annotated[int, typer.Option(min=1, max=50, help="Runs per value (seeds seed, "
                                        "seed+1, ...).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the first trial.")] = 42,
    db_latency_ms: Annotated[float, typer.Option(min=0, max=1000, help="Modelled database "
                                                 "round trip.")] = 1.0,
    redis_server: Annotated[str | None, typer.Option(help="redis-server binary.")] = None,
    redis_url: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["redis_url"])] = None,
    sentinel: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["sentinel"])] = None,
    service: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["service"])] = None,
    cluster_url: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["cluster_url"])] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    results: ResultsOption = None,
) -> None:
    """Compare saved runs side by side, or run one exercise across values of an option.

    Examples: cachelab compare 3fa2 9c1e;
    cachelab compare exercise-11 --vary policies=allkeys-lru,allkeys-random --trials 3
    """
    from cachelab import compare as cmp

    with _reported():
        store = _store(results)
        if vary is None:
            if len(items) < 2:
                raise UsageError("give two or more run ids (see 'cachelab runs'), or one "
                                 "exercise with --vary NAME=V1,V2")
            comparison = cmp.compare_records([store.get(ref) for ref in items])
        else:
            if len(items) != 1:
                raise UsageError("--vary takes exactly one exercise")
            exercise = resolve(items[0])
            option, values = cmp.parse_vary(exercise, vary)
            from cachelab.deployment.target import parse_target
            from cachelab.lab import LabSettings
            from cachelab.runner import run_exercise

            target = parse_target(redis_url, sentinel, service, cluster_url)

            def one(given: dict[str, Any], trial: int) -> RunRecord:
                settings = LabSettings(seed=seed + trial, db_latency_ms=db_latency_ms,
                                       redis_server=redis_server, target=target)
                record = run_exercise(exercise, given, settings).to_dict()
                store.save(record)
                return record

            columns, rows = cmp.vary(option, values, trials, one).rows()
            if as_json:
                typer.echo(json.dumps({"columns": columns, "rows": rows}))
            else:
                _print_table(f"{exercise.info.id} by {option}"
                             + (f" (median and min–max of {trials} trials)" if trials > 1
                                else ""), columns, rows)
            return
    sections = [("Metrics", comparison.metric_columns, comparison.metric_rows),
                ("Parameters that differ", ["parameter", *comparison.run_ids],
                 comparison.param_rows),
                ("Checks that differ", ["check", *comparison.run_ids], comparison.check_rows),
                ("Environment that differs", ["", *comparison.run_ids],
                 comparison.environment_rows)]
    if as_json:
        typer.echo(json.dumps({title: {"columns": columns, "rows": rows}
                               for title, columns, rows in sections}))
        return
    for title, columns, rows in sections:
        _print_table(title, columns, rows)


@app.command()
def report(
    runs: Annotated[list[str] | None, typer.Argument(help="Run ids; default: the latest "
                                                     "run of every exercise.")] = None,
    format: Annotated[Literal["markdown", "html"], typer.Option(
        "--format", help="markdown or html.")] = "markdown",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file "
                                                "instead of stdout.")] = None,
    results: ResultsOption = None,
) -> None:
    """Write a report of saved runs: parameters, verdict, checks, metrics, charts.

    Example: cachelab report --format html -o report.html
    """
    from cachelab.report import html_report, markdown_report

    with _reported():
        store = _store(results)
        records = [store.get(ref) for ref in runs] if runs else store.latest_per_exercise()
        if not records:
            raise UsageError(f"No saved runs in {store.path} to report; {FIRST_RUN_HINT}")
        text = html_report(records) if format == "html" else markdown_report(records)
        if output is None:
            typer.echo(text)
            return
        try:
            output.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    _err(f"Wrote a report of {len(records)} run(s) to {output}")


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8000,
    caching: Annotated[Literal["none", "lazy", "eager"],
                       typer.Option(help="How the API caches reads.")] = "lazy",
    ttl_s: Annotated[float, typer.Option(min=0.001, help="TTL of cached values.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the shop data.")] = 42,
    scale: Annotated[float, typer.Option(min=0.01, max=100,
                                         help="Size of the shop database.")] = 1.0,
    db_latency_ms: Annotated[float, typer.Option(min=0, max=1000, help="Modelled network "
                                                 "round trip per query.")] = 1.0,
    redis_server: Annotated[str | None, typer.Option(help="redis-server binary to run.")] = None,
    rate_limit: Annotated[str | None, typer.Option(
        help="Limit each user (X-User-Id) or IP: ALGORITHM:LIMIT/WINDOW, e.g. "
             "token_bucket:20/1s (fixed, sliding_log, sliding_counter, token_bucket).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Run the shop HTTP API in the foreground, with its own Redis and database.

    Endpoints: /users/{id}, /products/{id}, /products/{id}/page,
    /posts/{id}/comments and /reports/sales; the OpenAPI page is at /docs.

    Over a --rate-limit, answers are 429 with Retry-After and RateLimit headers.
    Ctrl-C stops it and everything it started.

    Example: cachelab serve --caching eager --rate-limit token_bucket:20/1s
    """
    from cachelab.lab import Lab, LabSettings
    from cachelab.shop.server import serve as run_server

    settings = LabSettings(seed=seed, db_latency_ms=db_latency_ms, scale=scale,
                           redis_server=redis_server)
    with _reported(debug), Lab(settings) as lab:
        run_server(lab, port=port, caching=caching, ttl_s=ttl_s, announce=typer.echo,
                   rate_limit=rate_limit)


# ---------------------------------------------------------------- lab up, status, down

lab_app = typer.Typer(help="Keep a topology running in the background to explore with "
                      "redis-cli: up, status, down.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
Topology = Literal["standalone", "replicas", "sentinel", "cluster"]


def _print_nodes(state: dict[str, Any], title: str) -> None:
    live = "role_now" in state["nodes"][0]
    columns = ["role", "name", "address", *(["now", "answers"] if live else [])]
    rows = [[n["role"], n["name"], n["address"],
             *([n["role_now"], "yes" if n["answers"] else "no"] if live else [])]
            for n in state["nodes"]]
    _print_table(title, columns, rows)


@lab_app.command("up")
def lab_up(
    topology: Annotated[Topology, typer.Argument(help="What to start.")],
    redis_server: Annotated[str | None, typer.Option(help="redis-server binary to run.")] = None,
    backend: Annotated[Backend, typer.Option(help="Local processes, or Docker containers "
                                             "of --image.")] = "local",
    image: Annotated[str, typer.Option(help="Image of --backend docker.")] = "redis:7",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Start a topology on 127.0.0.1 in the background and print its addresses.

    standalone: one server. replicas: a primary and 2 replicas.
    sentinel: those and 3 Sentinels (service mymaster).
    cluster: 3 masters and 3 replicas.

    Example: cachelab lab up cluster, then redis-cli -c -p PORT
    """
    from cachelab.children import background

    with _reported():
        state = background.up(topology, redis_server=redis_server, backend=backend,
                              image=image)
    if as_json:
        typer.echo(json.dumps(state))
        return
    env = state["redis_server"]
    where = f"{env.get('redis_version')}" + (f", {env['image']}" if "image" in env else "")
    _print_nodes(state, f"{topology} lab up ({where})")
    port = state["nodes"][0]["address"].rsplit(":", 1)[1]
    typer.echo(f"Explore it with: redis-cli {'-c ' if topology == 'cluster' else ''}-p {port}"
               "\nStop it with:    cachelab lab down")


@lab_app.command("status")
def lab_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
               ) -> None:
    """Show the background lab: each server's address, role now, and whether it answers."""
    from cachelab.children import background

    with _reported():
        state = background.status()
    if as_json:
        typer.echo(json.dumps(state))
    elif state is None:
        typer.echo("No lab is up; start one with: cachelab lab up standalone")
    else:
        _print_nodes(state, f"{state['kind']} lab, up since {state['started_at']}")


@lab_app.command("down")
def lab_down() -> None:
    """Stop every server of the background lab and remove its folder."""
    from cachelab.children import background

    with _reported():
        state = background.down()
    if state is None:
        typer.echo("No lab is up; nothing to stop.")
    else:
        typer.echo(f"Stopped the {state['kind']} lab: {len(state['nodes'])} server(s).")


# ---------------------------------------------------------------- doctor


def _docker_answers() -> str:
    """Ping the Docker engine's socket; a one-line answer either way."""
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return f"not checked ({host} is not a local socket)"
    path = host.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(256).decode(errors="replace")
    except OSError:
        return f"no engine answers at {path}"
    return "an engine answers" if " 200 " in reply.split("\r\n", 1)[0] else f"odd reply at {path}"


def _docker_rows(clean: bool) -> list[tuple[str, str]]:
    """The engine, its Redis and Valkey images, and cachelab's containers (those of
    killed runs removed with --clean)."""
    answer = _docker_answers()
    rows = [("docker", answer)]
    if answer.startswith("no engine"):
        return rows
    from cachelab.servers import docker_backend

    try:
        client = docker_backend.connect(timeout_s=5)
    except CachelabError as exc:
        return [("docker", str(exc))]
    try:
        rows.append(("docker images", ", ".join(docker_backend.images(client))
                     or "none with redis or valkey in its name (--image pulls one)"))
        found = docker_backend.cachelab_containers(client)
        orphans = [c for c in found if c.orphaned]
        rows.append(("docker containers",
                     f"{len(found) - len(orphans)} of running cachelab processes, "
                     f"{len(orphans)} of killed ones"
                     + (" (cachelab doctor --clean removes them)" if orphans and not clean
                        else "")))
        for container in orphans:
            rows.append(("", f"{container.name} ({container.status}, run pid "
                             f"{container.owner_pid}, folder {container.folder})"))
        if clean and orphans:
            removed = docker_backend.remove_containers(client, orphans)
            rows.append(("cleaned", f"{removed} container(s) of killed runs removed"))
    finally:
        client.close()
    return rows


@app.command()
def doctor(
    redis_server: Annotated[str | None, typer.Option(help="redis-server binary to check.")] = None,
    results: Annotated[Path | None, typer.Option(help="Results store file.")] = None,
    clean: Annotated[bool, typer.Option("--clean", help="Stop the servers (and remove the "
                                        "containers) of killed runs and remove their "
                                        "folders; on a deployment, delete their keys.")
                     ] = False,
    redis_url: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["redis_url"])] = None,
    sentinel: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["sentinel"])] = None,
    service: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["service"])] = None,
    cluster_url: Annotated[str | None, typer.Option(**_TARGET_OPTIONS["cluster_url"])] = None,
) -> None:
    """Show what cachelab would run on: Python, redis-server, results store, Docker (does
    an engine answer, which Redis images it has), and what killed runs left behind; given
    an existing deployment, whether it answers and which runs' keys it holds.

    Exits 3 when no usable redis-server is found, or the deployment does not answer.
    Examples: cachelab doctor --clean; cachelab doctor --redis-url redis://host:6379 --clean
    """
    import platform

    from cachelab.servers import leftovers
    from cachelab.servers.redis_binary import find_redis_server
    from cachelab.servers.spawn import DIES_WITH_PARENT
    from cachelab.store import default_store_path

    rows = [("cachelab", __version__),
            ("python", f"{platform.python_version()} ({sys.executable})")]
    problem: CachelabError | None = None
    try:
        binary = find_redis_server(redis_server)
        rows.append(("redis-server", f"{binary.version} at {binary.path} ({binary.source})"))
    except CachelabError as exc:
        problem = exc
        rows.append(("redis-server", "none usable"))
    rows.append(("results store", str(results or default_store_path())))
    rows += _docker_rows(clean)  # before the folders: a container may still mount one
    from cachelab.children import background

    up = background.status()
    rows.append(("background lab", "none" if up is None else
                 f"{up['kind']} up since {up['started_at']} (cachelab lab down stops it)"))
    rows.append(("killed runs", ("their servers die with them (parent-death signal)"
                                 if DIES_WITH_PARENT else "their servers may outlive them: "
                                 "see leftovers") + "; docker containers outlive them"))
    found = leftovers.find_leftovers()
    rows.append(("leftovers", f"{len(found)} folder(s) of killed runs, "
                 f"{sum(len(f.pids) for f in found)} server(s) still running"
                 + (" (cachelab doctor --clean removes them)" if found and not clean else "")))
    for leftover in found:
        rows.append(("", f"{leftover.folder} (run pid {leftover.owner_pid}, servers "
                         f"{', '.join(map(str, leftover.pids)) or 'none'})"))
        if clean:
            leftovers.clean(leftover)
    if clean and found:
        rows.append(("cleaned", f"{len(found)} folder(s) removed"))
    if redis_url or sentinel or service or cluster_url:
        try:
            rows += _deployment_rows(redis_url, sentinel, service, cluster_url, clean)
        except CachelabError as exc:
            problem = problem or exc
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")
    if problem is not None:
        _err(f"Error: {problem}")
        raise typer.Exit(problem.exit_code)


def _deployment_rows(redis_url: str | None, sentinel: str | None, service: str | None,
                     cluster_url: str | None, clean: bool) -> list[tuple[str, str]]:
    """An existing deployment: does it answer, and the keys cachelab runs have there
    (a killed run cannot delete its own; --clean deletes those, and only those)."""
    from cachelab.deployment.survey import remove, survey
    from cachelab.deployment.target import parse_target

    target = parse_target(redis_url, sentinel, service, cluster_url)
    assert target is not None
    version, runs = survey(target)
    orphans = [run for run in runs if run.orphaned]
    rows = [("deployment", f"Redis {version} at {target.display}"),
            ("runs' keys", f"{len(runs)} run(s), {sum(r.keys for r in runs)} key(s); "
             f"{len(orphans)} run(s) killed"
             + (" (cachelab doctor --clean deletes their keys)" if orphans and not clean
                else ""))]
    rows += [("", run.describe()) for run in runs]
    if clean and orphans:
        deleted = sum(remove(target, run) for run in orphans)
        rows.append(("cleaned", f"{deleted} key(s) of {len(orphans)} killed run(s) deleted"))
    return rows


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, so the lab tears down; but not where
    Python mishandles it, so the signal comes again a moment later instead:
    - inside a finalizer (a dropped redis-py pool's ``__del__``), Python prints it,
      swallows it, and the run goes on to exit 0;
    - inside an import, the run tears down but the process then ends killed by SIGINT
      (-2), not with exit code 130."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.startswith("<frozen importlib"):
            threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: SIGTERM tears down like Ctrl-C does."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    app()
