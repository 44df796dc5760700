"""Ingest limits: a full write buffer answers RESOURCE_EXHAUSTED; metrics count what happened."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.grpc_errors import rpc_error_details
from lakehouse.client.arrow import write_rows_request
from lakehouse.config import IngestSettings, Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.v1 import ingest_service_pb2_grpc, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb


def payload(rows: int) -> pa.Table:
    return pa.table({"id": list(range(rows)), "blob": ["x" * 100] * rows})


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_full_buffer_is_resource_exhausted_and_metrics_count(backend: Settings) -> None:
    settings = backend.model_copy(
        update={
            "ingest": IngestSettings(
                commit_delay_ms=1500, table_buffer_bytes=1024 * 1024, buffer_wait_seconds=0.2
            )
        }
    )
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="lim"))
            long_ = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
            string = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
            await tables.CreateTable(
                tpb.CreateTableRequest(
                    namespace="lim",
                    table="t",
                    schema=schema_pb2.Schema(
                        fields=[
                            schema_pb2.Field(name="id", type=long_),
                            schema_pb2.Field(name="blob", type=string),
                        ]
                    ),
                )
            )
            big = payload(7000)  # about 0.75 MB: two do not fit in a 1 MiB buffer
            first = asyncio.ensure_future(ingest.WriteRows(write_rows_request("lim", "t", big)))
            await asyncio.sleep(0.3)  # the first is buffered, waiting for its group commit
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await ingest.WriteRows(write_rows_request("lim", "t", big))
            details = rpc_error_details(exc.value)
            assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.reason == "WRITE_BUFFER_FULL"
            assert details.retry_delay_seconds == 1.0
            assert (await first).result.rows_written == 7000
            # once the buffer drained, the same write goes through
            again = await ingest.WriteRows(write_rows_request("lim", "t", big))
            assert again.result.rows_written == 7000

        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.http_port}/metrics") as resp,
        ):
            text = await resp.text()
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.labels or s.labels.get("outcome") == "ok"
        }
        assert samples["lakehouse_ingest_rows_total"] >= 14000
        assert samples["lakehouse_ingest_commits_total"] >= 2
        assert samples["lakehouse_ingest_commit_seconds_count"] >= 2
        assert samples["lakehouse_ingest_buffered_bytes"] == 0
    finally:
        await server.stop()
