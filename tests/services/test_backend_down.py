"""Calls when things go wrong: S3 away mid-read or mid-branch-write, the catalog away for a
row delete or a watch, row errors in acks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import grpc
import pyarrow as pa
import pytest
from google.protobuf import struct_pb2
from pydantic import SecretStr

from fixtures.breakers import wait_breaker_state
from fixtures.grpc_errors import rpc_error_details
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.client.arrow import read_rows_to_arrow_async, read_table_async, write_rows_request
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


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[tuple[LakehouseServer, Any, Any]]:
    """A server on ``settings`` with the table ``down.t`` made: it, a TableService and an
    IngestService stub."""
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            await _make_table(tables)
            yield server, tables, ingest_service_pb2_grpc.IngestServiceStub(channel)
    finally:
        await server.stop()


async def _assert_unavailable(call: Any, reason: str) -> None:
    """Awaits ``call`` (a unary call, or a stream's first message): UNAVAILABLE with ``reason``
    and a RetryInfo."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    details = rpc_error_details(refused.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE, details.message
    assert details.reason == reason, details.message
    assert details.retry_delay_seconds is not None


@pytest.mark.parametrize("backend", ["postgres_s3"], indirect=True)
async def test_read_rows_with_the_object_store_down_is_unavailable_then_recovers(
    backend: Settings,
) -> None:
    endpoint = urlparse(backend.s3.endpoint_url or "")
    with tcp_proxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        async with _serving(_proxied(backend, s3_endpoint=proxy.endpoint)) as (_, tables, ingest):
            data = pa.table({"id": list(range(100))})
            await ingest.WriteRows(write_rows_request("down", "t", data))

            proxy.down()
            await _assert_unavailable(
                read_table_async(tables, "down", "t", timeout=60), "OBJECT_STORE_UNAVAILABLE"
            )

            proxy.up()
            back = await read_table_async(tables, "down", "t", timeout=60)
            assert sorted(back.column("id").to_pylist()) == list(range(100))


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


def _proxied(backend: Settings, catalog_port: int | None = None, s3_endpoint: str = "") -> Settings:
    """``backend`` with its catalog database or its object store reached through a proxy."""
    update: dict[str, Any] = {}
    if catalog_port is not None:
        uri = urlparse(backend.catalog.uri.get_secret_value() if backend.catalog.uri else "")
        proxied = uri._replace(netloc=uri.netloc.replace(f":{uri.port}", f":{catalog_port}"))
        update["catalog"] = backend.catalog.model_copy(update={"uri": SecretStr(proxied.geturl())})
    if s3_endpoint:
        update["s3"] = S3Settings(**{**backend.s3.model_dump(), "endpoint_url": s3_endpoint})
    return backend.model_copy(update=update)


def _catalog_address(backend: Settings) -> tuple[str, int]:
    uri = urlparse(backend.catalog.uri.get_secret_value() if backend.catalog.uri else "")
    return uri.hostname or "127.0.0.1", uri.port or 5432


async def _ids(tables: Any, ref: str = "") -> list[int]:
    request = tpb.ReadRowsRequest(namespace="down", table="t", ref=ref)
    data = await read_rows_to_arrow_async(tables.ReadRows(request, timeout=60))
    return sorted(data.column("id").to_pylist())


@pytest.mark.parametrize("backend", ["postgres_s3"], indirect=True)
async def test_delete_rows_and_watch_with_the_catalog_down_are_unavailable_and_change_nothing(
    backend: Settings,
) -> None:
    with tcp_proxy(*_catalog_address(backend)) as proxy:
        settings = _proxied(backend, catalog_port=proxy.port)
        async with _serving(settings) as (server, tables, ingest):
            await ingest.WriteRows(write_rows_request("down", "t", pa.table({"id": range(10)})))
            delete = tpb.DeleteRowsRequest(
                namespace="down", table="t", row_filter="id < 5", request_id="d-1"
            )

            proxy.down()
            await _assert_unavailable(tables.DeleteRows(delete, timeout=60), "CATALOG_UNAVAILABLE")
            watch = tables.WatchTable(
                tpb.WatchTableRequest(namespace="down", table="t"), timeout=60
            )
            await _assert_unavailable(watch.read(), "CATALOG_UNAVAILABLE")

            # The breaker opened on the failures; PostgreSQL back, a health check closes it.
            proxy.up()
            await wait_breaker_state(server, "catalog", 0, timeout=30)
            assert await _ids(tables) == list(range(10))  # the refused delete did nothing
            deleted = await tables.DeleteRows(delete, timeout=60)
            assert deleted.rows_deleted == 5 and not deleted.already_applied
            assert await _ids(tables) == list(range(5, 10))


@pytest.mark.parametrize("backend", ["postgres_s3"], indirect=True)
async def test_a_branch_write_with_the_object_store_down_is_unavailable_and_a_resend_is_exact(
    backend: Settings,
) -> None:
    endpoint = urlparse(backend.s3.endpoint_url or "")
    with tcp_proxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        settings = _proxied(backend, s3_endpoint=proxy.endpoint)
        async with _serving(settings) as (server, tables, ingest):
            await ingest.WriteRows(write_rows_request("down", "t", pa.table({"id": [0]})))
            await tables.CreateBranch(
                tpb.CreateBranchRequest(namespace="down", table="t", name="audit")
            )
            request = write_rows_request(
                "down", "t", pa.table({"id": [1, 2]}), request_id="branch-1"
            )
            request.branch = "audit"

            proxy.down()
            await _assert_unavailable(
                ingest.WriteRows(request, timeout=60), "OBJECT_STORE_UNAVAILABLE"
            )

            proxy.up()
            await wait_breaker_state(server, "object_store", 0, timeout=30)
            first = await ingest.WriteRows(request, timeout=60)
            again = await ingest.WriteRows(request, timeout=60)
            assert first.result.rows_written == 2 and not first.result.already_written
            assert again.result.already_written
            assert again.result.snapshot_id == first.result.snapshot_id
            assert await _ids(tables, ref="audit") == [0, 1, 2]
            assert await _ids(tables) == [0]  # main never saw the branch's rows
