"""JobService: tracked, retryable jobs. Proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from lakehouse.core.job_cancellation import JobCancellation
from lakehouse.core.jobs import Jobs
from lakehouse.services.convert import job_spec_from_proto, job_to_proto
from lakehouse.v1 import job_service_pb2 as pb
from lakehouse.v1 import job_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Implements lakehouse.v1.JobService on top of the core ``Jobs``."""

    def __init__(self, jobs: Jobs, cancellation: JobCancellation) -> None:
        self._jobs = jobs
        self._cancellation = cancellation

    async def CreateJob(
        self, request: pb.CreateJobRequest, context: Context
    ) -> pb.CreateJobResponse:
        """Checks the spec and queues a job (or returns the job of an earlier retry)."""
        job, _ = await self._jobs.create(job_spec_from_proto(request.spec), request.request_id)
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
        job = await self._cancellation.cancel(request.job_id)
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
