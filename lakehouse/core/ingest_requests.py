"""One ingest request, from its rows to a queued commit (the use case behind IngestService).

A request's rows are decoded within the write buffers (what decoding takes is charged before
it starts), checked against the table schema, and the invalid-row policy is applied: the
request is rejected, or its invalid rows are dead-lettered. The valid rows are then queued for
the table's group commit. The ingest metrics of rejected, dead-lettered and queued rows are
counted here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.schema import Schema

from lakehouse import metrics
from lakehouse.core.dead_letters import DeadLetters
from lakehouse.core.ingest import Ingest, Reservation, WriteResult
from lakehouse.core.invalid_rows import (
    MAX_LISTED_ROW_ERRORS,
    InvalidRowPolicy,
    RequestedPolicy,
    RowsRejected,
    listed_problems,
    resolve_policy,
)
from lakehouse.core.row_changes import prepare_change
from lakehouse.core.tables import Tables
from lakehouse.domain.errors import InvalidArgument, ResourceExhausted
from lakehouse.domain.refs import check_branch
from lakehouse.domain.row_changes import (
    SEQUENCE_COLUMN,
    RowChange,
    WriteMode,
    change_stream_problems,
    latest_change_per_key,
    required_values,
    with_change_columns,
)
from lakehouse.domain.rows.arrow_conform import conform_arrow
from lakehouse.domain.rows.arrow_read import (
    check_dictionary_bytes,
    dictionary_bytes,
    read_arrow,
    validated,
)
from lakehouse.domain.rows.arrow_size import ArrowLimits, ArrowSize, arrow_size, table_size
from lakehouse.domain.rows.json_rows import decode_json, json_charge
from lakehouse.domain.rows.problems import DecodedRows, RowProblem
from lakehouse.domain.schemas import schema_to_arrow
from lakehouse.domain.tables import TableInfo

SCHEMA_MAX_AGE_SECONDS = 1.0


@dataclass(frozen=True)
class ArrowRows:
    """A request's rows as one serialized Arrow record batch.

    Attributes:
        payload: Reads the serialized record batch. Called when it is needed: protobuf copies
            a bytes field on each access, so it is read once to size and decode a request,
            but a request waiting for buffer room drops that copy and holds only gRPC's
            message (40 waiting 16 MiB requests: 640 MiB less).
        schema_bytes: The serialized Arrow schema sent with the request or its stream, if
            any.
    """

    payload: Callable[[], bytes]
    schema_bytes: bytes | None


@dataclass(frozen=True)
class JsonRows:
    """A request's rows as JSON objects.

    Attributes:
        count: How many rows there are.
        serialized_bytes: Their serialized size (computed in a thread: it serializes).
        to_dicts: The rows as JSON values (called in a thread, after the charge).
    """

    count: int
    serialized_bytes: Callable[[], int]
    to_dicts: Callable[[], list[Any]]


@dataclass(frozen=True)
class TableRows:
    """A request's rows received as Arrow arrays (a Flight ``do_put`` stream's batches).

    Handed over as they arrived, with no IPC round trip: sized from the arrays, charged,
    validated and conformed as ``ArrowRows`` are.

    Attributes:
        table: The rows.
        field: The request field errors about the rows as a whole name.
    """

    table: pa.Table
    field: str


Rows = ArrowRows | JsonRows | TableRows | None
"""A request's rows; None when it carries none."""


@dataclass(frozen=True)
class QueuedRows:
    """A request on its way: the future of its commit and what was dead-lettered.

    Attributes:
        future: Resolves when the commit holding the request's valid rows succeeded.
        problems: The listed problems of its invalid rows.
        dead_lettered: How many rows went to the dead-letter table.
        dead_letter_namespace: The namespace of that table (empty when none went).
    """

    future: asyncio.Future[WriteResult]
    problems: list[RowProblem]
    dead_lettered: int = 0
    dead_letter_namespace: str = ""


@dataclass
class StagedRows:
    """A request decoded and checked, not queued yet.

    Attributes:
        data: The rows to write (with the change columns, for a change stream).
        span: Rows the request counts in the writer's sequence.
        indices: The request position of each row of ``data``, when some were left out
            (dead-lettered, or older changes of a key).
        problems: The listed problems of dead-lettered rows.
        change: The write mode's change; None appends.
        reservation: The write-buffer bytes held for the rows.
        dead_lettered: How many rows went to the dead-letter table.
        dead_letter_namespace: The namespace of that table (empty when none went).
    """

    data: pa.Table
    span: int
    indices: pa.Array | None
    problems: list[RowProblem]
    change: RowChange | None
    reservation: Reservation | None
    dead_lettered: int = 0
    dead_letter_namespace: str = ""


def _latest_changes(
    data: pa.Table, keys: tuple[str, ...], info: TableInfo
) -> tuple[pa.Table, pa.Array | None]:
    """A change stream's rows checked, keeping the newest change of each key."""
    required_values(data, info.schema)
    has_sequence = SEQUENCE_COLUMN in data.column_names and data[SEQUENCE_COLUMN].null_count < len(
        data
    )
    change_stream_problems(data, has_sequence=has_sequence)
    return latest_change_per_key(data, keys, has_sequence=has_sequence)


def _combined(staged: list[StagedRows]) -> tuple[pa.Table, int, pa.Array | None]:
    """Several staged requests of one stream as one write: rows, span and positions."""
    data = pa.concat_tables([one.data for one in staged])
    positions: list[pa.Array] = []
    base = 0
    for one in staged:
        if one.indices is None:
            positions.append(pa.array(range(base, base + one.data.num_rows), pa.int64()))
        else:
            positions.append(pc.add(one.indices, base))
        base += one.span
    indices = None
    if any(one.indices is not None for one in staged):
        indices = pa.concat_arrays(positions)
    return data, base, indices


def _sized_payload(rows: ArrowRows, schema: Schema, limits: ArrowLimits) -> tuple[bytes, ArrowSize]:
    """A request's payload (read once: protobuf copies it on each access) and its size."""
    payload = rows.payload()
    return payload, arrow_size(payload, rows.schema_bytes, schema, limits)


def _read_conformed(
    rows: ArrowRows | TableRows, payload: bytes | None, schema: Schema, max_bytes: int
) -> DecodedRows | tuple[pa.Table, int]:
    """Reads and conforms a request's rows in one go, unless dictionaries need a charge.

    Returns:
        The decoded rows; or, when dictionary-encoded columns decode to more than their wire
        size, the table as read and the bytes they take (charge them, then conform).

    Raises:
        ArrowTooLarge: Dictionary-encoded columns that decode to more than ``max_bytes``.
        MemoryError: An allocation failed.
    """
    if isinstance(rows, TableRows):
        read = validated(rows.table, schema)
        field = rows.field
    else:
        payload = rows.payload() if payload is None else payload
        read = read_arrow(payload, rows.schema_bytes, schema)
        field = "arrow_record_batch.serialized_record_batch"
    if isinstance(read, DecodedRows):
        return read  # corrupt bytes: nothing to conform
    expanded = dictionary_bytes(read)
    check_dictionary_bytes(expanded, max_bytes, field)
    if expanded:
        return read, expanded
    return conform_arrow(read, schema)


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


class IngestRequests:
    """Decodes a request's rows, applies the invalid-row policy and queues the valid rows."""

    def __init__(self, ingest: Ingest, tables: Tables) -> None:
        self._ingest = ingest
        self._tables = tables
        self._dead_letters = DeadLetters(tables, ingest)

    @property
    def limits(self) -> ArrowLimits:
        """What one request may decode to (``ingest.max_request_rows``/``_bytes``)."""
        settings = self._ingest.settings
        return ArrowLimits(settings.max_request_rows, settings.max_request_bytes)

    async def _decode(
        self, namespace: str, table: str, rows: Rows, mode: WriteMode = WriteMode.APPEND
    ) -> tuple[DecodedRows, TableInfo, Reservation | None]:
        # The schema only: the commit checks the table again, so a second-old copy will do.
        info = await self._tables.get_table(namespace, table, max_age=SCHEMA_MAX_AGE_SECONDS)
        # A change stream's rows may carry the change columns: decoded as columns of their own.
        schema = with_change_columns(info.schema) if mode is WriteMode.UPSERT else info.schema
        settings = self._ingest.settings
        reservation: Reservation | None = None
        if isinstance(rows, ArrowRows | TableRows):
            limits = self.limits
            # What decoding takes is read from the headers and charged before it starts, so
            # concurrent requests (and a few bytes that claim gigabytes) stay within the
            # write buffers; decoding then runs in a thread, away from the event loop.
            payload: bytes | None
            if isinstance(rows, TableRows):
                payload, size = None, table_size(rows.table, schema, limits, rows.field)
            else:
                payload, size = await asyncio.to_thread(_sized_payload, rows, schema, limits)
            charge = max(size.charge, 1)
            reservation = self._ingest.try_reserve(namespace, table, charge)
            if reservation is None:
                # No room now: the request waits without its copy of the payload, and reads
                # it again once it has room (see ArrowRows).
                payload = None
                reservation = await self._ingest.reserve(namespace, table, charge)
            try:
                read = await asyncio.to_thread(
                    _read_conformed, rows, payload, schema, limits.max_bytes
                )
                del payload  # the decoded columns hold what they need of it
                if isinstance(read, DecodedRows):
                    decoded = read
                else:
                    # Dictionary-encoded columns: decoding them to plain values takes what the
                    # indices pick, charged before the casts allocate it.
                    table_read, expanded = read
                    await self._ingest.grow(reservation, expanded)
                    decoded = await asyncio.to_thread(conform_arrow, table_read, schema)
            except MemoryError:
                reservation.release()
                raise _out_of_memory() from None
            except BaseException:
                reservation.release()
                raise
        elif isinstance(rows, JsonRows):
            if rows.count > settings.max_request_rows:
                raise InvalidArgument.field(
                    "json_rows.rows",
                    f"holds {rows.count} rows; one request may hold at most "
                    f"{settings.max_request_rows}: split it",
                    reason="TOO_MANY_ROWS",
                )
            # JSON rows carry no header that tells what converting them takes (Python
            # objects, then Arrow): an estimate from their serialized size is charged before
            # converting, so concurrent JSON requests share the buffers' hard bound too.
            serialized = await asyncio.to_thread(rows.serialized_bytes)
            charge = json_charge(serialized, rows.count)
            reservation = await self._ingest.reserve(namespace, table, charge)
            try:
                decoded = await asyncio.to_thread(lambda: decode_json(rows.to_dicts(), schema))
            except MemoryError:
                reservation.release()
                raise _out_of_memory() from None
            except BaseException:
                reservation.release()
                raise
        else:
            empty = pa.Table.from_batches([], schema=schema_to_arrow(schema))
            decoded = DecodedRows(empty, [], [], {}, 0)
        for problem in decoded.problems[:MAX_LISTED_ROW_ERRORS]:
            metrics.INGEST_REJECTED_ROWS.labels(problem.reason.name).inc()
        return decoded, info, reservation

    async def enqueue(
        self,
        namespace: str,
        table: str,
        rows: Rows,
        policy: RequestedPolicy,
        *,
        writer_id: str,
        offset: int | None,
        request_id: str,
        mode: WriteMode = WriteMode.APPEND,
        overwrite_filter: str = "",
        branch: str = "",
    ) -> QueuedRows:
        """Decodes a request's rows and queues the valid ones for the table's group commit.

        In a mode other than APPEND the write is committed alone, and invalid rows are always
        rejected (a partial overwrite would lose rows).

        Args:
            namespace: The table's namespace.
            table: The table's name.
            rows: The request's rows.
            policy: What the request asks for its invalid rows (None: the table's choice).
            writer_id: The writer of a stream with offsets, or empty.
            offset: The request's offset in the writer's sequence, if any.
            request_id: The request id of an idempotent write, or empty.
            mode: What the write does to the rows already in the table.
            overwrite_filter: OVERWRITE: the rows replaced (row filter syntax).
            branch: The branch committed to (empty: main); invalid rows dead-lettered go to
                the dead-letter table's main all the same.

        Returns:
            The queued request; await its future for the commit.

        Raises:
            RowsRejected: Invalid rows under the reject policy, or a payload that could not
                be read at all.
            InvalidArgument: A malformed request (too many rows, an unknown policy...).
            ResourceExhausted: No room in the write buffers, or no memory to decode.
            NotFound: The table does not exist.
            Unavailable: The catalog or the object store failed.
            FailedPrecondition: The namespace's dead-letter table has another schema; or the
                mode does not fit the table (no identifier fields, not partitioned).
        """
        staged = await self.stage(
            namespace,
            table,
            rows,
            policy,
            mode,
            overwrite_filter,
            writer_id=writer_id,
            offset=offset,
            branch=branch,
        )
        return await self.enqueue_staged(
            namespace,
            table,
            [staged],
            writer_id=writer_id,
            offset=offset,
            request_id=request_id,
            branch=branch,
        )

    async def stage(
        self,
        namespace: str,
        table: str,
        rows: Rows,
        policy: RequestedPolicy,
        mode: WriteMode = WriteMode.APPEND,
        overwrite_filter: str = "",
        *,
        writer_id: str = "",
        offset: int | None = None,
        branch: str = "",
    ) -> StagedRows:
        """Decodes and checks a request's rows, holding their write-buffer bytes (not queued).

        An AppendRows stream in an overwrite mode stages each request and queues them all as
        one write when the client half-closes (``enqueue_staged``); a plain request is staged
        and queued at once. Release ``reservation`` of a staged request that is not queued.

        Raises:
            As ``enqueue``.
        """
        check_branch("branch", branch)  # before any work: a bad name changes nothing
        if mode is WriteMode.APPEND and not overwrite_filter:
            change = None
            decoded, info, reservation = await self._decode(namespace, table, rows)
        else:
            info = await self._tables.get_table(namespace, table, max_age=SCHEMA_MAX_AGE_SECONDS)
            change = await prepare_change(
                info, mode, overwrite_filter, filter_field="overwrite_filter"
            )
            decoded, info, reservation = await self._decode(namespace, table, rows, mode)
        try:
            if change is not None:
                return await self._staged_change(decoded, info, change, reservation)
            return await self._staged_append(
                namespace, table, decoded, info, policy, writer_id, offset, reservation, branch
            )
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise

    async def _staged_change(
        self,
        decoded: DecodedRows,
        info: TableInfo,
        change: RowChange,
        reservation: Reservation | None,
    ) -> StagedRows:
        if decoded.problems:
            raise RowsRejected(decoded)
        data, indices = decoded.valid, None
        if change.mode is WriteMode.UPSERT:
            # Arrow compute over the whole request: in a thread, off the event loop.
            data, indices = await asyncio.to_thread(_latest_changes, data, change.key_columns, info)
        metrics.INGEST_BYTES.inc(data.nbytes)
        return StagedRows(data, decoded.row_count, indices, [], change, reservation)

    async def _staged_append(
        self,
        namespace: str,
        table: str,
        decoded: DecodedRows,
        info: TableInfo,
        policy: RequestedPolicy,
        writer_id: str,
        offset: int | None,
        reservation: Reservation | None,
        branch: str = "",
    ) -> StagedRows:
        problems = listed_problems(decoded)
        dead_lettered = 0
        dead_letter_namespace = ""
        indices = None
        if decoded.problems:
            resolved = resolve_policy(policy, info.properties)
            whole_payload = any(p.row_index < 0 for p in decoded.problems)
            if resolved != InvalidRowPolicy.DEAD_LETTER or whole_payload:
                raise RowsRejected(decoded)
            # Dead letters are written before the commit: a write the commit would refuse
            # for its branch must not leave them behind.
            await self._ingest.check_branch(namespace, table, branch)
            dead_lettered = await self._dead_letters.write(
                namespace, table, decoded, writer_id=writer_id, offset=offset
            )
            metrics.INGEST_DEAD_LETTERED_ROWS.inc(dead_lettered)
            dead_letter_namespace = namespace
            indices = pa.array(decoded.valid_indices, pa.int64())
        metrics.INGEST_BYTES.inc(decoded.valid.nbytes)
        return StagedRows(
            decoded.valid,
            decoded.row_count,
            indices,
            problems,
            None,
            reservation,
            dead_lettered,
            dead_letter_namespace,
        )

    async def enqueue_staged(
        self,
        namespace: str,
        table: str,
        staged: list[StagedRows],
        *,
        writer_id: str,
        offset: int | None,
        request_id: str = "",
        branch: str = "",
    ) -> QueuedRows:
        """Queues staged requests as one write (their reservations are taken over).

        Raises:
            InvalidArgument: Bad names, ids or offset.
            ResourceExhausted: The write buffer stayed full.
        """
        first = staged[0]
        try:
            if len(staged) == 1:
                data, span, indices = first.data, first.span, first.indices
            else:
                data, span, indices = _combined(staged)
            reservation = first.reservation
            for other in staged[1:]:
                if other.reservation is not None and reservation is not None:
                    reservation.nbytes += other.reservation.nbytes  # one charge for the write
                    other.reservation.nbytes = 0
            future = await self._ingest.enqueue(
                namespace,
                table,
                data,
                span=span,
                indices=indices,
                writer_id=writer_id,
                offset=offset,
                request_id=request_id,
                reservation=reservation,
                change=first.change,
                branch=branch,
            )
        finally:
            for one in staged:
                if one.reservation is not None:
                    one.reservation.release()  # taken over by the queued rows, or given back
        return QueuedRows(future, first.problems, first.dead_lettered, first.dead_letter_namespace)
