"""``python -m cachelab.children NAME``: the one entry point of every out-of-process program."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachelab.children.__main__ import PROGRAMS

ROOT = Path(__file__).resolve().parents[1]


def _children(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m cachelab.children args...`` (or ``python -c code args...``), of this tree."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    how = ["-c", code] if code else ["-m", "cachelab.children"]
    return subprocess.run([sys.executable, *how, *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.mark.parametrize("args", [["no-such-program"], []], ids=["unknown", "none"])
def test_an_unknown_or_missing_name_exits_2_and_names_every_program(args: list[str]) -> None:
    done = _children(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("Error: ")
    assert all(name in line for name in PROGRAMS)
    if args:
        assert "'no-such-program'" in line


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_every_program_runs_under_its_name(name: str) -> None:
    """Each entry of the table imports, and its usage names the way it is started."""
    done = _children(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m cachelab.children {name} ")


LOADED = """
import sys
from cachelab.children.__main__ import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)))
"""


def test_a_child_imports_only_the_program_it_runs() -> None:
    done = _children("outbox-listener", "--help", code=LOADED)
    loaded = set(done.stdout.split())
    assert "cachelab.children.outbox" in loaded
    others = {"cachelab.children.api", "cachelab.children.service", "cachelab.shop.app",
              "cachelab.lab", "fastapi", "uvicorn"}
    assert not loaded & others
