"""Table schemas as pyarrow schemas and back: ``lakehouse.v1.Schema`` ⇄ ``pyarrow.Schema``.

``schema_from_arrow`` is what a user otherwise writes by hand to create a table from data they
hold; ``schema_to_arrow`` shows a table's schema (``GetTable``) as the Arrow schema its rows
read as. Not nullable ⇔ required, at every depth (list elements, map values, struct fields);
a field's ``doc`` travels as the Arrow field metadata key ``doc`` (pyiceberg's key).

The Arrow side of a round trip is canonical: ``string``, ``binary``, ``list`` (not the large
or view variants), ``timestamp("us")`` (``tz="UTC"`` for timestamptz), ``time64("us")``,
``date32``, ``pa.uuid()``. A schema written that way comes back equal; other spellings map to
the same Iceberg type (``large_string`` → string, ``int16`` → int, ``timestamp("ns")`` →
timestamp at microsecond precision...).

Needs pyarrow (``pip install 'lakehouse-client[arrow]'``).
"""

from __future__ import annotations

from collections.abc import Sequence

from lakehouse.v1 import schema_pb2

try:
    import pyarrow as pa
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lakehouse.client.schema needs pyarrow: pip install 'lakehouse-client[arrow]'"
    ) from e

__all__ = ["schema_from_arrow", "schema_to_arrow", "type_from_arrow", "type_to_arrow"]

_DOC = b"doc"
_P = schema_pb2.PrimitiveType


def _primitive(value: schema_pb2.PrimitiveType.ValueType) -> schema_pb2.DataType:
    return schema_pb2.DataType(primitive=value)


def _is_uuid(t: pa.DataType) -> bool:
    return isinstance(t, pa.BaseExtensionType) and t.extension_name == "arrow.uuid"


def type_from_arrow(t: pa.DataType, where: str = "type") -> schema_pb2.DataType:
    """The lakehouse.v1 type of an Arrow type.

    Args:
        t: The Arrow type.
        where: The path of the type, for error messages.

    Returns:
        The proto type (nested field ids left 0: the service assigns them).

    Raises:
        ValueError: The Arrow type has no Iceberg counterpart here (unsigned 64-bit, a
            timestamp of seconds with a time zone other than UTC, a union...).
    """
    types = pa.types
    if _is_uuid(t):
        return _primitive(_P.PRIMITIVE_TYPE_UUID)
    if types.is_boolean(t):
        return _primitive(_P.PRIMITIVE_TYPE_BOOLEAN)
    if types.is_int8(t) or types.is_int16(t) or types.is_int32(t):
        return _primitive(_P.PRIMITIVE_TYPE_INT)
    if types.is_uint8(t) or types.is_uint16(t):
        return _primitive(_P.PRIMITIVE_TYPE_INT)
    if types.is_int64(t) or types.is_uint32(t):
        return _primitive(_P.PRIMITIVE_TYPE_LONG)
    if types.is_float16(t) or types.is_float32(t):
        return _primitive(_P.PRIMITIVE_TYPE_FLOAT)
    if types.is_float64(t):
        return _primitive(_P.PRIMITIVE_TYPE_DOUBLE)
    if types.is_date(t):
        return _primitive(_P.PRIMITIVE_TYPE_DATE)
    if types.is_time(t):
        return _primitive(_P.PRIMITIVE_TYPE_TIME)
    if types.is_timestamp(t):
        # Iceberg's timestamptz is an instant (stored as UTC): any zone names one.
        zoned = t.tz is not None
        return _primitive(_P.PRIMITIVE_TYPE_TIMESTAMPTZ if zoned else _P.PRIMITIVE_TYPE_TIMESTAMP)
    if types.is_string(t) or types.is_large_string(t) or types.is_string_view(t):
        return _primitive(_P.PRIMITIVE_TYPE_STRING)
    if types.is_binary(t) or types.is_large_binary(t) or types.is_binary_view(t):
        return _primitive(_P.PRIMITIVE_TYPE_BINARY)
    if types.is_fixed_size_binary(t):
        return schema_pb2.DataType(fixed=schema_pb2.FixedType(length=t.byte_width))
    if types.is_decimal(t):
        return schema_pb2.DataType(
            decimal=schema_pb2.DecimalType(precision=t.precision, scale=t.scale)
        )
    if types.is_dictionary(t):
        return type_from_arrow(t.value_type, where)
    if types.is_map(t):
        return schema_pb2.DataType(
            map=schema_pb2.MapType(
                key=type_from_arrow(t.key_type, f"{where}.key"),
                value=type_from_arrow(t.item_type, f"{where}.value"),
                value_required=not t.item_field.nullable,
            )
        )
    if (
        types.is_list(t)
        or types.is_large_list(t)
        or types.is_fixed_size_list(t)
        or types.is_list_view(t)
        or types.is_large_list_view(t)
    ):
        return schema_pb2.DataType(
            list=schema_pb2.ListType(
                element=type_from_arrow(t.value_type, f"{where}.element"),
                element_required=not t.value_field.nullable,
            )
        )
    if types.is_struct(t):
        return schema_pb2.DataType(
            struct=schema_pb2.StructType(
                fields=[_field_from_arrow(t.field(i), where) for i in range(t.num_fields)]
            )
        )
    raise ValueError(f"{where}: Arrow type {t} has no Iceberg counterpart")


def _field_from_arrow(f: pa.Field, parent: str) -> schema_pb2.Field:
    doc = (f.metadata or {}).get(_DOC, b"").decode()
    return schema_pb2.Field(
        name=f.name,
        type=type_from_arrow(f.type, f"{parent}.{f.name}" if parent else f.name),
        required=not f.nullable,
        doc=doc,
    )


def schema_from_arrow(
    schema: pa.Schema, *, identifier_fields: Sequence[str] = ()
) -> schema_pb2.Schema:
    """The ``lakehouse.v1.Schema`` of an Arrow schema, for ``CreateTable``.

    Args:
        schema: The Arrow schema; a not-nullable field becomes a required column.
        identifier_fields: The names of the top-level columns that identify a row (each must
            be a required primitive column; the service checks).

    Returns:
        The proto schema (ids left 0: the service assigns them).

    Raises:
        ValueError: A field's Arrow type has no Iceberg counterpart, or identifier_fields is
            a string.
    """
    if isinstance(identifier_fields, str):
        raise ValueError("identifier_fields is a list of column names, not a string")
    return schema_pb2.Schema(
        fields=[_field_from_arrow(f, "") for f in schema],
        identifier_field_names=list(identifier_fields),
    )


def type_to_arrow(t: schema_pb2.DataType) -> pa.DataType:
    """The canonical Arrow type of a lakehouse.v1 type.

    Raises:
        ValueError: The type is unset or unknown to this client (newer than it).
    """
    kind = t.WhichOneof("kind")
    if kind == "primitive":
        arrow = _PRIMITIVE_TO_ARROW.get(t.primitive)
        if arrow is None:
            raise ValueError(f"unknown primitive type {t.primitive}")
        return arrow()
    if kind == "decimal":
        return pa.decimal128(t.decimal.precision, t.decimal.scale)
    if kind == "fixed":
        return pa.binary(t.fixed.length)
    if kind == "list":
        element = type_to_arrow(t.list.element)
        return pa.list_(pa.field("item", element, nullable=not t.list.element_required))
    if kind == "map":
        key = pa.field("key", type_to_arrow(t.map.key), nullable=False)
        value = pa.field("value", type_to_arrow(t.map.value), nullable=not t.map.value_required)
        return pa.map_(key, value)
    if kind == "struct":
        return pa.struct([_field_to_arrow(f) for f in t.struct.fields])
    raise ValueError("a type is required (DataType.kind is unset)")


_PRIMITIVE_TO_ARROW = {
    _P.PRIMITIVE_TYPE_BOOLEAN: pa.bool_,
    _P.PRIMITIVE_TYPE_INT: pa.int32,
    _P.PRIMITIVE_TYPE_LONG: pa.int64,
    _P.PRIMITIVE_TYPE_FLOAT: pa.float32,
    _P.PRIMITIVE_TYPE_DOUBLE: pa.float64,
    _P.PRIMITIVE_TYPE_DATE: pa.date32,
    _P.PRIMITIVE_TYPE_TIME: lambda: pa.time64("us"),
    _P.PRIMITIVE_TYPE_TIMESTAMP: lambda: pa.timestamp("us"),
    _P.PRIMITIVE_TYPE_TIMESTAMPTZ: lambda: pa.timestamp("us", tz="UTC"),
    _P.PRIMITIVE_TYPE_STRING: pa.string,
    _P.PRIMITIVE_TYPE_UUID: pa.uuid,
    _P.PRIMITIVE_TYPE_BINARY: pa.binary,
}


def _field_to_arrow(f: schema_pb2.Field) -> pa.Field:
    metadata = {_DOC: f.doc.encode()} if f.doc else None
    return pa.field(f.name, type_to_arrow(f.type), nullable=not f.required, metadata=metadata)


def schema_to_arrow(schema: schema_pb2.Schema) -> pa.Schema:
    """The canonical Arrow schema of a lakehouse.v1 schema (e.g. ``GetTable``'s).

    The identifier fields are not part of an Arrow schema: read them from
    ``schema.identifier_field_names``.

    Raises:
        ValueError: A field's type is unset or unknown to this client.
    """
    return pa.schema([_field_to_arrow(f) for f in schema.fields])
