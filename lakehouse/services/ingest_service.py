"""IngestService: AppendRows, WriteRows, GetWriter. Proto in, core call, proto out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from lakehouse.core.ingest import Ingest, WriteResult
from lakehouse.core.ingest_requests import IngestRequests, QueuedRows, Rows, StagedRows
from lakehouse.core.invalid_rows import RowsRejected
from lakehouse.domain.errors import InvalidArgument, LakehouseError
from lakehouse.domain.row_changes import WriteMode
from lakehouse.domain.status import status_proto_for
from lakehouse.services.convert import (
    invalid_row_policy_from_proto,
    row_errors_to_proto,
    rows_from_proto,
    write_mode_from_proto,
    write_result_to_proto,
    writer_to_proto,
)
from lakehouse.v1 import ingest_service_pb2 as pb
from lakehouse.v1 import ingest_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class _StagedPart:
    """One request of an overwrite stream, answered once the stream's one write committed."""

    queued: QueuedRows
    rows: int
    last: bool


#: How long an overwrite stream waits after its last request before committing, for a
#: cancellation of the call to arrive (it follows the end of the requests at once).
CANCEL_SETTLE_SECONDS = 0.1

# Requests of one stream decoded and queued ahead of their acknowledgement.
STREAM_PIPELINE_DEPTH = 64


@dataclass
class _Stream:
    """What the first request of an AppendRows stream fixed, and an overwrite's requests."""

    namespace: str = ""
    table: str = ""
    writer_id: str = ""
    branch: str = ""
    schema_bytes: bytes | None = None
    mode: WriteMode = WriteMode.APPEND
    overwrite_filter: str = ""
    staged: list[tuple[int | None, StagedRows]] = field(default_factory=list)
    """OVERWRITE / OVERWRITE_PARTITIONS: the requests held until the client half-closes."""

    def release(self) -> None:
        """Gives back the buffer bytes of requests staged and never queued."""
        for _, one in self.staged:
            if one.reservation is not None:
                one.reservation.release()
        self.staged.clear()


async def write_rows(
    requests: IngestRequests, request: pb.WriteRowsRequest, rows: Rows
) -> pb.WriteRowsResponse:
    """One WriteRows: ``rows`` written as ``request`` says, in one commit, answered once it is.

    The rows are the request's own on the gRPC port, a do_put stream's batches on the Flight
    port (``lakehouse.server.flight.writes``): one path, so both ports write alike.

    Raises:
        LakehouseError: As ``IngestRequests.enqueue`` and the commit.
    """
    queued = await requests.enqueue(
        request.namespace,
        request.table,
        rows,
        invalid_row_policy_from_proto(request.invalid_row_policy),
        writer_id="",
        offset=None,
        request_id=request.request_id,
        mode=write_mode_from_proto(request.write_mode),
        overwrite_filter=request.overwrite_filter,
        branch=request.branch,
    )
    result = await queued.future
    return pb.WriteRowsResponse(
        result=write_result_to_proto(queued, result),
        row_errors=row_errors_to_proto(queued.problems),
    )


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """Implements lakehouse.v1.IngestService on top of the core ``IngestRequests``."""

    def __init__(self, requests: IngestRequests, ingest: Ingest) -> None:
        self._requests = requests
        self._ingest = ingest

    async def WriteRows(
        self, request: pb.WriteRowsRequest, context: Context
    ) -> pb.WriteRowsResponse:
        """Writes one batch of rows; with a request_id, at most once."""
        schema_bytes = (
            request.arrow_schema.serialized_schema if request.HasField("arrow_schema") else None
        )
        return await write_rows(self._requests, request, rows_from_proto(request, schema_bytes))

    async def GetWriter(
        self, request: pb.GetWriterRequest, context: Context
    ) -> pb.GetWriterResponse:
        """A writer's committed position on a table."""
        info = await self._ingest.get_writer(
            request.namespace, request.table, request.writer_id, request.branch
        )
        writer = writer_to_proto(request.namespace, request.table, request.writer_id, info)
        return pb.GetWriterResponse(writer=writer)

    async def AppendRows(
        self, request_iterator: AsyncIterator[pb.AppendRowsRequest], context: Context
    ) -> AsyncIterator[pb.AppendRowsResponse]:
        """Appends a stream of requests, acknowledging each in order after its commit."""
        stream = _Stream()
        pending: asyncio.Queue[Any] = asyncio.Queue(maxsize=STREAM_PIPELINE_DEPTH)
        done = object()

        async def read_requests() -> None:
            index = 0
            async for request in request_iterator:
                accepted = await self._accept(stream, request, index)
                # Decoded: its message (megabytes) need not wait here for room in the
                # pipeline or for the next message.
                del request
                if accepted is not None:
                    await pending.put(accepted)
                index += 1
            if stream.staged:
                # An overwrite stream: all its requests are one write, answered in order.
                # gRPC Python ends the requests of a cancelled call as if the client had
                # half-closed, and cancels the handler a moment later: wait that moment, so
                # that a cancelled overwrite writes nothing.
                await asyncio.sleep(CANCEL_SETTLE_SECONDS)
                for item in await self._commit_staged(stream):
                    await pending.put(item)
            await pending.put(done)

        reader = asyncio.create_task(read_requests())
        try:
            while True:
                getter = asyncio.ensure_future(pending.get())
                await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    reader.result()  # a stream-level error ends the call with its status
                    continue
                item = getter.result()
                if item is done:
                    return
                offset, outcome = item
                yield await self._acknowledge(offset, outcome)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            stream.release()

    async def _accept(
        self, stream: _Stream, request: pb.AppendRowsRequest, index: int
    ) -> tuple[int | None, Any] | None:
        """Decodes and queues one request; returns its offset and future (or its error).

        In an overwrite mode the request is only staged (None is returned); an error then
        ends the whole stream, since the write is all or nothing.
        """
        offset = request.offset if request.HasField("offset") else None
        if index == 0:
            stream.mode = write_mode_from_proto(request.write_mode)
            stream.overwrite_filter = request.overwrite_filter
        if stream.mode.whole_stream:
            self._bind(stream, request, index)
            if request.HasField("arrow_schema"):
                stream.schema_bytes = request.arrow_schema.serialized_schema
            self._check_following(stream, request, offset)
            staged = await self._requests.stage(
                stream.namespace,
                stream.table,
                rows_from_proto(request, stream.schema_bytes),
                invalid_row_policy_from_proto(request.invalid_row_policy),
                stream.mode,
                stream.overwrite_filter,
                branch=stream.branch,
            )
            stream.staged.append((offset, staged))
            return None
        try:
            self._bind(stream, request, index)
            if index > 0:
                self._check_following(stream, request, offset)
            if request.HasField("arrow_schema"):
                stream.schema_bytes = request.arrow_schema.serialized_schema
            queued = await self._requests.enqueue(
                stream.namespace,
                stream.table,
                rows_from_proto(request, stream.schema_bytes),
                invalid_row_policy_from_proto(request.invalid_row_policy),
                writer_id=stream.writer_id,
                offset=offset,
                request_id="",
                mode=stream.mode,
                overwrite_filter=stream.overwrite_filter,
                branch=stream.branch,
            )
            return offset, queued
        except LakehouseError as exc:
            return offset, exc

    @staticmethod
    def _check_following(
        stream: _Stream, request: pb.AppendRowsRequest, offset: int | None
    ) -> None:
        """Checks a later request against the stream's first.

        It may repeat the stream's mode and filter, not change them; in an overwrite stream
        with offsets, each request must follow the one before.
        """
        if request.write_mode and write_mode_from_proto(request.write_mode) is not stream.mode:
            raise InvalidArgument.field(
                "write_mode",
                "is set in the first request of a stream; later ones may only repeat it",
            )
        if request.overwrite_filter and request.overwrite_filter != stream.overwrite_filter:
            raise InvalidArgument.field(
                "overwrite_filter",
                "is set in the first request of a stream; later ones may only repeat it",
            )
        if not stream.staged or offset is None:
            return
        first, _ = stream.staged[0]
        expected = (first or 0) + sum(one.span for _, one in stream.staged)
        if first is None or offset != expected:
            raise InvalidArgument.field(
                "offset",
                f"is {offset}; in an overwrite stream each request follows the one before "
                f"(expected {expected if first is not None else 'none, as the first request'})",
            )

    async def _commit_staged(self, stream: _Stream) -> list[tuple[int | None, Any]]:
        """Queues an overwrite stream's requests as one write; one acknowledgement each."""
        staged = [one for _, one in stream.staged]
        first_offset = stream.staged[0][0]
        offsets = [offset for offset, _ in stream.staged]
        stream.staged = []  # the reservations are taken over (or released) from here
        queued = await self._requests.enqueue_staged(
            stream.namespace,
            stream.table,
            staged,
            writer_id=stream.writer_id,
            offset=first_offset,
            branch=stream.branch,
        )
        last = len(staged) - 1
        return [
            (offsets[i], _StagedPart(queued, one.data.num_rows, last=i == last))
            for i, one in enumerate(staged)
        ]

    @staticmethod
    def _bind(stream: _Stream, request: pb.AppendRowsRequest, index: int) -> None:
        if index == 0:
            if not request.namespace or not request.table:
                raise InvalidArgument.field(
                    "namespace" if not request.namespace else "table",
                    "the first request of a stream must name the table",
                )
            stream.namespace, stream.table = request.namespace, request.table
            stream.writer_id = request.writer_id
            stream.branch = request.branch
            return
        for name, value, bound in (
            ("namespace", request.namespace, stream.namespace),
            ("table", request.table, stream.table),
            ("writer_id", request.writer_id, stream.writer_id),
            ("branch", request.branch, stream.branch),
        ):
            if value and value != bound:
                raise InvalidArgument.field(
                    name, f"is {value!r} but the stream was opened with {bound!r}"
                )

    @staticmethod
    async def _acknowledge(offset: int | None, outcome: Any) -> pb.AppendRowsResponse:
        response = pb.AppendRowsResponse()
        if isinstance(outcome, _StagedPart):
            # One request of an overwrite stream: the stream's one commit, this request's rows.
            # A failed write ends the stream with its status: it was all or nothing.
            result: WriteResult = await outcome.queued.future
            if offset is not None:
                response.offset = offset
            rows = 0 if result.already_written else outcome.rows
            response.result.CopyFrom(
                write_result_to_proto(
                    outcome.queued, replace(result, rows_written=rows), with_stats=outcome.last
                )
            )
            return response
        if isinstance(outcome, QueuedRows):
            response.row_errors.extend(row_errors_to_proto(outcome.problems))
            try:
                result = await outcome.future
            except LakehouseError as exc:
                outcome = exc
            else:
                if result.offset is not None:
                    response.offset = result.offset
                response.result.CopyFrom(write_result_to_proto(outcome, result))
                return response
        if offset is not None:
            response.offset = offset
        if isinstance(outcome, RowsRejected):
            response.row_errors.extend(row_errors_to_proto(outcome.problems))
        response.error.CopyFrom(status_proto_for(outcome, ""))
        return response
