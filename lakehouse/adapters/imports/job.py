"""The import_files job: append existing Parquet, CSV and JSON lines files to an Iceberg table.

Every function here blocks (pyiceberg, pyarrow's file systems) and runs in a worker thread.
An import goes in three passes, so that a bad file costs nothing but the time to find it:

1. **Check.** The sources are listed (a prefix) or looked up (a list of URIs), and each file's
   columns are checked against the table's schema: Parquet from its footer alone, CSV and JSON
   lines from their header or first block. The check reuses ``conform_arrow`` (the ingest
   path's rules of which Arrow types fit which Iceberg types) on a one-row probe of the file's
   schema, so an import accepts exactly what ``WriteRows`` accepts. A file that does not fit
   fails the job here, before anything is written.
2. **Write.** Parquet files whose schema is the table's exactly are registered in place: their
   footer becomes a ``DataFile`` and nothing is copied. Every other file is read in bounded
   batches, conformed (the same casts ``WriteRows`` makes, every value checked) and written
   as new data files under the table's location.
3. **Commit.** All data files land in one ``fast_append``: one snapshot, all or nothing. Its
   summary records the job id and the counts; a retried attempt that finds its job id in a
   snapshot returns that outcome instead of importing twice (a worker may die after the commit
   and before it records success).

A file registered in place becomes the table's: Iceberg deletes data files that no snapshot
references any more, so once a later compaction has replaced the file and the old snapshots
have expired, ``expire_snapshots`` deletes the source file itself. That is Iceberg's
``add_files`` contract (Spark's and pyiceberg's alike).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from lakehouse.adapters.iceberg.references import normalize_uri
from lakehouse.adapters.imports.commit import commit_import, earlier_outcome
from lakehouse.adapters.imports.read_errors import reading, row_problem
from lakehouse.adapters.imports.readers import Reader
from lakehouse.adapters.imports.registration import live_data_files, registered_file
from lakehouse.adapters.imports.schema_check import SchemaCheck
from lakehouse.adapters.imports.sources import ImportFormat, Source, SourceFiles
from lakehouse.adapters.imports.writer import Writer
from lakehouse.adapters.pyiceberg_private.writes import writable_table
from lakehouse.domain.errors import CommitStateUnknown, InvalidArgument
from lakehouse.domain.import_uris import checked_sources
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.rows.arrow_conform import conform_arrow
from lakehouse.domain.rows.problems import DecodedRows
from lakehouse.domain.schemas import schema_to_arrow
from lakehouse.domain.table_jobs import ImportOutcome

logger = logging.getLogger(__name__)

#: The request field of the format, relative to the job spec (the service prefixes ``spec.``).
FORMAT_FIELD = "import_files.format"

_NOTHING = ImportOutcome(0, 0, 0, 0, None)


def _bad_rows(source: Source, decoded: DecodedRows, offset: int) -> InvalidArgument:
    problem = decoded.problems[0]
    more = decoded.invalid_count - 1
    tail = f" (and {more} more invalid rows in this batch)" if more > 0 else ""
    return InvalidArgument.field(
        source.field,
        f"{source.uri}: row {offset + problem.row_index + 1}: {row_problem(problem)}{tail}",
    )


@dataclass
class _Planned:
    source: Source
    data_file: DataFile | None  # set: registered in place; None: rewritten
    rows: int


def import_files(
    table: Table,
    *,
    source_prefix: str,
    source_uris: Sequence[str],
    file_format: int,
    ctx: JobContext,
    allowed_prefixes: Sequence[str] | None = None,
) -> ImportOutcome:
    """Appends the source files to ``table`` in one atomic commit.

    See the module docstring for the passes. Nothing is committed unless every file fits the
    table and every row converts; a stop (``ctx.check()``) before the commit commits nothing
    and deletes the files written so far.

    Args:
        table: The table, freshly loaded (its snapshots tell whether this job committed).
        source_prefix: Import every visible file under this prefix ("" when unset). Folders,
            zero-byte objects and hidden files (any path segment starting with ``_`` or
            ``.``, and ``.crc`` files) are skipped.
        source_uris: Or import exactly these files.
        file_format: A ``lakehouse.v1.FileFormat`` value; 0 infers each file's format from
            its extension.
        ctx: The job's context: its id is recorded in the commit; stop and progress.
        allowed_prefixes: The ``jobs.import_prefixes`` setting, checked again in case it
            changed since the job was created; None skips that check (the URIs' form is
            always checked).

    Returns:
        What was imported; zeros and no snapshot when no file was found.

    Raises:
        InvalidArgument: A source is malformed, missing, unreadable, corrupt, or does not
            fit the table (the error names the file, and the column or row); or a Parquet
            file to register is a data file of the table already.
        Unavailable: The object store or the catalog failed; retrying may succeed.
        Conflict: A concurrent commit changed the table's schema or partitioning, or kept
            winning; a retried attempt starts afresh.
        CommitStateUnknown: The commit's outcome is unknown; a retried attempt finds the
            snapshot by job id if it landed.
        JobStopped: The job was asked to stop; nothing was committed.
    """
    # Writes only with writer values pyiceberg can use (see writable_table).
    table = writable_table(table)
    done = earlier_outcome(table, ctx.job_id)
    if done is not None:
        logger.info("job %s committed snapshot %s already", ctx.job_id, done.snapshot_id)
        return done
    try:
        requested = ImportFormat(file_format)
    except ValueError:
        raise InvalidArgument.field(FORMAT_FIELD, f"unknown format {file_format}") from None
    checked = checked_sources(source_prefix, source_uris, allowed_prefixes)
    files = SourceFiles(table.io, allowed_prefixes)
    sources = files.expand(checked, bool(source_prefix), requested)
    if not sources:
        ctx.progress(1.0, "no files to import")
        return _NOTHING

    metadata = table.metadata
    schema = metadata.schema()
    table_arrow = schema_to_arrow(schema)
    reader = Reader(table_arrow)
    plans = _check_all(sources, reader, SchemaCheck(schema), metadata, table_arrow, ctx)
    registered = [p for p in plans if p.data_file is not None]
    if registered:
        live = live_data_files(table)
        for plan in registered:
            if normalize_uri(plan.source.uri) in live:
                raise InvalidArgument.field(
                    plan.source.field,
                    f"{plan.source.uri} is a data file of the table already; importing it "
                    "again would add its rows twice",
                )

    writer = Writer(table)
    try:
        _rewrite_all(plans, reader, schema, writer, ctx)
        rows = sum(p.rows for p in plans)
        outcome = ImportOutcome(
            files_imported=len(plans),
            files_registered=len(registered),
            files_rewritten=len(plans) - len(registered),
            rows_imported=rows,
            snapshot_id=None,
        )
        data_files = [p.data_file for p in registered if p.data_file is not None]
        data_files.extend(writer.written)
        if not data_files:
            ctx.progress(1.0, f"imported {len(plans)} files without rows")
            return outcome
        ctx.progress(0.95, f"committing {len(data_files)} data files")
        ctx.check()  # the last safe point: past it, the commit happens
        snapshot_id = commit_import(table, data_files, bool(registered), outcome, ctx.job_id)
    except CommitStateUnknown:
        raise  # the files may be live: keep them
    except Exception:
        writer.discard()
        raise
    ctx.progress(1.0, f"imported {len(plans)} files, {rows} rows")
    return ImportOutcome(
        outcome.files_imported,
        outcome.files_registered,
        outcome.files_rewritten,
        outcome.rows_imported,
        snapshot_id,
    )


def _check_all(
    sources: list[Source],
    reader: Reader,
    check: SchemaCheck,
    metadata: TableMetadata,
    table_arrow: pa.Schema,
    ctx: JobContext,
) -> list[_Planned]:
    """The check pass: every file's columns, before anything is written."""
    plans = []
    total = len(sources)
    for n, source in enumerate(sources, 1):
        ctx.check()
        if source.size == 0 and source.format != ImportFormat.PARQUET:
            plans.append(_Planned(source, None, 0))  # an empty text file: no header, no rows
        else:
            with reading(source.field, source.uri, source.label):
                file_schema, parquet = reader.schema(source)
            check.check(source, file_schema)
            data_file = None
            if parquet is not None:
                data_file = registered_file(source, parquet, file_schema, metadata, table_arrow)
            rows = parquet.num_rows if parquet is not None and data_file is not None else 0
            plans.append(_Planned(source, data_file, rows))
        ctx.progress(0.1 * n / total, f"checked {n} of {total} files")
    return plans


def _rewrite_all(
    plans: list[_Planned], reader: Reader, schema: Schema, writer: Writer, ctx: JobContext
) -> None:
    """The write pass: files not registered in place are read, conformed and written."""
    total = len(plans)
    for n, plan in enumerate(plans, 1):
        source = plan.source
        if plan.data_file is None and (source.size or source.format == ImportFormat.PARQUET):
            batches = reader.batches(source)
            try:
                while True:
                    ctx.check()
                    with reading(source.field, source.uri, source.label):
                        batch = next(batches, None)
                    if batch is None:
                        break
                    decoded = conform_arrow(pa.Table.from_batches([batch]), schema)
                    if decoded.invalid_count:
                        raise _bad_rows(source, decoded, plan.rows)
                    plan.rows += batch.num_rows
                    writer.add(decoded.valid)
            finally:
                batches.close()
        ctx.progress(0.1 + 0.85 * n / total, f"read {n} of {total} files")
    writer.flush()
