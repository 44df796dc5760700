"""SQL jobs with engine TRINO through JobService, against the fake Trino coordinator.

No Trino server can run here; ``fixtures.fake_trino`` speaks Trino's client protocol (it is a
fake, and says so). The service, its workers and the job store are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from fixtures.fake_trino import (
    SYNTAX_ERROR,
    TABLE_NOT_FOUND,
    Failure,
    FakeTrino,
    Rows,
    Slow,
    Update,
)
from fixtures.grpc_errors import rpc_error_details
from fixtures.net import LOOPBACK
from lakehouse.v1 import job_pb2, job_service_pb2_grpc, rows_pb2
from lakehouse.v1 import job_service_pb2 as jpb

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}


@pytest.fixture
def fake() -> Iterator[FakeTrino]:
    with FakeTrino() as server:
        yield server


@pytest_asyncio.fixture
async def jobs(backend: Any, fake: FakeTrino) -> AsyncIterator[Any]:
    from lakehouse.config import TrinoSettings
    from lakehouse.server.app import LakehouseServer

    trino = TrinoSettings(endpoint=fake.url, user="etl")
    server = LakehouseServer(backend.model_copy(update={"trino": trino}))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            yield job_service_pb2_grpc.JobServiceStub(channel)
    finally:
        await asyncio.wait_for(server.stop(), 30)


def trino_spec(statement: str, **fields: Any) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(statement=statement, engine=job_pb2.SQL_ENGINE_TRINO, **fields)
    )


async def watch_to_end(jobs: Any, job_id: str) -> job_pb2.Job:
    last = None
    async for message in jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id), timeout=60):
        last = message.job
    assert last is not None and last.state in TERMINAL
    return last


async def test_a_query_runs_on_trino(jobs: Any, fake: FakeTrino) -> None:
    statement = "SELECT region, total FROM revenue"
    fake.script(
        statement,
        Rows([("region", "varchar"), ("total", "bigint")], [[f"r{i}", i] for i in range(10)]),
    )
    created = await jobs.CreateJob(
        jpb.CreateJobRequest(
            spec=trino_spec(
                statement,
                default_namespace="sales",
                preview_row_limit=4,
                preview_format=rows_pb2.ROW_FORMAT_JSON,
            )
        )
    )
    job = await watch_to_end(jobs, created.job.id)

    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    result = job.result.sql
    assert result.rows_affected == 10 and result.preview_truncated
    assert [dict(r.fields)["total"].number_value for r in result.preview_json_rows.rows] == [
        0,
        1,
        2,
        3,
    ]
    validated, ran = fake.statements[0], fake.statements[-1]
    assert validated.sql.startswith("EXPLAIN (TYPE VALIDATE)")  # checked at CreateJob
    assert ran.sql == statement
    assert ran.headers["x-trino-user"] == "etl"
    assert ran.headers["x-trino-schema"] == "sales"
    assert f"lakehouse-job:{job.id}" in ran.headers["x-trino-client-tags"]


@pytest.mark.parametrize(
    ("statement", "update_type"),
    [
        ("DELETE FROM orders WHERE id < 4", "DELETE"),
        ("UPDATE orders SET qty = 0 WHERE id < 4", "UPDATE"),
        ("MERGE INTO orders o USING new n ON o.id = n.id WHEN MATCHED THEN DELETE", "MERGE"),
    ],
)
async def test_row_changes_pass_through_to_trino_and_report_rows_affected(
    jobs: Any, fake: FakeTrino, statement: str, update_type: str
) -> None:
    # The DuckDB sandbox's statement rules are DuckDB's: a Trino job's statement is Trino's
    # to check (EXPLAIN (TYPE VALIDATE)) and to run, MERGE included.
    fake.script(statement, Update(update_type, 3))
    created = await jobs.CreateJob(
        jpb.CreateJobRequest(spec=trino_spec(statement, default_namespace="sales"))
    )
    job = await watch_to_end(jobs, created.job.id)

    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.result.sql.rows_affected == 3
    assert [s.sql for s in fake.statements] == [f"EXPLAIN (TYPE VALIDATE) {statement}", statement]


async def test_a_statement_trino_refuses_creates_no_job(jobs: Any, fake: FakeTrino) -> None:
    fake.script("SELEC 1", SYNTAX_ERROR)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CreateJob(jpb.CreateJobRequest(spec=trino_spec("SELEC 1")))
    details = rpc_error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violated_fields == ["spec.sql.statement"]
    assert "mismatched input" in details.message
    assert not (await jobs.ListJobs(jpb.ListJobsRequest())).jobs


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (TABLE_NOT_FOUND, "TABLE_NOT_FOUND"),
        (
            Failure("line 1:15: Schema 'nope' does not exist", "SCHEMA_NOT_FOUND", 45),
            "NAMESPACE_NOT_FOUND",
        ),
    ],
    ids=["table", "schema"],
)
async def test_a_statement_naming_an_unknown_table_creates_no_job(
    jobs: Any, fake: FakeTrino, failure: Failure, reason: str
) -> None:
    # Trino reports the missing name from EXPLAIN (TYPE VALIDATE), as it would to run it.
    fake.script("SELECT * FROM nope.orders", failure)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CreateJob(jpb.CreateJobRequest(spec=trino_spec("SELECT * FROM nope.orders")))
    details = rpc_error_details(err.value)
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, reason)
    assert details.metadata["field"] == "spec.sql.statement"
    assert "does not exist" in details.message
    assert [s.sql.split(" ", 3)[:3] for s in fake.statements] == [["EXPLAIN", "(TYPE", "VALIDATE)"]]
    assert not (await jobs.ListJobs(jpb.ListJobsRequest())).jobs


async def test_cancel_job_cancels_the_trino_query(jobs: Any, fake: FakeTrino) -> None:
    fake.script("SELECT slow()", Slow())
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=trino_spec("SELECT slow()")))
    query_id = await asyncio.to_thread(fake.wait_until_running, 30.0)

    await jobs.CancelJob(jpb.CancelJobRequest(job_id=created.job.id))
    job = await watch_to_end(jobs, created.job.id)

    assert job.state == job_pb2.JOB_STATE_CANCELLED
    assert query_id in fake.deleted
