"""SQL jobs that DELETE and UPDATE rows, through JobService as a client submits them.

On both backends: the job reports the rows it changed and the snapshot it committed, the
table holds exactly the expected rows afterwards, and the statements DuckDB jobs refuse are
refused when the job is created (no job).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from lakehouse.v1 import job_pb2, job_service_pb2_grpc, schema_pb2
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

NS, TABLE = "sqlchg", "events"
T = f"{NS}.{TABLE}"
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
WAIT_SECONDS = 60.0


@pytest.fixture
def jobs(channel: grpc.aio.Channel) -> Any:
    return job_service_pb2_grpc.JobServiceStub(channel)


async def make_table(table_stub: Any) -> None:
    long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
    string = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name=NS))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace=NS,
            table=TABLE,
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(name="id", type=long, required=False),
                    schema_pb2.Field(name="kind", type=string, required=False),
                ]
            ),
        )
    )


async def run_sql(jobs: Any, statement: str) -> job_pb2.Job:
    """Runs a SQL job to its end; returns its last state."""
    created = await jobs.CreateJob(
        jpb.CreateJobRequest(spec=job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=statement)))
    )
    last: list[job_pb2.Job] = []

    async def watch() -> None:
        async for message in jobs.WatchJob(jpb.WatchJobRequest(job_id=created.job.id)):
            last[:] = [message.job]
            if message.job.state in TERMINAL:
                return

    await asyncio.wait_for(watch(), WAIT_SECONDS)
    return last[0]


async def test_delete_and_update_jobs_report_and_change_the_matching_rows(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    rows = ", ".join(f"({i}, '{('a', 'b', 'c')[i % 3]}')" for i in range(30))
    inserted = await run_sql(jobs, f"INSERT INTO {T} VALUES {rows}")
    assert inserted.state == job_pb2.JOB_STATE_SUCCEEDED, inserted.error
    catalog = direct_catalog(backend)

    deleted = await run_sql(jobs, f"DELETE FROM {T} WHERE kind = 'a' AND id >= 10")
    assert deleted.state == job_pb2.JOB_STATE_SUCCEEDED, deleted.error
    table = catalog.load_table((NS, TABLE))
    assert deleted.result.sql.rows_affected == 6  # 12, 15, ..., 27
    assert deleted.result.sql.snapshot_id == table.current_snapshot().snapshot_id  # type: ignore[union-attr]

    updated = await run_sql(jobs, f"UPDATE {T} SET kind = upper(kind) || id WHERE id < 4")
    assert updated.state == job_pb2.JOB_STATE_SUCCEEDED, updated.error
    assert updated.result.sql.rows_affected == 4

    nothing = await run_sql(jobs, f"DELETE FROM {T} WHERE id > 1000")
    assert nothing.state == job_pb2.JOB_STATE_SUCCEEDED, nothing.error
    assert nothing.result.sql.rows_affected == 0
    assert not nothing.result.sql.HasField("snapshot_id")

    data = catalog.load_table((NS, TABLE)).scan().to_arrow()
    want = {i: ("a", "b", "c")[i % 3] for i in range(30) if not (i % 3 == 0 and i >= 10)}
    want.update({i: f"{('A', 'B', 'C')[i % 3]}{i}" for i in range(4)})
    assert dict(zip(data["id"].to_pylist(), data["kind"].to_pylist(), strict=True)) == want


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(
    ("statement", "code", "said"),
    [
        (f"DELETE FROM {T}", grpc.StatusCode.INVALID_ARGUMENT, "WHERE true"),
        (f"DELETE FROM {NS}.missing WHERE true", grpc.StatusCode.NOT_FOUND, "missing"),
        (
            f"MERGE INTO {T} t USING {T} s ON t.id = s.id WHEN MATCHED THEN DELETE",
            grpc.StatusCode.INVALID_ARGUMENT,
            "MERGE INTO",
        ),
        (
            f"UPDATE {T} SET kind = getenv('HOME') WHERE true",
            grpc.StatusCode.INVALID_ARGUMENT,
            "getenv",
        ),
    ],
)
async def test_refused_row_changes_create_no_job(
    backend: Any, table_stub: Any, jobs: Any, statement: str, code: grpc.StatusCode, said: str
) -> None:
    await make_table(table_stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CreateJob(
            jpb.CreateJobRequest(spec=job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=statement)))
        )
    details = rpc_error_details(err.value)
    assert details.code == code, details.message
    assert said in details.message, details.message
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.violated_fields == ["spec.sql.statement"], details.message
        assert details.reason == "SQL_NOT_ALLOWED", details.message
    assert not (await jobs.ListJobs(jpb.ListJobsRequest())).jobs
