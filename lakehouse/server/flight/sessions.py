"""Read sessions on the Flight port: one endpoint per stream, each read with ``do_get``.

``get_flight_info`` on a ``CreateReadSessionRequest`` creates a session exactly as
``TableService.CreateReadSession`` does (same rule, same validation, same cap on streams) and
returns one endpoint per stream; a stream's payload is the stream index and the session's
claims, and ``do_get`` reads it with the core's ``open_checked``. The payload is signed once,
by the ticket (bound to the caller, expiring with the session), not a signed session name
inside a signed ticket; the core's checks of the claims (expiry, principal, stream index)
apply again at ``do_get``, on whichever replica the ticket is redeemed.
"""

from __future__ import annotations

import struct

from lakehouse.core.read_sessions import ReadSessions
from lakehouse.core.reads import OpenRead
from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.read_sessions import SessionClaims
from lakehouse.server.credentials import Principal
from lakehouse.server.flight.auth import READ_METHOD, authorize
from lakehouse.server.flight.sources import (
    FLIGHT_BATCH_BYTES,
    ReadPlan,
    parse_command,
)
from lakehouse.services.convert import selection_from_proto
from lakehouse.v1 import table_service_pb2 as pb

#: The gRPC method whose permission rule creating a session on the Flight port follows.
CREATE_SESSION_METHOD = "/lakehouse.v1.TableService/CreateReadSession"

_INDEX = struct.Struct(">I")


def stream_payload(claims: SessionClaims, stream: int) -> bytes:
    """What a session stream's ticket carries: the stream index, then the session's claims."""
    return _INDEX.pack(stream) + claims.encode()


def parse_stream_payload(payload: bytes) -> tuple[SessionClaims, int]:
    """The claims and the stream index of a session stream's payload.

    Raises:
        InvalidArgument: Not such a payload (MALFORMED_REQUEST).
    """
    if len(payload) <= _INDEX.size:
        raise InvalidArgument.field(
            "ticket", "is not a read-session stream", reason="MALFORMED_REQUEST"
        )
    (stream,) = _INDEX.unpack_from(payload)
    try:
        return SessionClaims.decode(payload[_INDEX.size :]), stream
    except InvalidArgument:
        raise InvalidArgument.field(
            "ticket", "is not a read-session stream", reason="MALFORMED_REQUEST"
        ) from None


class ReadSessionSource:
    """Plans read sessions (one stream per endpoint) and streams one session stream.

    Args:
        sessions: The core read-session use case.
        batch_bytes: Target size of one batch.
    """

    def __init__(self, sessions: ReadSessions, batch_bytes: int = FLIGHT_BATCH_BYTES) -> None:
        self._sessions = sessions
        self._batch_bytes = batch_bytes

    async def plan(self, principal: Principal, command: bytes) -> ReadPlan:
        """See :meth:`FlightReadSource.plan`; ``command`` is a ``CreateReadSessionRequest``."""
        request = parse_command(pb.CreateReadSessionRequest, command)
        authorize(principal, CREATE_SESSION_METHOD, request, "get_flight_info")
        session = await self._sessions.create(
            request.namespace,
            request.table,
            selection_from_proto(request),
            max_streams=request.max_streams,
            principal=principal.name,
        )
        streams = [stream_payload(session.claims, i) for i in range(len(session.streams))]
        return ReadPlan(session.schema, streams, session.snapshot_id, session.expire_ms)

    async def open(self, principal: Principal, payload: bytes) -> OpenRead:
        """See :meth:`FlightReadSource.open`; ``payload`` names a session and a stream."""
        claims, stream = parse_stream_payload(payload)
        claims = self._sessions.checked(principal.name, claims, stream)
        # The table's read rule, checked now: a role or grant withdrawn since the session was
        # created applies at once (as ReadRows(read_session) on the gRPC port).
        target = pb.ReadRowsRequest(namespace=claims.namespace, table=claims.table)
        authorize(principal, READ_METHOD, target, "do_get")
        return await self._sessions.open_checked(claims, stream, budget_bytes=self._batch_bytes)
