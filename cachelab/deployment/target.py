"""What a run on an existing deployment aims at: ``--redis-url``, ``--sentinel`` or
``--cluster-url`` parsed and checked, credentials from the environment, and every URL
shown masked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from cachelab.errors import EnvironmentProblem, UsageError

Kind = Literal["redis-url", "sentinel", "cluster-url"]
PASSWORD_ENV = "CACHELAB_REDIS_PASSWORD"
USERNAME_ENV = "CACHELAB_REDIS_USERNAME"
#: A child process finds its target here: the URL, with credentials, and the prefix.
CHILD_ENV = "CACHELAB_TARGET"
_SCHEMES = ("redis", "rediss")


class TargetRefused(UsageError):
    """An exercise asked an existing deployment for something it must not do there."""


class DeploymentUnreachable(EnvironmentProblem):
    """The deployment does not answer, or refuses the credentials: no run can go on."""


def mask(url: str) -> str:
    """``url`` with its password replaced by ``***``: the only form ever shown or stored."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = quote(parts.username or "", safe="")
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Target:
    """Where an existing deployment is, as the user named it (secrets included).

    ``flag`` is the option that named it, for messages; ``display`` is safe to show.
    """

    kind: Kind
    url: str
    service: str = ""

    @property
    def flag(self) -> str:
        return f"--{self.kind}"

    @property
    def display(self) -> str:
        shown = mask(self.url)
        return f"{shown} (service {self.service})" if self.kind == "sentinel" else shown


def parse_target(redis_url: str | None = None, sentinel: str | None = None,
                 service: str | None = None, cluster_url: str | None = None
                 ) -> Target | None:
    """The target the common options name, or None for servers the lab starts itself."""
    named = [(k, v) for k, v in (("--redis-url", redis_url), ("--sentinel", sentinel),
                                 ("--cluster-url", cluster_url)) if v]
    if len(named) > 1:
        raise UsageError(f"{' and '.join(k for k, _ in named)} name two deployments; "
                         "give only one of them")
    if service and not sentinel:
        raise UsageError("--service names a Sentinel service; give --sentinel HOST:PORT too")
    if not named:
        return None
    if sentinel:
        if not service:
            raise UsageError("--sentinel needs the name of the master it watches: "
                             "add --service NAME (for example --service mymaster)")
        url = sentinel if "://" in sentinel else f"redis://{sentinel}"
        _check_url(url, "--sentinel", "HOST:PORT")
        return Target("sentinel", url, service)
    flag, url = named[0]
    _check_url(url, flag, "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://...")
    return Target("redis-url" if flag == "--redis-url" else "cluster-url", url)


def _check_url(url: str, flag: str, form: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise UsageError(f"{flag} {mask(url)}: the port is not a number; use {form}") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise UsageError(f"{flag} {mask(url)} is not a Redis address; use {form}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise UsageError(f"{flag} {mask(url)}: the database must be a number; use {form}")


def with_credentials(url: str) -> str:
    """``url`` with the environment's username and password when it carries none."""
    parts = urlsplit(url)
    password = os.environ.get(PASSWORD_ENV)
    if parts.password is not None or not password:
        return url
    user = quote(parts.username or os.environ.get(USERNAME_ENV, ""), safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc))
