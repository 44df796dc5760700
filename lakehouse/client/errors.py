"""A failed call as one exception: code, reason, metadata, field violations, retry delay.

The service puts a ``google.rpc.Status`` in every error's ``grpc-status-details-bin`` trailer:
one ``ErrorInfo`` (a stable ``reason`` such as ``TABLE_NOT_FOUND`` and ``metadata`` such as the
table name), ``BadRequest`` field violations for bad input and a ``RetryInfo`` delay where
waiting helps. ``decode_error`` reads it from a sync ``grpc.RpcError`` or a
``grpc.aio.AioRpcError`` (both are calls with ``code()``, ``details()`` and
``trailing_metadata()``) with grpcio-status, so a caller branches on ``err.reason`` instead of
parsing messages::

    try:
        tables.GetTable(request)
    except grpc.RpcError as e:
        error = decode_error(e)
        if error.reason == "TABLE_NOT_FOUND": ...

A failed job carries the same ``google.rpc.Status`` in ``Job.error``: ``error_from_status``
turns that into the same exception.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["FieldViolation", "LakehouseError", "decode_error", "error_from_status"]


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    """The path of the field, e.g. ``schema.fields[1].type_name``."""
    description: str
    """Why the value is wrong, for people."""


class LakehouseError(Exception):
    """A failed call (or a failed job), decoded.

    Attributes:
        code: The gRPC status code.
        message: The status message, for people.
        reason: ``ErrorInfo.reason``, stable and UPPER_SNAKE (``TABLE_NOT_FOUND``...); empty
            when the error carried no ErrorInfo (e.g. a connection failure of the client).
        domain: ``ErrorInfo.domain`` (``lakehouse.v1``); empty without an ErrorInfo.
        metadata: ``ErrorInfo.metadata`` (the table, the limit...).
        field_violations: ``BadRequest`` field violations, in order.
        retry_delay: ``RetryInfo.retry_delay`` in seconds; None when the service gave none.
        status: The whole ``google.rpc.Status``; None when the call carried none.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: list[FieldViolation] | None = None,
        retry_delay: float | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = list(field_violations or [])
        self.retry_delay = retry_delay
        self.status = status

    @property
    def violated_fields(self) -> list[str]:
        """Just the field paths of the field violations."""
        return [v.field for v in self.field_violations]

    def __str__(self) -> str:
        reason = f" {self.reason}" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    def __repr__(self) -> str:
        parts = [f"code={self.code.name}", f"reason={self.reason!r}", f"message={self.message!r}"]
        if self.metadata:
            parts.append(f"metadata={self.metadata!r}")
        if self.field_violations:
            parts.append(f"field_violations={self.field_violations!r}")
        if self.retry_delay is not None:
            parts.append(f"retry_delay={self.retry_delay!r}")
        return f"LakehouseError({', '.join(parts)})"


def _code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def _unpack(detail: any_pb2.Any, message: Any) -> bool:
    return detail.Is(message.DESCRIPTOR) and bool(detail.Unpack(message))


def error_from_status(
    status: status_pb2.Status, code: grpc.StatusCode | None = None
) -> LakehouseError:
    """The error a ``google.rpc.Status`` describes (e.g. a failed job's ``Job.error``).

    Args:
        status: The status, with its details.
        code: The call's code, when it is known apart from the status.

    Returns:
        The decoded error; details of kinds it does not know are kept only in ``status``.
    """
    error = LakehouseError(code or _code(status.code), status.message, status=status)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if _unpack(detail, info):
            # The contract says one ErrorInfo; the first one wins if a proxy adds more.
            if not error.reason:
                error.reason, error.domain = info.reason, info.domain
                error.metadata = dict(info.metadata)
            continue
        bad_request = error_details_pb2.BadRequest()
        if _unpack(detail, bad_request):
            error.field_violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
            continue
        retry = error_details_pb2.RetryInfo()
        if _unpack(detail, retry):
            error.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return error


def decode_error(err: grpc.RpcError | grpc.aio.AioRpcError) -> LakehouseError:
    """Decodes a failed call's status and error details.

    Args:
        err: What a sync stub raised (a ``grpc.RpcError`` that is also a ``grpc.Call``) or a
            ``grpc.aio.AioRpcError``.

    Returns:
        The decoded error. A call without a status trailer (a connection failure, a deadline
        the client hit) still has its code and message, with an empty reason.
    """
    code: grpc.StatusCode = err.code()
    message: str = err.details() or ""
    status: status_pb2.Status | None = None
    try:
        # from_call checks that the trailer's status agrees with the call's code and message.
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        status = None
    if status is None:
        return LakehouseError(code, message)
    return error_from_status(status, code)
