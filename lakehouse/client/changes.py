"""Row-level changes for the lakehouse.v1 API: change streams (CDC) and ``DeleteRows``.

A change stream mirrors a table by key: each change upserts a row or deletes a key, and a
sequence number (a log position such as a PostgreSQL LSN) orders the changes of one key. The
service applies such rows in ``WRITE_MODE_UPSERT`` on a table with identifier fields; two
columns that are not part of the table carry the change: ``_change_type`` (``"UPSERT"`` or
``"DELETE"``) and ``_change_sequence_number`` (a long; within one write the highest per key
wins). ``changes_to_arrow`` builds those rows for a table's Arrow schema::

    changes = [
        Change.upsert({"id": 7, "name": "Ada"}, sequence_number=101),
        Change.delete({"id": 3}, sequence_number=102),
    ]
    data = changes_to_arrow(changes, schema, key_columns=["id"])
    for ack in ingest.AppendRows(
        append_rows_requests("crm", "customers", data, writer_id="crm-mirror",
                             write_mode=ingest_pb2.WRITE_MODE_UPSERT)
    ): ...

With a ``writer_id`` the stream is exactly once: a writer that restarts resends from
``writer_next_offset`` (``GetWriter``'s ``next_offset``, 0 for a new writer) as
``start_offset``, and what was committed is skipped.

This module needs pyarrow, an optional dependency of the client package
(``pip install './gen[arrow]'``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from lakehouse.v1 import ingest_service_pb2, table_service_pb2

try:
    import pyarrow as pa
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lakehouse.client.changes needs pyarrow: pip install 'lakehouse-client[arrow]' "
        "(from a checkout: pip install './gen[arrow]')"
    ) from e

if TYPE_CHECKING:
    from lakehouse.v1 import ingest_service_pb2_grpc

__all__ = [
    "CHANGE_SEQUENCE_NUMBER_COLUMN",
    "CHANGE_TYPE_COLUMN",
    "Change",
    "ChangeKind",
    "changes_to_arrow",
    "delete_rows_request",
    "writer_next_offset",
]

#: The column that says what a row of a change stream does: "UPSERT" or "DELETE".
CHANGE_TYPE_COLUMN = "_change_type"
#: The column that orders the changes of one key: within one write the highest wins.
CHANGE_SEQUENCE_NUMBER_COLUMN = "_change_sequence_number"


class ChangeKind(enum.Enum):
    """What a change does to the row of its key."""

    UPSERT = "UPSERT"
    """The row replaces the row with the same key, or is inserted if there is none."""
    DELETE = "DELETE"
    """The row with this key is deleted; a key that does not exist is not an error."""


@dataclass(frozen=True)
class Change:
    """One change of a change stream.

    Attributes:
        kind: Upsert the row, or delete the row of its key.
        row: Column name to value. An UPSERT holds the whole row (columns left out are
            null); a DELETE needs only the key columns.
        sequence_number: The change's position in its log (e.g. a PostgreSQL LSN as an
            integer); None when the stream has no order. Either every change of one
            ``changes_to_arrow`` call has one or none has.
    """

    kind: ChangeKind
    row: Mapping[str, Any]
    sequence_number: int | None = None

    @classmethod
    def upsert(cls, row: Mapping[str, Any], sequence_number: int | None = None) -> Change:
        """An UPSERT of ``row``.

        Args:
            row: The whole row, column name to value.
            sequence_number: The change's position in its log, if the stream has one.

        Returns:
            The change.
        """
        return cls(ChangeKind.UPSERT, row, sequence_number)

    @classmethod
    def delete(cls, key: Mapping[str, Any], sequence_number: int | None = None) -> Change:
        """A DELETE of the row with ``key``.

        Args:
            key: The key columns of the row, column name to value.
            sequence_number: The change's position in its log, if the stream has one.

        Returns:
            The change.
        """
        return cls(ChangeKind.DELETE, key, sequence_number)


def changes_to_arrow(
    changes: Iterable[Change],
    schema: pa.Schema,
    *,
    key_columns: Sequence[str] | None = None,
) -> pa.Table:
    """Turns changes into one Arrow table to write in ``WRITE_MODE_UPSERT``.

    The table has the columns of ``schema`` (all nullable, since a DELETE row holds only its
    key), then ``_change_type`` and, when the changes have sequence numbers,
    ``_change_sequence_number``. Rows keep the order of ``changes``. Pass the result to
    ``append_rows_requests(..., write_mode=ingest_pb2.WRITE_MODE_UPSERT, writer_id=...)`` or
    ``write_rows_request(..., write_mode=ingest_pb2.WRITE_MODE_UPSERT)``.

    Args:
        changes: The changes, in log order.
        schema: The table's Arrow schema (e.g. ``read_table(..., row_limit=1).schema``, or
            written by hand); its field types convert the values.
        key_columns: The table's identifier fields. When given, every change must hold a
            non-null value for each, and a DELETE row keeps only them (other values it
            carries are dropped); when None, rows are taken as they are.

    Returns:
        The change rows.

    Raises:
        ValueError: A row names a column that ``schema`` does not have, a key column is
            missing, some changes have a sequence number and others not, a key column is not
            in ``schema``, or a kind is not a ``ChangeKind``.
        pyarrow.ArrowException: A value does not convert to its column's type.
    """
    names = set(schema.names)
    keys = list(key_columns) if key_columns is not None else None
    if keys is not None:
        unknown_keys = [k for k in keys if k not in names]
        if unknown_keys:
            raise ValueError(f"key columns {unknown_keys} are not in the schema")
    rows: list[dict[str, Any]] = []
    sequenced: bool | None = None
    for index, change in enumerate(changes):
        if not isinstance(change.kind, ChangeKind):
            raise ValueError(f"change {index}: kind {change.kind!r} is not a ChangeKind")
        unknown = sorted(set(change.row) - names)
        if unknown:
            raise ValueError(f"change {index}: columns {unknown} are not in the schema")
        has_number = change.sequence_number is not None
        if sequenced is None:
            sequenced = has_number
        elif has_number != sequenced:
            # The service refuses a mix too: the order of the others would be undefined.
            raise ValueError(
                f"change {index}: every change has a sequence number or none has "
                f"(change 0 {'has' if sequenced else 'has none'})"
            )
        row = dict(change.row)
        if keys is not None:
            missing = [k for k in keys if row.get(k) is None]
            if missing:
                raise ValueError(f"change {index}: key columns {missing} are missing or null")
            if change.kind is ChangeKind.DELETE:
                row = {k: row[k] for k in keys}
        row[CHANGE_TYPE_COLUMN] = change.kind.value
        if has_number:
            row[CHANGE_SEQUENCE_NUMBER_COLUMN] = change.sequence_number
        rows.append(row)
    fields = [field.with_nullable(True) for field in schema]
    fields.append(pa.field(CHANGE_TYPE_COLUMN, pa.string()))
    if sequenced:
        fields.append(pa.field(CHANGE_SEQUENCE_NUMBER_COLUMN, pa.int64()))
    return pa.Table.from_pylist(rows, schema=pa.schema(fields, metadata=schema.metadata))


def delete_rows_request(
    namespace: str,
    table: str,
    row_filter: str,
    *,
    request_id: str = "",
    expected_etag: str = "",
) -> table_service_pb2.DeleteRowsRequest:
    """Builds a ``DeleteRowsRequest``.

    Args:
        namespace: The table's namespace.
        table: The table name.
        row_filter: The rows to delete, in the row filter syntax of ``ReadRows``, e.g.
            ``"customer_id = 42"``. Required: deleting every row is ``"true"`` spelled out.
        request_id: An id that makes retries safe (the same id twice deletes once); empty
            for none.
        expected_etag: ``GetTable``'s etag: the delete happens only if the table has not
            changed since (else ``ABORTED``, reason ``ETAG_MISMATCH``); empty for none.

    Returns:
        The request, to pass to ``TableServiceStub.DeleteRows``.

    Raises:
        ValueError: row_filter is empty.
    """
    if not row_filter.strip():
        raise ValueError('row_filter is required: to delete every row, say "true"')
    return table_service_pb2.DeleteRowsRequest(
        namespace=namespace,
        table=table,
        row_filter=row_filter,
        request_id=request_id,
        expected_etag=expected_etag,
    )


def writer_next_offset(
    stub: ingest_service_pb2_grpc.IngestServiceStub,
    namespace: str,
    table: str,
    writer_id: str,
    *,
    branch: str = "",
    timeout: float | None = None,
    metadata: Sequence[tuple[str, str | bytes]] | None = None,
) -> int:
    """The offset a writer resumes from: ``GetWriter``'s ``next_offset``, 0 for a new writer.

    ``GetWriter`` answers ``NOT_FOUND`` for a writer that has committed nothing on the table;
    for a writer about to start, that is offset 0.

    Args:
        stub: An ``IngestServiceStub`` on a sync ``grpc.Channel``.
        namespace: The table's namespace.
        table: The table name.
        writer_id: The writer id.
        branch: The branch the writer writes to; empty for main (offsets are per branch).
        timeout: The deadline of the call, in seconds.
        metadata: Call metadata, e.g. ``[("authorization", "Bearer <key>")]``.

    Returns:
        The offset of the next row the service expects from the writer.

    Raises:
        grpc.RpcError: The call failed otherwise (e.g. ``NOT_FOUND`` with no such table).
    """
    request = ingest_service_pb2.GetWriterRequest(
        namespace=namespace, table=table, writer_id=writer_id, branch=branch
    )
    try:
        call_metadata = None if metadata is None else tuple(metadata)
        reply = stub.GetWriter(request, timeout=timeout, metadata=call_metadata)
        return int(reply.writer.next_offset)
    except grpc.RpcError as exc:
        if _reason(exc) == "WRITER_NOT_FOUND":
            return 0
        raise


def _reason(exc: grpc.RpcError) -> str:
    """The ``ErrorInfo`` reason of a failed call; "" when it carries none."""
    # A failed call's error is also its grpc.Call (typeshed's classes do not say so).
    trailing_metadata = getattr(exc, "trailing_metadata", None)
    trailers: Sequence[tuple[str, str | bytes]] = (
        (trailing_metadata() or ()) if callable(trailing_metadata) else ()
    )
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""
