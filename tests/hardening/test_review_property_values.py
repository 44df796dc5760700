"""Allowed table properties with values pyiceberg's writers cannot use (issue 13 review).

The allow-list lets clients set ``write.parquet.*``, ``write.avro.compression-codec`` and the
metrics modes, but their values went unchecked: ``write.parquet.page-row-limit: 0`` made every
later write spin a catalog thread forever (eight such tables took every blocking thread, and
the service stopped answering catalog calls until restarted), and a codec or metrics mode
pyiceberg does not know failed every later write, as INTERNAL or as a misleading
SCHEMA_CHANGED. Each is now refused when set.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from fixtures.properties import assert_property_update_refused
from lakehouse.v1 import schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
SCHEMA = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG, required=True)])

#: Each value broke every later write of the table (found against a real server).
UNUSABLE = {
    "write.parquet.page-row-limit": "0",  # pyarrow's writer loops forever
    "write.parquet.row-group-limit": "0",
    "write.parquet.compression-codec": "bogus",  # INTERNAL on every write
    "write.avro.compression-codec": "bogus",
    "write.metadata.metrics.default": "bogus",
    "write.metadata.metrics.column.id": "truncate(0)",
}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("key", list(UNUSABLE))
async def test_create_table_refuses_a_value_the_writers_cannot_use(
    table_stub: Any, key: str
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.CreateTable(
            pb.CreateTableRequest(
                namespace="h", table="t", schema=SCHEMA, properties={key: UNUSABLE[key]}
            )
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.reason == "INVALID_PROPERTY"
    assert details.violated_fields == [f"properties[{key!r}]"]
    listed = await table_stub.ListTables(pb.ListTablesRequest(namespace="h"))
    assert list(listed.tables) == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("key", list(UNUSABLE))
async def test_update_table_refuses_a_value_the_writers_cannot_use(
    table_stub: Any, key: str
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    await table_stub.CreateTable(pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA))
    await assert_property_update_refused(table_stub, "h", "t", {key: UNUSABLE[key]}, key)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_usable_writer_values_are_accepted(table_stub: Any) -> None:
    usable = {
        "write.parquet.page-row-limit": "1000",
        "write.parquet.row-group-limit": "100000",
        "write.parquet.compression-codec": "uncompressed",
        "write.avro.compression-codec": "zstd",
        "write.metadata.metrics.default": "truncate(8)",
        "write.metadata.metrics.column.id": "full",
    }
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
    created = await table_stub.CreateTable(
        pb.CreateTableRequest(namespace="h", table="t", schema=SCHEMA, properties=usable)
    )
    for key, value in usable.items():
        assert created.table.properties[key] == value
