"""Maintenance policies in table properties, run by the scheduler without anyone asking.

A real server with a fast scheduler; commits come from pyiceberg directly, as from any other
writer sharing the catalog.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyarrow as pa
import pytest
import pytest_asyncio

from fixtures.iceberg import direct_catalog
from fixtures.net import LOOPBACK
from lakehouse.client.arrow import write_rows_request
from lakehouse.v1 import ingest_service_pb2_grpc, job_pb2, job_service_pb2_grpc
from lakehouse.v1 import job_service_pb2 as jpb

NS = "policies"
KEEP = 3
COMMITS = 30
SCHEDULER_INTERVAL = 0.3


@pytest_asyncio.fixture
async def scheduled_server(backend: Any) -> AsyncIterator[Any]:
    from lakehouse.server.app import LakehouseServer

    jobs = backend.jobs.model_copy(
        update={"scheduler_interval_seconds": SCHEDULER_INTERVAL, "ingest_keep_snapshots": KEEP}
    )
    server = LakehouseServer(backend.model_copy(update={"jobs": jobs}))
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), 30)


def _table(settings: Any, name: str, properties: dict[str, str]) -> Any:
    catalog = direct_catalog(settings)
    catalog.create_namespace_if_not_exists(NS)
    schema = pa.schema([("id", pa.int64())])
    return catalog.create_table((NS, name), schema=schema, properties=properties)


async def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("backend", ["local", "postgres_s3"], indirect=True)
async def test_snapshot_count_stays_bounded_under_a_trickle_of_commits(
    backend: Any, scheduled_server: Any
) -> None:
    table = _table(
        backend,
        "trickle",
        {
            "history.expire.min-snapshots-to-keep": str(KEEP),
            "history.expire.max-snapshot-age-ms": "0",
        },
    )
    most = 0
    for i in range(COMMITS):
        for attempt in range(5):  # an expiry commit may win the race; pyiceberg then refreshes
            try:
                table.append(pa.table({"id": pa.array([i], pa.int64())}))
                break
            except Exception:  # CommitFailedException
                table = table.refresh()
                if attempt == 4:
                    raise
        table = table.refresh()
        most = max(most, len(table.metadata.snapshots))
        await asyncio.sleep(0.1)

    # Bounded throughout: the policy's 3 plus what commits while a round and its job run
    # (scheduling rounds stretch on a loaded machine); without the policy it would reach 30.
    assert most <= KEEP + 17, most
    await _wait_for(lambda: len(table.refresh().metadata.snapshots) <= KEEP)
    assert sorted(table.refresh().scan().to_arrow()["id"].to_pylist()) == list(range(COMMITS))

    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{scheduled_server.grpc_port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        listed = await stub.ListJobs(
            jpb.ListJobsRequest(
                namespace=NS, table="trickle", kinds=[job_pb2.JOB_KIND_EXPIRE_SNAPSHOTS]
            )
        )
    assert listed.jobs
    # The newest may still run; every earlier one ended well (conflicts with the trickle's
    # commits are retried inside the job, not failed).
    unsuccessful = [
        (job_pb2.JobState.Name(j.state), j.attempts, j.error.message)
        for j in listed.jobs[1:]
        if j.state != job_pb2.JOB_STATE_SUCCEEDED
    ]
    assert not unsuccessful, unsuccessful


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_small_files_get_compacted_by_policy(backend: Any, scheduled_server: Any) -> None:
    table = _table(backend, "small", {"lakehouse.compaction.min-input-files": "5"})
    for i in range(5):
        table.append(pa.table({"id": pa.array(range(i * 10, i * 10 + 10), pa.int64())}))
    await _wait_for(lambda: len(list(table.refresh().scan().plan_files())) == 1)
    assert sorted(table.refresh().scan().to_arrow()["id"].to_pylist()) == list(range(50))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_policies_reclaim_a_compactions_inputs_with_no_commit_after_it(
    backend: Any, scheduled_server: Any
) -> None:
    """Compaction then expiry by policy, and nobody writes again: the small files go."""
    table = _table(
        backend,
        "reclaimed",
        {
            "lakehouse.compaction.min-input-files": "5",
            "history.expire.min-snapshots-to-keep": "1",
            "history.expire.max-snapshot-age-ms": "0",
        },
    )
    for i in range(5):
        table.append(pa.table({"id": pa.array(range(i * 10, i * 10 + 10), pa.int64())}))
    location = table.location().removeprefix("file://")

    def parquet_files() -> list[str]:
        return [
            os.path.join(folder, name)
            for folder, _, names in os.walk(location)
            for name in names
            if name.endswith(".parquet")
        ]

    # The compaction is the last commit; its inputs are reclaimed all the same.
    await _wait_for(lambda: len(parquet_files()) == 1, timeout=60)
    fresh = table.refresh()
    assert len(fresh.metadata.snapshots) == 1
    assert [t.file.file_path.removeprefix("file://") for t in fresh.scan().plan_files()] == (
        parquet_files()
    )
    assert sorted(fresh.scan().to_arrow()["id"].to_pylist()) == list(range(50))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_tables_without_a_policy_are_left_alone(backend: Any, scheduled_server: Any) -> None:
    table = _table(backend, "plain", {})
    for i in range(6):
        table.append(pa.table({"id": pa.array([i], pa.int64())}))
    await asyncio.sleep(SCHEDULER_INTERVAL * 4)
    assert len(table.refresh().metadata.snapshots) == 6
    assert len(list(table.refresh().scan().plan_files())) == 6


@pytest.mark.parametrize("backend", ["local", "postgres_s3"], indirect=True)
async def test_a_table_under_ingest_keeps_its_newest_snapshots_by_default(
    backend: Any, scheduled_server: Any
) -> None:
    """No policy of its own: the ingest default (``jobs.ingest_keep_snapshots``) bounds its
    snapshots, and a retry of a request whose snapshot expired is still not written twice."""
    table = _table(backend, "ingested", {})
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{scheduled_server.grpc_port}") as ch:
        stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
        most = 0
        for i in range(COMMITS):
            data = pa.table({"id": pa.array([i], pa.int64())})
            await stub.WriteRows(write_rows_request(NS, "ingested", data, request_id=f"r{i}"))
            most = max(most, len(table.refresh().metadata.snapshots))
            await asyncio.sleep(0.1)
        # Bounded throughout (see the trickle test for the slack); without it, 30.
        assert most <= KEEP + 17, most
        await _wait_for(lambda: len(table.refresh().metadata.snapshots) <= KEEP)
        first = write_rows_request(
            NS, "ingested", pa.table({"id": pa.array([0], pa.int64())}), request_id="r0"
        )
        again = await stub.WriteRows(first)
    assert again.result.already_written
    assert sorted(table.refresh().scan().to_arrow()["id"].to_pylist()) == list(range(COMMITS))


async def _jobs_of(server: Any, table: str, kind: int) -> list[job_pb2.Job]:
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        listed = await stub.ListJobs(jpb.ListJobsRequest(namespace=NS, table=table, kinds=[kind]))
    return list(listed.jobs)


def _stray_file(table: Any, name: str, age_seconds: float) -> Any:
    """A file under the table's data folder that no metadata names, modified long ago."""
    from pathlib import Path
    from urllib.parse import urlparse

    path = Path(urlparse(table.location()).path) / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind by a crashed writer")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_orphans_are_removed_by_policy_once_per_interval(
    backend: Any, scheduled_server: Any
) -> None:
    interval_ms = 5_000
    table = _table(
        backend,
        "orphaned",
        {
            "lakehouse.orphans.min-file-age-ms": str(3600 * 1000),
            "lakehouse.orphans.interval-ms": str(interval_ms),
        },
    )
    table.append(pa.table({"id": pa.array([1, 2, 3], pa.int64())}))
    first = _stray_file(table, "stray-1.parquet", age_seconds=2 * 3600)
    fresh = _stray_file(table, "fresh.parquet", age_seconds=0)
    await _wait_for(lambda: not first.exists())

    # The next run waits for the interval although rounds come every 0.3 s.
    second = _stray_file(table, "stray-2.parquet", age_seconds=2 * 3600)
    await _wait_for(lambda: not second.exists(), timeout=interval_ms / 1000 + 30)
    orphan_jobs = await _jobs_of(scheduled_server, "orphaned", job_pb2.JOB_KIND_REMOVE_ORPHAN_FILES)
    assert len(orphan_jobs) == 2, [j.create_time.ToJsonString() for j in orphan_jobs]
    gap = orphan_jobs[0].create_time.ToMilliseconds() - orphan_jobs[1].create_time.ToMilliseconds()
    assert gap >= interval_ms

    assert fresh.exists(), "a file younger than the safety age is never an orphan"
    assert sorted(table.refresh().scan().to_arrow()["id"].to_pylist()) == [1, 2, 3]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_finished_jobs_are_deleted_after_the_retention(backend: Any) -> None:
    from lakehouse.server.app import LakehouseServer

    jobs = backend.jobs.model_copy(
        update={"scheduler_interval_seconds": SCHEDULER_INTERVAL, "retention_days": 2 / 86400}
    )
    server = LakehouseServer(backend.model_copy(update={"jobs": jobs}))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            spec = job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT 1"))
            job = (await stub.CreateJob(jpb.CreateJobRequest(spec=spec))).job
            async for update in stub.WatchJob(jpb.WatchJobRequest(job_id=job.id), timeout=60):
                last = update.job
            assert last.state == job_pb2.JOB_STATE_SUCCEEDED
            # Still there right after it ended, gone once the retention (2 s) has passed.
            await stub.GetJob(jpb.GetJobRequest(job_id=job.id))
            deadline = time.monotonic() + 30
            while True:
                try:
                    await stub.GetJob(jpb.GetJobRequest(job_id=job.id))
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                    break
                assert time.monotonic() < deadline, "the finished job was never deleted"
                await asyncio.sleep(0.2)
    finally:
        await asyncio.wait_for(server.stop(), 30)
