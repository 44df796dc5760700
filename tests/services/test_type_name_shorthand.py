"""The schema shorthand over the wire: ``type_name`` ("decimal(12,2)") beside the typed form."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from services.test_table_service import orders_schema

from fixtures.grpc_errors import rpc_error_details
from lakehouse.v1 import schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

# The same columns as orders_schema(), spelled as text.
SHORTHAND_FIELDS = [
    {"name": "id", "typeName": "long", "required": True, "doc": "order id"},
    {"name": "region", "typeName": "string"},
    {"name": "ts", "typeName": "timestamptz"},
    {"name": "amount", "typeName": "decimal(12,2)"},
    {"name": "items", "typeName": "list<struct<sku:string not null,qty:long> not null>"},
    {"name": "attrs", "typeName": "map<string,string>"},
]


def shorthand_schema() -> schema_pb2.Schema:
    # Built from JSON, as grpcurl users write it.
    return json_format.ParseDict(
        {"fields": SHORTHAND_FIELDS, "identifierFieldNames": ["id"]}, schema_pb2.Schema()
    )


async def test_both_spellings_create_the_same_schema(table_stub: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="s"))
    typed = await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="s", table="typed", schema=orders_schema())
    )
    text = await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="s", table="text", schema=shorthand_schema())
    )
    assert text.table.schema == typed.table.schema
    got = (await table_stub.GetTable(pb.GetTableRequest(namespace="s", table="text"))).table
    # Read back, each field carries both forms.
    assert [f.type_name for f in got.schema.fields] == [f["typeName"] for f in SHORTHAND_FIELDS]
    assert got.schema.fields[3].type.decimal.precision == 12
    items = got.schema.fields[4].type.list
    assert items.element_required
    assert [f.type_name for f in items.element.struct.fields] == ["string", "long"]


@pytest.mark.parametrize(
    ("field", "where", "says"),
    [
        (schema_pb2.Field(name="a", type_name="decimal(40,2)"), "type_name", "1 to 38"),
        (schema_pb2.Field(name="a", type_name="lnog"), "type_name", "unknown type 'lnog'"),
        (
            schema_pb2.Field(name="a", type_name="struct<`a.b`:int>"),
            "type_name",
            "struct field 'a.b': must not contain '.'",
        ),
        (
            schema_pb2.Field(
                name="a",
                type_name="int",
                type=schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG),
            ),
            "type_name",
            "type is long but type_name is 'int'",
        ),
        (schema_pb2.Field(name="a"), "type", "a type is required"),
    ],
)
async def test_bad_type_names_are_refused_and_change_nothing(
    table_stub: Any, field: schema_pb2.Field, where: str, says: str
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="s"))
    ok = schema_pb2.Field(name="id", type_name="long")
    request = pb.CreateTableRequest(
        namespace="s", table="t", schema=schema_pb2.Schema(fields=[ok, field])
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.CreateTable(request)
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_SCHEMA"
    assert details.violated_fields == [f"schema.fields[1].{where}"]
    assert says in details.field_violations[0][1]
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="s"))
    assert list(listed.tables) == []


async def test_a_schema_read_back_creates_the_same_table(table_stub: Any) -> None:
    # GetTable returns type and type_name side by side; they agree, so the copy is accepted.
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="s"))
    first = await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="s", table="a", schema=shorthand_schema())
    )
    assert all(f.HasField("type") and f.type_name for f in first.table.schema.fields)
    copy = await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="s", table="b", schema=first.table.schema)
    )
    assert copy.table.schema == first.table.schema


async def test_add_column_takes_a_type_name(table_stub: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="s"))
    schema = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type_name="long")])
    await table_stub.CreateTable(pb.CreateTableRequest(namespace="s", table="t", schema=schema))
    add = pb.TableChange(
        add_column=pb.AddColumn(field=schema_pb2.Field(name="tags", type_name="list<string>"))
    )
    updated = await table_stub.UpdateTable(
        pb.UpdateTableRequest(namespace="s", table="t", changes=[add])
    )
    assert updated.table.schema.fields[1].type_name == "list<string>"
    bad = pb.TableChange(
        add_column=pb.AddColumn(field=schema_pb2.Field(name="x", type_name="list<"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.UpdateTable(pb.UpdateTableRequest(namespace="s", table="t", changes=[bad]))
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violated_fields == ["changes[0].add_column.field.type_name"]
