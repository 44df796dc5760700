"""Schema conversion in one place: lakehouse.v1 proto <-> Iceberg (pyiceberg) <-> Arrow.

Proto schemas come from clients and are validated here while they are converted, so every
problem is reported with the path of the offending field (``schema.fields[2].type.list``).
Iceberg <-> Arrow uses pyiceberg's own conversion, so files we write read back the same way
any Iceberg reader does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from pyiceberg.exceptions import ValidationError as IcebergValidationError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    TruncateTransform,
    UnknownTransform,
    VoidTransform,
    YearTransform,
    parse_transform,
)
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    PrimitiveType,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from lakehouse.domain.errors import FieldViolation, InvalidArgument
from lakehouse.domain.names import check_column_name
from lakehouse.domain.type_names import (
    MAX_DECIMAL_PRECISION,
    TypeNameError,
    parse_type_name,
    type_name,
)
from lakehouse.v1 import schema_pb2

MAX_COLUMNS = 10_000

_PRIMITIVES: dict[int, type[PrimitiveType]] = {
    schema_pb2.PRIMITIVE_TYPE_BOOLEAN: BooleanType,
    schema_pb2.PRIMITIVE_TYPE_INT: IntegerType,
    schema_pb2.PRIMITIVE_TYPE_LONG: LongType,
    schema_pb2.PRIMITIVE_TYPE_FLOAT: FloatType,
    schema_pb2.PRIMITIVE_TYPE_DOUBLE: DoubleType,
    schema_pb2.PRIMITIVE_TYPE_DATE: DateType,
    schema_pb2.PRIMITIVE_TYPE_TIME: TimeType,
    schema_pb2.PRIMITIVE_TYPE_TIMESTAMP: TimestampType,
    schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ: TimestamptzType,
    schema_pb2.PRIMITIVE_TYPE_STRING: StringType,
    schema_pb2.PRIMITIVE_TYPE_UUID: UUIDType,
    schema_pb2.PRIMITIVE_TYPE_BINARY: BinaryType,
}
_PRIMITIVE_TO_PROTO: dict[type[PrimitiveType], int] = {v: k for k, v in _PRIMITIVES.items()}


class _Problems:
    """Collects every problem of a request, so a client fixes them in one round trip."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def check_name(self, field: str, name: str) -> None:
        try:
            check_column_name(field, name)
        except InvalidArgument as exc:
            self.violations.extend(exc.violations)

    def raise_if_any(self, what: str) -> None:
        if self.violations:
            first = self.violations[0]
            more = f" (and {len(self.violations) - 1} more)" if len(self.violations) > 1 else ""
            raise InvalidArgument(
                f"invalid {what}: {first.field}: {first.description}{more}",
                violations=self.violations,
                reason="INVALID_SCHEMA" if what == "schema" else "INVALID_ARGUMENT",
            )


# --- proto -> Iceberg -------------------------------------------------------------------


def schema_from_proto(message: schema_pb2.Schema, *, field: str = "schema") -> Schema:
    """Converts and validates a client's schema; field ids are assigned in order from 1.

    Raises:
        InvalidArgument: With one field violation per problem (unset or unknown type,
            duplicate or bad names, bad decimal or fixed parameters, bad identifier fields).
    """
    problems = _Problems()
    ids = itertools.count(1)
    if not message.fields:
        problems.add(f"{field}.fields", "a schema needs at least one column")
    fields = _fields_from_proto(message.fields, f"{field}.fields", ids, problems)
    problems.raise_if_any("schema")
    by_name = {f.name: f for f in fields}
    identifier_ids: list[int] = []
    for i, name in enumerate(message.identifier_field_names):
        where = f"{field}.identifier_field_names[{i}]"
        column = by_name.get(name)
        if column is None:
            problems.add(where, f"no top-level column named {name!r}")
        elif not column.required or not isinstance(column.field_type, PrimitiveType):
            problems.add(where, f"column {name!r} must be a required primitive column")
        elif column.field_id not in identifier_ids:
            identifier_ids.append(column.field_id)
    problems.raise_if_any("schema")
    return Schema(*fields, identifier_field_ids=identifier_ids)


def _fields_from_proto(
    fields: Sequence[schema_pb2.Field],
    path: str,
    ids: Iterator[int],
    problems: _Problems,
) -> list[NestedField]:
    seen: dict[str, int] = {}
    result: list[NestedField] = []
    for i, f in enumerate(fields):
        where = f"{path}[{i}]"
        problems.check_name(f"{where}.name", f.name)
        folded = f.name.casefold()
        if f.name and folded in seen:
            problems.add(
                f"{where}.name",
                f"duplicate column name {f.name!r} (also at index {seen[folded]}; "
                "names are compared case-insensitively)",
            )
        seen.setdefault(folded, i)
        if len(result) >= MAX_COLUMNS:
            problems.add(path, f"at most {MAX_COLUMNS} columns are supported")
            break
        field_id = next(ids)
        field_type = _field_type_from_proto(f, where, ids, problems)
        if field_type is not None:
            result.append(
                NestedField(field_id, f.name, field_type, required=f.required, doc=f.doc or None)
            )
    return result


def _field_type_from_proto(
    f: schema_pb2.Field, where: str, ids: Iterator[int], problems: _Problems
) -> IcebergType | None:
    """The type of a field given as ``type`` or as ``type_name``.

    Both may be set when they agree: a schema read from ``GetTable`` carries both, and
    creating a table from it must keep working.
    """
    if not f.type_name:
        return _type_from_proto(f.type, f"{where}.type", ids, problems, f.HasField("type"))
    if f.HasField("type"):
        typed = _type_from_proto(f.type, f"{where}.type", ids, problems)
        if typed is None:
            return None
        try:
            # Ids do not matter for the comparison: the name holds none.
            agrees = type_name(parse_type_name(f.type_name)) == type_name(typed)
        except TypeNameError as exc:
            problems.add(f"{where}.type_name", str(exc))
            return None
        if not agrees:
            problems.add(
                f"{where}.type_name",
                f"type is {type_name(typed)} but type_name is {f.type_name!r}: set one of "
                "them, or both alike",
            )
            return None
        return typed
    try:
        parsed = parse_type_name(f.type_name, ids)
    except TypeNameError as exc:
        problems.add(f"{where}.type_name", str(exc))
        return None
    for name in _struct_field_names(parsed):
        try:
            check_column_name(f"{where}.type_name", name)
        except InvalidArgument as exc:
            for v in exc.violations:
                problems.add(v.field, f"struct field {name!r}: {v.description}")
    return parsed


def _struct_field_names(t: IcebergType) -> Iterator[str]:
    """The names of the struct fields inside a type, at any depth (they need the name rules)."""
    if isinstance(t, StructType):
        for f in t.fields:
            yield f.name
            yield from _struct_field_names(f.field_type)
    elif isinstance(t, ListType):
        yield from _struct_field_names(t.element_type)
    elif isinstance(t, MapType):
        yield from _struct_field_names(t.key_type)
        yield from _struct_field_names(t.value_type)


def _type_from_proto(
    message: schema_pb2.DataType,
    path: str,
    ids: Iterator[int],
    problems: _Problems,
    present: bool = True,
) -> IcebergType | None:
    kind = message.WhichOneof("kind") if present else None
    if kind is None:
        problems.add(path, "a type is required")
        return None
    if kind == "primitive":
        primitive = _PRIMITIVES.get(message.primitive)
        if primitive is None:
            problems.add(f"{path}.primitive", f"unknown primitive type {message.primitive}")
            return None
        return primitive()  # type: ignore[call-arg]  # pydantic root model, no args needed
    if kind == "decimal":
        p, s = message.decimal.precision, message.decimal.scale
        if not 1 <= p <= MAX_DECIMAL_PRECISION:
            problems.add(f"{path}.decimal.precision", f"must be 1 to 38, got {p}")
            return None
        if not 0 <= s <= p:
            problems.add(f"{path}.decimal.scale", f"must be 0 to the precision {p}, got {s}")
            return None
        return DecimalType(p, s)
    if kind == "fixed":
        if message.fixed.length <= 0:
            problems.add(f"{path}.fixed.length", f"must be positive, got {message.fixed.length}")
            return None
        return FixedType(message.fixed.length)
    if kind == "struct":
        if not message.struct.fields:
            problems.add(f"{path}.struct.fields", "a struct needs at least one field")
            return None
        return StructType(
            *_fields_from_proto(message.struct.fields, f"{path}.struct.fields", ids, problems)
        )
    if kind == "list":
        element_id = next(ids)
        element = _type_from_proto(
            message.list.element,
            f"{path}.list.element",
            ids,
            problems,
            message.list.HasField("element"),
        )
        if element is None:
            return None
        return ListType(element_id, element, element_required=message.list.element_required)
    # map
    key_id, value_id = next(ids), next(ids)
    key = _type_from_proto(
        message.map.key, f"{path}.map.key", ids, problems, message.map.HasField("key")
    )
    value = _type_from_proto(
        message.map.value, f"{path}.map.value", ids, problems, message.map.HasField("value")
    )
    if key is None or value is None:
        return None
    return MapType(key_id, key, value_id, value, value_required=message.map.value_required)


def _parse_transform(
    text: str, field: str, problems: _Problems
) -> Transform[object, object] | None:
    try:
        transform: Transform[object, object] = parse_transform(text or "identity")
        if isinstance(transform, UnknownTransform):
            raise ValueError(text)
    # pyiceberg's ValidationError (not a ValueError): "bucket[-1]" does not match bucket[N].
    except (ValueError, TypeError, IcebergValidationError):
        problems.add(
            field,
            f"unknown transform {text!r}: use identity, bucket[N], truncate[W], year, month, "
            "day, hour or void",
        )
        return None
    if isinstance(transform, BucketTransform) and transform.num_buckets <= 0:
        problems.add(field, "bucket count must be positive")
        return None
    if isinstance(transform, TruncateTransform) and transform.width <= 0:
        problems.add(field, "truncate width must be positive")
        return None
    return transform


def _default_partition_name(column: str, transform: Transform[object, object]) -> str:
    base = column.replace(".", "_")
    if isinstance(transform, IdentityTransform):
        return base
    suffix = {
        BucketTransform: "bucket",
        TruncateTransform: "trunc",
        YearTransform: "year",
        MonthTransform: "month",
        DayTransform: "day",
        HourTransform: "hour",
        VoidTransform: "null",
    }.get(type(transform), "part")
    return f"{base}_{suffix}"


def partition_spec_from_proto(
    message: schema_pb2.PartitionSpec, schema: Schema, *, field: str = "partition_spec"
) -> PartitionSpec:
    """Converts a client's partition spec, resolving column names against ``schema``.

    Raises:
        InvalidArgument: Unknown column, unknown transform, a transform that does not apply
            to the column's type, or duplicate partition names.
    """
    problems = _Problems()
    fields: list[PartitionField] = []
    names: set[str] = set()
    for i, pf in enumerate(message.fields):
        where = f"{field}.fields[{i}]"
        source = _find_column(schema, pf.source_column, f"{where}.source_column", problems)
        transform = _parse_transform(pf.transform, f"{where}.transform", problems)
        if source is None or transform is None:
            continue
        if not transform.can_transform(source.field_type):
            problems.add(
                f"{where}.transform",
                f"{transform} does not apply to column {pf.source_column!r} of type "
                f"{source.field_type}",
            )
            continue
        name = pf.name or _default_partition_name(pf.source_column, transform)
        if name in names:
            problems.add(f"{where}.name", f"duplicate partition field name {name!r}")
            continue
        names.add(name)
        fields.append(PartitionField(source.field_id, 1000 + len(fields), transform, name))
    problems.raise_if_any("partition spec")
    return PartitionSpec(*fields)


def sort_order_from_proto(
    message: schema_pb2.SortOrder, schema: Schema, *, field: str = "sort_order"
) -> SortOrder:
    """Converts a client's sort order, resolving column names against ``schema``.

    Raises:
        InvalidArgument: Unknown column or transform, or a transform not valid for the type.
    """
    problems = _Problems()
    fields: list[SortField] = []
    for i, sf in enumerate(message.fields):
        where = f"{field}.fields[{i}]"
        source = _find_column(schema, sf.source_column, f"{where}.source_column", problems)
        transform = _parse_transform(sf.transform, f"{where}.transform", problems)
        if source is None or transform is None:
            continue
        if not transform.can_transform(source.field_type):
            problems.add(f"{where}.transform", f"{transform} does not apply to {source.field_type}")
            continue
        descending = sf.direction == schema_pb2.SORT_DIRECTION_DESC
        if sf.null_order == schema_pb2.NULL_ORDER_UNSPECIFIED:
            null_order = NullOrder.NULLS_LAST if descending else NullOrder.NULLS_FIRST
        elif sf.null_order == schema_pb2.NULL_ORDER_NULLS_LAST:
            null_order = NullOrder.NULLS_LAST
        else:
            null_order = NullOrder.NULLS_FIRST
        fields.append(
            SortField(
                source_id=source.field_id,
                transform=transform,
                direction=SortDirection.DESC if descending else SortDirection.ASC,
                null_order=null_order,
            )
        )
    problems.raise_if_any("sort order")
    return SortOrder(*fields) if fields else SortOrder()


def _find_column(schema: Schema, name: str, field: str, problems: _Problems) -> NestedField | None:
    if not name:
        problems.add(field, "a column name is required")
        return None
    try:
        column = schema.find_field(name, case_sensitive=True)
    except ValueError:
        problems.add(field, f"no column named {name!r}")
        return None
    if not isinstance(column.field_type, PrimitiveType):
        problems.add(field, f"column {name!r} is not a primitive column")
        return None
    return column


# --- Iceberg -> proto -------------------------------------------------------------------


def schema_to_proto(schema: Schema) -> schema_pb2.Schema:
    """Converts an Iceberg schema to its proto form."""
    ids = list(schema.identifier_field_ids)
    return schema_pb2.Schema(
        schema_id=schema.schema_id,
        fields=[_field_to_proto(f) for f in schema.fields],
        identifier_field_ids=ids,
        identifier_field_names=[schema.find_column_name(i) or "" for i in ids],
    )


def _field_to_proto(f: NestedField) -> schema_pb2.Field:
    return schema_pb2.Field(
        id=f.field_id,
        name=f.name,
        type=type_to_proto(f.field_type),
        required=f.required,
        doc=f.doc or "",
        type_name=type_name(f.field_type),
    )


def type_to_proto(t: IcebergType) -> schema_pb2.DataType:
    """Converts an Iceberg type to its proto form.

    Raises:
        ValueError: The type has no proto form (an Iceberg type newer than this contract).
    """
    if isinstance(t, DecimalType):
        return schema_pb2.DataType(
            decimal=schema_pb2.DecimalType(precision=t.precision, scale=t.scale)
        )
    if isinstance(t, FixedType):
        return schema_pb2.DataType(fixed=schema_pb2.FixedType(length=len(t)))
    if isinstance(t, StructType):
        return schema_pb2.DataType(
            struct=schema_pb2.StructType(fields=[_field_to_proto(f) for f in t.fields])
        )
    if isinstance(t, ListType):
        return schema_pb2.DataType(
            list=schema_pb2.ListType(
                element_id=t.element_id,
                element=type_to_proto(t.element_type),
                element_required=t.element_required,
            )
        )
    if isinstance(t, MapType):
        return schema_pb2.DataType(
            map=schema_pb2.MapType(
                key_id=t.key_id,
                key=type_to_proto(t.key_type),
                value_id=t.value_id,
                value=type_to_proto(t.value_type),
                value_required=t.value_required,
            )
        )
    primitive = _PRIMITIVE_TO_PROTO.get(type(t))  # type: ignore[arg-type]
    if primitive is None:
        raise ValueError(f"Iceberg type {t} has no lakehouse.v1 representation")
    return schema_pb2.DataType(primitive=primitive)  # type: ignore[arg-type]


def partition_spec_to_proto(spec: PartitionSpec, schema: Schema) -> schema_pb2.PartitionSpec:
    """Converts an Iceberg partition spec to its proto form."""
    return schema_pb2.PartitionSpec(
        spec_id=spec.spec_id,
        fields=[
            schema_pb2.PartitionField(
                source_column=schema.find_column_name(f.source_id) or "",
                source_id=f.source_id,
                field_id=f.field_id,
                name=f.name,
                transform=str(f.transform),
            )
            for f in spec.fields
        ],
    )


def sort_order_to_proto(order: SortOrder, schema: Schema) -> schema_pb2.SortOrder:
    """Converts an Iceberg sort order to its proto form."""
    return schema_pb2.SortOrder(
        order_id=order.order_id,
        fields=[
            schema_pb2.SortField(
                source_column=schema.find_column_name(f.source_id) or "",
                source_id=f.source_id,
                transform=str(f.transform),
                direction=(
                    schema_pb2.SORT_DIRECTION_DESC
                    if f.direction == SortDirection.DESC
                    else schema_pb2.SORT_DIRECTION_ASC
                ),
                null_order=(
                    schema_pb2.NULL_ORDER_NULLS_LAST
                    if f.null_order == NullOrder.NULLS_LAST
                    else schema_pb2.NULL_ORDER_NULLS_FIRST
                ),
            )
            for f in order.fields
        ],
    )
