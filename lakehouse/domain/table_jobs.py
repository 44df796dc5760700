"""What the table jobs did: compaction, snapshot expiry, orphan removal, file imports."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExpireResult:
    """What ``expire_snapshots`` removed (or, on a dry run, would remove).

    Attributes:
        snapshots_expired: Snapshot ids removed from the metadata.
        data_files_deleted: Data files no remaining snapshot has live.
        manifests_deleted: Manifest files no remaining snapshot references.
        manifest_lists_deleted: Manifest lists of the expired snapshots.
        metadata_files_deleted: Old metadata JSON files the commit dropped from the log.
        bytes_freed: Bytes of the data files and manifests deleted (manifest lists and
            metadata files are not sized, so this is a lower bound).
        delete_failures: Files that could not be deleted; they are orphans now, and
            ``remove_orphan_files`` takes them later.
        dry_run: True when nothing was committed nor deleted.
        files: The paths deleted (or to delete), at most ``MAX_LISTED_FILES``.
        delete_files_deleted: Delete files (position or equality deletes) no remaining
            snapshot has live.
    """

    snapshots_expired: tuple[int, ...]
    data_files_deleted: int
    manifests_deleted: int
    manifest_lists_deleted: int
    metadata_files_deleted: int
    bytes_freed: int
    delete_failures: int
    dry_run: bool
    files: tuple[str, ...] = field(default=())
    delete_files_deleted: int = 0


@dataclass(frozen=True)
class OrphanResult:
    """What ``remove_orphan_files`` found and removed.

    Attributes:
        files_scanned: Files listed under the table location.
        orphans_found: Unreferenced files older than the safety age.
        orphans_deleted: Of those, how many were deleted (0 on a dry run).
        delete_failures: Orphans that could not be deleted.
        dry_run: True when nothing was deleted.
        files: The orphan paths, at most ``MAX_LISTED_FILES``.
        orphan_bytes: The orphans' total size, when the lister gave sizes (else 0).
    """

    files_scanned: int
    orphans_found: int
    orphans_deleted: int
    delete_failures: int
    dry_run: bool
    files: tuple[str, ...] = field(default=())
    orphan_bytes: int = 0


@dataclass(frozen=True)
class CompactResult:
    """What ``compact_table`` rewrote.

    Attributes:
        files_rewritten: Small data files replaced.
        files_added: New data files written in their place.
        bytes_rewritten: Total size of the replaced files.
        bytes_added: Total size of the new files.
        rows_rewritten: Rows moved (the same number before and after).
        groups_rewritten: Partitions (spec id and partition value) that were compacted.
        snapshot_id: The replace snapshot committed, or None when nothing needed doing.
    """

    files_rewritten: int
    files_added: int
    bytes_rewritten: int
    bytes_added: int
    rows_rewritten: int
    groups_rewritten: int
    snapshot_id: int | None


@dataclass(frozen=True)
class ImportOutcome:
    """What an import committed (mirrors ``lakehouse.v1.ImportFilesJobResult``).

    Attributes:
        files_imported: Files imported, registered or rewritten.
        files_registered: Parquet files registered in place, without copying.
        files_rewritten: Files read and written as new data files (files without rows count
            here too, though they add no data file).
        rows_imported: Rows added to the table.
        snapshot_id: The snapshot committed; None when no file was found or no file held a row.
    """

    files_imported: int
    files_registered: int
    files_rewritten: int
    rows_imported: int
    snapshot_id: int | None
