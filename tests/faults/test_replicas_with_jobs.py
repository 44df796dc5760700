"""Two server replicas and two standalone workers on one PostgreSQL catalog and one S3 bucket.

Both replicas ingest into one table at once (WriteRows with request ids, each also resent to
the other replica as a client retry would; AppendRows streams with writer ids) while
compact_table and expire_snapshots jobs, created on either replica, run again and again on the
``lakehouse worker`` processes. At the end:

- every write was acknowledged, each request id written fresh exactly once;
- the table holds exactly the rows sent: the count, the ids (no duplicate) and a checksum of
  every row's content match;
- every job SUCCEEDED (a job that lost a commit race was retried inside its attempts);
- the maintenance did its work: a compaction rewrote files while the ingest ran, and the table
  ends with fewer files and fewer snapshots than commits.

Before the fix in ``iceberg_maintenance`` this failed: a compaction lost every commit race to
the appends (or had its starting snapshot expired under it) and FAILED with COMMIT_CONFLICT.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import duration_pb2

from fixtures.faults import (
    create_id_kind_table,
    create_job,
    data_file_count,
    duplicates,
    fault_env,
    id_kind_rows,
    read_direct,
    row_checksum,
    run_threads,
    wait_job,
)
from fixtures.iceberg import direct_catalog
from fixtures.serve_process import ServeProcess, serve_process
from lakehouse.client.arrow import append_rows_requests, write_rows_request
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import (
    ingest_service_pb2_grpc,
    job_pb2,
)

pytestmark = pytest.mark.faults

NAMESPACE, TABLE = "faults", "shared"
WRITE_THREADS_PER_REPLICA, WRITES_PER_THREAD = 2, 15
STREAM_REQUESTS, ROWS_PER_REQUEST = 20, 200
CALL_TIMEOUT = 60.0
JOB_TIMEOUT = 90.0
#: Jobs of each kind at least; more run while the ingest lasts.
MIN_JOBS_PER_KIND = 2


def job_env(settings: Any, workers: int) -> dict[str, str]:
    return fault_env(
        settings,
        LAKEHOUSE_INGEST__COMMIT_DELAY_MS="30",
        LAKEHOUSE_JOBS__WORKERS=str(workers),
        LAKEHOUSE_JOBS__LEASE_SECONDS="5",
        LAKEHOUSE_JOBS__POLL_INTERVAL_SECONDS="0.1",
        LAKEHOUSE_JOBS__RETRY_BACKOFF_SECONDS="0.2",
        LAKEHOUSE_JOBS__SCHEDULER_INTERVAL_SECONDS="0",
    )


def rows(source: str, start: int, count: int = ROWS_PER_REQUEST) -> pa.Table:
    return id_kind_rows(source, start, count)


class Ingest:
    """The writes of the test, and what was sent and acknowledged."""

    def __init__(self, replicas: list[ServeProcess]) -> None:
        self.replicas = replicas
        self.sent: list[pa.Table] = []
        self.fresh: list[str] = []  # request ids acknowledged as newly written
        self.resent: list[str] = []  # request ids acknowledged as already written
        self.stream_acks: dict[str, list[ipb.AppendRowsResponse]] = {}
        self._lock = threading.Lock()

    def write_rows(self, replica: int, thread: int) -> None:
        """WriteRows to one replica; each request then resent to the other one (a retry)."""
        here, there = self.replicas[replica], self.replicas[1 - replica]
        with (
            grpc.insecure_channel(here.target) as ch_here,
            grpc.insecure_channel(there.target) as ch_there,
        ):
            stubs = [ingest_service_pb2_grpc.IngestServiceStub(c) for c in (ch_here, ch_there)]
            base = 1_000_000 * (1 + 10 * replica + thread)
            for i in range(WRITES_PER_THREAD):
                # Paced, so that the ingest outlasts a compaction even on a fast machine (the
                # test checks that one finished while rows were still coming).
                time.sleep(0.2)
                request_id = f"r{replica}-t{thread}-{i}"
                data = rows(request_id, base + i * ROWS_PER_REQUEST)
                request = write_rows_request(NAMESPACE, TABLE, data, request_id=request_id)
                with self._lock:
                    self.sent.append(data)
                for stub in stubs:
                    reply = stub.WriteRows(request, timeout=CALL_TIMEOUT)
                    assert reply.result.rows_written == ROWS_PER_REQUEST, reply
                    with self._lock:
                        (self.resent if reply.result.already_written else self.fresh).append(
                            request_id
                        )

    def stream(self, replica: int) -> None:
        """One AppendRows stream with a writer id to one replica."""
        writer = f"stream-{replica}"
        base = 100_000_000 * (1 + replica)
        parts = [rows(writer, base + i * ROWS_PER_REQUEST) for i in range(STREAM_REQUESTS)]
        with self._lock:
            self.sent.extend(parts)
        data = pa.Table.from_batches([p.to_batches()[0] for p in parts])
        requests = list(append_rows_requests(NAMESPACE, TABLE, data, writer_id=writer))
        assert len(requests) == STREAM_REQUESTS

        def paced() -> Iterator[ipb.AppendRowsRequest]:
            for request in requests:
                time.sleep(0.02)  # spread the stream over the jobs' runs
                yield request

        with grpc.insecure_channel(self.replicas[replica].target) as ch:
            stub = ingest_service_pb2_grpc.IngestServiceStub(ch)
            acks = list(stub.AppendRows(paced(), timeout=CALL_TIMEOUT * 2))
        with self._lock:
            self.stream_acks[writer] = acks


class JobRuns:
    """Runs jobs of one kind one after the other, alternating replicas, until told to stop."""

    def __init__(self, kind: str, spec: job_pb2.JobSpec, replicas: list[ServeProcess]) -> None:
        self.kind = kind
        self.spec = spec
        self.replicas = replicas
        self.jobs: list[job_pb2.Job] = []
        self.finished_at: list[float] = []  # when each job was seen finished (monotonic)

    def run(self, ingest_done: threading.Event, deadline: float) -> None:
        for i in itertools.count():
            if ingest_done.is_set() and len(self.jobs) >= MIN_JOBS_PER_KIND:
                return
            assert time.monotonic() < deadline, (
                f"{self.kind}: {len(self.jobs)} jobs by the deadline"
            )
            created = create_job(
                self.replicas[i % 2].target, self.spec, request_id=f"{self.kind}-{i}"
            )
            # watched on the other replica: any replica answers for any job
            self.jobs.append(wait_job(self.replicas[(i + 1) % 2].target, created.id, JOB_TIMEOUT))
            self.finished_at.append(time.monotonic())


@pytest.mark.timeout(240)
def test_two_replicas_and_two_workers_ingest_and_maintain_one_table_exactly(
    postgres_s3_settings: Any, tmp_path: Path
) -> None:
    settings = postgres_s3_settings
    with (
        serve_process(tmp_path / "a", job_env(settings, 0), name="replica-a") as a,
        serve_process(tmp_path / "b", job_env(settings, 0), name="replica-b") as b,
        serve_process(
            tmp_path / "w1", job_env(settings, 1), name="worker-1", command="worker"
        ) as w1,
        serve_process(
            tmp_path / "w2", job_env(settings, 1), name="worker-2", command="worker"
        ) as w2,
    ):
        replicas = [a, b]
        create_id_kind_table(a.target, NAMESPACE, TABLE, CALL_TIMEOUT)
        ingest = Ingest(replicas)
        compactions = JobRuns(
            "compact",
            job_pb2.JobSpec(
                compact_table=job_pb2.CompactTableJobSpec(namespace=NAMESPACE, table=TABLE)
            ),
            replicas,
        )
        expiries = JobRuns(
            "expire",
            job_pb2.JobSpec(
                expire_snapshots=job_pb2.ExpireSnapshotsJobSpec(
                    namespace=NAMESPACE,
                    table=TABLE,
                    retain_last=3,
                    # Request ids are remembered while the snapshot that committed them is
                    # kept: the resends come within milliseconds, so 10 s keeps them.
                    max_snapshot_age=duration_pb2.Duration(seconds=10),
                )
            ),
            replicas,
        )
        ingest_done = threading.Event()
        ingest_ended: list[float] = []
        deadline = time.monotonic() + 180

        def ingest_all() -> None:
            try:
                run_threads(
                    [
                        *(
                            (ingest.write_rows, (r, t))
                            for r in (0, 1)
                            for t in range(WRITE_THREADS_PER_REPLICA)
                        ),
                        (ingest.stream, (0,)),
                        (ingest.stream, (1,)),
                    ],
                    timeout=150,
                )
            finally:
                ingest_ended.append(time.monotonic())
                ingest_done.set()

        run_threads(
            [
                (ingest_all, ()),
                (compactions.run, (ingest_done, deadline)),
                (expiries.run, (ingest_done, deadline)),
            ],
            timeout=200,
        )
        workers_used = {j.worker.rsplit(":", 1)[-1] for j in compactions.jobs + expiries.jobs}
        assert workers_used <= {str(w1.pid), str(w2.pid)}, workers_used
        logs = "\n".join(p.logs(20) for p in (a, b, w1, w2))

    # Every write acknowledged; each request id written fresh exactly once.
    request_ids = [
        f"r{r}-t{t}-{i}"
        for r in (0, 1)
        for t in range(WRITE_THREADS_PER_REPLICA)
        for i in range(WRITES_PER_THREAD)
    ]
    assert sorted(ingest.fresh) == sorted(request_ids)
    assert sorted(ingest.resent) == sorted(request_ids)
    for writer, acks in ingest.stream_acks.items():
        errors = [x.error for x in acks if x.HasField("error")]
        assert not errors, (writer, errors[:3])
        assert [x.offset for x in acks] == [i * ROWS_PER_REQUEST for i in range(STREAM_REQUESTS)]
        assert not any(x.result.already_written for x in acks), writer

    # Every job succeeded (a lost commit race may take a retry, never a failure).
    jobs = compactions.jobs + expiries.jobs
    assert len(compactions.jobs) >= MIN_JOBS_PER_KIND and len(expiries.jobs) >= MIN_JOBS_PER_KIND
    failed = [
        (job_pb2.JobKind.Name(j.kind), job_pb2.JobState.Name(j.state), j.attempts, j.error)
        for j in jobs
        if j.state != job_pb2.JOB_STATE_SUCCEEDED
    ]
    assert not failed, (failed, logs)

    # The table holds exactly what was sent: count, ids and every row's content.
    expected = pa.concat_tables(ingest.sent)
    got = read_direct(settings, NAMESPACE, TABLE)
    assert duplicates(got.column("id").to_pylist()) == 0
    assert set(got.column("id").to_pylist()) == set(expected.column("id").to_pylist())
    assert row_checksum(got) == row_checksum(expected)

    # The maintenance did its work, compactions included while the ingest ran.
    assert any(
        job.result.compact_table.files_before > 0 and finished < ingest_ended[0]
        for job, finished in zip(compactions.jobs, compactions.finished_at, strict=True)
    ), compactions.jobs
    table = direct_catalog(settings).load_table((NAMESPACE, TABLE))
    commits = len(ingest.fresh) + len(ingest.stream_acks) * STREAM_REQUESTS
    assert data_file_count(settings, NAMESPACE, TABLE) < commits
    assert len(table.metadata.snapshots) < commits
