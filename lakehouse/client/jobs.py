"""Jobs as the client shows them: states by name, the error decoded, a SQL preview as Arrow.

``Job.from_proto(message)`` wraps a ``lakehouse.v1.Job``; its ``repr`` shows
``state=<JobState.SUCCEEDED: 3>``, not ``6: 3``. ``sql_preview`` turns a SQL job's result
preview (an Arrow schema and one record batch, or JSON rows) into a ``pyarrow.Table``.

Needs pyarrow (``pip install 'lakehouse-client[arrow]'``).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum

import grpc
from google.protobuf import json_format

from lakehouse.client.errors import LakehouseError, error_from_status
from lakehouse.v1 import job_pb2

try:
    import pyarrow as pa
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lakehouse.client.jobs needs pyarrow: pip install 'lakehouse-client[arrow]'"
    ) from e

__all__ = ["Job", "JobKind", "JobState", "sql_preview", "succeeded"]


class JobState(enum.IntEnum):
    """``lakehouse.v1.JobState`` by name (values equal the proto's)."""

    UNSPECIFIED = job_pb2.JOB_STATE_UNSPECIFIED
    QUEUED = job_pb2.JOB_STATE_QUEUED
    RUNNING = job_pb2.JOB_STATE_RUNNING
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    CANCELLED = job_pb2.JOB_STATE_CANCELLED

    @property
    def finished(self) -> bool:
        """True for the terminal states: SUCCEEDED, FAILED, CANCELLED."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobKind(enum.IntEnum):
    """``lakehouse.v1.JobKind`` by name (values equal the proto's)."""

    UNSPECIFIED = job_pb2.JOB_KIND_UNSPECIFIED
    SQL = job_pb2.JOB_KIND_SQL
    COMPACT_TABLE = job_pb2.JOB_KIND_COMPACT_TABLE
    EXPIRE_SNAPSHOTS = job_pb2.JOB_KIND_EXPIRE_SNAPSHOTS
    REMOVE_ORPHAN_FILES = job_pb2.JOB_KIND_REMOVE_ORPHAN_FILES
    IMPORT_FILES = job_pb2.JOB_KIND_IMPORT_FILES


def _enum(cls: type[enum.IntEnum], value: int) -> enum.IntEnum | int:
    try:
        return cls(value)
    except ValueError:  # a value newer than this client: keep the number
        return value


@dataclasses.dataclass(frozen=True)
class Job:
    """A job, as ``GetJob`` last reported it.

    Attributes:
        id: The job id.
        state: Where the job is (``JobState``; a plain int for a state newer than the client).
        kind: The kind of work (``JobKind``; likewise).
        attempts: Attempts started so far.
        error: Why it FAILED (or why its last attempt failed), decoded; None otherwise.
        proto: The whole ``lakehouse.v1.Job`` (spec, result, times...).
    """

    id: str
    state: JobState | int
    kind: JobKind | int
    attempts: int
    error: LakehouseError | None
    proto: job_pb2.Job = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, message: job_pb2.Job) -> Job:
        """Wraps a ``lakehouse.v1.Job``."""
        return cls(
            id=message.id,
            state=_enum(JobState, message.state),
            kind=_enum(JobKind, message.kind),
            attempts=message.attempts,
            error=error_from_status(message.error) if message.HasField("error") else None,
            proto=message,
        )

    @property
    def finished(self) -> bool:
        """True once the job is SUCCEEDED, FAILED or CANCELLED."""
        return isinstance(self.state, JobState) and self.state.finished

    @property
    def rows_affected(self) -> int | None:
        """A SQL job's rows written, or its query's full row count; None before it succeeded."""
        if self.proto.result.WhichOneof("kind") != "sql":
            return None
        return self.proto.result.sql.rows_affected

    @property
    def end_time(self) -> datetime.datetime | None:
        """When the job finished (UTC); None until then."""
        if not self.proto.HasField("end_time"):
            return None
        return self.proto.end_time.ToDatetime(tzinfo=datetime.UTC)


def sql_preview(job: job_pb2.Job | Job) -> pa.Table:
    """A succeeded SQL job's result preview as a table.

    An ARROW preview (the default) keeps the result's types; a JSON preview
    (``preview_format: ROW_FORMAT_JSON``) becomes columns sorted by name with inferred types.
    Check ``job.proto.result.sql.preview_truncated`` to know whether rows were left out.

    Raises:
        ValueError: The job is not a succeeded SQL job, or its preview is not Arrow IPC.
    """
    message = job.proto if isinstance(job, Job) else job
    if message.result.WhichOneof("kind") != "sql":
        state = job_pb2.JobState.Name(message.state)
        raise ValueError(f"job {message.id} has no SQL result (it is {state})")
    result = message.result.sql
    if result.HasField("preview_json_rows"):
        rows = [json_format.MessageToDict(row) for row in result.preview_json_rows.rows]
        names = sorted({name for row in rows for name in row})
        return pa.table({name: pa.array([row.get(name) for row in rows]) for name in names})
    if not result.arrow_schema.serialized_schema:
        return pa.table({})
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(result.arrow_schema.serialized_schema))
        data = result.preview_arrow_record_batch.serialized_record_batch
        if not data:
            return schema.empty_table()
        batch = pa.ipc.read_record_batch(pa.py_buffer(data), schema)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"job {message.id}: the preview is not Arrow IPC: {e}") from e
    return pa.Table.from_batches([batch], schema)


def succeeded(job: Job) -> Job:
    """The job, if it SUCCEEDED.

    Raises:
        LakehouseError: The job FAILED (its decoded ``Job.error``), was CANCELLED (code
            ``CANCELLED``) or has not finished (code ``FAILED_PRECONDITION``).
    """
    if job.state is JobState.SUCCEEDED:
        return job
    if job.state is JobState.FAILED and job.error is not None:
        raise job.error
    if job.state is JobState.CANCELLED:
        raise LakehouseError(grpc.StatusCode.CANCELLED, f"job {job.id} was cancelled")
    raise LakehouseError(
        grpc.StatusCode.FAILED_PRECONDITION, f"job {job.id} is {job.state!r}, not SUCCEEDED"
    )
