"""``lakehouse worker``: a process that only runs jobs (a separate systemd unit or Deployment).

It serves no gRPC; its sidecar HTTP port serves ``/metrics``, ``/healthz`` and ``/readyz``
like the server's, with the same TLS and the same credentials when those are configured, so
it is scraped and probed the same way.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.object_store import object_store_for
from lakehouse.adapters.resilience import CATALOG, JOB_STORE, OBJECT_STORE, Resilience
from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.server.app import bound_port
from lakehouse.server.auth_keys import AuthKeys
from lakehouse.server.health import Dependency, HealthMonitor
from lakehouse.server.http import build_http_app
from lakehouse.server.job_runtime import JobRuntime
from lakehouse.server.ports import HTTP_PORT, binding
from lakehouse.server.tls import ServerTls

log = logging.getLogger(__name__)


class WorkerProcess:
    """Job workers plus the sidecar HTTP port.

    Attributes:
        http_port: The bound sidecar HTTP port (known after ``start``).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http_port = 0
        self._pool = BlockingPool(settings.blocking_threads)
        # One set of circuit breakers for the process: every adapter reaching a dependency
        # reports to, and is stopped by, the same breaker.
        self.resilience = Resilience(settings.resilience)
        self.catalog = IcebergCatalog(settings, self._pool, self.resilience)
        self.store = object_store_for(settings.warehouse, settings.s3, self.resilience)
        self.job_runtime = JobRuntime(
            settings,
            self.catalog,
            self.store,
            self._pool,
            resilience=self.resilience,
            slots=settings.jobs.workers,
            scheduler=False,
        )
        self.monitor = HealthMonitor(
            [
                Dependency("catalog", self.catalog.check, self.resilience.breaker(CATALOG)),
                Dependency("object_store", self.store.check, self.resilience.breaker(OBJECT_STORE)),
                Dependency("job_store", self.job_runtime.check, self.resilience.breaker(JOB_STORE)),
            ],
            [],
            interval_seconds=settings.health_check_interval_seconds,
            timeout_seconds=settings.health_check_timeout_seconds,
        )
        self._http: web.AppRunner | None = None
        self.tls = ServerTls(settings.tls)
        self._auth_keys = AuthKeys(settings.auth)  # a bad key file stops the start here
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Binds the sidecar port and starts claiming jobs."""
        self.tls.load()  # before binding: bad certificate files stop the start-up here
        runner = web.AppRunner(
            build_http_app(
                self.monitor, authenticator=self._auth_keys.authenticator, auth=self.settings.auth
            ),
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.settings.http_host,
            self.settings.http_port,
            ssl_context=self.tls.http_ssl_context,
        )
        with binding(self.settings.http_host, self.settings.http_port, **HTTP_PORT):
            await site.start()
        self._http = runner
        self.http_port = bound_port(runner, self.settings.http_port)
        await self.job_runtime.start()
        await self.monitor.check_once()
        self.monitor.start()
        self.tls.start()
        self._auth_keys.start()
        log.info(
            "worker started",
            extra={
                "http_port": self.http_port,
                "worker": self.job_runtime.worker.name,
                "slots": self.settings.jobs.workers,
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stops claiming; running jobs get ``grace`` seconds to stop, then go back to the queue."""
        if self._stopped.is_set():
            return
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.monitor.enter_graceful_shutdown()
        log.info("shutting down", extra={"grace_seconds": grace})
        await self.job_runtime.stop(grace)
        if self._http is not None:
            await self._http.cleanup()
        await self.tls.stop()
        await self._auth_keys.stop()
        await self.store.close()
        await self.catalog.close()
        self._pool.close()
        self._stopped.set()
        log.info("stopped")

    def request_reload(self) -> None:
        """Re-reads the TLS files and the authentication key files soon (SIGHUP)."""
        self.tls.request_reload()
        self._auth_keys.request_reload()
