"""The part of Trino's client (``trino.dbapi``) the engine uses, typed, and its TLS session.

The client leaves its cursor and connection untyped; ``Cursor`` and ``Connection`` say what
the engine relies on. ``PinnedCaSession`` verifies TLS against the configured CA bundle only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import requests

if TYPE_CHECKING:
    from requests.sessions import _Settings


class Cursor(Protocol):
    """The part of ``trino.dbapi.Cursor`` the adapter uses (the client leaves it untyped)."""

    @property
    def description(self) -> list[Any] | None:
        """Per column ``(name, type_code, ...)``; type_code is Trino's type, as text."""

    @property
    def rowcount(self) -> int:
        """Trino's ``updateCount``, -1 when it reported none."""

    @property
    def update_type(self) -> str | None:
        """Trino's ``updateType`` ("INSERT", "CREATE TABLE"...); None for a query."""

    @property
    def query_id(self) -> str | None:
        """Trino's query id, once the statement was accepted."""

    @property
    def stats(self) -> dict[str, Any] | None:
        """The ``stats`` of the last page received (``state`` is FINISHED at the end)."""

    def execute(self, operation: str) -> object:
        """POSTs the statement and waits until its first rows (or its end)."""

    def fetchmany(self, size: int) -> list[list[Any]]:
        """The next rows, fetching pages as needed; empty at the end."""

    def cancel(self) -> None:
        """DELETEs the query's ``nextUri`` (a no-op once the query is over)."""


class Connection(Protocol):
    """The part of ``trino.dbapi.Connection`` the adapter uses."""

    def cursor(self, *, stats_callback: Callable[[dict[str, Any]], None] | None = None) -> object:
        """A new cursor; ``stats_callback`` receives each page's ``stats``."""

    def close(self) -> None:
        """Closes the HTTP session."""


class PinnedCaSession(requests.Session):
    """A requests session that verifies TLS against the configured CA bundle, always.

    Plain requests lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` from the environment
    override a session's ``verify`` (psf/requests#4726, kept for compatibility), so a
    container that sets them for its own reasons would silently replace ``trino.ca_file``
    and fail against a private CA. Proxies and the rest of the environment still apply.
    """

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self.verify = ca_file
        self._ca_file = ca_file

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: Any,
        stream: Any,
        verify: Any,
        cert: Any,
    ) -> _Settings:
        """The usual merge, then the configured CA bundle over the environment's."""
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self._ca_file
        return settings
