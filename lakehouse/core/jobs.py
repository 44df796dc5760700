"""Jobs as clients see them: create, get, list, cancel, delete and watch.

The job store is the source of truth, shared by every replica and worker; this module only
adds the checks, the paging, and a local wake-up so that a worker or a watcher in the same
process hears of a change at once instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

from lakehouse.blocking import BlockingPool
from lakehouse.config import JobsSettings
from lakehouse.core.caller import current_principal
from lakehouse.core.job_specs import (
    SpecChecker,
    check_request_id,
    job_timeout_seconds,
    spec_digest,
)
from lakehouse.core.paging import Page, decode_token, encode_token, page_size
from lakehouse.core.ports import JobCodec, JobStorePort
from lakehouse.domain import job_results as jr
from lakehouse.domain import jobs as states
from lakehouse.domain.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from lakehouse.domain.job_specs import JobSpec
from lakehouse.domain.jobs import KIND_NAMES, JobRecord
from lakehouse.domain.names import check_identifier
from lakehouse.metrics import JOB_QUOTA_REFUSALS, JOBS_CREATED

TERMINAL_STATES = states.TERMINAL_STATES
#: Job states a client may filter on.
_STATES = frozenset(
    {states.QUEUED, states.RUNNING, states.SUCCEEDED, states.FAILED, states.CANCELLED}
)
_MAX_JOB_ID_LENGTH = 128
#: Room for a job's other fields and a result's non-preview fields, in bytes.
_SLACK = 64 * 1024


def now_us() -> int:
    """The current time in epoch microseconds (the job store's unit)."""
    return time.time_ns() // 1000


class JobEvents:
    """In-process wake-ups: "job X changed" for watchers, "work queued" for workers.

    Changes made by other processes are not announced here; watchers and workers also poll
    the store, so this only shortens the wait.
    """

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.work_queued = asyncio.Event()

    def changed(self, job_id: str) -> None:
        """Wakes the watchers of ``job_id``."""
        for event in self._watchers.get(job_id, ()):
            event.set()

    def queued(self) -> None:
        """Wakes idle workers of this process."""
        self.work_queued.set()

    async def wait_change(self, job_id: str, timeout: float) -> None:
        """Returns when ``job_id`` changed in this process, or after ``timeout`` seconds."""
        event = asyncio.Event()
        self._watchers[job_id].add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.discard(event)
                if not watchers:
                    del self._watchers[job_id]


def check_job_id(job_id: str) -> str:
    """Checks the form of a job id (existence is the store's business)."""
    if not job_id:
        raise InvalidArgument.field("job_id", "must not be empty")
    if len(job_id) > _MAX_JOB_ID_LENGTH or not all(
        c.isascii() and (c.isalnum() or c in "-_") for c in job_id
    ):
        raise InvalidArgument.field("job_id", "is not a job id")
    return job_id


class Jobs:
    """The JobService operations, over the shared job store."""

    def __init__(
        self,
        store: JobStorePort,
        pool: BlockingPool,
        checker: SpecChecker,
        settings: JobsSettings,
        events: JobEvents,
        *,
        codec: JobCodec,
        max_response_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._codec = codec
        self._max_response_bytes = max_response_bytes
        self._store = store
        self._pool = pool
        self._checker = checker
        self._settings = settings
        self.events = events

    async def create(
        self, spec: JobSpec, request_id: str = "", *, scheduled: bool = False
    ) -> tuple[JobRecord, bool]:
        """Checks ``spec`` and queues a job for it, for the current call's principal.

        A retry (a request id seen before, with the same spec) gets the earlier job before
        anything else is checked.

        Returns:
            The job and whether it was created now (False: an earlier call with the same
            request id created it, or the scheduler's job for that table and kind is still
            queued or running).

        Raises:
            InvalidArgument: The spec or request id is malformed (the field is named).
            NotFound: A table the spec names does not exist.
            AlreadyExists: The request id belongs to a job with another spec, or a SQL
                destination table exists.
            ResourceExhausted: The caller has as many unfinished jobs as it may (reason
                ``JOB_QUOTA_EXCEEDED``).
            Unavailable: The job store or catalog cannot be reached.
        """
        check_request_id(request_id)
        encoded = self._codec.encode_spec(spec)
        digest = spec_digest(encoded)
        if request_id:
            # A retry is answered before the spec is checked again: a spec that can be valid
            # only once (a destination the first run created, files it imported) would
            # otherwise refuse the retry of a job that worked (issue 20).
            earlier = await self._pool.run(self._store.find_by_request_id, request_id)
            if earlier is not None:
                if earlier.spec_digest != digest:
                    raise AlreadyExists(
                        "request_id was already used for a job with a different spec",
                        reason="REQUEST_ID_REUSED",
                        metadata={"request_id": request_id, "job_id": earlier.id},
                    )
                return self._bounded(earlier), False
        job_timeout_seconds(spec, self._settings)
        summary = await self._checker.check(spec, digest)
        principal = "" if scheduled else current_principal()
        try:
            job, created = await self._pool.run(
                lambda: self._store.create(
                    job_id=uuid.uuid4().hex,
                    kind=summary.kind,
                    namespace=summary.namespace,
                    table=summary.table,
                    spec=encoded,
                    spec_digest=summary.digest,
                    request_id=request_id,
                    max_attempts=self._settings.max_attempts,
                    now_us=now_us(),
                    scheduled=scheduled,
                    principal=principal,
                    max_unfinished=self._settings.max_unfinished_per_principal,
                    max_unfinished_in_namespace=self._settings.max_unfinished_per_namespace,
                )
            )
        except ResourceExhausted:
            JOB_QUOTA_REFUSALS.inc()
            raise
        if created:
            JOBS_CREATED.labels(KIND_NAMES[summary.kind], "scheduler" if scheduled else "api").inc()
            self.events.queued()
        return self._bounded(job), created

    async def get(self, job_id: str) -> JobRecord:
        """The job, or NotFound."""
        check_job_id(job_id)
        return self._bounded(await self._pool.run(self._store.get, job_id))

    async def list(
        self,
        *,
        states: Sequence[int],
        kinds: Sequence[int],
        namespace: str,
        table: str,
        requested_size: int,
        token: str,
    ) -> Page[JobRecord]:
        """One page of jobs, newest first."""
        for i, state in enumerate(states):
            if state not in _STATES:
                raise InvalidArgument.field(f"states[{i}]", f"unknown job state {state}")
        for i, kind in enumerate(kinds):
            if kind not in KIND_NAMES:
                raise InvalidArgument.field(f"kinds[{i}]", f"unknown job kind {kind}")
        if namespace:
            check_identifier("namespace", namespace)
        if table:
            if not namespace:
                raise InvalidArgument.field("namespace", "is required when table is set")
            check_identifier("table", table)
        size = page_size(requested_size)
        scope = hashlib.sha256(
            repr((sorted(set(states)), sorted(set(kinds)), namespace, table)).encode()
        ).hexdigest()[:16]
        after = _decode_position(decode_token(scope, token))
        rows = await self._pool.run(
            lambda: self._store.list(
                states=sorted(set(states)),
                kinds=sorted(set(kinds)),
                namespace=namespace,
                table=table,
                limit=size + 1,
                after=after,
            )
        )
        page = [self._bounded(job) for job in rows[:size]]
        # However large the stored jobs, a page must fit one response: it stops early (the
        # next page starts where it stopped), keeping at least one job so listing moves on.
        budget = self._max_response_bytes // 2
        used = 0
        for kept, job in enumerate(page):
            used += _record_bytes(job)
            if used > budget and kept > 0:
                page = page[:kept]
                break
        next_token = ""
        if len(rows) > len(page):
            last = page[-1]
            next_token = encode_token(scope, f"{last.create_time_us}:{last.id}")
        return Page(items=page, next_page_token=next_token)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancels a queued job, or asks a running one to stop."""
        check_job_id(job_id)
        job = await self._pool.run(lambda: self._store.cancel(job_id, now_us=now_us()))
        self.events.changed(job_id)
        return job

    async def delete(self, job_id: str) -> None:
        """Deletes a finished job's record."""
        check_job_id(job_id)
        await self._pool.run(self._store.delete, job_id)

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The job now, then each version of it, until it reaches a terminal state.

        A change made in this process wakes the watcher at once; one made by another
        replica or worker is seen at the next poll.
        """
        check_job_id(job_id)
        job = await self._pool.run(self._store.get, job_id)
        yield self._bounded(job)
        seen = job.version
        while job.state not in TERMINAL_STATES:
            await self.events.wait_change(job_id, self._settings.poll_interval_seconds)
            try:
                job = await self._pool.run(self._store.get, job_id)
            except NotFound:
                return  # deleted meanwhile (only possible once terminal elsewhere)
            if job.version != seen:
                seen = job.version
                yield self._bounded(job)

    def _bounded(self, job: JobRecord) -> JobRecord:
        """The job with a result no larger than a preview may be.

        Workers cap the previews they store, but a result stored before the cap (or under a
        larger one) must not make every call that shows the job fail: its preview is
        dropped from the answer and marked truncated.
        """
        # A quarter of a response at most, whatever the preview cap says: a page of jobs
        # must hold at least one job.
        most = min(self._settings.preview_max_bytes, self._max_response_bytes // 4)
        if job.result is None or len(job.result) <= most + _SLACK:
            return job
        result = self._codec.decode_result(job.result)
        if isinstance(result, jr.SqlJobResult):
            result = dataclasses.replace(
                result,
                preview_arrow_record_batch=None,
                preview_json_rows=None,
                preview_truncated=True,
            )
        return dataclasses.replace(job, result=self._codec.encode_result(result))


def _record_bytes(job: JobRecord) -> int:
    """About how many bytes a job takes in a response (its blobs and some for the rest)."""
    return len(job.spec) + len(job.result or b"") + len(job.error or b"") + _SLACK


def _decode_position(key: str | None) -> tuple[int, str] | None:
    if key is None:
        return None
    created, _, job_id = key.partition(":")
    try:
        return int(created), job_id
    except ValueError:
        raise InvalidArgument.field(
            "page_token", "is not a token returned by this method", reason="INVALID_PAGE_TOKEN"
        ) from None
