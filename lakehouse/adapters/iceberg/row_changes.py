"""Row-level changes by copy-on-write: only the data files that hold removed rows are rewritten.

pyiceberg 0.12's ``delete``, ``overwrite`` and ``upsert`` read each candidate file whole into
memory (and ``upsert`` reads every matching row of the table at once), re-plan blind to our
writer offsets, and retry on their own. Here a change is planned on the exact table state it
commits on, file by file:

1. the scan planner picks the files that may hold removed rows (partition and min/max
   pruning with the change's ``scope``);
2. each is read once, only the columns the match needs, in batches, to count its removed
   rows: none leaves the file alone, all removes it whole;
3. a file with some removed rows is streamed again, batch by batch, and its kept rows (and,
   for an UPDATE, the replacement rows) are written to new files of about the target size.

Memory stays near one batch plus one output file's row group, whatever the table's size. The
commit is one ``overwrite`` (or ``delete``) snapshot whose parent is the state planned on
(pyiceberg's own retries are off): a commit that lost a race is planned again on fresh
metadata, which makes every change serializable. What was done for a file still live is
reused (``RewriteCache``), so a retry reads only the files committed since, and a change
wins against a steady stream of appends.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table, TableProperties
from pyiceberg.table.snapshots import Operation

from lakehouse.adapters.iceberg.references import delete_all
from lakehouse.adapters.pyiceberg_private.commits import ReplaceFiles
from lakehouse.adapters.pyiceberg_private.writes import (
    paged_by_bytes,
    writable_table,
    write_data_files,
)
from lakehouse.domain.row_changes import ChangeStats

log = logging.getLogger(__name__)

#: Rows per batch when a file is read to count or to rewrite it.
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class RowMatcher:
    """Which rows of a table a change removes, and what (if anything) replaces them.

    Attributes:
        scope: The files that may hold removed rows (pruned by partition and statistics);
            a file outside it is never read.
        matches: A boolean mask (no nulls) of the removed rows of a batch of the table's
            rows (holding at least ``columns``).
        columns: The columns ``matches`` reads; None reads all of them.
        replace: UPDATE: the rows written in place of the removed rows of a batch, in the
            table's Arrow schema.
        decide: Decides a file from its metadata alone when it can: True removes it whole,
            False leaves it, None reads it.
        replaced: Of the removed rows of a batch (the mask), how many an UPSERT replaces
            (the others are deleted).
    """

    scope: BooleanExpression
    matches: Callable[[pa.RecordBatch], pa.Array]
    columns: tuple[str, ...] | None = None
    replace: Callable[[pa.RecordBatch], pa.Table] | None = None
    decide: Callable[[DataFile], bool | None] | None = None
    replaced: Callable[[pa.RecordBatch, pa.Array], int] | None = None


@dataclass
class FileRewrite:
    """What a change does to one data file."""

    removed: DataFile
    written: list[DataFile]
    rows_removed: int
    whole: bool
    rows_replaced: int = 0


@dataclass
class RewriteCache:
    """Per-file work of a change, kept across its commit attempts.

    A file's rewrite depends only on its (immutable) content and on the change, so a retry
    on fresh metadata reuses it for every file still live. ``written`` holds every file any
    attempt wrote, so that the ones no commit took can be deleted.
    """

    files: dict[str, FileRewrite | None] = field(default_factory=dict)
    written: list[DataFile] = field(default_factory=list)
    write_uuid: uuid.UUID = field(default_factory=uuid.uuid4)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(0))
    spec_id: int | None = None

    def follow_spec(self, table: Table) -> bool:
        """Forgets the rewrites written for another partition spec than ``table``'s.

        pyiceberg writes a commit's added files into one manifest of the table's current
        spec, so a file written before a concurrent partition change cannot be committed
        after it (its partition tuple has the old spec's shape: the commit failed with an
        IndexError). Such files are written again; the stale ones are deleted with the
        others no commit took.

        Returns:
            Whether the spec changed since files were last written.
        """
        current = table.metadata.default_spec_id
        changed = self.spec_id is not None and self.spec_id != current
        self.spec_id = current
        if changed:
            self.files = {p: r for p, r in self.files.items() if r is None or not r.written}
        return changed

    def discard_uncommitted(self, table: Table, committed: Iterable[DataFile]) -> None:
        """Deletes the files written that no commit took (nothing references them)."""
        kept = {f.file_path for f in committed}
        delete_all(table.io, (f.file_path for f in self.written if f.file_path not in kept))
        self.written = [f for f in self.written if f.file_path in kept]


def rewrite_matching(
    table: Table, matcher: RowMatcher, cache: RewriteCache, check: Callable[[], None] = lambda: None
) -> list[FileRewrite]:
    """The rewrites of every live file of ``table`` that holds rows ``matcher`` removes.

    Args:
        table: The table as the change will commit on it (its current snapshot).
        matcher: The rows removed.
        cache: Work of earlier attempts of the same change (updated).
        check: Called between files (a job's stop check).
    """
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    table = writable_table(table)
    cache.follow_spec(table)
    rewrites: list[FileRewrite] = []
    tasks = table.scan(row_filter=matcher.scope, snapshot_id=snapshot.snapshot_id).plan_files()
    for task in tasks:
        check()
        path = task.file.file_path
        if path not in cache.files:
            cache.files[path] = _rewrite_file(table, task, matcher, cache)
        done = cache.files[path]
        if done is not None:
            rewrites.append(done)
    return rewrites


def _rewrite_file(
    table: Table, task: FileScanTask, matcher: RowMatcher, cache: RewriteCache
) -> FileRewrite | None:
    metadata = table.metadata
    schema = metadata.schema()
    decided = matcher.decide(task.file) if matcher.decide is not None else None
    if decided is False:
        return None
    if decided is True and not task.delete_files and matcher.replace is None:
        return FileRewrite(task.file, [], task.file.record_count, whole=True)
    projected = schema if matcher.columns is None else schema.select(*matcher.columns)
    counting = ArrowScan(metadata, table.io, projected, AlwaysTrue())
    removed = total = replaced = 0
    for batch in counting.to_record_batches([task]):
        total += batch.num_rows
        mask = matcher.matches(batch)
        removed += int(pc.sum(mask).as_py() or 0)
        if matcher.replaced is not None:
            replaced += matcher.replaced(batch, mask)
    if removed == 0:
        return None
    if removed == total and matcher.replace is None:
        return FileRewrite(task.file, [], removed, whole=True, rows_replaced=replaced)
    reading = ArrowScan(metadata, table.io, schema, AlwaysTrue())
    arrow_schema = schema.as_arrow()

    def rows() -> Iterator[pa.RecordBatch]:
        for batch in reading.to_record_batches([task]):
            mask = matcher.matches(batch)
            kept = batch.filter(pc.invert(mask))
            if kept.num_rows:
                yield kept.cast(arrow_schema) if kept.schema != arrow_schema else kept
            if matcher.replace is not None:
                doomed = batch.filter(mask)
                if doomed.num_rows:
                    yield from matcher.replace(doomed).cast(arrow_schema).to_batches()

    reader = pa.RecordBatchReader.from_batches(arrow_schema, rows())
    written = list(write_data_files(metadata, reader, table.io, cache.write_uuid, cache.counter))
    cache.written.extend(written)
    return FileRewrite(task.file, written, removed, whole=not written, rows_replaced=replaced)


def write_rows(table: Table, data: pa.Table, cache: RewriteCache) -> list[DataFile]:
    """Writes ``data`` (the table's Arrow schema) as new data files, not committed."""
    if data.num_rows == 0:
        return []
    metadata = paged_by_bytes(writable_table(table).metadata, data)
    written = list(write_data_files(metadata, data, table.io, cache.write_uuid, cache.counter))
    cache.written.extend(written)
    return written


def commit_change(
    table: Table,
    rewrites: list[FileRewrite],
    added: list[DataFile],
    properties: dict[str, str],
) -> tuple[Table, int]:
    """Commits the rewrites and the added files as one snapshot on ``table``'s current one.

    The snapshot is a ``delete`` when it only removes files, an ``overwrite`` otherwise.
    pyiceberg's commit retries are off: the parent must still be current, or the catalog
    refuses the commit (``CommitFailedException``) and the caller plans again.

    Returns:
        The table as committed, and the new snapshot's id.
    """
    new_files = [f for r in rewrites for f in r.written] + added
    label = Operation.OVERWRITE if new_files else Operation.DELETE
    tx = without_commit_retries(table).transaction()
    producer = ReplaceFiles(
        operation=Operation.OVERWRITE,
        transaction=tx,
        io=table.io,
        snapshot_properties=properties,
        label=label,
    )
    for rewrite in rewrites:
        producer.delete_data_file(rewrite.removed)
    for f in new_files:
        producer.append_data_file(f)
    producer.commit()
    committed = tx.commit_transaction()
    return committed, producer.snapshot_id


def change_stats(rewrites: list[FileRewrite], added: list[DataFile]) -> ChangeStats:
    """The counts of a change made of ``rewrites`` and ``added`` files."""
    replaced = sum(r.rows_replaced for r in rewrites)
    return ChangeStats(
        rows_deleted=sum(r.rows_removed for r in rewrites) - replaced,
        rows_updated=replaced,
        files_rewritten=sum(1 for r in rewrites if not r.whole),
        files_removed=sum(1 for r in rewrites if r.whole),
        files_added=sum(len(r.written) for r in rewrites) + len(added),
    )


def pinned(table: Table) -> Table:
    """A table object of its own on ``table``'s current metadata, which nothing else changes.

    The catalog adapter hands the same cached table object to concurrent calls, and a commit
    through it (UpdateTable) replaces its metadata in place. A change that planned on it
    would then write files for one partition spec and commit them under another (an
    IndexError in pyiceberg's manifest writer), or plan on one snapshot and commit on the
    next; it plans, writes and commits on this copy instead.
    """
    return Table(
        table.name(),
        metadata=table.metadata,
        metadata_location=table.metadata_location,
        io=table.io,
        catalog=table.catalog,
    )


def without_commit_retries(table: Table) -> Table:
    """The same table whose transactions do not retry a lost commit race by themselves."""
    metadata = table.metadata
    properties = {**metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    return Table(
        table.name(),
        metadata=metadata.model_copy(update={"properties": properties}),
        metadata_location=table.metadata_location,
        io=table.io,
        catalog=table.catalog,
    )
