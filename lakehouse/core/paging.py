"""Page sizes and opaque page tokens for list methods (AIP-158).

A token records the last key returned and what was listed, so a token from another list (or
a tampered one) is rejected instead of silently returning the wrong page. Keys are compared
in order (keyset paging), so a page stays correct when items are added or removed between
calls.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from lakehouse.domain.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

T = TypeVar("T")


def page_size(requested: int, *, field: str = "page_size") -> int:
    """The effective page size: 0 means the default, above the maximum is clamped.

    Raises:
        InvalidArgument: The requested size is negative.
    """
    if requested < 0:
        raise InvalidArgument.field(field, f"must not be negative, got {requested}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(scope: str, last_key: str) -> str:
    """An opaque token pointing after ``last_key`` in the list identified by ``scope``."""
    raw = json.dumps({"v": 1, "s": scope, "k": last_key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(scope: str, token: str, *, field: str = "page_token") -> str | None:
    """The last key of the previous page, or None for the first page.

    Raises:
        InvalidArgument: The token is malformed or belongs to another list.
    """
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("k"), str):
            raise ValueError("unexpected token content")
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument.field(
            field, "is not a token returned by this method", reason="INVALID_PAGE_TOKEN"
        ) from None
    if data.get("s") != scope:
        raise InvalidArgument.field(
            field, "belongs to a different list request", reason="INVALID_PAGE_TOKEN"
        )
    last_key: str = data["k"]
    return last_key


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing."""

    items: list[T]
    next_page_token: str


def paginate(
    items: Sequence[T],
    key: Callable[[T], str],
    *,
    scope: str,
    requested_size: int,
    token: str,
) -> Page[T]:
    """Cuts one page out of ``items`` sorted by ``key``.

    Raises:
        InvalidArgument: Bad page size or token.
    """
    size = page_size(requested_size)
    after = decode_token(scope, token)
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [item for item in ordered if key(item) > after]
    chunk = ordered[:size]
    next_token = encode_token(scope, key(chunk[-1])) if len(ordered) > size else ""
    return Page(items=chunk, next_page_token=next_token)
