"""The Flight port's call bounds: the per-caller rate limit, the bound on calls at once (both
shared with the gRPC port) and the bounded wait on core calls.

Against real servers on 127.0.0.1 and pyarrow's Flight client. The bound and the timeout
need a core call that does not come back: a second Flight server in the same process, wired
to the real server's core, authenticator and shared bounds, whose read source waits on an
event (or forever) before planning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.rpc import error_details_pb2, status_pb2
from server import test_flight
from server.test_flight import ROWS, append_command, create_table, off_loop

from fixtures.grpc_errors import rpc_error_details
from fixtures.net import LOOPBACK
from lakehouse.core.ingest_requests import IngestRequests, QueuedRows
from lakehouse.server.app import LakehouseServer
from lakehouse.server.credentials import Principal
from lakehouse.server.flight.server import FlightBounds, LakehouseFlightServer
from lakehouse.server.flight.sources import FlightStream, ReadPlan
from lakehouse.server.flight.tickets import TicketSigner
from lakehouse.v1 import ingest_service_pb2 as ingest_pb
from lakehouse.v1 import table_service_pb2 as pb
from lakehouse.v1 import table_service_pb2_grpc

#: The Flight tests' server fixture (a server with Flight).
start_server = test_flight.start_server
pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

DESCRIPTOR = flight.FlightDescriptor.for_command(
    pb.ReadRowsRequest(namespace="sales", table="none").SerializeToString()
)
#: The longest a test waits for something it started (a call to arrive, a slot to free).
SETTLE_SECONDS = 10.0


def details(error: flight.FlightError) -> status_pb2.Status:
    """The google.rpc.Status a Flight error carries (its grpc-status-details-bin)."""
    return status_pb2.Status.FromString(error.extra_info)


def retry_delay(status: status_pb2.Status) -> float:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError(f"no RetryInfo in {status}")


class WaitingSource:
    """A read source whose plan waits until ``release`` is set (never, if it is not).

    Attributes:
        waiting: Plans waiting now.
        cancelled: Plans cancelled while waiting.
    """

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0
        self.cancelled = 0

    async def plan(self, principal: Principal, command: bytes) -> ReadPlan:
        self.waiting += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        return ReadPlan(pa.schema([("id", pa.int64())]), [], None)

    async def open(self, principal: Principal, payload: bytes) -> FlightStream:
        raise AssertionError("no ticket is planned")


class EndlessSource:
    """A read source of one stream of 1 MiB batches that never ends (a client that stops
    reading it stalls the server's sends on its window)."""

    SCHEMA = pa.schema([("payload", pa.binary())])

    async def plan(self, principal: Principal, command: bytes) -> ReadPlan:
        return ReadPlan(self.SCHEMA, [b"endless"], None)

    async def open(self, principal: Principal, payload: bytes) -> FlightStream:
        return _Endless()


class _Endless:
    """The stream of :class:`EndlessSource`."""

    schema = EndlessSource.SCHEMA

    def batches(self) -> Iterator[pa.RecordBatch]:
        batch = pa.record_batch([pa.array([b"x" * (1 << 20)])], schema=self.schema)
        while True:
            yield batch

    def close(self) -> None:
        pass


def waiting_server(
    server: LakehouseServer,
    source: Any,
    seconds: float,
    *,
    requests: IngestRequests | None = None,
    stream_seconds: float | None = None,
) -> Any:
    """A Flight server on ``server``'s core and shared bounds, planning with ``source`` and
    appending through ``requests`` (the core's own by default)."""
    return LakehouseFlightServer(
        LOOPBACK,
        0,
        loop=asyncio.get_running_loop(),
        source=source,
        requests=requests or IngestRequests(server.ingest, server.tables),
        signer=TicketSigner(server.signing_key, 60),
        authenticator=server.authenticator,
        bounds=FlightBounds(
            seconds, server.call_slots, server.rate_limiter, stream_seconds=stream_seconds
        ),
    )


async def until(condition: Callable[[], bool]) -> None:
    """Waits (bounded) until ``condition`` holds."""
    async with asyncio.timeout(SETTLE_SECONDS):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_caller_over_its_rate_is_refused_on_both_ports(
    start_server: Callable[..., Any],
) -> None:
    """Flight calls take tokens from the gRPC port's buckets (per client address, with
    authentication off): past the burst, RATE_LIMITED with a RetryInfo, on either port."""
    server = await start_server(quotas={"calls_per_second": 0.01, "burst_calls": 3})
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    for _ in range(2):  # tokens taken: the call goes on (to NOT_FOUND: no such table)
        with pytest.raises(KeyError, match="NAMESPACE_NOT_FOUND"):
            await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        await stub.ListNamespaces(pb.ListNamespacesRequest())  # the third token
        with pytest.raises(flight.FlightUnavailableError, match=r"\[RATE_LIMITED\]") as caught:
            await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
        status = details(caught.value)
        assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert 0 < retry_delay(status) <= 100
        with pytest.raises(flight.FlightUnavailableError, match=r"\[RATE_LIMITED\]"):
            await off_loop(lambda: client.do_get(flight.Ticket(b"x")).read_all())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListNamespaces(pb.ListNamespacesRequest())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc_error_details(refused.value).reason == "RATE_LIMITED"


async def test_the_bound_on_calls_at_once_is_shared_with_the_grpc_port(
    start_server: Callable[..., Any],
) -> None:
    """With max_concurrent_calls 2 and two Flight calls in progress, a third Flight call and
    a gRPC call are SERVER_OVERLOADED; once they end, calls go through again."""
    server = await start_server(max_concurrent_calls=2)
    source = WaitingSource()
    waiting = waiting_server(server, source, 30.0)
    try:
        client = flight.connect(f"grpc://{LOOPBACK}:{waiting.port}")
        held = [
            asyncio.create_task(off_loop(lambda: client.get_flight_info(DESCRIPTOR)))
            for _ in range(2)
        ]
        await until(lambda: source.waiting == 2)
        with pytest.raises(flight.FlightUnavailableError, match=r"\[SERVER_OVERLOADED\]") as c:
            await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
        assert retry_delay(details(c.value)) > 0
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListNamespaces(pb.ListNamespacesRequest())
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert rpc_error_details(refused.value).reason == "SERVER_OVERLOADED"
            source.release.set()
            for call in held:
                assert (await call).endpoints == []
            await until(lambda: server.call_slots.in_use == 0)
            await stub.ListNamespaces(pb.ListNamespacesRequest())
        assert (await off_loop(lambda: client.get_flight_info(DESCRIPTOR))).endpoints == []
    finally:
        source.release.set()
        await waiting.stop(5.0)


async def test_a_core_call_that_never_returns_ends_with_a_timeout(
    start_server: Callable[..., Any],
) -> None:
    """A plan that never comes back: the call ends with TimedOut (DEADLINE_EXCEEDED,
    SERVER_DEADLINE) at the limit, the core call is cancelled and its slot freed."""
    server = await start_server(max_concurrent_calls=5)
    source = WaitingSource()
    waiting = waiting_server(server, source, 0.5)
    try:
        client = flight.connect(f"grpc://{LOOPBACK}:{waiting.port}")
        with pytest.raises(flight.FlightTimedOutError, match=r"\[SERVER_DEADLINE\]") as caught:
            await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
        assert details(caught.value).code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        await until(lambda: source.cancelled == 1 and source.waiting == 0)
        await until(lambda: server.call_slots.in_use == 0)
    finally:
        await waiting.stop(5.0)


async def test_an_overloaded_refusal_costs_no_rate_token(
    start_server: Callable[..., Any],
) -> None:
    """As on the gRPC port, the bound on calls at once refuses a call before the rate limit
    takes a token: with a burst of 3 and one slot held, refused calls leave the caller its
    two tokens; get_schema costs one token, as get_flight_info does."""
    server = await start_server(
        max_concurrent_calls=1, quotas={"calls_per_second": 0.001, "burst_calls": 3}
    )
    source = WaitingSource()
    waiting = waiting_server(server, source, 30.0)
    try:
        client = flight.connect(f"grpc://{LOOPBACK}:{waiting.port}")
        held = asyncio.create_task(off_loop(lambda: client.get_flight_info(DESCRIPTOR)))
        await until(lambda: source.waiting == 1)
        for _ in range(3):
            with pytest.raises(flight.FlightUnavailableError, match=r"\[SERVER_OVERLOADED\]"):
                await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
        source.release.set()
        assert (await held).endpoints == []
        await until(lambda: server.call_slots.in_use == 0)
        assert (await off_loop(lambda: client.get_schema(DESCRIPTOR))).schema.names == ["id"]
        assert (await off_loop(lambda: client.get_flight_info(DESCRIPTOR))).endpoints == []
        with pytest.raises(flight.FlightUnavailableError, match=r"\[RATE_LIMITED\]"):
            await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
    finally:
        source.release.set()
        await waiting.stop(5.0)


async def test_stalled_do_get_readers_do_not_block_grpc_calls(
    start_server: Callable[..., Any],
) -> None:
    """With max_concurrent_calls 2, two do_get readers that read a batch and then stop hold
    no slot once their streams started: gRPC and Flight calls go on being served."""
    server = await start_server(max_concurrent_calls=2)
    streaming = waiting_server(server, EndlessSource(), 30.0)
    client = flight.connect(f"grpc://{LOOPBACK}:{streaming.port}")
    readers = []
    try:
        for _ in range(2):
            info = await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
            reader = await off_loop(lambda info=info: client.do_get(info.endpoints[0].ticket))
            assert (await off_loop(reader.read_chunk)).data.num_rows == 1
            readers.append(reader)  # and reads nothing more
        assert server.call_slots.in_use == 0
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            for _ in range(3):
                await stub.ListNamespaces(pb.ListNamespacesRequest())
        assert len((await off_loop(lambda: client.get_flight_info(DESCRIPTOR))).endpoints) == 1
    finally:
        for reader in readers:
            reader.cancel()
        client.close()
        await streaming.stop(5.0)


async def test_an_abandoned_do_get_and_a_bad_ticket_give_their_slot_back(
    start_server: Callable[..., Any],
) -> None:
    """With max_concurrent_calls 1: a do_get cancelled mid-stream, then a do_get of a ticket
    that does not verify, each leave the one slot free for the next call."""
    server = await start_server(max_concurrent_calls=1)
    streaming = waiting_server(server, EndlessSource(), 30.0)
    client = flight.connect(f"grpc://{LOOPBACK}:{streaming.port}")
    try:
        info = await off_loop(lambda: client.get_flight_info(DESCRIPTOR))
        reader = await off_loop(lambda: client.do_get(info.endpoints[0].ticket))
        assert (await off_loop(reader.read_chunk)).data.num_rows == 1
        reader.cancel()
        await until(lambda: server.call_slots.in_use == 0)
        assert len((await off_loop(lambda: client.get_flight_info(DESCRIPTOR))).endpoints) == 1
        with pytest.raises(flight.FlightUnauthenticatedError, match=r"\[FLIGHT_TICKET_INVALID\]"):
            await off_loop(lambda: client.do_get(flight.Ticket(b"not a ticket")).read_all())
        await until(lambda: server.call_slots.in_use == 0)
        assert len((await off_loop(lambda: client.get_flight_info(DESCRIPTOR))).endpoints) == 1
    finally:
        client.close()
        await streaming.stop(5.0)


class SlowSecondBatch(IngestRequests):
    """The core's ingest, where the second batch waits for the first's commit and then
    ``delay`` seconds more (None: forever) before it is queued, as a full write buffer or a
    commit handed off to another replica makes a writer wait."""

    def __init__(self, server: LakehouseServer, delay: float | None) -> None:
        super().__init__(server.ingest, server.tables)
        self._delay = delay
        self._first: QueuedRows | None = None

    async def enqueue(self, *args: Any, **kwargs: Any) -> QueuedRows:
        if self._first is None:
            self._first = await super().enqueue(*args, **kwargs)
            return self._first
        await self._first.future
        if self._delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self._delay)
        return await super().enqueue(*args, **kwargs)


def put_halves(
    client: flight.FlightClient, writer_id: str
) -> tuple[list[int], BaseException | None]:
    """do_put of ROWS in two batches: the offsets acknowledged, and the error that ended it."""
    command = append_command("sales", "orders", writer_id=writer_id, offset=0)
    descriptor = flight.FlightDescriptor.for_command(command)
    writer, reader = client.do_put(descriptor, ROWS.schema)
    offsets: list[int] = []
    try:
        with writer:
            for half in (ROWS.slice(0, 500), ROWS.slice(500)):
                writer.write_table(half)
            writer.done_writing()
            while (ack := reader.read()) is not None:
                offsets.append(ingest_pb.AppendRowsResponse.FromString(ack.to_pybytes()).offset)
    except flight.FlightError as exc:
        return offsets, exc
    return offsets, None


async def test_do_put_waits_within_the_stream_limit_as_append_rows_does(
    start_server: Callable[..., Any],
) -> None:
    """A batch waiting longer than the unary limit (0.2 s) but within the stream limit (2 s)
    is appended; past the stream limit the call ends with SERVER_DEADLINE after the
    acknowledgement of what was committed."""
    server = await start_server()
    await create_table(server)
    for writer_id, delay, expected in (("w1", 0.5, None), ("w2", None, "SERVER_DEADLINE")):
        requests = SlowSecondBatch(server, delay)
        putting = waiting_server(server, WaitingSource(), 0.2, requests=requests, stream_seconds=2)
        client = flight.connect(f"grpc://{LOOPBACK}:{putting.port}")
        try:
            offsets, error = await off_loop(
                lambda client=client, writer_id=writer_id: put_halves(client, writer_id)
            )
        finally:
            client.close()
            await putting.stop(5.0)
        assert offsets == ([0, 500] if expected is None else [0]), error
        if expected is None:
            assert error is None
        else:
            assert isinstance(error, flight.FlightTimedOutError)
            assert expected in str(error)
