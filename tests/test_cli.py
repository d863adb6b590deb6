"""The command line through CliRunner, and once as real subprocesses (Ctrl-C included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from cachelab.cli import app
from cachelab.errors import ExitCode, Interrupted
from cachelab.exercise import ExerciseInfo, Result
from cachelab.lab import Lab, LabSettings
from cachelab.registry import Exercise, exercises, load_exercise
from cachelab.store import ResultsStore, default_store_path

runner = CliRunner()


def invoke(args: list[str]):  # type: ignore[no-untyped-def]
    return runner.invoke(app, args, prog_name="cachelab")


FAST_1 = ["--requests", "200", "--expiry-ttl-s", "0.2"]


def test_list_names_every_exercise() -> None:
    result = invoke(["list"])
    assert result.exit_code == 0
    for exercise in exercises():
        assert exercise.info.id in result.stdout
        assert exercise.info.slug in result.stdout


def test_list_json() -> None:
    result = invoke(["list", "--json"])
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [e.info.id for e in exercises()]
    assert set(rows[0]) == {"id", "slug", "title", "concept", "fixtures"}


def test_show_explains_an_exercise() -> None:
    result = invoke(["show", "lazy-caching"])
    assert result.exit_code == 0
    info = exercises()[0].info
    for text in (info.concept, "--requests", "--ttl-s", *info.checks):
        assert text in result.stdout


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("cachelab ")


@pytest.mark.parametrize("name", ["exercise-1", "1", "exercise-01", "exercise-001",
                                  "lazy-caching"])
def test_run_resolves_names_and_prints_pure_json(name: str) -> None:
    result = invoke(["run", name, *FAST_1, "--json", "--no-save"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # the whole stdout is one JSON object
    assert record["exercise"] == "exercise-1"
    assert record["verdict"] == "pass"
    assert record["params"]["requests"] == 200


def test_run_prints_tables_and_saves_the_run() -> None:
    result = invoke(["run", "2", "--requests", "50", "--expiry-ttl-s", "0.2"])
    assert result.exit_code == 0, result.output
    assert "Report latency" in result.stdout and "PASS" in result.stdout
    saved = ResultsStore(default_store_path()).runs()
    assert [r["exercise"] for r in saved] == ["exercise-2"]
    assert saved[0]["params"]["requests"] == 50


def test_run_markdown() -> None:
    result = invoke(["run", "3", "--operations", "300", "--markdown", "--no-save"])
    assert result.exit_code == 0
    assert result.stdout.startswith("## exercise-3: ")
    assert "| stale_reads_ttl_only" in result.stdout


def test_run_all_json_is_one_array_and_every_run_is_saved() -> None:
    result = invoke(["run", "all", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["exercise"] for r in records] == [e.info.id for e in exercises()]
    assert all(r["verdict"] == "pass" for r in records)
    assert len(ResultsStore(default_store_path()).runs()) == len(records)


def test_unknown_exercise_suggests_close_names() -> None:
    result = invoke(["run", "lazy-cachin"])
    assert result.exit_code == 2
    first, *rest = result.stderr.splitlines()
    assert not rest
    assert first.startswith("Error: Unknown exercise 'lazy-cachin'. Did you mean lazy-caching")
    assert first.endswith("? Run 'cachelab list' to see them all.")
    assert result.stdout == ""


def test_show_unknown_exercise() -> None:
    result = invoke(["show", "exercise-99"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Unknown exercise 'exercise-99'.")


@pytest.mark.parametrize(("args", "option"), [
    (["--requests", "-5"], "--requests"),
    (["--distribution", "pareto"], "--distribution"),
    (["--db-latency-ms", "-1"], "--db-latency-ms"),
])
def test_bad_option_is_one_line_naming_the_option(args: list[str], option: str) -> None:
    result = invoke(["run", "1", *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"Error: Invalid value for '{option}'")
    assert "See 'cachelab run 1 --help'." in result.stderr


def test_missing_redis_server_exits_3() -> None:
    result = invoke(["run", "1", "--redis-server", "/nonexistent/redis-server"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: /nonexistent/redis-server (from --redis-server) "
                                    "is not an executable file; install one")
    assert result.stderr.count("\n") == 1


def test_unwritable_store_still_prints_the_result(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke(["run", "1", *FAST_1, "--json", "--results",
                                 str(blocker / "results.db")])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["verdict"] == "pass"
    assert result.stderr.startswith("Warning: run ")
    assert "was not saved" in result.stderr and result.stderr.count("\n") == 1


def test_corrupt_store_keeps_its_bytes(tmp_path: Path) -> None:
    store = tmp_path / "results.db"
    store.write_bytes(b"this is not a database" * 100)
    result = invoke(["run", "1", *FAST_1, "--results", str(store)])
    assert result.exit_code == 0
    assert "was not saved" in result.stderr
    assert store.read_bytes() == b"this is not a database" * 100


def test_doctor_names_the_redis_server() -> None:
    result = invoke(["doctor"])
    assert result.exit_code == 0
    assert "redis-server" in result.stdout and "results store" in result.stdout


def test_doctor_without_redis_server_exits_3() -> None:
    result = invoke(["doctor", "--redis-server", "/nonexistent"])
    assert result.exit_code == 3
    assert "none usable" in result.stdout
    assert result.stderr.startswith("Error: /nonexistent")


# ---------------------------------------------------------------- real subprocesses


def _cachelab(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cachelab", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


def test_subprocess_run_prints_json() -> None:
    process = _cachelab("run", "exercise-1", *FAST_1, "--json", "--no-save")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert json.loads(out)["verdict"] == "pass"


def _redis_descendants(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "redis-server" in c.name()]


@pytest.mark.parametrize(("sig", "code", "line"), [
    (signal.SIGINT, 130, "Interrupted: every server this run started has been stopped.\n"),
    (signal.SIGTERM, 143, "Terminated: every server this run started has been stopped.\n"),
])
def test_interrupt_stops_every_server(sig: signal.Signals, code: int, line: str,
                                      tmp_path: Path) -> None:
    """Ctrl-C (130) or SIGTERM (143) mid-run: no redis-server left, no lab folder left."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = _cachelab("run", "3", "--operations", "10000000", "--no-save", env=env)
    deadline = time.monotonic() + 60
    servers: list[psutil.Process] = []
    while not servers and time.monotonic() < deadline and process.poll() is None:
        servers = _redis_descendants(process.pid)
        time.sleep(0.05)
    assert servers, "the run never started a redis-server"
    time.sleep(0.5)  # let it get into the workload
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    assert process.returncode == code
    assert err == line
    gone, alive = psutil.wait_procs(servers, timeout=5)
    assert not alive
    assert not list(tmp_path.glob("cachelab-run-*"))


# ---------------------------------------------------------------- run all goes on


def _info(number: int, checks: tuple[str, ...] = ("c",)) -> ExerciseInfo:
    return ExerciseInfo(id=f"exercise-{number}", slug=f"fake-{number}", title="Fake",
                        concept="c", scenario="s", walkthrough=("w",), fixtures=("redis",),
                        checks=checks, metrics=("keys",), headline="keys")


def _exercise(number: int, run: object, checks: tuple[str, ...] = ("c",)) -> Exercise:
    import types

    module = types.ModuleType(f"exercises.e{number}_fake", "A stand-in to test the CLI.")
    module.__file__ = f"e{number}_fake.py"
    module.INFO = _info(number, checks)  # type: ignore[attr-defined]
    module.run = run  # type: ignore[attr-defined]
    return load_exercise(module)


def _server_will_not_start(lab: Lab) -> Result:
    lab.redis(maxmemory_policy="no-such-policy")
    return Result(_info(97))


ONE_KEY = "the new server holds one key"


def _check_fails(lab: Lab) -> Result:
    result = Result(_info(98, (ONE_KEY,)))
    keys = lab.redis().dbsize()
    result.metric("keys", keys)
    result.check(ONE_KEY, keys == 1, f"it holds {keys}")
    return result


def test_run_all_goes_on_after_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    lineup = (_exercise(97, _server_will_not_start), _exercise(98, _check_fails, (ONE_KEY,)),
              exercises()[0])
    monkeypatch.setattr("cachelab.cli.exercises", lambda: lineup)
    result = invoke(["run", "all", "--json"])
    assert result.exit_code == 3  # the worst of: environment (97), failed check (98), pass
    records = json.loads(result.stdout)
    assert [(r["exercise"], r["verdict"]) for r in records] == [
        ("exercise-98", "fail"), ("exercise-1", "pass")]
    assert records[0]["checks"][0]["detail"] == "it holds 0"
    assert result.stderr.startswith("Error: exercise-97: redis (")
    assert "no-such-policy" in result.stderr
    assert [r["exercise"] for r in ResultsStore(default_store_path()).runs()] == [
        "exercise-98", "exercise-1"]


BUG_LINE = ("Error: RuntimeError: a bug. This is a bug in cachelab: please report it with "
            "the command you ran and the traceback that --debug shows.\n")


def _broken(lab: Lab) -> Result:
    lab.redis().set("before", "the bug")
    raise RuntimeError("a bug")


@pytest.mark.parametrize("args", [["run", "96"], ["run", "all"]])
def test_a_bug_exits_70_with_one_line_and_the_traceback_only_with_debug(
        args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _exercise(96, _broken)  # its server started: the leak check sees it stopped
    monkeypatch.setattr("cachelab.cli.resolve", lambda name: broken)
    monkeypatch.setattr("cachelab.cli.exercises", lambda: (broken,))
    result = invoke(args)
    assert result.exit_code == ExitCode.BUG == 70
    assert result.stderr == BUG_LINE

    for debug in ([*args, "--debug"], ["--debug", *args]):
        result = invoke(debug)
        assert result.exit_code == 70
        *traceback, line = result.stderr.splitlines(keepends=True)
        assert traceback[0] == "Traceback (most recent call last):\n"
        assert '    raise RuntimeError("a bug")\n' in traceback
        assert traceback[-1] == "RuntimeError: a bug\n"
        assert line == BUG_LINE


def test_an_error_of_cachelab_shows_its_traceback_with_debug() -> None:
    result = invoke(["run", "1", "--redis-server", "/nonexistent/redis-server", "--debug"])
    assert result.exit_code == 3
    *traceback, line = result.stderr.splitlines(keepends=True)
    assert traceback[0] == "Traceback (most recent call last):\n"
    assert traceback[-1].startswith("cachelab.errors.RedisServerNotFound: /nonexistent/")
    assert line.startswith("Error: /nonexistent/redis-server (from --redis-server) is not")


def test_no_command_prints_the_help_and_no_error_line() -> None:
    result = invoke([])
    assert result.exit_code == 2
    assert "Usage: cachelab" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("exercise", exercises(), ids=lambda e: e.info.id)
def test_every_exercise_rejects_a_bad_option_value(exercise: Exercise) -> None:
    numeric = next(o for o in exercise.options if o.type in (int, float))
    value = str(numeric.min - 1) if numeric.min is not None else "not-a-number"
    result = invoke(["run", exercise.info.id, numeric.flag, value])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: Invalid value for '{numeric.flag}'")
    assert result.stdout == ""


def test_an_interrupt_inside_a_finalizer_comes_again_once_it_returned() -> None:
    """Python prints and swallows a KeyboardInterrupt raised in a ``__del__`` (a dropped
    redis-py pool's), and the run would go on: the handler sends the signal again."""
    from cachelab.cli import _interrupt

    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        class Dropped:
            def __del__(self) -> None:
                _interrupt(signal.SIGUSR1, sys._getframe())  # must not raise in here

        Dropped()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGUSR1]
        for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            with pytest.raises(Interrupted) as raised:  # anywhere else it interrupts at once
                _interrupt(sig, sys._getframe())
            assert isinstance(raised.value, KeyboardInterrupt)  # every lab tears down
            assert raised.value.exit_code == code
    finally:
        signal.signal(signal.SIGUSR1, previous)


# ---------------------------------------------------------------- shared options


def _command(*path: str) -> Any:
    """The Click command at ``path`` (``run 1`` is built as ``cachelab run 1`` builds it)."""
    command = get_command(app)
    for name in path:
        command = command.get_command(None, name)  # type: ignore[attr-defined]
    return command


def _options(*path: str) -> dict[str, tuple[Any, ...]]:
    """Each option of a command: its flags, help, metavar, panel and default."""
    command = _command(*path)
    ctx = typer.Context(command)
    return {p.name: (tuple(p.opts), p.help, p.metavar, getattr(p, "rich_help_panel", None),
                     p.get_default(ctx)) for p in command.params}


LAB_NAMES = ["seed", "db_latency_ms", "scale", "redis_server", "backend", "image",
             "redis_url", "sentinel", "service", "cluster_url"]


@pytest.mark.parametrize(("path", "names"), [
    (("run", "all"), [*LAB_NAMES, "as_json", "markdown", "results", "no_save", "debug"]),
    (("compare",), [*LAB_NAMES, "as_json", "results", "debug"]),
    (("serve",), ["seed", "db_latency_ms", "scale", "redis_server", "backend", "image",
                  "debug"]),
    (("lab", "up"), ["redis_server", "backend", "image", "as_json", "debug"]),
    (("doctor",), ["redis_server", "redis_url", "sentinel", "service", "cluster_url",
                   "results", "as_json", "debug"]),
], ids=" ".join)
def test_commands_that_start_servers_share_one_definition_of_each_option(
        path: tuple[str, ...], names: list[str]) -> None:
    reference = _options("run", "1")
    options = _options(*path)
    for name in names:
        assert options.get(name) == reference[name], name


def test_the_lab_options_default_to_lab_settings() -> None:
    defaults = {name: value[-1] for name, value in _options("run", "1").items()}
    settings = LabSettings()
    assert {name: defaults[name] for name in
            ("seed", "db_latency_ms", "scale", "redis_server", "backend", "image")} == {
        "seed": settings.seed, "db_latency_ms": settings.db_latency_ms,
        "scale": settings.scale, "redis_server": None, "backend": settings.backend,
        "image": settings.image}
    assert "[default: redis:7]" in invoke(["run", "1", "--help"]).stdout


def test_compare_vary_runs_with_the_lab_options() -> None:
    result = invoke(["compare", "1", "--vary", "requests=50,60", "--trials", "2",
                     "--seed", "7", "--scale", "0.5", "--db-latency-ms", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["columns"] == ["metric", "requests=50", "requests=60"]
    saved = ResultsStore(default_store_path()).runs()
    assert sorted((r["params"]["requests"], r["params"]["seed"]) for r in saved) == [
        (50, 7), (50, 8), (60, 7), (60, 8)]
    assert {(r["params"]["scale"], r["params"]["db_latency_ms"]) for r in saved} == {(0.5, 0)}


def test_compare_vary_takes_the_backend(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    result = invoke(["compare", "1", "--vary", "requests=50,60", "--backend", "docker",
                     "--image", "valkey/valkey:8"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: ") and "--backend local" in result.stderr
    refused = invoke(["compare", "1", "--vary", "requests=50", "--backend", "docker",
                      "--redis-url", "redis://127.0.0.1:1"])
    assert refused.exit_code == 2
    assert refused.stderr == ("Error: --redis-url runs on servers that already exist; "
                              "leave out --backend\n")
