"""SQL jobs have limits: wall-clock, spill space, and no view of the server's paths.

Each test reproduces an attack from issue 13 through the real server and generated stubs:
a query that would run forever ends FAILED with JOB_TIMEOUT, a sort that would fill the disk
ends FAILED with JOB_TEMP_SPACE_EXHAUSTED and leaves no spill files, and statements that
would print server paths are refused when the job is created.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_query_past_the_memory_limit_fails_with_memory_exhausted_once(
    limited: tuple[Any, Any],
) -> None:
    _, stub = limited
    statement = "SELECT string_agg(i::VARCHAR, ',') FROM range(30000000) t(i)"
    job = await run_to_end(stub, sql(statement))
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert (job.error.code, reason(job)) == (code_pb2.RESOURCE_EXHAUSTED, "JOB_MEMORY_EXHAUSTED")
    assert job.attempts == 1  # deterministic for its input: not retried


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
    "DELETE FROM '/etc/passwd' WHERE true",
    "DELETE FROM sales.orders WHERE getenv('HOME') IS NOT NULL",
    "UPDATE sales.orders SET note = current_setting('home_directory') WHERE true",
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


# -- Per-principal limits ----------------------------------------------------------------------

LONG = "SELECT count(*) FROM range(1000000000000)"


@asynccontextmanager
async def server_with(settings: Any) -> AsyncIterator[Any]:
    from lakehouse.server.app import LakehouseServer

    srv = LakehouseServer(settings)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{srv.grpc_port}") as channel:
            yield job_service_pb2_grpc.JobServiceStub(channel)
    finally:
        await asyncio.wait_for(srv.stop(), 30)


async def test_a_caller_past_its_unfinished_job_limit_is_refused(backend: Any) -> None:
    jobs = backend.jobs.model_copy(update={"workers": 0, "max_unfinished_per_principal": 2})
    async with server_with(backend.model_copy(update={"jobs": jobs})) as stub:
        first = await stub.CreateJob(jpb.CreateJobRequest(spec=sql(LONG), request_id="q-1"))
        await stub.CreateJob(jpb.CreateJobRequest(spec=sql(LONG)))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateJob(jpb.CreateJobRequest(spec=sql(LONG)))
        details = rpc_error_details(err.value)
        assert (details.code, details.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "JOB_QUOTA_EXCEEDED",
        )
        assert details.metadata["limit"] == "2" and details.retry_delay_seconds
        listed = await stub.ListJobs(jpb.ListJobsRequest())
        assert len(listed.jobs) == 2  # the refused call created nothing

        # A retry of a job the caller has is still answered; a finished job frees a place.
        again = await stub.CreateJob(jpb.CreateJobRequest(spec=sql(LONG), request_id="q-1"))
        assert again.job.id == first.job.id
        await stub.CancelJob(jpb.CancelJobRequest(job_id=first.job.id))
        await stub.CreateJob(jpb.CreateJobRequest(spec=sql(LONG)))


def api_key(name: str) -> tuple[Any, tuple[tuple[str, str], ...]]:
    from lakehouse.config import ApiKey

    key = f"lh_{name}_{'k' * 32}"
    entry = ApiKey(name=name, sha256=hashlib.sha256(key.encode()).hexdigest(), role="admin")
    return entry, (("authorization", f"Bearer {key}"),)


async def state_of(stub: Any, job_id: str, metadata: Any) -> int:
    got = await stub.GetJob(jpb.GetJobRequest(job_id=job_id), metadata=metadata)
    return int(got.job.state)


async def test_one_callers_long_jobs_do_not_block_another_callers_job(backend: Any) -> None:
    from lakehouse.config import AuthSettings

    alice, as_alice = api_key("alice")
    bob, as_bob = api_key("bob")
    jobs = backend.jobs.model_copy(
        update={"workers": 2, "max_running_per_principal": 1, "timeout_seconds": 120.0}
    )
    settings = backend.model_copy(
        update={"jobs": jobs, "auth": AuthSettings(api_keys=(alice, bob))}
    )
    async with server_with(settings) as stub:
        long_ids = []
        for _ in range(2):
            created = await stub.CreateJob(jpb.CreateJobRequest(spec=sql(LONG)), metadata=as_alice)
            long_ids.append(created.job.id)
        quick = await stub.CreateJob(jpb.CreateJobRequest(spec=sql("SELECT 42")), metadata=as_bob)

        async def bob_done() -> job_pb2.Job:
            async for message in stub.WatchJob(
                jpb.WatchJobRequest(job_id=quick.job.id), metadata=as_bob
            ):
                if message.job.state in TERMINAL:
                    return message.job
            raise AssertionError("the watch ended early")

        job = await asyncio.wait_for(bob_done(), WAIT_SECONDS)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        # Bob's job ran while alice's second one waited: alice had her one running job.
        states = sorted([await state_of(stub, i, as_alice) for i in long_ids])
        assert states == sorted([job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING])
        for job_id in long_ids:
            await stub.CancelJob(jpb.CancelJobRequest(job_id=job_id), metadata=as_alice)


async def test_claims_skip_a_principal_or_namespace_at_its_running_limit(backend: Any) -> None:
    """The claim query itself, on SQLite and PostgreSQL: jobs past a limit are passed over."""
    from lakehouse.server.app import LakehouseServer

    jobs = backend.jobs.model_copy(update={"workers": 0})
    srv = LakehouseServer(backend.model_copy(update={"jobs": jobs}))
    await srv.start()
    try:
        store = srv.job_runtime.store

        def create(job_id: str, principal: str, namespace: str, t: int) -> None:
            store.create(
                job_id=job_id,
                kind=job_pb2.JOB_KIND_SQL,
                namespace=namespace,
                table="t" if namespace else "",
                spec=b"",
                spec_digest=job_id,
                request_id="",
                max_attempts=1,
                now_us=t,
                principal=principal,
            )

        def claim(**limits: int) -> str | None:
            got = store.claim(worker="w", lease_seconds=60, now_us=10**15, **limits)
            return None if got is None else got.job.id

        create("a1", "alice", "", 1)
        create("a2", "alice", "", 2)
        create("s1", "", "", 3)  # the scheduler's: no principal, never limited
        create("b1", "bob", "", 4)
        per_principal = {"max_running_per_principal": 1}
        assert [claim(**per_principal) for _ in range(4)] == ["a1", "s1", "b1", None]

        create("n1", "carol", "sales", 5)
        create("n2", "dave", "sales", 6)
        create("n3", "erin", "hr", 7)
        per_namespace = {"max_running_per_namespace": 1}
        assert [claim(**per_namespace) for _ in range(4)] == ["a2", "n1", "n3", None]
        assert claim() == "n2"  # no limits: the rest is claimed
    finally:
        await asyncio.wait_for(srv.stop(), 30)


async def test_a_namespace_past_its_unfinished_job_limit_is_refused(backend: Any) -> None:
    from lakehouse.server.app import LakehouseServer
    from lakehouse.v1 import table_service_pb2 as tpb
    from lakehouse.v1 import table_service_pb2_grpc

    jobs = backend.jobs.model_copy(update={"workers": 0, "max_unfinished_per_namespace": 1})
    srv = LakehouseServer(backend.model_copy(update={"jobs": jobs}))
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{srv.grpc_port}") as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            for name in ("busy", "calm"):
                await tables.CreateNamespace(tpb.CreateNamespaceRequest(name=name))

            def into(namespace: str, table: str) -> job_pb2.JobSpec:
                return sql(
                    "SELECT 1 AS x", destination_namespace=namespace, destination_table=table
                )

            await stub.CreateJob(jpb.CreateJobRequest(spec=into("busy", "a")))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateJob(jpb.CreateJobRequest(spec=into("busy", "b")))
            details = rpc_error_details(err.value)
            assert (details.code, details.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "JOB_QUOTA_EXCEEDED",
            )
            assert details.metadata["namespace"] == "busy" and details.metadata["limit"] == "1"
            await stub.CreateJob(jpb.CreateJobRequest(spec=into("calm", "a")))  # others go on
    finally:
        await asyncio.wait_for(srv.stop(), 30)
