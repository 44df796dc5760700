"""Registering a Parquet file in place: the ``DataFile`` that adds it to the table without a copy.

Only a file an Iceberg reader reads exactly as the table's qualifies (same names, types and
nullability, no Parquet field ids, one partition value); any other file is rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io.pyarrow import (
    PyArrowFileIO,
    compute_statistics_plan,
    data_file_statistics_from_parquet_metadata,
    parquet_path_to_id_mapping,
)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestContent
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from lakehouse.adapters.iceberg.references import normalize_uri
from lakehouse.adapters.imports.sources import Source

logger = logging.getLogger(__name__)

_UTC_NAMES = frozenset({"UTC", "+00:00", "Etc/UTC", "Z"})
_FIELD_ID_KEY = b"PARQUET:field_id"


def _has_field_ids(fields: Sequence[pa.Field]) -> bool:
    for f in fields:
        if f.metadata and _FIELD_ID_KEY in f.metadata:
            return True
        t = f.type
        if pa.types.is_struct(t) and _has_field_ids(list(t)):
            return True
        if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _has_field_ids([t.value_field]):
            return True
        if pa.types.is_map(t) and _has_field_ids([t.key_field, t.item_field]):
            return True
    return False


def _plain(t: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    return t


def _same_type(file_type: pa.DataType, table_type: pa.DataType) -> bool:
    """True when a file column holds the table column's type as Iceberg writes it, no cast.

    Offsets width (``string``/``large_string``, ``list``/``large_list``) is a reader detail,
    not a type difference. Timestamps must be microseconds (Iceberg's unit: a Parquet
    ``TIMESTAMP_MILLIS`` column would be misread by engines that trust the table type).
    """
    if pa.types.is_struct(table_type):
        return pa.types.is_struct(file_type) and _same_fields(list(file_type), list(table_type))
    if pa.types.is_large_list(table_type) or pa.types.is_list(table_type):
        return (pa.types.is_list(file_type) or pa.types.is_large_list(file_type)) and _fits(
            file_type.value_field, table_type.value_field
        )
    if pa.types.is_map(table_type):
        return (
            pa.types.is_map(file_type)
            and _same_type(file_type.key_type, table_type.key_type)
            and _fits(file_type.item_field, table_type.item_field)
        )
    if pa.types.is_timestamp(table_type):
        if not pa.types.is_timestamp(file_type) or file_type.unit != "us":
            return False
        if table_type.tz is None:
            return file_type.tz is None
        return file_type.tz in _UTC_NAMES
    return bool(_plain(file_type) == _plain(table_type))


def _fits(file_field: pa.Field, table_field: pa.Field) -> bool:
    # An optional file column may hold nulls a required table column must not: rewrite it,
    # so that conform_arrow checks every value.
    nullable_ok = table_field.nullable or not file_field.nullable
    return nullable_ok and _same_type(file_field.type, table_field.type)


def _same_fields(file_fields: Sequence[pa.Field], table_fields: Sequence[pa.Field]) -> bool:
    by_name = {f.name: f for f in file_fields}
    if len(by_name) != len(file_fields) or set(by_name) != {f.name for f in table_fields}:
        return False
    return all(_fits(by_name[f.name], f) for f in table_fields)


def registered_file(
    source: Source,
    parquet: pq.FileMetaData,
    file_schema: pa.Schema,
    metadata: TableMetadata,
    table_arrow: pa.Schema,
) -> DataFile | None:
    """The DataFile that registers a Parquet file in place, or None when it must be rewritten.

    Registration needs a file an Iceberg reader reads exactly as the table's: columns matched
    by name through the table's name mapping (so no Parquet field ids, which would be taken
    as the table's ids), the table's types and nullability, a URI that pyiceberg parses back
    to the same path, and, for a partitioned table, one partition value per file. pyiceberg
    derives the partition from the footer's min/max statistics but ignores null counts, so a
    file whose partition source column has nulls (or no statistics) is rewritten instead of
    being filed under the wrong partition.
    """
    if parquet.num_rows == 0:
        return None
    if PyArrowFileIO.parse_location(source.uri)[2] != source.path:
        return None
    if _has_field_ids(list(file_schema)) or not _same_fields(list(file_schema), list(table_arrow)):
        return None
    schema = metadata.schema()
    spec = metadata.spec()
    try:
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=parquet,
            stats_columns=compute_statistics_plan(schema, metadata.properties),
            parquet_column_mapping=parquet_path_to_id_mapping(schema),
        )
        for partition_field in spec.fields:
            source_id = partition_field.source_id
            if (
                source_id not in statistics.column_aggregates
                or statistics.null_value_counts.get(source_id) != 0
            ):
                return None
        partition = statistics.partition(spec, schema)
    except (ValueError, KeyError, TypeError) as exc:
        logger.info("%s cannot be registered in place (%s); rewriting it", source.uri, exc)
        return None
    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=source.uri,
        file_format=FileFormat.PARQUET,
        partition=partition,
        file_size_in_bytes=source.size,
        sort_order_id=None,
        spec_id=metadata.default_spec_id,
        equality_ids=None,
        key_metadata=None,
        **statistics.to_serialized_dict(),
    )


def live_data_files(table: Table) -> set[str]:
    """The normalized paths of the current snapshot's data files."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return set()
    out = set()
    for manifest in snapshot.manifests(table.io):
        if manifest.content != ManifestContent.DATA:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            out.add(normalize_uri(entry.data_file.file_path))
    return out
