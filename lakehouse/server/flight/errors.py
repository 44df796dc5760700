"""Domain errors as Flight errors: the gRPC status code a Flight client sees, and its text.

pyarrow maps a handler's exception to a gRPC status: its Flight error classes to
UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED and INTERNAL
(with ``extra_info`` sent as the ``grpc-status-details-bin`` trailer: a ``google.rpc.Status``
with the ``ErrorInfo`` and any ``RetryInfo``, as on the gRPC port; RESOURCE_EXHAUSTED, which
Flight has no class for, is UNAVAILABLE with its details); ``ArrowInvalid`` to INVALID_ARGUMENT and
``KeyError`` to NOT_FOUND, with no details besides the message (pyarrow appends a short
traceback of this module to those). The message always starts with the stable reason, so a
Flight client in any language can branch on it: ``[UNKNOWN_COLUMN] columns.paths[0]: no
column 'x'``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from lakehouse.domain.errors import LakehouseError
from lakehouse.domain.status import status_proto_for
from lakehouse.server.flight.tickets import TicketError
from lakehouse.server.metrics import GO_CODE_NAMES

log = logging.getLogger(__name__)

_WITH_DETAILS: dict[grpc.StatusCode, type[flight.FlightError]] = {
    grpc.StatusCode.UNAUTHENTICATED: flight.FlightUnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: flight.FlightUnauthorizedError,
    grpc.StatusCode.UNAVAILABLE: flight.FlightUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    grpc.StatusCode.CANCELLED: flight.FlightCancelledError,
}
#: Codes with no Flight error class: the nearest one a client can retry on.
_RETRYABLE = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
_BAD_INPUT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ALREADY_EXISTS,
}


def flight_error(exc: LakehouseError | TicketError) -> Exception:
    """The exception a Flight handler raises for ``exc``."""
    error: Exception  # pyarrow's classes are untyped: the one annotation says what they are
    if isinstance(exc, TicketError):
        text = f"[{exc.reason}] {exc}"
        if exc.reason == "FLIGHT_TICKET_OTHER_PRINCIPAL":
            error = flight.FlightUnauthorizedError(text)
        else:
            error = flight.FlightUnauthenticatedError(text)
        return error
    text = f"[{exc.reason}] {exc.message}"
    if exc.code in _WITH_DETAILS:
        details = status_proto_for(exc, "").SerializeToString()
        error = _WITH_DETAILS[exc.code](text, extra_info=details)
    elif exc.code in _RETRYABLE:
        # With the details, so a RATE_LIMITED or SERVER_OVERLOADED refusal carries its RetryInfo.
        details = status_proto_for(exc, "").SerializeToString()
        error = flight.FlightUnavailableError(text, extra_info=details)
    elif exc.code in _BAD_INPUT:
        error = pa.ArrowInvalid(text)
    elif exc.code == grpc.StatusCode.NOT_FOUND:
        error = KeyError(text)
    else:
        error = flight.FlightInternalError(text)
    return error


@contextlib.contextmanager
def flight_errors() -> Iterator[None]:
    """Turns the domain errors raised inside into the Flight errors a handler raises."""
    try:
        yield
    except (LakehouseError, TicketError) as exc:
        raise flight_error(exc) from None
    except pa.ArrowException:
        raise  # Flight's own errors, and Arrow's about what the client sent (a bad stream)
    except Exception:
        # A bug: the traceback goes to the log, not to the client (pyarrow would send it).
        log.exception("unexpected exception in a Flight call")
        raise flight.FlightInternalError(
            "[INTERNAL] internal error: the server log has the details"
        ) from None


def code_name(exc: BaseException | None) -> str:
    """The gRPC code (Go's spelling, as in ``grpc_code``) a call ending with ``exc`` had."""
    if exc is None:
        return "OK"
    for code, kind in _WITH_DETAILS.items():
        if isinstance(exc, kind):
            return GO_CODE_NAMES[code]
    if isinstance(exc, flight.FlightInternalError | flight.FlightServerError):
        return "Internal"
    if isinstance(exc, KeyError | pa.ArrowKeyError):
        return "NotFound"
    if isinstance(exc, pa.ArrowInvalid | ValueError):
        return "InvalidArgument"
    if isinstance(exc, NotImplementedError | pa.ArrowNotImplementedError):
        return "Unimplemented"
    return "Unknown"
