"""Exceptions raised by cachelab, each carrying a message that says how to fix it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, as DESIGN.md fixes them."""

    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    ENVIRONMENT = 3
    INTERRUPTED = 130


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
