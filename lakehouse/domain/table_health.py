"""A table's health: what its files, snapshots and recent history say, and the verdict.

The thresholds are where maintenance starts to pay: a scan opens every small file, every
commit rewrites the metadata file (which grows with each snapshot), and lost commit races
are work thrown away. A table's own maintenance policy properties move them, so a table
tuned by its owner is judged by its owner's numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from lakehouse.domain.compaction import positive_property
from lakehouse.domain.jobs import KIND_COMPACT_TABLE, KIND_EXPIRE_SNAPSHOTS

#: Small files worth a compaction when the table sets no ``lakehouse.compaction.min-input-files``.
SMALL_FILES_WORTH_COMPACTING = 10
#: Snapshots worth an expiry when the table sets no ``history.expire.min-snapshots-to-keep``.
SNAPSHOTS_WORTH_EXPIRING = 100
#: A metadata file this large makes every commit slow (it is rewritten each time).
METADATA_BYTES_WORTH_EXPIRING = 8 * 1024 * 1024
#: Lost commit races per hour past which writers are said to contend for the table.
CONFLICTS_PER_HOUR_UNHEALTHY = 100

_MIN_INPUT_FILES = "lakehouse.compaction.min-input-files"
_MIN_SNAPSHOTS = "history.expire.min-snapshots-to-keep"


class Verdict(enum.Enum):
    """The sum of a table's health (``lakehouse.v1.TableVerdict``)."""

    HEALTHY = 1
    NEEDS_MAINTENANCE = 2
    UNHEALTHY = 3


@dataclass(frozen=True)
class FileStats:
    """What a table's current metadata says of its files.

    Attributes:
        data_files: Data files of the current snapshot.
        small_data_files: Those smaller than ``small_file_bytes``.
        small_file_bytes: What counts as small.
        data_bytes: Their total size.
        records: Rows of the current snapshot.
        delete_files: Delete files applying to the current snapshot's data.
        snapshots: Snapshots in the metadata.
        metadata_file_bytes: The size of the current metadata file.
        last_commit_ms: When the current snapshot was committed; None without one.
    """

    data_files: int = 0
    small_data_files: int = 0
    small_file_bytes: int = 0
    data_bytes: int = 0
    records: int = 0
    delete_files: int = 0
    snapshots: int = 0
    metadata_file_bytes: int = 0
    last_commit_ms: int | None = None


@dataclass(frozen=True)
class Finding:
    """One reason behind a verdict: a stable code, a message, the job that would fix it."""

    code: str
    message: str
    recommended_job: int = 0
    """The job kind (``lakehouse.domain.jobs.KIND_*``) that would fix it; 0 for none."""


@dataclass(frozen=True)
class TableHealth:
    """A table's health, as GetTableHealth reports it."""

    files: FileStats
    commit_conflicts_last_hour: int = 0
    maintenance_jobs_last_hour: int = 0
    failed_maintenance_jobs_last_hour: int = 0
    verdict: Verdict = Verdict.HEALTHY
    findings: tuple[Finding, ...] = field(default=())


def assess(
    files: FileStats,
    properties: Mapping[str, str],
    *,
    conflicts: int,
    jobs: int,
    failed_jobs: int,
) -> TableHealth:
    """The verdict on a table from its files and its last hour (most urgent finding first)."""
    failing: list[Finding] = []
    due: list[Finding] = []
    if failed_jobs:
        failing.append(
            Finding(
                "MAINTENANCE_FAILING",
                f"{failed_jobs} of {jobs} maintenance jobs of the last hour failed: see ListJobs",
            )
        )
    if conflicts >= CONFLICTS_PER_HOUR_UNHEALTHY:
        failing.append(
            Finding(
                "COMMIT_CONTENTION",
                f"{conflicts} commit attempts lost to concurrent commits in the last hour: "
                "writers contend for this table (fewer, larger writes; one writer per table)",
            )
        )
    worth_compacting = max(
        positive_property(properties, _MIN_INPUT_FILES) or SMALL_FILES_WORTH_COMPACTING, 2
    )
    if files.small_data_files >= worth_compacting:
        due.append(
            Finding(
                "SMALL_FILES",
                f"{files.small_data_files} small files (under {_size(files.small_file_bytes)}): "
                "compaction recommended",
                KIND_COMPACT_TABLE,
            )
        )
    if files.delete_files:
        due.append(
            Finding(
                "DELETE_FILES",
                f"{files.delete_files} delete files applied on every read: rewriting the data "
                "files they apply to is recommended",
            )
        )
    keep = positive_property(properties, _MIN_SNAPSHOTS)
    worth_expiring = 2 * keep + 10 if keep else SNAPSHOTS_WORTH_EXPIRING
    if files.snapshots > worth_expiring:
        due.append(
            Finding(
                "MANY_SNAPSHOTS",
                f"{files.snapshots} snapshots: snapshot expiry recommended",
                KIND_EXPIRE_SNAPSHOTS,
            )
        )
    if files.metadata_file_bytes > METADATA_BYTES_WORTH_EXPIRING:
        due.append(
            Finding(
                "LARGE_METADATA",
                f"metadata file of {_size(files.metadata_file_bytes)}, rewritten by every "
                "commit: snapshot expiry recommended",
                KIND_EXPIRE_SNAPSHOTS,
            )
        )
    verdict = (
        Verdict.UNHEALTHY if failing else Verdict.NEEDS_MAINTENANCE if due else Verdict.HEALTHY
    )
    return TableHealth(files, conflicts, jobs, failed_jobs, verdict, (*failing, *due))


def _size(nbytes: int) -> str:
    """``nbytes`` for people: bytes, KiB, MiB or GiB."""
    if nbytes < 1024:
        return f"{nbytes} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes //= 1024
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
