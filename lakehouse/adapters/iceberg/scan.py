"""Reading an Iceberg scan as Arrow batches with bounded memory.

Shared by ``ReadRows`` (``lakehouse.adapters.iceberg.catalog``) and the DuckDB engine's scan source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.expressions.visitors import bind, extract_field_ids
from pyiceberg.io.pyarrow import (
    ArrowScan,
    schema_to_pyarrow,
)
from pyiceberg.manifest import FileFormat
from pyiceberg.table import DataScan, FileScanTask, IncrementalAppendScan, TableProperties
from pyiceberg.table import Table as IcebergTable

from lakehouse.adapters.iceberg.readahead import ReadBudget, read_ahead
from lakehouse.adapters.pyiceberg_private.scans import (
    parquet_task_batches,
    read_delete_files,
    task_batches,
)
from lakehouse.adapters.pyiceberg_private.writes import MAX_PAGE_BYTES

#: Decoded size of the batches a reader yields (ReadRows cuts them again into messages).
PIECE_BYTES = 2 * 1024 * 1024
#: A column chunk this small per row holds little but dictionary indices (RLE-packed, at most
#: 4 bytes each): read it as a dictionary. Mostly distinct values take more.
DICTIONARY_BYTES_PER_ROW = 4
_DICTIONARY_PAGE_SLACK = 64 * 1024
#: What one row of a column read dictionary-encoded takes before its values are decoded.
DICTIONARY_INDEX_BYTES = 4
#: Rows per batch at most, however narrow the rows (Arrow's own default batch size).
MAX_BATCH_ROWS = 65_536


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
    scan: DataScan | IncrementalAppendScan,
    *,
    budget: ReadBudget | None = None,
    stream_bytes: int = 64 * 1024 * 1024,
    tasks: Sequence[FileScanTask] | None = None,
) -> pa.RecordBatchReader:
    """A reader that decodes data files a couple at a time, as the consumer asks for batches.

    pyiceberg's own ``to_arrow_batch_reader`` decodes every file up front in its thread pool
    (memory grows with the table); this keeps memory bounded by a few batches per open file,
    charged in decoded bytes to ``budget`` (see ``lakehouse.adapters.iceberg.readahead``).

    Each Parquet file is read ``batch_rows`` rows at a time (see ``_batch_rows``): about
    ``PIECE_BYTES`` decoded per batch whatever the compression, judged from the row groups'
    uncompressed sizes. Arrow's dataset scanner (what pyiceberg reads with) decodes a whole row
    group per batch, so a file of highly compressible rows (kilobytes on disk) took hundreds of
    megabytes per open file whatever the batch size; ``ParquetFile.iter_batches`` decodes only
    the pages the next batch needs.

    A string or binary column whose values are nearly all dictionary-encoded in a file (its
    column chunks take at most ``DICTIONARY_BYTES_PER_ROW`` per row before decompression:
    little more than the dictionary indices) is read from that file dictionary-encoded, and
    decoded to plain values only in pieces of about ``PIECE_BYTES`` as they are consumed: its
    uncompressed size says nothing of its decoded size. Other columns (mostly distinct values,
    stored about as large as they decode) are read plain: reading them as dictionaries costs a
    hash table and is several times slower.

    Args:
        table: The table.
        scan: The planned scan.
        budget: The process's read-ahead budget; None for no per-process bound.
        stream_bytes: This reader's cap on decoded bytes queued ahead.
        tasks: The files to read, planned already (a read session's stream's share); None
            plans the scan.
    """
    tasks = list(scan.plan_files()) if tasks is None else list(tasks)
    projected = scan.projection()
    target = small_offsets(schema_to_pyarrow(projected))
    deletes = read_delete_files(table.io, tasks)
    page_rows = _page_row_limit(table)
    page_bytes = _page_bytes(table)

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
    filtered = _filtered_field_ids(scan)

    def file_reader(task: FileScanTask) -> Callable[[], Iterator[pa.RecordBatch]]:
        def batches() -> Iterator[pa.RecordBatch]:
            if task.file.file_format != FileFormat.PARQUET:
                return task_batches(plain, task, deletes)
            with table.io.new_input(task.file.file_path).open() as f:
                metadata = pq.ParquetFile(f).metadata
            dictionary = _dictionary_columns(metadata, filtered)
            if _few_pages_per_row_group(metadata, page_rows, page_bytes):
                reader = arrow_scan(dictionary) if dictionary else plain
                return task_batches(reader, task, deletes)
            file_deletes = deletes.get(task.file.file_path)
            return _limited(
                parquet_task_batches(
                    table,
                    plain,
                    task,
                    file_deletes,
                    metadata,
                    dictionary,
                    lambda m, columns: _batch_rows(m, columns, dictionary),
                ),
                scan.limit,
            )

        return batches

    batches = read_ahead([file_reader(t) for t in tasks], budget=budget, stream_bytes=stream_bytes)
    return pa.RecordBatchReader.from_batches(target, _decoded_pieces(batches, target))


def _limited(batches: Iterator[pa.RecordBatch], limit: int | None) -> Iterator[pa.RecordBatch]:
    """At most ``limit`` rows of ``batches`` (per file, as pyiceberg applies it to one task)."""
    if limit is None:
        yield from batches
        return
    left = limit
    for batch in batches:
        if left <= 0:
            return
        yield batch.slice(0, left)
        left -= batch.num_rows


def _page_row_limit(table: IcebergTable) -> int:
    """The rows Arrow's writer puts in a page before it checks the page's size.

    This server writes with the table's ``write.parquet.page-row-limit`` (pyiceberg's default
    when unset), or fewer for wide rows (``paged_by_bytes``); files written elsewhere are
    judged by it too (a guess, see below).
    """
    key = TableProperties.PARQUET_PAGE_ROW_LIMIT
    return _int_property(table, key, TableProperties.PARQUET_PAGE_ROW_LIMIT_DEFAULT)


def _page_bytes(table: IcebergTable) -> int:
    """The size at which Arrow's writer closes a page, as this server writes the table."""
    key = TableProperties.PARQUET_PAGE_SIZE_BYTES
    page_bytes = _int_property(table, key, TableProperties.PARQUET_PAGE_SIZE_BYTES_DEFAULT)
    return min(page_bytes, MAX_PAGE_BYTES)


def _int_property(table: IcebergTable, key: str, default: int) -> int:
    try:
        return max(1, int(table.properties.get(key, default)))
    except ValueError:
        return default


def _few_pages_per_row_group(metadata: pq.FileMetaData, page_rows: int, page_bytes: int) -> bool:
    """Whether the file's row groups are likely at most about two pages per column.

    Arrow's Parquet reader decompresses a whole page at once and keeps it (and its
    decompression buffer) while an ``iter_batches`` reader is open: on a file whose row
    groups are one page or two, reading it in small batches holds about twice what decoding
    whole row groups does (the dataset scanner frees the pages once a row group is decoded).
    Arrow's writer closes a page every ``page_rows`` rows or once it holds ``page_bytes``,
    whichever comes first (see ``paged_by_bytes``), so row groups of at most ``2 * page_rows``
    rows whose column chunks hold at most ``2 * page_bytes`` are read a row group at a time,
    as pyiceberg does. Any larger row group is read in batches: a whole one could decode to
    far more than a batch.
    """
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        if group.num_rows > 2 * page_rows:
            return False
        for c in range(group.num_columns):
            if group.column(c).total_uncompressed_size > 2 * page_bytes:
                return False
    return True


def _batch_rows(metadata: pq.FileMetaData, columns: list[str], dictionary: tuple[str, ...]) -> int:
    """Rows per batch so that a batch of the file decodes to about ``PIECE_BYTES``.

    Judged from the largest row group's uncompressed bytes per row of the projected columns
    (after encoding, before compression: about what they decode to). A column read as a
    dictionary counts its indices only (``DICTIONARY_INDEX_BYTES`` per row): its values are
    decoded later, in pieces (``_decoded_pieces``).
    """
    wanted = set(columns)
    dictionary_set = set(dictionary)
    per_row = 1.0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        if group.num_rows == 0:
            continue
        size = 0.0
        for c in range(group.num_columns):
            chunk = group.column(c)
            top = chunk.path_in_schema.split(".", 1)[0]
            if top not in wanted:
                continue
            if top in dictionary_set:
                size += DICTIONARY_INDEX_BYTES * group.num_rows
            else:
                size += chunk.total_uncompressed_size
        per_row = max(per_row, size / group.num_rows)
    return max(1, min(MAX_BATCH_ROWS, int(PIECE_BYTES // per_row)))


def _filtered_field_ids(scan: DataScan | IncrementalAppendScan) -> frozenset[int | str] | None:
    """The field ids and names the scan's row filter compares (None: unknown, so all).

    Arrow's compute functions behind some filters (``starts_with`` for ``LIKE 'a%'``) have no
    kernel for dictionary arrays, so a column the filter reads is never read as a dictionary
    (found by the fuzz suite: such a read was INTERNAL).
    """
    if scan.row_filter == AlwaysTrue():
        return frozenset()
    try:
        schema = scan.table_metadata.schema()
        ids = extract_field_ids(bind(schema, scan.row_filter, scan.case_sensitive))
        # Names too, for files written without field ids (matched by name, as pyiceberg does).
        return frozenset(ids) | {schema.find_column_name(i) or "" for i in ids}
    except Exception:  # a filter the current schema cannot bind: read every column plain
        return None


def _dictionary_columns(
    metadata: pq.FileMetaData, filtered: frozenset[int | str] | None
) -> tuple[str, ...]:
    """The top-level string and binary columns of a file worth reading dictionary-encoded.

    See ``lazy_batch_reader``; the names are the file's (what Arrow's reader matches). Columns
    the row filter reads (``filtered`` field ids and names; None: all) are read plain.
    """
    if filtered is None:
        return ()
    arrow_schema = metadata.schema.to_arrow_schema()
    leaves = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
    chosen = []
    for field in arrow_schema:
        leaf = leaves.get(field.name)
        if leaf is None or not _plain_bytes(field.type):
            continue
        field_id = (field.metadata or {}).get(b"PARQUET:field_id")
        if (int(field_id) if field_id is not None else field.name) in filtered:
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


#: A batch whose decoded size is bounded by at most this many pieces is cut by that bound;
#: past it, the exact size is computed (see ``_decoded_size``).
_BOUND_PIECES = 4


def _decoded_size(batch: pa.RecordBatch, *, exact: bool) -> int:
    """Bytes ``batch`` takes once its dictionary-encoded columns are decoded to plain.

    With ``exact`` False, a dictionary column counts its longest value for every row: an upper
    bound that costs a pass over the dictionary only (the exact size takes a gather of every
    row's value length, ~20 ms per million rows).
    """
    total = 0
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            lengths = pc.binary_length(column.dictionary)
            if exact:
                picked = pc.sum(pc.take(lengths, column.indices)).as_py()
            else:
                picked = (pc.max(lengths).as_py() or 0) * len(column)
            total += int(picked or 0) + 8 * len(column)
        else:
            total += column.get_total_buffer_size()
    return total


def _piece_rows(batch: pa.RecordBatch) -> int:
    """Rows per piece so that a piece of ``batch`` decodes to about ``PIECE_BYTES``.

    The cheap upper bound decides when it cuts the batch into a few pieces at most (pieces at
    most a few times smaller than need be); a bound that would cut it finer, as one long value
    in a dictionary of short ones would, is replaced by the exact size.
    """
    if not any(pa.types.is_dictionary(column.type) for column in batch.columns):
        size = int(batch.get_total_buffer_size())
        return max(1, int(batch.num_rows) * PIECE_BYTES // max(size, 1))
    bound = _decoded_size(batch, exact=False)
    if bound <= _BOUND_PIECES * PIECE_BYTES:
        return max(1, int(batch.num_rows) * PIECE_BYTES // max(bound, 1))
    exact = _decoded_size(batch, exact=True)
    return max(1, int(batch.num_rows) * PIECE_BYTES // max(exact, 1))


def _conformed(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """``batch`` in ``target``'s types, casting only the columns whose type differs.

    ``RecordBatch.cast`` calls a compute kernel per column, also for a column that already has
    its type (most of them): ~40 us each, a tenth of a read's CPU on the serving thread.
    """
    columns = [
        column if column.type == field.type else column.cast(field.type)
        for column, field in zip(batch.columns, target, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=target)


def _decoded_pieces(
    batches: Iterator[pa.RecordBatch], target: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The batches cut into pieces of about ``PIECE_BYTES`` decoded, each cast to ``target``."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        rows = _piece_rows(batch)
        for start in range(0, batch.num_rows, rows):
            yield _conformed(batch.slice(start, rows), target)


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
