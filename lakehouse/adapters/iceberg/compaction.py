"""Compaction: small data files rewritten into files near a target size, in one replace commit."""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import (
    DataFile,
    ManifestContent,
    ManifestEntry,
)
from pyiceberg.table import ALWAYS_TRUE, FileScanTask, Table, TableProperties
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import MAIN_BRANCH
from pyiceberg.table.snapshots import Operation

from lakehouse.adapters.iceberg.ingest import (
    carried_writers,
)
from lakehouse.adapters.iceberg.references import delete_all
from lakehouse.adapters.iceberg.snapshot_refs import commit_to_branch, write_head
from lakehouse.adapters.pyiceberg_private.commits import ReplaceFiles, transaction
from lakehouse.adapters.pyiceberg_private.writes import writable_table, write_data_files
from lakehouse.domain.compaction import SMALL_FILE_FRACTION, partition_key
from lakehouse.domain.job_context import JobContext, JobStopped
from lakehouse.domain.table_jobs import CompactResult

#: How long a compaction keeps committing its rewrite on fresh metadata after lost races
#: before it gives up (each attempt with pyiceberg's own retries inside): a minute, and at
#: least ``REPLACE_COMMIT_ATTEMPTS`` attempts (the most after a validation that could not look
#: at the history since the rewrite read the table). The data files are written once; only
#: the commit is redone, so losing races to a steady stream of appends is cheap. Iceberg's own
#: engines retry commits by time too (``commit.retry.total-timeout-ms``, 30 minutes).
REPLACE_COMMIT_SECONDS = 60.0
REPLACE_COMMIT_ATTEMPTS = 8

logger = logging.getLogger(__name__)


def compact_table(
    table: Table,
    *,
    target_file_bytes: int,
    min_input_files: int = 2,
    row_filter: BooleanExpression = ALWAYS_TRUE,
    small_file_bytes: int | None = None,
    ctx: JobContext | None = None,
    branch: str = MAIN_BRANCH,
) -> CompactResult:
    """Rewrites the table's small data files into files near a target size, atomically.

    The files are those of ``branch``'s head, and the snapshot is committed to that branch
    (asserting its head): compacting a branch leaves main alone, and the reverse.

    Data files smaller than ``small_file_bytes`` (by default ``SMALL_FILE_FRACTION`` of the
    target), that the scan planner
    selects for ``row_filter`` (whole files: a file with any matching row is rewritten in
    full), and that carry no delete files, are grouped by partition (spec id and partition
    value; files of different partitions are never merged). Each group of at least
    ``min_input_files`` files is read and written again with the table's current schema and
    spec, one bin of about the target size at a time (so memory stays near one output
    file's worth, whatever the partition's size). All bins land in one ``replace`` snapshot
    that removes the old files and adds the new ones, so readers see the same rows before
    and after.

    Args:
        table: The table, freshly loaded.
        target_file_bytes: The wanted size of the new files on storage.
        min_input_files: A partition with fewer small files than this is left alone.
        row_filter: Restricts compaction to files that may hold matching rows.
        small_file_bytes: Files at least this big are left alone.
        ctx: The job running the compaction: checked between bins and before the commit
            (a stop commits nothing and deletes the files written), and told the progress.
        branch: The branch compacted.

    Returns:
        What was rewritten; ``snapshot_id`` is None when nothing needed doing.

    Raises:
        ValueError: If ``target_file_bytes`` or ``min_input_files`` is not positive.
        NotFound: No such branch (REF_NOT_FOUND).
        FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
        pyiceberg.exceptions.CommitFailedException: If the table changed concurrently in a
            conflicting way; the files written are deleted, and the caller may retry.
        pyiceberg.exceptions.ValidationException: If a file to replace was removed
            concurrently (same clean-up; retry).
    """
    if target_file_bytes <= 0 or min_input_files < 1:
        raise ValueError("target_file_bytes and min_input_files must be positive")
    # Writes only with writer values pyiceberg can use (see writable_table).
    table = writable_table(table)
    snapshot = write_head(table, branch)
    if snapshot is None:
        return CompactResult(0, 0, 0, 0, 0, 0, None)
    threshold = small_file_bytes or target_file_bytes * SMALL_FILE_FRACTION
    groups: dict[tuple[int, tuple[Any, ...]], list[DataFile]] = defaultdict(list)
    scan = table.scan(row_filter=row_filter, snapshot_id=snapshot.snapshot_id)
    for task in scan.plan_files():
        # Files with deletes attached are left out: rewriting them would need the deletes
        # applied and then the dangling delete files tracked; not worth it for a first cut.
        if task.delete_files or task.file.file_size_in_bytes >= threshold:
            continue
        groups[partition_key(task.file)].append(task.file)
    groups = {k: v for k, v in groups.items() if len(v) >= min_input_files}
    if not groups:
        return CompactResult(0, 0, 0, 0, 0, 0, None)

    metadata = table.metadata
    schema = metadata.schema()
    reader = ArrowScan(metadata, table.io, schema, AlwaysTrue(), case_sensitive=True)
    write_uuid = uuid.uuid4()
    counter = itertools.count(0)
    written: list[DataFile] = []
    removed: list[DataFile] = []
    rows = 0
    bins = [b for files in groups.values() for b in _bins(files, target_file_bytes)]
    try:
        for done, files in enumerate(bins):
            if ctx is not None:
                ctx.check()
                ctx.progress(done / len(bins), f"rewrote {done} of {len(bins)} groups of files")
            data = reader.to_table([FileScanTask(f) for f in files])
            if data.num_rows != sum(f.record_count for f in files):
                raise RuntimeError("compaction read a different row count than the manifests")
            rows += data.num_rows
            written.extend(
                _write_files(
                    metadata, table.io, data, files, target_file_bytes, write_uuid, counter
                )
            )
            removed.extend(files)
        snapshot_id = _commit_replace(table, removed, written, ctx, branch)
    except (
        CommitFailedException,
        ValidationException,
        RuntimeError,
        OSError,
        ValueError,
        JobStopped,
    ):
        # These leave the commit undone (pyiceberg removes its own manifests), so the new
        # data files are garbage: remove them rather than leave orphans. An unknown commit
        # state is not caught: the files may be live.
        delete_all(table.io, (f.file_path for f in written))
        raise
    return CompactResult(
        files_rewritten=len(removed),
        files_added=len(written),
        bytes_rewritten=sum(f.file_size_in_bytes for f in removed),
        bytes_added=sum(f.file_size_in_bytes for f in written),
        rows_rewritten=rows,
        groups_rewritten=len(groups),
        snapshot_id=snapshot_id,
    )


def _commit_replace(
    table: Table,
    removed: list[DataFile],
    written: list[DataFile],
    ctx: JobContext | None,
    branch: str = MAIN_BRANCH,
) -> int:
    """Commits one ``replace`` snapshot swapping ``removed`` for ``written`` on ``branch``.

    Returns the snapshot's id.

    pyiceberg retries a commit that lost a race on top of the new metadata, but only a few
    times, and not at all once a concurrent expiry removed the snapshot the rewrite read (it
    can then no longer look at what happened since). Under steady ingest both happen without
    any real conflict, so the commit is tried again on fresh metadata, reusing the files
    already written. Each new attempt first checks everything committed since the rewrite
    read the table: no replaced file may be gone (``_validate_required_deletes``) nor have
    gained a delete file. When that history was expired, a table with delete files counts
    as a conflict, since the check cannot be made.

    Raises:
        CommitFailedException: Every attempt lost its race.
        ValidationException: A concurrent change touched the replaced files (a conflict).
        JobStopped: The job was asked to stop before a commit.
    """
    entries: dict[str, list[ManifestEntry]] = {}
    head = table.metadata.snapshot_by_name(branch)
    read_at = head.snapshot_id if head is not None else None  # what the rewrite read
    spec_at_read = table.metadata.default_spec_id
    deadline = time.monotonic() + REPLACE_COMMIT_SECONDS
    for attempt in itertools.count(1):
        if ctx is not None:
            ctx.check()
        last = attempt >= REPLACE_COMMIT_ATTEMPTS and time.monotonic() >= deadline
        tx = transaction(table)
        producer = ReplaceFiles(
            operation=Operation.OVERWRITE,
            transaction=tx,
            io=table.io,
            snapshot_properties={
                "lakehouse.operation": "compact",
                **carried_writers(table, branch),
            },
            entries=entries,
            branch=branch,
        )
        for f in removed:
            producer.delete_data_file(f)
        for f in written:
            producer.append_data_file(f)
        try:
            if attempt > 1:
                _validate_since(producer, tx.table_metadata, read_at, table.io, branch)
            producer.commit()
            commit_to_branch(tx)
            return producer.snapshot_id
        except CommitFailedException:
            if last:
                raise
            # A jittered pause before trying again: re-committing at once against a steady
            # appender on a busy machine loses the same race every time.
            time.sleep(random.uniform(0, min(0.025 * 2**attempt, 1.0)))
            table.refresh()
        except ValidationException:
            table.refresh()
            if attempt >= REPLACE_COMMIT_ATTEMPTS or (
                read_at is not None and table.metadata.snapshot_by_id(read_at) is not None
            ):
                raise  # the history was there to check: a real conflict
        except (IndexError, ValueError) as exc:
            # pyiceberg's own retry inside commit_transaction rebuilt the snapshot on metadata
            # whose partition spec changed since the rewrite: it failed writing the files'
            # old partition values (IndexError, an INTERNAL found by the fuzz test). That is
            # a conflict with the concurrent spec change.
            table.refresh()
            if table.metadata.default_spec_id == spec_at_read:
                raise
            raise ValidationException(
                "the table's partition spec changed while it was being compacted"
            ) from exc
        logger.info(
            "compaction lost a commit race; committing again on fresh metadata",
            extra={"attempt": attempt, "table": ".".join(table.name())},
        )
    raise AssertionError("unreachable")


def _validate_since(
    producer: ReplaceFiles,
    metadata: TableMetadata,
    read_at: int | None,
    io: FileIO,
    branch: str = MAIN_BRANCH,
) -> None:
    """Checks the commits since the rewrite read the table (``read_at``) against it.

    Raises:
        ValidationException: A replaced file was removed or gained a delete file, or the
            history since ``read_at`` was expired and the table holds delete files.
    """
    if read_at is not None and metadata.snapshot_by_id(read_at) is not None:
        producer.validate_since(metadata, read_at, branch)
        return
    head = metadata.snapshot_by_name(branch)
    if head is not None and any(m.content == ManifestContent.DELETES for m in head.manifests(io)):
        raise ValidationException(
            f"snapshot {read_at} the compaction read was expired, and the table has delete "
            "files: cannot tell whether one applies to a replaced file"
        )


def _bins(files: list[DataFile], target_file_bytes: int) -> Iterator[list[DataFile]]:
    """Splits one partition's small files into bins of about ``target_file_bytes`` stored.

    Each bin is read and rewritten on its own, which bounds memory. A bin of a single file
    would rewrite it for nothing, so a lone last file joins the bin before it.
    """
    current: list[DataFile] = []
    size = 0
    pending: list[DataFile] | None = None
    for f in sorted(files, key=lambda f: f.file_size_in_bytes):
        current.append(f)
        size += f.file_size_in_bytes
        if size >= target_file_bytes:
            if pending is not None:
                yield pending
            pending, current, size = current, [], 0
    if pending is not None and len(current) < 2:
        pending.extend(current)
        current = []
    if pending is not None:
        yield pending
    if len(current) >= 2:
        yield current


def _write_files(
    metadata: TableMetadata,
    io: FileIO,
    data: pa.Table,
    inputs: list[DataFile],
    target_file_bytes: int,
    write_uuid: uuid.UUID,
    counter: itertools.count[int],
) -> Iterator[DataFile]:
    """Writes ``data`` as Parquet files of about ``target_file_bytes`` each.

    pyiceberg bin-packs by in-memory Arrow bytes, not file bytes; the inputs' own ratio of
    stored to in-memory size converts the target so the new files land near it on storage.
    """
    stored = sum(f.file_size_in_bytes for f in inputs)
    ratio = data.nbytes / stored if stored and data.nbytes else 1.0
    arrow_target = max(1, int(target_file_bytes * ratio))
    props = dict(metadata.properties)
    props[TableProperties.WRITE_TARGET_FILE_SIZE_BYTES] = str(arrow_target)
    sized = metadata.model_copy(update={"properties": props})
    # One uuid and one counter for the whole run keep the file names unique across groups.
    yield from write_data_files(sized, data, io, write_uuid=write_uuid, counter=counter)
