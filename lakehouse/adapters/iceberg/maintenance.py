"""Table maintenance over pyiceberg: snapshot expiry, orphan file removal and compaction.

Every function here blocks (pyiceberg and the object store are synchronous) and is meant to
run in a worker thread. pyiceberg 0.12 only edits metadata when it expires snapshots and has
no compaction or orphan removal, so the file bookkeeping lives here: which files the table's
metadata references is computed by walking manifest lists and manifests, and files are
deleted through the table's own ``FileIO`` (``table.io.delete``), which serves file:// and
s3:// alike.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import (
    DataFile,
    ManifestContent,
    ManifestEntry,
    ManifestFile,
)
from pyiceberg.table import ALWAYS_TRUE, FileScanTask, Table, TableProperties
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Operation, Snapshot

from lakehouse.adapters.iceberg.ingest import (
    CARRIED_WRITERS_KEY,
    WRITERS_KEY,
    carried_writers,
    keep_expiring_request_ids,
)
from lakehouse.adapters.iceberg.locations import canonical_location, within_location
from lakehouse.adapters.pyiceberg_private.commits import ReplaceFiles
from lakehouse.adapters.pyiceberg_private.writes import writable_table, write_data_files
from lakehouse.domain.compaction import SMALL_FILE_FRACTION, partition_key
from lakehouse.domain.errors import FailedPrecondition
from lakehouse.domain.ingest import RequestIdLedger
from lakehouse.domain.job_context import JobContext, JobStopped
from lakehouse.domain.table_jobs import CompactResult, ExpireResult, OrphanResult

logger = logging.getLogger(__name__)

#: Dry runs and results list at most this many paths (the counts stay exact).
MAX_LISTED_FILES = 1_000
#: Deletes run in a few threads: on S3 each one is a round trip.
_DELETE_THREADS = 8
#: Times a compaction commits its rewrite on fresh metadata before it counts as a conflict
#: (each with pyiceberg's own retries inside). The data files are written once; only the
#: commit is redone, so losing races to a steady stream of appends is cheap.
REPLACE_COMMIT_ATTEMPTS = 8


# -- Results -----------------------------------------------------------------------------------


# -- Shared helpers ----------------------------------------------------------------------------


@dataclass
class _References:
    """The files a set of snapshots references, by kind (normalized URI -> original path)."""

    manifest_lists: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    content_files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def all_keys(self) -> set[str]:
        return set(self.manifest_lists) | set(self.manifests) | set(self.content_files)


def normalize_uri(uri: str) -> str:
    """Returns one spelling of a file location, so listed and referenced paths compare equal.

    ``file:/p``, ``file:///p`` and a bare ``/p`` all become ``file:///p`` (with ``.`` and
    duplicate slashes resolved); ``s3a://`` and ``s3n://`` become ``s3://``. Percent escapes
    are decoded on local paths only, since S3 keys may hold a literal ``%``.

    Args:
        uri: A location as metadata stores it or as a listing returns it.

    Returns:
        The normalized location.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        path = unquote(parts.path) if scheme == "file" else uri
        # A Windows drive letter is not a concern here; paths are POSIX.
        return "file://" + os.path.normpath("/" + path.lstrip("/"))
    if scheme in ("s3a", "s3n"):
        scheme = "s3"
    key = parts.path
    return f"{scheme}://{parts.netloc}{key}"


def _collect_references(
    snapshots: Iterable[Snapshot],
    io: FileIO,
    manifest_cache: dict[str, list[tuple[str, int]]],
) -> _References:
    """Walks each snapshot's manifest list and manifests; manifests are read once per call site.

    Deleted entries count as references too (``discard_deleted=False``): a manifest that
    records a file as deleted still names it, and the file goes only when that manifest goes.
    Any read error propagates: a partial reference set must never drive a delete.
    """
    refs = _References()
    for snapshot in snapshots:
        refs.manifest_lists[normalize_uri(snapshot.manifest_list)] = snapshot.manifest_list
        manifests: list[ManifestFile] = snapshot.manifests(io)
        for manifest in manifests:
            key = normalize_uri(manifest.manifest_path)
            refs.manifests[key] = manifest.manifest_path
            refs.sizes[key] = manifest.manifest_length
            if key not in manifest_cache:
                manifest_cache[key] = [
                    (entry.data_file.file_path, entry.data_file.file_size_in_bytes)
                    for entry in manifest.fetch_manifest_entry(io, discard_deleted=False)
                ]
            for path, size in manifest_cache[key]:
                file_key = normalize_uri(path)
                refs.content_files[file_key] = path
                refs.sizes[file_key] = size
    return refs


def _metadata_files(metadata: TableMetadata, metadata_location: str | None) -> dict[str, str]:
    """The current metadata file, the ones in its log, and the statistics files it names."""
    paths = [entry.metadata_file for entry in metadata.metadata_log]
    if metadata_location:
        paths.append(metadata_location)
    paths.extend(stats.statistics_path for stats in metadata.statistics)
    paths.extend(stats.statistics_path for stats in metadata.partition_statistics)
    return {normalize_uri(p): p for p in paths}


def _delete_all(io: FileIO, paths: Iterable[str]) -> tuple[int, int]:
    """Deletes each path; returns (deleted, failed).

    A missing file counts as deleted, so a retried job converges. Other failures are logged
    and counted, not raised: the files are unreferenced already, so nothing is left broken
    and orphan removal will take them later.
    """

    def one(path: str) -> bool:
        try:
            io.delete(path)
        except FileNotFoundError:
            return True
        except Exception:
            logger.warning("could not delete %s", path, exc_info=True)
            return False
        return True

    todo = list(paths)
    if not todo:
        return 0, 0
    with ThreadPoolExecutor(max_workers=min(_DELETE_THREADS, len(todo))) as pool:
        outcomes = list(pool.map(one, todo))
    deleted = sum(outcomes)
    return deleted, len(outcomes) - deleted


def _inside_table(table: Table, paths: Sequence[str]) -> list[str]:
    """The paths under the table's own folder; the others are left, and logged.

    A table registered before RegisterTable checked where its files are may reference files
    of another table or outside the warehouse: expiring its snapshots must not delete them.
    """
    location = table.location()
    inside = [p for p in paths if within_location(p, location)]
    if len(inside) < len(paths):
        logger.warning(
            "left %d expired files outside the folder of table %s",
            len(paths) - len(inside),
            ".".join(table.name()),
        )
    return inside


def _capped(paths: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for path in paths:
        if len(out) >= MAX_LISTED_FILES:
            break
        out.append(path)
    return tuple(out)


# -- expire_snapshots --------------------------------------------------------------------------


def _retained_ancestors(metadata: TableMetadata, retain_last: int) -> set[int]:
    """The current snapshot and its newest ancestors, ``retain_last`` snapshots in all."""
    keep: set[int] = set()
    snapshot = metadata.current_snapshot()
    while snapshot is not None and len(keep) < retain_last:
        keep.add(snapshot.snapshot_id)
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
    protected = {ref.snapshot_id for ref in metadata.refs.values()}
    keep = _retained_ancestors(metadata, retain_last) | protected | _ingest_state_chain(metadata)
    to_expire = [
        s.snapshot_id
        for s in metadata.snapshots
        if s.snapshot_id not in keep and (older_than_ms is None or s.timestamp_ms < older_than_ms)
    ]
    if not to_expire:
        return ExpireResult((), 0, 0, 0, 0, 0, 0, dry_run)

    io = table.io
    cache: dict[str, list[tuple[str, int]]] = {}
    before = _collect_references(metadata.snapshots, io, cache)
    before_meta = _metadata_files(metadata, table.metadata_location)

    if dry_run:
        expired = set(to_expire)
        after = _collect_references(
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
        after = _collect_references(table.metadata.snapshots, io, cache)
        after_meta = _metadata_files(table.metadata, table.metadata_location)

    keep_keys = after.all_keys() | set(after_meta)
    gone_lists = [p for k, p in before.manifest_lists.items() if k not in keep_keys]
    gone_manifests = [p for k, p in before.manifests.items() if k not in keep_keys]
    gone_files = [p for k, p in before.content_files.items() if k not in keep_keys]
    gone_meta = [p for k, p in before_meta.items() if k not in keep_keys]
    bytes_freed = sum(before.sizes.get(normalize_uri(p), 0) for p in (*gone_files, *gone_manifests))
    # Data files first, manifest lists last: a crash midway leaves manifests that still
    # name missing files only for snapshots that no longer exist.
    ordered = [*gone_files, *gone_manifests, *gone_lists, *gone_meta]
    failures = 0
    if not dry_run:
        _, failures = _delete_all(io, _inside_table(table, ordered))
    return ExpireResult(
        snapshots_expired=tuple(to_expire),
        data_files_deleted=len(gone_files),
        manifests_deleted=len(gone_manifests),
        manifest_lists_deleted=len(gone_lists),
        metadata_files_deleted=len(gone_meta),
        bytes_freed=bytes_freed,
        delete_failures=failures,
        dry_run=dry_run,
        files=_capped(ordered),
    )


# -- remove_orphan_files -----------------------------------------------------------------------


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata names, as normalized URIs.

    That is each snapshot's manifest list, manifests and data/delete files (on all branches
    and tags), the current metadata file and those in its log, and statistics files.

    Args:
        table: The table.

    Returns:
        The normalized URIs (see ``normalize_uri``).

    Raises:
        OSError: If a manifest list or manifest could not be read.
    """
    refs = _collect_references(table.metadata.snapshots, table.io, {})
    return refs.all_keys() | set(_metadata_files(table.metadata, table.metadata_location))


def remove_orphan_files(
    table: Table,
    list_files: Callable[[str], Iterable[tuple[str, float]]],
    *,
    older_than_ms: int,
    dry_run: bool,
    sizes: Mapping[str, int] | None = None,
) -> OrphanResult:
    """Deletes files under the table location that no metadata references.

    Only files last modified before ``older_than_ms`` are candidates: a writer that has
    written data files but not yet committed them must not lose them, so the safety age
    should exceed the longest write (days, as Iceberg's default of 3 days, in production).

    Args:
        table: The table, freshly loaded (a stale copy could miss a recent commit's files;
            the safety age covers that too).
        list_files: Lists every object under a prefix as (URI, last-modified epoch seconds).
        older_than_ms: Safety cut-off in epoch milliseconds.
        dry_run: Only list the orphans.
        sizes: Object sizes by URI, as listed, to total the orphans' bytes.

    Returns:
        What was found and deleted.

    Raises:
        OSError: If the metadata could not be read (nothing is deleted then).
        FailedPrecondition: ``LOCATION_OUTSIDE_WAREHOUSE``: the table's folder is not inside
            the warehouse (a table registered before RegisterTable checked): its other files
            may belong to anyone, so nothing is listed or deleted.
    """
    # The table's FileIO is built from the service's catalog properties only, warehouse
    # included (see pyiceberg_private); a REST catalog's warehouse name is no location.
    warehouse = str(table.io.properties.get("warehouse", ""))
    if canonical_location(warehouse) is not None and not within_location(
        table.location(), warehouse
    ):
        raise FailedPrecondition(
            f"table {'.'.join(table.name())} lies outside the warehouse: its folder may hold "
            "files of others, so orphan files are not removed there",
            reason="LOCATION_OUTSIDE_WAREHOUSE",
        )
    # Read the references before listing: a file committed after this point is younger
    # than the listing and hence than any sane safety age.
    referenced = referenced_files(table)
    prefix = table.location().rstrip("/") + "/"
    scanned = 0
    orphans: list[str] = []
    for uri, modified_seconds in list_files(prefix):
        if uri.endswith("/"):
            # A directory marker (S3 tools create empty "dir/" keys); never a table file,
            # and deleting it through FileIO could mean deleting a whole directory.
            continue
        scanned += 1
        if normalize_uri(uri) in referenced:
            continue
        if modified_seconds * 1000 >= older_than_ms:
            continue
        orphans.append(uri)
    deleted = failures = 0
    if not dry_run:
        deleted, failures = _delete_all(table.io, orphans)
    return OrphanResult(
        files_scanned=scanned,
        orphans_found=len(orphans),
        orphans_deleted=deleted,
        delete_failures=failures,
        dry_run=dry_run,
        files=_capped(orphans),
        orphan_bytes=sum(sizes.get(uri, 0) for uri in orphans) if sizes else 0,
    )


# -- compact_table -----------------------------------------------------------------------------


def compact_table(
    table: Table,
    *,
    target_file_bytes: int,
    min_input_files: int = 2,
    row_filter: BooleanExpression = ALWAYS_TRUE,
    small_file_bytes: int | None = None,
    ctx: JobContext | None = None,
) -> CompactResult:
    """Rewrites the table's small data files into files near a target size, atomically.

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

    Returns:
        What was rewritten; ``snapshot_id`` is None when nothing needed doing.

    Raises:
        ValueError: If ``target_file_bytes`` or ``min_input_files`` is not positive.
        pyiceberg.exceptions.CommitFailedException: If the table changed concurrently in a
            conflicting way; the files written are deleted, and the caller may retry.
        pyiceberg.exceptions.ValidationException: If a file to replace was removed
            concurrently (same clean-up; retry).
    """
    if target_file_bytes <= 0 or min_input_files < 1:
        raise ValueError("target_file_bytes and min_input_files must be positive")
    # Writes only with writer values pyiceberg can use (see writable_table).
    table = writable_table(table)
    snapshot = table.current_snapshot()
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
        snapshot_id = _commit_replace(table, removed, written, ctx)
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
        _delete_all(table.io, (f.file_path for f in written))
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
    table: Table, removed: list[DataFile], written: list[DataFile], ctx: JobContext | None
) -> int:
    """Commits one ``replace`` snapshot swapping ``removed`` for ``written``; its id.

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
    read_at = table.metadata.current_snapshot_id  # what the rewrite read
    spec_at_read = table.metadata.default_spec_id
    for attempt in range(1, REPLACE_COMMIT_ATTEMPTS + 1):
        if ctx is not None:
            ctx.check()
        tx = table.transaction()
        producer = ReplaceFiles(
            operation=Operation.OVERWRITE,
            transaction=tx,
            io=table.io,
            snapshot_properties={"lakehouse.operation": "compact", **carried_writers(table)},
            entries=entries,
        )
        for f in removed:
            producer.delete_data_file(f)
        for f in written:
            producer.append_data_file(f)
        try:
            if attempt > 1:
                _validate_since(producer, tx.table_metadata, read_at, table.io)
            producer.commit()
            tx.commit_transaction()
            return producer.snapshot_id
        except CommitFailedException:
            if attempt == REPLACE_COMMIT_ATTEMPTS:
                raise
            # A jittered pause before trying again: re-committing at once against a steady
            # appender on a busy machine loses the same race every time.
            time.sleep(random.uniform(0, min(0.025 * 2**attempt, 1.0)))
            table.refresh()
        except ValidationException:
            table.refresh()
            if attempt == REPLACE_COMMIT_ATTEMPTS or (
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
    producer: ReplaceFiles, metadata: TableMetadata, read_at: int | None, io: FileIO
) -> None:
    """Checks the commits since the rewrite read the table (``read_at``) against it.

    Raises:
        ValidationException: A replaced file was removed or gained a delete file, or the
            history since ``read_at`` was expired and the table holds delete files.
    """
    if read_at is not None and metadata.snapshot_by_id(read_at) is not None:
        producer.validate_since(metadata, read_at)
        return
    head = metadata.current_snapshot()
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
