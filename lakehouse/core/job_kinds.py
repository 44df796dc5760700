"""Running each kind of job: from a checked JobSpec to its typed JobResult.

The work itself is blocking (pyiceberg, pyarrow, DuckDB) and runs in the jobs' own thread
pool, never in the pool that serves RPCs, so a long compaction does not delay a GetTable.
Every kind commits at most once, at its end, after a last ``ctx.check()``: a job stopped
before that commits nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pyarrow as pa

from lakehouse.config import JobsSettings
from lakehouse.core.job_specs import (
    DEFAULT_EXPIRE_AGE_SECONDS,
    DEFAULT_ORPHAN_AGE_SECONDS,
    duration_seconds,
    preview_rows,
    timestamp_to_ms,
    under_spec,
)
from lakehouse.core.ports import CatalogPort, ObjectStorePort, SqlEnginePort, TableJobsPort
from lakehouse.core.sql_engines import engine_for
from lakehouse.domain.compaction import DEFAULT_MIN_INPUT_FILES
from lakehouse.domain.errors import FailedPrecondition
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.json_values import batch_to_structs
from lakehouse.domain.sql_result import SqlOutcome
from lakehouse.v1 import job_pb2, rows_pb2

MAX_LISTED_URIS = 1000


class JobKinds:
    """Runs the work of one job attempt, whatever its kind."""

    def __init__(
        self,
        catalog: CatalogPort,
        store: ObjectStorePort,
        settings: JobsSettings,
        *,
        table_jobs: TableJobsPort,
        sql_engines: Mapping[str, SqlEnginePort],
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._settings = settings
        self._table_jobs = table_jobs
        self._sql_engines = sql_engines

    async def run(self, spec: job_pb2.JobSpec, ctx: JobContext) -> job_pb2.JobResult:
        """Runs ``spec`` to its result; raises a domain error or JobStopped otherwise."""
        which = spec.WhichOneof("kind")
        if which == "sql":
            return job_pb2.JobResult(sql=await self._sql(spec.sql, ctx))
        if which == "compact_table":
            return job_pb2.JobResult(compact_table=await self._compact(spec.compact_table, ctx))
        if which == "expire_snapshots":
            return job_pb2.JobResult(
                expire_snapshots=await self._expire(spec.expire_snapshots, ctx)
            )
        if which == "remove_orphan_files":
            return job_pb2.JobResult(
                remove_orphan_files=await self._orphans(spec.remove_orphan_files, ctx)
            )
        if which == "import_files":
            return job_pb2.JobResult(import_files=await self._import(spec.import_files, ctx))
        raise FailedPrecondition(f"job spec has no known kind ({which})")

    # -- SQL -------------------------------------------------------------------------------

    async def _sql(self, spec: job_pb2.SqlJobSpec, ctx: JobContext) -> job_pb2.SqlJobResult:
        destination = _destination(spec)
        limit = preview_rows(spec.preview_row_limit)
        engine = engine_for(self._sql_engines, spec.engine)
        outcome = await engine.run_statement(
            statement=spec.statement,
            default_namespace=spec.default_namespace,
            preview_limit=limit,
            destination=destination,
            ctx=ctx,
            preview_max_bytes=self._settings.preview_max_bytes,
        )
        return _sql_result(outcome, spec.preview_format, self._settings.preview_max_bytes)

    # -- Maintenance -------------------------------------------------------------------------

    async def _compact(
        self, spec: job_pb2.CompactTableJobSpec, ctx: JobContext
    ) -> job_pb2.CompactTableJobResult:
        r = await self._table_jobs.compact(
            spec.namespace,
            spec.table,
            row_filter=spec.row_filter,
            target_file_bytes=spec.target_file_size_bytes or None,
            min_input_files=spec.min_input_files or DEFAULT_MIN_INPUT_FILES,
            small_file_bytes=spec.small_file_size_bytes or None,
            ctx=ctx,
        )
        result = job_pb2.CompactTableJobResult(
            files_before=r.files_rewritten,
            files_after=r.files_added,
            bytes_before=r.bytes_rewritten,
            bytes_after=r.bytes_added,
            rows_rewritten=r.rows_rewritten,
        )
        if r.snapshot_id is not None:
            result.snapshot_id = r.snapshot_id
        return result

    async def _expire(
        self, spec: job_pb2.ExpireSnapshotsJobSpec, ctx: JobContext
    ) -> job_pb2.ExpireSnapshotsJobResult:
        now_ms = int(time.time() * 1000)
        cutoffs = []
        if spec.HasField("older_than"):
            cutoffs.append(timestamp_to_ms("spec.expire_snapshots.older_than", spec.older_than))
        if spec.HasField("max_snapshot_age"):
            age = duration_seconds("spec.expire_snapshots.max_snapshot_age", spec.max_snapshot_age)
            cutoffs.append(now_ms - int(age * 1000))
        older_than_ms = min(cutoffs) if cutoffs else now_ms - DEFAULT_EXPIRE_AGE_SECONDS * 1000

        r = await self._table_jobs.expire_snapshots(
            spec.namespace,
            spec.table,
            older_than_ms=older_than_ms,
            retain_last=spec.retain_last or 1,
            ctx=ctx,
        )
        return job_pb2.ExpireSnapshotsJobResult(
            snapshots_expired=len(r.snapshots_expired),
            data_files_deleted=r.data_files_deleted,
            metadata_files_deleted=r.manifests_deleted
            + r.manifest_lists_deleted
            + r.metadata_files_deleted,
            bytes_deleted=r.bytes_freed,
        )

    async def _orphans(
        self, spec: job_pb2.RemoveOrphanFilesJobSpec, ctx: JobContext
    ) -> job_pb2.RemoveOrphanFilesJobResult:
        age = DEFAULT_ORPHAN_AGE_SECONDS
        if spec.HasField("min_file_age"):
            age = int(duration_seconds("spec.remove_orphan_files.min_file_age", spec.min_file_age))
        older_than_ms = int((time.time() - age) * 1000)
        info = await self._catalog.load_table(spec.namespace, spec.table)
        ctx.progress(0.0, "listing files")
        location = info.location.rstrip("/") + "/"
        listed: list[tuple[str, float]] = []
        sizes: dict[str, int] = {}
        async for obj in self._store.list_objects(location):
            listed.append((obj.uri, obj.last_modified_epoch))
            sizes[obj.uri] = obj.size
            if len(listed) % 10_000 == 0:
                ctx.check()
        ctx.check()
        ctx.progress(0.5, f"listed {len(listed)} files; looking for orphans")

        r = await self._table_jobs.remove_orphan_files(
            spec.namespace,
            spec.table,
            listed=listed,
            sizes=sizes,
            older_than_ms=older_than_ms,
            dry_run=spec.dry_run,
            ctx=ctx,
        )
        return job_pb2.RemoveOrphanFilesJobResult(
            orphan_files_found=r.orphans_found,
            files_deleted=r.orphans_deleted,
            orphan_bytes=r.orphan_bytes,
            orphan_file_uris=list(r.files[:MAX_LISTED_URIS]),
            orphan_file_uris_truncated=r.orphans_found > min(len(r.files), MAX_LISTED_URIS),
        )

    async def _import(
        self, spec: job_pb2.ImportFilesJobSpec, ctx: JobContext
    ) -> job_pb2.ImportFilesJobResult:
        with under_spec():
            r = await self._table_jobs.import_files(
                spec.namespace,
                spec.table,
                source_prefix=spec.source_prefix,
                source_uris=list(spec.source_uris),
                file_format=spec.format,
                allowed_prefixes=self._settings.import_prefixes,
                ctx=ctx,
            )
        result = job_pb2.ImportFilesJobResult(
            files_imported=r.files_imported,
            files_registered=r.files_registered,
            files_rewritten=r.files_rewritten,
            rows_imported=r.rows_imported,
        )
        if r.snapshot_id is not None:
            result.snapshot_id = r.snapshot_id
        return result


def _destination(spec: job_pb2.SqlJobSpec) -> tuple[str, str] | None:
    if not spec.destination_table:
        return None
    return (spec.destination_namespace or spec.default_namespace, spec.destination_table)


def _sql_result(outcome: SqlOutcome, preview_format: int, max_bytes: int) -> job_pb2.SqlJobResult:
    """The result message, its preview cut to ``max_bytes`` as serialized.

    Engines cap the Arrow bytes they keep; JSON rows and IPC framing may take more.
    """
    result = job_pb2.SqlJobResult(
        rows_affected=outcome.rows_affected, preview_truncated=outcome.truncated
    )
    if outcome.snapshot_id is not None:
        result.snapshot_id = outcome.snapshot_id
    preview = outcome.preview
    if preview_format == rows_pb2.ROW_FORMAT_JSON:
        used = 0
        for batch in preview.to_batches():
            for row in batch_to_structs(batch):
                used += row.ByteSize() + 8
                if used > max_bytes:
                    result.preview_truncated = True
                    return result
                result.preview_json_rows.rows.append(row)
        return result
    result.arrow_schema.serialized_schema = preview.schema.serialize().to_pybytes()
    batches = preview.combine_chunks().to_batches()
    merged = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=preview.schema)
    while merged.num_rows and merged.serialize().size > max_bytes:
        merged = merged.slice(0, merged.num_rows // 2)
        result.preview_truncated = True
    result.preview_arrow_record_batch.serialized_record_batch = merged.serialize().to_pybytes()
    result.preview_arrow_record_batch.row_count = merged.num_rows
    return result
