"""SQLAlchemy engines for the job store: SQLite with real transactions, or PostgreSQL.

SQLite gets ``BEGIN`` (or ``BEGIN IMMEDIATE`` for writers) emitted by a hook rather than by
pysqlite, WAL and a busy timeout; PostgreSQL gets keepalives and no statement timeout.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from lakehouse.adapters import postgres

# Execution option read by the SQLite "begin" hook: the BEGIN flavour of a transaction.
SQLITE_BEGIN_OPTION: Final = "lakehouse_sqlite_begin"


def parse_url(url: str) -> URL:
    """The parsed URL; the error never repeats the URL, which may hold a password."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("the job store URL is not a valid SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"the job store supports sqlite and postgresql URLs, not {backend!r}")
    return parsed


def _configure_sqlite(engine: Engine, busy_timeout_seconds: float) -> None:
    """Makes SQLite transactions real and friendly to other processes sharing the file.

    pysqlite begins transactions lazily, only before writes; with ``isolation_level = None``
    it leaves transaction control alone and the "begin" hook emits ``BEGIN`` (or ``BEGIN
    IMMEDIATE`` for writing transactions) itself. WAL lets readers (pyiceberg, other
    replicas) run alongside the one writer; it is a persistent property of the file, harmless
    to pyiceberg. ``busy_timeout`` makes a writer wait for the lock rather than fail at once.
    """
    busy_timeout_ms = max(0, round(busy_timeout_seconds * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            _switch_to_wal(cursor, busy_timeout_seconds)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _switch_to_wal(cursor: Any, busy_timeout_seconds: float) -> None:
    """Puts the file in WAL mode unless it is already.

    Switching needs an exclusive lock, and SQLite does not always wait for it with the busy
    handler: two processes opening a fresh file at once saw "database is locked" at once (CI).
    So the switch is retried until the busy timeout, re-reading the mode in between, since
    the other process may have switched it meanwhile.
    """
    deadline = time.monotonic() + busy_timeout_seconds
    while True:
        (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def make_engine(url: URL, busy_timeout_seconds: float) -> Engine:
    """The job store's engine for ``url`` (parsed by ``parse_url``).

    Args:
        url: A SQLite or PostgreSQL URL.
        busy_timeout_seconds: SQLite only: how long a writer waits for the database lock.

    Raises:
        ValueError: The URL names a PostgreSQL driver that is not installed.
    """
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
        _configure_sqlite(engine, busy_timeout_seconds)
        return engine
    # A dead or vanished database fails fast, as Unavailable. No statement timeout: the
    # scheduler's advisory lock waits on purpose.
    connect_args: dict[str, Any] = (
        dict(postgres.missing_settings(url)) if postgres.is_libpq(url) else {}
    )
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except ImportError as exc:
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the service ships psycopg2.
        raise ValueError(
            f"the job store URL's driver {url.drivername!r} is not installed "
            f"({exc.name}); use postgresql+psycopg2://"
        ) from None
