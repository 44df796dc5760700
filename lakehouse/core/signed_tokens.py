"""Signed tokens: bytes followed by their HMAC-SHA256, for one purpose of the signing key.

The one codec behind every short-lived token the service hands out (read-session names,
Flight tickets): ``token = payload || HMAC-SHA256(SigningKey.for_purpose(purpose), payload)``.
Each caller lays out its own payload and maps :class:`TokenError` to its own reason
(``INVALID_READ_SESSION``, ``FLIGHT_TICKET_INVALID``); the signature, its length and the
constant-time comparison live here only.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from lakehouse.core.signing_key import SigningKey

#: Bytes of the signature that ends a token.
MAC_BYTES: Final = hashlib.sha256().digest_size


class TokenError(Exception):
    """A token that does not verify: too short, changed, or signed with another key/purpose."""


class SignedTokens:
    """Signs and verifies the tokens of one ``purpose`` with the service's signing key.

    Args:
        key: The service's signing key (it may be loaded after start-up).
        purpose: What the tokens are for; a token of one purpose never verifies as another's.
    """

    def __init__(self, key: SigningKey, purpose: str) -> None:
        self._key = key
        self._purpose = purpose

    def _mac(self, payload: bytes) -> bytes:
        return hmac.digest(self._key.for_purpose(self._purpose), payload, "sha256")

    def sign(self, payload: bytes) -> bytes:
        """``payload`` followed by its signature.

        Raises:
            Unavailable: The signing key is not loaded yet (SIGNING_KEY_UNAVAILABLE).
        """
        return payload + self._mac(payload)

    def verify(self, token: bytes) -> bytes:
        """The payload of a token signed by :meth:`sign` with the same key and purpose.

        Raises:
            TokenError: A token too short to hold a signature, or whose signature does not
                verify.
            Unavailable: The signing key is not loaded yet (SIGNING_KEY_UNAVAILABLE).
        """
        if len(token) < MAC_BYTES:
            raise TokenError("too short to be a signed token")
        payload, mac = token[:-MAC_BYTES], token[-MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise TokenError("the signature does not verify")
        return payload
