"""Read sessions: the claims a session's signed name carries, and how a plan splits.

A session is stateless: its name is a signed token of everything a replica needs to serve one
of its streams (table, pinned snapshot, selection, stream count, caller, expiry). Any replica
that shares the signing secret re-plans the pinned snapshot (the same files, in the same order)
and reads stream ``i``'s contiguous share of them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from lakehouse.domain.errors import InvalidArgument

#: The version of the claims' layout, so a future layout is refused clearly, not misread.
CLAIMS_VERSION = 1
READ_SESSION_FIELD = "read_session"
INVALID_READ_SESSION = "INVALID_READ_SESSION"


@dataclass(frozen=True)
class StreamShare:
    """Which share of a pinned plan's files one stream reads."""

    index: int
    count: int


@dataclass(frozen=True)
class StreamEstimate:
    """What one stream's data files hold, before the row filter."""

    rows: int
    bytes: int


@dataclass(frozen=True)
class SessionClaims:
    """What a session's name says, once its signature is checked."""

    namespace: str
    table: str
    snapshot_id: int | None
    columns: tuple[str, ...]
    row_filter: str
    limit: int
    streams: int
    principal: str
    expire_ms: int
    version: int = CLAIMS_VERSION

    def encode(self) -> bytes:
        """The claims as compact, key-sorted JSON (what is signed)."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, payload: bytes) -> SessionClaims:
        """The claims of a verified payload.

        Raises:
            InvalidArgument: Claims of another layout (INVALID_READ_SESSION).
        """
        try:
            data = json.loads(payload)
            if data.get("version") != CLAIMS_VERSION:
                raise ValueError("another version")
            data["columns"] = tuple(data["columns"])
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise invalid_session("is not a read session of this service") from None


def invalid_session(description: str) -> InvalidArgument:
    """The error for a session name that is malformed, tampered with or of another secret."""
    return InvalidArgument.field(READ_SESSION_FIELD, description, reason=INVALID_READ_SESSION)


def b64encode(data: bytes) -> str:
    """URL-safe base64 without padding (a session name is pasted into grpcurl and URLs)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """The bytes of ``b64encode``'s text.

    Raises:
        InvalidArgument: Not such text (INVALID_READ_SESSION).
    """
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise invalid_session("is not a read session of this service") from None


def claimed_table(name: str) -> tuple[str, str]:
    """The (namespace, table) a session's name claims, unverified; ("", "") if unreadable.

    For the permission check before the call (per-namespace grants): the signature is
    checked when the stream is read, so a name altered to pass that check fails there.
    """
    payload, _, _ = name.partition(".")
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(data["namespace"]), str(data["table"])
    except (binascii.Error, ValueError, TypeError, KeyError):
        return "", ""


def split_by_bytes(sizes: Sequence[int], wanted: int) -> list[range]:
    """Cuts files, in order, into ``wanted`` contiguous runs of roughly equal bytes.

    Contiguous, so that the streams read in index order read the files in the plan's order
    (the order one ReadRows reads them in). At least one run (empty for no files), never more
    than one per file; run ``k`` ends at the first file that takes the bytes so far to
    ``(k + 1) / n`` of the total, leaving a file for each later run.

    Args:
        sizes: The files' sizes in bytes, in plan order.
        wanted: The most runs wanted (at least 1).
    """
    n = max(1, min(wanted, len(sizes)))
    if not sizes:
        return [range(0, 0)]
    total = sum(max(s, 1) for s in sizes)
    runs: list[range] = []
    start = 0
    taken = 0
    for k in range(n - 1):
        target = total * (k + 1) / n
        end = start + 1  # every run takes at least one file
        taken += max(sizes[start], 1)
        last_allowed = len(sizes) - (n - 1 - k)  # leave one file per later run
        while end < last_allowed and taken + max(sizes[end], 1) / 2 <= target:
            taken += max(sizes[end], 1)
            end += 1
        runs.append(range(start, end))
        start = end
    runs.append(range(start, len(sizes)))
    return runs
