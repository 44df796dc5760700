"""Which read a Flight descriptor command asks for, and which source a ticket belongs to.

A command is either a serialized ``lakehouse.v1.ReadRowsRequest`` (one stream), or a
``google.protobuf.Any`` packing one of the supported requests (Flight SQL's convention):

- ``type.googleapis.com/lakehouse.v1.ReadRowsRequest``: the same as the bare request;
- ``type.googleapis.com/lakehouse.v1.CreateReadSessionRequest``: a read session, one endpoint
  per stream.

Telling them apart is unambiguous: a bare ``ReadRowsRequest`` read as an ``Any`` has its
namespace as type URL, and no valid namespace holds a ``/``. Ticket payloads begin with one
byte naming their source, so ``do_get`` hands each to the source that planned it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from lakehouse.domain.errors import InvalidArgument
from lakehouse.domain.read_sessions import SessionClaims
from lakehouse.server.credentials import Principal
from lakehouse.server.flight.sessions import stream_payload
from lakehouse.server.flight.sources import FlightReadSource, FlightStream, ReadPlan
from lakehouse.server.flight.tickets import TicketSigner

TYPE_PREFIX: Final = "type.googleapis.com/"
READ_ROWS_TYPE: Final = TYPE_PREFIX + "lakehouse.v1.ReadRowsRequest"
CREATE_READ_SESSION_TYPE: Final = TYPE_PREFIX + "lakehouse.v1.CreateReadSessionRequest"

_READ_ROWS: Final = b"r"
#: "c": a session stream's claims ("s", a signed session name inside the ticket, was signed
#: twice and is refused as a ticket of an earlier build).
_SESSION: Final = b"c"


def unpacked(command: bytes, accepted: tuple[str, ...], expected: str) -> tuple[str, bytes]:
    """The type URL and value of a command packed in an ``Any``; ``("", command)`` if bare.

    Args:
        command: A descriptor command.
        accepted: The type URLs this call takes.
        expected: What the call takes, for the error.

    Raises:
        InvalidArgument: On field ``descriptor.cmd``: an ``Any`` of a type not in ``accepted``.
    """
    try:
        packed = any_pb2.Any.FromString(command)
    except DecodeError:
        return "", command  # not an Any: the bare request, checked by its parser
    if packed.type_url in accepted:
        return packed.type_url, packed.value
    if packed.type_url.startswith(TYPE_PREFIX):
        raise InvalidArgument.field(
            "descriptor.cmd",
            f"packs {packed.type_url[len(TYPE_PREFIX) :]!r}: {expected}",
            reason="MALFORMED_REQUEST",
        )
    return "", command


def parse_command(command: bytes) -> tuple[bytes, bytes]:
    """The source tag and the request bytes of a descriptor command.

    Raises:
        InvalidArgument: On field ``descriptor.cmd``: an ``Any`` of a type not supported.
    """
    type_url, body = unpacked(
        command,
        (CREATE_READ_SESSION_TYPE, READ_ROWS_TYPE),
        "the Flight port reads lakehouse.v1.ReadRowsRequest or "
        "lakehouse.v1.CreateReadSessionRequest",
    )
    return (_SESSION if type_url == CREATE_READ_SESSION_TYPE else _READ_ROWS), body


class CommandRouter:
    """A :class:`FlightReadSource` over ReadRows reads and read sessions.

    Args:
        read_rows: The source of ``ReadRowsRequest`` commands.
        sessions: The source of ``CreateReadSessionRequest`` commands.
    """

    def __init__(self, read_rows: FlightReadSource, sessions: FlightReadSource) -> None:
        self._sources = {_READ_ROWS: read_rows, _SESSION: sessions}

    async def plan(self, principal: Principal, command: bytes) -> ReadPlan:
        """See :meth:`FlightReadSource.plan`."""
        tag, body = parse_command(command)
        plan = await self._sources[tag].plan(principal, body)
        return replace(plan, streams=[tag + payload for payload in plan.streams])

    async def open(self, principal: Principal, payload: bytes) -> FlightStream:
        """See :meth:`FlightReadSource.open`."""
        source = self._sources.get(payload[:1])
        if source is None:  # signed by this service, so only an older release's ticket
            raise InvalidArgument.field("ticket", "is not a ticket of this release: plan again")
        return await source.open(principal, payload[1:])


def session_tickets(signer: TicketSigner, claims: SessionClaims) -> list[bytes]:
    """The Flight tickets of a session's streams, as ``get_flight_info`` would make them.

    Each is the session creator's and expires with the session.
    """
    return [
        signer.sign(
            claims.principal, _SESSION + stream_payload(claims, i), expires_ms=claims.expire_ms
        )
        for i in range(claims.streams)
    ]
