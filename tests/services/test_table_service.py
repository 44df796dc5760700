"""TableService over the wire: the generated stub against a real server, on every backend.

Each test runs on SQLite + local disk and on PostgreSQL + S3 (moto's server).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from lakehouse.v1 import schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
TSTZ = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ)


def orders_schema() -> schema_pb2.Schema:
    return schema_pb2.Schema(
        fields=[
            schema_pb2.Field(name="id", type=LONG, required=True, doc="order id"),
            schema_pb2.Field(name="region", type=STRING),
            schema_pb2.Field(name="ts", type=TSTZ),
            schema_pb2.Field(
                name="amount",
                type=schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=12, scale=2)),
            ),
            schema_pb2.Field(
                name="items",
                type=schema_pb2.DataType(
                    list=schema_pb2.ListType(
                        element=schema_pb2.DataType(
                            struct=schema_pb2.StructType(
                                fields=[
                                    schema_pb2.Field(name="sku", type=STRING, required=True),
                                    schema_pb2.Field(name="qty", type=LONG),
                                ]
                            )
                        ),
                        element_required=True,
                    )
                ),
            ),
            schema_pb2.Field(
                name="attrs",
                type=schema_pb2.DataType(map=schema_pb2.MapType(key=STRING, value=STRING)),
            ),
        ],
        identifier_field_names=["id"],
    )


async def create_orders(stub: Any, namespace: str = "sales", table: str = "orders") -> Any:
    return (
        await stub.CreateTable(
            pb.CreateTableRequest(
                namespace=namespace,
                table=table,
                schema=orders_schema(),
                partition_spec=schema_pb2.PartitionSpec(
                    fields=[
                        schema_pb2.PartitionField(source_column="ts", transform="day"),
                        schema_pb2.PartitionField(source_column="region", transform="identity"),
                    ]
                ),
                sort_order=schema_pb2.SortOrder(
                    fields=[
                        schema_pb2.SortField(
                            source_column="id", direction=schema_pb2.SORT_DIRECTION_DESC
                        )
                    ]
                ),
                properties={"owner": "team-a"},
            )
        )
    ).table


async def expect_error(call: Any, code: grpc.StatusCode, reason: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    details = rpc_error_details(exc.value)
    assert details.code == code, details.message
    assert details.reason == reason, details
    assert details.domain == "lakehouse.v1"
    assert details.error_info_count == 1
    return details


async def test_namespace_lifecycle(table_stub: Any) -> None:
    created = await table_stub.CreateNamespace(
        pb.CreateNamespaceRequest(name="sales", properties={"owner": "team-a"})
    )
    assert created.namespace.name == "sales"
    assert dict(created.namespace.properties) == {"owner": "team-a"}

    got = await table_stub.GetNamespace(pb.GetNamespaceRequest(name="sales"))
    assert dict(got.namespace.properties) == {"owner": "team-a"}

    updated = await table_stub.UpdateNamespaceProperties(
        pb.UpdateNamespacePropertiesRequest(
            name="sales", updates={"comment": "orders"}, removals=["owner", "ghost"]
        )
    )
    assert dict(updated.namespace.properties) == {"comment": "orders"}
    assert list(updated.updated) == ["comment"]
    assert list(updated.removed) == ["owner"]
    assert list(updated.missing) == ["ghost"]

    await table_stub.DeleteNamespace(pb.DeleteNamespaceRequest(name="sales"))
    await expect_error(
        table_stub.GetNamespace(pb.GetNamespaceRequest(name="sales")),
        grpc.StatusCode.NOT_FOUND,
        "NAMESPACE_NOT_FOUND",
    )


async def test_list_namespaces_pages_through_all(table_stub: Any) -> None:
    names = [f"ns_{i:02d}" for i in range(7)]
    for name in reversed(names):
        await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name=name))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await table_stub.ListNamespaces(
            pb.ListNamespacesRequest(page_size=3, page_token=token)
        )
        pages += 1
        seen += [ns.name for ns in page.namespaces]
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    assert pages == 3


async def test_table_lifecycle(table_stub: Any, backend: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="sales"))
    table = await create_orders(table_stub)

    assert table.namespace == "sales"
    assert table.name == "orders"
    assert len(table.id) == 36
    assert [f.name for f in table.schema.fields] == [
        "id",
        "region",
        "ts",
        "amount",
        "items",
        "attrs",
    ]
    assert table.schema.fields[0].required and table.schema.fields[0].doc == "order id"
    items = table.schema.fields[4].type.list
    assert [f.name for f in items.element.struct.fields] == ["sku", "qty"]
    assert table.schema.fields[5].type.map.key.primitive == schema_pb2.PRIMITIVE_TYPE_STRING
    assert list(table.schema.identifier_field_names) == ["id"]
    assert [(f.source_column, f.transform) for f in table.partition_spec.fields] == [
        ("ts", "day"),
        ("region", "identity"),
    ]
    assert table.sort_order.fields[0].direction == schema_pb2.SORT_DIRECTION_DESC
    assert table.properties["owner"] == "team-a"
    assert table.etag == table.metadata_location
    assert table.metadata_location.startswith(table.location)
    expected_scheme = "s3://" if "s3" in backend.warehouse else "file://"
    assert table.location.startswith(expected_scheme)
    assert not table.HasField("current_snapshot_id")
    assert table.stats.row_count == 0
    assert table.create_time.seconds > 0
    assert table.update_time.ToMilliseconds() >= table.create_time.ToMilliseconds()

    got = (await table_stub.GetTable(pb.GetTableRequest(namespace="sales", table="orders"))).table
    assert got == table

    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="sales"))
    assert [(t.namespace, t.table) for t in listed.tables] == [("sales", "orders")]
    assert listed.next_page_token == ""

    await expect_error(
        table_stub.DeleteNamespace(pb.DeleteNamespaceRequest(name="sales")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NAMESPACE_NOT_EMPTY",
    )

    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="archive"))
    renamed = (
        await table_stub.RenameTable(
            pb.RenameTableRequest(
                namespace="sales", table="orders", new_namespace="archive", new_table="orders_2024"
            )
        )
    ).table
    assert (renamed.namespace, renamed.name, renamed.id) == ("archive", "orders_2024", table.id)
    await expect_error(
        table_stub.GetTable(pb.GetTableRequest(namespace="sales", table="orders")),
        grpc.StatusCode.NOT_FOUND,
        "TABLE_NOT_FOUND",
    )

    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="archive", table="orders_2024"))
    await expect_error(
        table_stub.GetTable(pb.GetTableRequest(namespace="archive", table="orders_2024")),
        grpc.StatusCode.NOT_FOUND,
        "TABLE_NOT_FOUND",
    )
    await table_stub.DeleteNamespace(pb.DeleteNamespaceRequest(name="sales"))


async def test_list_tables_pages(table_stub: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="many"))
    for i in range(5):
        await create_orders(table_stub, "many", f"t{i}")
    first = await table_stub.ListTables(pb.ListTablesRequest(namespace="many", page_size=2))
    assert [t.table for t in first.tables] == ["t0", "t1"]
    second = await table_stub.ListTables(
        pb.ListTablesRequest(namespace="many", page_size=10, page_token=first.next_page_token)
    )
    assert [t.table for t in second.tables] == ["t2", "t3", "t4"]
    assert second.next_page_token == ""
    # a token of one namespace's list is refused for another's
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="other"))
    await expect_error(
        table_stub.ListTables(
            pb.ListTablesRequest(namespace="other", page_token=first.next_page_token)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_delete_with_purge_removes_files_and_without_keeps_them(
    table_stub: Any, server: Any
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="p"))
    kept = await create_orders(table_stub, "p", "kept")
    purged = await create_orders(table_stub, "p", "purged")

    async def objects_under(location: str) -> list[str]:
        return [o.uri async for o in server.store.list_objects(location.rstrip("/") + "/")]

    assert await objects_under(kept.location)
    assert await objects_under(purged.location)

    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="p", table="kept"))
    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="p", table="purged", purge=True))

    assert await objects_under(kept.location), "a drop without purge must keep the files"
    assert await objects_under(purged.location) == []


async def test_purging_a_reused_name_leaves_the_renamed_table_whole(
    table_stub: Any, server: Any
) -> None:
    # Rename a table away, create a new one under the old name, purge that one: the renamed
    # table keeps its files (each table has a folder of its own, not one per name).
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="r"))
    first = await create_orders(table_stub, "r", "orders")
    await table_stub.RenameTable(
        pb.RenameTableRequest(namespace="r", table="orders", new_table="orders_2025")
    )
    second = await create_orders(table_stub, "r", "orders")
    assert second.location != first.location
    assert not second.location.startswith(first.location.rstrip("/") + "/")
    assert not first.location.startswith(second.location.rstrip("/") + "/")

    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="r", table="orders", purge=True))

    kept = [o.uri async for o in server.store.list_objects(first.location.rstrip("/") + "/")]
    assert kept, "the renamed table's files were purged with the other table"
    renamed = await table_stub.GetTable(pb.GetTableRequest(namespace="r", table="orders_2025"))
    assert renamed.table.location == first.location


async def test_duplicates_and_unknowns(table_stub: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="sales"))
    await expect_error(
        table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="sales")),
        grpc.StatusCode.ALREADY_EXISTS,
        "NAMESPACE_ALREADY_EXISTS",
    )
    await create_orders(table_stub)
    await expect_error(
        create_orders(table_stub),
        grpc.StatusCode.ALREADY_EXISTS,
        "TABLE_ALREADY_EXISTS",
    )
    await expect_error(
        create_orders(table_stub, namespace="nowhere"),
        grpc.StatusCode.NOT_FOUND,
        "NAMESPACE_NOT_FOUND",
    )
    await expect_error(
        table_stub.ListTables(pb.ListTablesRequest(namespace="nowhere")),
        grpc.StatusCode.NOT_FOUND,
        "NAMESPACE_NOT_FOUND",
    )
    await expect_error(
        table_stub.DeleteTable(pb.DeleteTableRequest(namespace="sales", table="nope")),
        grpc.StatusCode.NOT_FOUND,
        "TABLE_NOT_FOUND",
    )
    await expect_error(
        table_stub.DeleteNamespace(pb.DeleteNamespaceRequest(name="nowhere")),
        grpc.StatusCode.NOT_FOUND,
        "NAMESPACE_NOT_FOUND",
    )
    await create_orders(table_stub, table="taken")
    await expect_error(
        table_stub.RenameTable(
            pb.RenameTableRequest(namespace="sales", table="orders", new_table="taken")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "TABLE_ALREADY_EXISTS",
    )
    await expect_error(
        table_stub.RenameTable(
            pb.RenameTableRequest(
                namespace="sales", table="orders", new_namespace="nowhere", new_table="x"
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "NAMESPACE_NOT_FOUND",
    )
    # the failed renames changed nothing
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="sales"))
    assert sorted(t.table for t in listed.tables) == ["orders", "taken"]
