"""GetTableHealth: a table's files, its last hour, and the verdict (``domain.table_health``)."""

from __future__ import annotations

import time

from lakehouse.core.commit_conflicts import WINDOW_SECONDS, ConflictLog
from lakehouse.core.jobs import Jobs
from lakehouse.core.ports import CatalogPort
from lakehouse.domain.jobs import (
    FAILED,
    KIND_COMPACT_TABLE,
    KIND_EXPIRE_SNAPSHOTS,
    KIND_REMOVE_ORPHAN_FILES,
)
from lakehouse.domain.names import check_identifier
from lakehouse.domain.table_health import TableHealth, assess
from lakehouse.metrics import TableGauges

_MAINTENANCE = (KIND_COMPACT_TABLE, KIND_EXPIRE_SNAPSHOTS, KIND_REMOVE_ORPHAN_FILES)
#: Pages of jobs read at most for the last hour (a table with more maintenance jobs than
#: this in an hour has other problems; the counts then stop there).
_MAX_JOB_PAGES = 10


class TableHealthCheck:
    """The GetTableHealth use case."""

    def __init__(
        self,
        catalog: CatalogPort,
        jobs: Jobs,
        conflicts: ConflictLog,
        gauges: TableGauges | None = None,
    ) -> None:
        self._catalog = catalog
        self._jobs = jobs
        self._conflicts = conflicts
        self._gauges = gauges

    async def health(self, namespace: str, table: str) -> TableHealth:
        """The table's health now.

        Raises:
            InvalidArgument: Bad names.
            NotFound: No such table.
            Unavailable: The catalog, the object store or the job store failed.
        """
        check_identifier("namespace", namespace)
        check_identifier("table", table)
        info = await self._catalog.load_table(namespace, table)
        files = await self._catalog.file_stats(namespace, table)
        jobs, failed = await self._maintenance_last_hour(namespace, table)
        health = assess(
            files,
            info.properties,
            conflicts=self._conflicts.last_hour((namespace, table)),
            jobs=jobs,
            failed_jobs=failed,
        )
        if self._gauges is not None:
            self._gauges.touched(
                (namespace, table),
                data_files=files.data_files,
                snapshots=files.snapshots,
                small_files=files.small_data_files,
                verdict=health.verdict.value,
            )
        return health

    async def _maintenance_last_hour(self, namespace: str, table: str) -> tuple[int, int]:
        since_us = int((time.time() - WINDOW_SECONDS) * 1_000_000)
        jobs = failed = 0
        token = ""
        for _ in range(_MAX_JOB_PAGES):
            page = await self._jobs.list(
                states=[],
                kinds=list(_MAINTENANCE),
                namespace=namespace,
                table=table,
                requested_size=1000,
                token=token,
            )
            for job in page.items:
                if job.create_time_us < since_us:
                    return jobs, failed
                jobs += 1
                failed += job.state == FAILED
            token = page.next_page_token
            if not token:
                break
        return jobs, failed
