"""The verdict on a table's health, from its files and its last hour."""

from __future__ import annotations

from lakehouse.domain.jobs import KIND_COMPACT_TABLE, KIND_EXPIRE_SNAPSHOTS
from lakehouse.domain.table_health import FileStats, Verdict, assess

MIB = 1024 * 1024


def files(**kw: int) -> FileStats:
    base = {"data_files": 5, "small_file_bytes": 384 * MIB, "snapshots": 5}
    return FileStats(**(base | kw))  # type: ignore[arg-type]


def codes(health: object) -> list[str]:
    return [f.code for f in health.findings]  # type: ignore[attr-defined]


def test_a_tidy_table_is_healthy() -> None:
    health = assess(files(), {}, conflicts=3, jobs=1, failed_jobs=0)
    assert health.verdict is Verdict.HEALTHY and health.findings == ()


def test_small_files_call_for_compaction_by_the_tables_own_threshold() -> None:
    many = assess(files(small_data_files=312), {}, conflicts=0, jobs=0, failed_jobs=0)
    assert many.verdict is Verdict.NEEDS_MAINTENANCE
    assert many.findings[0].message == "312 small files (under 384 MiB): compaction recommended"
    assert many.findings[0].recommended_job == KIND_COMPACT_TABLE
    few = assess(files(small_data_files=9), {}, conflicts=0, jobs=0, failed_jobs=0)
    assert few.verdict is Verdict.HEALTHY
    tuned = {"lakehouse.compaction.min-input-files": "4"}
    assert codes(assess(files(small_data_files=4), tuned, conflicts=0, jobs=0, failed_jobs=0)) == [
        "SMALL_FILES"
    ]


def test_snapshots_and_metadata_call_for_expiry() -> None:
    health = assess(
        files(snapshots=101, metadata_file_bytes=9 * MIB), {}, conflicts=0, jobs=0, failed_jobs=0
    )
    assert codes(health) == ["MANY_SNAPSHOTS", "LARGE_METADATA"]
    assert {f.recommended_job for f in health.findings} == {KIND_EXPIRE_SNAPSHOTS}
    # A table that keeps 50 snapshots on purpose is judged by that.
    kept = {"history.expire.min-snapshots-to-keep": "50"}
    assert assess(files(snapshots=101), kept, conflicts=0, jobs=0, failed_jobs=0).findings == ()


def test_failing_maintenance_and_contention_are_unhealthy_and_come_first() -> None:
    health = assess(files(small_data_files=50), {}, conflicts=250, jobs=4, failed_jobs=2)
    assert health.verdict is Verdict.UNHEALTHY
    assert codes(health) == ["MAINTENANCE_FAILING", "COMMIT_CONTENTION", "SMALL_FILES"]
    assert health.findings[0].message.startswith("2 of 4 maintenance jobs")
