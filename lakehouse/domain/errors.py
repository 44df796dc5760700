"""The one error taxonomy of the service.

Every domain error is a plain exception that declares its gRPC status code and a stable
``ErrorInfo`` reason. Adapters translate backend errors into these at the call site; the
transport layer turns them into ``google.rpc.Status`` in exactly one place
(``lakehouse.domain.status``: for RPC answers and for the errors job records keep).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

ERROR_DOMAIN = "lakehouse.v1"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request (becomes a ``google.rpc.BadRequest`` violation)."""

    field: str
    description: str


class LakehouseError(Exception):
    """Base of all domain errors.

    Attributes:
        code: The gRPC status code clients see.
        reason: The stable ``ErrorInfo.reason`` (UPPER_SNAKE); clients may branch on it.
        metadata: Extra ``ErrorInfo.metadata`` (for example the table name).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(LakehouseError):
    """The request is malformed; it changed nothing."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: list[FieldViolation] | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """An error about one field, phrased as ``field: description``."""
        return cls(
            f"{field}: {description}",
            violations=[FieldViolation(field, description)],
            reason=reason,
        )


class NotFound(LakehouseError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(LakehouseError):
    """The resource to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(LakehouseError):
    """The system is not in a state that allows the operation (e.g. a non-empty namespace)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Conflict(LakehouseError):
    """A concurrent change won (a commit conflict or a stale etag); retrying may succeed."""

    code = grpc.StatusCode.ABORTED
    reason = "COMMIT_CONFLICT"


class OutOfRange(LakehouseError):
    """A value is past the valid range (e.g. an offset beyond what was written)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OUT_OF_RANGE"


class RetryableError(LakehouseError):
    """An error the client should retry after a delay (sent as ``google.rpc.RetryInfo``).

    Attributes:
        retry_after_seconds: The delay suggested to clients.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float = 1.0,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(RetryableError):
    """A backing service (catalog, object store, engine) failed; retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "BACKEND_UNAVAILABLE"


class CircuitOpen(Unavailable):
    """A backing service failed repeatedly; calls to it fail at once until it recovers.

    The circuit breaker of the dependency is open (``lakehouse.adapters.resilience``). The
    reason stays the dependency's own (``CATALOG_UNAVAILABLE``...), so a client that handles
    UNAVAILABLE needs nothing new; ``ErrorInfo.metadata`` names the ``dependency`` and says
    ``circuit_breaker: open``, and ``RetryInfo`` says when the next attempt is let through.

    Attributes:
        dependency: The backing service (``catalog``, ``object_store``, ``job_store``,
            ``trino``).
    """

    def __init__(
        self,
        message: str,
        *,
        dependency: str,
        reason: str | None = None,
        retry_after_seconds: float = 1.0,
    ) -> None:
        super().__init__(
            message,
            reason=reason,
            metadata={"dependency": dependency, "circuit_breaker": "open"},
            retry_after_seconds=retry_after_seconds,
        )
        self.dependency = dependency


class CommitStateUnknown(LakehouseError):
    """A commit was sent but its outcome is unknown; the caller must check before retrying."""

    code = grpc.StatusCode.UNKNOWN
    reason = "COMMIT_STATE_UNKNOWN"


class ResourceExhausted(RetryableError):
    """A buffer or quota is full; retry after ``retry_after_seconds``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class QuotaExceeded(LakehouseError):
    """A quota on stored things (namespaces, tables) is full.

    ``RESOURCE_EXHAUSTED`` without ``RetryInfo``: waiting does not help, deleting something
    or raising the quota does. The ``ErrorInfo`` metadata carries the limit.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUOTA_EXCEEDED"


class DeadlineExceeded(LakehouseError):
    """The call ran out of time on the server's own clock (a limit, not the client's deadline).

    A client's deadline is enforced by gRPC itself; this is for the server-side limit applied
    to calls that came without one (reason ``SERVER_DEADLINE``), and for a call to a backing
    service that the call's deadline left no time to start.
    """

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "SERVER_DEADLINE"


class Unauthenticated(LakehouseError):
    """The call carries no valid credentials.

    The message says only "missing credentials" or "invalid credentials": telling a client
    that a signature did not verify or a token expired helps an attacker more than a user,
    so the details go to the server log instead.
    """

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(LakehouseError):
    """The caller is known but may not make this call.

    Attributes:
        permission: The permission the call needs (also in ``ErrorInfo.metadata``), so that
            the caller can ask for the right role instead of guessing.
    """

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"

    def __init__(
        self,
        message: str,
        *,
        permission: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            message, reason=reason, metadata={**(metadata or {}), "permission": permission}
        )
        self.permission = permission
