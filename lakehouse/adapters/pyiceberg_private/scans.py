"""Reading one data file as pyiceberg's scan reads it, through its private per-file code.

pyiceberg's public readers decode whole row groups (its dataset scanner) or every file up
front (``to_arrow_batch_reader``); ``lakehouse.adapters.iceberg.scan`` reads a file at a time
in small batches, with the same projection, filters, deletes and schema evolution. Its
contract tests are the scan-semantics tests in ``tests/hardening/test_stalled_readers.py``
and ``tests/adapters/test_pyiceberg_private_*.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.expressions.visitors import bind, translate_column_names
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    ArrowScan,
    _combine_positional_deletes,
    _get_column_projection_values,
    _read_all_delete_files,
    _to_requested_schema,
    expression_to_pyarrow,
    pyarrow_to_schema,
)
from pyiceberg.schema import prune_columns
from pyiceberg.table import FileScanTask
from pyiceberg.table import Table as IcebergTable


def read_delete_files(
    io: FileIO, tasks: Sequence[FileScanTask]
) -> dict[str, list[pa.ChunkedArray]]:
    """The positional deletes of ``tasks``' data files, by data file path."""
    return _read_all_delete_files(io, tasks)


def task_batches(
    scan: ArrowScan, task: FileScanTask, deletes: dict[str, list[pa.ChunkedArray]]
) -> Iterator[pa.RecordBatch]:
    """One task's batches as pyiceberg reads them (whole row groups)."""
    return scan._record_batches_from_scan_tasks_and_deletes([task], deletes)


def parquet_task_batches(
    table: IcebergTable,
    scan: ArrowScan,
    task: FileScanTask,
    positional_deletes: list[pa.ChunkedArray] | None,
    file_metadata: pq.FileMetaData,
    dictionary: tuple[str, ...],
    batch_rows: Callable[[pq.FileMetaData, list[str]], int],
) -> Iterator[pa.RecordBatch]:
    """One Parquet file's rows as pyiceberg's ``_task_to_record_batches`` yields them.

    The same projection, filter, positional deletes and schema evolution (its helpers do the
    work); only the reading differs: ``iter_batches`` with ``batch_rows(metadata, columns)``
    rows per batch rather than the dataset scanner's whole row groups. Uses ``ArrowScan``'s
    private state and pyiceberg's private per-file helpers.
    """
    metadata = table.metadata
    downcast = scan._downcast_ns_timestamp_to_us
    if downcast is None:
        downcast = metadata.format_version <= 2
    with table.io.new_input(task.file.file_path).open() as fin:
        # Pre-buffered, as pyiceberg reads: a row group's projected column chunks are fetched
        # at once (coalesced, few requests on S3) and held compressed while it is read. A
        # buffered stream instead holds a buffer per column (8 MiB each: 80 MiB per open file
        # of 10 columns), more than the compressed row group of most files.
        parquet = pq.ParquetFile(
            fin,
            metadata=file_metadata,
            pre_buffer=True,
            read_dictionary=dictionary or None,
        )
        physical_schema = parquet.schema_arrow
        file_schema = pyarrow_to_schema(
            physical_schema,
            metadata.name_mapping(),
            downcast_ns_timestamp_to_us=downcast,
            format_version=metadata.format_version,
        )
        # Iceberg's column projection rules (partition values of missing columns).
        missing = _get_column_projection_values(
            task.file,
            scan._projected_schema,
            metadata.schema(),
            metadata.specs().get(task.file.spec_id),
            file_schema.field_ids,
        )
        row_filter = None
        if scan._bound_row_filter is not AlwaysTrue():
            translated = translate_column_names(
                scan._bound_row_filter,
                file_schema,
                case_sensitive=scan._case_sensitive,
                projected_field_values=missing,
            )
            bound = bind(file_schema, translated, case_sensitive=scan._case_sensitive)
            row_filter = expression_to_pyarrow(bound, file_schema)
        file_project_schema = prune_columns(
            file_schema, scan._projected_field_ids, select_full_types=False
        )
        columns = [column.name for column in file_project_schema.columns]
        rows = batch_rows(parquet.metadata, columns)
        next_index = 0
        for batch in parquet.iter_batches(batch_size=rows, columns=columns):
            start = next_index
            next_index += batch.num_rows
            if positional_deletes:
                indices = _combine_positional_deletes(positional_deletes, start, next_index)
                batch = batch.take(indices)
            if row_filter is not None and batch.num_rows:
                # Through a Table: RecordBatch.filter raised IndexError on empty results in
                # older pyarrow (pyiceberg does the same).
                filtered = pa.Table.from_batches([batch]).filter(row_filter)
                batch = (
                    batch.slice(0, 0)
                    if filtered.num_rows == 0
                    else filtered.combine_chunks().to_batches()[0]
                )
            if batch.num_rows == 0:
                continue
            yield _to_requested_schema(
                scan._projected_schema,
                file_project_schema,
                batch,
                downcast_ns_timestamp_to_us=downcast,
                projected_missing_fields=missing,
                allow_timestamp_tz_mismatch=True,
            )
