"""Who calls the Flight port, and whether they may: the gRPC port's credentials and roles.

A server middleware authenticates every Flight call from its headers with the same
:class:`~lakehouse.server.credentials.Authenticator` as the gRPC port (API keys and JWTs in
``authorization: Bearer ...``); a call without valid credentials never reaches a handler.
Handlers then authorize each action against the rule of the gRPC method it stands for
(``get_flight_info``/``do_get``: ``ReadRows``; ``do_put``: ``AppendRows``, or ``WriteRows``
for a packed WriteRows command), from the one
permission table, with the caller's namespace grants. Refused and mutating calls leave one
line on the ``lakehouse.audit`` logger, as on the gRPC port.

mTLS: with ``tls.require_client_cert`` the Flight port refuses clients without a certificate
from ``tls.client_ca_file``, but pyarrow does not hand the client certificate to Python, so
``auth.mtls_roles`` cannot name a Flight caller: Flight clients send an API key or a JWT.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow.flight as flight

from lakehouse.domain.errors import PermissionDenied, Unauthenticated
from lakehouse.server import metrics
from lakehouse.server.credentials import Authenticator, CredentialError, Principal
from lakehouse.server.flight.errors import code_name, flight_error
from lakehouse.server.limits import CallSlots
from lakehouse.server.permissions import READ_PERMISSIONS, RULES, check

log = logging.getLogger(__name__)
audit_log = logging.getLogger("lakehouse.audit")
rpc_log = logging.getLogger("lakehouse.rpc")

#: The service Flight's methods belong to, in log lines.
FLIGHT_SERVICE = "arrow.flight.protocol.FlightService"

MIDDLEWARE_KEY = "lakehouse"
READ_METHOD = "/lakehouse.v1.TableService/ReadRows"
APPEND_METHOD = "/lakehouse.v1.IngestService/AppendRows"
WRITE_METHOD = "/lakehouse.v1.IngestService/WriteRows"


class CallMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """One Flight call: its caller, and its metrics when it ends."""

    def __init__(self, principal: Principal, method: str, peer: str) -> None:
        self.principal = principal
        self.method = method
        self.peer = peer
        #: The bound whose slot the call holds: until it completes, or a do_get's stream
        #: starts (``free_slot``).
        self.slot: CallSlots | None = None
        self._started = time.perf_counter()
        metrics.FLIGHT_STARTED.labels(method).inc()

    def free_slot(self) -> None:
        """Gives the call's slot back, if it holds one (at most once)."""
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.give_back()

    def call_completed(self, exception: BaseException | None) -> None:
        """Frees the call's slot, counts the call by its outcome and writes its log line."""
        self.free_slot()
        elapsed = time.perf_counter() - self._started
        code = code_name(exception)
        metrics.FLIGHT_HANDLED.labels(self.method, code).inc()
        metrics.FLIGHT_HANDLING_SECONDS.labels(self.method).observe(elapsed)
        rpc_log.log(
            logging.INFO if exception is None else logging.WARNING,
            "rpc",
            extra={
                "service": FLIGHT_SERVICE,
                "method": self.method,
                "code": code,
                "duration_ms": round(elapsed * 1000, 3),
                "principal": self.principal.name,
            },
        )


def _method_name(info: Any) -> str:
    """``do_get``, ``get_flight_info``... for a ``CallInfo``."""
    return str(getattr(info.method, "name", info.method)).lower()


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Authenticates each Flight call from its headers, as the gRPC port does.

    Args:
        authenticator: The process's authenticator (shared with the gRPC port, so a key
            file reload applies to both).
    """

    def __init__(self, authenticator: Authenticator) -> None:
        super().__init__()
        self._authenticator = authenticator

    def start_call(self, info: Any, headers: dict[str, list[Any]]) -> CallMiddleware:
        """The call's middleware, or the Flight error that refuses the call."""
        method = _method_name(info)
        metadata = [(key, value) for key, values in headers.items() for value in values]
        try:
            # No certificate reaches Python on the Flight port: an empty peer (see above).
            principal = self._authenticator.authenticate(metadata, dict)
        except CredentialError as exc:
            log.info(
                "authentication failed", extra={"method": f"flight/{method}", "reason": exc.detail}
            )
            metrics.FLIGHT_STARTED.labels(method).inc()
            metrics.FLIGHT_HANDLED.labels(method, "Unauthenticated").inc()
            audit(None, method, "", {}, "UNAUTHENTICATED")
            raise flight_error(Unauthenticated(exc.client_message)) from None
        return CallMiddleware(principal, method, "")


def call_of(context: Any) -> CallMiddleware:
    """The middleware of a Flight call: its authenticated caller, its slot."""
    middleware = context.get_middleware(MIDDLEWARE_KEY)
    if not isinstance(middleware, CallMiddleware):  # not installed: a wiring bug
        raise flight.FlightInternalError("the Flight server has no auth middleware")
    return middleware


def caller(context: Any) -> Principal:
    """The authenticated caller of a Flight call (set by :class:`AuthMiddlewareFactory`)."""
    return call_of(context).principal


def authorize(principal: Principal, method: str, request: Any, flight_method: str) -> None:
    """Refuses ``request`` unless ``principal`` may make it as the gRPC ``method``.

    The decision is the gRPC port's own (``permissions.check``); this adds the audit line.

    Raises:
        PermissionDenied: The role lacks the method's permission (or the further one the
            request needs), or the table's namespace is outside the caller's grants.
    """
    try:
        permission = check(principal, method, request, label=f"flight {flight_method}")
    except PermissionDenied as exc:
        target = RULES[method].target(request).attributes
        audit(principal, flight_method, exc.permission, target, "PERMISSION_DENIED")
        raise
    if permission not in READ_PERMISSIONS:
        audit(principal, flight_method, permission, RULES[method].target(request).attributes, "OK")


def audit(
    principal: Principal | None,
    flight_method: str,
    permission: str,
    target: Any,
    outcome: str,
) -> None:
    """One ``lakehouse.audit`` line, with the fields of the gRPC port's."""
    audit_log.info(
        "audit",
        extra={
            "principal": principal.name if principal is not None else "",
            "role": principal.role if principal is not None else "",
            "auth": principal.via if principal is not None else "",
            "method": f"flight/{flight_method}",
            "permission": permission,
            "target": dict(target),
            "outcome": outcome,
            "request_id": "",
            "peer": "",
        },
    )
