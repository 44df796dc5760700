"""Reading an Iceberg scan as Arrow batches with bounded memory.

Shared by ``ReadRows`` (``lakehouse.adapters.iceberg``) and the DuckDB engine's scan source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
from pyiceberg.io.pyarrow import ArrowScan, _read_all_delete_files, schema_to_pyarrow
from pyiceberg.table import DataScan, FileScanTask
from pyiceberg.table import Table as IcebergTable

from lakehouse.adapters.readahead import read_ahead


def lazy_batch_reader(table: IcebergTable, scan: DataScan) -> pa.RecordBatchReader:
    """A reader that decodes data files a couple at a time, as the consumer asks for batches.

    pyiceberg's own ``to_arrow_batch_reader`` decodes every file up front in its thread pool
    (memory grows with the table); this keeps memory bounded by a few batches per open file.
    """
    tasks = list(scan.plan_files())
    projected = scan.projection()
    arrow_scan = ArrowScan(
        table.metadata, table.io, projected, scan.row_filter, scan.case_sensitive, scan.limit
    )
    deletes = _read_all_delete_files(table.io, tasks)

    def file_reader(task: FileScanTask) -> Callable[[], Iterator[pa.RecordBatch]]:
        return lambda: arrow_scan._record_batches_from_scan_tasks_and_deletes([task], deletes)

    batches = read_ahead([file_reader(t) for t in tasks])
    target = small_offsets(schema_to_pyarrow(projected))
    return pa.RecordBatchReader.from_batches(target, batches).cast(target)


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
