"""Builds, starts and gracefully stops the lakehouse process: gRPC plus the sidecar HTTP."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from importlib import metadata

import grpc
import pyarrow as pa
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.object_store import object_store_for
from lakehouse.adapters.resilience import CATALOG, JOB_STORE, OBJECT_STORE, Resilience
from lakehouse.adapters.signing_key_store import shared_signing_key
from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.core.commit_conflicts import ConflictLog
from lakehouse.core.commit_notifier import CommitNotifier
from lakehouse.core.ingest import Ingest
from lakehouse.core.ingest_requests import IngestRequests
from lakehouse.core.job_cancellation import JobCancellation
from lakehouse.core.read_sessions import ReadSession, ReadSessions, SessionSigner
from lakehouse.core.reads import Reads
from lakehouse.core.refs import Refs
from lakehouse.core.row_changes import RowChanges
from lakehouse.core.table_health import TableHealthCheck
from lakehouse.core.tables import Tables
from lakehouse.core.watch import TableWatch
from lakehouse.metrics import TableGauges
from lakehouse.server import metrics
from lakehouse.server.auth import AuthInterceptor
from lakehouse.server.auth_keys import AuthKeys
from lakehouse.server.flight.commands import CommandRouter
from lakehouse.server.flight.server import FlightBounds, FlightTls, LakehouseFlightServer
from lakehouse.server.flight.sessions import ReadSessionSource
from lakehouse.server.flight.sources import ReadRowsSource
from lakehouse.server.flight.tickets import TicketSigner
from lakehouse.server.health import Dependency, HealthMonitor
from lakehouse.server.http import build_http_app
from lakehouse.server.interceptors import (
    InterceptorChain,
    MethodInterceptor,
    ObservabilityInterceptor,
    RequestDecodingInterceptor,
)
from lakehouse.server.job_runtime import JobRuntime
from lakehouse.server.limits import CallDeadlines, CallSlots, server_options
from lakehouse.server.ports import FLIGHT_PORT, GRPC_PORT, HTTP_PORT, binding, check_free
from lakehouse.server.rate_limit import RateLimiter, RateLimitInterceptor
from lakehouse.server.reflection import enable_reflection
from lakehouse.server.signing_key import initial_signing_key, load_shared_key
from lakehouse.server.tls import ServerTls, load_ca_bundle, load_key_pair
from lakehouse.server.tracing import configure_tracing, tracing_enabled
from lakehouse.server.wrapped_handlers import WrappingRegistrar
from lakehouse.services.ingest_service import IngestServicer
from lakehouse.services.job_service import JobServicer
from lakehouse.services.table_service import TableServicer
from lakehouse.v1 import (
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    table_service_pb2,
    table_service_pb2_grpc,
)

log = logging.getLogger(__name__)
#: How long shutdown turns new calls away before the transport stops (see ``stop``): long
#: enough for clients in a loop of calls to get their answer and go elsewhere.
REFUSE_BEFORE_STOP_SECONDS = 0.2


def _version() -> str:
    try:
        return metadata.version("lakehouse")
    except metadata.PackageNotFoundError:
        return "unknown"


class LakehouseServer:
    """One lakehouse process: gRPC services, health, reflection and the sidecar HTTP port.

    Attributes:
        grpc_port: The bound gRPC port (known after ``start``; useful with port 0).
        http_port: The bound sidecar HTTP port (known after ``start``).
        flight_port: The bound Arrow Flight port (known after ``start``; 0 without Flight).
        tls: Certificates of both ports; ``tls.request_reload()`` re-reads them (SIGHUP).
        call_slots: The bound on calls handled at once, shared by the gRPC and Flight ports.
        rate_limiter: The per-caller rate limit of both ports; None when it is off.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.grpc_port = 0
        self.http_port = 0
        self.flight_port = 0
        self._flight: LakehouseFlightServer | None = None
        self._pool = BlockingPool(settings.blocking_threads)
        # One set of circuit breakers for the process: every adapter reaching a dependency
        # reports to, and is stopped by, the same breaker.
        self.resilience = Resilience(settings.resilience)
        self.catalog = IcebergCatalog(settings, self._pool, self.resilience)
        self.store = object_store_for(settings.warehouse, settings.s3, self.resilience)
        self.tables = Tables(self.catalog, self.store, settings.quotas)
        self.reads = Reads(self.catalog)
        self.job_runtime = JobRuntime(
            settings,
            self.catalog,
            self.store,
            self._pool,
            resilience=self.resilience,
            slots=settings.jobs.workers,
            scheduler=True,
            ingest=True,
        )
        # One key signs read-session names and Flight tickets (lakehouse.server.signing_key).
        self.signing_key = initial_signing_key(settings, shared_store=self.job_runtime.store.shared)
        self._key_loading: asyncio.Task[None] | None = None
        self.read_sessions = ReadSessions(
            self.catalog,
            SessionSigner(self.signing_key),
            ttl_seconds=settings.read_sessions.ttl_seconds,
            max_streams=settings.read_sessions.max_streams,
        )
        self.conflicts = ConflictLog()
        self.notifier = CommitNotifier()
        self.table_gauges = TableGauges(settings.table_metrics_max_tables)
        self.ingest = Ingest(
            self.catalog,
            settings.ingest,
            request_ids=self.job_runtime.request_ids,
            conflicts=self.conflicts,
            gauges=self.table_gauges,
            notifier=self.notifier,
            fleet=self.job_runtime.ingest_fleet,
        )
        self.row_changes = RowChanges(
            self.catalog, settings.ingest, request_ids=self.job_runtime.request_ids
        )
        served = [
            table_service_pb2.DESCRIPTOR.services_by_name["TableService"].full_name,
            ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
            job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
        ]
        self.monitor = HealthMonitor(
            [
                Dependency("catalog", self.catalog.check, self.resilience.breaker(CATALOG)),
                Dependency("object_store", self.store.check, self.resilience.breaker(OBJECT_STORE)),
                Dependency("job_store", self.job_runtime.check, self.resilience.breaker(JOB_STORE)),
            ],
            served,
            interval_seconds=settings.health_check_interval_seconds,
            timeout_seconds=settings.health_check_timeout_seconds,
        )
        self._served = served
        self._grpc: grpc.aio.Server | None = None
        self._observability: ObservabilityInterceptor | None = None
        self._http: web.AppRunner | None = None
        self.tls = ServerTls(settings.tls)
        self._auth_keys = AuthKeys(settings.auth)  # a bad key file stops the start here
        self.authenticator = self._auth_keys.authenticator
        # One bound on calls at once and one rate limit per caller, whichever port is called.
        self.call_slots = CallSlots(settings.max_concurrent_calls)
        self.rate_limiter = (
            RateLimiter(settings.quotas, by_peer=not self.authenticator.enabled)
            if settings.quotas.calls_per_second > 0
            else None
        )
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Binds both ports, runs the first health check and starts serving.

        Raises:
            OSError: A port could not be bound, or a TLS file is missing or invalid
                (``CertificateError``).
        """
        configure_tracing(self.settings.tracing)
        metrics.BUILD_INFO.labels(_version()).set(1)
        spans = tracing_enabled(self.settings.tracing)
        self._observability = ObservabilityInterceptor(
            CallDeadlines.from_settings(self.settings),
            slots=self.call_slots,
            span_trace_ids=spans,
            log_probes=self.settings.access_log_probes,
        )
        layers: list[MethodInterceptor] = [
            self._observability,
            # Inside observability: refusals are metered, logged and mapped like any error.
            AuthInterceptor(self.authenticator, self.settings.auth, jobs=self.job_runtime.jobs),
        ]
        if self.rate_limiter is not None:
            # Inside auth: buckets are per authenticated principal (per client address when
            # authentication is off); a caller refused by auth never takes a token.
            layers.append(RateLimitInterceptor(self.rate_limiter))
        # Innermost: bytes that do not parse are answered only to a caller let in.
        layers.append(RequestDecodingInterceptor())
        # Our layers wrap each method's handler once, as its service is registered (see
        # wrapped_handlers): no gRPC interceptor pipeline per call. OpenTelemetry's interceptor
        # runs only when spans are exported: with the no-op tracer it would only carry the
        # caller's trace id, which the observability layer reads from ``traceparent`` itself.
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if spans:
            interceptors.append(aio_server_interceptor())  # type: ignore[no-untyped-call]
        grpc_server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                *server_options(self.settings),  # message, stream, connection limits
                ("grpc.so_reuseport", 0),
            ],
        )
        server = WrappingRegistrar(grpc_server, InterceptorChain(layers)).server
        table_servicer = TableServicer(
            self.tables,
            self.reads,
            self.row_changes,
            Refs(self.catalog),
            TableHealthCheck(
                self.catalog, self.job_runtime.jobs, self.conflicts, self.table_gauges
            ),
            TableWatch(
                self.catalog, self.notifier, self.reads, max_watchers=self.settings.max_watchers
            ),
            self.read_sessions,
            read_message_bytes=self.settings.read_message_bytes,
            stream_endpoints=self._stream_endpoints,
        )
        table_service_pb2_grpc.add_TableServiceServicer_to_server(table_servicer, server)
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(IngestRequests(self.ingest, self.tables), self.ingest), server
        )
        job_service_pb2_grpc.add_JobServiceServicer_to_server(
            JobServicer(
                self.job_runtime.jobs,
                JobCancellation(self.job_runtime.jobs, self.job_runtime.worker),
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.monitor.servicer, server)
        enable_reflection(
            [*self._served, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server
        )
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self.tls.load()  # before binding: bad certificate files stop the start-up here
        check_free(self.settings.grpc_host, self.settings.grpc_port, **GRPC_PORT)
        check_free(self.settings.http_host, self.settings.http_port, **HTTP_PORT)
        credentials = self.tls.grpc_credentials
        try:
            if credentials is None:
                self.grpc_port = grpc_server.add_insecure_port(address)
            else:
                self.grpc_port = grpc_server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc's "Failed to bind", whatever the cause
            raise OSError(f"cannot bind gRPC address {address}") from exc
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC address {address}")
        runner = web.AppRunner(
            build_http_app(self.monitor, authenticator=self.authenticator, auth=self.settings.auth),
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
        self._flight = self._start_flight()
        self._grpc = grpc_server
        await self.job_runtime.start()
        self._key_loading = await load_shared_key(
            self.signing_key,
            functools.partial(shared_signing_key, self.job_runtime.store),
            self._pool,
            retry_seconds=self.settings.jobs.poll_interval_seconds * 5,
        )
        await self.monitor.check_once()
        self.monitor.start()
        self.tls.start()
        self._auth_keys.start()
        await grpc_server.start()
        log.info(
            "serving",
            extra={
                "grpc_port": self.grpc_port,
                "http_port": self.http_port,
                "flight_port": self.flight_port,
                "catalog": self.settings.catalog.type,
                "warehouse": self.settings.warehouse,
                "ready": self.monitor.readiness.ready,
                "grpc_tls": self.tls.mode,
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING first, a short drain, then finish in-flight calls.

        Args:
            grace: Seconds in-flight calls may still run; defaults to the configured grace.
        """
        if self._stopped.is_set():
            return
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.monitor.enter_graceful_shutdown()
        log.info("shutting down", extra={"grace_seconds": grace})
        if self.settings.shutdown_drain_seconds and self._grpc is not None:
            await asyncio.sleep(self.settings.shutdown_drain_seconds)
        if self._observability is not None and self._grpc is not None:
            # Turn new calls away (UNAVAILABLE, SHUTTING_DOWN) a moment before the transport
            # stops: its stop cancels calls not yet handed to a handler, and CANCELLED is an
            # answer clients do not retry elsewhere.
            self._observability.refuse_new_calls()
            await asyncio.sleep(REFUSE_BEFORE_STOP_SECONDS)
        # One grace period for everything: running jobs are asked to stop (and go back to the
        # queue) while in-flight calls finish, and ingest gets what is left of it.
        deadline = asyncio.get_running_loop().time() + grace
        stopping_jobs = asyncio.create_task(self.job_runtime.stop_jobs(grace))
        stopping: list[Awaitable[None]] = []
        if self._grpc is not None:
            stopping.append(self._grpc.stop(grace))
        if self._flight is not None:
            stopping.append(self._flight.stop(grace))
        await asyncio.gather(*stopping)
        remaining = deadline - asyncio.get_running_loop().time()
        await self.ingest.close(timeout=max(remaining, 1.0))
        await stopping_jobs
        # Only now: ingest's drain hands its last batches over through both.
        await self.job_runtime.close()
        if self._key_loading is not None:
            self._key_loading.cancel()
        if self._http is not None:
            await self._http.cleanup()
        await self.tls.stop()
        await self._auth_keys.stop()
        await self.store.close()
        await self.catalog.close()
        self._pool.close()
        self._stopped.set()
        log.info("stopped")

    @property
    def abandoned_calls(self) -> bool:
        """Whether calls of stalled Flight clients were still open when ``stop`` returned.

        Their threads wait on the clients for good, and pyarrow's server waits for them when
        it is destroyed: the process must then end without the interpreter's clean-up.
        """
        return self._flight is not None and self._flight.abandoned

    def _stream_endpoints(self, session: ReadSession) -> list[tuple[bytes, list[str]]]:
        """The Flight tickets and locations of a session's streams; none without Flight."""
        if self._flight is None:
            return []
        return self._flight.session_endpoints(session.claims)

    def _start_flight(self) -> LakehouseFlightServer | None:
        """Binds the Flight port, which serves at once; None when no port is configured.

        Raises:
            OSError: The port could not be bound.
        """
        settings = self.settings
        if settings.flight_port is None:
            return None
        check_free(settings.flight_host, settings.flight_port, **FLIGHT_PORT)
        tls = None
        files = settings.tls
        if files.cert_file is not None and files.key_file is not None:
            # Read once: pyarrow cannot swap a running Flight server's certificate, so a
            # rotation reaches the Flight port at the next restart (docs/flight.md).
            pair = load_key_pair(files.cert_file, files.key_file)
            client_ca = None
            if files.require_client_cert and files.client_ca_file is not None:
                client_ca = load_ca_bundle(files.client_ca_file)
            tls = FlightTls(pair.cert_chain, pair.private_key, client_ca)
        signer = TicketSigner(self.signing_key, settings.flight_ticket_ttl_seconds)
        try:
            server = LakehouseFlightServer(
                settings.flight_host,
                settings.flight_port,
                loop=asyncio.get_running_loop(),
                source=CommandRouter(
                    ReadRowsSource(self.reads, self.read_sessions),
                    ReadSessionSource(self.read_sessions),
                ),
                requests=IngestRequests(self.ingest, self.tables),
                signer=signer,
                authenticator=self.authenticator,
                bounds=FlightBounds(
                    settings.request_timeout_seconds,
                    self.call_slots,
                    self.rate_limiter,
                    stream_seconds=settings.stream_timeout_seconds,
                ),
                tls=tls,
                advertised_host=settings.flight_advertised_host,
            )
        except pa.ArrowException as exc:  # pyarrow's bind failure, whatever the cause
            raise OSError(
                f"cannot bind the Arrow Flight address {settings.flight_host}:"
                f"{settings.flight_port}: {exc}"
            ) from exc
        self.flight_port = server.port
        return server

    async def wait_stopped(self) -> None:
        """Returns once ``stop`` has finished."""
        await self._stopped.wait()

    def request_reload(self) -> None:
        """Re-reads the TLS files and the authentication key files soon (SIGHUP)."""
        self.tls.request_reload()
        self._auth_keys.request_reload()


def bound_port(runner: web.AppRunner, requested: int) -> int:
    """The port an aiohttp runner bound (the requested one unless it was 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            return int(sock.getsockname()[1])
    return requested
