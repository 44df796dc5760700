"""Bad input: every malformed request gets a deliberate error and changes nothing."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from lakehouse.v1 import schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
GOOD_SCHEMA = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG, required=True)])

BAD_NAMES = ["", "a/b", "..", "tab\there", "nul\x00", "x" * 300, "Upper", "../../etc", "a.b"]


async def assert_invalid(call: Any, field: str, reason: str = "INVALID_NAME") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.reason == reason
    assert field in details.violated_fields, details.field_violations


async def assert_no_namespaces(stub: Any, expected: list[str]) -> None:
    listed = await stub.ListNamespaces(pb.ListNamespacesRequest())
    assert [n.name for n in listed.namespaces] == expected


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
async def test_bad_namespace_names(table_stub: Any, name: str) -> None:
    await assert_invalid(table_stub.CreateNamespace(pb.CreateNamespaceRequest(name=name)), "name")
    await assert_invalid(table_stub.GetNamespace(pb.GetNamespaceRequest(name=name)), "name")
    await assert_invalid(table_stub.ListTables(pb.ListTablesRequest(namespace=name)), "namespace")
    await assert_no_namespaces(table_stub, [])


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
async def test_bad_table_names(table_stub: Any, name: str) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="ok"))
    await assert_invalid(
        table_stub.CreateTable(
            pb.CreateTableRequest(namespace="ok", table=name, schema=GOOD_SCHEMA)
        ),
        "table",
    )
    await assert_invalid(
        table_stub.CreateTable(
            pb.CreateTableRequest(namespace=name, table="t", schema=GOOD_SCHEMA)
        ),
        "namespace",
    )
    await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="ok", table="t", schema=GOOD_SCHEMA)
    )
    await assert_invalid(
        table_stub.RenameTable(pb.RenameTableRequest(namespace="ok", table="t", new_table=name)),
        "new_table",
    )
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="ok"))
    assert [t.table for t in listed.tables] == ["t"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_bad_schemas_create_nothing(table_stub: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="ok"))
    cases = {
        "schema": pb.CreateTableRequest(namespace="ok", table="t"),
        "schema.fields": pb.CreateTableRequest(
            namespace="ok", table="t", schema=schema_pb2.Schema()
        ),
        "schema.fields[1].name": pb.CreateTableRequest(
            namespace="ok",
            table="t",
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(name="id", type=LONG),
                    schema_pb2.Field(name="id", type=LONG),
                ]
            ),
        ),
        "schema.fields[0].type.primitive": pb.CreateTableRequest(
            namespace="ok",
            table="t",
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(
                        name="x",
                        type=schema_pb2.DataType(primitive=77),  # type: ignore[arg-type]
                    )
                ]
            ),
        ),
        "schema.fields[0].type": pb.CreateTableRequest(
            namespace="ok",
            table="t",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="x")]),
        ),
        "partition_spec.fields[0].source_column": pb.CreateTableRequest(
            namespace="ok",
            table="t",
            schema=GOOD_SCHEMA,
            partition_spec=schema_pb2.PartitionSpec(
                fields=[schema_pb2.PartitionField(source_column="ghost", transform="identity")]
            ),
        ),
        "partition_spec.fields[0].transform": pb.CreateTableRequest(
            namespace="ok",
            table="t",
            schema=GOOD_SCHEMA,
            partition_spec=schema_pb2.PartitionSpec(
                fields=[schema_pb2.PartitionField(source_column="id", transform="explode")]
            ),
        ),
        "sort_order.fields[0].source_column": pb.CreateTableRequest(
            namespace="ok",
            table="t",
            schema=GOOD_SCHEMA,
            sort_order=schema_pb2.SortOrder(fields=[schema_pb2.SortField(source_column="")]),
        ),
    }
    for field, request in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await table_stub.CreateTable(request)
        details = rpc_error_details(exc.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (field, details.message)
        assert field in details.violated_fields, (field, details.field_violations)
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="ok"))
    assert list(listed.tables) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_bad_paging(table_stub: Any) -> None:
    await assert_invalid(
        table_stub.ListNamespaces(pb.ListNamespacesRequest(page_size=-1)),
        "page_size",
        "INVALID_ARGUMENT",
    )
    for token in ["garbage", "eyJ2IjoxfQ", "%%%", "\u00e9\u00e9"]:
        await assert_invalid(
            table_stub.ListNamespaces(pb.ListNamespacesRequest(page_token=token)),
            "page_token",
            "INVALID_PAGE_TOKEN",
        )
    # a huge page size is clamped, not refused
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="a"))
    page = await table_stub.ListNamespaces(pb.ListNamespacesRequest(page_size=2**31 - 1))
    assert [n.name for n in page.namespaces] == ["a"]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_bad_properties(table_stub: Any) -> None:
    await assert_invalid(
        table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="p", properties={"": "x"})),
        "properties['']",
        "INVALID_PROPERTY",
    )
    await assert_invalid(
        table_stub.CreateNamespace(
            pb.CreateNamespaceRequest(name="p", properties={"exists": "no"})
        ),
        "properties",
        "INVALID_PROPERTY",
    )
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="p", properties={"k": "v"}))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.UpdateNamespaceProperties(
            pb.UpdateNamespacePropertiesRequest(name="p", updates={"k": "w"}, removals=["k"])
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = await table_stub.GetNamespace(pb.GetNamespaceRequest(name="p"))
    assert dict(got.namespace.properties) == {"k": "v"}
    await assert_no_namespaces(table_stub, ["p"])


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_rename_to_itself_is_refused(table_stub: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="ok"))
    await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="ok", table="t", schema=GOOD_SCHEMA)
    )
    await assert_invalid(
        table_stub.RenameTable(pb.RenameTableRequest(namespace="ok", table="t", new_table="t")),
        "new_table",
        "INVALID_ARGUMENT",
    )


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_typed_table_properties_are_checked_when_set(table_stub: Any) -> None:
    # pyiceberg parses these on every write: a bad value would fail them all (as INTERNAL).
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="ok"))
    for key, value in [
        ("write.object-storage.enabled", "dead-letter"),
        ("commit.retry.num-retries", "four"),
        ("write.parquet.row-group-limit", "-1"),
    ]:
        await assert_invalid(
            table_stub.CreateTable(
                pb.CreateTableRequest(
                    namespace="ok", table="t", schema=GOOD_SCHEMA, properties={key: value}
                )
            ),
            f"properties[{key!r}]",
            "INVALID_PROPERTY",
        )
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="ok"))
    assert list(listed.tables) == []

    await table_stub.CreateTable(
        pb.CreateTableRequest(
            namespace="ok",
            table="t",
            schema=GOOD_SCHEMA,
            properties={"write.object-storage.enabled": "false"},
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.UpdateTable(
            pb.UpdateTableRequest(
                namespace="ok",
                table="t",
                changes=[
                    pb.TableChange(
                        set_properties=pb.SetProperties(
                            properties={"write.object-storage.enabled": "maybe"}
                        )
                    )
                ],
            )
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "write.object-storage.enabled must be true or false" in details.message
    got = await table_stub.GetTable(pb.GetTableRequest(namespace="ok", table="t"))
    assert got.table.properties["write.object-storage.enabled"] == "false"
