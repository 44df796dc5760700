"""Cancelling a job: the stored request to stop, and a stop at once when this process runs it.

A queued job is cancelled in the job store. A running one is asked to stop there too, which
the replica running it sees at its next heartbeat; when that replica is this process, the job
is stopped at its next safe point without waiting for the heartbeat.
"""

from __future__ import annotations

from lakehouse.core.job_worker import JobWorker
from lakehouse.core.jobs import Jobs
from lakehouse.domain.jobs import RUNNING, JobRecord


class JobCancellation:
    """Cancels jobs through the job store and this process's workers."""

    def __init__(self, jobs: Jobs, worker: JobWorker | None) -> None:
        self._jobs = jobs
        self._worker = worker

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancels a job (a running one stops at its next safe point).

        Returns:
            The job after the cancellation was recorded.

        Raises:
            InvalidArgument: A malformed job id.
            NotFound: No such job (reason ``JOB_NOT_FOUND``).
            FailedPrecondition: The job SUCCEEDED or FAILED (reason ``JOB_ALREADY_FINISHED``).
            Unavailable: The job store cannot be reached.
        """
        job = await self._jobs.cancel(job_id)
        if self._worker is not None and job.state == RUNNING:
            self._worker.cancel_local(job.id)
        return job
