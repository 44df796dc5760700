"""lakehouse.client.arrow against the real server: ReadRows of a table pyiceberg wrote."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.iceberg import append
from lakehouse.client.arrow import (
    read_rows_batches_async,
    read_rows_request,
    read_rows_to_arrow_async,
    read_table,
    read_table_async,
)
from lakehouse.v1 import rows_pb2, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
TSTZ = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ)
ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("region", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("price", pa.decimal128(10, 2)),
        pa.field("tags", pa.list_(pa.string())),
    ]
)


def rows(count: int) -> pa.Table:
    ids = list(range(count))
    return pa.table(
        {
            "id": ids,
            "region": [None if i % 5 == 0 else ("eu" if i % 2 else "us") for i in ids],
            "ts": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i) for i in ids],
            "price": [decimal.Decimal(i) / 100 for i in ids],
            "tags": [["a", str(i)] for i in ids],
        },
        schema=ARROW_SCHEMA,
    )


async def create_table(stub: Any) -> None:
    await stub.CreateNamespace(pb.CreateNamespaceRequest(name="c"))
    fields = [
        schema_pb2.Field(name="id", type=LONG, required=True),
        schema_pb2.Field(name="region", type=STRING),
        schema_pb2.Field(name="ts", type=TSTZ),
        schema_pb2.Field(
            name="price",
            type=schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=10, scale=2)),
        ),
        schema_pb2.Field(
            name="tags", type=schema_pb2.DataType(list=schema_pb2.ListType(element=STRING))
        ),
    ]
    request = pb.CreateTableRequest(
        namespace="c", table="t", schema=schema_pb2.Schema(fields=fields)
    )
    await stub.CreateTable(request)


def same_rows(got: pa.Table, want: pa.Table) -> None:
    # Compared by value: Iceberg adds field ids to the schema metadata, and the server may
    # send large_string / large_list where the test wrote string / list.
    assert got.column_names == want.column_names
    assert got.sort_by("id").to_pylist() == want.sort_by("id").to_pylist()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_read_helpers_against_the_server(
    table_stub: Any, backend: Any, grpc_target: str
) -> None:
    await create_table(table_stub)
    empty = await read_table_async(table_stub, "c", "t")
    assert empty.num_rows == 0
    assert empty.column_names == ARROW_SCHEMA.names

    data = rows(20_000)
    append(backend, "c", "t", data)
    same_rows(await read_table_async(table_stub, "c", "t"), data)

    some = await read_table_async(
        table_stub, "c", "t", columns=["id", "tags"], row_filter="id < 100 AND region = 'eu'"
    )
    assert some.column_names == ["id", "tags"]
    assert some.sort_by("id").to_pylist() == [
        {"id": r["id"], "tags": r["tags"]}
        for r in data.to_pylist()
        if r["id"] < 100 and r["region"] == "eu"
    ]

    call = table_stub.ReadRows(read_rows_request("c", "t", row_limit=5))
    assert sum([b.num_rows async for b in read_rows_batches_async(call)]) == 5

    json_call = table_stub.ReadRows(
        read_rows_request("c", "t", row_filter="id = 1", row_format=rows_pb2.ROW_FORMAT_JSON)
    )
    assert (await read_rows_to_arrow_async(json_call)).to_pylist() == [
        {
            "id": 1.0,
            "price": "0.01",
            "region": "eu",
            "tags": ["a", "1"],
            "ts": "2024-01-01T00:01:00+00:00",
        }
    ]

    def read_sync() -> pa.Table:
        with grpc.insecure_channel(grpc_target) as channel:
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            return read_table(stub, "c", "t", timeout=30)

    same_rows(await asyncio.to_thread(read_sync), data)


@pytest.mark.parametrize("backend", ["local", "postgres_s3"], indirect=True)
async def test_read_table_reads_a_session_in_parallel_as_one_read_rows(
    table_stub: Any, backend: Any, grpc_target: str
) -> None:
    """The default path (a read session, streams over several channels) returns exactly the
    rows, in the order, of one ReadRows; and a read with a limit is one ReadRows."""
    await create_table(table_stub)
    data = rows(6_000)
    for start in range(0, 6_000, 1_000):  # six files, so six streams at most
        append(backend, "c", "t", data.slice(start, 1_000))

    def read_sync(**kwargs: Any) -> pa.Table:
        channels = [grpc.insecure_channel(grpc_target) for _ in range(3)]
        try:
            stubs = [table_service_pb2_grpc.TableServiceStub(c) for c in channels]
            return read_table(stubs, "c", "t", timeout=30, **kwargs)
        finally:
            for channel in channels:
                channel.close()

    one = await read_table_async(table_stub, "c", "t", max_streams=1)
    same_rows(one, data)
    for kwargs in ({}, {"max_streams": 6}, {"row_filter": "region = 'eu'", "columns": ["id"]}):
        plain = {**kwargs, "max_streams": 1}
        expected = await read_table_async(table_stub, "c", "t", **plain)
        assert (await asyncio.to_thread(read_sync, **kwargs)).equals(expected), kwargs
        assert (await read_table_async(table_stub, "c", "t", **kwargs)).equals(expected), kwargs
    limited = await asyncio.to_thread(read_sync, row_limit=10)
    assert limited.equals(one.slice(0, 10))
