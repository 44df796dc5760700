"""do_put: an AppendRows stream fed with Flight record batches, acknowledged per batch.

The descriptor command is a serialized ``lakehouse.v1.AppendRowsRequest`` (not packed in an
``Any``: see ``lakehouse.server.flight.writes`` for the packed WriteRows of the other modes)
holding what the first request of an AppendRows stream holds, without rows: the table,
``writer_id``, ``offset``, ``branch`` and ``invalid_row_policy`` (``write_mode`` APPEND or
unset). Each record batch is then one request of that stream: with an ``offset`` in the
command, the first batch has that offset and each next one follows the rows before it, so the
writer's
exactly-once rules are AppendRows' own (a batch resent at a committed offset is
acknowledged ``already_written`` and not written again; a gap is refused). Each batch is
acknowledged, in order, once the commit holding it succeeded, with a serialized
``lakehouse.v1.AppendRowsResponse`` in the ``app_metadata`` of a Flight ``PutResult``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pyarrow as pa

from lakehouse.core.ingest_requests import ArrowRows, IngestRequests, QueuedRows
from lakehouse.core.invalid_rows import RequestedPolicy
from lakehouse.domain.errors import InvalidArgument, LakehouseError
from lakehouse.domain.row_changes import WriteMode
from lakehouse.services.convert import (
    invalid_row_policy_from_proto,
    row_errors_to_proto,
    write_mode_from_proto,
    write_result_to_proto,
)
from lakehouse.v1 import ingest_service_pb2 as pb


def check_table_without_rows(request: pb.AppendRowsRequest | pb.WriteRowsRequest) -> None:
    """Refuses a do_put command that names no table or carries rows of its own.

    Raises:
        InvalidArgument: On ``namespace``/``table`` (unset), or on the rows field set.
    """
    for name in ("namespace", "table"):
        if not getattr(request, name):
            raise InvalidArgument.field(name, "the do_put command must name the table")
    if request.WhichOneof("rows") is not None:
        raise InvalidArgument.field(
            request.WhichOneof("rows") or "rows",
            "the do_put command carries no rows: send them as the stream's record batches",
        )


def check_append_command(request: pb.AppendRowsRequest) -> None:
    """Refuses a do_put command that is not a table's AppendRows stream start in APPEND mode.

    Raises:
        InvalidArgument: A request without a table, with rows, or in a write mode other
            than APPEND.
    """
    check_table_without_rows(request)
    if write_mode_from_proto(request.write_mode) is not WriteMode.APPEND:
        raise InvalidArgument.field(
            "write_mode",
            "an AppendRowsRequest do_put appends: leave it unset or APPEND, or send a "
            "WriteRowsRequest packed in an Any for the other modes (docs/flight.md)",
        )


@dataclass
class PutStream:
    """One do_put: what its command fixed, and the offset of its next batch."""

    namespace: str
    table: str
    writer_id: str
    branch: str
    policy: RequestedPolicy
    schema_bytes: bytes
    next_offset: int | None

    @classmethod
    def open(cls, request: pb.AppendRowsRequest, schema: pa.Schema) -> PutStream:
        """The stream a parsed command opens, for batches of ``schema``."""
        return cls(
            namespace=request.namespace,
            table=request.table,
            writer_id=request.writer_id,
            branch=request.branch,
            policy=invalid_row_policy_from_proto(request.invalid_row_policy),
            schema_bytes=schema.serialize().to_pybytes(),
            next_offset=request.offset if request.HasField("offset") else None,
        )


async def enqueue_batch(
    requests: IngestRequests, stream: PutStream, batch: pa.RecordBatch
) -> tuple[int | None, QueuedRows | LakehouseError]:
    """Queues one batch as the stream's next request; its offset and future (or error)."""
    offset = stream.next_offset
    if offset is not None:
        stream.next_offset = offset + batch.num_rows
    message = batch.serialize()  # the IPC body, read by the core like AppendRows' bytes
    try:
        queued = await requests.enqueue(
            stream.namespace,
            stream.table,
            ArrowRows(lambda: cast(bytes, message), stream.schema_bytes),
            stream.policy,
            writer_id=stream.writer_id,
            offset=offset,
            request_id="",
            branch=stream.branch,
        )
    except LakehouseError as exc:
        return offset, exc
    return offset, queued


async def acknowledgement(
    offset: int | None, outcome: QueuedRows | LakehouseError
) -> tuple[pb.AppendRowsResponse, LakehouseError | None]:
    """The AppendRowsResponse of one batch once its commit is known, and its error if any."""
    response = pb.AppendRowsResponse()
    if offset is not None:
        response.offset = offset
    if isinstance(outcome, QueuedRows):
        response.row_errors.extend(row_errors_to_proto(outcome.problems))
        try:
            result = await outcome.future
        except LakehouseError as exc:
            return response, exc
        if result.offset is not None:
            response.offset = result.offset
        response.result.CopyFrom(write_result_to_proto(outcome, result))
        return response, None
    return response, outcome
