"""IngestService: AppendRows, WriteRows, GetWriter. Proto in, core call, proto out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pyarrow as pa
from google.protobuf import json_format

from lakehouse import metrics
from lakehouse.core.dead_letters import DEAD_LETTER_TABLE, POLICY_PROPERTY, DeadLetters
from lakehouse.core.ingest import Ingest, Reservation, WriteResult
from lakehouse.core.tables import Tables
from lakehouse.domain.errors import (
    FieldViolation,
    InvalidArgument,
    LakehouseError,
    ResourceExhausted,
)
from lakehouse.domain.ingest_rows import (
    ArrowLimits,
    DecodedRows,
    arrow_size,
    check_dictionary_bytes,
    conform_arrow,
    decode_json,
    dictionary_bytes,
    json_charge,
    read_arrow,
)
from lakehouse.domain.schemas import schema_to_arrow
from lakehouse.domain.status import status_proto_for
from lakehouse.domain.tables import TableInfo
from lakehouse.v1 import ingest_pb2, ingest_service_pb2_grpc, table_pb2
from lakehouse.v1 import ingest_service_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]

MAX_LISTED_ROW_ERRORS = 100
# Requests of one stream decoded and queued ahead of their acknowledgement.
STREAM_PIPELINE_DEPTH = 64
SCHEMA_MAX_AGE_SECONDS = 1.0


@dataclass
class _Stream:
    """What the first request of an AppendRows stream fixed."""

    namespace: str = ""
    table: str = ""
    writer_id: str = ""
    schema_bytes: bytes | None = None


def _row_errors(decoded: DecodedRows) -> list[ingest_pb2.RowError]:
    return [
        ingest_pb2.RowError(
            row_index=p.row_index,
            column=p.column,
            reason=ingest_pb2.RowErrorReason.Value(f"ROW_ERROR_REASON_{p.reason.name}"),
            message=p.message,
        )
        for p in decoded.problems[:MAX_LISTED_ROW_ERRORS]
    ]


def _out_of_memory() -> ResourceExhausted:
    """The error for an allocation that failed while decoding.

    The process is short of memory, the request is not at fault, and another attempt (or a
    smaller request) may succeed.
    """
    return ResourceExhausted(
        "not enough memory to decode the rows now; retry later or send smaller requests",
        reason="INGEST_MEMORY_EXHAUSTED",
        retry_after_seconds=1.0,
    )


def _struct_to_dict(index: int, row: Any) -> Any:
    """A JSON row as a dict, refusing values JSON cannot hold.

    A ``google.protobuf.Value`` can hold NaN or Infinity, or no value at all, and protobuf's
    own conversion raises ValueError on them (an INTERNAL found by the fuzz test).

    Raises:
        InvalidArgument: The row holds such a value (reason INVALID_ROWS).
    """
    try:
        return json_format.MessageToDict(row)
    except (ValueError, json_format.Error):
        raise InvalidArgument.field(
            f"rows[{index}]",
            "holds NaN, Infinity or an empty value, which JSON cannot",
            reason="INVALID_ROWS",
        ) from None


class RowsRejected(InvalidArgument):
    """A request whose rows do not match the table schema; nothing of it was written.

    Attributes:
        row_errors: The listed row errors, sent in AppendRows acknowledgements too.
    """

    def __init__(self, decoded: DecodedRows) -> None:
        problems = decoded.problems[:MAX_LISTED_ROW_ERRORS]
        violations = [
            FieldViolation(
                f"rows[{p.row_index}]" + (f".{p.column}" if p.column else ""),
                f"{p.reason.name}: {p.message}",
            )
            for p in problems
        ]
        first = violations[0]
        # invalid_count is derived, not counted: a rejected million-row batch costs no loop
        bad_rows = max(decoded.invalid_count, 1)
        super().__init__(
            f"{bad_rows} row(s) do not match the table schema; first: {first.field}: "
            f"{first.description}; nothing was written",
            violations=violations,
            reason="INVALID_ROWS",
        )
        self.row_errors = _row_errors(decoded)


@dataclass
class _Queued:
    """A request on its way: the future of its commit and what was dead-lettered."""

    future: asyncio.Future[WriteResult] | None = None
    row_errors: list[ingest_pb2.RowError] = field(default_factory=list)
    dead_lettered: int = 0
    dead_letter_namespace: str = ""

    def result_proto(self, result: WriteResult) -> ingest_pb2.WriteResult:
        proto = ingest_pb2.WriteResult(
            rows_written=result.rows_written,
            rows_dead_lettered=self.dead_lettered,
            snapshot_id=result.snapshot_id or 0,
            already_written=result.already_written,
        )
        if self.dead_lettered:
            proto.dead_letter_table.CopyFrom(
                table_pb2.TableReference(
                    namespace=self.dead_letter_namespace, table=DEAD_LETTER_TABLE
                )
            )
        return proto


def _policy(requested: int, properties: dict[str, str]) -> int:
    if requested not in ingest_pb2.InvalidRowPolicy.values():
        raise InvalidArgument.field("invalid_row_policy", f"unknown policy {requested}")
    if requested != ingest_pb2.INVALID_ROW_POLICY_UNSPECIFIED:
        return requested
    if properties.get(POLICY_PROPERTY, "reject") == "dead-letter":
        return ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER
    return ingest_pb2.INVALID_ROW_POLICY_REJECT


class IngestServicer(ingest_service_pb2_grpc.IngestServiceServicer):
    """Implements lakehouse.v1.IngestService on top of the core ``Ingest``."""

    def __init__(self, ingest: Ingest, tables: Tables) -> None:
        self._ingest = ingest
        self._tables = tables
        self._dead_letters = DeadLetters(tables, ingest)

    async def _decode(
        self, namespace: str, table: str, request: Any, schema_bytes: bytes | None
    ) -> tuple[DecodedRows, TableInfo, Reservation | None]:
        # The schema only: the commit checks the table again, so a second-old copy will do.
        info = await self._tables.get_table(namespace, table, max_age=SCHEMA_MAX_AGE_SECONDS)
        settings = self._ingest.settings
        kind = request.WhichOneof("rows")
        reservation: Reservation | None = None
        if kind == "arrow_record_batch":
            batch = request.arrow_record_batch
            limits = ArrowLimits(settings.max_request_rows, settings.max_request_bytes)
            # What decoding takes is read from the headers and charged before it starts, so
            # concurrent requests (and a few bytes that claim gigabytes) stay within the
            # write buffers; decoding then runs in a thread, away from the event loop.
            # Protobuf copies a bytes field on each access: it is read once to size it and
            # again to decode it, so a request waiting for room holds only gRPC's message,
            # not a copy of its payload besides (40 waiting 16 MiB requests: 640 MiB less).
            size = await asyncio.to_thread(
                lambda: arrow_size(batch.serialized_record_batch, schema_bytes, info.schema, limits)
            )
            reservation = await self._ingest.reserve(namespace, table, max(size.charge, 1))
            try:
                read = await asyncio.to_thread(
                    lambda: read_arrow(batch.serialized_record_batch, schema_bytes, info.schema)
                )
                if isinstance(read, DecodedRows):
                    decoded = read  # corrupt bytes: nothing to conform
                else:
                    # Decoding dictionaries to plain values takes what the indices pick, which
                    # the headers do not tell: charged too, before the casts allocate it.
                    expanded = await asyncio.to_thread(dictionary_bytes, read)
                    check_dictionary_bytes(expanded, limits.max_bytes)
                    await self._ingest.grow(reservation, expanded)
                    decoded = await asyncio.to_thread(conform_arrow, read, info.schema)
            except MemoryError:
                reservation.release()
                raise _out_of_memory() from None
            except BaseException:
                reservation.release()
                raise
        elif kind == "json_rows":
            structs = request.json_rows.rows
            if len(structs) > settings.max_request_rows:
                raise InvalidArgument.field(
                    "json_rows.rows",
                    f"holds {len(structs)} rows; one request may hold at most "
                    f"{settings.max_request_rows}: split it",
                    reason="TOO_MANY_ROWS",
                )
            # JSON rows carry no header that tells what converting them takes (Python
            # objects, then Arrow): an estimate from their serialized size is charged before
            # converting, so concurrent JSON requests share the buffers' hard bound too.
            # Row by row: protobuf's ByteSize serializes, and a row is a small temporary.
            serialized = await asyncio.to_thread(lambda: sum(s.ByteSize() for s in structs))
            charge = json_charge(serialized, len(structs))
            reservation = await self._ingest.reserve(namespace, table, charge)
            try:
                decoded = await asyncio.to_thread(
                    lambda: decode_json(
                        [_struct_to_dict(i, s) for i, s in enumerate(structs)], info.schema
                    )
                )
            except MemoryError:
                reservation.release()
                raise _out_of_memory() from None
            except BaseException:
                reservation.release()
                raise
        else:
            empty = pa.Table.from_batches([], schema=schema_to_arrow(info.schema))
            decoded = DecodedRows(empty, [], [], {}, 0)
        for problem in decoded.problems[:MAX_LISTED_ROW_ERRORS]:
            metrics.INGEST_REJECTED_ROWS.labels(problem.reason.name).inc()
        return decoded, info, reservation

    async def _enqueue(
        self,
        namespace: str,
        table: str,
        request: Any,
        schema_bytes: bytes | None,
        *,
        writer_id: str,
        offset: int | None,
        request_id: str,
    ) -> _Queued:
        decoded, info, reservation = await self._decode(namespace, table, request, schema_bytes)
        try:
            queued = _Queued(row_errors=_row_errors(decoded))
            indices = None
            if decoded.problems:
                policy = _policy(request.invalid_row_policy, info.properties)
                whole_payload = any(p.row_index < 0 for p in decoded.problems)
                if policy != ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER or whole_payload:
                    raise RowsRejected(decoded)
                queued.dead_lettered = await self._dead_letters.write(
                    namespace, table, decoded, writer_id=writer_id, offset=offset
                )
                metrics.INGEST_DEAD_LETTERED_ROWS.inc(queued.dead_lettered)
                queued.dead_letter_namespace = namespace
                indices = pa.array(decoded.valid_indices, pa.int64())
            metrics.INGEST_BYTES.inc(decoded.valid.nbytes)
            queued.future = await self._ingest.enqueue(
                namespace,
                table,
                decoded.valid,
                span=decoded.row_count,
                indices=indices,
                writer_id=writer_id,
                offset=offset,
                request_id=request_id,
                reservation=reservation,
            )
        finally:
            if reservation is not None:
                reservation.release()  # taken over by the queued rows, or given back
        return queued

    async def WriteRows(
        self, request: pb.WriteRowsRequest, context: Context
    ) -> pb.WriteRowsResponse:
        """Writes one batch of rows; with a request_id, at most once."""
        schema_bytes = (
            request.arrow_schema.serialized_schema if request.HasField("arrow_schema") else None
        )
        queued = await self._enqueue(
            request.namespace,
            request.table,
            request,
            schema_bytes,
            writer_id="",
            offset=None,
            request_id=request.request_id,
        )
        assert queued.future is not None
        result = await queued.future
        return pb.WriteRowsResponse(
            result=queued.result_proto(result), row_errors=queued.row_errors
        )

    async def GetWriter(
        self, request: pb.GetWriterRequest, context: Context
    ) -> pb.GetWriterResponse:
        """A writer's committed position on a table."""
        info = await self._ingest.get_writer(request.namespace, request.table, request.writer_id)
        writer = ingest_pb2.Writer(
            namespace=request.namespace,
            table=request.table,
            writer_id=request.writer_id,
            next_offset=info.next_offset,
            last_snapshot_id=info.last_snapshot_id or 0,
        )
        writer.last_commit_time.FromMilliseconds(info.last_commit_ms)
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
            queued = await self._enqueue(
                stream.namespace,
                stream.table,
                request,
                stream.schema_bytes,
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
        if isinstance(outcome, _Queued):
            assert outcome.future is not None
            response.row_errors.extend(outcome.row_errors)
            try:
                result: WriteResult = await outcome.future
            except LakehouseError as exc:
                outcome = exc
            else:
                if result.offset is not None:
                    response.offset = result.offset
                response.result.CopyFrom(outcome.result_proto(result))
                return response
        if offset is not None:
            response.offset = offset
        if isinstance(outcome, RowsRejected):
            response.row_errors.extend(outcome.row_errors)
        response.error.CopyFrom(status_proto_for(outcome, ""))
        return response
