"""Iceberg schemas as Arrow schemas and back: the one conversion every layer shares."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.io.pyarrow import pyarrow_to_schema, schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table.name_mapping import create_mapping_from_schema


def schema_to_arrow(schema: Schema) -> pa.Schema:
    """The Arrow schema of an Iceberg schema (with Iceberg field ids in the field metadata)."""
    return schema_to_pyarrow(schema)


def schema_from_arrow(arrow_schema: pa.Schema, like: Schema | None = None) -> Schema:
    """The Iceberg schema of an Arrow schema.

    Args:
        arrow_schema: The Arrow schema, with or without Iceberg field-id metadata.
        like: An Iceberg schema whose field ids to reuse by name (needed when the Arrow
            schema carries no field ids).
    """
    mapping = create_mapping_from_schema(like) if like is not None else None
    return pyarrow_to_schema(arrow_schema, name_mapping=mapping)
