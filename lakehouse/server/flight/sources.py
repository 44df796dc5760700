"""What the Flight port reads: a seam between Flight's tickets and the core's reads.

A :class:`FlightReadSource` turns a descriptor command into a plan (the schema and one
opaque payload per stream) and a payload back into record batches. Tickets wrap payloads:
the server signs them and binds them to the caller, so a source never sees a forged one.

:class:`ReadRowsSource` plans a ``ReadRowsRequest`` (same selection, same validation errors
as ``TableService.ReadRows``) into one stream pinned to the snapshot planned, so ``do_get``
reads what ``get_flight_info`` described even if the table moved in between. The plan is a
one-stream read session's (``ReadSessions.create``): it resolves the version and the files
without opening the scan, so ``get_flight_info`` costs a planning and ``do_get`` is the one
read. An incremental range (which sessions do not take) is planned by opening the read.
Read sessions (many streams per plan) are the other source
(``lakehouse.server.flight.sessions``); ``lakehouse.server.flight.commands`` tells which a
command is for.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import pyarrow as pa
from google.protobuf.message import DecodeError, Message

from lakehouse.core.read_sessions import ReadSessions
from lakehouse.core.reads import OpenRead, Reads, ReadStart
from lakehouse.domain.errors import InvalidArgument
from lakehouse.server.credentials import Principal
from lakehouse.server.flight.auth import READ_METHOD, authorize
from lakehouse.services.convert import (
    arrow_compression_from_proto,
    is_json_row_format,
    read_options_from_proto,
)
from lakehouse.v1 import table_service_pb2 as pb

#: Target size of one do_get batch. Larger than ReadRows' messages: Flight's C++ transport
#: has no per-message cost in Python, and each batch crosses from the event loop to a Flight
#: thread once.
FLIGHT_BATCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ReadPlan:
    """A planned read: its schema and what each of its streams reads.

    Attributes:
        schema: The Arrow schema of every batch of every stream.
        streams: One opaque payload per stream (a ticket carries one).
        snapshot_id: The snapshot read (None: an empty table).
        expires_ms: When its streams stop being readable (ms since the epoch); None: the
            tickets' own TTL.
    """

    schema: pa.Schema
    streams: list[bytes]
    snapshot_id: int | None
    expires_ms: int | None = None


class FlightStream(Protocol):
    """One planned stream, opened on the loop; its batches are pulled on a Flight thread.

    ``lakehouse.core.reads.OpenRead`` is one.
    """

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of every batch."""
        ...

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The batches, read on the calling thread (blocking, never on the loop)."""
        ...

    def close(self) -> None:
        """Stops reading and gives back what the stream holds (idempotent)."""
        ...


class FlightReadSource(Protocol):
    """Plans reads from descriptor commands, and streams a planned stream's batches."""

    async def plan(self, principal: Principal, command: bytes) -> ReadPlan:
        """Plans the read ``command`` asks for, if ``principal`` may make it.

        Raises:
            InvalidArgument: A command that does not parse, or a bad selection.
            PermissionDenied: The caller may not read the table.
            NotFound: No such table or snapshot.
            Unavailable: A backing service failed.
        """
        ...

    async def open(self, principal: Principal, payload: bytes) -> FlightStream:
        """One planned stream (a ticket's payload), opened: its schema, then its batches.

        Opened on the loop; its batches are then read on the Flight thread that sends them
        (``OpenRead.batches``), with no hop to the loop per batch.

        Raises:
            PermissionDenied: The caller may not read the table (any more).
            NotFound: The table or its snapshot is gone since the plan.
            Unavailable: A backing service failed.
        """
        ...


M = TypeVar("M", bound=Message)


def parse_command(kind: type[M], command: bytes) -> M:
    """A descriptor command (or a ticket's payload) as a request of type ``kind``.

    Raises:
        InvalidArgument: On field ``descriptor.cmd``: bytes that are not one.
    """
    try:
        return kind.FromString(command)
    except DecodeError as exc:
        raise InvalidArgument.field(
            "descriptor.cmd",
            f"is not a serialized {kind.DESCRIPTOR.full_name} ({exc})",
            reason="MALFORMED_REQUEST",
        ) from None


def parse_read_command(command: bytes) -> pb.ReadRowsRequest:
    """A descriptor command as a ``ReadRowsRequest``.

    Raises:
        InvalidArgument: On field ``descriptor.cmd``: bytes that are not one.
    """
    return parse_command(pb.ReadRowsRequest, command)


def check_flight_read(request: pb.ReadRowsRequest) -> None:
    """Refuses a session's stream in a ReadRowsRequest command: Flight reads the table named.

    Sessions on Flight are CreateReadSessionRequests packed in an Any (docs/flight.md); a
    ``read_session`` here would otherwise be ignored while the request reads another table.

    Raises:
        InvalidArgument: On field ``read_session`` or ``stream``.
    """
    for name in ("read_session", "stream"):
        if getattr(request, name):
            raise InvalidArgument.field(
                name,
                "not in a Flight ReadRowsRequest command: read a session on Flight with a "
                "CreateReadSessionRequest packed in an Any (docs/flight.md)",
            )


def pinned(request: pb.ReadRowsRequest, snapshot_id: int | None) -> pb.ReadRowsRequest:
    """``request`` reading the snapshot its plan read, whatever the table's head is later."""
    if snapshot_id is None:
        return request  # an empty table: nothing to pin
    result = pb.ReadRowsRequest()
    result.CopyFrom(request)
    if request.HasField("start_snapshot_id"):
        if not request.HasField("end_snapshot_id"):
            result.end_snapshot_id = snapshot_id
        return result
    result.ClearField("ref")
    result.snapshot_id = snapshot_id  # replaces as_of_time (one version oneof)
    return result


class ReadRowsSource:
    """Reads as ``TableService.ReadRows`` does, one stream per read.

    Args:
        reads: The core read use case.
        sessions: The core read-session use case (plans without reading).
        batch_bytes: Target size of one batch.
    """

    def __init__(
        self, reads: Reads, sessions: ReadSessions, batch_bytes: int = FLIGHT_BATCH_BYTES
    ) -> None:
        self._reads = reads
        self._sessions = sessions
        self._batch_bytes = batch_bytes

    async def plan(self, principal: Principal, command: bytes) -> ReadPlan:
        """See :meth:`FlightReadSource.plan`."""
        request = parse_read_command(command)
        authorize(principal, READ_METHOD, request, "get_flight_info")
        check_flight_read(request)
        if is_json_row_format(request.format):
            raise InvalidArgument.field("format", "Flight streams Arrow only: leave it unset")
        arrow_compression_from_proto(request.arrow_compression)  # checked; Flight has its own
        options = read_options_from_proto(request)
        if options.start_snapshot_id is not None:
            start, items = await self._start(request)
            await items.aclose()
            schema, snapshot_id = start.schema, start.snapshot_id
        else:
            # Not kept: do_get reads the pinned request with Reads.read, which plans again,
            # so a kept plan would only push the plans of sessions being read out of the cache.
            session = await self._sessions.create(
                request.namespace,
                request.table,
                options,
                max_streams=1,
                principal=principal.name,
                keep_plan=False,
            )
            schema, snapshot_id = session.schema, session.snapshot_id
        return ReadPlan(schema, [pinned(request, snapshot_id).SerializeToString()], snapshot_id)

    async def open(self, principal: Principal, payload: bytes) -> OpenRead:
        """See :meth:`FlightReadSource.open`."""
        request = parse_read_command(payload)
        # Checked again, not only at plan time: a role or grant withdrawn since applies at
        # once, and a ticket key that leaked lets nobody read beyond their own grants.
        authorize(principal, READ_METHOD, request, "do_get")
        check_flight_read(request)
        return await self._reads.open(
            request.namespace,
            request.table,
            read_options_from_proto(request),
            budget_bytes=self._batch_bytes,
        )

    async def _start(
        self, request: pb.ReadRowsRequest
    ) -> tuple[ReadStart, AsyncGenerator[ReadStart | pa.RecordBatch, None]]:
        # An async generator (annotated as an iterator by the core): closed here when the
        # read ends early, so its scan is released at once.
        items = cast(
            AsyncGenerator[ReadStart | pa.RecordBatch, None],
            self._reads.read(
                request.namespace,
                request.table,
                read_options_from_proto(request),
                budget_bytes=self._batch_bytes,
            ),
        )
        return await started(items), items


async def started(items: AsyncGenerator[ReadStart | pa.RecordBatch, None]) -> ReadStart:
    """The ``ReadStart`` a core read begins with; the read is closed if it fails first."""
    try:
        start = await anext(items)
    except BaseException:
        await items.aclose()
        raise
    assert isinstance(start, ReadStart)
    return start
