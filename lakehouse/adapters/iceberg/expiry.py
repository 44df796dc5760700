"""Snapshot expiry: the metadata commit, then deleting what only expired snapshots referenced."""

from __future__ import annotations

from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from lakehouse.adapters.iceberg.ingest import (
    CARRIED_WRITERS_KEY,
    WRITERS_KEY,
    keep_expiring_request_ids,
)
from lakehouse.adapters.iceberg.references import (
    ManifestFacts,
    capped,
    collect_references,
    delete_all,
    inside_table,
    metadata_files,
    normalize_uri,
)
from lakehouse.domain.ingest import RequestIdLedger
from lakehouse.domain.table_jobs import ExpireResult


def _retained_ancestors(metadata: TableMetadata, retain_last: int) -> set[int]:
    """The current snapshot and its newest ancestors, ``retain_last`` snapshots in all."""
    keep: set[int] = set()
    snapshot = metadata.current_snapshot()
    while snapshot is not None and len(keep) < retain_last:
        keep.add(snapshot.snapshot_id)
        parent = snapshot.parent_snapshot_id
        snapshot = metadata.snapshot_by_id(parent) if parent is not None else None
    return keep


def _kept_by_refs(metadata: TableMetadata) -> set[int]:
    """Every ref's snapshot, and each branch's ``min_snapshots_to_keep`` newest snapshots."""
    keep: set[int] = set()
    for ref in metadata.refs.values():
        snapshot = metadata.snapshot_by_id(ref.snapshot_id)
        wanted = ref.min_snapshots_to_keep or 1
        kept = 0
        while snapshot is not None and kept < wanted:
            keep.add(snapshot.snapshot_id)
            kept += 1
            parent = snapshot.parent_snapshot_id
            snapshot = metadata.snapshot_by_id(parent) if parent is not None else None
    return keep


def _ingest_state_chain(metadata: TableMetadata) -> set[int]:
    """The current snapshot and its ancestors down to the newest one holding writer offsets.

    Exactly-once ingest reads its writers' offsets from the newest snapshot of the current
    lineage that records them (``lakehouse.adapters.iceberg.ingest``), walking parents from
    the current one. Expiring that snapshot, or one on the way to it (snapshots of other
    writers, compactions), would lose the offsets and let a resend be written twice.
    """
    chain: set[int] = set()
    snapshot = metadata.current_snapshot()
    while snapshot is not None:
        chain.add(snapshot.snapshot_id)
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if WRITERS_KEY in summary or CARRIED_WRITERS_KEY in summary:
            return chain
        parent = snapshot.parent_snapshot_id
        snapshot = metadata.snapshot_by_id(parent) if parent is not None else None
    return set()  # no offsets recorded: nothing to keep for them


def expire_snapshots(
    table: Table,
    *,
    older_than_ms: int | None,
    retain_last: int,
    dry_run: bool = False,
    request_ids: RequestIdLedger | None = None,
    request_id_window_ms: int = 0,
) -> ExpireResult:
    """Expires old snapshots, then deletes the files only they referenced.

    A snapshot is expired when it is older than ``older_than_ms`` (any age when None) and
    is neither one of the ``retain_last`` newest snapshots of the current lineage (the
    current one included) nor the head of a branch or a tag, nor on the way from the current
    snapshot to the newest one holding ingest writer offsets. After the metadata commit, the
    files referenced by the expired snapshots and by none of the remaining ones (data and
    delete files, manifests, manifest lists) are deleted, as are the metadata JSON files the
    commit dropped from the metadata log (``write.metadata.previous-versions-max``).

    The remaining set is computed from the metadata the commit returned, so a snapshot
    committed concurrently keeps its files.

    Args:
        table: The table, freshly loaded.
        older_than_ms: Cut-off in epoch milliseconds; None expires by count only.
        retain_last: How many of the newest snapshots of the current lineage always stay
            (at least 1: the current snapshot is never expired).
        dry_run: Only report what would be expired and deleted.
        request_ids: The request-id ledger: before the commit, the request ids of the
            expiring snapshots still inside ``request_id_window_ms`` are copied there, so
            that a resend is still recognized after its snapshot is gone. None: not kept.
        request_id_window_ms: How long request ids are remembered.

    Returns:
        What was expired and deleted.

    Raises:
        ValueError: If ``retain_last`` is below 1.
        Unavailable: The request ids could not be copied to the ledger; nothing expired.
        pyiceberg.exceptions.CommitFailedException: If the metadata commit conflicted.
        OSError: If a manifest could not be read (nothing is deleted then).
    """
    if retain_last < 1:
        raise ValueError("retain_last must be at least 1")
    metadata = table.metadata
    protected = _kept_by_refs(metadata)
    keep = _retained_ancestors(metadata, retain_last) | protected | _ingest_state_chain(metadata)
    to_expire = [
        s.snapshot_id
        for s in metadata.snapshots
        if s.snapshot_id not in keep and (older_than_ms is None or s.timestamp_ms < older_than_ms)
    ]
    if not to_expire:
        return ExpireResult((), 0, 0, 0, 0, 0, 0, dry_run)

    io = table.io
    cache: dict[str, ManifestFacts] = {}
    before = collect_references(metadata.snapshots, io, cache)
    before_meta = metadata_files(metadata, table.metadata_location)

    if dry_run:
        expired = set(to_expire)
        after = collect_references(
            (s for s in metadata.snapshots if s.snapshot_id not in expired), io, cache
        )
        after_meta = before_meta
    else:
        if request_ids is not None:
            keep_expiring_request_ids(
                metadata, to_expire, request_ids, request_id_window_ms=request_id_window_ms
            )
        table.maintenance.expire_snapshots().by_ids(to_expire).commit()
        # The commit updated ``table`` to the metadata the catalog now holds, concurrent
        # commits included: whatever it still references stays.
        after = collect_references(table.metadata.snapshots, io, cache)
        after_meta = metadata_files(table.metadata, table.metadata_location)

    # A content file stays only if a remaining snapshot has it live: one that the remaining
    # snapshots name only as deleted (the inputs of a compaction, the files a row change
    # rewrote) goes with the last snapshot that read it. Files mentioned only as deleted
    # before are candidates too, so what an older expiry left behind goes now.
    keep_keys = after.all_keys() | set(after_meta)
    gone_lists = [p for k, p in before.manifest_lists.items() if k not in keep_keys]
    gone_manifests = [p for k, p in before.manifests.items() if k not in keep_keys]
    candidates = {**before.mentioned, **before.content_files}
    gone_content = {k: p for k, p in candidates.items() if k not in keep_keys}
    gone_files = [p for k, p in gone_content.items() if k not in before.delete_files]
    gone_deletes = [p for k, p in gone_content.items() if k in before.delete_files]
    gone_meta = [p for k, p in before_meta.items() if k not in keep_keys]
    bytes_freed = sum(
        before.sizes.get(normalize_uri(p), 0) for p in (*gone_content.values(), *gone_manifests)
    )
    # Data files first, manifest lists last: a crash midway leaves manifests that still
    # name missing files only for snapshots that no longer exist.
    ordered = [*gone_files, *gone_deletes, *gone_manifests, *gone_lists, *gone_meta]
    failures = 0
    if not dry_run:
        _, failures = delete_all(io, inside_table(table, ordered))
    return ExpireResult(
        snapshots_expired=tuple(to_expire),
        data_files_deleted=len(gone_files),
        delete_files_deleted=len(gone_deletes),
        manifests_deleted=len(gone_manifests),
        manifest_lists_deleted=len(gone_lists),
        metadata_files_deleted=len(gone_meta),
        bytes_freed=bytes_freed,
        delete_failures=failures,
        dry_run=dry_run,
        files=capped(ordered),
    )
