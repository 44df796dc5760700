"""A compact_table job while its backing service goes down, with real processes.

A ``lakehouse serve`` process (no job slots) takes the API calls and reaches PostgreSQL and
S3 directly; a ``lakehouse worker`` process runs the job and reaches the failing service (the
PostgreSQL catalog, which also holds the job store, or the S3 object store) through a TCP
proxy. The proxy is switched off while the worker rewrites files, before its commit:

- the attempt ends without committing anything (the table keeps its snapshot and files);
- the worker's /readyz reports the outage;
- the job is retried (with the catalog down the worker cannot even record the attempt's
  outcome: its lease runs out and the job is taken up again) and, once the service is back,
  it ends SUCCEEDED;
- the table holds exactly the rows it held before (count and content checksum), in fewer
  files, compacted by one replace snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fixtures.faults import (
    catalog_address,
    catalog_through,
    create_job,
    data_file_count,
    fault_env,
    read_direct,
    row_checksum,
    s3_address,
    s3_through,
    wait_for,
    wait_job,
    wait_readyz,
)
from fixtures.iceberg import direct_catalog
from fixtures.serve_process import ServeProcess, serve_process
from fixtures.tcp_proxy import tcp_proxy
from lakehouse.v1 import job_pb2

pytestmark = pytest.mark.faults

NAMESPACE, TABLE = "faults", "fragmented"
ROWS = 240_000
#: pyiceberg cuts an append into files of about this many (in-memory) bytes.
WRITE_FILE_BYTES = 48 * 1024
#: The compaction's target: several input files per output file, many groups to rewrite.
COMPACT_TARGET_BYTES = 128 * 1024
LEASE_SECONDS = 3
WAIT_SECONDS = 90.0


def job_env(settings: Any, **overrides: str) -> dict[str, str]:
    return fault_env(
        settings,
        LAKEHOUSE_JOBS__LEASE_SECONDS=str(LEASE_SECONDS),
        LAKEHOUSE_JOBS__POLL_INTERVAL_SECONDS="0.1",
        LAKEHOUSE_JOBS__RETRY_BACKOFF_SECONDS="0.2",
        LAKEHOUSE_JOBS__MAX_ATTEMPTS="10",
        LAKEHOUSE_JOBS__SCHEDULER_INTERVAL_SECONDS="0",
        **overrides,
    )


def fragmented_table(settings: Any) -> pa.Table:
    """A table of many small data files in one snapshot, written past the server."""
    catalog = direct_catalog(settings)
    catalog.create_namespace_if_not_exists(NAMESPACE)
    data = pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "kind": pa.array([f"k{i % 17}-{i * 2654435761 % 1_000_003}" for i in range(ROWS)]),
        }
    )
    table = catalog.create_table(
        (NAMESPACE, TABLE),
        schema=data.schema,
        properties={"write.target-file-size-bytes": str(WRITE_FILE_BYTES)},
    )
    table.append(data)
    return data


def attempt_ends(worker: ServeProcess) -> list[dict[str, Any]]:
    """The worker's "job attempt ended" log entries, oldest first."""
    entries = []
    for line in worker.stdout_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == "job attempt ended":
            entries.append(entry)
    return entries


def current_snapshot_id(settings: Any) -> int | None:
    snapshot = direct_catalog(settings).load_table((NAMESPACE, TABLE)).current_snapshot()
    return None if snapshot is None else snapshot.snapshot_id


@pytest.mark.timeout(180)
@pytest.mark.parametrize("outage", ["catalog", "object_store"])
def test_compaction_survives_an_outage_mid_run_and_commits_once(
    outage: str, postgres_s3_settings: Any, tmp_path: Path
) -> None:
    settings = postgres_s3_settings
    before = row_checksum(fragmented_table(settings))
    files_before = data_file_count(settings, NAMESPACE, TABLE)
    snapshot_before = current_snapshot_id(settings)
    assert files_before >= 40, files_before
    address = catalog_address(settings) if outage == "catalog" else s3_address(settings)
    with tcp_proxy(*address) as proxy:
        through = (
            catalog_through(settings, proxy.port) if outage == "catalog" else s3_through(proxy.port)
        )
        with (
            serve_process(
                tmp_path / "server", job_env(settings, LAKEHOUSE_JOBS__WORKERS="0")
            ) as server,
            serve_process(
                tmp_path / "worker",
                job_env(settings, LAKEHOUSE_JOBS__WORKERS="1", **through),
                name="worker",
                command="worker",
            ) as worker,
        ):
            job = create_job(
                server.target,
                job_pb2.JobSpec(
                    compact_table=job_pb2.CompactTableJobSpec(
                        namespace=NAMESPACE,
                        table=TABLE,
                        target_file_size_bytes=COMPACT_TARGET_BYTES,
                    )
                ),
                request_id=f"compact-{outage}",
            )

            # -- the service goes away while the worker rewrites files (before its commit)
            def rewriting(j: job_pb2.Job) -> bool:
                assert j.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING), j
                return j.state == job_pb2.JOB_STATE_RUNNING and j.progress.fraction > 0

            running = wait_job(server.target, job.id, WAIT_SECONDS, rewriting, worker.logs)
            assert running.worker.endswith(f":{worker.pid}")
            proxy.down()
            wait_readyz(worker, 503, timeout=15)
            ended = wait_for(
                lambda: attempt_ends(worker) or None, WAIT_SECONDS, "the first attempt ended"
            )
            assert ended[0]["outcome"] in ("retried", "lease_lost"), (ended, worker.logs())
            # nothing of it was committed
            assert current_snapshot_id(settings) == snapshot_before
            assert data_file_count(settings, NAMESPACE, TABLE) == files_before
            if outage == "object_store":  # the job store is up: the retry is on record
                queued = wait_job(
                    server.target, job.id, 15, lambda j: j.error.code != 0, worker.logs
                )
                assert queued.error.code == 14, queued.error  # UNAVAILABLE
                assert queued.state != job_pb2.JOB_STATE_FAILED, queued

            # -- it comes back: the job is taken up again and succeeds
            proxy.up()
            wait_readyz(worker, 200, timeout=15)
            done = wait_job(server.target, job.id, WAIT_SECONDS, logs=worker.logs)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED, (done.error, worker.logs())
            assert done.attempts >= 2, done
            assert done.worker.endswith(f":{worker.pid}")
    table = direct_catalog(settings).load_table((NAMESPACE, TABLE))
    operations = [s.summary.operation.value for s in table.snapshots() if s.summary]
    assert operations.count("replace") >= 1, operations
    assert operations.count("append") == 1, operations
    assert row_checksum(read_direct(settings, NAMESPACE, TABLE)) == before
    files_after = data_file_count(settings, NAMESPACE, TABLE)
    assert files_after < files_before // 2, (files_before, files_after)
