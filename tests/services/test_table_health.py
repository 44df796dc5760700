"""GetTableHealth over the wire, and the per-table gauges it and commits set (both backends)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families

from fixtures.grpc_errors import rpc_error_details
from fixtures.http import http_get
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import (
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
)
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)


@pytest_asyncio.fixture
async def ingest(channel: grpc.aio.Channel, table_stub: Any) -> AsyncIterator[Any]:
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="hl"))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="hl",
            table="t",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
            properties={"lakehouse.compaction.min-input-files": "3"},
        )
    )
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


async def write(ingest: Any, i: int) -> None:
    row = struct_pb2.Struct()
    row.update({"id": i})
    await ingest.WriteRows(
        ipb.WriteRowsRequest(namespace="hl", table="t", json_rows=rows_pb2.JsonRows(rows=[row]))
    )


async def health(table_stub: Any) -> Any:
    reply = await table_stub.GetTableHealth(tpb.GetTableHealthRequest(namespace="hl", table="t"))
    return reply.health


async def test_small_files_need_compaction_and_compaction_makes_the_table_healthy(
    ingest: Any, table_stub: Any, channel: grpc.aio.Channel, http_url: str
) -> None:
    empty = await health(table_stub)
    assert (empty.data_files, empty.snapshots, empty.verdict) == (
        0,
        0,
        tpb.TABLE_VERDICT_HEALTHY,
    )
    for i in range(3):
        await write(ingest, i)

    before = await health(table_stub)

    assert (before.data_files, before.small_data_files, before.records) == (3, 3, 3)
    assert before.snapshots == 3 and before.metadata_file_bytes > 0
    assert before.last_commit_time.seconds > 0
    assert before.small_file_bytes == 384 * 1024 * 1024
    assert before.verdict == tpb.TABLE_VERDICT_NEEDS_MAINTENANCE
    assert [(f.code, f.recommended_job) for f in before.findings] == [
        ("SMALL_FILES", job_pb2.JOB_KIND_COMPACT_TABLE)
    ]

    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    job = await jobs.CreateJob(
        jpb.CreateJobRequest(
            spec=job_pb2.JobSpec(
                compact_table=job_pb2.CompactTableJobSpec(namespace="hl", table="t")
            )
        )
    )
    async for update in jobs.WatchJob(jpb.WatchJobRequest(job_id=job.job.id)):
        last = update.job
    assert last.state == job_pb2.JOB_STATE_SUCCEEDED

    after = await health(table_stub)
    assert (after.data_files, after.verdict) == (1, tpb.TABLE_VERDICT_HEALTHY)
    assert after.maintenance_jobs_last_hour == 1
    assert after.failed_maintenance_jobs_last_hour == 0

    # The per-table gauges say the same.
    text = (await http_get(f"{http_url}/metrics")).text
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("namespace") == "hl" and s.labels.get("table") == "t"
    }
    assert samples["lakehouse_table_data_files"] == 1
    assert samples["lakehouse_table_health_verdict"] == tpb.TABLE_VERDICT_HEALTHY


async def test_health_of_a_missing_table_is_not_found(table_stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await table_stub.GetTableHealth(tpb.GetTableHealthRequest(namespace="hl", table="none"))
    assert rpc_error_details(caught.value).code == grpc.StatusCode.NOT_FOUND
