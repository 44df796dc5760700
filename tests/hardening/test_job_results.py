"""SQL job results stay small enough to send, and a retried CreateJob gets its first job.

From issue 13: a preview of huge values was stored whole and broke GetJob, WatchJob and
ListJobs for everyone; and from issue 20: retrying a SQL job with a destination by its
request id answered ALREADY_EXISTS instead of the job the first try created.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from fixtures.net import LOOPBACK
from lakehouse.v1 import job_pb2, job_service_pb2_grpc, rows_pb2, table_service_pb2_grpc
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
WAIT_SECONDS = 60.0
MIB = 1024 * 1024


class Client:
    def __init__(self, server: Any, channel: grpc.aio.Channel, settings: Any) -> None:
        self.server = server
        self.settings = settings
        self.jobs = job_service_pb2_grpc.JobServiceStub(channel)
        self.tables = table_service_pb2_grpc.TableServiceStub(channel)


async def start(settings: Any) -> tuple[Any, grpc.aio.Channel]:
    from lakehouse.server.app import LakehouseServer

    srv = LakehouseServer(settings)
    await srv.start()
    # The client accepts more than the server may send: a too-large answer must be the
    # server's refusal, not the client's.
    options = [("grpc.max_receive_message_length", 512 * MIB)]
    channel = grpc.aio.insecure_channel(f"{LOOPBACK}:{srv.grpc_port}", options=options)
    return srv, channel


@pytest_asyncio.fixture
async def client(backend: Any, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A server with a 1 MiB message limit (the smallest allowed) and its clients."""
    overrides = getattr(request, "param", {})
    jobs = backend.jobs.model_copy(update={"preview_max_bytes": 256 * 1024, **overrides})
    settings = backend.model_copy(update={"jobs": jobs, "max_message_bytes": MIB})
    srv, channel = await start(settings)
    try:
        yield Client(srv, channel, settings)
    finally:
        await channel.close()
        await asyncio.wait_for(srv.stop(), 30)


async def finished(client: Client, job_id: str) -> job_pb2.Job:
    last: job_pb2.Job | None = None

    async def watch() -> None:
        nonlocal last
        async for message in client.jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id)):
            last = message.job

    await asyncio.wait_for(watch(), WAIT_SECONDS)
    assert last is not None and last.state in TERMINAL
    return last


@pytest.mark.parametrize("fmt", [rows_pb2.ROW_FORMAT_ARROW, rows_pb2.ROW_FORMAT_JSON])
async def test_a_preview_of_huge_values_is_capped_and_every_call_still_answers(
    client: Client, fmt: int
) -> None:
    spec = job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(
            statement="SELECT repeat('x', 100000) AS s FROM range(100)",
            preview_format=fmt,  # type: ignore[arg-type]
        )
    )
    created = await client.jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    job = await finished(client, created.job.id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    result = job.result.sql
    assert result.rows_affected == 100 and result.preview_truncated
    assert result.ByteSize() <= client.settings.jobs.preview_max_bytes + 64 * 1024
    kept = (
        result.preview_arrow_record_batch.row_count
        if fmt == rows_pb2.ROW_FORMAT_ARROW
        else len(result.preview_json_rows.rows)
    )
    assert 0 < kept < 100

    got = await client.jobs.GetJob(jpb.GetJobRequest(job_id=job.id))
    assert got.job.result == job.result
    listed = await client.jobs.ListJobs(jpb.ListJobsRequest(page_size=5))
    assert [j.id for j in listed.jobs] == [job.id]


async def store_oversized_jobs(client: Client, count: int, result_bytes: int) -> list[str]:
    """Jobs whose stored results are as large as the service stored before the cap."""
    from sqlalchemy import update

    from lakehouse.adapters.job_store.schema import jobs_table

    store = client.server.job_runtime.store
    spec = job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT 1"))
    result = job_pb2.JobResult(
        sql=job_pb2.SqlJobResult(
            rows_affected=1,
            preview_json_rows=rows_pb2.JsonRows(rows=[]),
        )
    )
    row = result.sql.preview_json_rows.rows.add()
    row.fields["s"].string_value = "x" * result_bytes
    blob = result.SerializeToString()
    ids = []
    for i in range(count):
        job_id = uuid.uuid4().hex
        now = time.time_ns() // 1000 + i
        store.create(
            job_id=job_id,
            kind=job_pb2.JOB_KIND_SQL,
            namespace="",
            table="",
            spec=spec.SerializeToString(),
            spec_digest=f"old-{i}",
            request_id="",
            max_attempts=1,
            now_us=now,
        )
        with store.writing() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id)
                .values(state=job_pb2.JOB_STATE_SUCCEEDED, result=blob, end_time_us=now)
            )
        ids.append(job_id)
    return ids


@pytest.mark.parametrize("client", [{"preview_max_bytes": 1024}], indirect=True)
async def test_a_stored_oversized_result_never_breaks_get_watch_or_list(client: Client) -> None:
    await client.server.job_runtime.worker.stop(1.0)  # the stored jobs are not to run
    big = await store_oversized_jobs(client, 1, 2 * MIB)
    got = await client.jobs.GetJob(jpb.GetJobRequest(job_id=big[0]))
    assert got.job.result.sql.preview_truncated and not got.job.result.sql.preview_json_rows.rows
    assert got.job.result.sql.rows_affected == 1
    async for message in client.jobs.WatchJob(jpb.WatchJobRequest(job_id=big[0])):
        assert message.job.result.sql.preview_truncated
    listed = await client.jobs.ListJobs(jpb.ListJobsRequest(page_size=5))
    assert [j.id for j in listed.jobs] == big


@pytest.mark.parametrize("client", [{"preview_max_bytes": 300 * 1024}], indirect=True)
async def test_a_page_of_large_jobs_stops_early_and_the_next_page_goes_on(
    client: Client,
) -> None:
    await client.server.job_runtime.worker.stop(1.0)
    stored = await store_oversized_jobs(client, 6, 250 * 1024)  # each under the cap
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = await client.jobs.ListJobs(jpb.ListJobsRequest(page_size=5, page_token=token))
        assert page.jobs and page.ByteSize() < client.settings.max_message_bytes
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(stored))


async def make_namespace(client: Client, name: str) -> None:
    try:
        await client.tables.CreateNamespace(tpb.CreateNamespaceRequest(name=name))
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_retrying_a_job_with_a_destination_by_request_id_returns_the_first_job(
    client: Client,
) -> None:
    await make_namespace(client, "retry")
    spec = job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(
            statement="SELECT 1 AS one",
            destination_namespace="retry",
            destination_table="made",
        )
    )
    first = await client.jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id="airflow-1"))
    # While it runs (or is queued), and after it succeeded: the same job, never an error.
    again = await client.jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id="airflow-1"))
    assert again.job.id == first.job.id
    job = await finished(client, first.job.id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    after = await client.jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id="airflow-1"))
    assert after.job.id == first.job.id
    assert after.job.state == job_pb2.JOB_STATE_SUCCEEDED

    # A reused request id with another spec is still refused, before any other check.
    other = job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT 2"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.jobs.CreateJob(jpb.CreateJobRequest(spec=other, request_id="airflow-1"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_retrying_a_failed_job_by_request_id_returns_the_failed_job(
    client: Client,
) -> None:
    await make_namespace(client, "retry")
    spec = job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(
            statement="SELECT count(*) FROM range(1000000000000)",
            destination_namespace="retry",
            destination_table="never",
        )
    )
    spec.timeout.seconds = 1
    first = await client.jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id="fail-1"))
    job = await finished(client, first.job.id)
    assert job.state == job_pb2.JOB_STATE_FAILED
    after = await client.jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id="fail-1"))
    assert after.job.id == first.job.id and after.job.state == job_pb2.JOB_STATE_FAILED


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_cancelling_a_job_while_it_writes_its_destination_leaves_no_files(
    client: Client,
) -> None:
    from pathlib import Path

    await make_namespace(client, "staging")
    warehouse = Path(client.settings.warehouse.removeprefix("file://"))
    spec = job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(
            statement="SELECT i, repeat('x', 100) AS s FROM range(12000000) t(i)",
            destination_namespace="staging",
            destination_table="big",
        )
    )
    created = await client.jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    deadline = time.monotonic() + WAIT_SECONDS
    # The first data file appears on disk when pyiceberg starts writing it.
    while not list(warehouse.rglob("*.parquet")):
        assert time.monotonic() < deadline, "no data file was started"
        await asyncio.sleep(0.05)
    await client.jobs.CancelJob(jpb.CancelJobRequest(job_id=created.job.id))
    job = await finished(client, created.job.id)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    assert list(warehouse.rglob("*.parquet")) == []


def test_the_trino_preview_is_capped_in_bytes_too() -> None:
    from fixtures.fake_trino import FakeTrino, Rows
    from lakehouse.adapters.trino.engine import TrinoEngine
    from lakehouse.config import TrinoSettings
    from lakehouse.domain.job_context import JobContext

    huge = "x" * 100_000
    with FakeTrino() as fake:
        fake.script("SELECT s FROM t", Rows([("s", "varchar")], [[huge] for _ in range(30)]))
        engine = TrinoEngine(
            TrinoSettings(endpoint=fake.url, catalog="iceberg", user="u", request_timeout_seconds=5)
        )
        outcome = engine.run_statement(
            statement="SELECT s FROM t",
            default_namespace="sales",
            preview_limit=100,
            destination=None,
            ctx=JobContext(job_id="job-1"),
            preview_max_bytes=256 * 1024,
        )
    assert outcome.rows_affected == 30 and outcome.truncated
    assert outcome.preview.num_rows == 2  # 2 x 100 kB fit in 256 kiB, 3 do not


def test_files_a_stopped_write_started_are_deleted_even_if_they_complete_later(
    backend: Any,
) -> None:
    """The undo of a stopped write on each object store, including the race the cancel test
    above cannot pin down on S3 (where a file appears only once its upload completes)."""
    from pathlib import Path

    import pyarrow as pa

    from fixtures.iceberg import direct_catalog
    from lakehouse.adapters.duckdb.writes import TrackingIO

    Path(backend.data_dir).mkdir(parents=True, exist_ok=True)  # no server made it
    catalog = direct_catalog(backend)
    catalog.create_namespace("undo")
    table = catalog.create_table(("undo", "t"), pa.schema([("x", pa.int64())]))
    io = TrackingIO(table.io)
    done = f"{table.location()}/data/done.parquet"
    late = f"{table.location()}/data/late.parquet"

    complete = io.new_output(done)
    with complete.create(overwrite=True) as stream:
        stream.write(b"a whole file")
    assert len(complete) > 0  # pyiceberg asks for the size once a file is written
    in_flight = io.new_output(late)
    stream = in_flight.create(overwrite=True)
    stream.write(b"half a file")

    io.abort()  # the job stops while the second file is still being written
    stream.close()
    len(in_flight)

    assert not table.io.new_input(done).exists()
    assert not table.io.new_input(late).exists()
