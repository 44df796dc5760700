"""``write`` over the service's Arrow Flight port, with ``WriteRows`` as the fallback.

A ``WriteRows`` request holds all its rows in one gRPC message, which Python's gRPC builds,
copies and parses (~60 ms for 10 MB both ends). When the client is told the service's Flight
port (``Lakehouse(..., flight="host:50052")``), ``write`` sends the same request without rows
as a ``do_put`` command (a ``WriteRowsRequest`` packed in an ``Any``) and the rows as the
stream's record batches: Flight's C++ transport carries the Arrow buffers as they are, and the
service writes them as that one ``WriteRows`` (same modes, request id, errors, one commit;
docs/flight.md). Both ends share the code here; the async client runs it in a thread.

The gRPC ``WriteRows`` is used instead when the Flight port cannot be used: nothing listens
there (``UNAVAILABLE`` with no reason, from the transport), or the server does not take the
command (``UNIMPLEMENTED``; a release before write modes on Flight reads the command as an
``AppendRowsRequest`` and refuses it on ``descriptor.cmd``, or on a namespace that is the
packed type URL). The client remembers that for ``recheck_seconds`` (during a rolling
upgrade one old replica answered), as it does for read sessions. Falling back is safe even
after rows were sent: the request id is the same on both paths, so a write the Flight call
committed is answered ``already_written``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from typing import Final

import grpc
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2
from google.rpc import status_pb2

from lakehouse.client.arrow import write_rows_request
from lakehouse.client.errors import FieldViolation, LakehouseError, error_from_status
from lakehouse.client.request_builders import Connection, TableName, as_table, split_table
from lakehouse.v1 import ingest_pb2, ingest_service_pb2

__all__ = ["FLIGHT_RECHECK_SECONDS", "FlightWrites", "decode_flight_error"]

#: How long a client writes with gRPC ``WriteRows`` after the Flight port could not be used,
#: before it tries Flight again.
FLIGHT_RECHECK_SECONDS = 300.0

#: Bytes of Arrow buffers per record batch sent: well under any gRPC message limit, and big
#: enough that the per-batch cost does not count.
BATCH_BYTES: Final = 4 * 1024 * 1024

_WRITE_ROWS_TYPE: Final = "type.googleapis.com/lakehouse.v1.WriteRowsRequest"
#: "[REASON] field: message" (the service's Flight error text; docs/flight.md, Errors).
_REASON: Final = re.compile(r"^\[([A-Z0-9_]+)\] (.*)$", re.DOTALL)
_FIELD: Final = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")

_CODES: Final[list[tuple[type[BaseException], grpc.StatusCode]]] = [
    (flight.FlightUnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (flight.FlightUnauthorizedError, grpc.StatusCode.PERMISSION_DENIED),
    (flight.FlightUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (flight.FlightTimedOutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (flight.FlightCancelledError, grpc.StatusCode.CANCELLED),
    (flight.FlightInternalError, grpc.StatusCode.INTERNAL),
    (pa.ArrowNotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (KeyError, grpc.StatusCode.NOT_FOUND),
    (pa.ArrowInvalid, grpc.StatusCode.INVALID_ARGUMENT),
]


def _message(exc: BaseException) -> str:
    """The service's text of a Flight error, without what pyarrow appends to it."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    for tail in (". Detail:", ". gRPC client debug context:", ". Client context:"):
        text = text.split(tail, 1)[0]
    text = text.strip()
    if len(text) > 1 and text[0] == text[-1] == "'":
        text = text[1:-1]  # a NOT_FOUND: the server's KeyError, sent as its repr
    return text


def decode_flight_error(exc: BaseException) -> LakehouseError:
    """A failed Flight call as the ``LakehouseError`` the gRPC port would have raised.

    Errors with details (refusals, ``UNAVAILABLE``) carry the service's ``google.rpc.Status``;
    the others carry its reason and field in their text (``[REASON] field: message``).
    """
    code = next((code for kind, code in _CODES if isinstance(exc, kind)), grpc.StatusCode.UNKNOWN)
    details = getattr(exc, "extra_info", None)
    if details:
        try:
            status = status_pb2.Status.FromString(details)
        except Exception:
            status = None
        if status is not None and status.details:
            return error_from_status(status, code)
    text = _message(exc)
    matched = _REASON.match(text)
    if matched is None:
        return LakehouseError(code, text)
    reason, message = matched.groups()
    violations = []
    field = _FIELD.match(message)
    if field is not None and code == grpc.StatusCode.INVALID_ARGUMENT:
        violations.append(FieldViolation(field.group(1), message[field.end() :]))
    return LakehouseError(
        code, message, reason=reason, domain="lakehouse.v1", field_violations=violations
    )


def _falls_back(error: LakehouseError) -> bool:
    """Whether the Flight port cannot take the write, so WriteRows should (see above)."""
    if error.code == grpc.StatusCode.UNIMPLEMENTED:
        return True
    if error.code == grpc.StatusCode.UNAVAILABLE and not error.reason:
        return True  # the transport's: nothing listens there, or the connection broke
    older = error.violated_fields == ["descriptor.cmd"] and error.reason == "MALFORMED_REQUEST"
    return older or _WRITE_ROWS_TYPE in error.message


def flight_location(address: str, connection: Connection) -> str:
    """The Flight URI of ``address``: itself, or ``host:port`` on the connection's transport.

    ``grpc+tls`` with TLS, ``grpc+tcp`` without.
    """
    if "://" in address:
        return address
    tls = connection.credentials() is not None
    return f"{'grpc+tls' if tls else 'grpc+tcp'}://{address}"


class BulkWrite:
    """One ``write`` call: its rows, its Flight command, and its gRPC request if needed.

    The same for every attempt and both paths (the request is built once, on first use).

    Args:
        table: ``"namespace.table"`` or ``(namespace, table)``.
        data: The rows.
        request_id: The call's request id.
        mode: The ``WriteMode`` value.
        overwrite_filter: The rows ``OVERWRITE`` replaces.
    """

    def __init__(
        self,
        table: TableName,
        data: pa.Table | pa.RecordBatch,
        request_id: str,
        mode: ingest_pb2.WriteMode.ValueType,
        overwrite_filter: str,
    ) -> None:
        namespace, name = split_table(table)
        self.rows = as_table(data)
        self.command = ingest_service_pb2.WriteRowsRequest(
            namespace=namespace,
            table=name,
            request_id=request_id,
            write_mode=mode,
            overwrite_filter=overwrite_filter,
        )
        self._request: ingest_service_pb2.WriteRowsRequest | None = None

    def request(self) -> ingest_service_pb2.WriteRowsRequest:
        """The gRPC ``WriteRowsRequest`` holding the rows (built on first use: ~9 ms/10 MB)."""
        if self._request is None:
            c = self.command
            self._request = write_rows_request(
                c.namespace,
                c.table,
                self.rows,
                request_id=c.request_id,
                write_mode=c.write_mode,
                overwrite_filter=c.overwrite_filter,
            )
        return self._request


class FlightWrites:
    """The Flight path of ``write``: one lazily opened client, and whether to use it.

    Args:
        address: The service's Flight port (``host:port`` or a Flight URI); None: no Flight.
        connection: The client's connection (its TLS material and API key are used).
        recheck_seconds: How long a fallback to ``WriteRows`` holds.
        clock: The clock of ``recheck_seconds``.
    """

    def __init__(
        self,
        address: str | None,
        connection: Connection,
        *,
        recheck_seconds: float = FLIGHT_RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.location = flight_location(address, connection) if address else None
        self._connection = connection
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._not_until: float | None = None
        self._client: flight.FlightClient | None = None
        self._lock = threading.Lock()

    @property
    def usable(self) -> bool:
        """Whether ``write`` tries Flight: a port is known and no fallback holds."""
        until = self._not_until
        return self.location is not None and (until is None or self._clock() >= until)

    def _flight_client(self) -> flight.FlightClient:
        with self._lock:
            if self._client is None:
                c = self._connection
                tls: dict[str, bytes] = {}
                if c.root_certificates:
                    tls["tls_root_certs"] = c.root_certificates
                if c.client_certificate and c.client_key:
                    tls["cert_chain"] = c.client_certificate
                    tls["private_key"] = c.client_key
                self._client = flight.connect(self.location, **tls)
            return self._client

    def write(
        self, request: ingest_service_pb2.WriteRowsRequest, data: pa.Table, timeout: float | None
    ) -> ingest_service_pb2.WriteRowsResponse | None:
        """Writes ``data`` as ``request`` (without rows) says, over Flight; blocks.

        Returns:
            The service's answer; None when the Flight port cannot take it (write with
            ``WriteRows``; remembered for ``recheck_seconds``).

        Raises:
            LakehouseError: The service refused or failed the write (as WriteRows would).
        """
        packed = any_pb2.Any()
        packed.Pack(request)
        headers = [(k.encode(), v.encode()) for k, v in self._connection.metadata()]
        options = flight.FlightCallOptions(timeout=timeout, headers=headers)
        try:
            client = self._flight_client()
            descriptor = flight.FlightDescriptor.for_command(packed.SerializeToString())
            writer, reader = client.do_put(descriptor, data.schema, options=options)
            with writer:
                rows = max(1, math.ceil(data.num_rows * BATCH_BYTES / max(data.nbytes, 1)))
                writer.write_table(data, max_chunksize=rows)
                writer.done_writing()
                answer = reader.read()
        except (pa.ArrowException, KeyError) as exc:
            error = decode_flight_error(exc)
            if _falls_back(error):
                self._not_until = self._clock() + self._recheck_seconds
                return None
            raise error from None
        if answer is None:
            raise LakehouseError(
                grpc.StatusCode.INTERNAL, "the Flight do_put ended without an answer"
            )
        return ingest_service_pb2.WriteRowsResponse.FromString(answer.to_pybytes())

    def close(self) -> None:
        """Closes the Flight client, if one was opened."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
