"""Incremental reads: what changed in a table between two snapshots of its lineage.

Over snapshots that only appended (compactions are skipped: a ``replace`` changes no row), the
rows added, read as any scan is (pyiceberg's ``IncrementalAppendScan`` plans the files, the
service's bounded reader reads them). Over overwrites and deletes, a changelog as Spark's
changelog view defines it: for each snapshot in commit order, the rows of the data files it
removed are DELETEs and those of the files it added are INSERTs, and a row that a
copy-on-write rewrite carried over (deleted and inserted again, unchanged, by the same
snapshot) cancels out. Each change carries ``_change_type``, ``_change_ordinal`` (the
snapshot's position in the range) and ``_commit_snapshot_id``.

A changelog holds one snapshot's changed files in memory at a time (to cancel carry-overs);
appends stream as a plain read does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
from pyiceberg.expressions import BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow
from pyiceberg.manifest import DataFileContent, ManifestContent, ManifestEntryStatus
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Operation, Snapshot

from lakehouse.adapters.iceberg.scan import small_offsets
from lakehouse.domain.errors import FailedPrecondition

CHANGE_TYPE = "_change_type"
CHANGE_ORDINAL = "_change_ordinal"
COMMIT_SNAPSHOT_ID = "_commit_snapshot_id"
INSERT = "INSERT"
DELETE = "DELETE"
#: Operations that change no row: skipped by an incremental read.
_UNCHANGING = (Operation.REPLACE,)


def snapshots_between(metadata: TableMetadata, start: int, end: int, name: str) -> list[Snapshot]:
    """The snapshots after ``start`` up to ``end``, oldest first.

    Raises:
        FailedPrecondition: ``start`` is not in the table's metadata (SNAPSHOT_EXPIRED), or not
            an ancestor of ``end`` (SNAPSHOT_NOT_IN_LINEAGE).
    """
    if metadata.snapshot_by_id(start) is None:
        raise FailedPrecondition(
            f"table {name} has no snapshot {start}: it expired (or never existed); read the "
            "table in full, then go on from its current snapshot",
            reason="SNAPSHOT_EXPIRED",
            metadata={"start_snapshot_id": str(start)},
        )
    chain: list[Snapshot] = []
    snapshot = metadata.snapshot_by_id(end)
    while snapshot is not None and snapshot.snapshot_id != start:
        chain.append(snapshot)
        parent = snapshot.parent_snapshot_id
        snapshot = metadata.snapshot_by_id(parent) if parent is not None else None
    if snapshot is None:
        raise FailedPrecondition(
            f"snapshot {start} of table {name} is not an ancestor of snapshot {end}: the "
            "table was rolled back past it, or it is on another branch",
            reason="SNAPSHOT_NOT_IN_LINEAGE",
            metadata={"start_snapshot_id": str(start), "end_snapshot_id": str(end)},
        )
    chain.reverse()
    return chain


def lineage_after(metadata: TableMetadata, after: int | None, name: str) -> list[Snapshot]:
    """The current lineage's snapshots after ``after`` (all when None), oldest first.

    Raises:
        FailedPrecondition: ``after`` was expired (CURSOR_EXPIRED), or is not an ancestor of
            the current snapshot: the table was rolled back past it (CURSOR_NOT_IN_LINEAGE).
    """
    current = metadata.current_snapshot_id
    if current is None or current == after:
        return []
    if after is None:
        chain: list[Snapshot] = []
        snapshot = metadata.snapshot_by_id(current)
        while snapshot is not None:
            chain.append(snapshot)
            parent = snapshot.parent_snapshot_id
            snapshot = metadata.snapshot_by_id(parent) if parent is not None else None
        chain.reverse()
        return chain
    try:
        return snapshots_between(metadata, after, current, name)
    except FailedPrecondition as exc:
        reason = "CURSOR_EXPIRED" if exc.reason == "SNAPSHOT_EXPIRED" else "CURSOR_NOT_IN_LINEAGE"
        raise FailedPrecondition(exc.message, reason=reason, metadata=exc.metadata) from exc


def only_appends(chain: list[Snapshot]) -> bool:
    """Whether every snapshot of ``chain`` appended rows or changed none."""
    return all(
        s.summary is not None and s.summary.operation in (Operation.APPEND, *_UNCHANGING)
        for s in chain
    )


def changelog_schema(projected: Schema) -> pa.Schema:
    """The Arrow schema of a changelog: the projected columns and the three change columns."""
    base = small_offsets(schema_to_pyarrow(projected))
    return pa.schema(
        [
            *base,
            pa.field(CHANGE_TYPE, pa.string(), nullable=False),
            pa.field(CHANGE_ORDINAL, pa.int32(), nullable=False),
            pa.field(COMMIT_SNAPSHOT_ID, pa.int64(), nullable=False),
        ]
    )


def changelog_batches(
    table: Table,
    chain: list[Snapshot],
    row_filter: BooleanExpression,
    projected: Schema,
) -> Iterator[pa.RecordBatch]:
    """The changes of each snapshot of ``chain``, in commit order (see the module docstring).

    Raises:
        FailedPrecondition: A snapshot of the range added delete files (CHANGES_NOT_READABLE):
            their rows' changes cannot be told from data files alone.
    """
    metadata = table.metadata
    schema = metadata.schema()
    target = changelog_schema(projected)
    full = ArrowScan(metadata, table.io, schema, row_filter)
    columns = [f.name for f in projected.fields]
    for ordinal, snapshot in enumerate(chain):
        if snapshot.summary is not None and snapshot.summary.operation in _UNCHANGING:
            continue
        removed, added = _changed_files(table, snapshot)
        deleted = full.to_table(removed) if removed else schema.as_arrow().empty_table()
        inserted = full.to_table(added) if added else schema.as_arrow().empty_table()
        for kind, rows in _net_changes(deleted, inserted):
            if rows.num_rows == 0:
                continue
            out = rows.select(columns)
            n = out.num_rows
            out = out.append_column(CHANGE_TYPE, pa.array([kind] * n, pa.string()))
            out = out.append_column(CHANGE_ORDINAL, pa.array([ordinal] * n, pa.int32()))
            out = out.append_column(
                COMMIT_SNAPSHOT_ID, pa.array([snapshot.snapshot_id] * n, pa.int64())
            )
            yield from out.cast(target).to_batches()


def _changed_files(
    table: Table, snapshot: Snapshot
) -> tuple[list[FileScanTask], list[FileScanTask]]:
    """The data files ``snapshot`` removed and added (its own manifests' entries)."""
    removed: list[FileScanTask] = []
    added: list[FileScanTask] = []
    for manifest in snapshot.manifests(table.io):
        if manifest.added_snapshot_id != snapshot.snapshot_id:
            continue
        if manifest.content == ManifestContent.DELETES:
            raise FailedPrecondition(
                f"snapshot {snapshot.snapshot_id} of table {'.'.join(table.name())} added "
                "delete files; an incremental read over it is not supported",
                reason="CHANGES_NOT_READABLE",
            )
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
            if entry.snapshot_id != snapshot.snapshot_id:
                continue
            if entry.data_file.content != DataFileContent.DATA:
                continue
            if entry.status == ManifestEntryStatus.DELETED:
                removed.append(FileScanTask(entry.data_file))
            elif entry.status == ManifestEntryStatus.ADDED:
                added.append(FileScanTask(entry.data_file))
    return removed, added


def _net_changes(deleted: pa.Table, inserted: pa.Table) -> list[tuple[str, pa.Table]]:
    """The rows deleted and inserted by one snapshot, without those carried over unchanged.

    A multiset difference on whole rows: a row deleted n times and inserted m times is
    deleted n - m times, or inserted m - n times.
    """
    if deleted.num_rows == 0 or inserted.num_rows == 0:
        return [(DELETE, deleted), (INSERT, inserted)]
    deleted_keys = _row_keys(deleted)
    inserted_keys = _row_keys(inserted)
    return [
        (DELETE, deleted.take(_unmatched(deleted_keys, inserted_keys))),
        (INSERT, inserted.take(_unmatched(inserted_keys, deleted_keys))),
    ]


def _row_keys(rows: pa.Table) -> list[str]:
    """One string per row, equal for equal rows (any column types, nested ones too)."""
    return [json.dumps(r, sort_keys=True, default=repr) for r in rows.to_pylist()]


def _unmatched(keys: list[str], others: list[str]) -> pa.Array:
    """Positions of ``keys`` left once each of ``others`` has cancelled one equal key."""
    budget: dict[str, int] = {}
    for key in others:
        budget[key] = budget.get(key, 0) + 1
    kept = []
    for i, key in enumerate(keys):
        if budget.get(key, 0) > 0:
            budget[key] -= 1
        else:
            kept.append(i)
    return pa.array(kept, pa.int64())
