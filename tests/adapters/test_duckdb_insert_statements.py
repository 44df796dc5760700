"""SQL jobs on DuckDB: the INSERT forms a lakehouse table cannot take are refused when the job
is created (INVALID_ARGUMENT on ``spec.sql.statement``, no job), and BY NAME / BY POSITION
insert as they say. Through JobService, as a client submits them.
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

NS, TABLE = "sqlins", "events"
T = f"{NS}.{TABLE}"
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
WAIT_SECONDS = 60.0

REFUSED = [
    pytest.param(f"INSERT OR REPLACE INTO {T} SELECT 1, 'a'", "OR REPLACE", id="or-replace"),
    pytest.param(f"INSERT OR IGNORE INTO {T} SELECT 1, 'a'", "OR IGNORE", id="or-ignore"),
    pytest.param(f"INSERT INTO {T} AS e SELECT 1, 'a'", "alias", id="target-alias"),
    pytest.param(f"INSERT INTO {T} DEFAULT VALUES", "DEFAULT VALUES", id="default-values"),
    pytest.param(
        f"INSERT INTO {T} (id) SELECT 1 ON CONFLICT DO NOTHING", "not supported", id="on-conflict"
    ),
    pytest.param(
        f"INSERT INTO {T} (id, kind) VALUES (1, 'a') RETURNING id", "RETURNING", id="returning"
    ),
    pytest.param(
        f"WITH a AS (SELECT 1 AS id) INSERT INTO {T} WITH b AS (SELECT 2 AS id) "
        "SELECT id, 'x' FROM b",
        "WITH both",
        id="with-twice",
    ),
    pytest.param("INSERT INTO a.b.c SELECT 1", "namespace.table", id="three-part-target"),
]


@pytest.fixture
def jobs(channel: grpc.aio.Channel) -> Any:
    return job_service_pb2_grpc.JobServiceStub(channel)


async def make_table(table_stub: Any) -> None:
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name=NS))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace=NS,
            table=TABLE,
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(name="id", type=LONG, required=False),
                    schema_pb2.Field(name="kind", type=STRING, required=False),
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


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize(("statement", "said"), REFUSED)
async def test_unsupported_insert_forms_are_refused_and_create_no_job(
    backend: Any, table_stub: Any, jobs: Any, statement: str, said: str
) -> None:
    await make_table(table_stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CreateJob(
            jpb.CreateJobRequest(spec=job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=statement)))
        )
    details = rpc_error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.violated_fields == ["spec.sql.statement"], details.message
    assert said in details.message, details.message
    assert not (await jobs.ListJobs(jpb.ListJobsRequest())).jobs


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_insert_by_name_and_by_position(backend: Any, table_stub: Any, jobs: Any) -> None:
    await make_table(table_stub)
    # BY NAME matches the query's columns to the table's by name, whatever their order.
    by_name = await run_sql(jobs, f"INSERT INTO {T} BY NAME SELECT 'named' AS kind, 1 AS id")
    assert by_name.state == job_pb2.JOB_STATE_SUCCEEDED, by_name.error
    # BY POSITION (the default) takes them in the table's order.
    by_position = await run_sql(jobs, f"INSERT INTO {T} BY POSITION SELECT 2, 'positional'")
    assert by_position.state == job_pb2.JOB_STATE_SUCCEEDED, by_position.error
    data = direct_catalog(backend).load_table((NS, TABLE)).scan().to_arrow()
    assert sorted(zip(data["id"].to_pylist(), data["kind"].to_pylist(), strict=True)) == [
        (1, "named"),
        (2, "positional"),
    ]
