"""A client that cancels a server stream: counted and logged as CANCELLED, no traceback.

Issue 13 found cancelled ReadRows and WatchJob calls counted as ``grpc_code="Internal"`` in
``grpc_server_handled_total`` and logged at ERROR with a traceback: the send that a cancelled
call was blocked in failed with gRPC's own error, which the error mapping took for a bug.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
import grpc
import pyarrow as pa
import pytest

from fixtures.iceberg import append
from lakehouse.v1 import job_pb2, job_service_pb2_grpc, schema_pb2
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as pb

NS, TABLE = "cancel", "wide"
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
WAIT_SECONDS = 30.0
#: Many rows of a large value: far more than one message, so the stream is mid-way when cut.
ROWS, VALUE_BYTES = 20_000, 1_000


async def metrics_text(http_url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{http_url}/metrics") as resp:
        return await resp.text()


def handled(text: str, method: str, code: str = "") -> float:
    """``grpc_server_handled_total`` of ``method`` with ``code`` (any code when empty)."""
    pattern = re.compile(
        r"^grpc_server_handled_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE
    )
    total = 0.0
    for match in pattern.finditer(text):
        labels = match.group("labels")
        if f'grpc_method="{method}"' in labels and f'grpc_code="{code}' in labels:
            total += float(match.group("value"))
    return total


async def handled_since(http_url: str, before: str, method: str, calls: int) -> dict[str, float]:
    """How the next ``calls`` calls of ``method`` after ``before`` ended, by code.

    The metrics registry is the process's, shared by every test: only the delta counts.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    codes = ("OK", "Canceled", "Internal", "Unknown", "DeadlineExceeded", "Unavailable")
    while True:
        text = await metrics_text(http_url)
        done = handled(text, method) - handled(before, method)
        if done >= calls or loop.time() > deadline:
            return {
                c: handled(text, method, c) - handled(before, method, c)
                for c in codes
                if handled(text, method, c) - handled(before, method, c)
            }
        await asyncio.sleep(0.05)


async def make_wide_table(table_stub: Any, backend: Any) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name=NS))
    schema = schema_pb2.Schema(
        fields=[
            schema_pb2.Field(name="id", type=LONG, required=True),
            schema_pb2.Field(name="blob", type=STRING),
        ]
    )
    await table_stub.CreateTable(pb.CreateTableRequest(namespace=NS, table=TABLE, schema=schema))
    schema_arrow = pa.schema(
        [pa.field("id", pa.int64(), nullable=False), pa.field("blob", pa.large_string())]
    )
    data = pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "blob": pa.array(["x" * VALUE_BYTES] * ROWS, pa.large_string()),
        },
        schema=schema_arrow,
    )
    append(backend, NS, TABLE, data)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("rounds", [5])
async def test_cancelled_read_rows_is_cancelled_not_internal(
    table_stub: Any, backend: Any, http_url: str, caplog: pytest.LogCaptureFixture, rounds: int
) -> None:
    await make_wide_table(table_stub, backend)
    caplog.set_level(logging.INFO)
    before = await metrics_text(http_url)
    for i in range(rounds):
        call = table_stub.ReadRows(pb.ReadRowsRequest(namespace=NS, table=TABLE))
        await asyncio.wait_for(call.read(), WAIT_SECONDS)  # the schema message
        await asyncio.wait_for(call.read(), WAIT_SECONDS)  # one batch: the scan is running
        if i % 2:
            # Not reading: the server fills the flow-control window and blocks in a send.
            await asyncio.sleep(0.5)
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
    assert await handled_since(http_url, before, "ReadRows", rounds) == {"Canceled": rounds}
    assert errors_logged(caplog) == []
    # The server is fine: a fresh read runs to its end.
    count = 0
    async for _ in table_stub.ReadRows(pb.ReadRowsRequest(namespace=NS, table=TABLE)):
        count += 1
    assert count > 2


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_cancelled_watch_job_is_cancelled_not_internal(
    table_stub: Any,
    backend: Any,
    channel: grpc.aio.Channel,
    http_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_wide_table(table_stub, backend)
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    caplog.set_level(logging.INFO)
    spec = job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=TABLE))
    rounds = 3
    before = await metrics_text(http_url)
    for _ in range(rounds):
        created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
        call = jobs.WatchJob(jpb.WatchJobRequest(job_id=created.job.id))
        await asyncio.wait_for(call.read(), WAIT_SECONDS)
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED
    codes = await handled_since(http_url, before, "WatchJob", rounds)
    # A job may end before the cancel lands (then the watch ended OK); never anything else.
    assert set(codes) <= {"Canceled", "OK"} and sum(codes.values()) == rounds, codes
    assert errors_logged(caplog) == []
