"""do_put in a write mode: one WriteRows whose rows are the stream's record batches.

The descriptor command is a ``google.protobuf.Any`` packing a ``lakehouse.v1.WriteRowsRequest``
without rows (type URL ``type.googleapis.com/lakehouse.v1.WriteRowsRequest``, Flight SQL's
convention, as for reads); a command that is not an ``Any`` is the bare
``AppendRowsRequest`` of an append stream (``lakehouse.server.flight.appends``). Telling them
apart is unambiguous: a bare ``AppendRowsRequest`` read as an ``Any`` has its namespace as
type URL, and no valid namespace holds a ``/``.

The batches are gathered as they come, bounded as one WriteRows request is (the ingest
limits on one request's rows and bytes: refused as soon as the stream passes them, before the
rest is read), then handed to WriteRows' own core path as one Arrow table, with no IPC round
trip: the same write modes, ``request_id``, invalid-row policy and errors, one commit. The
answer is one ``PutResult`` whose ``app_metadata`` is the serialized ``WriteRowsResponse``.
"""

from __future__ import annotations

import time
from typing import Final

import pyarrow as pa
import pyarrow.flight as flight

from lakehouse.domain.errors import DeadlineExceeded, InvalidArgument
from lakehouse.domain.rows.arrow_size import ArrowLimits, checked_size
from lakehouse.server import metrics
from lakehouse.server.flight.appends import check_table_without_rows
from lakehouse.server.flight.commands import TYPE_PREFIX, unpacked
from lakehouse.server.flight.sources import parse_command
from lakehouse.v1 import ingest_service_pb2 as pb

WRITE_ROWS_TYPE: Final = TYPE_PREFIX + "lakehouse.v1.WriteRowsRequest"

#: The field errors about a do_put's rows as a whole name: the stream's record batches.
BATCHES_FIELD: Final = "batches"


def parse_put_command(command: bytes) -> pb.AppendRowsRequest | pb.WriteRowsRequest:
    """A do_put descriptor command: an append stream's start, or a packed WriteRows, unchecked.

    Raises:
        InvalidArgument: On field ``descriptor.cmd``: an ``Any`` of another type, or bytes
            that are neither (reason ``MALFORMED_REQUEST``).
    """
    type_url, body = unpacked(
        command,
        (WRITE_ROWS_TYPE,),
        "do_put takes a lakehouse.v1.AppendRowsRequest, or a lakehouse.v1.WriteRowsRequest "
        "packed in an Any",
    )
    if type_url == WRITE_ROWS_TYPE:
        return parse_command(pb.WriteRowsRequest, body)
    return parse_command(pb.AppendRowsRequest, body)


def check_write_command(request: pb.WriteRowsRequest) -> None:
    """Refuses a WriteRows command that names no table or carries rows of its own.

    The rest (mode, filter, request id, branch, policy) is WriteRows' to check, as on the
    gRPC port.

    Raises:
        InvalidArgument: A request without a table, with rows, or with an Arrow schema
            (the stream carries its own).
    """
    check_table_without_rows(request)
    if request.HasField("arrow_schema"):
        raise InvalidArgument.field(
            "arrow_schema", "leave it unset in a do_put command: the stream carries its schema"
        )


def received_rows(
    reader: flight.MetadataRecordBatchReader, limits: ArrowLimits, ends: float, limit: float
) -> pa.Table:
    """The stream's batches as one table (no copy), refused once past one request's limits.

    Args:
        reader: The do_put's reader.
        limits: What one WriteRows request may decode to.
        ends: The ``time.monotonic()`` the call's stream limit ends at.
        limit: That limit, in seconds (for the error).

    Raises:
        ArrowTooLarge: On field ``batches``: more rows, or more bytes than one request may
            decode to (the table's columns are counted once it is looked up).
        DeadlineExceeded: The stream went on past the stream limit.
    """
    batches: list[pa.RecordBatch] = []
    rows = body_bytes = 0
    for chunk in reader:
        if chunk.data is None:
            continue  # metadata without rows
        metrics.FLIGHT_BATCHES_RECEIVED.labels("do_put").inc()
        metrics.FLIGHT_BYTES_RECEIVED.labels("do_put").inc(chunk.data.nbytes)
        rows += chunk.data.num_rows
        body_bytes += chunk.data.nbytes
        checked_size(rows, body_bytes, None, limits, BATCHES_FIELD)
        batches.append(chunk.data)
        if time.monotonic() > ends:
            raise DeadlineExceeded(
                f"a Flight do_put reached the server's limit of {limit:g} s "
                "(stream_timeout_seconds) before its last batch: nothing was written",
                metadata={"limit_seconds": f"{limit:g}"},
            )
    return pa.Table.from_batches(batches, schema=reader.schema)


def commit_deadline(limit: float) -> DeadlineExceeded:
    """The error of a WriteRows do_put whose commit was not known within the stream limit.

    The commit goes on: the same request sent again answers it (``already_written``) or
    writes it.
    """
    return DeadlineExceeded(
        f"a Flight do_put reached the server's limit of {limit:g} s (stream_timeout_seconds) "
        "before its commit was known: send it again with its request_id",
        metadata={"limit_seconds": f"{limit:g}"},
    )
