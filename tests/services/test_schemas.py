"""Schema conversion: proto <-> Iceberg <-> Arrow round trips for every supported type."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.schema import Schema
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
    UUIDType,
)

from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.schemas import schema_from_arrow, schema_to_arrow
from lakehouse.services.schemas import (
    partition_spec_from_proto,
    partition_spec_to_proto,
    schema_from_proto,
    schema_to_proto,
    sort_order_from_proto,
    sort_order_to_proto,
)
from lakehouse.v1 import schema_pb2

PRIMITIVES = [
    BooleanType(),
    IntegerType(),
    LongType(),
    FloatType(),
    DoubleType(),
    DateType(),
    TimeType(),
    TimestampType(),
    TimestamptzType(),
    StringType(),
    UUIDType(),
    BinaryType(),
    DecimalType(38, 10),
    DecimalType(1, 0),
    FixedType(16),
]


def _every_type_schema() -> Schema:
    fields = [
        NestedField(i + 1, f"c{i}", t, required=i % 2 == 0, doc=f"doc {i}" if i % 3 == 0 else None)
        for i, t in enumerate(PRIMITIVES)
    ]
    n = len(fields)
    fields += [
        NestedField(
            n + 1,
            "nested_struct",
            StructType(
                NestedField(n + 2, "a", LongType(), required=True),
                NestedField(
                    n + 3,
                    "inner",
                    StructType(NestedField(n + 4, "b", StringType(), required=False)),
                    required=False,
                ),
            ),
            required=False,
        ),
        NestedField(
            n + 5, "tags", ListType(n + 6, StringType(), element_required=True), required=False
        ),
        NestedField(
            n + 7,
            "attrs",
            MapType(n + 8, StringType(), n + 9, DoubleType(), value_required=False),
            required=False,
        ),
        NestedField(
            n + 10,
            "list_of_structs",
            ListType(
                n + 11,
                StructType(NestedField(n + 12, "x", IntegerType(), required=False)),
                element_required=False,
            ),
            required=True,
        ),
    ]
    return Schema(*fields, identifier_field_ids=[1 + 2])  # c2: a required long


def test_proto_round_trip_preserves_every_type() -> None:
    original = _every_type_schema()
    proto = schema_to_proto(original)
    back = schema_from_proto(proto)
    # ids are reassigned depth-first from 1, which is how the original was numbered
    assert back.as_struct() == original.as_struct()
    assert back.identifier_field_ids == original.identifier_field_ids
    assert list(proto.identifier_field_names) == ["c2"]


@pytest.mark.parametrize("iceberg_type", PRIMITIVES, ids=str)
def test_each_primitive_round_trips_through_proto_and_arrow(iceberg_type: object) -> None:
    schema = Schema(NestedField(1, "v", iceberg_type, required=False))  # type: ignore[arg-type]
    assert schema_from_proto(schema_to_proto(schema)).as_struct() == schema.as_struct()
    assert schema_from_arrow(schema_to_arrow(schema)).as_struct() == schema.as_struct()


def test_arrow_round_trip_preserves_nested_types() -> None:
    original = _every_type_schema()
    arrow = schema_to_arrow(original)
    assert isinstance(arrow, pa.Schema)
    assert arrow.field("tags").type == pa.large_list(
        pa.field("element", pa.large_string(), False)
    ) or (
        pa.types.is_list(arrow.field("tags").type)
        or pa.types.is_large_list(arrow.field("tags").type)
    )
    assert schema_from_arrow(arrow).as_struct() == original.as_struct()


def test_arrow_schema_without_field_ids_maps_by_name() -> None:
    like = Schema(NestedField(7, "id", LongType(), required=True))
    plain = pa.schema([pa.field("id", pa.int64(), nullable=False)])
    assert schema_from_arrow(plain, like=like).find_field("id").field_id == 7


def _field(
    name: str, primitive: int = schema_pb2.PRIMITIVE_TYPE_LONG, **kw: object
) -> schema_pb2.Field:
    return schema_pb2.Field(name=name, type=schema_pb2.DataType(primitive=primitive), **kw)  # type: ignore[arg-type]


def _violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.violations}


def test_duplicate_names_are_rejected_case_insensitively() -> None:
    proto = schema_pb2.Schema(fields=[_field("id"), _field("ID")])
    with pytest.raises(InvalidArgument) as exc:
        schema_from_proto(proto)
    assert exc.value.reason == "INVALID_SCHEMA"
    assert "duplicate" in _violations(exc)["schema.fields[1].name"]


def test_every_problem_is_reported_with_its_path() -> None:
    proto = schema_pb2.Schema(
        fields=[
            schema_pb2.Field(name="no_type"),
            _field("bad", primitive=99),
            schema_pb2.Field(
                name="dec", type=schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=40))
            ),
            schema_pb2.Field(
                name="fx", type=schema_pb2.DataType(fixed=schema_pb2.FixedType(length=0))
            ),
            _field("a.b"),
            _field("ctl\x07"),
            schema_pb2.Field(name="lst", type=schema_pb2.DataType(list=schema_pb2.ListType())),
        ]
    )
    with pytest.raises(InvalidArgument) as exc:
        schema_from_proto(proto)
    v = _violations(exc)
    assert v["schema.fields[0].type"] == "a type is required"
    assert "unknown primitive type 99" in v["schema.fields[1].type.primitive"]
    assert "1 to 38" in v["schema.fields[2].type.decimal.precision"]
    assert "positive" in v["schema.fields[3].type.fixed.length"]
    assert "'.'" in v["schema.fields[4].name"]
    assert "U+0007" in v["schema.fields[5].name"]
    assert v["schema.fields[6].type.list.element"] == "a type is required"


def test_empty_schema_and_bad_identifier_fields_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="at least one column"):
        schema_from_proto(schema_pb2.Schema())
    proto = schema_pb2.Schema(
        fields=[_field("id"), _field("opt")], identifier_field_names=["opt", "missing"]
    )
    proto.fields[0].required = True
    with pytest.raises(InvalidArgument) as exc:
        schema_from_proto(proto)
    v = _violations(exc)
    assert "required primitive" in v["schema.identifier_field_names[0]"]
    assert "no top-level column" in v["schema.identifier_field_names[1]"]


def test_partition_spec_and_sort_order_resolve_columns_and_validate_transforms() -> None:
    schema = schema_from_proto(
        schema_pb2.Schema(
            fields=[_field("id"), _field("ts", primitive=schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ)]
        )
    )
    spec = partition_spec_from_proto(
        schema_pb2.PartitionSpec(
            fields=[
                schema_pb2.PartitionField(source_column="ts", transform="day"),
                schema_pb2.PartitionField(source_column="id", transform="bucket[8]"),
            ]
        ),
        schema,
    )
    as_proto = partition_spec_to_proto(spec, schema)
    assert [(f.source_column, f.transform, f.name) for f in as_proto.fields] == [
        ("ts", "day", "ts_day"),
        ("id", "bucket[8]", "id_bucket"),
    ]
    order = sort_order_from_proto(
        schema_pb2.SortOrder(
            fields=[
                schema_pb2.SortField(source_column="ts", direction=schema_pb2.SORT_DIRECTION_DESC)
            ]
        ),
        schema,
    )
    (sf,) = sort_order_to_proto(order, schema).fields
    assert (sf.source_column, sf.direction, sf.null_order) == (
        "ts",
        schema_pb2.SORT_DIRECTION_DESC,
        schema_pb2.NULL_ORDER_NULLS_LAST,
    )

    bad = schema_pb2.PartitionSpec(
        fields=[
            schema_pb2.PartitionField(source_column="nope", transform="identity"),
            schema_pb2.PartitionField(source_column="id", transform="day"),
            schema_pb2.PartitionField(source_column="id", transform="squash"),
            schema_pb2.PartitionField(source_column="id", transform="bucket[0]"),
        ]
    )
    with pytest.raises(InvalidArgument) as exc:
        partition_spec_from_proto(bad, schema)
    v = _violations(exc)
    assert "no column named 'nope'" in v["partition_spec.fields[0].source_column"]
    assert "does not apply" in v["partition_spec.fields[1].transform"]
    assert "unknown transform" in v["partition_spec.fields[2].transform"]
    assert "partition_spec.fields[3].transform" in v
