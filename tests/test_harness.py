"""The workload harness's own mechanics: polling with a timeout, and threads that hand
back their first error and leave nothing running."""

from __future__ import annotations

import itertools
import sys
import threading
import time

import pytest
import redis

from cachelab.errors import ExitCode, ServerStartError, WaitTimeout
from cachelab.workload.live import StreamWriters
from cachelab.workload.poll import poll_until
from cachelab.workload.threads import BackgroundWorker, ThreadGroup, run_concurrently


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


def test_thread_group_raises_the_first_error_not_a_later_one_and_leaves_no_thread() -> None:
    later_raised = threading.Event()

    def first() -> None:
        raise ValueError("the first error")

    def later() -> None:
        group.stopping.wait(5)  # set by the first error
        later_raised.set()
        raise RuntimeError("a later error")

    def bystander() -> None:
        group.stopping.wait(5)  # winds down once told to

    group = ThreadGroup({"first": first, "later": later, "bystander": bystander})
    with pytest.raises(ValueError, match="the first error"):
        with group:
            assert group.join(5)
    assert later_raised.is_set()  # the later error did happen, and was not raised instead
    assert not group.running
    assert not {"first", "later", "bystander"} & {t.name for t in threading.enumerate()}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_the_first_error_names_its_thread() -> None:
    def broken() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError) as raised:
        with ThreadGroup({"loader 2": broken}) as group:
            group.join(5)
    assert raised.value.__notes__ == ["(raised in the thread 'loader 2')"]


def test_the_owners_own_error_is_not_hidden_by_a_threads() -> None:
    def broken() -> None:
        raise ValueError("in the thread")

    with pytest.raises(KeyboardInterrupt):
        with ThreadGroup({"broken": broken}) as group:
            group.join(5)
            raise KeyboardInterrupt


def test_a_thread_that_does_not_stop_is_named() -> None:
    release = threading.Event()
    group = ThreadGroup({"stubborn": lambda: release.wait(5)}).start()
    try:
        with pytest.raises(RuntimeError, match="stubborn did not stop within 0.05s"):
            group.stop(0.05)
    finally:
        release.set()
    group.stop()
    assert not group.running


class Ticker(BackgroundWorker):
    """Counts until stopped; fails at ``fail_at`` if given."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__("the ticker")
        self.ticks = 0
        self.fail_at = fail_at

    def _work(self) -> None:
        while not self.stopping:
            self.ticks += 1
            if self.ticks == self.fail_at:
                raise OSError(f"tick {self.ticks} failed")
            self._stop.wait(0.001)


def test_a_background_worker_runs_until_stopped_and_raises_what_ended_it() -> None:
    with Ticker() as ticker:
        assert poll_until(lambda: ticker.ticks >= 3, timeout_s=5, what="three ticks")
        assert ticker.running
    assert not ticker.running and ticker.ticks >= 3

    failing = Ticker(fail_at=2).start()
    assert poll_until(lambda: failing.error is not None, timeout_s=5, what="the failure")
    with pytest.raises(OSError, match="tick 2 failed"):
        failing.stop()
    assert not failing.running and failing.error is None
    failing.stop()  # raised once: a second stop has nothing to hand back


def test_run_concurrently_runs_every_request_once_and_overlaps() -> None:
    seen: list[int] = []
    active, peak = [0], [0]
    lock = threading.Lock()

    def task(i: int) -> None:
        with lock:
            seen.append(i)
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1

    run_concurrently(task, workers=4, requests=20)
    assert sorted(seen) == list(range(20))
    assert peak[0] > 1


def test_run_concurrently_reraises_a_task_error_and_stops_taking_requests() -> None:
    done: list[int] = []

    def task(i: int) -> None:
        if i == 3:
            raise ValueError("request 3 failed")
        time.sleep(0.005)
        done.append(i)

    with pytest.raises(ValueError, match="request 3"):
        run_concurrently(task, workers=2, requests=1000)
    assert len(done) < 100
    assert not any(t.name.startswith("request worker") for t in threading.enumerate())


def test_stream_writers_post_every_item_once_and_time_each_commit() -> None:
    ids = itertools.count(1)
    posted: list[tuple[int, str]] = []
    lock = threading.Lock()

    def post(post_id: int, body: str) -> int:
        with lock:
            posted.append((post_id, body))
            return next(ids)

    stream = [(i % 3, f"comment {i}") for i in range(200)]
    before = time.time_ns()
    with StreamWriters(post, stream, writers=4) as writers:
        assert writers.join(timeout_s=10)
    assert sorted(posted) == sorted(stream)
    assert sorted(writers.committed_ns) == list(range(1, 201))
    assert all(before <= ns <= time.time_ns() for ns in writers.committed_ns.values())


def test_stream_writers_raise_a_writers_error_and_stop_the_others() -> None:
    calls = itertools.count(1)

    def post(body: str) -> int:
        n = next(calls)
        if n == 5:
            raise OSError("database is locked")
        time.sleep(0.001)
        return n

    writers = StreamWriters(post, [(f"c{i}",) for i in range(10_000)], writers=3).start()
    with pytest.raises(OSError, match="database is locked"):
        writers.join(timeout_s=10)
    assert writers.done and writers.posted < 1000
