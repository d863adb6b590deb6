"""The cachelab command line: parse, call the core, render; one boundary maps errors to
exit codes.

No caching logic lives here; the commands for each exercise are generated from the
exercise registry, their options from each exercise's ``run`` signature, and the options
commands share from cachelab.options.
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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperGroup

from cachelab import __version__
from cachelab.errors import (
    CachelabError,
    ExitCode,
    Interrupted,
    RedisServerNotFound,
    StoreError,
    UsageError,
)
from cachelab.options import (
    DEBUG,
    DEBUG_KEY,
    DEPLOYMENT_OPTIONS,
    JSON,
    LAB_OPTIONS,
    MARKDOWN,
    NO_SAVE,
    REDIS_SERVER,
    RESULTS,
    SERVER_OPTIONS,
    SHOP_OPTIONS,
    SharedValues,
    shared_options,
)
from cachelab.registry import Exercise, catalogue, exercises, resolve

if TYPE_CHECKING:
    from cachelab.lab import LabSettings
    from cachelab.record import RunRecord
    from cachelab.store import ResultsStore


def _err(message: str) -> None:
    """One line on stderr; stdout stays clean for --json."""
    typer.echo(message, err=True)


def _report_error(exc: BaseException, debug: bool) -> int:
    """One line on stderr for ``exc`` (after its traceback with --debug), and its exit code."""
    if isinstance(exc, KeyboardInterrupt):
        code = exc.exit_code if isinstance(exc, Interrupted) else ExitCode.INTERRUPTED
        what = "Terminated" if code == ExitCode.TERMINATED else "Interrupted"
        _err(f"{what}: every server this run started has been stopped.")
        return code
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    if isinstance(exc, CachelabError):
        _err(f"Error: {exc}")
        return exc.exit_code
    # A server that died or refused mid-run is the environment; anything else is a bug.
    if isinstance(exc, OSError) or type(exc).__module__.startswith("redis"):
        _err(f"Error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return ExitCode.ENVIRONMENT
    _err(f"Error: {type(exc).__name__}: {exc}. This is a bug in cachelab: please report it "
         "with the command you ran and the traceback that --debug shows.")
    return ExitCode.BUG


class _ExerciseGroup(TyperGroup):
    """``cachelab run`` resolves ``11``, ``exercise-011`` and slugs to the exercise's command."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)  # "all"
        if command is not None:
            return command
        exercise = resolve(cmd_name)
        # Built on demand: only the exercise asked for is imported.
        single = typer.Typer(add_completion=False)
        single.command(exercise.info.id)(_exercise_command(exercise))
        return typer.main.get_command(single)

    def list_commands(self, ctx: Any) -> list[str]:
        return [entry.info.id for entry in catalogue()] + ["all"]


class _LabGroup(TyperGroup):
    """The root command, and the one error boundary (httpie's ``raw_main``): whatever a
    command raises becomes one line on stderr and an exit code here."""

    def invoke(self, ctx: Any) -> Any:
        # Inside Typer's main, not around it: Typer's main turns a KeyboardInterrupt into a
        # bare exit 130, and SIGTERM's 143 would be lost.
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # an exit code already, or a usage error that main() words
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(_report_error(exc, ctx.meta.get(DEBUG_KEY, False))) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        """Usage errors become one ``Error:`` line, not a framed box."""
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        except typer.TyperException as exc:
            code = getattr(exc, "exit_code", ExitCode.USAGE)
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one printed the help
                ctx = getattr(exc, "ctx", None)
                where = ctx.command_path if ctx is not None else "cachelab"
                message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
                _err(f"Error: {message.rstrip('.')}. See '{where} --help'.")
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


def _exercise_dirs(dirs: list[Path] | None) -> None:
    # Eager: set while the options are parsed, before any command can read the catalogue.
    # Called when the option is absent too, so that each invocation in one process (as
    # CliRunner makes them) starts from no folders.
    from cachelab.registry import set_exercise_dirs

    set_exercise_dirs(dirs or ())


@app.callback()
@shared_options(DEBUG)
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    exercises_dir: Annotated[list[Path] | None, typer.Option(
        "--exercises-dir", metavar="DIR", callback=_exercise_dirs, is_eager=True,
        exists=True, file_okay=False, help="A folder of your own exercise modules (repeat "
        "it for more); CACHELAB_EXERCISES_DIR adds folders too (separated by ':', or ';' on "
        "Windows).")] = None,
    *, shared: SharedValues,
) -> None:
    """cachelab: twenty caching exercises on real Redis and SQLite, measured."""


# ---------------------------------------------------------------- list and show


@app.command("list")
@shared_options(JSON)
def list_exercises(*, shared: SharedValues) -> None:
    """List the exercises: id, slug, title, concept and fixtures.

    Example: cachelab list --json
    """
    rows: list[dict[str, Any]] = [
        {"id": e.info.id, "slug": e.info.slug, "title": e.info.title, "concept": e.info.concept,
         "fixtures": list(e.info.fixtures)} for e in catalogue()]
    if shared.as_json:
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

#: The options of ``run N`` and ``run all``, beside an exercise's own.
RUN_OPTIONS = (JSON, MARKDOWN, *LAB_OPTIONS, RESULTS, NO_SAVE, DEBUG)


def _interactive(shared: SharedValues) -> bool:
    """Live output only on a terminal, never on a pipe or with --json/--markdown."""
    return not (shared.as_json or shared.markdown) and sys.stdout.isatty()


def _live_factory(shared: SharedValues) -> Any:
    """A rich Live table of an exercise's snapshot, refreshed four times a second."""
    if not _interactive(shared):
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


def _progress_factory(shared: SharedValues) -> Any:
    """A rich progress bar on a terminal; nothing on a pipe or with --json."""
    if not _interactive(shared):
        return None
    from rich.progress import Progress

    @contextmanager
    def progress(description: str, total: int | None) -> Iterator[Callable[[], None]]:
        with Progress(transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)

    return progress


def _save(shared: SharedValues, record: RunRecord) -> None:
    if shared.no_save:
        return
    try:
        _store(shared.results).save(record)
    except StoreError as exc:
        _err(f"Warning: run {record['run_id']} was not saved: {exc} "
             "(use --results PATH or --no-save)")


def _print(shared: SharedValues, record: RunRecord) -> None:
    if shared.markdown:
        from cachelab.render import to_markdown

        typer.echo(to_markdown(record))
    elif not shared.as_json:
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


def _run_one(exercise: Exercise, shared: SharedValues, settings: LabSettings,
             given: dict[str, Any]) -> RunRecord:
    from cachelab.runner import run_exercise

    record = run_exercise(exercise, given, settings, progress=_progress_factory(shared),
                          live=_live_factory(shared)).to_dict()
    _print(shared, record)
    _save(shared, record)  # at once, so that a later Ctrl-C loses no finished run
    return record


def _exercise_command(exercise: Exercise) -> Callable[..., None]:
    """A Typer command whose options are the exercise's own plus the shared ones."""

    def command(*, shared: SharedValues, **given: Any) -> None:
        settings = shared.settings()
        _note_leftovers()
        record = _run_one(exercise, shared, settings, given)
        if shared.as_json:
            typer.echo(json.dumps(record))
        raise typer.Exit(ExitCode.OK if record["verdict"] == "pass" else ExitCode.CHECK_FAILED)

    taken = {option.name for option in RUN_OPTIONS}
    own = []
    for opt in exercise.options:
        if opt.name in taken:
            raise CachelabError(f"{exercise.module.__file__}: option {opt.flag} clashes with "
                                "a common option of 'cachelab run'; rename it")
        own.append(inspect.Parameter(
            opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=opt.type,
            default=typer.Option(opt.default, opt.flag, help=opt.help, min=opt.min,
                                 max=opt.max, rich_help_panel="Exercise options")))
    command.__signature__ = inspect.Signature(own)  # type: ignore[attr-defined]
    info = exercise.info
    command.__doc__ = (f"{info.title}. {info.concept}.\n\n{info.scenario}\n\n"
                       f"Example: cachelab run {info.id} --json")
    return shared_options(*RUN_OPTIONS)(command)


@run_app.command("all")
@shared_options(*RUN_OPTIONS)
def run_all(*, shared: SharedValues) -> None:
    """Run every exercise with its defaults, one after another, then a summary.

    Goes on after a failed check, or after an exercise whose servers would not start.
    Example: cachelab run all --json
    """
    settings = shared.settings()
    _note_leftovers()
    records: list[RunRecord] = []
    headlines: list[str] = []
    code = ExitCode.OK
    chosen = list(exercises())
    target = settings.target
    if target is not None:
        skipped = [e.info.id for e in chosen if e.info.own_servers]
        chosen = [e for e in chosen if not e.info.own_servers]
        _err(f"On {target.display}: skipping {', '.join(skipped)}, which need servers "
             "cachelab starts ('cachelab show N' says why).")
    from cachelab.deployment.target import DeploymentUnreachable

    for exercise in chosen:
        try:
            record = _run_one(exercise, shared, settings, {})
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
    if shared.as_json:
        typer.echo(json.dumps(records))
    elif not shared.markdown:
        from rich.console import Console

        from cachelab.render import summary_table

        Console().print(summary_table(records, headlines))
    raise typer.Exit(code)


# ---------------------------------------------------------------- runs, compare, report

runs_app = typer.Typer(help="The saved runs: list, show, delete, prune.",
                       invoke_without_command=True)
app.add_typer(runs_app, name="runs")
FIRST_RUN_HINT = "make a first run with: cachelab run exercise-1"


def _store(results: Path | None) -> ResultsStore:
    from cachelab.store import ResultsStore

    return ResultsStore(results)


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console

    from cachelab.render import table_renderable

    if rows:
        Console().print(table_renderable(title, columns, rows))


@runs_app.callback()
@shared_options(JSON, RESULTS)
def runs(
    ctx: typer.Context,
    exercise: Annotated[str | None, typer.Option(help="Only runs of this exercise.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, newest.")] = 20,
    *, shared: SharedValues,
) -> None:
    """List the saved runs, newest last: id, exercise, time, verdict, duration, headline.

    Example: cachelab runs --exercise 11 --limit 5
    """
    if ctx.invoked_subcommand is not None:
        return
    store = _store(shared.results)
    wanted = resolve(exercise).info.id if exercise else None
    saved = store.runs(wanted)[-limit:]
    headlines = {e.info.id: e.info.headline for e in catalogue()}
    rows = [{"run_id": r["run_id"], "exercise": r["exercise"],
             "started_at": r["started_at"][:16].replace("T", " "),
             "verdict": r["verdict"], "duration_s": r["duration_s"],
             "headline": headlines.get(r["exercise"]),
             "value": r["metrics"].get(headlines.get(r["exercise"], ""))} for r in saved]
    if shared.as_json:
        typer.echo(json.dumps(rows))
    elif not rows:
        _err(f"No saved runs in {store.path}; {FIRST_RUN_HINT}")
    else:
        _print_table("Saved runs", ["run", "exercise", "started", "verdict", "duration s",
                                    "headline", "value"],
                     [list(r.values()) for r in rows])


RunArgument = Annotated[str, typer.Argument(help="A run id (or its start).")]


@runs_app.command("show")
@shared_options(JSON, RESULTS)
def runs_show(run: RunArgument, *, shared: SharedValues) -> None:
    """Print a saved run again, as it was printed. Example: cachelab runs show 3fa2"""
    record = _store(shared.results).get(run)
    if shared.as_json:
        typer.echo(json.dumps(record))
    else:
        from rich.console import Console

        from cachelab.render import print_record

        print_record(Console(), record)


@runs_app.command("delete")
@shared_options(RESULTS)
def runs_delete(run: RunArgument, *, shared: SharedValues) -> None:
    """Delete one saved run. Example: cachelab runs delete 3fa2"""
    run_id = _store(shared.results).delete(run)
    typer.echo(f"Deleted run {run_id}.")


@runs_app.command("prune")
@shared_options(RESULTS)
def runs_prune(keep: Annotated[int, typer.Option(min=0, help="Runs to keep per exercise.")],
               *, shared: SharedValues) -> None:
    """Keep only the newest runs of each exercise. Example: cachelab runs prune --keep 5"""
    deleted = _store(shared.results).prune(keep)
    typer.echo(f"Deleted {deleted} run(s); kept the newest {keep} of each exercise.")


@app.command()
@shared_options(JSON, *LAB_OPTIONS, RESULTS, DEBUG)
def compare(
    items: Annotated[list[str], typer.Argument(help="Run ids, or one exercise with --vary.")],
    vary: Annotated[str | None, typer.Option(help="NAME=V1,V2,...: run the exercise once "
                                             "per value.")] = None,
    trials: Annotated[int, typer.Option(min=1, max=50, help="Runs per value (seeds seed, "
                                        "seed+1, ...).")] = 1,
    *, shared: SharedValues,
) -> None:
    """Compare saved runs side by side, or run one exercise across values of an option.

    Examples: cachelab compare 3fa2 9c1e;
    cachelab compare exercise-11 --vary policies=allkeys-lru,allkeys-random --trials 3
    """
    from cachelab import compare as cmp

    store = _store(shared.results)
    if vary is not None:
        if len(items) != 1:
            raise UsageError("--vary takes exactly one exercise")
        exercise = resolve(items[0])
        option, values = cmp.parse_vary(exercise, vary)
        settings = shared.settings()
        from cachelab.runner import run_exercise

        def one(given: dict[str, Any], trial: int) -> RunRecord:
            trial_settings = replace(settings, seed=settings.seed + trial)
            record = run_exercise(exercise, given, trial_settings).to_dict()
            store.save(record)
            return record

        columns, rows = cmp.vary(option, values, trials, one).rows()
        if shared.as_json:
            typer.echo(json.dumps({"columns": columns, "rows": rows}))
        else:
            _print_table(f"{exercise.info.id} by {option}"
                         + (f" (median and min–max of {trials} trials)" if trials > 1
                            else ""), columns, rows)
        return
    if len(items) < 2:
        raise UsageError("give two or more run ids (see 'cachelab runs'), or one "
                         "exercise with --vary NAME=V1,V2")
    comparison = cmp.compare_records([store.get(ref) for ref in items])
    sections = [("Metrics", comparison.metric_columns, comparison.metric_rows),
                ("Parameters that differ", ["parameter", *comparison.run_ids],
                 comparison.param_rows),
                ("Checks that differ", ["check", *comparison.run_ids], comparison.check_rows),
                ("Environment that differs", ["", *comparison.run_ids],
                 comparison.environment_rows)]
    if shared.as_json:
        typer.echo(json.dumps({title: {"columns": columns, "rows": rows}
                               for title, columns, rows in sections}))
        return
    for title, columns, rows in sections:
        _print_table(title, columns, rows)


@app.command()
@shared_options(RESULTS)
def report(
    runs: Annotated[list[str] | None, typer.Argument(help="Run ids; default: the latest "
                                                     "run of every exercise.")] = None,
    format: Annotated[Literal["markdown", "html"], typer.Option(
        "--format", help="markdown or html.")] = "markdown",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file "
                                                "instead of stdout.")] = None,
    *, shared: SharedValues,
) -> None:
    """Write a report of saved runs: parameters, verdict, checks, metrics, charts.

    Example: cachelab report --format html -o report.html
    """
    from cachelab.report import html_report, markdown_report

    store = _store(shared.results)
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
@shared_options(*SHOP_OPTIONS, *SERVER_OPTIONS, DEBUG)
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8000,
    caching: Annotated[Literal["none", "lazy", "eager"],
                       typer.Option(help="How the API caches reads.")] = "lazy",
    ttl_s: Annotated[float, typer.Option(min=0.001, help="TTL of cached values.")] = 300.0,
    rate_limit: Annotated[str | None, typer.Option(
        help="Limit each user (X-User-Id) or IP: ALGORITHM:LIMIT/WINDOW, e.g. "
             "token_bucket:20/1s (fixed, sliding_log, sliding_counter, token_bucket).")
    ] = None,
    *, shared: SharedValues,
) -> None:
    """Run the shop HTTP API in the foreground, with its own Redis and database.

    Endpoints: /users/{id}, /products/{id}, /products/{id}/page,
    /posts/{id}/comments and /reports/sales; the OpenAPI page is at /docs.

    Over a --rate-limit, answers are 429 with Retry-After and RateLimit headers.
    Ctrl-C stops it and everything it started.

    Example: cachelab serve --caching eager --rate-limit token_bucket:20/1s
    """
    from cachelab.lab import Lab
    from cachelab.shop.server import serve as run_server

    with Lab(shared.settings()) as lab:
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
@shared_options(*SERVER_OPTIONS, JSON, DEBUG)
def lab_up(
    topology: Annotated[Topology, typer.Argument(help="What to start.")],
    *, shared: SharedValues,
) -> None:
    """Start a topology on 127.0.0.1 in the background and print its addresses.

    standalone: one server. replicas: a primary and 2 replicas.
    sentinel: those and 3 Sentinels (service mymaster).
    cluster: 3 masters and 3 replicas.

    Example: cachelab lab up cluster, then redis-cli -c -p PORT
    """
    from cachelab.children import background

    settings = shared.settings()
    state = background.up(topology, redis_server=settings.redis_server,
                          backend=settings.backend, image=settings.image)
    if shared.as_json:
        typer.echo(json.dumps(state))
        return
    env = state["redis_server"]
    where = f"{env.get('redis_version')}" + (f", {env['image']}" if "image" in env else "")
    _print_nodes(state, f"{topology} lab up ({where})")
    port = state["nodes"][0]["address"].rsplit(":", 1)[1]
    typer.echo(f"Explore it with: redis-cli {'-c ' if topology == 'cluster' else ''}-p {port}"
               "\nStop it with:    cachelab lab down")


@lab_app.command("status")
@shared_options(JSON)
def lab_status(*, shared: SharedValues) -> None:
    """Show the background lab: each server's address, role now, and whether it answers."""
    from cachelab.children import background

    state = background.status()
    if shared.as_json:
        typer.echo(json.dumps(state))
    elif state is None:
        typer.echo("No lab is up; start one with: cachelab lab up standalone")
    else:
        _print_nodes(state, f"{state['kind']} lab, up since {state['started_at']}")


@lab_app.command("down")
def lab_down() -> None:
    """Stop every server of the background lab and remove its folder."""
    from cachelab.children import background

    state = background.down()
    if state is None:
        typer.echo("No lab is up; nothing to stop.")
    else:
        typer.echo(f"Stopped the {state['kind']} lab: {len(state['nodes'])} server(s).")


# ---------------------------------------------------------------- doctor


@app.command()
@shared_options(REDIS_SERVER, *DEPLOYMENT_OPTIONS, RESULTS, JSON, DEBUG)
def doctor(
    clean: Annotated[bool, typer.Option("--clean", help="Stop the servers (and remove the "
                                        "containers) of killed runs and remove their "
                                        "folders; on a deployment, delete their keys.")
                     ] = False,
    *, shared: SharedValues,
) -> None:
    """Show what cachelab would run on, and what killed runs left behind.

    Python, redis-server, the results store, Docker (does an engine answer,
    which Redis images it has), folders and containers of killed runs; given
    an existing deployment, whether it answers and which runs' keys it holds.

    Exits 3 when no usable redis-server is found, or the deployment does not
    answer; --json prints one JSON object either way.

    Examples: cachelab doctor --clean;
    cachelab doctor --redis-url redis://host:6379 --clean
    """
    from cachelab.doctor import DoctorRequest, examine

    report = examine(DoctorRequest(redis_server=shared.redis_server, results=shared.results,
                                   target=shared.target(), clean=clean))
    if shared.as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        rows = report.rows()
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            typer.echo(f"{name:<{width}}  {value}")
    if report.problem is not None:
        raise report.problem


# ---------------------------------------------------------------- signals and entry point


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C and SIGTERM raise Interrupted (a KeyboardInterrupt), so the lab tears down;
    but not where Python mishandles it, so the signal comes again a moment later instead:
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
    raise Interrupted(signum)


def main() -> None:
    """Console-script entry point: SIGTERM tears down like Ctrl-C does, and exits 143."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    app()
