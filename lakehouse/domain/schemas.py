"""Iceberg schemas as Arrow schemas and back: the one conversion every layer shares."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.io.pyarrow import pyarrow_to_schema, schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table.name_mapping import create_mapping_from_schema

#: Arrow schemas of recently seen Iceberg schemas, by identity: each entry holds its schema, so
#: an id is not reused while cached. Tables hand the same (frozen) schema object out until
#: their metadata changes, and converting one costs ~50 us, per request on the ingest path.
_ARROW_SCHEMAS: dict[int, tuple[Schema, pa.Schema]] = {}
_ARROW_SCHEMAS_MAX = 256


def schema_to_arrow(schema: Schema) -> pa.Schema:
    """The Arrow schema of an Iceberg schema (with Iceberg field ids in the field metadata)."""
    cached = _ARROW_SCHEMAS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    arrow = schema_to_pyarrow(schema)
    if len(_ARROW_SCHEMAS) >= _ARROW_SCHEMAS_MAX:
        _ARROW_SCHEMAS.clear()  # simple and thread-safe; refilled by the schemas in use
    _ARROW_SCHEMAS[id(schema)] = (schema, arrow)
    return arrow


def schema_from_arrow(arrow_schema: pa.Schema, like: Schema | None = None) -> Schema:
    """The Iceberg schema of an Arrow schema.

    Args:
        arrow_schema: The Arrow schema, with or without Iceberg field-id metadata.
        like: An Iceberg schema whose field ids to reuse by name (needed when the Arrow
            schema carries no field ids).
    """
    mapping = create_mapping_from_schema(like) if like is not None else None
    return pyarrow_to_schema(arrow_schema, name_mapping=mapping)
