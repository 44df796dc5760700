"""A dictionary-encoded column nested in a list is sized before it is decoded (issue 13 review).

Only top-level dictionary columns were sized by what their indices pick: a
``list<dictionary<int32, string>>`` column of one 64 KiB value picked 24,000 times (162 KB on
the wire) decoded to 1.5 GB and took a real server's RSS from 0.25 to 1.8 GB, past
``ingest.max_request_bytes`` (256 MiB), before it was answered. It is now refused as
REQUEST_TOO_LARGE before it is conformed.
"""

from __future__ import annotations

from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.grpc_errors import rpc_error_details
from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import table_service_pb2 as pb

MIB = 1024 * 1024
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
TAGS = schema_pb2.DataType(list=schema_pb2.ListType(element=STRING))
NOTE = schema_pb2.DataType(
    struct=schema_pb2.StructType(fields=[schema_pb2.Field(name="text", type=STRING)])
)


def _payload(column: pa.Array, name: str) -> bytes:
    batch = pa.record_batch([column], names=[name])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _picked(rows: int) -> pa.DictionaryArray:
    """``rows`` picks of one 64 KiB string: 64 KiB on the wire, ``rows`` x 64 KiB decoded."""
    return pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * 65536]))


def _in_list(rows: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array([0, rows], pa.int32()), _picked(rows))


def _in_struct(rows: int) -> pa.Array:
    return pa.StructArray.from_arrays([_picked(rows)], names=["text"])


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(("column", "kind"), [("tags", TAGS), ("note", NOTE)])
async def test_a_nested_dictionary_bomb_is_refused_before_it_is_decoded(
    backend: Any, column: str, kind: schema_pb2.DataType
) -> None:
    from lakehouse.config import IngestSettings
    from lakehouse.server.app import LakehouseServer

    # 1 MiB per request: 160 picks of 64 KiB (10 MiB decoded) are ten times too many.
    settings = backend.model_copy(update={"ingest": IngestSettings(max_request_bytes=MIB)})
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            await tables.CreateNamespace(pb.CreateNamespaceRequest(name="h"))
            schema = schema_pb2.Schema(fields=[schema_pb2.Field(name=column, type=kind)])
            await tables.CreateTable(pb.CreateTableRequest(namespace="h", table="t", schema=schema))
            array = _in_list(160) if column == "tags" else _in_struct(160)
            payload = _payload(array, column)
            assert len(payload) < MIB // 4  # the headers alone look small
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await ingest.WriteRows(
                    ingest_service_pb2.WriteRowsRequest(
                        namespace="h",
                        table="t",
                        arrow_record_batch=rows_pb2.ArrowRecordBatch(
                            serialized_record_batch=payload
                        ),
                    )
                )
            details = rpc_error_details(exc.value)
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert details.reason == "REQUEST_TOO_LARGE", details
            got = await tables.GetTable(pb.GetTableRequest(namespace="h", table="t"))
            assert got.table.stats.row_count == 0
    finally:
        await server.stop()
