"""JobService: tracked, retryable jobs. Proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from lakehouse.core.job_worker import JobWorker
from lakehouse.core.jobs import Jobs
from lakehouse.domain.jobs import JobRecord
from lakehouse.v1 import job_pb2, job_service_pb2_grpc
from lakehouse.v1 import job_service_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(us: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def job_to_proto(job: JobRecord) -> job_pb2.Job:
    """The API view of a stored job."""
    proto = job_pb2.Job(
        id=job.id,
        spec=job_pb2.JobSpec.FromString(job.spec),
        kind=job.kind,  # type: ignore[arg-type]
        namespace=job.namespace,
        table=job.table,
        state=job.state,  # type: ignore[arg-type]
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        worker=job.worker,
        create_time=_timestamp(job.create_time_us),
        update_time=_timestamp(job.update_time_us),
        request_id=job.request_id,
    )
    if job.state == job_pb2.JOB_STATE_RUNNING or job.progress_message:
        proto.progress.fraction = job.progress_fraction
        proto.progress.message = job.progress_message
    if job.start_time_us is not None:
        proto.start_time.CopyFrom(_timestamp(job.start_time_us))
    if job.end_time_us is not None:
        proto.end_time.CopyFrom(_timestamp(job.end_time_us))
    if job.result is not None:
        proto.result.ParseFromString(job.result)
    if job.error is not None:
        proto.error.CopyFrom(status_pb2.Status.FromString(job.error))
    return proto


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Implements lakehouse.v1.JobService on top of the core ``Jobs``."""

    def __init__(self, jobs: Jobs, worker: JobWorker | None) -> None:
        self._jobs = jobs
        self._worker = worker

    async def CreateJob(
        self, request: pb.CreateJobRequest, context: Context
    ) -> pb.CreateJobResponse:
        """Checks the spec and queues a job (or returns the job of an earlier retry)."""
        job, _ = await self._jobs.create(request.spec, request.request_id)
        return pb.CreateJobResponse(job=job_to_proto(job))

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.GetJobResponse:
        """Gets a job."""
        return pb.GetJobResponse(job=job_to_proto(await self._jobs.get(request.job_id)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        """Lists jobs, newest first."""
        page = await self._jobs.list(
            states=list(request.states),
            kinds=list(request.kinds),
            namespace=request.namespace,
            table=request.table,
            requested_size=request.page_size,
            token=request.page_token,
        )
        return pb.ListJobsResponse(
            jobs=[job_to_proto(job) for job in page.items], next_page_token=page.next_page_token
        )

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: Context
    ) -> pb.CancelJobResponse:
        """Cancels a job (a running one stops at its next safe point)."""
        job = await self._jobs.cancel(request.job_id)
        if self._worker is not None and job.state == job_pb2.JOB_STATE_RUNNING:
            self._worker.cancel_local(job.id)
        return pb.CancelJobResponse(job=job_to_proto(job))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[pb.WatchJobResponse]:
        """Streams the job's changes until it ends."""
        async for job in self._jobs.watch(request.job_id):
            yield pb.WatchJobResponse(job=job_to_proto(job))

    async def DeleteJob(
        self, request: pb.DeleteJobRequest, context: Context
    ) -> pb.DeleteJobResponse:
        """Deletes a finished job's record."""
        await self._jobs.delete(request.job_id)
        return pb.DeleteJobResponse()
