"""Writing data files with pyiceberg's private writer: usable writer values, pages by bytes.

pyiceberg hands Arrow's writer ``write.parquet.page-row-limit`` (20,000 rows) as its
mini-batch, and Arrow closes a page only between mini-batches, so 120 rows of 1 MiB made one
120 MiB page, which every reader must decode whole before it can send a row. Contract tests:
``tests/hardening/test_stalled_readers.py`` and ``tests/adapters/test_pyiceberg_private_*.py``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    _check_pyarrow_schema_compatible,
    _dataframe_to_data_files,
    bin_pack_record_batches,
)
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.typedef import TableVersion

from lakehouse.domain.table_properties import property_value_problem

log = logging.getLogger(__name__)

#: The largest data or dictionary page the service writes, whatever a table's
#: ``write.parquet.page-size-bytes`` / ``write.parquet.dict-size-bytes`` ask: a reader decodes
#: a page whole, so page size is what one open file costs a reader
#: (docs/operations/limits.md, "Reads").
MAX_PAGE_BYTES = 16 * 1024 * 1024


#: (table uuid, key) pairs whose ignored value was logged: once per table and key per
#: process, not on every write. Bounded: past it, nothing more is remembered (or logged).
_IGNORED_LOGGED: set[tuple[str, str]] = set()


_IGNORED_LOGGED_MAX = 10_000


_ignored_lock = threading.Lock()


def writer_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """``properties`` without the writer values pyiceberg cannot use.

    CreateTable, UpdateTable and RegisterTable refuse them, but a table set up before those
    checks (or directly in the catalog) may still carry one: ``write.parquet.page-row-limit``
    0 spun a thread forever on every write, a bogus codec or a level it cannot take failed
    every write. Each such key is left out, so pyiceberg uses its default for it.
    """
    usable = dict(properties)
    # Each round drops the key the check names; there are finitely many keys.
    while (problem := property_value_problem(usable)) is not None:
        del usable[problem[0]]
    return usable


def writable_table(table: Table) -> Table:
    """The same table, in memory, with only writer property values pyiceberg can use.

    Data and manifest writers read the properties of the table object the transaction is
    opened on; the catalog applies a commit's changes to the table as it stands in the
    catalog, so the stored properties stay as they are (a client can still see and fix
    them). Each ignored key is logged once per table.
    """
    metadata = table.metadata
    usable = writer_properties(metadata.properties)
    if len(usable) == len(metadata.properties):
        return table
    ignored = sorted(set(metadata.properties) - set(usable))
    with _ignored_lock:
        fresh = [k for k in ignored if (str(metadata.table_uuid), k) not in _IGNORED_LOGGED]
        if len(_IGNORED_LOGGED) < _IGNORED_LOGGED_MAX:
            _IGNORED_LOGGED.update((str(metadata.table_uuid), k) for k in fresh)
    if fresh:
        log.warning(
            "table %s carries writer properties pyiceberg cannot use; writing with "
            "pyiceberg's defaults for %s",
            ".".join(table.name()),
            [k[:64] for k in fresh],
        )
    return Table(
        table.name(),
        metadata=metadata.model_copy(update={"properties": usable}),
        metadata_location=table.metadata_location,
        io=table.io,
        catalog=table.catalog,
    )


def paged_by_bytes(metadata: TableMetadata, data: pa.Table) -> TableMetadata:
    """``metadata`` with the page settings that write ``data`` in pages of about their size.

    Arrow closes a page once it reaches ``write.parquet.page-size-bytes``, but checks only
    after every ``write.parquet.page-row-limit`` rows (pyiceberg's ``write_batch_size``): a page
    holds at least that many rows however wide they are. The row limit is lowered to what the
    widest row of ``data`` allows (never raised), and both page sizes are capped at
    ``MAX_PAGE_BYTES``. Only this in-memory copy changes; the table's properties stay as they are.
    """
    properties = writer_properties(metadata.properties)
    page_bytes = _capped(properties, TableProperties.PARQUET_PAGE_SIZE_BYTES, 1024 * 1024)
    _capped(properties, TableProperties.PARQUET_DICT_SIZE_BYTES, 2 * 1024 * 1024)
    limit = int(
        properties.get(
            TableProperties.PARQUET_PAGE_ROW_LIMIT, TableProperties.PARQUET_PAGE_ROW_LIMIT_DEFAULT
        )
    )
    rows = max(1, min(limit, page_bytes // widest_row_bytes(data)))
    properties[TableProperties.PARQUET_PAGE_ROW_LIMIT] = str(rows)
    if properties == metadata.properties:
        return metadata
    return metadata.model_copy(update={"properties": properties})


def _capped(properties: dict[str, str], key: str, default: int) -> int:
    value = min(int(properties.get(key, default)), MAX_PAGE_BYTES)
    if key in properties:
        properties[key] = str(value)
    return value


def widest_row_bytes(data: pa.Table) -> int:
    """An upper bound of the bytes one row of ``data`` puts in one column's page (at least 1).

    Exact for strings and binaries (the longest value) and for fixed-width types; the column's
    average for nested ones, whose values cannot be measured without flattening them.
    """
    widest = 1
    for column in data.columns:
        if len(column) == 0:
            continue
        kind = column.type
        if (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or pa.types.is_string_view(kind)
            or pa.types.is_binary_view(kind)
        ):
            longest = pc.max(pc.binary_length(column)).as_py() or 0
            widest = max(widest, longest + 4)  # a plain-encoded value's length prefix
        else:
            widest = max(widest, -(-column.nbytes // len(column)))
    return widest


def write_data_files(
    metadata: TableMetadata,
    data: pa.Table | pa.RecordBatchReader,
    io: FileIO,
    write_uuid: uuid.UUID,
    counter: itertools.count[int],
) -> Iterator[DataFile]:
    """Data files of ``data`` (not committed), in pages sized by bytes (see ``paged_by_bytes``).

    A reader is written one file-sized bin at a time (as pyiceberg streams it), each bin's
    pages sized by its own rows.
    """
    if isinstance(data, pa.Table):
        data = _few_chunks(data)
        yield from _dataframe_to_data_files(
            paged_by_bytes(metadata, data), data, io, write_uuid, counter
        )
        return
    target = int(
        metadata.properties.get(
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
            TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
        )
    )
    for batches in bin_pack_record_batches(data, target):
        chunk = pa.Table.from_batches(batches, data.schema)
        yield from _dataframe_to_data_files(
            paged_by_bytes(metadata, chunk), chunk, io, write_uuid, counter
        )


#: A table of many chunks up to this size is written as one chunk (see ``_few_chunks``).
COMBINE_CHUNKS_BYTES = 16 * 1024 * 1024


def _few_chunks(data: pa.Table) -> pa.Table:
    """``data`` in one chunk when it is small and made of several.

    pyiceberg projects every record batch to the table's schema on its own (its
    ``_to_requested_schema``, ~1 ms of Python per batch whatever its size): a group commit of
    32 requests of 100 rows spent ~42 ms of its ~130 ms of CPU there, one batch per request.
    Copying a few MiB into one chunk costs well under a millisecond; larger groups are made of
    large requests, whose batches are worth their projection, and are not copied (the copy
    would count against the ingest memory budget).
    """
    if data.nbytes > COMBINE_CHUNKS_BYTES or all(c.num_chunks <= 1 for c in data.columns):
        return data
    return data.combine_chunks()


def check_arrow_schema_fits(
    table_schema: Schema, arrow_schema: pa.Schema, *, format_version: TableVersion
) -> None:
    """Checks that Arrow data of ``arrow_schema`` can be written into a table of ``table_schema``.

    The check pyiceberg's own ``append`` runs before writing (its private
    ``_check_pyarrow_schema_compatible``): names, types and nullability, with the promotions
    Iceberg allows for the table's format version. Its contract test is in
    ``tests/adapters/test_pyiceberg_private_contract.py``.

    Raises:
        ValueError: The data does not fit the table (pyiceberg's message says why).
    """
    _check_pyarrow_schema_compatible(
        table_schema, provided_schema=arrow_schema, format_version=format_version
    )


def transaction_io(transaction: Transaction) -> FileIO:
    """The ``FileIO`` of the table ``transaction`` changes (a new table's, for a create).

    pyiceberg keeps that table in the private ``Transaction._table``; a create-table
    transaction has no other way to it. Its contract test is in
    ``tests/adapters/test_pyiceberg_private_contract.py``.
    """
    io: FileIO = transaction._table.io
    return io
