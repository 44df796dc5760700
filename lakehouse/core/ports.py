"""What core needs from the world outside it, as typed Protocols: the ports.

Core is written against these; only the wiring (``server/app.py``, ``server/worker_app.py``,
``server/job_runtime.py``) names the adapters that implement them and hands them in
(docs/development/architecture.md). An adapter implements a port by its shape (structural
typing): it does not import this module, since adapters import only the domain.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import BooleanExpression
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder

from lakehouse.blocking import BlockingPool
from lakehouse.domain.changes import TableChange
from lakehouse.domain.ingest import (
    AppendOutcome,
    AppendPlan,
    BatchResolution,
    IngestState,
    PendingBatch,
    RequestIdLedger,
    StagedAppend,
)
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.job_results import JobResult
from lakehouse.domain.job_specs import JobSpec
from lakehouse.domain.jobs import Claim, JobRecord
from lakehouse.domain.objects import ObjectInfo
from lakehouse.domain.refs import MAIN, RefInfo, RefKind
from lakehouse.domain.row_changes import DeleteOutcome, RowChange
from lakehouse.domain.sql_result import SqlOutcome
from lakehouse.domain.table_health import FileStats
from lakehouse.domain.table_jobs import CompactResult, ExpireResult, ImportOutcome, OrphanResult
from lakehouse.domain.tables import OpenScan, PlannedRead, ScanRequest, SnapshotInfo, TableInfo

T = TypeVar("T")


class CatalogPort(Protocol):
    """Iceberg tables and namespaces (``lakehouse.adapters.iceberg.catalog.IcebergCatalog``)."""

    async def run_on_catalog(
        self,
        fn: Callable[[Catalog], T],
        namespace: str = "",
        table: str = "",
        *,
        pool: BlockingPool,
    ) -> T:
        """Runs ``fn`` with the pyiceberg catalog in ``pool``, translating its errors."""

    async def create_namespace(self, name: str, properties: dict[str, str]) -> dict[str, str]:
        """Creates a namespace; returns its properties."""

    async def namespace_properties(self, name: str) -> dict[str, str]:
        """The properties of a namespace. Raises NotFound."""

    async def list_namespaces(self) -> list[str]:
        """All top-level namespace names."""

    async def namespaces_with_properties(
        self, names: list[str]
    ) -> list[tuple[str, dict[str, str]]]:
        """The properties of several namespaces, in one trip to the pool."""

    async def update_namespace_properties(
        self, name: str, removals: set[str], updates: dict[str, str]
    ) -> tuple[dict[str, str], list[str], list[str], list[str]]:
        """Updates properties; returns (properties, updated, removed, missing)."""

    async def drop_namespace(self, name: str) -> None:
        """Drops an empty namespace. Raises NotFound or FailedPrecondition."""

    async def create_table(
        self,
        namespace: str,
        name: str,
        schema: Schema,
        partition_spec: PartitionSpec,
        sort_order: SortOrder,
        properties: dict[str, str],
    ) -> TableInfo:
        """Creates a table. Raises NotFound (namespace) or AlreadyExists."""

    async def load_table(self, namespace: str, name: str, *, max_age: float = 0.0) -> TableInfo:
        """Loads a table's metadata (cached, revalidated by metadata location). Raises NotFound."""

    async def register_table(self, namespace: str, name: str, metadata_location: str) -> TableInfo:
        """Adds an existing table to the catalog from its metadata file."""

    def owns_location(self, location: str) -> bool:
        """Whether ``location`` lies strictly inside the warehouse (see ``within_location``)."""

    async def list_snapshots(self, namespace: str, name: str) -> list[SnapshotInfo]:
        """Every snapshot kept in the table's metadata. Raises NotFound."""

    async def current_snapshot(
        self, namespace: str, name: str, branch: str = MAIN
    ) -> SnapshotInfo | None:
        """The snapshot at the head of ``branch``; None for main of a table with no snapshot.

        Reads only the head, whatever the number of snapshots the table keeps.

        Raises:
            NotFound: No such table, or no such branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` names a tag (NOT_A_BRANCH).
        """

    async def update_table(
        self,
        namespace: str,
        name: str,
        changes: Sequence[TableChange],
        expected_etag: str,
    ) -> TableInfo:
        """Applies ``changes`` in one commit, optionally only if the table is unchanged."""

    async def rollback(
        self,
        namespace: str,
        name: str,
        *,
        snapshot_id: int | None,
        as_of_ms: int | None,
        expected_etag: str,
    ) -> TableInfo:
        """Moves the current snapshot back to an ancestor (by id, or as of a time)."""

    async def snapshots_after(
        self, namespace: str, name: str, after: int | None
    ) -> builtins.list[SnapshotInfo]:
        """The snapshots of the current lineage after ``after`` (all when None), oldest first."""

    async def file_stats(self, namespace: str, name: str) -> FileStats:
        """What the table's current metadata says of its files (for GetTableHealth)."""

    async def list_refs(self, namespace: str, name: str) -> list[RefInfo]:
        """The table's branches and tags, main first, then by name."""

    async def create_ref(
        self,
        namespace: str,
        name: str,
        ref: str,
        kind: RefKind,
        snapshot_id: int | None,
        *,
        max_ref_age_ms: int | None = None,
        min_snapshots_to_keep: int | None = None,
        max_snapshot_age_ms: int | None = None,
    ) -> RefInfo:
        """Creates a branch or a tag at a snapshot (default: the current one)."""

    async def delete_ref(self, namespace: str, name: str, ref: str) -> None:
        """Deletes a branch or a tag (not main)."""

    async def publish_branch(
        self, namespace: str, name: str, branch: str, expected_etag: str
    ) -> TableInfo:
        """Fast-forwards main to a branch's head."""

    async def planned_append(
        self,
        namespace: str,
        name: str,
        plan: Callable[[IngestState], AppendPlan],
        *,
        request_id_window_ms: int,
        max_attempts: int,
        ledger: RequestIdLedger | None = None,
        request_ids: Collection[str] = (),
        change: RowChange | None = None,
        branch: str = MAIN,
    ) -> AppendOutcome:
        """Appends what ``plan`` decides on the freshest table state, in one commit.

        With a ``change``, the same snapshot removes the rows it replaces. The commit goes to
        ``branch``'s head; the plan sees the exactly-once state of that branch's lineage.
        """

    async def stage_append(
        self,
        namespace: str,
        name: str,
        plan: Callable[[IngestState], AppendPlan],
        *,
        request_id_window_ms: int,
        ledger: RequestIdLedger | None = None,
        request_ids: Collection[str] = (),
        branch: str = MAIN,
        max_age: float = 0.0,
    ) -> StagedAppend:
        """Plans on committed state and writes the rows' data files, uncommitted.

        ``max_age``: plan on the table as cached if validated this recently (seconds).
        """

    async def discard_files(self, namespace: str, name: str, paths: Collection[str]) -> None:
        """Deletes staged data files that no commit took."""

    async def delete_rows(
        self,
        namespace: str,
        name: str,
        row_filter: BooleanExpression,
        *,
        request_id: str,
        expected_etag: str,
        request_id_window_ms: int,
        max_attempts: int,
        ledger: RequestIdLedger | None = None,
        branch: str = MAIN,
    ) -> DeleteOutcome:
        """Deletes the rows ``row_filter`` matches, in one snapshot on ``branch``.

        A request id deletes once (per branch lineage).
        """

    async def writer_position(
        self,
        namespace: str,
        name: str,
        writer_id: str,
        *,
        request_id_window_ms: int,
        branch: str = MAIN,
    ) -> tuple[int, int | None, int] | None:
        """(next_offset, last snapshot id, last commit ms) of a writer on ``branch``, or None."""

    async def open_scan(self, namespace: str, name: str, request: ScanRequest) -> OpenScan:
        """Plans a scan (files and row groups pruned by the filter) and opens a lazy reader."""

    async def plan_read_session(
        self,
        namespace: str,
        name: str,
        request: ScanRequest,
        max_streams: int,
        *,
        keep_plan: bool = True,
    ) -> PlannedRead:
        """Pins a read's snapshot, plans its files and splits them into at most ``max_streams``.

        ``open_scan`` with ``ScanRequest.share`` then reads one stream's files, on any replica;
        with ``keep_plan`` the files planned are kept for those reads (False: nothing reads
        the plan's streams by share, so it is not kept).
        """

    async def next_batch(self, scan: OpenScan) -> pa.RecordBatch | None:
        """The next record batch of an open scan, or None at its end."""

    def next_batch_sync(self, scan: OpenScan) -> pa.RecordBatch | None:
        """``next_batch`` on the calling thread, which blocks: never call it on the loop.

        For a transport that pulls batches on its own thread (Flight's do_get), so that a
        stream opened on the loop is read without a hop to the loop per batch.
        """

    async def close_scan(self, scan: OpenScan) -> None:
        """Stops reading (the client went away or the limit was reached)."""

    def close_scan_sync(self, scan: OpenScan) -> None:
        """``close_scan`` on the calling thread (blocking); closing twice is a no-op."""

    async def list_tables(self, namespace: str) -> list[str]:
        """The table names of a namespace. Raises NotFound."""

    async def drop_table(self, namespace: str, name: str) -> None:
        """Drops a table from the catalog, leaving its files. Raises NotFound."""

    async def rename_table(
        self, namespace: str, name: str, new_namespace: str, new_name: str
    ) -> TableInfo:
        """Renames (and possibly moves) a table. Raises NotFound or AlreadyExists."""


class ObjectStorePort(Protocol):
    """What the core needs from object storage (shaped like pyiceberg's FileIO, but async)."""

    async def check(self) -> None:
        """Raises Unavailable if the store cannot be reached or the location is unusable."""

    def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Lists the objects whose URI starts with ``prefix``, in key order (as S3 lists)."""

    async def get(self, uri: str) -> bytes:
        """Reads one object. Raises NotFound if it does not exist."""

    async def put(self, uri: str, data: bytes) -> None:
        """Writes one object, replacing any previous one."""

    async def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under ``prefix``; returns how many were deleted."""

    async def close(self) -> None:
        """Releases connections."""


class JobCodec(Protocol):
    """The stored form of job specs and results (``lakehouse.services.job_codec``).

    The job store keeps specs and results as opaque bytes; their format is the contract's
    serialized ``JobSpec`` and ``JobResult`` (job store schema 3), which only the servicer
    layer may name. Core encodes and decodes through this port.
    """

    def encode_spec(self, spec: JobSpec) -> bytes:
        """The stored bytes of ``spec`` (deterministic: equal specs, equal bytes)."""
        ...

    def decode_spec(self, data: bytes) -> JobSpec:
        """The spec stored as ``data``."""
        ...

    def encode_result(self, result: JobResult | None) -> bytes:
        """The stored bytes of ``result``."""
        ...

    def decode_result(self, data: bytes) -> JobResult | None:
        """The result stored as ``data`` (None when it holds no kind)."""
        ...


class IngestFleetPort(Protocol):
    """Commit leases and handed batches in the database replicas share.

    Implemented by ``lakehouse.adapters.ingest_fleet_store.IngestFleetStore``. Every method
    raises ``Unavailable`` when the database cannot be reached.
    """

    async def acquire(
        self, table: tuple[str, str], branch: str, owner: str, ttl_seconds: float
    ) -> int | None:
        """Takes or renews the commit lease of a table branch; its epoch, or None if held."""

    async def release(self, table: tuple[str, str], branch: str, owner: str) -> None:
        """Gives the lease up at once, if ``owner`` still holds it."""

    async def submit(self, table: tuple[str, str], branch: str, batch: PendingBatch) -> None:
        """Hands a batch to the table branch's owner."""

    async def claim(
        self, table: tuple[str, str], branch: str, epoch: int, limit: int
    ) -> list[PendingBatch]:
        """Claims, under ``epoch``, the batches not resolved yet, oldest first."""

    async def resolve(self, epoch: int, resolutions: Sequence[BatchResolution]) -> None:
        """Records what the owner did (only for batches still claimed under ``epoch``)."""

    async def resolution(self, batch_id: str) -> BatchResolution | None:
        """The batch's resolution (forgetting it), or None while it is open."""

    async def withdraw(self, batch_id: str) -> bool:
        """Takes a batch back if no owner claimed it yet; whether it was taken back."""

    async def prune(self, retention_seconds: float, limit: int) -> int:
        """Deletes resolutions and idle leases older than the retention (``limit`` each)."""


class JobStorePort(Protocol):
    """The durable job queue (``lakehouse.adapters.job_store.store.JobStore``)."""

    def create(
        self,
        *,
        job_id: str,
        kind: int,
        namespace: str,
        table: str,
        spec: bytes,
        spec_digest: str,
        request_id: str,
        max_attempts: int,
        now_us: int,
        scheduled: bool = False,
        principal: str = "",
        max_unfinished: int = 0,
        max_unfinished_in_namespace: int = 0,
    ) -> tuple[JobRecord, bool]:
        """Creates a QUEUED job, due at once, unless an equivalent one exists."""

    def find_by_request_id(self, request_id: str) -> JobRecord | None:
        """The job created with ``request_id``, or None."""

    def get(self, job_id: str) -> JobRecord:
        """The job as it is now."""

    def list(
        self,
        *,
        states: Sequence[int],
        kinds: Sequence[int],
        namespace: str,
        table: str,
        limit: int,
        after: tuple[int, str] | None,
    ) -> builtins.list[JobRecord]:
        """One page of jobs, newest first by ``(create_time_us, id)``."""

    def cancel(self, job_id: str, *, now_us: int) -> JobRecord:
        """Cancels a job: a QUEUED one at once, a RUNNING one at its next safe point."""

    def delete(self, job_id: str) -> None:
        """Deletes a finished job's record (its request id becomes free again)."""

    def claim(
        self,
        *,
        worker: str,
        lease_seconds: float,
        now_us: int,
        kinds: Sequence[int] | None = None,
        max_running_per_principal: int = 0,
        max_running_per_namespace: int = 0,
    ) -> Claim | None:
        """Takes the oldest due job for ``worker``, or None if there is none."""

    def heartbeat(
        self,
        job_id: str,
        *,
        worker: str,
        attempt: int,
        lease_seconds: float,
        now_us: int,
        progress: tuple[float, str] | None,
    ) -> bool:
        """Extends the worker's lease and records progress; returns ``cancel_requested``."""

    def finish(
        self,
        job_id: str,
        *,
        worker: str,
        attempt: int,
        state: int,
        now_us: int,
        result: bytes | None = None,
        error: bytes | None = None,
    ) -> JobRecord:
        """Ends the worker's attempt and the job: SUCCEEDED, FAILED or CANCELLED."""

    def retry_later(
        self,
        job_id: str,
        *,
        worker: str,
        attempt: int,
        now_us: int,
        delay_seconds: float,
        error: bytes,
    ) -> JobRecord:
        """Queues the job again after a retryable failure of the worker's attempt."""

    def queue_depth(self, *, now_us: int) -> dict[int, int]:
        """Jobs waiting for a worker now (QUEUED and due), per kind, for a gauge."""

    def latest(self, *, kind: int, namespace: str, table: str) -> JobRecord | None:
        """The newest job of ``kind`` on the table, in any state; None if there is none."""

    def purge_finished(self, *, ended_before_us: int, limit: int = 1000) -> int:
        """Deletes up to ``limit`` finished jobs that ended before ``ended_before_us``."""


class SqlEnginePort(Protocol):
    """An engine that checks and runs one SQL statement over the lakehouse's tables."""

    async def check_statement(self, statement: str, *, default_namespace: str) -> None:
        """Checks ``statement`` without running it, so that a bad one creates no job.

        Args:
            statement: The SQL text, in the engine's dialect.
            default_namespace: The namespace of table names written without one ("" for
                none).

        Raises:
            InvalidArgument: The statement cannot run (fields named relative to the spec,
                ``sql.statement``), or the engine is not configured (``sql.engine``).
            NotFound: A table or namespace the statement names does not exist.
            Unavailable: The engine or the catalog cannot be reached.
        """
        ...

    async def run_statement(
        self,
        *,
        statement: str,
        default_namespace: str,
        preview_limit: int,
        destination: tuple[str, str] | None,
        ctx: JobContext,
        preview_max_bytes: int,
    ) -> SqlOutcome:
        """Runs ``statement`` to its end, for one attempt of a SQL job.

        Args:
            statement: The SQL text, in the engine's dialect.
            default_namespace: The namespace of table names written without one ("" for
                none).
            preview_limit: The most result rows to keep for the preview.
            destination: ``(namespace, table)`` of a new table to write the result into.
            ctx: The running job: stop requests, progress and the job id.
            preview_max_bytes: About the most bytes the preview may hold.

        Returns:
            Row count, preview and the snapshot committed (when the engine knows it).

        Raises:
            JobStopped: The job was asked to stop.
            FailedPrecondition: The engine is not configured (``ENGINE_NOT_CONFIGURED``).
            LakehouseError: The statement failed (the engine's errors, mapped).
        """
        ...


class TableJobsPort(Protocol):
    """The table jobs (``lakehouse.adapters.iceberg.table_jobs.IcebergTableJobs``)."""

    async def compact(
        self,
        namespace: str,
        table: str,
        *,
        row_filter: str,
        target_file_bytes: int | None,
        min_input_files: int,
        small_file_bytes: int | None,
        ctx: JobContext,
        branch: str = MAIN,
    ) -> CompactResult:
        """Rewrites the small files (those ``row_filter`` selects) of ``branch``'s head."""

    async def expire_snapshots(
        self, namespace: str, table: str, *, older_than_ms: int, retain_last: int, ctx: JobContext
    ) -> ExpireResult:
        """Expires the snapshots older than ``older_than_ms``, keeping the last ``retain_last``."""

    async def remove_orphan_files(
        self,
        namespace: str,
        table: str,
        *,
        listed: Sequence[tuple[str, float]],
        sizes: Mapping[str, int],
        older_than_ms: int,
        dry_run: bool,
        ctx: JobContext,
    ) -> OrphanResult:
        """Deletes the listed files under the table that no snapshot, ref or log names."""

    async def import_files(
        self,
        namespace: str,
        table: str,
        *,
        source_prefix: str,
        source_uris: Sequence[str],
        file_format: int,
        allowed_prefixes: Sequence[str],
        ctx: JobContext,
    ) -> ImportOutcome:
        """Imports existing files into the table in one commit (fields relative to the spec)."""
