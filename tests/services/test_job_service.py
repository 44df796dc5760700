"""JobService over the wire: every job kind end to end, on both backends, with real workers.

Tables are prepared with pyiceberg directly (many small commits make small files and
snapshots); results are checked by reading the table afresh, rows compared as multisets.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from google.protobuf import duration_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.http import http_get
from fixtures.iceberg import append, direct_catalog
from fixtures.net import LOOPBACK
from fixtures.objects import put_object
from lakehouse.v1 import job_pb2, job_service_pb2_grpc, rows_pb2, schema_pb2
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

NS, TABLE = "jobs", "events"
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
WAIT_SECONDS = 60.0


def rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + count), pa.int64()),
            "kind": pa.array([f"k{i % 4}" for i in range(start, start + count)], pa.string()),
        }
    )


async def make_table(table_stub: Any, name: str = TABLE) -> None:
    try:
        await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name=NS))
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace=NS,
            table=name,
            schema=schema_pb2.Schema(
                fields=[
                    schema_pb2.Field(name="id", type=LONG, required=False),
                    schema_pb2.Field(name="kind", type=STRING, required=False),
                ]
            ),
        )
    )


def content(settings: Any, name: str = TABLE) -> Counter[tuple[Any, ...]]:
    table = direct_catalog(settings).load_table((NS, name))
    data = table.scan().to_arrow()
    return Counter(zip(*(data.column(c).to_pylist() for c in data.column_names), strict=True))


def data_files(settings: Any, name: str = TABLE) -> int:
    table = direct_catalog(settings).load_table((NS, name))
    return len(list(table.scan().plan_files()))


@pytest.fixture
def jobs(channel: grpc.aio.Channel) -> Any:
    return job_service_pb2_grpc.JobServiceStub(channel)


async def finished(jobs: Any, job_id: str) -> tuple[job_pb2.Job, list[job_pb2.Job]]:
    """Watches a job to its end; returns the last version and every version seen."""
    seen: list[job_pb2.Job] = []

    async def watch() -> None:
        async for message in jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id)):
            seen.append(message.job)

    await asyncio.wait_for(watch(), WAIT_SECONDS)
    assert seen and seen[-1].state in TERMINAL
    return seen[-1], seen


async def run(jobs: Any, spec: job_pb2.JobSpec, request_id: str = "") -> job_pb2.Job:
    job, _ = await run_watched(jobs, spec, request_id)
    return job


async def run_watched(
    jobs: Any, spec: job_pb2.JobSpec, request_id: str = ""
) -> tuple[job_pb2.Job, list[job_pb2.Job]]:
    """Runs a job to success; returns it with every state WatchJob showed on the way."""
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id=request_id))
    job, seen = await finished(jobs, created.job.id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    return job, seen


# -- maintenance ------------------------------------------------------------------------------


async def test_compaction_rewrites_small_files_keeping_every_row(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    for i in range(30):
        append(backend, NS, TABLE, rows(i * 10, 10))
    before = content(backend)
    assert data_files(backend) == 30

    job, seen = await run_watched(
        jobs, job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=TABLE))
    )

    result = job.result.compact_table
    assert (result.files_before, result.files_after, result.rows_rewritten) == (30, 1, 300)
    assert result.HasField("snapshot_id")
    assert data_files(backend) == 1
    assert content(backend) == before
    assert seen[0].state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
    assert job.attempts == 1 and job.worker and job.HasField("end_time")
    assert (job.namespace, job.table, job.kind) == (NS, TABLE, job_pb2.JOB_KIND_COMPACT_TABLE)


async def test_expire_snapshots_keeps_the_last_n_and_deletes_their_files(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    for i in range(8):
        append(backend, NS, TABLE, rows(i * 5, 5))
    before = content(backend)

    job = await run(
        jobs,
        job_pb2.JobSpec(
            expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
                namespace=NS,
                table=TABLE,
                retain_last=3,
                max_snapshot_age=duration_pb2.Duration(seconds=0),
            )
        ),
    )

    result = job.result.expire_snapshots
    assert result.snapshots_expired == 5
    assert result.metadata_files_deleted > 0
    table = direct_catalog(backend).load_table((NS, TABLE))
    assert len(table.metadata.snapshots) == 3
    assert content(backend) == before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_remove_orphan_files_dry_run_then_for_real(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    append(backend, NS, TABLE, rows(0, 10))
    table = direct_catalog(backend).load_table((NS, TABLE))
    data_dir = Path(table.location().removeprefix("file://")) / "data"
    orphan = data_dir / "left-behind.parquet"
    pq.write_table(rows(0, 3), orphan)
    old = time.time() - 5 * 24 * 3600
    os.utime(orphan, (old, old))
    fresh = data_dir / "in-progress.parquet"
    pq.write_table(rows(0, 3), fresh)
    spec = job_pb2.RemoveOrphanFilesJobSpec(namespace=NS, table=TABLE, dry_run=True)

    dry = await run(jobs, job_pb2.JobSpec(remove_orphan_files=spec))
    assert dry.result.remove_orphan_files.orphan_files_found == 1
    assert dry.result.remove_orphan_files.files_deleted == 0
    assert dry.result.remove_orphan_files.orphan_file_uris[0].endswith("left-behind.parquet")
    assert dry.result.remove_orphan_files.orphan_bytes == orphan.stat().st_size
    assert orphan.exists()

    spec.dry_run = False
    real = await run(jobs, job_pb2.JobSpec(remove_orphan_files=spec))
    assert real.result.remove_orphan_files.files_deleted == 1
    assert not orphan.exists() and fresh.exists()
    assert sum(content(backend).values()) == 10


# -- import and SQL ---------------------------------------------------------------------------


async def test_import_files_from_a_prefix(backend: Any, table_stub: Any, jobs: Any) -> None:
    await make_table(table_stub)
    prefix = backend.jobs.import_prefixes[0] + "batch-1/"
    put_object(backend, prefix + "a.parquet", _parquet(rows(0, 100)))
    put_object(backend, prefix + "b.csv", _csv(rows(100, 50)))
    put_object(backend, prefix + "_SUCCESS", b"")

    job = await run(
        jobs,
        job_pb2.JobSpec(
            import_files=job_pb2.ImportFilesJobSpec(namespace=NS, table=TABLE, source_prefix=prefix)
        ),
    )

    result = job.result.import_files
    assert (result.files_imported, result.rows_imported) == (2, 150)
    assert result.files_registered == 1 and result.files_rewritten == 1
    assert content(backend) == Counter(
        zip(range(150), [f"k{i % 4}" for i in range(150)], strict=True)
    )


async def test_sql_query_previews_rows_and_writes_a_destination_table(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    append(backend, NS, TABLE, rows(0, 1000))
    statement = (
        "SELECT kind, count(*) AS n, sum(id) AS total FROM events GROUP BY kind ORDER BY kind"
    )

    job = await run(
        jobs,
        job_pb2.JobSpec(
            sql=job_pb2.SqlJobSpec(
                statement=statement,
                default_namespace=NS,
                preview_row_limit=2,
                preview_format=rows_pb2.ROW_FORMAT_JSON,
                destination_table="by_kind",
            )
        ),
    )

    result = job.result.sql
    assert result.rows_affected == 4 and result.preview_truncated
    preview = [dict(row.fields) for row in result.preview_json_rows.rows]
    assert [r["kind"].string_value for r in preview] == ["k0", "k1"]
    assert preview[0]["n"].number_value == 250
    # DuckDB sums BIGINTs as HUGEINT: a decimal(38, 0), a string in JSON (no precision lost)
    assert int(preview[0]["total"].string_value) == sum(range(0, 1000, 4))
    assert job.namespace == NS and job.table == "by_kind"
    written = direct_catalog(backend).load_table((NS, "by_kind")).scan().to_arrow()
    assert sorted(written.column("kind").to_pylist()) == ["k0", "k1", "k2", "k3"]
    assert sum(written.column("total").to_pylist()) == sum(range(1000))


async def test_sql_arrow_preview(backend: Any, table_stub: Any, jobs: Any) -> None:
    await make_table(table_stub)
    append(backend, NS, TABLE, rows(0, 10))
    job = await run(
        jobs,
        job_pb2.JobSpec(
            sql=job_pb2.SqlJobSpec(statement=f"SELECT id FROM {NS}.{TABLE} WHERE id < 3")
        ),
    )
    schema = pa.ipc.read_schema(pa.py_buffer(job.result.sql.arrow_schema.serialized_schema))
    batch = pa.ipc.read_record_batch(
        pa.py_buffer(job.result.sql.preview_arrow_record_batch.serialized_record_batch), schema
    )
    assert sorted(batch.column(0).to_pylist()) == [0, 1, 2]
    assert not job.result.sql.preview_truncated


# -- the job lifecycle ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_request_id_makes_create_idempotent(backend: Any, table_stub: Any, jobs: Any) -> None:
    await make_table(table_stub)
    spec = job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=TABLE))
    first = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id="airflow-run-42"))
    again = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec, request_id="airflow-run-42"))
    assert again.job.id == first.job.id
    assert again.job.request_id == "airflow-run-42"

    other = job_pb2.JobSpec(
        expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(namespace=NS, table=TABLE)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CreateJob(jpb.CreateJobRequest(spec=other, request_id="airflow-run-42"))
    details = rpc_error_details(err.value)
    assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    listed = await jobs.ListJobs(jpb.ListJobsRequest())
    assert [j.id for j in listed.jobs] == [first.job.id]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_list_filters_and_pages_newest_first(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    await make_table(table_stub, "other")
    ids = []
    for i in range(5):
        name = TABLE if i % 2 == 0 else "other"
        spec = job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=name))
        ids.append((await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))).job.id)
    ids.reverse()

    paged: list[str] = []
    token = ""
    while True:
        page = await jobs.ListJobs(jpb.ListJobsRequest(page_size=2, page_token=token))
        paged += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert paged == ids

    on_other = await jobs.ListJobs(jpb.ListJobsRequest(namespace=NS, table="other"))
    assert [j.id for j in on_other.jobs] == [ids[1], ids[3]]
    expiries = await jobs.ListJobs(jpb.ListJobsRequest(kinds=[job_pb2.JOB_KIND_EXPIRE_SNAPSHOTS]))
    assert not expiries.jobs
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.ListJobs(jpb.ListJobsRequest(page_token=token or "garbage"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_cancel_a_running_sql_job_commits_nothing(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    append(backend, NS, TABLE, rows(0, 3000))
    slow = (
        "SELECT count(*) FROM jobs.events a, jobs.events b, jobs.events c "
        "WHERE a.id + b.id + c.id = -1"
    )
    created = await jobs.CreateJob(
        jpb.CreateJobRequest(
            spec=job_pb2.JobSpec(
                sql=job_pb2.SqlJobSpec(
                    statement=slow, destination_namespace=NS, destination_table="never"
                )
            )
        )
    )
    job_id = created.job.id
    deadline = time.monotonic() + WAIT_SECONDS
    while (
        await jobs.GetJob(jpb.GetJobRequest(job_id=job_id))
    ).job.state != job_pb2.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.DeleteJob(jpb.DeleteJobRequest(job_id=job_id))
    details = rpc_error_details(err.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "JOB_NOT_FINISHED",
    )

    cancelled = await jobs.CancelJob(jpb.CancelJobRequest(job_id=job_id))
    assert cancelled.job.cancel_requested
    job, _ = await finished(jobs, job_id)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    assert not direct_catalog(backend).table_exists((NS, "never"))

    again = await jobs.CancelJob(jpb.CancelJobRequest(job_id=job_id))
    assert again.job.state == job_pb2.JOB_STATE_CANCELLED
    await jobs.DeleteJob(jpb.DeleteJobRequest(job_id=job_id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.GetJob(jpb.GetJobRequest(job_id=job_id))
    assert rpc_error_details(err.value).reason == "JOB_NOT_FOUND"


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_cancelling_a_finished_job_is_refused(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    job = await run(
        jobs,
        job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=TABLE)),
    )
    assert not job.result.compact_table.HasField("snapshot_id")  # nothing to compact
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CancelJob(jpb.CancelJobRequest(job_id=job.id))
    details = rpc_error_details(err.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "JOB_ALREADY_FINISHED",
    )


# -- bad input: a clear error, and no job ---------------------------------------------------


BAD_SPECS = [
    pytest.param(job_pb2.JobSpec(), grpc.StatusCode.INVALID_ARGUMENT, "spec.kind", id="no-kind"),
    pytest.param(
        job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table="nope")),
        grpc.StatusCode.NOT_FOUND,
        None,
        id="unknown-table",
    ),
    pytest.param(
        job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table="../x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.compact_table.table",
        id="bad-table-name",
    ),
    pytest.param(
        job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELEC 1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.sql.statement",
        id="sql-syntax",
    ),
    pytest.param(
        job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=f"SELECT * FROM {NS}.nope")),
        grpc.StatusCode.NOT_FOUND,
        "spec.sql.statement",
        id="sql-unknown-table",
    ),
    pytest.param(
        job_pb2.JobSpec(
            sql=job_pb2.SqlJobSpec(
                statement=f"SELECT * FROM {TABLE} JOIN nope USING (id)", default_namespace=NS
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "spec.sql.statement",
        id="sql-unknown-bare-table-in-a-join",
    ),
    pytest.param(
        job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement=f"SELECT * FROM nowhere.{TABLE}")),
        grpc.StatusCode.NOT_FOUND,
        "spec.sql.statement",
        id="sql-unknown-namespace",
    ),
    pytest.param(
        job_pb2.JobSpec(
            sql=job_pb2.SqlJobSpec(statement=f"INSERT INTO {NS}.nope SELECT * FROM {NS}.{TABLE}")
        ),
        grpc.StatusCode.NOT_FOUND,
        "spec.sql.statement",
        id="sql-insert-into-unknown-table",
    ),
    pytest.param(
        job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT * FROM read_csv('/etc/passwd')")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.sql.statement",
        id="sql-reads-a-file",
    ),
    pytest.param(
        job_pb2.JobSpec(
            sql=job_pb2.SqlJobSpec(statement="SELECT 1", engine=job_pb2.SQL_ENGINE_TRINO)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.sql.engine",
        id="trino-not-configured",
    ),
    pytest.param(
        job_pb2.JobSpec(
            expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
                namespace=NS, table=TABLE, retain_last=-1
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.expire_snapshots.retain_last",
        id="negative-retention",
    ),
    pytest.param(
        job_pb2.JobSpec(
            expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
                namespace=NS, table=TABLE, max_snapshot_age=duration_pb2.Duration(seconds=-60)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.expire_snapshots.max_snapshot_age",
        id="negative-age",
    ),
    pytest.param(
        job_pb2.JobSpec(
            remove_orphan_files=job_pb2.RemoveOrphanFilesJobSpec(
                namespace=NS, table=TABLE, min_file_age=duration_pb2.Duration(seconds=60)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.remove_orphan_files.min_file_age",
        id="orphan-age-too-short",
    ),
    pytest.param(
        job_pb2.JobSpec(
            import_files=job_pb2.ImportFilesJobSpec(
                namespace=NS, table=TABLE, source_prefix="s3://someone-elses-bucket/data/"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.import_files.source_prefix",
        id="import-outside-allowed-prefixes",
    ),
]


@pytest.mark.parametrize(("spec", "code", "field"), BAD_SPECS)
async def test_bad_specs_are_refused_and_create_nothing(
    backend: Any,
    table_stub: Any,
    jobs: Any,
    spec: job_pb2.JobSpec,
    code: grpc.StatusCode,
    field: str | None,
) -> None:
    await make_table(table_stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    details = rpc_error_details(err.value)
    assert details.code == code, details.message
    if code == grpc.StatusCode.NOT_FOUND:
        assert details.reason in ("TABLE_NOT_FOUND", "NAMESPACE_NOT_FOUND"), details.reason
        # NOT_FOUND has no BadRequest: ErrorInfo names the field that named the table.
        assert details.metadata.get("field") == field, details.metadata
    elif field is not None:
        assert details.violated_fields == [field], details.message
    assert not (await jobs.ListJobs(jpb.ListJobsRequest())).jobs


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_cte_named_like_a_missing_table_is_not_refused(
    backend: Any, table_stub: Any, jobs: Any
) -> None:
    await make_table(table_stub)
    append(backend, NS, TABLE, rows(0, 10))
    job = await run(
        jobs,
        job_pb2.JobSpec(
            sql=job_pb2.SqlJobSpec(
                statement=f"WITH nope AS (SELECT id FROM {TABLE} WHERE id < 3) "
                "SELECT count(*) AS n FROM nope",
                default_namespace=NS,
                preview_format=rows_pb2.ROW_FORMAT_JSON,
            )
        ),
    )
    [row] = job.result.sql.preview_json_rows.rows
    assert row.fields["n"].number_value == 3


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_bad_job_ids(backend: Any, jobs: Any) -> None:
    for job_id, code in [
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("a/../b", grpc.StatusCode.INVALID_ARGUMENT),
        ("0" * 32, grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await jobs.GetJob(jpb.GetJobRequest(job_id=job_id))
        assert err.value.code() == code


def _parquet(data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(data, sink)
    return bytes(sink.getvalue().to_pybytes())


def _csv(data: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(data, sink)
    return bytes(sink.getvalue().to_pybytes())


async def job_samples(http_url: str) -> dict[str, float]:
    """The ``lakehouse_job*`` samples of the server's /metrics, by name with labels."""
    reply = await http_get(f"{http_url}/metrics")
    assert reply.status == 200
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in reply.text.splitlines()
        if line.startswith("lakehouse_job")
    }


FINISHED_OK = 'lakehouse_jobs_finished_total{kind="compact_table",outcome="succeeded"}'
ATTEMPT_OK = 'lakehouse_job_attempts_ended_total{kind="compact_table",outcome="succeeded"}'


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_job_metrics(backend: Any, table_stub: Any, jobs: Any, http_url: str) -> None:
    await make_table(table_stub)
    before = await job_samples(http_url)
    await run(
        jobs,
        job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=TABLE)),
    )
    samples = await job_samples(http_url)
    assert samples['lakehouse_jobs_created_total{kind="compact_table",origin="api"}'] >= 1
    assert samples[FINISHED_OK] - before.get(FINISHED_OK, 0) == 1
    assert samples[ATTEMPT_OK] - before.get(ATTEMPT_OK, 0) == 1
    assert samples['lakehouse_job_seconds_count{kind="compact_table"}'] >= 1
    assert 'lakehouse_jobs_queued{kind="sql"}' in samples
    assert "lakehouse_job_lease_losses_total" in samples
    # Only final states count as finished; retries and hand-backs are attempts.
    finished = [k for k in samples if k.startswith("lakehouse_jobs_finished_total{")]
    assert finished and all(
        any(f'outcome="{state}"' in k for state in ("succeeded", "failed", "cancelled"))
        for k in finished
    ), finished


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_api_only_replica_reports_the_queue_and_its_cancels(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakehouse.server import job_runtime
    from lakehouse.server.app import LakehouseServer
    from lakehouse.v1 import table_service_pb2_grpc

    monkeypatch.setattr(job_runtime, "QUEUE_DEPTH_SECONDS", 0.05)
    queued = 'lakehouse_jobs_queued{kind="compact_table"}'
    cancelled = 'lakehouse_jobs_finished_total{kind="compact_table",outcome="cancelled"}'
    settings = backend.model_copy(update={"jobs": backend.jobs.model_copy(update={"workers": 0})})
    server = LakehouseServer(settings)
    await server.start()
    try:
        http_url = f"http://{LOOPBACK}:{server.http_port}"
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            await make_table(table_service_pb2_grpc.TableServiceStub(channel))
            before = await job_samples(http_url)
            spec = job_pb2.JobSpec(
                compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=TABLE)
            )
            created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))

            async def queue_depth_becomes(value: float) -> dict[str, float]:
                deadline = time.monotonic() + WAIT_SECONDS
                while (samples := await job_samples(http_url)).get(queued) != value:
                    assert time.monotonic() < deadline, samples.get(queued)
                    await asyncio.sleep(0.05)
                return samples

            await queue_depth_becomes(1)  # no worker here, yet the gauge follows the store
            await jobs.CancelJob(jpb.CancelJobRequest(job_id=created.job.id))
            after = await queue_depth_becomes(0)
            assert after[cancelled] - before.get(cancelled, 0) == 1
    finally:
        await asyncio.wait_for(server.stop(), 30)
