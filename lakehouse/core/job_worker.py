"""Workers: claim queued jobs from the shared store, run them, record how they ended.

A worker holds each job it runs by a lease that it renews with a heartbeat. If the process
dies, the lease runs out and another worker (of any process) takes the job over as a new
attempt. Every kind is written so that a rerun after a crash is safe: maintenance is
idempotent, and imports and SQL destinations record the job id in what they commit, so a
second attempt sees the first one's commit instead of committing again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from google.rpc import status_pb2

from lakehouse.blocking import BlockingPool
from lakehouse.config import JobsSettings
from lakehouse.core.job_kinds import JobKinds
from lakehouse.core.job_specs import job_timeout_seconds
from lakehouse.core.jobs import JobEvents, now_us
from lakehouse.core.ports import JobCodec, JobStorePort
from lakehouse.core.survival import own_cancellation
from lakehouse.domain.errors import (
    CommitStateUnknown,
    Conflict,
    DeadlineExceeded,
    InvalidArgument,
    LakehouseError,
    RetryableError,
    Unavailable,
)
from lakehouse.domain.job_context import JobContext, JobStopped
from lakehouse.domain.job_results import JobResult
from lakehouse.domain.jobs import (
    CANCELLED,
    FAILED,
    KIND_NAMES,
    RUNNING,
    SUCCEEDED,
    Claim,
    JobRecord,
    LeaseLost,
)
from lakehouse.domain.status import status_proto_for
from lakehouse.metrics import (
    JOB_ATTEMPTS_ENDED,
    JOB_LEASE_LOSSES,
    JOB_SECONDS,
    JOBS_FINISHED,
    JOBS_QUEUED,
    JOBS_RUNNING,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Retryable: the same attempt could succeed later (a backend back up, a conflict resolved).
_RETRYABLE = (RetryableError, Conflict, CommitStateUnknown)
#: How often a running job's progress and cancel flag are exchanged with the store (at
#: most; the lease also bounds it).
_HEARTBEAT_SECONDS = 2.0
#: Failures that would only repeat: a job past one of its limits is not retried.
NOT_RETRIED_REASONS = frozenset({"JOB_TIMEOUT", "JOB_TEMP_SPACE_EXHAUSTED", "JOB_MEMORY_EXHAUSTED"})
#: ``JobStopped.why`` of an attempt stopped by its wall-clock limit.
_TIMEOUT = "timeout"
#: The longest wait before a retry, however many attempts failed before.
MAX_RETRY_BACKOFF_SECONDS = 3600.0


_FINAL_LABELS: dict[int, str] = {
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    CANCELLED: "cancelled",
}


def count_ended(job: JobRecord) -> None:
    """Counts a job that reached its final state (the job store's ``on_ended`` hook).

    The store calls it wherever a job ends (a worker's finish, a cancelled queued job, an
    expired lease on the last attempt), so each job is counted once, by one process.
    """
    JOBS_FINISHED.labels(KIND_NAMES.get(job.kind, "unknown"), _FINAL_LABELS[job.state]).inc()


def count_lease_expired(job: JobRecord, worker: str) -> None:
    """Counts a lease that expired (the job store's ``on_lease_expired`` hook).

    Counted once, by the process whose claim found it, whether or not the worker that held
    it is alive to notice: that worker's side shows as an attempt ended ``lease_lost``.
    """
    JOB_LEASE_LOSSES.inc()
    log.warning(
        "a job's lease expired: its worker stopped responding",
        extra={
            "job_id": job.id,
            "previous_worker": worker,
            "taken_over": job.state == RUNNING,
        },
    )


async def refresh_queue_depth(store: JobStorePort, pool: BlockingPool) -> None:
    """Sets the ``lakehouse_jobs_queued`` gauge from the store; a failure leaves it as it was."""
    try:
        depth = await pool.run(lambda: store.queue_depth(now_us=now_us()))
    except Exception:  # a metric is not worth a failure
        return
    for kind, name in KIND_NAMES.items():
        JOBS_QUEUED.labels(name).set(depth.get(kind, 0))


def worker_name() -> str:
    """This process as a worker: host name (the pod's, under Kubernetes) and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobWorker:
    """Runs up to ``slots`` jobs at once in this process."""

    def __init__(
        self,
        store: JobStorePort,
        kinds: JobKinds,
        pool: BlockingPool,
        settings: JobsSettings,
        events: JobEvents,
        *,
        slots: int,
        codec: JobCodec,
        name: str | None = None,
    ) -> None:
        self._codec = codec
        self._store = store
        self._kinds = kinds
        self._pool = pool
        self._settings = settings
        self._events = events
        self._slots = slots
        self.name = name or worker_name()
        self._running: dict[str, tuple[asyncio.Task[None], JobContext]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._slot_freed = asyncio.Event()

    def start(self) -> None:
        """Starts claiming jobs in the background."""
        if self._loop_task is None and self._slots > 0:
            self._loop_task = asyncio.create_task(self._claim_loop(), name="job-worker")

    async def stop(self, grace: float) -> None:
        """Stops claiming, asks running jobs to stop, and waits up to ``grace`` seconds.

        A job stopped this way goes back to the queue at once (for another worker) and
        commits nothing. A job stuck past the grace period keeps its thread; its lease runs
        out and another worker takes it over.
        """
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for _, ctx in self._running.values():
            ctx.stop("shutdown")
        tasks = [task for task, _ in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=max(grace, 0.1))

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this worker runs now."""
        return list(self._running)

    def cancel_local(self, job_id: str) -> None:
        """Stops a job this process runs at its next safe point (CancelJob on this replica)."""
        entry = self._running.get(job_id)
        if entry is not None:
            entry[1].stop("cancelled")

    # -- Claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        lease = self._settings.lease_seconds
        while not self._stopping:
            claim: Claim | None = None
            if len(self._running) < self._slots:
                try:
                    claim = await self._pool.run(
                        lambda: self._store.claim(
                            worker=self.name,
                            lease_seconds=lease,
                            now_us=now_us(),
                            max_running_per_principal=self._settings.max_running_per_principal,
                            max_running_per_namespace=self._settings.max_running_per_namespace,
                        )
                    )
                except LakehouseError as exc:
                    log.warning("claiming a job failed", extra={"error": exc.message})
                except BaseException as exc:  # SystemExit from a library included
                    if own_cancellation(exc):
                        raise
                    log.exception("claiming a job failed")
            if claim is not None:
                self._start(claim)
                continue
            await self._idle()

    async def _idle(self) -> None:
        self._events.work_queued.clear()
        self._slot_freed.clear()
        waits = [
            asyncio.ensure_future(self._events.work_queued.wait()),
            asyncio.ensure_future(self._slot_freed.wait()),
        ]
        try:
            await asyncio.wait(
                waits,
                timeout=self._settings.poll_interval_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waits:
                waiter.cancel()

    def _start(self, claim: Claim) -> None:
        job = claim.job
        ctx = JobContext(job.id, attempt=job.attempts)
        task = asyncio.create_task(self._run(job, ctx), name=f"job-{job.id}")
        self._running[job.id] = (task, ctx)
        self._events.changed(job.id)

    # -- Running -----------------------------------------------------------------------------

    async def _run(self, job: JobRecord, ctx: JobContext) -> None:
        kind = KIND_NAMES.get(job.kind, "unknown")
        started = time.monotonic()
        JOBS_RUNNING.labels(kind).inc()
        heartbeat = asyncio.create_task(self._heartbeat(job, ctx))
        log.info(
            "job started",
            extra={"job_id": job.id, "kind": kind, "attempt": job.attempts, "worker": self.name},
        )
        try:
            outcome = await self._execute(job, ctx)
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            label = await self._record(job, outcome)
            JOB_ATTEMPTS_ENDED.labels(kind, label).inc()
            log.info(
                "job attempt ended",
                extra={
                    "job_id": job.id,
                    "kind": kind,
                    "attempt": job.attempts,
                    "outcome": label,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
        finally:
            heartbeat.cancel()
            JOBS_RUNNING.labels(kind).dec()
            JOB_SECONDS.labels(kind).observe(time.monotonic() - started)
            self._running.pop(job.id, None)
            self._slot_freed.set()
            self._events.changed(job.id)

    async def _execute(self, job: JobRecord, ctx: JobContext) -> _Outcome:
        spec = self._codec.decode_spec(job.spec)
        try:
            timeout = job_timeout_seconds(spec, self._settings)
        except InvalidArgument:  # stored before the maximum was lowered: the maximum holds
            timeout = self._settings.max_timeout_seconds
        # The wall-clock limit stops the attempt like a cancel (a running query is
        # interrupted), so nothing is committed; the job then fails instead of going back.
        timer = asyncio.get_running_loop().call_later(timeout, ctx.stop, _TIMEOUT)
        try:
            result = await self._kinds.run(spec, ctx)
        except JobStopped as stop:
            if stop.why == _TIMEOUT:
                return _Outcome("failed", error=_timeout_status(timeout))
            return _Outcome(stop.why)
        except _RETRYABLE as exc:
            if ctx.why == _TIMEOUT:
                return _Outcome("failed", error=_timeout_status(timeout))
            if ctx.stopping:
                return _Outcome(ctx.why)  # see below
            if job.attempts < job.max_attempts and exc.reason not in NOT_RETRIED_REASONS:
                return _Outcome("retried", error=status_proto_for(exc, ""))
            return _Outcome("failed", error=status_proto_for(exc, ""))
        except LakehouseError as exc:
            if ctx.why == _TIMEOUT:
                return _Outcome("failed", error=_timeout_status(timeout))
            if ctx.stopping:
                # Asked to stop, the job ended with an error, not JobStopped: the stop's
                # interrupt surfaced as the engine's error where no safe point caught it
                # (DuckDB's "INTERRUPT Error" once came back as a statement error). Whatever
                # it says, the stop decides: a worker shutting down hands the job back, a
                # cancel cancels it, a lost lease leaves it to the new owner.
                return _Outcome(ctx.why)
            return _Outcome("failed", error=status_proto_for(exc, ""))
        except BaseException as exc:
            # SystemExit or KeyboardInterrupt from a library fails this job, not the process
            # (an asyncio task ending with one stops the event loop).
            if own_cancellation(exc):
                raise
            if ctx.why == _TIMEOUT:
                return _Outcome("failed", error=_timeout_status(timeout))
            log.exception("job failed unexpectedly", extra={"job_id": job.id})
            return _Outcome("failed", error=_internal_status(job.id))
        finally:
            timer.cancel()
        return _Outcome("succeeded", result=result)

    async def _record(self, job: JobRecord, outcome: _Outcome) -> str:
        """Writes how the attempt ended; returns its label (``lease_lost`` if it was too late)."""
        try:
            await self._write_outcome(job, outcome)
        except LeaseLost:
            return "lease_lost"  # another worker owns the job now; it records the outcome
        return outcome.label

    async def _write_outcome(self, job: JobRecord, outcome: _Outcome) -> None:
        worker, attempt = self.name, job.attempts
        if outcome.label == "lease_lost":
            return
        if outcome.label == "shutdown":
            await self._persist(
                lambda: self._store.retry_later(
                    job.id,
                    worker=worker,
                    attempt=attempt,
                    now_us=now_us(),
                    delay_seconds=0.0,
                    error=_shutdown_status().SerializeToString(),
                )
            )
            return
        if outcome.label == "retried":
            delay = _backoff(self._settings.retry_backoff_seconds, job.attempts)
            assert outcome.error is not None
            error = outcome.error.SerializeToString()
            await self._persist(
                lambda: self._store.retry_later(
                    job.id,
                    worker=worker,
                    attempt=attempt,
                    now_us=now_us(),
                    delay_seconds=delay,
                    error=error,
                )
            )
            return
        state = {
            "succeeded": SUCCEEDED,
            "cancelled": CANCELLED,
            "failed": FAILED,
        }[outcome.label]
        result = self._codec.encode_result(outcome.result) if outcome.result is not None else None
        error = outcome.error.SerializeToString() if outcome.error is not None else None
        await self._persist(
            lambda: self._store.finish(
                job.id,
                worker=worker,
                attempt=attempt,
                state=state,
                now_us=now_us(),
                result=result,
                error=error,
            )
        )

    async def _persist(self, write: Callable[[], T]) -> T | None:
        """Writes a job's outcome, retrying while the store is unreachable (up to a lease).

        If the store stays down, the outcome is lost with the lease: another worker reruns
        the job, which each kind makes safe.

        Raises:
            LeaseLost: The worker no longer owns the attempt; nothing was written.
        """
        deadline = time.monotonic() + self._settings.lease_seconds
        delay = 0.2
        while True:
            try:
                return await self._pool.run(write)
            except RetryableError as exc:
                if time.monotonic() + delay > deadline:
                    log.error("could not record a job's outcome", extra={"error": exc.message})
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeat(self, job: JobRecord, ctx: JobContext) -> None:
        lease = self._settings.lease_seconds
        interval = min(lease / 3, _HEARTBEAT_SECONDS)
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            progress = ctx.take_progress()
            try:
                cancel = await self._pool.run(
                    functools.partial(
                        self._store.heartbeat,
                        job.id,
                        worker=self.name,
                        attempt=job.attempts,
                        lease_seconds=lease,
                        now_us=now_us(),
                        progress=progress,
                    )
                )
            except LeaseLost:
                ctx.stop("lease_lost")
                return
            except LakehouseError as exc:
                # Past most of the lease another worker may take the job over: stop before
                # two attempts could both commit.
                if time.monotonic() - last_ok > lease * 0.8:
                    log.error(
                        "lost contact with the job store; stopping the job",
                        extra={"job_id": job.id, "error": exc.message},
                    )
                    ctx.stop("lease_lost")
                    return
                continue
            last_ok = time.monotonic()
            if progress is not None:
                self._events.changed(job.id)
            if cancel:
                ctx.stop("cancelled")


class _Outcome:
    """How one attempt ended: a label and the result or error to record."""

    def __init__(
        self,
        label: str,
        *,
        result: JobResult | None = None,
        error: status_pb2.Status | None = None,
    ) -> None:
        self.label = label
        self.result = result
        self.error = error


def _backoff(base: float, attempt: int) -> float:
    """Exponential backoff with jitter around it (so retries do not march in step), capped.

    Without the cap, a job allowed many attempts would wait days after its tenth failure.
    The cap applies before the jitter, so retries that reached it stay spread out.
    """
    centre = min(base * 2.0 ** min(max(attempt - 1, 0), 32), MAX_RETRY_BACKOFF_SECONDS / 1.5)
    return centre * random.uniform(0.5, 1.5)


def _internal_status(job_id: str) -> status_pb2.Status:
    return status_proto_for(
        LakehouseError(f"internal error; quote job id {job_id} when reporting it"), ""
    )


def _timeout_status(timeout: float) -> status_pb2.Status:
    return status_proto_for(
        DeadlineExceeded(
            f"the job ran longer than its limit of {timeout:g}s and was stopped; nothing "
            "was committed (set a longer spec.timeout, up to jobs.max_timeout_seconds)",
            reason="JOB_TIMEOUT",
            metadata={"timeout_seconds": f"{timeout:g}"},
        ),
        "",
    )


def _shutdown_status() -> status_pb2.Status:
    return status_proto_for(
        Unavailable("the worker shut down during the attempt", reason="WORKER_SHUTDOWN"), ""
    )
