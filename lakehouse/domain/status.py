"""Domain errors to ``google.rpc.Status``: the one place where that mapping happens.

The transport answers failed calls with it, and job records keep a failed attempt's error in
the same form (``Job.error``), so both say the same thing about the same failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from lakehouse.domain.errors import ERROR_DOMAIN, InvalidArgument, LakehouseError, RetryableError

# Errors often quote what the client sent (a name, a value); a status carries that twice in
# the trailers (grpc-message and grpc-status-details-bin), and a client drops the whole call
# with RESOURCE_EXHAUSTED when trailers pass its metadata limit (8-16 KiB). Bounded, a
# status stays a few KiB whatever the request held.
MAX_MESSAGE_CHARS = 500
MAX_DETAIL_CHARS = 200
MAX_FIELD_VIOLATIONS = 10


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class RpcFailure:
    """What the client receives: status code, message and trailing metadata with details."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _status(code: grpc.StatusCode, message: str, details: list[Message]) -> RpcFailure:
    s = rpc_status.to_status(_status_proto(code, message, details))
    return RpcFailure(s.code, s.details, tuple(s.trailing_metadata))


def _status_proto(code: grpc.StatusCode, message: str, details: list[Message]) -> status_pb2.Status:
    proto = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        proto.details.add().Pack(detail)
    return proto


def failure_for(exc: LakehouseError, request_id: str) -> RpcFailure:
    """The status for a domain error: ErrorInfo always, BadRequest and RetryInfo when apt."""
    s = rpc_status.to_status(status_proto_for(exc, request_id))
    return RpcFailure(s.code, s.details, tuple(s.trailing_metadata))


def status_proto_for(exc: LakehouseError, request_id: str) -> status_pb2.Status:
    """The ``google.rpc.Status`` of a domain error (also sent inside stream responses)."""
    metadata = {**exc.metadata, "request_id": request_id} if request_id else dict(exc.metadata)
    info = error_details_pb2.ErrorInfo(
        reason=exc.reason,
        domain=ERROR_DOMAIN,
        metadata={k: _bounded(str(v), MAX_DETAIL_CHARS) for k, v in metadata.items()},
    )
    details: list[Message] = [info]
    if isinstance(exc, InvalidArgument) and exc.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_bounded(v.field, MAX_DETAIL_CHARS),
                        description=_bounded(v.description, MAX_DETAIL_CHARS),
                    )
                    for v in exc.violations[:MAX_FIELD_VIOLATIONS]
                ]
            )
        )
    if isinstance(exc, RetryableError):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(exc.retry_after_seconds * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return _status_proto(exc.code, _bounded(exc.message, MAX_MESSAGE_CHARS), details)


def internal_failure(request_id: str) -> RpcFailure:
    """The status for an unexpected exception: no internals, just a request id to quote."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"request_id": request_id}
    )
    return _status(
        grpc.StatusCode.INTERNAL,
        f"internal error; quote request id {request_id} when reporting it",
        [info],
    )


def simple_failure(code: grpc.StatusCode, message: str, reason: str, request_id: str) -> RpcFailure:
    """A status with only an ErrorInfo (for transport-level errors such as UNIMPLEMENTED)."""
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain=ERROR_DOMAIN, metadata={"request_id": request_id}
    )
    return _status(code, message, [info])
