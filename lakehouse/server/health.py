"""Background checks of the backing services, feeding gRPC health and /readyz.

The checks are also the probes of the circuit breakers (``lakehouse.adapters.resilience``):
they bypass them, and a passing check closes its dependency's breaker at once, so calls
resume within one check interval of a recovery.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from grpc_health.v1 import health, health_pb2

from lakehouse.core.survival import contained, tamed
from lakehouse.server import metrics

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The health service name for liveness probes (Kubernetes' ``grpc: {service: liveness}``).
#: SERVING while the process lives and NOT_SERVING only once shutdown begins: it follows no
#: dependency, since a liveness probe failing during a PostgreSQL or S3 outage would restart
#: every replica and fix nothing. Answering at all proves the event loop runs. (The kubelet
#: stops liveness probes of a pod being deleted, so the shutdown status costs no restart.)
LIVENESS_SERVICE = "liveness"


class Breaker(Protocol):
    """What a check needs of its dependency's circuit breaker (``adapters.resilience``)."""

    def probe_succeeded(self) -> None:
        """Closes the breaker: the dependency answered its health check."""


@dataclass(frozen=True)
class Dependency:
    """A backing service, its check (raises when the service is unusable) and its breaker."""

    name: str
    check: Callable[[], Awaitable[None]]
    breaker: Breaker | None = None


@dataclass(frozen=True)
class Readiness:
    """The latest check results, as /readyz reports them."""

    ready: bool
    checks: dict[str, str]
    checked_at: dt.datetime


class HealthMonitor:
    """Checks every dependency periodically and sets gRPC health for "" and each service.

    It also publishes ``LIVENESS_SERVICE``, which the checks leave alone.
    """

    def __init__(
        self,
        dependencies: Sequence[Dependency],
        services: Sequence[str],
        *,
        interval_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self._dependencies = list(dependencies)
        self._services = ["", *services]
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._task: asyncio.Task[None] | None = None
        # The check under way per dependency: a hung one is not started again on top of it.
        self._running: dict[str, asyncio.Future[None]] = {}
        self._shutting_down = False
        self._liveness_published = False
        self.readiness = Readiness(False, {d.name: "unknown" for d in dependencies}, _now())

    async def check_once(self) -> Readiness:
        """Runs every check concurrently and publishes the result.

        The first call also reports ``LIVENESS_SERVICE`` SERVING (servers call it before
        their port opens, so the name exists from the first probe on).
        """
        if not self._liveness_published:
            self._liveness_published = True
            await self.servicer.set(LIVENESS_SERVICE, SERVING)
        results = await asyncio.gather(*(self._check(d) for d in self._dependencies))
        checks = dict(zip((d.name for d in self._dependencies), results, strict=True))
        ready = all(v == "ok" for v in checks.values()) and not self._shutting_down
        if ready != self.readiness.ready:
            log.log(
                logging.INFO if ready else logging.WARNING,
                "readiness changed",
                extra={"ready": ready, "checks": checks},
            )
        self.readiness = Readiness(ready, checks, _now())
        status = SERVING if ready else NOT_SERVING
        for service in self._services:
            await self.servicer.set(service, status)
        return self.readiness

    async def _check(self, dep: Dependency) -> str:
        started = time.perf_counter()
        running = self._running.get(dep.name)
        if running is not None and not running.done():
            # A check that timed out still holds a thread (blocking clients cannot be
            # interrupted); starting another every interval would pile them up.
            return self._record(dep, started, "error: the previous check has not ended yet")
        try:
            # Its own task: tamed, or a SystemExit from a client library stops the event loop.
            running = self._running[dep.name] = asyncio.ensure_future(tamed(dep.check))
            running.add_done_callback(_retrieve)  # a late failure is not "never retrieved"
            await asyncio.wait_for(asyncio.shield(running), self._timeout)
            outcome = "ok"
            if dep.breaker is not None:
                dep.breaker.probe_succeeded()
        except TimeoutError:
            outcome = f"error: no answer within {self._timeout:g}s"
        except Exception as exc:
            outcome = f"error: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
        return self._record(dep, started, outcome)

    @staticmethod
    def _record(dep: Dependency, started: float, outcome: str) -> str:
        metrics.DEPENDENCY_CHECK_SECONDS.labels(dep.name).observe(time.perf_counter() - started)
        metrics.DEPENDENCY_UP.labels(dep.name).set(1 if outcome == "ok" else 0)
        return outcome

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            with contained("health check"):
                await self.check_once()

    def start(self) -> None:
        """Starts the periodic checks (after a first ``check_once``)."""
        self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def enter_graceful_shutdown(self) -> None:
        """Reports NOT_SERVING everywhere from now on and stops checking."""
        self._shutting_down = True
        if self._task is not None:
            self._task.cancel()
        for running in self._running.values():
            running.cancel()
        self.readiness = Readiness(False, self.readiness.checks, _now())
        await self.servicer.enter_graceful_shutdown()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
