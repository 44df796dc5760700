"""The worker's handling of how attempts end: retries with backoff, failures, cancellation.

The job store (SQLite), the worker, its heartbeat and the events are real; only the job's work
is scripted (``ScriptedWork`` stands in for ``JobKinds``), so each way an attempt can end is
produced on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2

from lakehouse.adapters.job_store.store import JobStore
from lakehouse.blocking import BlockingPool
from lakehouse.config import JobsSettings
from lakehouse.core.job_kinds import JobKinds
from lakehouse.core.job_worker import MAX_RETRY_BACKOFF_SECONDS, JobWorker, _backoff
from lakehouse.core.jobs import TERMINAL_STATES, JobEvents, now_us
from lakehouse.domain.errors import Conflict, InvalidArgument, Unavailable
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.job_results import CompactTableResult, JobResult
from lakehouse.domain.job_specs import CompactTableSpec, JobSpec
from lakehouse.domain.jobs import JobRecord
from lakehouse.services.job_codec import ProtoJobCodec
from lakehouse.v1 import job_pb2

#: The spec as the job store keeps it (the contract's bytes) and as the work receives it.
SPEC = job_pb2.JobSpec(compact_table=job_pb2.CompactTableJobSpec(namespace="ns", table="t"))
DOMAIN_SPEC = JobSpec(CompactTableSpec(namespace="ns", table="t"))
RESULT = CompactTableResult(files_before=3)
STORED_RESULT = job_pb2.JobResult(compact_table=job_pb2.CompactTableJobResult(files_before=3))
SETTINGS = JobsSettings(
    lease_seconds=3, poll_interval_seconds=0.05, retry_backoff_seconds=0.05, max_attempts=3
)


class EchoOfTheStop:
    """An outcome: run until asked to stop, then fail with ``error`` instead of JobStopped,
    as an engine whose interrupt surfaces as its own error (DuckDB's "INTERRUPT Error")."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ScriptedWork:
    """Each attempt takes the next outcome: an exception to raise, a result, "wait" (run
    until stopped, checking the stop flag as real job code does at its safe points) or an
    :class:`EchoOfTheStop`."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.attempts: list[int] = []

    async def run(self, spec: JobSpec, ctx: JobContext) -> JobResult:
        assert spec == DOMAIN_SPEC
        self.attempts.append(ctx.attempt)
        outcome = self.outcomes.pop(0)
        if outcome == "wait":
            while True:
                ctx.progress(0.5, "waiting to be stopped")
                ctx.check()
                await asyncio.sleep(0.02)
        if isinstance(outcome, EchoOfTheStop):
            while not ctx.stopping:
                await asyncio.sleep(0.02)
            raise outcome.error
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, CompactTableResult)
        return outcome


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    s = JobStore(f"sqlite:///{tmp_path}/jobs.db")
    s.migrate()
    yield s
    s.close()


async def run_job(store: JobStore, work: ScriptedWork, *, cancel_after: float = 0) -> JobRecord:
    pool = BlockingPool(4)
    events = JobEvents()
    worker = JobWorker(
        store,
        cast(JobKinds, work),
        pool,
        SETTINGS,
        events,
        slots=1,
        codec=ProtoJobCodec(),
        name="test-worker",
    )
    job, _ = store.create(
        job_id="j1",
        kind=job_pb2.JOB_KIND_COMPACT_TABLE,
        namespace="ns",
        table="t",
        spec=SPEC.SerializeToString(),
        spec_digest="d",
        request_id="",
        max_attempts=SETTINGS.max_attempts,
        now_us=now_us(),
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        cancelled = False
        while job.state not in TERMINAL_STATES:
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.05)
            job = store.get("j1")
            if cancel_after and not cancelled and job.state == job_pb2.JOB_STATE_RUNNING:
                await asyncio.sleep(cancel_after)
                store.cancel("j1", now_us=now_us())  # as another replica would: store only
                cancelled = True
        return job
    finally:
        await worker.stop(1.0)
        pool.close()


def status(job: JobRecord) -> tuple[int, str, str]:
    assert job.error is not None
    s = status_pb2.Status.FromString(job.error)
    info = error_details_pb2.ErrorInfo()
    for detail in s.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
    return s.code, s.message, info.reason


async def test_a_retryable_failure_is_retried_and_can_succeed(store: JobStore) -> None:
    work = ScriptedWork(Unavailable("object store down"), Conflict("lost a race"), RESULT)
    job = await run_job(store, work)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert work.attempts == [1, 2, 3]
    assert job.attempts == 3
    assert job_pb2.JobResult.FromString(job.result or b"") == STORED_RESULT
    assert job.error is None  # the earlier attempts' errors are gone with the success


async def test_retries_stop_at_max_attempts(store: JobStore) -> None:
    work = ScriptedWork(*(Unavailable(f"down {i}") for i in range(3)))
    job = await run_job(store, work)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.attempts == 3
    assert status(job) == (grpc.StatusCode.UNAVAILABLE.value[0], "down 2", "BACKEND_UNAVAILABLE")


async def test_a_bad_input_failure_is_not_retried(store: JobStore) -> None:
    work = ScriptedWork(InvalidArgument.field("spec.x", "is wrong"), RESULT)
    job = await run_job(store, work)
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert work.attempts == [1]
    code, message, _ = status(job)
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "spec.x: is wrong")


async def test_a_bug_fails_the_job_without_leaking_internals(store: JobStore) -> None:
    work = ScriptedWork(RuntimeError("password=hunter2 in a traceback"))
    job = await run_job(store, work)
    assert job.state == job_pb2.JOB_STATE_FAILED
    code, message, reason = status(job)
    assert (code, reason) == (grpc.StatusCode.INTERNAL.value[0], "INTERNAL")
    assert "j1" in message and "hunter2" not in message


async def test_a_cancel_recorded_by_another_replica_stops_the_running_job(
    store: JobStore,
) -> None:
    work = ScriptedWork("wait")
    started = time.monotonic()
    job = await run_job(store, work, cancel_after=0.2)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    assert job.cancel_requested
    assert job.progress_message == "waiting to be stopped"  # heartbeats carried progress
    assert time.monotonic() - started < 10  # within a few heartbeats


#: Errors an interrupted engine may end with: a statement error, a retryable one.
ECHOES = [InvalidArgument("INTERRUPT Error: Interrupted!"), Unavailable("interrupted")]


@pytest.mark.parametrize("echo", ECHOES, ids=["invalid", "unavailable"])
async def test_an_error_that_echoes_a_cancel_cancels_the_job(
    store: JobStore, echo: Exception
) -> None:
    work = ScriptedWork(EchoOfTheStop(echo))
    job = await run_job(store, work, cancel_after=0.2)
    assert job.state == job_pb2.JOB_STATE_CANCELLED, status(job)
    assert work.attempts == [1]  # not retried either


@pytest.mark.parametrize("echo", ECHOES, ids=["invalid", "unavailable"])
async def test_an_error_that_echoes_a_shutdown_hands_the_job_back(
    store: JobStore, echo: Exception
) -> None:
    """The worker stopping interrupts the job, which fails with its engine's error: the job
    goes back to the queue for another worker, as if it had stopped at a safe point."""
    pool = BlockingPool(4)
    worker = JobWorker(
        store,
        cast(JobKinds, ScriptedWork(EchoOfTheStop(echo))),
        pool,
        SETTINGS,
        JobEvents(),
        slots=1,
        codec=ProtoJobCodec(),
        name="test-worker",
    )
    store.create(
        job_id="j1",
        kind=job_pb2.JOB_KIND_COMPACT_TABLE,
        namespace="ns",
        table="t",
        spec=SPEC.SerializeToString(),
        spec_digest="d",
        request_id="",
        max_attempts=SETTINGS.max_attempts,
        now_us=now_us(),
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while store.get("j1").state != job_pb2.JOB_STATE_RUNNING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await worker.stop(5.0)
        pool.close()
    job = store.get("j1")
    assert job.state == job_pb2.JOB_STATE_QUEUED, status(job)


def test_retry_backoff_doubles_with_jitter_and_is_capped() -> None:
    for attempt, low, high in [(1, 2.5, 7.5), (3, 10.0, 30.0)]:
        delays = [_backoff(5.0, attempt) for _ in range(500)]
        assert all(low <= d <= high for d in delays), (attempt, min(delays), max(delays))
    # Many failures later (and with the largest base allowed) the wait stays under the cap,
    # still spread so that retries do not march in step.
    for base, attempt in [(5.0, 30), (5.0, 100), (3600.0, 1)]:
        delays = [_backoff(base, attempt) for _ in range(500)]
        assert all(MAX_RETRY_BACKOFF_SECONDS / 3 <= d <= MAX_RETRY_BACKOFF_SECONDS for d in delays)
        assert max(delays) - min(delays) > MAX_RETRY_BACKOFF_SECONDS / 2
    assert MAX_RETRY_BACKOFF_SECONDS == 3600.0
