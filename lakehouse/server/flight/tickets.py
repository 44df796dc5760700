"""Flight tickets: opaque, short-lived, HMAC-signed and bound to the principal they were made for.

A ticket is ``version || expiry (8 bytes, ms) || principal length (2) || principal || payload
|| HMAC-SHA256(key, everything before)`` (the service's one token codec,
``lakehouse.core.signed_tokens``). The payload is what the read source needs to stream (a
``ReadRowsRequest`` pinned to one snapshot, or a read session's claims and a stream index,
signed by this ticket only); it is signed, not
encrypted: a ticket names a table the caller was allowed to read when it was made, nothing
secret. Every replica checks tickets with the service's one signing key (``SigningKey``,
derived for tickets), so a ticket minted by one replica is redeemed by any.
"""

from __future__ import annotations

import hmac
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from lakehouse.core.signed_tokens import SignedTokens, TokenError
from lakehouse.core.signing_key import SigningKey

_VERSION = 1
_HEADER = struct.Struct(">BQH")


class TicketError(Exception):
    """A ticket that cannot be redeemed.

    Attributes:
        reason: The stable reason clients see (``FLIGHT_TICKET_INVALID``,
            ``FLIGHT_TICKET_EXPIRED``, ``FLIGHT_TICKET_OTHER_PRINCIPAL``).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TicketContent:
    """What a valid ticket carries."""

    principal: str
    payload: bytes
    expires_ms: int


#: What tickets are signed for (see ``SigningKey.for_purpose``).
PURPOSE = "lakehouse flight ticket v1"


class TicketSigner:
    """Makes and checks tickets with the service's signing key.

    Args:
        key: The service's signing key.
        ttl_seconds: How long a new ticket is valid, unless ``sign`` is told otherwise.
        clock: Seconds since the epoch (tests move it forward).
    """

    def __init__(
        self,
        key: SigningKey,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = SignedTokens(key, PURPOSE)
        self._ttl_ms = int(ttl_seconds * 1000)
        self._clock = clock

    def sign(self, principal: str, payload: bytes, *, expires_ms: int | None = None) -> bytes:
        """A ticket for ``payload``, redeemable by ``principal`` until ``expires_ms``.

        Args:
            principal: The only caller who may redeem it.
            payload: What the read source streams.
            expires_ms: Its expiry (ms since the epoch); None: the TTL from now.

        Raises:
            Unavailable: The signing key is not loaded yet.
        """
        name = principal.encode()
        if expires_ms is None:
            expires_ms = int(self._clock() * 1000) + self._ttl_ms
        return self._tokens.sign(_HEADER.pack(_VERSION, expires_ms, len(name)) + name + payload)

    def open(self, ticket: bytes, principal: str) -> TicketContent:
        """The content of a ticket ``principal`` may redeem now.

        Raises:
            TicketError: A ticket not made by a server with this key, or changed since
                (``FLIGHT_TICKET_INVALID``), past its TTL (``FLIGHT_TICKET_EXPIRED``), or made
                for another principal (``FLIGHT_TICKET_OTHER_PRINCIPAL``).
        """
        try:
            body = self._tokens.verify(ticket)
        except TokenError:
            raise TicketError(
                "the Flight ticket's signature does not verify (changed, or made with another "
                "signing key)",
                "FLIGHT_TICKET_INVALID",
            ) from None
        if len(body) < _HEADER.size:
            raise TicketError("not a lakehouse Flight ticket", "FLIGHT_TICKET_INVALID")
        version, expires_ms, name_length = _HEADER.unpack_from(body)
        if version != _VERSION or len(body) < _HEADER.size + name_length:
            raise TicketError("not a lakehouse Flight ticket", "FLIGHT_TICKET_INVALID")
        owner = body[_HEADER.size : _HEADER.size + name_length].decode()
        if int(self._clock() * 1000) >= expires_ms:
            raise TicketError(
                "the Flight ticket has expired: ask get_flight_info for a new one",
                "FLIGHT_TICKET_EXPIRED",
            )
        if not hmac.compare_digest(owner.encode(), principal.encode()):
            raise TicketError(
                "the Flight ticket was made for another principal", "FLIGHT_TICKET_OTHER_PRINCIPAL"
            )
        return TicketContent(owner, body[_HEADER.size + name_length :], expires_ms)
