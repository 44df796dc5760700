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

Memory grows with the size of the files rewritten, not of the table: pyiceberg's writer takes
an output file's rows at once, so a rewrite holds about one decoded file (two small ones side
by side, see ``_rewrite_files``): measured 58 MiB growth for 17 MiB files, 159 MiB for 67 MiB
ones (``tests/row_changes/test_delete_rows_memory.py``); files near the 512 MiB default target
would take about a GiB. A rolling Parquet writer would bound it by a row group. The
commit is one ``overwrite`` (or ``delete``) snapshot whose parent is the state planned on
(pyiceberg's own retries are off): a commit that lost a race is planned again on fresh
metadata, which makes every change serializable. What was done for a file still live is
reused (``RewriteCache``), so a retry reads only the files committed since, and a change
wins against a steady stream of appends.
"""

from __future__ import annotations

import collections
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table, TableProperties
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.snapshots import Operation

from lakehouse.adapters.iceberg.references import delete_all
from lakehouse.adapters.iceberg.snapshot_refs import commit_to_branch
from lakehouse.adapters.pyiceberg_private.commits import ReplaceFiles, transaction
from lakehouse.adapters.pyiceberg_private.writes import (
    check_arrow_schema_fits,
    paged_by_bytes,
    writable_table,
    write_data_files,
)
from lakehouse.domain.row_changes import ChangeStats

log = logging.getLogger(__name__)

#: Rows per batch when a file is read to count or to rewrite it.
BATCH_ROWS = 65_536
#: Data files rewritten at once (see ``_rewrite_files``).
REWRITE_THREADS = 2
#: Files are rewritten side by side only while their Parquet bytes together are at most this.
REWRITE_PARALLEL_BYTES = 64 * 1024 * 1024


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
        concurrent: See the attribute.
    """

    scope: BooleanExpression
    matches: Callable[[pa.RecordBatch], pa.Array]
    columns: tuple[str, ...] | None = None
    replace: Callable[[pa.RecordBatch], pa.Table] | None = None
    decide: Callable[[DataFile], bool | None] | None = None
    replaced: Callable[[pa.RecordBatch, pa.Array], int] | None = None
    concurrent: bool = True
    """Whether ``matches`` and ``replace`` may run in two threads at once (a SQL job's
    evaluate on its one DuckDB connection, which refuses a second caller: False)."""


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
    layout: tuple[int, int] | None = None
    """The partition spec and schema the cached files were written with."""
    write_uuid: uuid.UUID = field(default_factory=uuid.uuid4)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(0))

    def fit(self, table: Table) -> bool:
        """Forgets the cached work when ``table``'s spec or schema changed since it was done.

        Files written with another partition spec carry partition values of that spec: a
        commit of them on the new one fails (pyiceberg writes their values by the new spec's
        fields). Returns whether the cache was kept.
        """
        layout = (table.metadata.default_spec_id, table.metadata.current_schema_id)
        kept = self.layout is None or self.layout == layout
        if not kept:
            self.files.clear()  # the files stay in ``written``, for discard_uncommitted
        self.layout = layout
        return kept

    def discard_uncommitted(self, table: Table, committed: Iterable[DataFile]) -> None:
        """Deletes the files written that no commit took (nothing references them)."""
        kept = {f.file_path for f in committed}
        delete_all(table.io, (f.file_path for f in self.written if f.file_path not in kept))
        self.written = [f for f in self.written if f.file_path in kept]


def rewrite_matching(
    table: Table,
    matcher: RowMatcher,
    cache: RewriteCache,
    check: Callable[[], None] = lambda: None,
    *,
    branch: str = MAIN_BRANCH,
) -> list[FileRewrite]:
    """The rewrites of every live file of ``branch``'s head that holds rows ``matcher`` removes.

    Args:
        table: The table as the change will commit on it.
        matcher: The rows removed.
        cache: Work of earlier attempts of the same change (updated).
        check: Called between files (a job's stop check).
        branch: The branch the change commits to: its head snapshot is planned on.
    """
    snapshot = table.snapshot_by_name(branch)
    if snapshot is None:
        return []
    cache.fit(table)
    table = writable_table(table)
    tasks = list(
        table.scan(row_filter=matcher.scope, snapshot_id=snapshot.snapshot_id).plan_files()
    )
    _rewrite_files(
        table, [t for t in tasks if t.file.file_path not in cache.files], matcher, cache, check
    )
    done = (cache.files[t.file.file_path] for t in tasks)
    return [rewrite for rewrite in done if rewrite is not None]


def _rewrite_files(
    table: Table,
    tasks: list[FileScanTask],
    matcher: RowMatcher,
    cache: RewriteCache,
    check: Callable[[], None],
) -> None:
    """Rewrites ``tasks``' files into ``cache.files``, up to REWRITE_THREADS at once.

    Parquet decoding and encoding release the GIL, so two files keep two cores busy where
    one file kept one (bench ``delete_rows``). Each file in flight holds up to one output
    file's rows, so files run side by side only while their Parquet bytes together stay
    within REWRITE_PARALLEL_BYTES: a large file runs alone, and the peak stays that of one.
    On an error the files not started are cancelled, the running ones finish (what they
    wrote is in ``cache.written``, for the caller to discard), and the error is raised.
    """
    running: collections.deque[tuple[FileScanTask, Future[FileRewrite | None]]] = (
        collections.deque()
    )
    in_flight = 0

    def collect() -> None:
        nonlocal in_flight
        task, future = running.popleft()
        in_flight -= task.file.file_size_in_bytes
        cache.files[task.file.file_path] = future.result()

    threads = REWRITE_THREADS if matcher.concurrent else 1
    with ThreadPoolExecutor(threads, thread_name_prefix="lakehouse-rewrite") as pool:
        try:
            for task in tasks:
                check()
                size = task.file.file_size_in_bytes
                while running and (
                    len(running) >= threads or in_flight + size > REWRITE_PARALLEL_BYTES
                ):
                    collect()
                running.append((task, pool.submit(_rewrite_file, table, task, matcher, cache)))
                in_flight += size
            while running:
                collect()
        finally:
            for _, future in running:
                future.cancel()


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
    """Writes ``data`` (the table's Arrow schema) as new data files, not committed.

    Raises:
        ValueError: ``data`` no longer fits the table's schema (it changed since the rows
            were checked), as pyiceberg's own append says.
    """
    if data.num_rows == 0:
        return []
    check_arrow_schema_fits(
        table.schema(), data.schema, format_version=table.metadata.format_version
    )
    metadata = paged_by_bytes(writable_table(table).metadata, data)
    written = list(write_data_files(metadata, data, table.io, cache.write_uuid, cache.counter))
    cache.written.extend(written)
    return written


def commit_change(
    table: Table,
    rewrites: list[FileRewrite],
    added: list[DataFile],
    properties: dict[str, str],
    branch: str = MAIN_BRANCH,
) -> tuple[Table, int]:
    """Commits the rewrites and the added files as one snapshot on ``branch``'s head.

    The snapshot is a ``delete`` when it only removes files, an ``overwrite`` otherwise.
    pyiceberg's commit retries are off: the parent must still be the branch's head, or the
    catalog refuses the commit (``CommitFailedException``) and the caller plans again.

    Returns:
        The table as committed, and the new snapshot's id.
    """
    new_files = [f for r in rewrites for f in r.written] + added
    label = Operation.OVERWRITE if new_files else Operation.DELETE
    tx = transaction(without_commit_retries(table))
    producer = ReplaceFiles(
        operation=Operation.OVERWRITE,
        transaction=tx,
        io=table.io,
        snapshot_properties=properties,
        label=label,
        branch=branch,
    )
    for rewrite in rewrites:
        producer.delete_data_file(rewrite.removed)
    for f in new_files:
        producer.append_data_file(f)
    producer.commit()
    committed = commit_to_branch(tx)
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
