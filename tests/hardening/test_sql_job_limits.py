"""SQL jobs have limits: wall-clock, spill space, and no view of the server's paths.

Each test reproduces an attack from issue 13 through the real server and generated stubs:
a query that would run forever ends FAILED with JOB_TIMEOUT, a sort that would fill the disk
ends FAILED with JOB_TEMP_SPACE_EXHAUSTED and leaves no spill files, and statements that
would print server paths are refused when the job is created.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.net import LOOPBACK
from lakehouse.v1 import job_pb2, job_service_pb2_grpc
from lakehouse.v1 import job_service_pb2 as jpb

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
WAIT_SECONDS = 60.0


@pytest_asyncio.fixture
async def limited(backend: Any) -> AsyncIterator[tuple[Any, Any]]:
    """A server whose SQL jobs have small limits, and a JobService stub to it."""
    from lakehouse.server.app import LakehouseServer

    jobs = backend.jobs.model_copy(
        update={
            "timeout_seconds": 2.0,
            "max_timeout_seconds": 30.0,
            "duckdb_memory_limit_mb": 64,
            "duckdb_temp_limit_mb": 16,
            "duckdb_threads": 1,
        }
    )
    settings = backend.model_copy(update={"jobs": jobs})
    srv = LakehouseServer(settings)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{srv.grpc_port}") as channel:
            yield settings, job_service_pb2_grpc.JobServiceStub(channel)
    finally:
        await asyncio.wait_for(srv.stop(), 30)


async def run_to_end(stub: Any, spec: job_pb2.JobSpec) -> job_pb2.Job:
    created = await stub.CreateJob(jpb.CreateJobRequest(spec=spec))
    last: job_pb2.Job | None = None

    async def watch() -> None:
        nonlocal last
        async for message in stub.WatchJob(jpb.WatchJobRequest(job_id=created.job.id)):
            last = message.job

    await asyncio.wait_for(watch(), WAIT_SECONDS)
    assert last is not None and last.state in TERMINAL
    return last


def reason(job: job_pb2.Job) -> str:
    for detail in job.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def sql(statement: str, **kwargs: Any) -> job_pb2.JobSpec:
    timeout = kwargs.pop("timeout", None)
    spec = job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=statement, **kwargs))
    if timeout is not None:
        spec.timeout.CopyFrom(duration_pb2.Duration(seconds=timeout))
    return spec


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_count_over_a_trillion_rows_fails_with_job_timeout(
    limited: tuple[Any, Any],
) -> None:
    _, stub = limited
    job = await run_to_end(stub, sql("SELECT count(*) FROM range(1000000000000)", timeout=2))
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert (job.error.code, reason(job)) == (code_pb2.DEADLINE_EXCEEDED, "JOB_TIMEOUT")
    assert job.attempts == 1  # a limit is not retried: it would only repeat


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_endless_recursive_cte_fails_with_the_default_timeout(
    limited: tuple[Any, Any],
) -> None:
    _, stub = limited
    statement = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
        "SELECT count(*) FROM (SELECT n FROM r WHERE n < 0)"
    )
    job = await run_to_end(stub, sql(statement))
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert reason(job) == "JOB_TIMEOUT"
    assert job.attempts == 1


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_timeout_above_the_maximum_is_invalid(limited: tuple[Any, Any]) -> None:
    _, stub = limited
    for seconds in (31, -1):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateJob(jpb.CreateJobRequest(spec=sql("SELECT 1", timeout=seconds)))
        details = rpc_error_details(err.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.violated_fields == ["spec.timeout"]
    listed = await stub.ListJobs(jpb.ListJobsRequest())
    assert not listed.jobs  # nothing was created


async def test_a_huge_sort_fails_with_temp_space_exhausted_and_leaves_no_files(
    limited: tuple[Any, Any],
) -> None:
    settings, stub = limited
    statement = "SELECT i FROM range(100000000) t(i) ORDER BY hash(i)"
    job = await run_to_end(stub, sql(statement, timeout=30))
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert (job.error.code, reason(job)) == (
        code_pb2.RESOURCE_EXHAUSTED,
        "JOB_TEMP_SPACE_EXHAUSTED",
    )
    assert job.attempts == 1
    spill = Path(settings.data_dir) / "tmp" / "sql"
    assert not spill.exists() or not any(spill.rglob("*"))


LEAKS = [
    "SELECT current_setting('temp_directory')",
    "SELECT current_setting('allowed_directories')",
    "SELECT current_setting('home_directory')",
    "SELECT current_setting('extension_directory')",
    "SELECT current_setting('secret_directory')",
    "SELECT getenv('HOME')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_databases()",
    "SELECT * FROM pragma_database_list()",
    "PRAGMA database_list",
    "SHOW '/etc/passwd'",
    "DESCRIBE '/etc/passwd'",
    "SUMMARIZE '/etc/passwd'",
    "SELECT * FROM '/etc/passwd'",
]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("statement", LEAKS)
async def test_statements_that_reveal_server_paths_are_refused_at_create(
    limited: tuple[Any, Any], statement: str
) -> None:
    _, stub = limited
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateJob(jpb.CreateJobRequest(spec=sql(statement)))
    details = rpc_error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.violated_fields == ["spec.sql.statement"]
    assert details.reason == "SQL_NOT_ALLOWED"
