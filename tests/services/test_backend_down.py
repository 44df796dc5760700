"""Reads and rejected writes when things go wrong: S3 away mid-read, row errors in acks."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import grpc
import pyarrow as pa
import pytest
from google.protobuf import struct_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.client.arrow import read_table_async, write_rows_request
from lakehouse.config import S3Settings, Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc, rows_pb2, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)


async def _make_table(tables: Any) -> None:
    await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="down"))
    await tables.CreateTable(
        tpb.CreateTableRequest(
            namespace="down",
            table="t",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
        )
    )


@pytest.mark.parametrize("backend", ["postgres_s3"], indirect=True)
async def test_read_rows_with_the_object_store_down_is_unavailable_then_recovers(
    backend: Settings,
) -> None:
    endpoint = urlparse(backend.s3.endpoint_url or "")
    with tcp_proxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        s3 = S3Settings(**{**backend.s3.model_dump(), "endpoint_url": proxy.endpoint})
        server = LakehouseServer(backend.model_copy(update={"s3": s3}))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                tables = table_service_pb2_grpc.TableServiceStub(channel)
                ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
                await _make_table(tables)
                data = pa.table({"id": list(range(100))})
                await ingest.WriteRows(write_rows_request("down", "t", data))

                proxy.down()
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await read_table_async(tables, "down", "t", timeout=60)
                details = rpc_error_details(exc.value)
                assert details.code == grpc.StatusCode.UNAVAILABLE, details.message
                assert details.reason == "OBJECT_STORE_UNAVAILABLE"
                assert details.retry_delay_seconds is not None

                proxy.up()
                back = await read_table_async(tables, "down", "t", timeout=60)
                assert sorted(back.column("id").to_pylist()) == list(range(100))
        finally:
            await server.stop()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_rejected_stream_request_lists_its_row_errors(server: Any, channel: Any) -> None:
    await _make_table(table_service_pb2_grpc.TableServiceStub(channel))
    bad = struct_pb2.Struct()
    bad.update({"id": "not a number"})
    acks = [
        a
        async for a in ingest_service_pb2_grpc.IngestServiceStub(channel).AppendRows(
            iter(
                [
                    ipb.AppendRowsRequest(
                        namespace="down", table="t", json_rows=rows_pb2.JsonRows(rows=[bad])
                    )
                ]
            )
        )
    ]
    (ack,) = acks
    assert ack.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [(e.row_index, e.column) for e in ack.row_errors] == [(0, "id")]
    assert "1 row(s) do not match" in ack.error.message
