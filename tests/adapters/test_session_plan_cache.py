"""The plan cache of read sessions: one planning per key, shared by concurrent readers;
none kept when it fails, and its error reaches every reader that waited for it."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from lakehouse.adapters.iceberg.session_plans import PlanCache


def key(snapshot_id: int) -> Any:
    return ("uuid", "s3://bucket/t", snapshot_id, "AlwaysTrue()", ())


class Planner:
    """Counts its plannings; fails the first ``failures`` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.calls = 0
        self.failures = failures

    def __call__(self) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("manifest list unreadable")
        return (f"plan {self.calls}",)


def test_a_failed_planning_is_not_kept_and_the_next_read_plans_again() -> None:
    cache, planner = PlanCache(), Planner(failures=1)

    with pytest.raises(OSError, match="unreadable"):
        cache.tasks(key(1), planner)
    planned: Any = cache.tasks(key(1), planner)
    assert planned == ("plan 2",)
    assert cache.tasks(key(1), planner) is planned  # kept once it succeeded
    assert planner.calls == 2


def test_the_cache_keeps_only_its_newest_plans() -> None:
    cache, planner = PlanCache(size=2), Planner()
    for snapshot_id in (1, 2, 1, 3):  # 1 is used again, so 2 is the oldest
        cache.tasks(key(snapshot_id), planner)
    assert planner.calls == 3

    cache.tasks(key(1), planner)
    cache.tasks(key(2), planner)  # evicted: planned again
    assert planner.calls == 4


class GatedPlanner(Planner):
    """A ``Planner`` that, once entered, holds its planning until the test opens the gate."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__(failures)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self) -> Any:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().__call__()


def waiting_on_a_future(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in ``Future.result`` (waiting for another's planning)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "result" and code.co_filename.endswith("futures/_base.py"):
            return True
        frame = frame.f_back
    return False


def plan_concurrently(cache: PlanCache, planner: GatedPlanner, waiters: int) -> list[Any]:
    """One caller plans ``key(1)`` while ``waiters`` others ask for it; each caller's result
    or exception, the planner's first."""
    outcomes: list[Any] = [None] * (1 + waiters)

    def ask(index: int) -> None:
        try:
            outcomes[index] = cache.tasks(key(1), planner)
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(1 + waiters)]
    threads[0].start()
    assert planner.entered.wait(30)
    for thread in threads[1:]:
        thread.start()
    # Every waiter must be blocked on the planner's future before the planning ends (one that
    # came after would not be waiting for it): polled on the threads' stacks, not guessed.
    for _ in range(3000):
        if all(waiting_on_a_future(t) for t in threads[1:]):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the waiters never waited for the planning")
    planner.gate.set()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_concurrent_readers_of_one_key_share_one_planning() -> None:
    cache, planner = PlanCache(), GatedPlanner()
    outcomes = plan_concurrently(cache, planner, waiters=4)
    assert planner.calls == 1
    assert outcomes[0] == ("plan 1",)
    assert all(outcome is outcomes[0] for outcome in outcomes)


def test_a_failed_planning_reaches_every_waiter_and_the_next_call_plans_again() -> None:
    cache, planner = PlanCache(), GatedPlanner(failures=1)
    outcomes = plan_concurrently(cache, planner, waiters=4)
    assert planner.calls == 1
    assert isinstance(outcomes[0], OSError)
    assert all(outcome is outcomes[0] for outcome in outcomes)  # the planner's own error
    planned: Any = cache.tasks(key(1), planner)
    assert planned == ("plan 2",)
    assert planner.calls == 2
