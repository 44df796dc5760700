"""``lakehouse worker`` and the serving runtime: what they open beside their jobs."""

from __future__ import annotations

from pydantic import SecretStr

from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.server.job_runtime import JobRuntime
from lakehouse.server.worker_app import WorkerProcess


async def test_a_worker_opens_no_ingest_hand_off_listener(
    local_settings: Settings, postgres_jobs_url: str
) -> None:
    # A PostgreSQL job store: the server takes part in the ingest hand-offs, a worker (which
    # never ingests) does not hold a listening connection for them.
    jobs = local_settings.jobs.model_copy(update={"database_uri": SecretStr(postgres_jobs_url)})
    settings = local_settings.model_copy(update={"jobs": jobs})
    worker = WorkerProcess(settings)
    assert worker.job_runtime.fleet_listener is None
    assert worker.job_runtime.ingest_fleet is None
    pool = BlockingPool(1)
    try:
        serving = JobRuntime(
            settings, worker.catalog, worker.store, pool, slots=0, scheduler=False, ingest=True
        )
        assert serving.fleet_listener is not None and serving.ingest_fleet is not None
        serving.store.close()
    finally:
        pool.close()
        worker.job_runtime.store.close()


async def test_with_notifications_off_the_server_does_not_listen(
    local_settings: Settings, postgres_jobs_url: str
) -> None:
    jobs = local_settings.jobs.model_copy(update={"database_uri": SecretStr(postgres_jobs_url)})
    ingest = local_settings.ingest.model_copy(update={"handoff_notify": False})
    settings = local_settings.model_copy(update={"jobs": jobs, "ingest": ingest})
    worker = WorkerProcess(settings)  # its catalog and object store, for the runtime
    pool = BlockingPool(1)
    try:
        serving = JobRuntime(
            settings, worker.catalog, worker.store, pool, slots=0, scheduler=False, ingest=True
        )
        # Hand-offs across replicas, polling only.
        assert serving.ingest_fleet is not None and serving.fleet_listener is None
        serving.store.close()
    finally:
        pool.close()
        worker.job_runtime.store.close()
