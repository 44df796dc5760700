"""The Arrow Flight server: pyarrow's C++ gRPC transport, the lakehouse core behind it.

Flight handlers run on pyarrow's threads, not on the event loop. The core is async and
owns state bound to the loop (the ingest committers, the catalog's cache, the blocking
pool), so each handler hands its core calls to the loop with
``asyncio.run_coroutine_threadsafe`` and waits for them on its own thread; the bytes of
batches never pass through Python per message (Flight's transport sends the Arrow buffers).
A do_get opens its stream on the loop once, then reads the batches on its own thread with the
catalog's blocking calls (``lakehouse.core.reads.OpenRead``): a hop to the loop per batch cost
about 0.8 ms of loop time per 2 MiB batch, a fifth of a read's GIL (bench/README.md). The
scan's read-ahead threads decode the next batches while Flight sends the current one.

Bounds: every call takes a slot of the process-wide bound on calls at once (shared with the
gRPC port; held until the call completes, or until a do_get's read is open: a client that
stops reading must not hold a slot forever) and passes the gRPC port's per-caller rate limit
(the same buckets), in the gRPC port's order. Each wait on a core call of a read (and each
wait of a do_get for its next batch) is bounded by the server's unary limit
(``request_timeout_seconds``), a do_put as a whole by the stream limit
(``stream_timeout_seconds``, as AppendRows): a core call that does not come back in
time is cancelled and the call ends with DEADLINE_EXCEEDED (Flight's ``TimedOut``), so a stuck
call cannot hold a Flight thread forever.

Shutdown: the server stops taking calls at once and in-flight calls may finish within the
grace period; after it they end with UNAVAILABLE (reason ``SHUTTING_DOWN``), so a client
reads again elsewhere and a do_put writer resends from its last acknowledged offset.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from lakehouse.core.ingest_requests import IngestRequests, TableRows
from lakehouse.deadlines import call_deadline
from lakehouse.domain.errors import DeadlineExceeded, InvalidArgument, LakehouseError, Unavailable
from lakehouse.domain.read_sessions import SessionClaims
from lakehouse.server import metrics
from lakehouse.server.credentials import Authenticator, Principal
from lakehouse.server.flight.appends import (
    PutStream,
    acknowledgement,
    check_append_command,
    enqueue_batch,
)
from lakehouse.server.flight.auth import (
    APPEND_METHOD,
    MIDDLEWARE_KEY,
    WRITE_METHOD,
    AuthMiddlewareFactory,
    authorize,
    call_of,
)
from lakehouse.server.flight.commands import session_tickets
from lakehouse.server.flight.errors import flight_errors
from lakehouse.server.flight.sources import FlightReadSource, FlightStream
from lakehouse.server.flight.tickets import TicketSigner
from lakehouse.server.flight.writes import (
    BATCHES_FIELD,
    check_write_command,
    commit_deadline,
    parse_put_command,
    received_rows,
)
from lakehouse.server.limits import CallSlots
from lakehouse.server.rate_limit import RateLimiter
from lakehouse.services.ingest_service import write_rows
from lakehouse.v1 import ingest_service_pb2 as ingest_pb

log = logging.getLogger(__name__)
T = TypeVar("T")

#: After the grace period, how long calls that did not come back are waited for before the
#: server is left behind (see ``LakehouseFlightServer.stop``).
ABANDON_SECONDS = 2.0

#: do_put batches decoded and queued ahead of their acknowledgement (AppendRows' depth).
PUT_PIPELINE_DEPTH = 64

#: do_get's counters, labelled once: they are counted per batch on the Flight thread.
_BATCHES_SENT = metrics.FLIGHT_BATCHES_SENT.labels("do_get")
_BYTES_SENT = metrics.FLIGHT_BYTES_SENT.labels("do_get")


@dataclass(frozen=True)
class FlightBounds:
    """What bounds Flight calls, as the gRPC port's calls are bounded.

    Attributes:
        call_seconds: The longest wait on one core call (``request_timeout_seconds``).
        slots: The process-wide bound on calls at once (``max_concurrent_calls``).
        rate: The per-caller rate limit; None when it is off.
        stream_seconds: The limit of a do_put as a whole (``stream_timeout_seconds``, that of
            an AppendRows stream); None: ``call_seconds``.
    """

    call_seconds: float
    slots: CallSlots
    rate: RateLimiter | None = None
    stream_seconds: float | None = None


@dataclass(frozen=True)
class FlightTls:
    """TLS of the Flight port: the gRPC port's certificate, and its client CA for mTLS."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None


def _shutting_down() -> Unavailable:
    return Unavailable(
        "the server is shutting down: read again, or resend from the last acknowledged "
        "offset, on another replica",
        reason="SHUTTING_DOWN",
    )


class LakehouseFlightServer(flight.FlightServerBase):  # type: ignore[misc]
    """Flight reads (get_flight_info, do_get) and appends (do_put) on the lakehouse core.

    Args:
        host: Address to bind.
        port: Port to bind; 0 picks a free one (``self.port`` tells which).
        loop: The event loop the core runs on.
        source: What reads are planned and streamed with.
        requests: The ingest use case do_put feeds.
        signer: Signs and checks tickets.
        authenticator: The process's authenticator (shared with the gRPC port).
        bounds: The rate limit, the bound on calls at once and on core calls' time.
        tls: The port's certificate, or None for plaintext.
        advertised_host: Host named in endpoint locations; empty for none.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        loop: asyncio.AbstractEventLoop,
        source: FlightReadSource,
        requests: IngestRequests,
        signer: TicketSigner,
        authenticator: Authenticator,
        bounds: FlightBounds,
        tls: FlightTls | None = None,
        advertised_host: str = "",
    ) -> None:
        bind = f"[{host}]" if ":" in host else host
        scheme = "grpc+tcp" if tls is None else "grpc+tls"
        options: dict[str, Any] = {}
        if tls is not None:
            options["tls_certificates"] = [flight.CertKeyPair(tls.cert_chain, tls.private_key)]
            if tls.client_ca is not None:
                options["verify_client"] = True
                options["root_certificates"] = tls.client_ca
        super().__init__(
            f"{scheme}://{bind}:{port}",
            middleware={MIDDLEWARE_KEY: AuthMiddlewareFactory(authenticator)},
            **options,
        )
        self._loop = loop
        self._source = source
        self._requests = requests
        self._signer = signer
        self._bounds = bounds
        self._cancelled = False
        self.abandoned = False
        self.locations: list[flight.Location] = []
        if advertised_host:
            make = flight.Location.for_grpc_tcp if tls is None else flight.Location.for_grpc_tls
            self.locations.append(make(advertised_host, self.port))

    # -- bridging to the core --------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._cancelled:
            coro.close()
            raise _shutting_down()
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _submit_bounded(
        self, coro: Coroutine[Any, Any, T], seconds: float | None = None
    ) -> concurrent.futures.Future[T]:
        """``coro`` on the loop, with the call's deadline set for the adapters it calls.

        ``seconds``: that deadline; None: the unary limit.
        """
        return self._submit(
            _within(coro, self._bounds.call_seconds if seconds is None else seconds)
        )

    def _wait(self, future: concurrent.futures.Future[T]) -> T:
        """The result of a core call, waited for at most the server's unary limit.

        Raises:
            DeadlineExceeded: The call did not come back in time (reason SERVER_DEADLINE);
                the call is cancelled.
        """
        return wait_for(future, self._bounds.call_seconds)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._wait(self._submit_bounded(coro))

    def _admit(self, context: flight.ServerCallContext) -> Principal:
        """The caller, once its call took a slot of the bound and passed the rate limit.

        The gRPC port's order: an overloaded server refuses a call before it costs the caller
        a rate token (a refused call's slot is freed when the call completes).

        Raises:
            ResourceExhausted: The process handles its limit of calls (SERVER_OVERLOADED), or
                the caller is over its rate (RATE_LIMITED).
        """
        call = call_of(context)
        if self._bounds.slots.take():
            call.slot = self._bounds.slots
        if self._bounds.rate is not None:
            self._bounds.rate.admit(call.principal.name, lambda: str(context.peer() or ""))
        return call.principal

    # -- reads -------------------------------------------------------------------------------

    def session_endpoints(self, claims: SessionClaims) -> list[tuple[bytes, list[str]]]:
        """The ticket and locations (URIs) of each stream of a session made on the gRPC port."""
        uris = [location.uri.decode() for location in self.locations]
        return [(ticket, uris) for ticket in session_tickets(self._signer, claims)]

    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        """Plans a read: the schema, and one endpoint per stream with a signed ticket.

        The command is a ReadRowsRequest (one stream) or a CreateReadSessionRequest packed in
        an Any (a session, one endpoint per stream; see ``lakehouse.server.flight.commands``).
        """
        with flight_errors():
            return self._flight_info(self._admit(context), descriptor)

    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        """The schema ``get_flight_info`` would plan."""
        with flight_errors():
            return flight.SchemaResult(self._flight_info(self._admit(context), descriptor).schema)

    def _flight_info(
        self, principal: Principal, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        read = self._run(self._source.plan(principal, _command(descriptor)))
        endpoints = [
            flight.FlightEndpoint(
                self._signer.sign(principal.name, payload, expires_ms=read.expires_ms),
                self.locations,
            )
            for payload in read.streams
        ]
        return flight.FlightInfo(read.schema, descriptor, endpoints, -1, -1)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> Any:
        """Streams the batches of a ticket's stream (its caller's ticket, within its TTL).

        The stream is opened on the loop (authorization, the plan, the scan and its read-ahead
        charged to the read budget); its batches are then read on this Flight thread, as
        pyarrow asks for them, with no hop to the loop per batch.
        """
        with flight_errors():
            principal = self._admit(context)
            content = self._signer.open(ticket.ticket, principal.name)
            stream = self._run(self._source.open(principal, content.payload))
        # The read is open: the stream holds no slot of the bound on calls at once. A client
        # may stop reading for as long as it likes (Flight's writer waits for its window, with
        # no deadline) and must not starve both ports; what the stream holds meanwhile is its
        # read-ahead (charged to the read budget), as a gRPC ReadRows stream does.
        call_of(context).free_slot()
        return flight.GeneratorStream(stream.schema, self._sent(context, stream))

    def _sent(
        self, context: flight.ServerCallContext, stream: FlightStream
    ) -> Iterator[pa.RecordBatch]:
        """The stream's batches, read on the Flight thread that sends them.

        Each wait for a batch is bounded by the unary limit, as a core call of a read is
        (``lakehouse.deadlines``: the read-ahead's wait reads it). The stream is closed (its
        read-ahead stopped, its budget given back) when it ends, fails, or Flight drops it
        (the client went away); after the grace period of a shutdown it ends with UNAVAILABLE.
        """
        batches = stream.batches()
        try:
            with flight_errors():
                while True:
                    if self._cancelled:
                        raise _shutting_down()
                    with call_deadline(self._bounds.call_seconds):
                        batch = next(batches, None)
                    if batch is None or context.is_cancelled():
                        return
                    _BATCHES_SENT.inc()
                    _BYTES_SENT.inc(batch.nbytes)
                    yield batch
        finally:
            # On whichever thread ends the generator (Flight drops it when the client goes).
            stream.close()

    # -- appends -----------------------------------------------------------------------------

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        """Writes the stream's batches, answering in ``app_metadata``.

        An AppendRowsRequest command: each batch is one AppendRows request, acknowledged in
        order. A WriteRowsRequest packed in an Any: all the batches are one WriteRows (any
        write mode), answered once after its commit (``lakehouse.server.flight.writes``).
        """
        with flight_errors():
            principal = self._admit(context)
            request = parse_put_command(_command(descriptor))
            # Bounded as an AppendRows stream is: by the stream limit as a whole, not the
            # unary one per wait, since waiting for buffer space or for a commit handed off
            # to another replica (ingest.handoff_timeout_seconds) is part of writing.
            limit = self._bounds.stream_seconds or self._bounds.call_seconds
            ends = time.monotonic() + limit
            if isinstance(request, ingest_pb.WriteRowsRequest):
                # Authorized as sent, then checked: the gRPC port's order.
                authorize(principal, WRITE_METHOD, request, "do_put")
                check_write_command(request)
                rows = received_rows(reader, self._requests.limits, ends, limit)
                written = self._submit_bounded(
                    write_rows(self._requests, request, TableRows(rows, BATCHES_FIELD)),
                    ends - time.monotonic(),
                )
                del rows  # the core holds the rows until its commit, not this thread
                # Not cancelled at the limit: a write under way commits or fails on its own
                # (its adapters' deadline is the stream's), and the same request_id sent
                # again gets its answer or writes it.
                try:
                    response = wait_for(written, ends - time.monotonic(), cancel=False)
                except DeadlineExceeded:
                    raise commit_deadline(limit) from None
                writer.write(pa.py_buffer(response.SerializeToString()))
                return
            authorize(principal, APPEND_METHOD, request, "do_put")
            check_append_command(request)
            stream = PutStream.open(request, reader.schema)
            acks: collections.deque[concurrent.futures.Future[Any]] = collections.deque()

            def wait(future: concurrent.futures.Future[T], *, cancel: bool = True) -> T:
                return wait_for(
                    future,
                    ends - time.monotonic(),
                    cancel=cancel,
                    limit=(limit, "stream_timeout_seconds"),
                )

            def acknowledge(block: bool) -> None:
                while acks and (block or acks[0].done() or len(acks) >= PUT_PIPELINE_DEPTH):
                    response, error = wait(acks.popleft(), cancel=False)
                    if error is not None:
                        raise error
                    writer.write(pa.py_buffer(response.SerializeToString()))

            try:
                for chunk in reader:
                    if chunk.data is None:
                        continue  # metadata without rows: nothing to append
                    metrics.FLIGHT_BATCHES_RECEIVED.labels("do_put").inc()
                    metrics.FLIGHT_BYTES_RECEIVED.labels("do_put").inc(chunk.data.nbytes)
                    batch = enqueue_batch(self._requests, stream, chunk.data)
                    offset, outcome = wait(self._submit_bounded(batch, ends - time.monotonic()))
                    if isinstance(outcome, LakehouseError):
                        acknowledge(block=True)  # what came before is committed and acknowledged
                        raise outcome
                    acks.append(self._submit(acknowledgement(offset, outcome)))
                    acknowledge(block=False)
                acknowledge(block=True)
            except BaseException:
                # Whatever ends the call, the commits already known are acknowledged first,
                # so the writer resends from the last one rather than rows committed.
                with contextlib.suppress(BaseException):
                    while acks and acks[0].done():
                        response, error = acks.popleft().result()
                        if error is not None:
                            break
                        writer.write(pa.py_buffer(response.SerializeToString()))
                raise

    # -- life cycle --------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Stops taking calls; in-flight ones may finish within ``grace`` seconds.

        A call still running after it ends with UNAVAILABLE when it next comes back to the
        core. A do_get whose client stopped reading never does (Flight's C++ writer waits for
        the client's window, and pyarrow's shutdown has no deadline): after
        ``ABANDON_SECONDS`` more the server is left behind (``abandoned``), so that such a
        client cannot hold the process past its grace period.
        """
        done = threading.Event()
        # A daemon thread, not the loop's executor: an abandoned shutdown must not be joined
        # when the process exits.
        threading.Thread(
            target=self._shutdown, args=(done,), name="flight-stop", daemon=True
        ).start()
        if await asyncio.to_thread(done.wait, grace):
            return
        log.info("flight calls still running after the grace period: ending them")
        self._cancelled = True
        if not await asyncio.to_thread(done.wait, ABANDON_SECONDS):
            self.abandoned = True
            log.warning(
                "flight calls of clients that stopped reading are still open: not waiting for them",
                extra={"waited_seconds": grace + ABANDON_SECONDS},
            )

    def _shutdown(self, done: threading.Event) -> None:
        self.shutdown()
        done.set()


def wait_for(
    future: concurrent.futures.Future[T],
    seconds: float,
    *,
    cancel: bool = True,
    limit: tuple[float, str] | None = None,
) -> T:
    """The result of ``future``, waited for at most ``seconds`` (see ``_wait``).

    Args:
        future: The core call.
        seconds: How long to wait.
        cancel: Cancel the call at the limit (not for a wait on a commit: the commit goes on,
            and the client resends from its last acknowledged offset).
        limit: The limit and the setting the wait counts against when it is not ``seconds``
            per wait (a do_put's stream limit, of which ``seconds`` is what is left).

    Raises:
        DeadlineExceeded: It did not come back in time (reason SERVER_DEADLINE).
    """
    try:
        return future.result(timeout=max(seconds, 0.0))
    except TimeoutError:
        if future.done():
            # It came back between the wait's timeout and this check (or failed with its own
            # TimeoutError): its outcome, not the wait's, so a result (an open scan) is used
            # and closed by its caller rather than dropped.
            return future.result()
        if cancel:
            future.cancel()
        if limit is not None:
            total, setting = limit
            raise DeadlineExceeded(
                f"a Flight do_put reached the server's limit of {total:g} s ({setting}): "
                "resend from the last acknowledged offset",
                metadata={"limit_seconds": f"{total:g}"},
            ) from None
        raise DeadlineExceeded(
            f"a Flight call waited the server's limit of {seconds:g} s for the service "
            "(request_timeout_seconds)",
            metadata={"limit_seconds": f"{seconds:g}"},
        ) from None


def _command(descriptor: flight.FlightDescriptor) -> bytes:
    """The command of a command descriptor.

    Raises:
        InvalidArgument: On field ``descriptor``: a path descriptor.
    """
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise InvalidArgument.field(
            "descriptor",
            "must be a command: a serialized request (FlightDescriptor.for_command; "
            "docs/flight.md)",
            reason="MALFORMED_REQUEST",
        )
    return bytes(descriptor.command)


async def _within(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """``coro`` run with the call's deadline set (``lakehouse.deadlines``).

    Adapters time their calls to backing services by it, as on the gRPC port.
    """
    with call_deadline(seconds):
        return await coro
