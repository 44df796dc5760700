"""A result's columns as an Iceberg table can store them (a destination or INSERT target)."""

from __future__ import annotations

import pyarrow as pa

from lakehouse.adapters.duckdb.parse_tree import STATEMENT_FIELD, first_line, invalid
from lakehouse.domain.errors import (
    InvalidArgument,
)
from lakehouse.domain.names import check_column_name


def storable_schema(schema: pa.Schema) -> pa.Schema:
    """The result schema as Iceberg can store it (the destination table's schema).

    Raises:
        InvalidArgument: A column name Iceberg cannot hold (a dot, a duplicate), or a type
            it has no counterpart for (interval, NULL, unsigned 64-bit...), with a hint.
    """
    seen: dict[str, str] = {}
    fields = []
    for f in schema:
        try:
            check_column_name(STATEMENT_FIELD, f.name)
        except InvalidArgument as exc:
            problem = exc.violations[0].description if exc.violations else str(exc)
            raise invalid(
                f"result column {f.name!r} cannot be a table column ({problem}); "
                "give it an alias with AS"
            ) from exc
        folded = f.name.casefold()
        if folded in seen:
            raise invalid(
                f"result columns {seen[folded]!r} and {f.name!r} have the same name; "
                "give them distinct aliases with AS"
            )
        seen[folded] = f.name
        fields.append(pa.field(f.name, _storable_type(f.type, f.name), nullable=True))
    return pa.schema(fields)


def _storable_type(t: pa.DataType, column: str) -> pa.DataType:
    if pa.types.is_dictionary(t):
        return _storable_type(t.value_type, column)
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t) or pa.types.is_uint16(t):
        return pa.int32()
    if pa.types.is_uint32(t):
        return pa.int64()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="UTC" if t.tz is not None else None)
    if pa.types.is_time(t):
        return pa.time64("us")
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return pa.list_(pa.field("element", _storable_type(t.value_type, column)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field("element", _storable_type(t.value_type, column)))
    if pa.types.is_map(t):
        return pa.map_(_storable_type(t.key_type, column), _storable_type(t.item_type, column))
    if pa.types.is_struct(t):
        return pa.struct(
            [pa.field(f.name, _storable_type(f.type, column), nullable=True) for f in t]
        )
    if pa.types.is_decimal128(t) or pa.types.is_decimal256(t):
        if t.precision <= 38:
            return pa.decimal128(t.precision, t.scale)
    elif (
        pa.types.is_boolean(t)
        or pa.types.is_int32(t)
        or pa.types.is_int64(t)
        or pa.types.is_float32(t)
        or pa.types.is_float64(t)
        or pa.types.is_date32(t)
        or pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return t
    raise invalid(
        f"result column {column!r} has type {t}, which an Iceberg table cannot store; "
        "CAST it (for example to VARCHAR or BIGINT)"
    )


def cast_result(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` cast to the storable ``schema``.

    Raises:
        InvalidArgument: A value does not fit the storable type.
    """
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise invalid(f"a result value cannot be stored: {first_line(exc)}") from exc


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch of the INSERT target's exact Arrow schema (DuckDB already cast the values).

    Raises:
        InvalidArgument: A NULL for a required column.
    """
    columns = []
    for column, field in zip(batch.columns, schema, strict=True):
        if not field.nullable and column.null_count:
            raise invalid(f"column {field.name!r} is required, but the query gives NULL")
        columns.append(column)
    return cast_result(pa.RecordBatch.from_arrays(columns, names=schema.names), schema)
