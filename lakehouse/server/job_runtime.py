"""Everything JobService needs, put together once for the server and for ``lakehouse worker``.

The job store, the SQL engines, the workers and the maintenance scheduler share the
process's catalog and object store adapters. Job work gets a thread pool of its own, so long
jobs never take the threads that serve RPCs.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.iceberg.table_jobs import IcebergTableJobs
from lakehouse.adapters.ingest_fleet_listener import FleetListener
from lakehouse.adapters.ingest_fleet_store import IngestFleetStore
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.request_id_store import RequestIdStore
from lakehouse.adapters.resilience import JOB_STORE, Resilience
from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.core.ingest_fleet import Fleet, replica_id
from lakehouse.core.job_kinds import JobKinds
from lakehouse.core.job_specs import SpecChecker
from lakehouse.core.job_worker import (
    JobWorker,
    count_ended,
    count_lease_expired,
    refresh_queue_depth,
)
from lakehouse.core.jobs import JobEvents, Jobs
from lakehouse.core.maintenance_scheduler import MaintenanceScheduler
from lakehouse.core.ports import JobCodec, ObjectStorePort
from lakehouse.core.sql_engines import engine_for
from lakehouse.core.survival import contained
from lakehouse.core.tables import check_table_quota
from lakehouse.domain.errors import RetryableError, Unavailable
from lakehouse.domain.job_specs import SqlJobSpec
from lakehouse.server.sql_engines import SqlEngineSetup, load_sql_engines
from lakehouse.services.job_codec import ProtoJobCodec

log = logging.getLogger(__name__)

#: How often the ``lakehouse_jobs_queued`` gauge is read from the job store (one cheap
#: grouped count; scrapes come every 15 s or more).
QUEUE_DEPTH_SECONDS = 10.0


class JobRuntime:
    """The job store, the API over it, this process's workers and the scheduler.

    Attributes:
        jobs: The JobService operations.
        worker: This process's workers (with no slots when ``workers`` is 0).
        store: The job store.
        sql_engines: Every SQL engine by name (``lakehouse.server.sql_engines``).
        request_ids: The request-id ledger in the job store's database (ingest records and
            reads it, expiry copies to it, the scheduler prunes it).
        ingest_fleet: The hand-offs between replicas' ingest (``ingest`` and a PostgreSQL job
            store), else None.
        fleet_listener: Their notifications' listener, with ``ingest_fleet``.

    The job store and Trino report to the breakers of ``resilience`` (the process's; a
    private set when None).
    """

    def __init__(
        self,
        settings: Settings,
        catalog: IcebergCatalog,
        object_store: ObjectStorePort,
        pool: BlockingPool,
        *,
        slots: int,
        scheduler: bool,
        ingest: bool = False,
        resilience: Resilience | None = None,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._pool = pool
        resilience = resilience or Resilience(settings.resilience)
        self.store = JobStore(
            settings.jobs_database_uri,
            breaker=resilience.breaker(JOB_STORE),
            on_ended=count_ended,
            on_lease_expired=count_lease_expired,
        )
        self.request_ids = RequestIdStore(self.store)
        # One committer per table across replicas needs a database they all share; only a
        # process that ingests (the server, not ``lakehouse worker``) takes part.
        self.ingest_fleet = (
            Fleet(
                IngestFleetStore(self.store, pool, notify=settings.ingest.handoff_notify),
                replica_id(),
            )
            if ingest and settings.ingest.single_committer and self.store.shared
            else None
        )
        # Wakes owners and submitters of hand-offs (without it they poll the database).
        self.fleet_listener = (
            FleetListener(
                settings.jobs_database_uri,
                on_pending=self.ingest_fleet.signals.batch_pending,
                on_resolved=self.ingest_fleet.signals.batch_resolved,
                on_state=self.ingest_fleet.signals.listener_state,
            )
            if self.ingest_fleet is not None and settings.ingest.handoff_notify
            else None
        )
        window = settings.ingest.request_id_window_seconds
        # One thread per job slot, plus one for the scheduler's file planning.
        self._job_pool = BlockingPool(max(slots, 1) + 1, name="lakehouse-jobs")
        self.sql_engines = load_sql_engines(
            SqlEngineSetup(
                settings=settings,
                catalog=catalog,
                pool=pool,
                job_pool=self._job_pool,
                temp_dir=settings.data_dir / "tmp" / "sql",
                resilience=resilience,
            )
        )
        self.events = JobEvents()
        self._migrated = False
        self._migrating: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        # Typed as the port, so that mypy checks the codec has the shape core needs.
        codec: JobCodec = ProtoJobCodec()
        checker = SpecChecker(
            catalog.load_table,
            self._check_sql,
            load_namespace=catalog.namespace_properties,
            import_prefixes=settings.jobs.import_prefixes,
            check_new_table=functools.partial(
                check_table_quota, catalog.list_tables, quotas=settings.quotas
            ),
        )
        self.jobs = Jobs(
            self.store,
            pool,
            checker,
            settings.jobs,
            self.events,
            codec=codec,
            max_response_bytes=settings.max_message_bytes,
        )
        table_jobs = IcebergTableJobs(
            catalog,
            self._job_pool,
            request_ids=self.request_ids,
            request_id_window_seconds=window,
        )
        kinds = JobKinds(
            catalog,
            object_store,
            settings.jobs,
            table_jobs=table_jobs,
            sql_engines=self.sql_engines,
        )
        self.worker = JobWorker(
            self.store, kinds, pool, settings.jobs, self.events, slots=slots, codec=codec
        )
        self._scheduler = (
            MaintenanceScheduler(
                catalog,
                self.jobs,
                self.store,
                self._job_pool,
                interval_seconds=settings.jobs.scheduler_interval_seconds,
                retention_seconds=settings.jobs.retention_days * 86400,
                request_ids=self.request_ids,
                request_id_window_seconds=window,
                ingest_keep_snapshots=settings.jobs.ingest_keep_snapshots,
            )
            if scheduler
            else None
        )

    async def start(self) -> None:
        """Creates or migrates the job tables, then starts the workers and the scheduler.

        A database that is down at start does not stop the process: the tables are made in
        the background once it answers, and health reports ``job_store`` down until then.
        """
        if self.fleet_listener is not None:
            self.fleet_listener.start(asyncio.get_running_loop())
        try:
            await self._pool.run(self.store.migrate)
        except RetryableError as exc:
            log.error("job store unavailable at start; retrying", extra={"error": exc.message})
            self._migrating = asyncio.create_task(self._migrate_until_done())
        else:
            self._begin()

    def _begin(self) -> None:
        self._migrated = True
        self._gauges = asyncio.create_task(self._refresh_gauges(), name="job-queue-depth")
        self.worker.start()
        if self._scheduler is not None:
            self._scheduler.start()

    async def _migrate_until_done(self) -> None:
        while True:
            await asyncio.sleep(self._settings.jobs.poll_interval_seconds * 5)
            try:
                await self._pool.run(self.store.migrate)
            except RetryableError:
                continue
            self._begin()
            return

    async def _refresh_gauges(self) -> None:
        # In every process, API-only replicas (no workers) included: whichever is scraped
        # reports the shared queue.
        while True:
            with contained("job queue gauge"):
                await refresh_queue_depth(self.store, self._pool)
            await asyncio.sleep(QUEUE_DEPTH_SECONDS)

    async def stop(self, grace: float) -> None:
        """Stops the jobs, then closes the hand-off listener and the job store."""
        await self.stop_jobs(grace)
        await self.close()

    async def stop_jobs(self, grace: float) -> None:
        """Stops the scheduler and the workers (running jobs go back to the queue)."""
        for task in (self._migrating, self._gauges):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._scheduler is not None:
            await self._scheduler.stop()
        await self.worker.stop(grace)
        await asyncio.to_thread(self._job_pool.close)

    async def close(self) -> None:
        """Closes the hand-off listener and the job store: after ingest drained.

        Ingest hands its last batches over through both while it drains; a listener closed
        earlier left each of those hand-offs waiting for the safety poll.
        """
        if self.fleet_listener is not None:
            await asyncio.to_thread(self.fleet_listener.close)
        await self._pool.run(self.store.close)

    async def check(self) -> None:
        """Health: raises Unavailable if the job store does not answer or has no tables yet."""
        await self._pool.run(self.store.check)
        if not self._migrated:
            raise Unavailable("the job store's tables are not created yet")

    async def _check_sql(self, spec: SqlJobSpec) -> None:
        engine = engine_for(self.sql_engines, spec.engine)
        await engine.check_statement(spec.statement, default_namespace=spec.default_namespace)
