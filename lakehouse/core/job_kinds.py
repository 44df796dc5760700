"""Running each kind of job: from a checked job spec to its typed result (domain values).

The work itself is blocking (pyiceberg, pyarrow, DuckDB) and runs in the jobs' own thread
pool, never in the pool that serves RPCs, so a long compaction does not delay a GetTable.
Every kind commits at most once, at its end, after a last ``ctx.check()``: a job stopped
before that commits nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import pyarrow as pa
from google.protobuf.struct_pb2 import Struct

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
from lakehouse.domain import job_results as jr
from lakehouse.domain import job_specs as js
from lakehouse.domain.compaction import DEFAULT_MIN_INPUT_FILES
from lakehouse.domain.errors import FailedPrecondition
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.json_values import batch_to_structs
from lakehouse.domain.refs import MAIN
from lakehouse.domain.sql_result import SqlOutcome

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

    async def run(self, spec: js.JobSpec, ctx: JobContext) -> jr.JobResult:
        """Runs ``spec`` to its result; raises a domain error or JobStopped otherwise."""
        body = spec.body
        if isinstance(body, js.SqlJobSpec):
            return await self._sql(body, ctx)
        if isinstance(body, js.CompactTableSpec):
            return await self._compact(body, ctx)
        if isinstance(body, js.ExpireSnapshotsSpec):
            return await self._expire(body, ctx)
        if isinstance(body, js.RemoveOrphanFilesSpec):
            return await self._orphans(body, ctx)
        if isinstance(body, js.ImportFilesSpec):
            return await self._import(body, ctx)
        raise FailedPrecondition(f"job spec has no known kind ({spec.field})")

    # -- SQL -------------------------------------------------------------------------------

    async def _sql(self, spec: js.SqlJobSpec, ctx: JobContext) -> jr.SqlJobResult:
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

    async def _compact(self, spec: js.CompactTableSpec, ctx: JobContext) -> jr.CompactTableResult:
        r = await self._table_jobs.compact(
            spec.namespace,
            spec.table,
            row_filter=spec.row_filter,
            target_file_bytes=spec.target_file_size_bytes or None,
            min_input_files=spec.min_input_files or DEFAULT_MIN_INPUT_FILES,
            small_file_bytes=spec.small_file_size_bytes or None,
            ctx=ctx,
            branch=spec.branch or MAIN,
        )
        return jr.CompactTableResult(
            files_before=r.files_rewritten,
            files_after=r.files_added,
            bytes_before=r.bytes_rewritten,
            bytes_after=r.bytes_added,
            rows_rewritten=r.rows_rewritten,
            snapshot_id=r.snapshot_id,
        )

    async def _expire(
        self, spec: js.ExpireSnapshotsSpec, ctx: JobContext
    ) -> jr.ExpireSnapshotsResult:
        now_ms = int(time.time() * 1000)
        cutoffs = []
        if spec.older_than is not None:
            cutoffs.append(timestamp_to_ms("spec.expire_snapshots.older_than", spec.older_than))
        if spec.max_snapshot_age is not None:
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
        return jr.ExpireSnapshotsResult(
            snapshots_expired=len(r.snapshots_expired),
            data_files_deleted=r.data_files_deleted,
            metadata_files_deleted=r.manifests_deleted
            + r.manifest_lists_deleted
            + r.metadata_files_deleted,
            bytes_deleted=r.bytes_freed,
            delete_files_deleted=r.delete_files_deleted,
            manifests_deleted=r.manifests_deleted,
            manifest_lists_deleted=r.manifest_lists_deleted,
            metadata_json_files_deleted=r.metadata_files_deleted,
        )

    async def _orphans(
        self, spec: js.RemoveOrphanFilesSpec, ctx: JobContext
    ) -> jr.RemoveOrphanFilesResult:
        age = DEFAULT_ORPHAN_AGE_SECONDS
        if spec.min_file_age is not None:
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
        return jr.RemoveOrphanFilesResult(
            orphan_files_found=r.orphans_found,
            files_deleted=r.orphans_deleted,
            orphan_bytes=r.orphan_bytes,
            orphan_file_uris=tuple(r.files[:MAX_LISTED_URIS]),
            orphan_file_uris_truncated=r.orphans_found > min(len(r.files), MAX_LISTED_URIS),
        )

    async def _import(self, spec: js.ImportFilesSpec, ctx: JobContext) -> jr.ImportFilesResult:
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
        return jr.ImportFilesResult(
            files_imported=r.files_imported,
            files_registered=r.files_registered,
            files_rewritten=r.files_rewritten,
            rows_imported=r.rows_imported,
            snapshot_id=r.snapshot_id,
        )


def _destination(spec: js.SqlJobSpec) -> tuple[str, str] | None:
    if not spec.destination_table:
        return None
    return (spec.destination_namespace or spec.default_namespace, spec.destination_table)


def _sql_result(outcome: SqlOutcome, preview_format: int, max_bytes: int) -> jr.SqlJobResult:
    """The result, its preview cut to ``max_bytes`` as serialized.

    Engines cap the Arrow bytes they keep; JSON rows and IPC framing may take more.
    """
    preview = outcome.preview
    if preview_format == js.ROW_FORMAT_JSON:
        rows: list[Struct] = []
        used = 0
        full = False
        for batch in preview.to_batches():
            for row in batch_to_structs(batch):
                used += row.ByteSize() + 8
                if used > max_bytes:
                    full = True
                    break
                rows.append(row)
            if full:
                break
        return jr.SqlJobResult(
            rows_affected=outcome.rows_affected,
            # The contract's JsonRows is present only once it holds a row.
            preview_json_rows=tuple(rows) if rows else None,
            preview_truncated=outcome.truncated or full,
            snapshot_id=outcome.snapshot_id,
        )
    batches = preview.combine_chunks().to_batches()
    merged = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=preview.schema)
    truncated = outcome.truncated
    while merged.num_rows and merged.serialize().size > max_bytes:
        merged = merged.slice(0, merged.num_rows // 2)
        truncated = True
    return jr.SqlJobResult(
        rows_affected=outcome.rows_affected,
        arrow_schema=preview.schema.serialize().to_pybytes(),
        preview_arrow_record_batch=jr.ArrowBatch(
            serialized_record_batch=merged.serialize().to_pybytes(), row_count=merged.num_rows
        ),
        preview_truncated=truncated,
        snapshot_id=outcome.snapshot_id,
    )
