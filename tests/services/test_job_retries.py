"""A CreateJob retried with its request_id gets the job its first try created, for every kind.

From issue 20: a retried orchestrator task (the README's Airflow example run twice) must get
its first job, never a refusal of the spec its first job made invalid (a destination the
first run created, files it imported, a table dropped since) and never a second run. Each
kind is retried while its job is queued and while it runs (a worker's real claim holds it
RUNNING), and after it succeeded or failed. Creation goes to a server without workers, so
the queued and running retries are deterministic; a second server on the same catalog and job
store runs the job.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures.net import LOOPBACK
from fixtures.objects import put_object
from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2,
    table_service_pb2_grpc,
)

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

NS, SOURCE, DESTINATION = "retry", "src", "dst"
ROWS = 10
TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
WAIT_SECONDS = 60.0


def _import_uri(settings: Any) -> str:
    return str(settings.jobs.import_prefixes[0]) + "batch/a.parquet"


#: Each kind's spec, and the rows ``retry.src`` (and ``retry.dst``) hold once it ran once.
SPECS: dict[str, Callable[[Any], job_pb2.JobSpec]] = {
    "sql_destination": lambda _: job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(
            statement=f"SELECT id FROM {NS}.{SOURCE}",
            destination_namespace=NS,
            destination_table=DESTINATION,
        )
    ),
    "sql_insert": lambda _: job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(
            statement=f"INSERT INTO {NS}.{SOURCE} SELECT id + 100 FROM {NS}.{SOURCE}"
        )
    ),
    "sql_delete": lambda _: job_pb2.JobSpec(
        sql=job_pb2.SqlJobSpec(statement=f"DELETE FROM {NS}.{SOURCE} WHERE id < 3")
    ),
    "import_files": lambda settings: job_pb2.JobSpec(
        import_files=job_pb2.ImportFilesJobSpec(
            namespace=NS, table=SOURCE, source_uris=[_import_uri(settings)]
        )
    ),
    "compact_table": lambda _: job_pb2.JobSpec(
        compact_table=job_pb2.CompactTableJobSpec(namespace=NS, table=SOURCE)
    ),
    "expire_snapshots": lambda _: job_pb2.JobSpec(
        expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(namespace=NS, table=SOURCE, retain_last=1)
    ),
    "remove_orphan_files": lambda _: job_pb2.JobSpec(
        remove_orphan_files=job_pb2.RemoveOrphanFilesJobSpec(
            namespace=NS, table=SOURCE, dry_run=True
        )
    ),
}
#: Rows of retry.src after one successful run (and of retry.dst for sql_destination).
ROWS_AFTER = {"sql_insert": 2 * ROWS, "sql_delete": ROWS - 3, "import_files": 2 * ROWS}


class Replica:
    def __init__(self, server: Any, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.jobs = job_service_pb2_grpc.JobServiceStub(channel)
        self.tables = table_service_pb2_grpc.TableServiceStub(channel)
        self.ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)


async def _start(settings: Any, workers: int) -> tuple[Any, grpc.aio.Channel]:
    from lakehouse.server.app import LakehouseServer

    jobs = settings.jobs.model_copy(update={"workers": workers, "lease_seconds": 1.0})
    server = LakehouseServer(settings.model_copy(update={"jobs": jobs}))
    await server.start()
    return server, grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}")


class Replicas:
    """The API replica (no workers) now, the worker replica when the test starts it."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._started: list[tuple[Any, grpc.aio.Channel]] = []

    async def start(self, workers: int) -> Replica:
        server, channel = await _start(self.settings, workers)
        self._started.append((server, channel))
        return Replica(server, channel)

    async def stop(self) -> None:
        for server, channel in reversed(self._started):
            await channel.close()
            await asyncio.wait_for(server.stop(), 30)


@pytest.fixture
async def replicas(backend: Any) -> AsyncIterator[Replicas]:
    started = Replicas(backend)
    try:
        yield started
    finally:
        await started.stop()


async def _prepare(api: Replica, settings: Any) -> None:
    long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
    await api.tables.CreateNamespace(table_service_pb2.CreateNamespaceRequest(name=NS))
    await api.tables.CreateTable(
        table_service_pb2.CreateTableRequest(
            namespace=NS,
            table=SOURCE,
            schema=schema_pb2.Schema(fields=[{"name": "id", "type": long}]),
        )
    )
    await api.ingest.WriteRows(
        ingest_service_pb2.WriteRowsRequest(
            namespace=NS,
            table=SOURCE,
            json_rows=rows_pb2.JsonRows(rows=[{"id": i} for i in range(ROWS)]),
        )
    )
    parquet = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array(range(1000, 1000 + ROWS), pa.int64())}), parquet)
    put_object(settings, _import_uri(settings), parquet.getvalue())


async def _create(api: Replica, spec: job_pb2.JobSpec) -> job_pb2.Job:
    request = job_service_pb2.CreateJobRequest(spec=spec, request_id="airflow-run-2026-11-22")
    answer: job_pb2.Job = (await api.jobs.CreateJob(request)).job
    return answer


async def _finished(api: Replica, job_id: str) -> job_pb2.Job:
    last: job_pb2.Job | None = None

    async def watch() -> None:
        nonlocal last
        request = job_service_pb2.WatchJobRequest(job_id=job_id)
        async for message in api.jobs.WatchJob(request):
            last = message.job

    await asyncio.wait_for(watch(), WAIT_SECONDS)
    assert last is not None and last.state in TERMINAL
    return last


async def _row_count(api: Replica, table: str) -> int:
    request = table_service_pb2.ReadRowsRequest(
        namespace=NS, table=table, format=rows_pb2.ROW_FORMAT_JSON
    )
    return sum([len(r.json_rows.rows) async for r in api.tables.ReadRows(request)])


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
@pytest.mark.parametrize("kind", SPECS)
async def test_a_retry_by_request_id_gets_the_first_job_and_runs_nothing_again(
    replicas: Replicas, backend: Any, kind: str, outcome: str
) -> None:
    from lakehouse.core.jobs import now_us

    api = await replicas.start(workers=0)
    await _prepare(api, backend)
    spec = SPECS[kind](backend)
    first = await _create(api, spec)

    queued = await _create(api, spec)
    assert (queued.id, queued.state) == (first.id, job_pb2.JOB_STATE_QUEUED)
    if outcome == "failed":
        # Every kind reads retry.src: gone, the job fails, and a fresh check of the spec
        # would now be NOT_FOUND; the retry must not check it again.
        await api.tables.DeleteTable(
            table_service_pb2.DeleteTableRequest(namespace=NS, table=SOURCE)
        )
    else:
        # A worker claims it as every worker does, then "dies": its lease runs out and the
        # worker replica takes the job over.
        store = api.server.job_runtime.store
        claim = store.claim(worker="a-worker-that-died", lease_seconds=1.0, now_us=now_us())
        assert claim is not None and claim.job.id == first.id
        running = await _create(api, spec)
        assert (running.id, running.state) == (first.id, job_pb2.JOB_STATE_RUNNING)

    await replicas.start(workers=1)
    ended = await _finished(api, first.id)
    expected = job_pb2.JOB_STATE_SUCCEEDED if outcome == "succeeded" else job_pb2.JOB_STATE_FAILED
    assert ended.state == expected, ended.error

    again = await _create(api, spec)
    assert (again.id, again.state) == (first.id, expected)
    listed = await api.jobs.ListJobs(job_service_pb2.ListJobsRequest())
    assert [j.id for j in listed.jobs] == [first.id]
    if outcome == "succeeded":
        # Nothing ran twice: the rows are what one run makes.
        assert await _row_count(api, SOURCE) == ROWS_AFTER.get(kind, ROWS)
        if kind == "sql_destination":
            assert await _row_count(api, DESTINATION) == ROWS
