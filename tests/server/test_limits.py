"""Server-side limits: a deadline for calls without one, stream and metadata limits.

Two levels: the real server (a WatchJob on a job no worker will run, a WriteRows waiting for a
slow group commit, an AppendRows stream the client keeps open) and a bare gRPC server with the
same interceptors around handlers of all four kinds that never finish, including one whose
client stops reading (the limit must also cut a send blocked by HTTP/2 flow control).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from fixtures.grpc_errors import rpc_error_details
from fixtures.net import LOOPBACK
from lakehouse.client.arrow import write_rows_request
from lakehouse.config import Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.server.interceptors import InterceptorChain, ObservabilityInterceptor
from lakehouse.server.limits import MAX_METADATA_BYTES, CallDeadlines, server_options
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import (
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import table_service_pb2 as tpb

LIMIT = 1.0
#: How late a cut may come on a loaded test machine.
SLACK = 4.0
LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    """A started server on ``settings`` and a channel to it."""
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 10)
            yield channel
    finally:
        await server.stop(1.0)


def assert_server_deadline(err: grpc.aio.AioRpcError, limit: float) -> None:
    details = rpc_error_details(err)
    assert details.code == grpc.StatusCode.DEADLINE_EXCEEDED, details.message
    assert details.reason == "SERVER_DEADLINE", details
    assert details.metadata["limit_seconds"] == f"{limit:g}"
    assert "limit" in details.message


async def queued_job(channel: grpc.aio.Channel) -> str:
    """A job that stays QUEUED: the server runs no workers."""
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    spec = job_pb2.JobSpec(sql=job_pb2.SqlJobSpec(statement="SELECT 1"))
    created = await jobs.CreateJob(jpb.CreateJobRequest(spec=spec))
    assert created.job.state == job_pb2.JOB_STATE_QUEUED
    return created.job.id


async def open_watches(channel: grpc.aio.Channel, count: int) -> tuple[Any, str, list[Any]]:
    """``count`` WatchJob streams on a job that stays QUEUED, each open on the server."""
    job_id = await queued_job(channel)
    jobs = job_service_pb2_grpc.JobServiceStub(channel)
    watches = [jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id)) for _ in range(count)]
    for watch in watches:
        await watch.read()  # its first message: the stream runs on the server
    return jobs, job_id, watches


@pytest.fixture
def no_workers(local_settings: Settings) -> Settings:
    return local_settings.model_copy(
        update={
            "stream_timeout_seconds": LIMIT,
            "jobs": local_settings.jobs.model_copy(update={"workers": 0}),
        }
    )


async def test_a_stream_without_a_deadline_ends_at_the_stream_limit(no_workers: Settings) -> None:
    async with serving(no_workers) as channel:
        job_id = await queued_job(channel)
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        started = time.monotonic()
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for update in jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id)):
                received.append(update.job.state)
        elapsed = time.monotonic() - started
    assert received == [job_pb2.JOB_STATE_QUEUED]
    assert_server_deadline(exc.value, LIMIT)
    assert LIMIT * 0.9 <= elapsed < LIMIT + SLACK


async def test_a_later_client_deadline_is_cut_at_the_limit_too(no_workers: Settings) -> None:
    async with serving(no_workers) as channel:
        job_id = await queued_job(channel)
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id), timeout=60):
                pass
        elapsed = time.monotonic() - started
    assert_server_deadline(exc.value, LIMIT)
    assert elapsed < LIMIT + SLACK


async def test_a_sooner_client_deadline_is_the_clients_own(no_workers: Settings) -> None:
    async with serving(no_workers) as channel:
        job_id = await queued_job(channel)
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in jobs.WatchJob(jpb.WatchJobRequest(job_id=job_id), timeout=0.3):
                pass
        elapsed = time.monotonic() - started
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details.reason is None  # gRPC's own deadline, not the server's limit
    assert elapsed < LIMIT + SLACK


async def test_a_unary_call_without_a_deadline_ends_at_the_request_limit(
    local_settings: Settings,
) -> None:
    # The group commit waits 5 s for more rows, so WriteRows waits that long to answer.
    settings = local_settings.model_copy(
        update={
            "request_timeout_seconds": 0.5,
            "ingest": local_settings.ingest.model_copy(update={"commit_delay_ms": 5000.0}),
        }
    )
    async with serving(settings) as channel:
        await make_table(channel)
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await ingest.WriteRows(
                ipb.WriteRowsRequest(namespace="lim", table="t", json_rows=json_rows(1))
            )
        elapsed = time.monotonic() - started
    assert_server_deadline(exc.value, 0.5)
    assert 0.45 <= elapsed < 0.5 + SLACK


async def test_an_open_append_stream_ends_at_the_stream_limit(local_settings: Settings) -> None:
    settings = local_settings.model_copy(update={"stream_timeout_seconds": LIMIT})
    async with serving(settings) as channel:
        await make_table(channel)
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        call = ingest.AppendRows()
        await call.write(ipb.AppendRowsRequest(namespace="lim", table="t", json_rows=json_rows(2)))
        ack = await call.read()  # written and acknowledged; the client keeps the stream open
        assert ack.result.rows_written == 2
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call.read()
        elapsed = time.monotonic() - started
    assert_server_deadline(exc.value, LIMIT)
    assert elapsed < LIMIT + SLACK


async def test_malformed_request_bytes_are_invalid_argument(local_settings: Settings) -> None:
    async with serving(local_settings) as channel:
        unary = channel.unary_unary("/lakehouse.v1.TableService/GetNamespace")
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await unary(b"\xca\x18")
        details = rpc_error_details(exc.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.reason == "MALFORMED_REQUEST"
        assert "lakehouse.v1.GetNamespaceRequest" in details.message

        # A request stream: the first message parses, the second does not.
        good = ipb.AppendRowsRequest(namespace="nope", table="t").SerializeToString()
        stream = channel.stream_stream("/lakehouse.v1.IngestService/AppendRows")(
            iter([good, b"\x0a\xff\xff"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in stream:
                pass
        details = rpc_error_details(exc.value)
        assert details.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
        if details.code == grpc.StatusCode.INTERNAL:
            # grpcio's asyncio client may report its own failed write instead (grpc/grpc#36066)
            assert details.message == "Internal error from Core"
        else:
            assert details.reason == "MALFORMED_REQUEST"


async def test_metadata_beyond_the_limit_is_refused(local_settings: Settings) -> None:
    async with serving(local_settings) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        # 12 KiB: above gRPC's default soft limit (8 KiB, where it starts refusing some calls
        # at random), below the server's.
        for _ in range(20):
            await tables.ListNamespaces(
                tpb.ListNamespacesRequest(), metadata=(("x-pad", "a" * 12 * 1024),)
            )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await tables.ListNamespaces(
                tpb.ListNamespacesRequest(), metadata=(("x-pad", "a" * 2 * MAX_METADATA_BYTES),)
            )
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_streams_beyond_the_per_connection_limit_wait(no_workers: Settings) -> None:
    settings = no_workers.model_copy(
        update={"max_concurrent_streams": 2, "stream_timeout_seconds": 30.0}
    )
    async with serving(settings) as channel:
        jobs, job_id, watches = await open_watches(channel, 2)  # both open on the server
        # A third call on the same connection waits for a free stream...
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await jobs.GetJob(jpb.GetJobRequest(job_id=job_id), timeout=0.5)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # ...and runs as soon as one ends.
        watches[0].cancel()
        got = await jobs.GetJob(jpb.GetJobRequest(job_id=job_id), timeout=10)
        assert got.job.id == job_id
        watches[1].cancel()


#: More calls at once on one channel than a connection's stream limit (100) lets run.
MANY_CALLS = 150


async def test_many_concurrent_calls_on_one_channel_are_all_served(
    local_settings: Settings,
) -> None:
    # gRPC core's overload protection refused streams as UNAVAILABLE well below the limit
    # (half of these). Now the ones past a connection's 100 streams wait on the client.
    async with serving(local_settings) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="many"))
        schema = schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG, required=False)])
        await tables.CreateTable(tpb.CreateTableRequest(namespace="many", table="t", schema=schema))
        rows = 10

        async def write(n: int) -> Any:
            batch = pa.table({"id": pa.array(range(n * rows, (n + 1) * rows), pa.int64())})
            return await ingest.WriteRows(write_rows_request("many", "t", batch), timeout=120)

        results = await asyncio.gather(*(write(n) for n in range(MANY_CALLS)))
        assert len(results) == MANY_CALLS  # any refusal would have raised
        table = await tables.GetTable(tpb.GetTableRequest(namespace="many", table="t"))
        assert table.table.stats.row_count == MANY_CALLS * rows


async def test_calls_beyond_the_process_bound_are_resource_exhausted(
    no_workers: Settings,
) -> None:
    settings = no_workers.model_copy(
        update={"max_concurrent_calls": 2, "stream_timeout_seconds": 30.0}
    )
    async with serving(settings) as channel:
        # Both streams are open on the server: the bound is reached.
        jobs, job_id, watches = await open_watches(channel, 2)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await jobs.GetJob(jpb.GetJobRequest(job_id=job_id), timeout=10)
        details = rpc_error_details(exc.value)
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED, details.message
        assert details.reason == "SERVER_OVERLOADED"
        assert details.metadata["limit"] == "2"
        assert details.retry_delay_seconds is not None and details.retry_delay_seconds > 0
        # Probes get through whatever the load.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # A call ending frees its place.
        watches[0].cancel()
        got = await jobs.GetJob(jpb.GetJobRequest(job_id=job_id), timeout=10)
        assert got.job.id == job_id
        watches[1].cancel()


async def test_a_message_beyond_the_size_limit_is_refused(local_settings: Settings) -> None:
    mib = 1024 * 1024
    settings = local_settings.model_copy(update={"max_message_bytes": mib})
    async with serving(settings) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        big = tpb.CreateNamespaceRequest(name="big", properties={"blob": "x" * (2 * mib)})
        assert big.ByteSize() > 2 * mib
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await tables.CreateNamespace(big, timeout=30)
        # gRPC refuses it before any handler runs, with its own message.
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(mib) in (exc.value.details() or "")
        # The server is still up, on the same connection, and the refused call did nothing.
        listed = await tables.ListNamespaces(tpb.ListNamespacesRequest(), timeout=30)
        assert "big" not in [ns.name for ns in listed.namespaces]
        # Just under the limit still goes through (property values are 64 KiB at most).
        blobs = {f"blob{i}": "x" * 60_000 for i in range(17)}
        fits = tpb.CreateNamespaceRequest(name="fits", properties=blobs)
        assert 0.9 * mib < fits.ByteSize() < mib
        created = await tables.CreateNamespace(fits, timeout=30)
        assert created.namespace.name == "fits"


def test_server_options_carry_the_limits(local_settings: Settings) -> None:
    options = dict(server_options(local_settings))
    assert options["grpc.max_receive_message_length"] == local_settings.max_message_bytes
    assert options["grpc.max_send_message_length"] == local_settings.max_message_bytes
    assert local_settings.max_message_bytes == 64 * 1024 * 1024
    assert options["grpc.max_concurrent_streams"] == 100
    assert options["grpc.max_metadata_size"] == MAX_METADATA_BYTES
    # Streams count while open (as the client counts them), not until Python frees the call.
    assert options["grpc.http.overload_protection"] == 0
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 3_600_000
    forever = local_settings.model_copy(update={"max_connection_age_seconds": 0.0})
    assert "grpc.max_connection_age_ms" not in dict(server_options(forever))


def test_budget_leaves_sooner_client_deadlines_to_grpc() -> None:
    deadlines = CallDeadlines(unary_seconds=60, stream_seconds=3600)
    assert deadlines.budget(None, streaming=False) == 60
    assert deadlines.budget(None, streaming=True) == 3600
    assert deadlines.budget(10.0, streaming=False) is None
    assert deadlines.budget(120.0, streaming=False) == 60
    assert deadlines.budget(7200.0, streaming=True) == 3600


# -- all four kinds of handler, on a bare server with the production interceptors ------------

SLOW_UNARY = 0.3
SLOW_STREAM = 0.5


class Forever:
    """Handlers that never finish, recording when each was cancelled."""

    def __init__(self) -> None:
        self.cancelled: dict[str, float] = {}
        self.started = time.monotonic()

    def _mark(self, name: str) -> None:
        self.cancelled[name] = time.monotonic() - self.started

    async def unary(self, request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(3600)
        finally:
            self._mark("unary")
        return b""

    async def client_stream(self, requests: Any, context: Any) -> bytes:
        try:
            async for _ in requests:
                pass
            await asyncio.sleep(3600)
        finally:
            self._mark("client_stream")
        return b""

    async def server_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            while True:  # far more than HTTP/2 flow control lets through to a client not reading
                yield b"x" * 65536
        finally:
            self._mark("server_stream")

    async def bidi(self, requests: Any, context: Any) -> AsyncIterator[bytes]:
        try:
            async for request in requests:
                yield request
        finally:
            self._mark("bidi")


@contextlib.asynccontextmanager
async def bare(handlers: Forever) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(
        interceptors=[
            aio_server_interceptor(),  # type: ignore[no-untyped-call]
            InterceptorChain([ObservabilityInterceptor(CallDeadlines(SLOW_UNARY, SLOW_STREAM))]),
        ]
    )
    methods = {
        "Unary": grpc.unary_unary_rpc_method_handler(handlers.unary),
        "ClientStream": grpc.stream_unary_rpc_method_handler(handlers.client_stream),
        "ServerStream": grpc.unary_stream_rpc_method_handler(handlers.server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(handlers.bidi),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Forever", methods)])
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def test_every_kind_of_call_is_cut_at_its_limit() -> None:
    handlers = Forever()
    async with bare(handlers) as channel:

        async def unary() -> None:
            await channel.unary_unary("/test.Forever/Unary")(b"")

        async def client_stream() -> None:
            await channel.stream_unary("/test.Forever/ClientStream")(iter([b"a", b"b"]))

        async def bidi() -> None:
            call = channel.stream_stream("/test.Forever/Bidi")()
            await call.write(b"ping")
            assert await call.read() == b"ping"
            await call.read()  # the client keeps its side open; the server's limit ends it

        results = await asyncio.gather(unary(), client_stream(), bidi(), return_exceptions=True)
    for result, limit in zip(results, (SLOW_UNARY, SLOW_UNARY, SLOW_STREAM), strict=True):
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert_server_deadline(result, limit)
    for name in ("unary", "client_stream", "bidi"):
        assert handlers.cancelled[name] < SLOW_STREAM + SLACK


async def test_a_stream_to_a_client_that_stopped_reading_is_cut_too() -> None:
    handlers = Forever()
    async with bare(handlers) as channel:
        call = channel.unary_stream("/test.Forever/ServerStream")(b"")
        await call.read()  # then the client stops reading: the server's sends block
        await asyncio.sleep(SLOW_STREAM + 1.0)
        assert "server_stream" in handlers.cancelled  # cut while blocked in a send
        assert handlers.cancelled["server_stream"] < SLOW_STREAM + SLACK
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            while True:
                await call.read()
    assert_server_deadline(exc.value, SLOW_STREAM)


# -- helpers -----------------------------------------------------------------------------------


async def make_table(channel: grpc.aio.Channel) -> None:
    tables = table_service_pb2_grpc.TableServiceStub(channel)
    await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="lim"))
    await tables.CreateTable(
        tpb.CreateTableRequest(
            namespace="lim",
            table="t",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
        )
    )


def json_rows(count: int) -> rows_pb2.JsonRows:
    rows = rows_pb2.JsonRows()
    for i in range(count):
        rows.rows.add().update({"id": i})
    return rows


async def test_calls_arriving_as_the_server_stops_are_turned_away_not_cancelled(
    local_settings: Settings,
) -> None:
    """After the drain, new calls get UNAVAILABLE (SHUTTING_DOWN, with RetryInfo) before the
    transport stops, so clients calling in a loop turn elsewhere instead of having a call
    cancelled by gRPC's stop (CANCELLED, which clients do not retry)."""
    settings = local_settings.model_copy(update={"shutdown_drain_seconds": 0.3})
    server = LakehouseServer(settings)
    await server.start()
    codes: list[grpc.StatusCode] = []
    refusals: list[Any] = []
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        await tables.CreateNamespace(tpb.CreateNamespaceRequest(name="stopping"))

        async def caller() -> None:
            # As a client of several replicas: calls until its first refusal, then leaves.
            while True:
                try:
                    await tables.GetNamespace(tpb.GetNamespaceRequest(name="stopping"))
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())
                    refusals.append(rpc_error_details(exc))
                    return

        callers = [asyncio.ensure_future(caller()) for _ in range(8)]
        await asyncio.sleep(0.1)
        await server.stop(1.0)
        await asyncio.wait_for(asyncio.gather(*callers), 10)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    shutting_down = [r for r in refusals if r.reason == "SHUTTING_DOWN"]
    assert shutting_down, [(r.code, r.reason, r.message) for r in refusals]
    assert all(r.retry_delay_seconds for r in shutting_down)
