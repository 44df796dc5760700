"""IngestService: AppendRows, WriteRows, GetWriter. Proto in, core call, proto out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from lakehouse.core.ingest import Ingest, WriteResult
from lakehouse.core.ingest_requests import IngestRequests, QueuedRows
from lakehouse.core.invalid_rows import RowsRejected
from lakehouse.domain.errors import InvalidArgument, LakehouseError
from lakehouse.domain.status import status_proto_for
from lakehouse.services.convert import (
    invalid_row_policy_from_proto,
    row_errors_to_proto,
    rows_from_proto,
    write_result_to_proto,
    writer_to_proto,
)
from lakehouse.v1 import ingest_service_pb2 as pb
from lakehouse.v1 import ingest_service_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

# Requests of one stream decoded and queued ahead of their acknowledgement.
STREAM_PIPELINE_DEPTH = 64


@dataclass
class _Stream:
    """What the first request of an AppendRows stream fixed."""

    namespace: str = ""
    table: str = ""
    writer_id: str = ""
    schema_bytes: bytes | None = None


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
        queued = await self._requests.enqueue(
            request.namespace,
            request.table,
            rows_from_proto(request, schema_bytes),
            invalid_row_policy_from_proto(request.invalid_row_policy),
            writer_id="",
            offset=None,
            request_id=request.request_id,
        )
        result = await queued.future
        return pb.WriteRowsResponse(
            result=write_result_to_proto(queued, result),
            row_errors=row_errors_to_proto(queued.problems),
        )

    async def GetWriter(
        self, request: pb.GetWriterRequest, context: Context
    ) -> pb.GetWriterResponse:
        """A writer's committed position on a table."""
        info = await self._ingest.get_writer(request.namespace, request.table, request.writer_id)
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
                await pending.put(await self._accept(stream, request, index))
                index += 1
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

    async def _accept(
        self, stream: _Stream, request: pb.AppendRowsRequest, index: int
    ) -> tuple[int | None, Any]:
        """Decodes and queues one request; returns its offset and future (or its error)."""
        offset = request.offset if request.HasField("offset") else None
        try:
            self._bind(stream, request, index)
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
            )
            return offset, queued
        except LakehouseError as exc:
            return offset, exc

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
            return
        for name, value, bound in (
            ("namespace", request.namespace, stream.namespace),
            ("table", request.table, stream.table),
            ("writer_id", request.writer_id, stream.writer_id),
        ):
            if value and value != bound:
                raise InvalidArgument.field(
                    name, f"is {value!r} but the stream was opened with {bound!r}"
                )

    @staticmethod
    async def _acknowledge(offset: int | None, outcome: Any) -> pb.AppendRowsResponse:
        response = pb.AppendRowsResponse()
        if isinstance(outcome, QueuedRows):
            response.row_errors.extend(row_errors_to_proto(outcome.problems))
            try:
                result: WriteResult = await outcome.future
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
