"""Reading an Iceberg scan as Arrow batches with bounded memory.

Shared by ``ReadRows`` (``lakehouse.adapters.iceberg``) and the DuckDB engine's scan source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import ArrowScan, _read_all_delete_files, schema_to_pyarrow
from pyiceberg.table import DataScan, FileScanTask
from pyiceberg.table import Table as IcebergTable

from lakehouse.adapters.readahead import ReadBudget, read_ahead

#: Decoded size of the batches a reader yields (ReadRows cuts them again into messages).
PIECE_BYTES = 2 * 1024 * 1024


def lazy_batch_reader(
    table: IcebergTable,
    scan: DataScan,
    *,
    budget: ReadBudget | None = None,
    stream_bytes: int = 64 * 1024 * 1024,
) -> pa.RecordBatchReader:
    """A reader that decodes data files a couple at a time, as the consumer asks for batches.

    pyiceberg's own ``to_arrow_batch_reader`` decodes every file up front in its thread pool
    (memory grows with the table); this keeps memory bounded by a few batches per open file,
    charged in decoded bytes to ``budget`` (see ``lakehouse.adapters.readahead``).

    String and binary columns are read dictionary-encoded and decoded to plain values only
    in pieces of about ``PIECE_BYTES``, as they are consumed: Arrow's Parquet reader
    otherwise materialises a whole row group of a dictionary-encoded column at once, so a
    file of highly compressible rows (a few kilobytes on disk) takes hundreds of megabytes
    per open file, whatever the batch size.

    Args:
        table: The table.
        scan: The planned scan.
        budget: The process's read-ahead budget; None for no per-process bound.
        stream_bytes: This reader's cap on decoded bytes queued ahead.
    """
    tasks = list(scan.plan_files())
    projected = scan.projection()
    target = small_offsets(schema_to_pyarrow(projected))
    dictionary_columns = tuple(f.name for f in target if _plain_bytes(f.type))
    arrow_scan = ArrowScan(
        table.metadata,
        table.io,
        projected,
        scan.row_filter,
        scan.case_sensitive,
        scan.limit,
        dictionary_columns=dictionary_columns,
    )
    deletes = _read_all_delete_files(table.io, tasks)

    def file_reader(task: FileScanTask) -> Callable[[], Iterator[pa.RecordBatch]]:
        return lambda: arrow_scan._record_batches_from_scan_tasks_and_deletes([task], deletes)

    batches = read_ahead([file_reader(t) for t in tasks], budget=budget, stream_bytes=stream_bytes)
    return pa.RecordBatchReader.from_batches(target, _decoded_pieces(batches, target))


def _plain_bytes(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _decoded_size(batch: pa.RecordBatch) -> int:
    """Bytes ``batch`` takes once its dictionary-encoded columns are decoded to plain."""
    total = 0
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            lengths = pc.binary_length(column.dictionary)
            picked = pc.sum(pc.take(lengths, column.indices)).as_py()
            total += int(picked or 0) + 8 * len(column)
        else:
            total += column.get_total_buffer_size()
    return total


def _decoded_pieces(
    batches: Iterator[pa.RecordBatch], target: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The batches cut into pieces of about ``PIECE_BYTES`` decoded, each cast to ``target``."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        size = _decoded_size(batch)
        rows = max(1, batch.num_rows * PIECE_BYTES // max(size, 1))
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows).cast(target)


def small_offsets(schema: pa.Schema) -> pa.Schema:
    """The schema with 32-bit offsets: one batch never needs 64-bit ones, and they cost bytes."""

    def small(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t):
            return pa.string()
        if pa.types.is_large_binary(t):
            return pa.binary()
        if pa.types.is_large_list(t):
            return pa.list_(t.value_field.with_type(small(t.value_type)))
        if pa.types.is_list(t):
            return pa.list_(t.value_field.with_type(small(t.value_type)))
        if pa.types.is_struct(t):
            return pa.struct([f.with_type(small(f.type)) for f in t])
        if pa.types.is_map(t):
            return pa.map_(
                t.key_field.with_type(small(t.key_type)),
                t.item_field.with_type(small(t.item_type)),
            )
        return t

    return pa.schema([f.with_type(small(f.type)) for f in schema], metadata=schema.metadata)
