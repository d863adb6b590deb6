"""The workload harness's own mechanics: polling with a timeout."""

from __future__ import annotations

import itertools
import time

import pytest
import redis

from cachelab.errors import ExitCode, ServerStartError, WaitTimeout
from cachelab.workload.poll import poll_until


def test_poll_until_returns_what_the_condition_returned_once_it_held() -> None:
    calls = itertools.count(1)
    assert poll_until(lambda: [n] if (n := next(calls)) == 3 else None,
                      timeout_s=5, what="the third call", interval_s=0) == [3]


def test_poll_until_names_what_it_waited_for_and_how_long() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        poll_until(lambda: False, timeout_s=0.05, what="the moon to turn blue")
    assert time.monotonic() - started >= 0.05
    assert str(raised.value) == "gave up waiting for the moon to turn blue after 0.05s"
    # Whoever catches a plain TimeoutError still does; the CLI reports it as the environment.
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.exit_code == ExitCode.ENVIRONMENT


def test_poll_until_raises_the_callers_error_or_returns_none_when_asked() -> None:
    with pytest.raises(ServerStartError, match="gave up waiting for the replicas after 0.01s"):
        poll_until(lambda: False, timeout_s=0.01, what="the replicas", error=ServerStartError)
    started = time.monotonic()
    assert poll_until(lambda: 0, timeout_s=0.05, what="a key to expire", error=None) is None
    assert time.monotonic() - started >= 0.05


def test_poll_until_asks_again_after_an_ignored_error_only() -> None:
    attempts = itertools.count(1)

    def starting() -> bool:
        if next(attempts) < 3:
            raise redis.ConnectionError("still loading")
        return True

    assert poll_until(starting, timeout_s=5, what="the node", interval_s=0,
                      ignoring=(redis.ConnectionError,)) is True

    def wrong() -> bool:
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):  # not "not yet": raised at once
        poll_until(wrong, timeout_s=5, what="the node", interval_s=0,
                   ignoring=(redis.ConnectionError,))
