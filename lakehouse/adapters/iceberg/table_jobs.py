"""Table jobs on Iceberg tables: compaction, snapshot expiry, orphan removal, file imports.

Implements ``TableJobsPort`` (``lakehouse.core.ports``) over the catalog adapter: each job
loads its table in the blocking pool and runs the maintenance or import code on it, with the
job's context for progress and stop requests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping, Sequence

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.table.refs import MAIN_BRANCH

from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.iceberg.compaction import compact_table
from lakehouse.adapters.iceberg.expiry import expire_snapshots
from lakehouse.adapters.iceberg.orphans import remove_orphan_files
from lakehouse.adapters.imports.job import import_files
from lakehouse.blocking import BlockingPool
from lakehouse.domain.compaction import DEFAULT_TARGET_FILE_BYTES
from lakehouse.domain.ingest import RequestIdLedger
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.row_filter import parse_row_filter
from lakehouse.domain.table_jobs import CompactResult, ExpireResult, ImportOutcome, OrphanResult

#: Commits an expiry tries within one attempt before it counts as a conflict.
EXPIRE_COMMIT_ATTEMPTS = 5


class IcebergTableJobs:
    """Compaction, expiry, orphan removal and imports on the catalog's tables."""

    def __init__(
        self,
        catalog: IcebergCatalog,
        pool: BlockingPool,
        *,
        request_ids: RequestIdLedger | None = None,
        request_id_window_seconds: float = 0.0,
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._request_ids = request_ids
        self._request_id_window_ms = int(request_id_window_seconds * 1000)

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
        branch: str = MAIN_BRANCH,
    ) -> CompactResult:
        """Rewrites the small files (those ``row_filter`` selects) of ``branch``'s head.

        Raises:
            NotFound: No such branch (REF_NOT_FOUND).
            FailedPrecondition: ``branch`` is a tag (NOT_A_BRANCH).
        """

        def work(c: Catalog) -> CompactResult:
            loaded = c.load_table((namespace, table))
            selected: BooleanExpression = AlwaysTrue()
            if row_filter:
                selected = parse_row_filter(
                    row_filter, loaded.schema(), field="spec.compact_table.row_filter"
                )
            target = target_file_bytes or int(
                loaded.properties.get("write.target-file-size-bytes", DEFAULT_TARGET_FILE_BYTES)
            )
            ctx.progress(0.0, "planning")
            return compact_table(
                loaded,
                target_file_bytes=target,
                min_input_files=min_input_files,
                row_filter=selected,
                small_file_bytes=small_file_bytes,
                ctx=ctx,
                branch=branch,
            )

        return await self._catalog.run_on_catalog(work, namespace, table, pool=self._pool)

    async def expire_snapshots(
        self, namespace: str, table: str, *, older_than_ms: int, retain_last: int, ctx: JobContext
    ) -> ExpireResult:
        """Expires the snapshots older than ``older_than_ms``, keeping the last ``retain_last``."""

        def work(c: Catalog) -> ExpireResult:
            # A table under steady ingest commits while the expiry computes: losing that
            # race is normal, and the expiry (which deletes nothing before its commit) is
            # recomputed on the new metadata rather than failing the attempt.
            for attempt in range(1, EXPIRE_COMMIT_ATTEMPTS + 1):
                loaded = c.load_table((namespace, table))
                ctx.progress(0.1, "expiring snapshots")
                ctx.check()
                try:
                    return expire_snapshots(
                        loaded,
                        older_than_ms=older_than_ms,
                        retain_last=retain_last,
                        request_ids=self._request_ids,
                        request_id_window_ms=self._request_id_window_ms,
                    )
                except CommitFailedException:
                    if attempt == EXPIRE_COMMIT_ATTEMPTS:
                        raise
                    time.sleep(random.uniform(0.05, 0.1) * 2**attempt)
            raise AssertionError("unreachable")

        return await self._catalog.run_on_catalog(work, namespace, table, pool=self._pool)

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

        def list_files(prefix: str) -> Iterator[tuple[str, float]]:
            return iter(listed)

        def work(c: Catalog) -> OrphanResult:
            loaded = c.load_table((namespace, table))
            ctx.check()
            return remove_orphan_files(
                loaded,
                list_files,
                older_than_ms=older_than_ms,
                dry_run=dry_run,
                sizes=dict(sizes),
            )

        return await self._catalog.run_on_catalog(work, namespace, table, pool=self._pool)

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

        def work(c: Catalog) -> ImportOutcome:
            loaded = c.load_table((namespace, table))
            return import_files(
                loaded,
                source_prefix=source_prefix,
                source_uris=list(source_uris),
                file_format=file_format,
                ctx=ctx,
                allowed_prefixes=allowed_prefixes,
            )

        return await self._catalog.run_on_catalog(work, namespace, table, pool=self._pool)
