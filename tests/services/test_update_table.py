"""UpdateTable: typed changes applied atomically in one commit, with optimistic etags."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from lakehouse.v1 import schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

INT = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_INT)
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
FLOAT = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_FLOAT)
DOUBLE = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_DOUBLE)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
TS = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ)


def dec(p: int, s: int) -> schema_pb2.DataType:
    return schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=p, scale=s))


async def make_table(stub: Any) -> Any:
    await stub.CreateNamespace(pb.CreateNamespaceRequest(name="evo"))
    schema = schema_pb2.Schema(
        fields=[
            schema_pb2.Field(name="id", type=LONG, required=True),
            schema_pb2.Field(name="qty", type=INT, required=True),
            schema_pb2.Field(name="score", type=FLOAT),
            schema_pb2.Field(name="price", type=dec(10, 2)),
            schema_pb2.Field(name="ts", type=TS),
            schema_pb2.Field(
                name="address",
                type=schema_pb2.DataType(
                    struct=schema_pb2.StructType(
                        fields=[schema_pb2.Field(name="city", type=STRING)]
                    )
                ),
            ),
            schema_pb2.Field(name="legacy", type=STRING),
        ],
        identifier_field_names=["id"],
    )
    return (
        await stub.CreateTable(
            pb.CreateTableRequest(
                namespace="evo",
                table="t",
                schema=schema,
                properties={"user.keep": "1", "user.drop": "2"},
            )
        )
    ).table


def change(**kwargs: Any) -> pb.TableChange:
    return pb.TableChange(**kwargs)


def fields_by_name(table: Any) -> dict[str, Any]:
    return {f.name: f for f in table.schema.fields}


async def test_every_change_kind_in_one_atomic_commit(table_stub: Any) -> None:
    before = await make_table(table_stub)
    changes = [
        change(
            add_column=pb.AddColumn(field=schema_pb2.Field(name="note", type=STRING, doc="free"))
        ),
        change(
            add_column=pb.AddColumn(
                parent="address", field=schema_pb2.Field(name="zip", type=STRING)
            )
        ),
        change(rename_column=pb.RenameColumn(column="score", new_name="rating")),
        change(drop_column=pb.DropColumn(column="legacy")),
        change(widen_column_type=pb.WidenColumnType(column="qty", type=LONG)),
        change(widen_column_type=pb.WidenColumnType(column="rating", type=DOUBLE)),
        change(widen_column_type=pb.WidenColumnType(column="price", type=dec(18, 2))),
        change(make_column_optional=pb.MakeColumnOptional(column="qty")),
        change(update_column_doc=pb.UpdateColumnDoc(column="id", doc="the key")),
        change(set_properties=pb.SetProperties(properties={"owner": "team-b"})),
        change(remove_properties=pb.RemoveProperties(keys=["user.drop"])),
        change(
            add_partition_field=pb.AddPartitionField(
                field=schema_pb2.PartitionField(source_column="ts", transform="day")
            )
        ),
        change(
            replace_sort_order=pb.ReplaceSortOrder(
                sort_order=schema_pb2.SortOrder(
                    fields=[
                        schema_pb2.SortField(
                            source_column="id", direction=schema_pb2.SORT_DIRECTION_DESC
                        )
                    ]
                )
            )
        ),
    ]
    after = (
        await table_stub.UpdateTable(
            pb.UpdateTableRequest(
                namespace="evo", table="t", changes=changes, expected_etag=before.etag
            )
        )
    ).table
    f = fields_by_name(after)
    assert "legacy" not in f and "score" not in f
    assert f["note"].doc == "free" and not f["note"].required
    assert [x.name for x in f["address"].type.struct.fields] == ["city", "zip"]
    assert f["qty"].type.primitive == schema_pb2.PRIMITIVE_TYPE_LONG and not f["qty"].required
    assert f["rating"].type.primitive == schema_pb2.PRIMITIVE_TYPE_DOUBLE
    assert f["rating"].id == fields_by_name(before)["score"].id  # renamed, same column
    assert f["price"].type.decimal.precision == 18
    assert f["id"].doc == "the key"
    assert after.properties["owner"] == "team-b" and "user.drop" not in after.properties
    assert after.properties["user.keep"] == "1"
    assert [(p.source_column, p.transform) for p in after.partition_spec.fields] == [("ts", "day")]
    assert after.sort_order.fields[0].direction == schema_pb2.SORT_DIRECTION_DESC
    assert after.etag != before.etag
    assert after.schema.schema_id > before.schema.schema_id

    # partition evolution back, and a second update with the new etag
    again = (
        await table_stub.UpdateTable(
            pb.UpdateTableRequest(
                namespace="evo",
                table="t",
                changes=[
                    change(remove_partition_field=pb.RemovePartitionField(name="ts_day")),
                    change(replace_sort_order=pb.ReplaceSortOrder()),
                ],
                expected_etag=after.etag,
            )
        )
    ).table
    assert list(again.partition_spec.fields) == []
    assert list(again.sort_order.fields) == []


async def test_stale_etag_is_aborted_and_changes_nothing(table_stub: Any) -> None:
    before = await make_table(table_stub)
    await table_stub.UpdateTable(
        pb.UpdateTableRequest(
            namespace="evo",
            table="t",
            changes=[change(set_properties=pb.SetProperties(properties={"user.a": "1"}))],
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.UpdateTable(
            pb.UpdateTableRequest(
                namespace="evo",
                table="t",
                changes=[change(drop_column=pb.DropColumn(column="legacy"))],
                expected_etag=before.etag,
            )
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.ABORTED
    assert details.reason == "ETAG_MISMATCH"
    now = (await table_stub.GetTable(pb.GetTableRequest(namespace="evo", table="t"))).table
    assert "legacy" in fields_by_name(now)


INCOMPATIBLE = {
    "narrowing": (
        change(widen_column_type=pb.WidenColumnType(column="id", type=INT)),
        "changes[1].widen_column_type.type",
    ),
    "decimal scale": (
        change(widen_column_type=pb.WidenColumnType(column="price", type=dec(12, 3))),
        "changes[1].widen_column_type.type",
    ),
    "drop identifier": (
        change(drop_column=pb.DropColumn(column="id")),
        "changes[1].drop_column.column",
    ),
    "duplicate name": (
        change(add_column=pb.AddColumn(field=schema_pb2.Field(name="qty", type=STRING))),
        "changes[1].add_column",
    ),
    "unknown column": (
        change(rename_column=pb.RenameColumn(column="ghost", new_name="x")),
        "changes[1].rename_column.column",
    ),
    "required column on a table": (
        change(
            add_column=pb.AddColumn(field=schema_pb2.Field(name="r", type=STRING, required=True))
        ),
        "changes[1].add_column",
    ),
    "unknown partition field": (
        change(remove_partition_field=pb.RemovePartitionField(name="nope")),
        "changes[1].remove_partition_field.name",
    ),
    "bad transform": (
        change(
            add_partition_field=pb.AddPartitionField(
                field=schema_pb2.PartitionField(source_column="id", transform="squish")
            )
        ),
        "changes[1].add_partition_field.field.transform",
    ),
    "reserved property": (
        change(set_properties=pb.SetProperties(properties={"format-version": "1"})),
        "changes[1].set_properties.properties",
    ),
    "bad column name": (
        change(add_column=pb.AddColumn(field=schema_pb2.Field(name="a.b", type=STRING))),
        "changes[1].add_column.field.name",
    ),
    "no type": (
        change(add_column=pb.AddColumn(field=schema_pb2.Field(name="x"))),
        "changes[1].add_column.field.type",
    ),
    "empty change": (change(), "changes[1]"),
}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("case", list(INCOMPATIBLE))
async def test_incompatible_change_is_invalid_and_nothing_applies(
    table_stub: Any, case: str
) -> None:
    before = await make_table(table_stub)
    bad, field = INCOMPATIBLE[case]
    first = change(set_properties=pb.SetProperties(properties={"user.applied": "yes"}))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.UpdateTable(
            pb.UpdateTableRequest(namespace="evo", table="t", changes=[first, bad])
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.violated_fields and details.violated_fields[0].startswith(field), details
    now = (await table_stub.GetTable(pb.GetTableRequest(namespace="evo", table="t"))).table
    assert now.etag == before.etag
    assert "user.applied" not in now.properties


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_update_needs_changes_and_a_table(table_stub: Any) -> None:
    await make_table(table_stub)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.UpdateTable(pb.UpdateTableRequest(namespace="evo", table="t"))
    assert rpc_error_details(exc.value).violated_fields == ["changes"]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.UpdateTable(
            pb.UpdateTableRequest(
                namespace="evo",
                table="nope",
                changes=[change(drop_column=pb.DropColumn(column="x"))],
            )
        )
    assert rpc_error_details(exc.value).reason == "TABLE_NOT_FOUND"
