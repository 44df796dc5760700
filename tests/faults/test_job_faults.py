"""Jobs under faults, against real ``lakehouse serve`` and ``lakehouse worker`` processes.

- A worker is SIGKILLed while it runs a job: its lease runs out, another worker takes the job
  over as a second attempt and finishes it; the result is committed once.
- A worker is stopped with SIGTERM while it runs a job: the job goes back to the queue at
  once and another worker finishes it.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.iceberg import direct_catalog
from fixtures.serve_process import ServeProcess, serve_process, settings_env
from lakehouse.v1 import job_pb2, job_service_pb2_grpc
from lakehouse.v1 import job_service_pb2 as jpb

pytestmark = pytest.mark.faults

NS, TABLE = "faults", "numbers"
LEASE_SECONDS = 2
WAIT_SECONDS = 90.0
# A cross join that DuckDB needs a few seconds for: long enough to be killed mid-run.
SLOW_QUERY = (
    "SELECT a.id % 7 AS bucket, count(*) AS n FROM faults.numbers a, faults.numbers b "
    "WHERE (a.id * b.id) % 11 = 3 GROUP BY bucket"
)
ROWS = 20000


def job_env(settings: Any, workers: int) -> dict[str, str]:
    return {
        **settings_env(settings),
        "LAKEHOUSE_JOBS__WORKERS": str(workers),
        "LAKEHOUSE_JOBS__LEASE_SECONDS": str(LEASE_SECONDS),
        "LAKEHOUSE_JOBS__POLL_INTERVAL_SECONDS": "0.1",
        "LAKEHOUSE_JOBS__RETRY_BACKOFF_SECONDS": "0.1",
        "LAKEHOUSE_JOBS__SCHEDULER_INTERVAL_SECONDS": "0",
        "LAKEHOUSE_HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
    }


def expected_result() -> dict[int, int]:
    ids = range(ROWS)
    counts: dict[int, int] = {}
    residues = [i % 11 for i in ids]
    per_residue = [residues.count(r) for r in range(11)]
    for a in ids:
        n = sum(per_residue[r] for r in range(11) if (a * r) % 11 == 3)
        counts[a % 7] = counts.get(a % 7, 0) + n
    return {k: v for k, v in counts.items() if v}


@pytest.fixture
def numbers(backend: Any) -> Iterator[None]:
    Path(backend.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(backend)
    catalog.create_namespace_if_not_exists(NS)
    data = pa.table({"id": pa.array(range(ROWS), pa.int64())})
    table = catalog.create_table((NS, TABLE), schema=data.schema)
    table.append(data)
    yield


def create_slow_job(server: ServeProcess, destination: str) -> str:
    with grpc.insecure_channel(server.target) as ch:
        reply = job_service_pb2_grpc.JobServiceStub(ch).CreateJob(
            jpb.CreateJobRequest(
                spec=job_pb2.JobSpec(
                    sql=job_pb2.SqlJobSpec(
                        statement=SLOW_QUERY,
                        destination_namespace=NS,
                        destination_table=destination,
                    )
                )
            ),
            timeout=30,
        )
    return str(reply.job.id)


def get_job(server: ServeProcess, job_id: str) -> job_pb2.Job:
    with grpc.insecure_channel(server.target) as ch:
        reply = job_service_pb2_grpc.JobServiceStub(ch).GetJob(
            jpb.GetJobRequest(job_id=job_id), timeout=10
        )
    return reply.job


def wait_running_on(server: ServeProcess, job_id: str, worker: ServeProcess) -> job_pb2.Job:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = get_job(server, job_id)
        if job.state == job_pb2.JOB_STATE_RUNNING and job.worker.endswith(f":{worker.pid}"):
            return job
        assert job.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING), job
        time.sleep(0.05)
    raise AssertionError(f"job never ran on {worker.name}\n{worker.logs()}")


def wait_finished(server: ServeProcess, job_id: str, *logs_of: ServeProcess) -> job_pb2.Job:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        job = get_job(server, job_id)
        if job.state not in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING):
            return job
        time.sleep(0.1)
    raise AssertionError("job did not finish\n" + "\n".join(p.logs() for p in logs_of))


def metric(process: ServeProcess, name: str) -> float:
    with urllib.request.urlopen(f"{process.http_url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def check_destination(settings: Any, name: str) -> None:
    table = direct_catalog(settings).load_table((NS, name))
    assert len(table.metadata.snapshots) == 1  # committed once, by one attempt
    got = table.scan().to_arrow()
    assert dict(zip(got["bucket"].to_pylist(), got["n"].to_pylist(), strict=True)) == (
        expected_result()
    )


@pytest.mark.parametrize("backend", ["local", "postgres_s3"], indirect=True)
def test_a_killed_worker_loses_its_job_to_another(
    backend: Any, numbers: None, tmp_path: Path
) -> None:
    with (
        serve_process(tmp_path / "server", job_env(backend, workers=0)) as server,
        serve_process(
            tmp_path / "w1", job_env(backend, workers=1), name="worker-1", command="worker"
        ) as first,
    ):
        job_id = create_slow_job(server, "killed")
        wait_running_on(server, job_id, first)
        first.kill()
        with serve_process(
            tmp_path / "w2", job_env(backend, workers=1), name="worker-2", command="worker"
        ) as second:
            job = wait_finished(server, job_id, first, second)
            assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
            assert job.attempts == 2
            assert job.worker.endswith(f":{second.pid}")
            assert metric(second, "lakehouse_job_lease_losses_total") == 1
    check_destination(backend, "killed")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_stopped_worker_hands_its_job_back(backend: Any, numbers: None, tmp_path: Path) -> None:
    with (
        serve_process(tmp_path / "server", job_env(backend, workers=0)) as server,
        serve_process(
            tmp_path / "w1", job_env(backend, workers=1), name="worker-1", command="worker"
        ) as first,
    ):
        job_id = create_slow_job(server, "handed_back")
        wait_running_on(server, job_id, first)
        first.stop()
        assert first.proc is not None and first.proc.returncode == 0
        requeued = get_job(server, job_id)
        assert requeued.state == job_pb2.JOB_STATE_QUEUED
        assert requeued.error.message  # why the attempt ended
        with serve_process(
            tmp_path / "w2", job_env(backend, workers=1), name="worker-2", command="worker"
        ) as second:
            job = wait_finished(server, job_id, second)
            assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
            assert job.worker.endswith(f":{second.pid}")
    check_destination(backend, "handed_back")
