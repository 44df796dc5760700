"""The plan cache of read sessions: one planning per key, none kept when it fails."""

from __future__ import annotations

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
