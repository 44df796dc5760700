"""Lost commit races per table over the last hour, bounded in tables."""

from __future__ import annotations

from lakehouse.core.commit_conflicts import ConflictLog


def test_conflicts_count_for_an_hour_then_fall_off() -> None:
    log = ConflictLog()
    t = ("ns", "t")
    log.record(t, 3, now=1000.0)
    log.record(t, 2, now=1030.0)  # same minute
    log.record(t, 4, now=2000.0)
    log.record(t, 0, now=2000.0)
    assert log.last_hour(t, now=2000.0) == 9
    assert log.last_hour(t, now=1000.0 + 3600 + 60) == 4  # the first minute fell off
    assert log.last_hour(("ns", "other"), now=2000.0) == 0


def test_the_log_forgets_the_least_recent_table_past_its_bound() -> None:
    log = ConflictLog(max_tables=2)
    for name in ("a", "b", "c"):
        log.record(("ns", name), 1, now=100.0)
    assert log.last_hour(("ns", "a"), now=100.0) == 0
    assert log.last_hour(("ns", "c"), now=100.0) == 1
