"""A table's metadata location read from a SQLite catalog on the event loop, without waiting.

Revalidating a cached table is one indexed lookup (~10 us on SQLite), but run in the blocking
pool it costs a thread hop, the breaker and retry wrapping and the GIL traffic of a pool
thread: most of ``GetTable``'s server CPU above a bare call (bench/README.md, "The cost of
every call"). On the embedded SQLite catalog, whose file is local and in WAL mode (readers
never wait for the writer), the lookup is run on the loop instead, on a connection of its
own that never waits for a lock (busy timeout 0) and writes nothing (``query_only``).

It only ever answers "the location is X now": anything it cannot answer at once (the file
locked, an error, no such row) is None, and the caller takes the usual path in the pool,
which has the waiting, the breaker, the retries and the error translation. Each answer comes
from a query that started after the call did, so a commit acknowledged before the call (here
or on another replica) is always seen.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from urllib.parse import quote

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from lakehouse.adapters.iceberg.fast_paths import RAW_LOCATION_QUERY

_QUERY = RAW_LOCATION_QUERY["qmark"]


class LoopLocations:
    """Metadata locations of one SQLite catalog, read on the calling thread without waiting.

    The connection belongs to the thread that first used it (the event loop's); a call from
    another thread gets None, never a shared connection.

    Args:
        database: The SQLite file.
        catalog_name: The catalog's name in the ``iceberg_tables`` table.
    """

    def __init__(self, database: str, catalog_name: str) -> None:
        self._database = database
        self._catalog_name = catalog_name
        self._connection: sqlite3.Connection | None = None
        self._thread = 0

    def current(self, namespace: str, name: str) -> str | None:
        """The table's metadata location now, or None when it cannot be read at once."""
        connection = self._connection
        if connection is None or self._thread != threading.get_ident():
            connection = self._connect()
            if connection is None:
                return None
        try:
            # fetchall: a statement left unfinished would hold its read snapshot (stale
            # answers to later calls, and WAL checkpoints held back).
            rows = connection.execute(_QUERY, (self._catalog_name, namespace, name)).fetchall()
        except sqlite3.Error:
            self.close()  # reopened at the next call; a broken file must not stick
            return None
        if not rows or rows[0][0] is None:
            return None  # no such table: the usual path says so, with its error
        return str(rows[0][0])

    def _connect(self) -> sqlite3.Connection | None:
        if self._connection is not None:
            return None  # another thread's connection: not to be shared
        try:
            connection = sqlite3.connect(
                f"file:{quote(self._database)}?mode=rw",  # never creates the file
                uri=True,
                timeout=0,  # a locked file is an answer of None, not a wait on the loop
                isolation_level=None,  # no implicit transaction: every query sees the latest
            )
        except sqlite3.Error:
            return None
        try:
            connection.execute("PRAGMA query_only = ON")
        except sqlite3.Error:
            connection.close()
            return None
        self._connection = connection
        self._thread = threading.get_ident()
        return connection

    def close(self) -> None:
        """Closes the connection (a later call opens a new one)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            # Closing another thread's connection fails: the garbage collector closes it.
            with contextlib.suppress(sqlite3.Error):
                connection.close()


def loop_locations(uri: str, catalog_name: str) -> LoopLocations | None:
    """The on-loop reader of a SQL catalog's URI when it is a SQLite file; else None.

    PostgreSQL is a network round trip (no call on the loop may block on it) and an in-memory
    SQLite database is private to its connection.
    """
    try:
        url = make_url(uri)
    except ArgumentError:
        return None
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):
        return None  # a URI filename with its own parameters: leave it to the usual path
    return LoopLocations(url.database, catalog_name)
