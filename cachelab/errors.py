"""Exceptions raised by cachelab, each carrying a message that says how to fix it."""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, as DESIGN.md fixes them."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    ENVIRONMENT = 3
    #: sysexits' EX_SOFTWARE: an exception cachelab did not expect, a bug to report.
    BUG = 70
    #: 128 + the signal's number, as shells report a process a signal ended.
    INTERRUPTED = 130  # SIGINT, Ctrl-C
    TERMINATED = 143  # SIGTERM


class CachelabError(Exception):
    """Base class of every error cachelab reports to its user."""

    exit_code = ExitCode.ENVIRONMENT


class UsageError(CachelabError):
    """The user asked for something that does not exist or is not allowed."""

    exit_code = ExitCode.USAGE


class UnknownExercise(UsageError):
    """No exercise answers to the given name."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"Unknown exercise {name!r}.{hint} Run 'cachelab list' to see them all.")
        self.name = name
        self.suggestions = suggestions


class ExerciseContractError(CachelabError):
    """An exercise module does not follow the exercise contract."""


class EnvironmentProblem(CachelabError):
    """Something on this machine stops the lab from running."""


class RedisServerNotFound(EnvironmentProblem):
    """No usable redis-server binary was found."""


class ServerStartError(EnvironmentProblem):
    """A server process did not start or did not become ready."""


class WaitTimeout(EnvironmentProblem, TimeoutError):
    """Something the lab polled for did not happen in time (a busy machine is slower)."""


class StoreError(CachelabError):
    """The results store could not be read or written."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a KeyboardInterrupt, so that every lab tears down on its way out,
    that remembers which signal it was for the exit code."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.TERMINATED if self.signum == signal.SIGTERM else ExitCode.INTERRUPTED
