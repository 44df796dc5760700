"""A table of a namespace that does not exist is NAMESPACE_NOT_FOUND, on every call (issue 20).

pyiceberg answers "no such table" for both; a caller who mistyped the namespace must learn
that it is the namespace, and the call changes nothing (the namespace is not created).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    table_service_pb2,
    table_service_pb2_grpc,
)

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

NS, TABLE = "no_such_namespace", "orders"
NAME = {"namespace": NS, "table": TABLE}
ROWS = rows_pb2.JsonRows(rows=[{"id": 1}])


async def _append_rows(channel: grpc.aio.Channel) -> Any:
    stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
    request = ingest_service_pb2.AppendRowsRequest(**NAME, json_rows=ROWS)
    responses = [r async for r in stub.AppendRows(iter([request]))]
    return responses


def _table(method: str, request: Any) -> Callable[[grpc.aio.Channel], Awaitable[Any]]:
    async def call(channel: grpc.aio.Channel) -> Any:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        answer = getattr(stub, method)(request)
        if method in ("ReadRows", "WatchTable"):
            return [r async for r in answer]
        return await answer

    return call


def _job(spec: job_pb2.JobSpec) -> Callable[[grpc.aio.Channel], Awaitable[Any]]:
    async def call(channel: grpc.aio.Channel) -> Any:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        return await stub.CreateJob(job_service_pb2.CreateJobRequest(spec=spec))

    return call


async def _write_rows(channel: grpc.aio.Channel) -> Any:
    stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
    return await stub.WriteRows(ingest_service_pb2.WriteRowsRequest(**NAME, json_rows=ROWS))


CALLS: dict[str, Callable[[grpc.aio.Channel], Awaitable[Any]]] = {
    "GetTable": _table("GetTable", table_service_pb2.GetTableRequest(**NAME)),
    "ReadRows": _table("ReadRows", table_service_pb2.ReadRowsRequest(**NAME)),
    "DeleteRows": _table(
        "DeleteRows", table_service_pb2.DeleteRowsRequest(**NAME, row_filter="id = 1")
    ),
    "ListSnapshots": _table("ListSnapshots", table_service_pb2.ListSnapshotsRequest(**NAME)),
    "DeleteTable": _table("DeleteTable", table_service_pb2.DeleteTableRequest(**NAME)),
    "WriteRows": _write_rows,
    "AppendRows": _append_rows,
    "CreateJob compact_table": _job(
        job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(**NAME))
    ),
    "CreateJob sql": _job(
        job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=f"SELECT * FROM {NS}.{TABLE}"))
    ),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_a_table_of_a_missing_namespace_is_namespace_not_found(
    channel: grpc.aio.Channel, call: Callable[[grpc.aio.Channel], Awaitable[Any]]
) -> None:
    try:
        answer = await call(channel)
    except grpc.aio.AioRpcError as err:
        details = rpc_error_details(err)
        assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "NAMESPACE_NOT_FOUND")
        assert details.metadata["namespace"] == NS
    else:
        # AppendRows answers each request in its stream: the error is the response's.
        [response] = answer
        assert response.WhichOneof("response") == "error", response
        assert response.error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert "NAMESPACE_NOT_FOUND" in str(response.error.details)
    tables = table_service_pb2_grpc.TableServiceStub(channel)
    listed = await tables.ListNamespaces(table_service_pb2.ListNamespacesRequest())
    assert NS not in [n.name for n in listed.namespaces]


async def test_a_missing_table_of_an_existing_namespace_stays_table_not_found(
    channel: grpc.aio.Channel,
) -> None:
    tables = table_service_pb2_grpc.TableServiceStub(channel)
    await tables.CreateNamespace(table_service_pb2.CreateNamespaceRequest(name=NS))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tables.GetTable(table_service_pb2.GetTableRequest(**NAME))
    details = rpc_error_details(err.value)
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "TABLE_NOT_FOUND")
