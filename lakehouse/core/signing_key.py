"""The service's one key for short-lived, caller-bound tokens (read-session names, Flight tickets).

One key, whatever signs with it: each use derives its own key from it
(``HMAC-SHA256(key, purpose)``), so a token made for one purpose never verifies as another's
(a session name is not a Flight ticket). The key may come after start-up (replicas read it
from their shared database once it answers); until then signing fails with UNAVAILABLE.
"""

from __future__ import annotations

import hmac
from typing import Final

from lakehouse.domain.errors import Unavailable

#: The reason of the ``Unavailable`` raised while the key is not known yet.
SIGNING_KEY_UNAVAILABLE: Final = "SIGNING_KEY_UNAVAILABLE"
#: The fewest bytes a key may have (HMAC-SHA256's output, RFC 7518's floor for HS256).
MIN_KEY_BYTES: Final = 32


class SigningKey:
    """The key, once known, and the keys derived from it per purpose.

    Args:
        key: The key, or None when it is loaded later (``set``).

    Raises:
        ValueError: A key shorter than ``MIN_KEY_BYTES``.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._derived: dict[str, bytes] = {}
        self._key: bytes | None = None
        if key is not None:
            self.set(key)

    def set(self, key: bytes) -> None:
        """Uses ``key`` from now on (tokens signed with an earlier key stop verifying).

        Raises:
            ValueError: A key shorter than ``MIN_KEY_BYTES``.
        """
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a signing key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._derived = {}

    @property
    def known(self) -> bool:
        """Whether the key is known (signing and checking work)."""
        return self._key is not None

    def for_purpose(self, purpose: str) -> bytes:
        """The key that signs tokens of one ``purpose``.

        Raises:
            Unavailable: The key is not known yet (reason ``SIGNING_KEY_UNAVAILABLE``).
        """
        derived = self._derived.get(purpose)
        if derived is None:
            if self._key is None:
                raise Unavailable(
                    "the signing key is not loaded yet (the job store is unreachable): retry",
                    reason=SIGNING_KEY_UNAVAILABLE,
                )
            derived = hmac.digest(self._key, purpose.encode(), "sha256")
            self._derived[purpose] = derived
        return derived
