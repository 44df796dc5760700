"""The notifications of the ingest hand-offs: PostgreSQL LISTEN on one connection per process.

``IngestFleetStore`` notifies when a batch is handed to a table branch's owner and when an
owner resolves one. This listener receives them on its own connection (not one of the job
store's pool: a listening connection stays open and idle) on its own thread, and calls back
on the event loop, so that owners and submitters wait for them instead of polling the
database. When the connection is lost it reports itself down (its users then poll as they
did without it) and reconnects with a growing backoff; notifications sent meanwhile are
lost, so coming back up is reported too (its users look once at everything).

A connection is "up" only once a notification it sent itself came back on it, at connection
and then every ``_PROBE_SECONDS`` of quiet: behind PgBouncer in transaction pooling, LISTEN
and ``SELECT 1`` succeed on whatever server connection is lent, yet notifications never
arrive, and a listener trusting them would leave hand-offs at the safety poll for good.
Only psycopg2 exposes notifications this way; with another driver nothing listens (a
warning at start) and hand-offs poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

import sqlalchemy
from sqlalchemy.pool import NullPool

from lakehouse.adapters import postgres
from lakehouse.adapters.ingest_fleet_store import PENDING_CHANNEL, RESOLVED_CHANNEL, parse_pending

log = logging.getLogger(__name__)

#: The listening connection's ``application_name`` (unless the URL sets one).
APPLICATION_NAME: Final = "lakehouse-ingest-listener"
#: The first wait before connecting again, doubled up to ``_BACKOFF_MAX_SECONDS``.
_BACKOFF_SECONDS: Final = 0.5
_BACKOFF_MAX_SECONDS: Final = 30.0
#: An idle listening connection is probed this often (a partition that TCP keepalives have
#: not noticed yet shows as a failed probe).
_PROBE_SECONDS: Final = 15.0
#: How long a probe's notification may take to come back before the listener reports down.
PROBE_TIMEOUT_SECONDS: Final = 5.0
#: The channel of the listener's probes of its own connection (payload: a fresh token).
PROBE_CHANNEL: Final = "lakehouse_ingest_probe"
#: The driver whose connections expose ``poll()`` and ``notifies``.
_DRIVER: Final = "psycopg2"


class ProbeLost(Exception):
    """A probe's notification did not come back: the connection does not receive them."""


class FleetListener:
    """Listens for handed and resolved batches; calls back on ``loop``.

    Args:
        url: The job store's SQLAlchemy URL (PostgreSQL through libpq).
        on_pending: Called with the table and branch a batch was handed to.
        on_resolved: Called with the id of a batch an owner resolved.
        on_state: Called with True once listening, False once the connection is lost.
        probe_timeout: How long a probe's notification may take to come back.
    """

    #: The probe channel this listener listens on (tests make a deaf one with another).
    probe_listened = PROBE_CHANNEL

    def __init__(
        self,
        url: str,
        on_pending: Callable[[tuple[str, str], str], None],
        on_resolved: Callable[[str], None],
        on_state: Callable[[bool], None],
        *,
        probe_timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        parsed = sqlalchemy.make_url(url)
        self._driver = parsed.get_driver_name()
        self._probe_timeout = probe_timeout
        connect_args: dict[str, Any] = (
            dict(postgres.missing_settings(parsed)) if postgres.is_libpq(parsed) else {}
        )
        if postgres.is_libpq(parsed) and "application_name" not in parsed.query:
            # So that operators tell it apart in pg_stat_activity (an idle connection).
            connect_args["application_name"] = APPLICATION_NAME
        # Not made for another driver: it may not even be installed.
        self._engine = (
            sqlalchemy.create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
            if self._driver == _DRIVER
            else None
        )
        self._on_pending = on_pending
        self._on_resolved = on_resolved
        self._on_state = on_state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listened = False
        # Written to by close() to wake the thread out of its wait at once; made in start()
        # and closed by the thread itself, never under it.
        self._wake: tuple[int, int] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts listening on a thread of its own; callbacks run on ``loop``.

        With a driver other than psycopg2 it does not start (and says so): hand-offs poll.
        """
        if self._engine is None:
            log.warning(
                "ingest hand-off notifications need the psycopg2 driver; hand-offs poll",
                extra={"driver": self._driver},
            )
            return
        self._loop = loop
        self._wake = os.pipe()
        self._thread = threading.Thread(
            target=self._run, name="lakehouse-ingest-listener", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stops listening and closes the connection (blocking: call it in a thread)."""
        self._stop.set()
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        if self._thread is not None:
            # A thread still running after the timeout keeps its pipe and connection (they
            # go with the process); closing them under it could hand their numbers to
            # files opened meanwhile.
            self._thread.join(timeout)
        if self._engine is not None:
            self._engine.dispose()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        try:
            self._reconnecting()
        finally:
            # Closed (or ended by a bug): its users poll again, as without a listener.
            self._call(self._on_state, False)
            assert self._wake is not None
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _reconnecting(self) -> None:
        backoff = _BACKOFF_SECONDS
        while not self._stop.is_set():
            self._listened = False
            try:
                self._listen()
            except Exception as exc:  # any failure: report down, reconnect
                if self._listened:
                    # It listened since the last failure: a new outage, not the same one
                    # going on (a backoff never reset grew to its maximum over the
                    # disconnects of a long-lived process).
                    backoff = _BACKOFF_SECONDS
                log.warning(
                    "ingest hand-off notifications lost; polling until reconnected",
                    extra={
                        "error": f"{type(exc).__name__}: {exc}"[:300],
                        "retry_seconds": backoff,
                    },
                )
            else:
                return  # stopped
            self._call(self._on_state, False)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)

    def _listen(self) -> None:
        assert self._engine is not None and self._wake is not None
        raw = self._engine.raw_connection()
        try:
            conn: Any = raw.driver_connection
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(
                    f"LISTEN {PENDING_CHANNEL}; LISTEN {RESOLVED_CHANNEL}; "
                    f"LISTEN {self.probe_listened}"
                )
            self._probe(conn)
            self._call(self._on_state, True)
            self._listened = True
            while not self._stop.is_set():
                readable = wait_readable((conn.fileno(), self._wake[0]), _PROBE_SECONDS)
                if not readable:
                    self._probe(conn)
                if conn.fileno() in readable:
                    conn.poll()
                self._dispatch(conn)
        except BaseException:
            # Dropped, not returned: returning a broken connection resets it first, and
            # SQLAlchemy logs that reset's failure as an ERROR with a traceback each time.
            with contextlib.suppress(Exception):
                raw.invalidate()
            raise
        else:
            with contextlib.suppress(Exception):
                raw.close()

    def _probe(self, conn: Any) -> None:
        """Notifies itself; returns once that came back on ``conn`` (or on close).

        Raises:
            ProbeLost: It did not come back within the probe timeout.
        """
        assert self._wake is not None
        token = uuid.uuid4().hex
        with conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (PROBE_CHANNEL, token))
        deadline = time.monotonic() + self._probe_timeout
        while token not in self._dispatch(conn):
            left = deadline - time.monotonic()
            if self._stop.is_set():
                return
            if left <= 0:
                raise ProbeLost(
                    f"a notification sent on the listening connection did not come back in "
                    f"{self._probe_timeout:g} s (a pooler in transaction mode?)"
                )
            if conn.fileno() in wait_readable((conn.fileno(), self._wake[0]), left):
                conn.poll()

    def _dispatch(self, conn: Any) -> set[str]:
        """Calls back for the notifications received; the probe tokens among them."""
        probes: set[str] = set()
        while conn.notifies:
            note = conn.notifies.pop(0)
            if note.channel == PROBE_CHANNEL:
                probes.add(note.payload)
            elif note.channel == RESOLVED_CHANNEL:
                self._call(self._on_resolved, note.payload)
            elif note.channel == PENDING_CHANNEL:
                try:
                    table, branch = parse_pending(note.payload)
                except (ValueError, TypeError):
                    log.warning("unreadable ingest notification", extra={"payload": note.payload})
                    continue
                self._call(self._on_pending, table, branch)
        return probes


def wait_readable(fds: Iterable[int], timeout: float) -> set[int]:
    """The file descriptors of ``fds`` readable within ``timeout`` seconds (none: timed out).

    ``poll``, not ``select``: ``select`` refuses descriptors from 1024 up, and a server
    allowed many files (systemd's ``LimitNOFILE=65536``) opens its listener's above that.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    # Errors and hang-ups count as readable: reading then tells what happened.
    return {fd for fd, _ in poller.poll(timeout * 1000)}
