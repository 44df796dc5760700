"""Jobs as values: job states, one stored job (``JobRecord``), a worker's ``Claim``.

Plain values with no storage behind them, shared by the job store, core and the servicers;
``LeaseLost`` is what the store raises when a worker no longer owns the job it works on. The
states and kinds are the numbers of ``lakehouse.v1.JobState`` and ``JobKind`` (the domain
does not import the contract; ``tests/domain/test_jobs.py`` holds them equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

QUEUED: Final[int] = 1
RUNNING: Final[int] = 2
SUCCEEDED: Final[int] = 3
FAILED: Final[int] = 4
CANCELLED: Final[int] = 5
#: States a job never leaves.
TERMINAL_STATES: Final = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: States a job still leaves: waiting for a worker, or running.
ACTIVE_STATES: Final = (QUEUED, RUNNING)

#: Job kinds (the numbers of ``lakehouse.v1.JobKind``).
KIND_SQL: Final[int] = 1
KIND_COMPACT_TABLE: Final[int] = 2
KIND_EXPIRE_SNAPSHOTS: Final[int] = 3
KIND_REMOVE_ORPHAN_FILES: Final[int] = 4
KIND_IMPORT_FILES: Final[int] = 5
#: Kind label for metrics and logs, and the spec field of each kind (``compact_table``...).
KIND_NAMES: Final[dict[int, str]] = {
    KIND_SQL: "sql",
    KIND_COMPACT_TABLE: "compact_table",
    KIND_EXPIRE_SNAPSHOTS: "expire_snapshots",
    KIND_REMOVE_ORPHAN_FILES: "remove_orphan_files",
    KIND_IMPORT_FILES: "import_files",
}


@dataclass(frozen=True)
class JobRecord:
    """One stored job, as of one read.

    Attributes:
        id: The job id (assigned by the caller).
        kind: A ``KIND_*`` value.
        namespace: The namespace of the table the job works on; empty if none.
        table: The table the job works on; empty if none.
        state: A job state (``QUEUED``...).
        spec: The serialized ``JobSpec``.
        request_id: The request id the job was created with; empty if none.
        spec_digest: The caller's digest of the spec, compared on request-id retries.
        attempts: Attempts started so far (0 while first queued).
        max_attempts: Attempts allowed for retryable failures.
        cancel_requested: True once a running job was asked to cancel.
        worker: The worker running, or that last ran, the job.
        create_time_us: When the job was created.
        start_time_us: When the last attempt started; None before the first.
        end_time_us: When the job reached a terminal state; None until then.
        update_time_us: When state, progress or attempts last changed.
        lease_expires_us: When the running worker's lease ends; None unless RUNNING.
        next_attempt_us: When a QUEUED job becomes due (later than now while backing off).
        progress_fraction: The running attempt's estimated fraction done, 0 to 1.
        progress_message: What the running attempt is doing, for people.
        result: The serialized ``JobResult`` once SUCCEEDED.
        error: The serialized ``google.rpc.Status`` of the failure, or of the last
            attempt's failure while queued for a retry.
        scheduled: True when the maintenance scheduler enqueued the job, not a client.
        version: Grows by one on every visible change; WatchJob compares it.
        principal: Who created the job; empty for the scheduler's jobs (and jobs stored
            before schema 3).
    """

    id: str
    kind: int
    namespace: str
    table: str
    state: int
    spec: bytes
    request_id: str
    spec_digest: str
    attempts: int
    max_attempts: int
    cancel_requested: bool
    worker: str
    create_time_us: int
    start_time_us: int | None
    end_time_us: int | None
    update_time_us: int
    lease_expires_us: int | None
    next_attempt_us: int
    progress_fraction: float
    progress_message: str
    result: bytes | None
    error: bytes | None
    scheduled: bool
    version: int
    principal: str = ""

    @property
    def finished(self) -> bool:
        """True in a terminal state (SUCCEEDED, FAILED, CANCELLED): nothing changes after."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Claim:
    """A job a worker now owns.

    Attributes:
        job: The job: RUNNING, owned by the claiming worker, ``attempts`` counting this one.
            Pass ``job.attempts`` as ``attempt`` to heartbeat, finish and retry_later.
        lease_lost_by: The worker whose lease expired when the job was taken over from it;
            empty for a job that was queued.
    """

    job: JobRecord
    lease_lost_by: str


class LeaseLost(Exception):
    """The caller no longer owns the job: it is not RUNNING under this worker and attempt.

    It was finished, cancelled or taken over by another worker after the lease expired. The
    worker must stop the attempt without committing anything.
    """

    def __init__(self, job_id: str, worker: str, attempt: int) -> None:
        super().__init__(f"worker {worker} no longer owns attempt {attempt} of job {job_id}")
        self.job_id = job_id
        self.worker = worker
        self.attempt = attempt
