"""Reading an Iceberg scan as Arrow batches with bounded memory.

Shared by ``ReadRows`` (``lakehouse.adapters.iceberg``) and the DuckDB engine's scan source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.io.pyarrow import ArrowScan, _read_all_delete_files, schema_to_pyarrow
from pyiceberg.manifest import FileFormat
from pyiceberg.table import DataScan, FileScanTask
from pyiceberg.table import Table as IcebergTable

from lakehouse.adapters.readahead import ReadBudget, read_ahead

#: Decoded size of the batches a reader yields (ReadRows cuts them again into messages).
PIECE_BYTES = 2 * 1024 * 1024
#: A column chunk this small per row holds little but dictionary indices (RLE-packed, at most
#: 4 bytes each): read it as a dictionary. Mostly distinct values take more.
DICTIONARY_BYTES_PER_ROW = 4
_DICTIONARY_PAGE_SLACK = 64 * 1024


class _DictionaryNotice(logging.Filter):
    """Drops pyiceberg's warning, once per batch, that a dictionary column reads as a string.

    It is meant for writers; here the dictionaries are asked for (see ``lazy_batch_reader``)
    and decoded back to the schema's type, so the line would be noise on every read.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Iceberg does not have a dictionary type")


logging.getLogger("pyiceberg.io.pyarrow").addFilter(_DictionaryNotice())


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

    A string or binary column whose values are nearly all dictionary-encoded in a file (its
    column chunks take at most ``DICTIONARY_BYTES_PER_ROW`` per row before decompression:
    little more than the dictionary indices) is read from that file dictionary-encoded, and
    decoded to plain values only in pieces of about ``PIECE_BYTES`` as they are consumed.
    Arrow's Parquet reader otherwise materialises a whole row group of such a column at once,
    so a file of highly compressible rows (kilobytes on disk) takes hundreds of megabytes per
    open file, whatever the batch size. Other columns (mostly distinct values, stored about
    as large as they decode) are read plain: reading them as dictionaries costs a hash table
    and is several times slower.

    Args:
        table: The table.
        scan: The planned scan.
        budget: The process's read-ahead budget; None for no per-process bound.
        stream_bytes: This reader's cap on decoded bytes queued ahead.
    """
    tasks = list(scan.plan_files())
    projected = scan.projection()
    target = small_offsets(schema_to_pyarrow(projected))
    deletes = _read_all_delete_files(table.io, tasks)

    def arrow_scan(dictionary_columns: tuple[str, ...]) -> ArrowScan:
        return ArrowScan(
            table.metadata,
            table.io,
            projected,
            scan.row_filter,
            scan.case_sensitive,
            scan.limit,
            dictionary_columns=dictionary_columns,
        )

    plain = arrow_scan(())

    def file_reader(task: FileScanTask) -> Callable[[], Iterator[pa.RecordBatch]]:
        def batches() -> Iterator[pa.RecordBatch]:
            columns = _dictionary_columns(table, task)
            reader = arrow_scan(columns) if columns else plain
            return reader._record_batches_from_scan_tasks_and_deletes([task], deletes)

        return batches

    batches = read_ahead([file_reader(t) for t in tasks], budget=budget, stream_bytes=stream_bytes)
    return pa.RecordBatchReader.from_batches(target, _decoded_pieces(batches, target))


def _dictionary_columns(table: IcebergTable, task: FileScanTask) -> tuple[str, ...]:
    """The top-level string and binary columns of a file worth reading dictionary-encoded.

    See ``lazy_batch_reader``; the names are the file's (what Arrow's reader matches).
    """
    if task.file.file_format != FileFormat.PARQUET:
        return ()
    with table.io.new_input(task.file.file_path).open() as f:
        metadata = pq.ParquetFile(f).metadata
    arrow_schema = metadata.schema.to_arrow_schema()
    leaves = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
    chosen = []
    for field in arrow_schema:
        leaf = leaves.get(field.name)
        if leaf is None or not _plain_bytes(field.type):
            continue
        groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
        if groups and all(
            g.column(leaf).has_dictionary_page
            and g.column(leaf).total_uncompressed_size
            <= DICTIONARY_BYTES_PER_ROW * max(g.num_rows, 1) + _DICTIONARY_PAGE_SLACK
            for g in groups
        ):
            chosen.append(field.name)
    return tuple(chosen)


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
