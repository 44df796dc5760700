"""The Trino SQL engine: SQL jobs with engine TRINO run on a Trino cluster.

Trino's Iceberg connector is pointed at the same catalog and object store as the service, so
a statement sent to Trino reads and writes exactly the tables the service manages, and its
commits are ordinary Iceberg commits the service sees at once. This adapter speaks Trino's
HTTP client protocol through the official ``trino`` client (its DB-API), and keeps to what
that protocol tells it: Trino, not the adapter, decides whether a statement is a query or a
data-changing statement (``updateType``), and Trino's error type decides how a failure maps
onto the service's error taxonomy.

Three properties matter to the job worker:

* **Bounded memory.** Result pages are fetched one at a time; the first ``preview_limit``
  rows are kept, the rest only counted.
* **Cancellation.** Stopping the job sends ``DELETE`` to the query's ``nextUri`` (Trino's
  cancel), so a cancelled job does not leave a query burning the cluster.
* **Findability.** Every query carries ``source=lakehouse``, client tags and client info
  naming the job, so an operator can find it in Trino's UI and resource groups can select it.

Calls go through Trino's circuit breaker (``lakehouse.adapters.resilience``): only a Trino
that cannot be reached counts against it, not a query Trino failed. Validations are retried
(they change nothing) within the call's deadline, which also caps each HTTP request's timeout;
statements are not: a job's attempts are the job worker's business.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import pyarrow as pa
import requests
import trino.constants
import trino.dbapi
import trino.exceptions
from trino.auth import Authentication, BasicAuthentication, JWTAuthentication

from lakehouse.adapters.resilience import TRINO, Resilience
from lakehouse.adapters.sql_result import SqlOutcome
from lakehouse.config import ResilienceSettings, TrinoSettings
from lakehouse.deadlines import timeout_within
from lakehouse.domain.errors import (
    AlreadyExists,
    CommitStateUnknown,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    LakehouseError,
    NotFound,
    Unavailable,
)
from lakehouse.domain.job_context import JobContext, JobStopped

if TYPE_CHECKING:
    from requests.sessions import _Settings

logger = logging.getLogger(__name__)

#: ``X-Trino-Source``: what Trino's UI, event listeners and resource groups see as the client.
SOURCE = "lakehouse"
#: The client tag every query of the service carries (resource group selectors match on it).
CLIENT_TAG = "lakehouse"
#: The field InvalidArgument errors name (relative to the spec; ``under_spec`` prefixes it).
STATEMENT_FIELD = "sql.statement"
#: Rows taken per ``fetchmany``; the job's stop flag is checked between two of them.
FETCH_ROWS = 1000
#: Longest Trino message quoted in an error (failure messages can carry whole plans).
MAX_MESSAGE_CHARS = 1000
#: Unavailable's ErrorInfo reason for every failure of the cluster or the way to it.
UNAVAILABLE_REASON = "ENGINE_UNAVAILABLE"

# Trino's USER_ERROR names that say a name in the statement does not resolve, with the
# reason the service already uses for the same condition (see adapters/iceberg.py).
_NOT_FOUND_REASONS = {
    "TABLE_NOT_FOUND": "TABLE_NOT_FOUND",
    "SCHEMA_NOT_FOUND": "NAMESPACE_NOT_FOUND",
}
# USER_ERROR names of a query stopped from outside the service (an operator's kill). Not
# the statement's fault, and retrying a query someone deliberately killed would be wrong.
_KILLED_ERRORS = frozenset({"USER_CANCELED", "ADMINISTRATIVELY_KILLED"})

_EMPTY_PREVIEW = pa.table({})


class _Cursor(Protocol):
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


class _Connection(Protocol):
    """The part of ``trino.dbapi.Connection`` the adapter uses."""

    def cursor(self, *, stats_callback: Callable[[dict[str, Any]], None] | None = None) -> object:
        """A new cursor; ``stats_callback`` receives each page's ``stats``."""

    def close(self) -> None:
        """Closes the HTTP session."""


class TrinoEngine:
    """Runs and validates SQL statements on the configured Trino cluster; thread-safe.

    Each statement gets its own client connection (an HTTP session and a Trino client
    session), so concurrent jobs share nothing but the settings.

    Args:
        settings: The ``trino`` section of the service's settings.
        resilience: The process's breakers; a private set when None (tests, tools).

    Raises:
        ValueError: The settings cannot work: no endpoint, an endpoint that is not a plain
            ``http(s)://host[:port]`` URL, both a password and a token, or credentials
            over plain http (the client refuses to send them, and so should we).
    """

    def __init__(self, settings: TrinoSettings, resilience: Resilience | None = None) -> None:
        if not settings.endpoint:
            raise ValueError("trino.endpoint is not set; the Trino engine is off")
        parts = urllib.parse.urlsplit(settings.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("trino.endpoint must be an http:// or https:// URL with a host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            # The client appends /v1/statement to host:port; a path would be dropped.
            raise ValueError("trino.endpoint must not have a path, query or fragment")
        if parts.username or parts.password:
            raise ValueError("trino.endpoint must not hold credentials; use trino.password")
        if settings.password is not None and settings.access_token is not None:
            raise ValueError("set trino.password or trino.access_token, not both")
        self._secrets = [
            s.get_secret_value() for s in (settings.password, settings.access_token) if s
        ]
        if self._secrets and parts.scheme != "https":
            raise ValueError("trino.password and trino.access_token need an https:// endpoint")
        port = parts.port or (443 if parts.scheme == "https" else 8080)
        self._settings = settings
        self._scheme = parts.scheme
        self._base_url = f"{parts.scheme}://{parts.hostname}:{port}"
        self._ca_file = str(settings.ca_file) if settings.ca_file else None
        self._resilience = resilience or Resilience(ResilienceSettings())
        self._breaker = self._resilience.breaker(TRINO)

    @property
    def endpoint(self) -> str:
        """The coordinator's base URL (scheme, host and port only; safe to log)."""
        return self._base_url

    # -- Public operations ---------------------------------------------------------------

    def check_statement(self, statement: str, *, default_namespace: str = "") -> None:
        """Validates ``statement`` without running it, with ``EXPLAIN (TYPE VALIDATE)``.

        Trino parses and analyses the statement (names, types, access control) exactly as
        it would to run it, so a typo or an unknown table fails the CreateJob call instead
        of a job attempt later.

        Args:
            statement: The statement, in Trino's dialect.
            default_namespace: The schema unqualified table names resolve in (pass the
                spec's ``default_namespace``: without it such names do not resolve).

        Raises:
            InvalidArgument: Trino rejected the statement (field ``sql.statement``, with
                Trino's message and error name).
            NotFound: A table or namespace the statement names does not exist.
            Unavailable: Trino cannot be reached or failed (retryable).
        """
        sql = f"EXPLAIN (TYPE VALIDATE) {_clean(statement)}"

        def attempt() -> None:
            connection = self._connect(
                default_namespace,
                tags=[CLIENT_TAG, "lakehouse-validate"],
                timeout=timeout_within(self._settings.request_timeout_seconds, TRINO),
            )
            try:
                cursor = cast(_Cursor, connection.cursor())
                cursor.execute(sql)
                while cursor.fetchmany(FETCH_ROWS):
                    pass
            except trino.exceptions.TrinoQueryError as err:
                raise self._query_error(err) from err
            except (trino.exceptions.Error, trino.exceptions.HttpError, OSError) as err:
                raise self._transport_error(err) from err
            finally:
                connection.close()

        self._resilience.call_sync(attempt, uses=(self._breaker,), retry=True, outage=_unreachable)

    def run_statement(
        self,
        *,
        statement: str,
        default_namespace: str,
        preview_limit: int,
        destination: tuple[str, str] | None,
        ctx: JobContext,
        preview_max_bytes: int = 1024 * 1024,
    ) -> SqlOutcome:
        """Runs ``statement`` on Trino to its end; blocking, for a job's worker thread.

        Args:
            statement: The statement, in Trino's dialect.
            default_namespace: The schema unqualified table names resolve in ("" for none).
            preview_limit: How many result rows to keep for the preview; the rest are
                counted, not stored.
            destination: ``(namespace, table)`` of a new table to create from the query's
                result (``CREATE TABLE ... AS``); the preview is then empty. Whether the
                table exists after a failed attempt is for the caller to check.
            ctx: The job's context: progress goes out through it, and stopping the job
                cancels the Trino query.
            preview_max_bytes: About the most bytes the preview's values may take; rows
                past it are counted, not kept (the preview is then truncated).

        Returns:
            For a query, its row count and preview; for a data-changing statement (and for
            a destination table), Trino's update count and an empty preview. A stop that
            arrives after Trino finished a data-changing statement cannot undo it: its
            outcome is returned, not JobStopped.

        Raises:
            JobStopped: The job was asked to stop; the Trino query was cancelled.
            InvalidArgument: Trino rejected the statement (field ``sql.statement``).
            NotFound: A table or namespace the statement names does not exist.
            AlreadyExists: The destination table exists already.
            FailedPrecondition: The query was killed in Trino by someone else.
            CommitStateUnknown: The connection to Trino broke while a data-changing
                statement ran: it may have been applied.
            Unavailable: Trino cannot be reached, failed, or ran out of resources.
        """
        sql = _clean(statement)
        if destination is not None:
            sql = self.destination_statement(sql, destination)
        ctx.check()
        return self._resilience.call_sync(
            lambda: self._run_once(sql, default_namespace, preview_limit, ctx, preview_max_bytes),
            uses=(self._breaker,),
            retry=False,
            outage=_unreachable,
        )

    def _run_once(
        self,
        sql: str,
        default_namespace: str,
        preview_limit: int,
        ctx: JobContext,
        preview_max_bytes: int,
    ) -> SqlOutcome:
        connection = self._connect(
            default_namespace,
            tags=[CLIENT_TAG, _tag(f"lakehouse-job:{ctx.job_id}")],
            info={"job_id": ctx.job_id, "attempt": ctx.attempt},
        )
        try:
            query = _RunningQuery(ctx)
            cursor = cast(_Cursor, connection.cursor(stats_callback=query.on_stats))
            query.attach(cursor)
            unregister = ctx.on_stop(query.cancel)
            try:
                return self._run(cursor, sql, preview_limit, ctx, preview_max_bytes)
            except JobStopped:
                query.cancel()
                raise
            except trino.exceptions.TrinoQueryError as err:
                # The query is over on Trino's side (that is what the error says).
                if ctx.stopping:
                    raise _stop_reason(ctx) from err
                raise self._query_error(err) from err
            except (trino.exceptions.Error, trino.exceptions.HttpError, OSError) as err:
                if ctx.stopping:
                    raise _stop_reason(ctx) from err
                # The query may still run (only the way to it broke): ask Trino to drop it
                # rather than wait for its abandoned-query timeout.
                query.cancel()
                if cursor.update_type is not None:
                    # A write that may have committed: retrying blindly could apply it twice.
                    raise self._outcome_unknown(cursor, self._describe(err)) from err
                raise self._transport_error(err) from err
            finally:
                unregister()
        finally:
            connection.close()

    def check(self, timeout: float | None = None) -> None:
        """Health: asks the coordinator for ``/v1/info``, a cheap request that runs nothing.

        It bypasses the breaker and closes it when Trino answers.

        Args:
            timeout: Seconds to wait at most (the caller's deadline); defaults to
                ``trino.request_timeout_seconds``.

        Raises:
            Unavailable: The coordinator does not answer, answers an error, or is starting.
        """
        limit = self._settings.request_timeout_seconds if timeout is None else timeout
        context: ssl.SSLContext | None = None
        if self._scheme == "https":
            context = ssl.create_default_context(cafile=self._ca_file)
        request = urllib.request.Request(
            f"{self._base_url}/v1/info", headers={"User-Agent": SOURCE}
        )
        try:
            with urllib.request.urlopen(request, timeout=limit, context=context) as response:
                info = json.loads(response.read())
        except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts; bad JSON
            raise Unavailable(
                f"Trino at {self._base_url} does not answer: {self._describe(err)}",
                reason=UNAVAILABLE_REASON,
            ) from err
        if not isinstance(info, dict) or info.get("starting", False):
            raise Unavailable(f"Trino at {self._base_url} is starting", reason=UNAVAILABLE_REASON)
        self._breaker.probe_succeeded()

    def destination_statement(self, query: str, destination: tuple[str, str]) -> str:
        """The ``CREATE TABLE ... AS`` statement that writes ``query``'s result to a new table.

        The query is parenthesised (Trino's grammar allows ``AS ( query )``) so that it
        cannot add clauses of its own to the CREATE TABLE, such as ``WITH NO DATA``; the
        newline before the closing parenthesis keeps a trailing ``--`` comment from
        swallowing it.
        """
        namespace, table = destination
        name = ".".join(_quote(part) for part in (self._settings.catalog, namespace, table))
        return f"CREATE TABLE {name} AS (\n{query}\n)"

    # -- Internals -----------------------------------------------------------------------

    def _connect(
        self,
        schema: str,
        *,
        tags: list[str],
        info: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> _Connection:
        # With ``timeout`` (from the call's deadline) each HTTP request gets that long and a
        # single attempt: the client's own retries would run past the deadline; the adapter's
        # stop in time.
        settings = self._settings
        auth: Authentication | None = None
        if settings.password is not None:
            auth = BasicAuthentication(settings.user, settings.password.get_secret_value())
        elif settings.access_token is not None:
            auth = JWTAuthentication(settings.access_token.get_secret_value())
        headers = {"X-Trino-Client-Info": json.dumps({"client": SOURCE, **(info or {})})}
        return cast(
            _Connection,
            trino.dbapi.Connection(
                host=self._base_url,
                user=settings.user,
                source=SOURCE,
                catalog=settings.catalog,
                schema=schema or None,
                auth=auth,
                # The client ignores `verify` when given a session; the session carries it.
                http_session=_PinnedCaSession(self._ca_file) if self._ca_file else None,
                request_timeout=settings.request_timeout_seconds if timeout is None else timeout,
                max_attempts=trino.constants.DEFAULT_MAX_ATTEMPTS if timeout is None else 1,
                client_tags=tags,
                http_headers=headers,
                # Results must not depend on the zone of whichever host runs the worker.
                timezone="UTC",
            ),
        )

    def _run(
        self,
        cursor: _Cursor,
        sql: str,
        preview_limit: int,
        ctx: JobContext,
        preview_max_bytes: int = 1024 * 1024,
    ) -> SqlOutcome:
        cursor.execute(sql)
        if cursor.update_type is not None:
            return self._write_outcome(cursor, ctx)
        ctx.check()  # a stop during execute() cancelled the query and ended its wait early
        columns = [_plan_column(str(c[0]), str(c[1])) for c in cursor.description or []]
        limit = max(preview_limit, 0)
        kept: list[list[Any]] = []
        room_bytes = preview_max_bytes
        total = 0
        while True:
            ctx.check()
            rows = cursor.fetchmany(FETCH_ROWS)
            if not rows:
                break
            total += len(rows)
            # Rows are kept while both the row limit and the byte cap allow: a few huge
            # values would otherwise be held here and stored with the job.
            for row in rows:
                if len(kept) >= limit or room_bytes <= 0:
                    break
                size = _row_bytes(row)
                if size > room_bytes:
                    room_bytes = 0
                    break
                room_bytes -= size
                kept.append(row)
        ctx.check()
        return SqlOutcome(
            rows_affected=total, preview=_preview(columns, kept), truncated=total > len(kept)
        )

    def _write_outcome(self, cursor: _Cursor, ctx: JobContext) -> SqlOutcome:
        """The outcome of a data-changing statement (INSERT, ..., CREATE TABLE AS).

        The client has drained its pages already, unless a stop cancelled it on the way.
        A cancel can lose the race with Trino's commit, so after one the query is followed
        to its end: USER_CANCELED (raised as JobStopped by the caller) means nothing was
        written; FINISHED means the write happened, and a stop must not hide that.
        """
        if not _finished(cursor) and ctx.stopping:
            while cursor.fetchmany(FETCH_ROWS):
                pass
        if not _finished(cursor):
            # execute() returned before the end without a stop: not expected from the client.
            raise self._outcome_unknown(cursor, "the client returned before the end")
        # Trino reports the rows written as the update count.
        return SqlOutcome(
            rows_affected=max(cursor.rowcount, 0), preview=_EMPTY_PREVIEW, truncated=False
        )

    def _query_error(self, err: trino.exceptions.TrinoQueryError) -> LakehouseError:
        """Maps a failure Trino reported for the query onto the service's errors."""
        name = err.error_name or "UNKNOWN"
        kind = err.error_type or "UNKNOWN"
        message = self._redact(err.message)[:MAX_MESSAGE_CHARS]
        metadata = {"engine": "trino", "trino_error_name": name}
        if err.query_id:
            metadata["trino_query_id"] = err.query_id
        if kind == "USER_ERROR":
            if name in _NOT_FOUND_REASONS:
                return NotFound(message, reason=_NOT_FOUND_REASONS[name], metadata=metadata)
            if name == "TABLE_ALREADY_EXISTS":
                return AlreadyExists(message, reason="TABLE_ALREADY_EXISTS", metadata=metadata)
            if name in _KILLED_ERRORS:
                return FailedPrecondition(
                    f"the Trino query was stopped outside the service ({name}): {message}",
                    reason="QUERY_KILLED",
                    metadata=metadata,
                )
            description = f"{message} ({name})"
            return InvalidArgument(
                f"{STATEMENT_FIELD}: {description}",
                violations=[FieldViolation(STATEMENT_FIELD, description)],
                metadata=metadata,
            )
        # INTERNAL_ERROR, INSUFFICIENT_RESOURCES, EXTERNAL (a connector's storage or catalog).
        return Unavailable(
            f"Trino failed the query ({kind} {name}): {message}",
            reason=UNAVAILABLE_REASON,
            metadata=metadata,
        )

    def _transport_error(self, err: BaseException) -> Unavailable:
        """Maps a failure to talk to Trino (refused, timed out, HTTP error status)."""
        return Unavailable(
            f"Trino at {self._base_url} is unavailable: {self._describe(err)}",
            reason=UNAVAILABLE_REASON,
            metadata={"engine": "trino"},
        )

    def _outcome_unknown(self, cursor: _Cursor, why: str) -> CommitStateUnknown:
        """A data-changing statement whose end was not seen (it may or may not have run)."""
        metadata = {"engine": "trino", "trino_update_type": cursor.update_type or ""}
        if cursor.query_id:
            metadata["trino_query_id"] = cursor.query_id
        return CommitStateUnknown(
            f"lost Trino's {cursor.update_type} statement {cursor.query_id} before its end "
            f"({why}); look the query up in Trino before running it again",
            metadata=metadata,
        )

    def _describe(self, err: BaseException) -> str:
        text = str(err) or type(err).__name__
        return self._redact(f"{type(err).__name__}: {text}")[:MAX_MESSAGE_CHARS]

    def _redact(self, text: str) -> str:
        """Removes the configured secrets from ``text``.

        Belt and braces: no known message carries them, but error texts come from libraries
        and servers the service does not control.
        """
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class _PinnedCaSession(requests.Session):
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


class _RunningQuery:
    """Ties one Trino query to its job: progress out, cancellation in.

    ``cancel`` may be called from the worker's thread (``ctx.stop``) while the job's thread
    is inside the client waiting for a page. If the query has no id yet (its POST is in
    flight) there is nothing to cancel; ``on_stats`` runs as soon as the POST answers and
    cancels then.
    """

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._cursor: _Cursor | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def attach(self, cursor: _Cursor) -> None:
        """Sets the cursor the query runs on (made after this object: it needs on_stats)."""
        self._cursor = cursor

    def on_stats(self, stats: dict[str, Any]) -> None:
        """The client's per-page callback: forwards split progress, enforces a stop.

        Runs inside the client, so it must not raise.
        """
        state = str(stats.get("state", ""))
        total = stats.get("totalSplits")
        done = stats.get("completedSplits")
        query_id = stats.get("queryId", "")
        if isinstance(total, int) and isinstance(done, int) and total > 0:
            self._ctx.progress(
                done / total, f"Trino query {query_id} {state}: {done}/{total} splits"
            )
        elif state:
            self._ctx.progress(0.0, f"Trino query {query_id} {state}")
        if self._ctx.stopping:
            self.cancel()

    def cancel(self) -> None:
        """Asks Trino to cancel the query (once); never raises."""
        cursor = self._cursor
        with self._lock:
            if self._cancelled or cursor is None or cursor.query_id is None:
                return
            self._cancelled = True
        try:
            cursor.cancel()
        except Exception:  # a failed cancel must not hide why the job stopped
            logger.warning(
                "could not cancel Trino query %s",
                cursor.query_id,
                exc_info=True,
                extra={"job_id": self._ctx.job_id},
            )
        else:
            logger.info(
                "cancelled Trino query %s", cursor.query_id, extra={"job_id": self._ctx.job_id}
            )


def _unreachable(error: Unavailable) -> bool:
    """Whether Trino itself could not be reached (what its breaker counts and retries).

    A query Trino ran and failed (out of resources, a connector's storage down) carries
    Trino's error name; it says nothing about other queries, which may well succeed.
    """
    return "trino_error_name" not in error.metadata


# -- Result conversion -------------------------------------------------------------------


@dataclass(frozen=True)
class TrinoType:
    """A Trino type as the client protocol names it (``decimal(10, 2)``, ``row(a bigint)``).

    Attributes:
        base: The lower-case base name: ``bigint``, ``timestamp with time zone``, ``array``...
        params: Numeric parameters (length, precision, scale).
        fields: Element types: one for array, key and value for map, the fields of a row
            (with their names, None when unnamed).
    """

    base: str
    params: tuple[int, ...] = ()
    fields: tuple[tuple[str | None, TrinoType], ...] = ()


_TOKEN = re.compile(
    r'\s*(?:(?P<quoted>"(?:[^"]|"")*")|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<number>\d+)'
    r"|(?P<punct>[(),]))"
)
# Multi-word types: their words must not be read as a row field's name and type.
_MULTIWORD_TYPES = frozenset(
    {"interval day to second", "interval year to month", "double precision"}
)


def parse_trino_type(text: str) -> TrinoType:
    """Parses a type as Trino writes it in a result's ``columns``.

    Raises:
        ValueError: ``text`` is not a type in Trino's notation.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"unexpected character at {pos} in type {text!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    parser = _TypeParser(tokens)
    parsed = parser.type()
    if parser.pos != len(tokens):
        raise ValueError(f"trailing text in type {text!r}")
    return parsed


class _TypeParser:
    """Recursive descent over the tokens of one type."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, kind: str, value: str | None = None) -> str:
        token_kind, token = self.peek()
        if token_kind != kind or (value is not None and token != value):
            raise ValueError(f"expected {value or kind}, found {token or 'the end'}")
        self.pos += 1
        return token

    def words(self) -> list[str]:
        words = []
        while self.peek()[0] == "word":
            words.append(self.take("word").lower())
        return words

    def type(self) -> TrinoType:
        words = self.words()
        if not words:
            raise ValueError(f"expected a type name, found {self.peek()[1] or 'the end'}")
        params: list[int] = []
        fields: list[tuple[str | None, TrinoType]] = []
        if self.peek() == ("punct", "("):
            self.take("punct", "(")
            while True:
                if words == ["row"]:
                    fields.append(self.row_field())
                elif self.peek()[0] == "number":
                    params.append(int(self.take("number")))
                else:
                    fields.append((None, self.type()))
                if self.peek() == ("punct", ","):
                    self.take("punct", ",")
                    continue
                self.take("punct", ")")
                break
            words += self.words()  # "timestamp(3) with time zone"
        return TrinoType(" ".join(words), tuple(params), tuple(fields))

    def row_field(self) -> tuple[str | None, TrinoType]:
        kind, token = self.peek()
        if kind == "quoted":
            self.pos += 1
            return token[1:-1].replace('""', '"'), self.type()
        # "a bigint" is a named field, "bigint" and "interval day to second" are not.
        count = 0
        while self.peek(count)[0] == "word":
            count += 1
        spelled = " ".join(self.peek(i)[1].lower() for i in range(count))
        if count >= 2 and spelled not in _MULTIWORD_TYPES:
            return self.take("word"), self.type()
        return None, self.type()


@dataclass(frozen=True)
class _Column:
    name: str
    arrow_type: pa.DataType
    convert: Callable[[Any], Any]


def _plan_column(name: str, type_text: str) -> _Column:
    try:
        arrow_type, convert = _plan(parse_trino_type(type_text))
    except ValueError:
        logger.warning("unknown Trino type %r of column %r; previewed as text", type_text, name)
        arrow_type, convert = pa.string(), _nullable(_text)
    return _Column(name, arrow_type, convert)


_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double": pa.float64(),
    "varchar": pa.string(),
    "char": pa.string(),
    "json": pa.string(),
    "varbinary": pa.binary(),
    "date": pa.date32(),
}


def _plan(t: TrinoType) -> tuple[pa.DataType, Callable[[Any], Any]]:
    """The Arrow type of a Trino type, and a converter for its values.

    The converter turns the Python value the client made (``trino.mapper``) into one that
    ``pa.array`` accepts for that Arrow type.
    """
    if t.base in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[t.base], _identity
    if t.base == "decimal" and len(t.params) == 2:
        precision, scale = t.params
        if precision <= 38:
            return pa.decimal128(precision, scale), _identity
        return pa.decimal256(precision, scale), _identity
    if t.base in ("timestamp", "timestamp with time zone"):
        # The client rounds to microseconds (what Python's datetime holds): beyond that,
        # microseconds are the honest unit.
        unit = "ms" if t.params and t.params[0] <= 3 else "us"
        if t.base == "timestamp":
            return pa.timestamp(unit), _identity
        # Arrow has one zone per column, Trino one per value: normalise to UTC.
        return pa.timestamp(unit, tz="UTC"), _nullable(_to_utc)
    if t.base == "time":
        if t.params and t.params[0] <= 3:
            return pa.time32("ms"), _identity
        return pa.time64("us"), _identity
    if t.base == "array" and len(t.fields) == 1:
        element_type, element = _plan(t.fields[0][1])
        return pa.list_(element_type), _nullable(lambda v: [element(x) for x in v])
    if t.base == "map" and len(t.fields) == 2:
        key_type, key = _plan(t.fields[0][1])
        value_type, value = _plan(t.fields[1][1])
        return pa.map_(key_type, value_type), _nullable(
            lambda v: [(key(k), value(x)) for k, x in v.items()]
        )
    if t.base == "row" and t.fields:
        plans = [_plan(field_type) for _, field_type in t.fields]
        struct = pa.struct(
            [
                pa.field(name or f"_col{i}", arrow_type)
                for i, ((name, _), (arrow_type, _)) in enumerate(zip(t.fields, plans, strict=True))
            ]
        )
        converters = [convert for _, convert in plans]
        return struct, _nullable(lambda v: tuple(c(x) for c, x in zip(converters, v, strict=True)))
    # uuid, ipaddress, interval..., time with time zone, number, sketches: text keeps them
    # readable without inventing a representation.
    return pa.string(), _nullable(_text)


def _identity(value: Any) -> Any:
    return value


def _nullable(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _to_utc(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _row_bytes(row: Sequence[Any]) -> int:
    """About how many bytes a result row's values take (text and binary by their length)."""
    return sum(len(v) if isinstance(v, (str, bytes)) else 16 for v in row) + 8


def _preview(columns: Sequence[_Column], rows: list[list[Any]]) -> pa.Table:
    """The kept rows as an Arrow table with the result's schema."""
    arrays = []
    fields = []
    for index, column in enumerate(columns):
        values = [column.convert(row[index]) for row in rows]
        try:
            arrays.append(pa.array(values, type=column.arrow_type))
            fields.append(pa.field(column.name, column.arrow_type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            # A value the mapping did not foresee: show the column as text rather than
            # failing a query that succeeded.
            logger.warning("Trino column %r previewed as text", column.name, exc_info=True)
            arrays.append(pa.array([None if v is None else _text(v) for v in values], pa.string()))
            fields.append(pa.field(column.name, pa.string()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# -- Small helpers -----------------------------------------------------------------------


def _clean(statement: str) -> str:
    """The statement without surrounding blanks and trailing semicolons.

    Trino's protocol takes one statement without a terminator (a trailing ``;`` is a
    syntax error there), while people and other engines write one out of habit.
    """
    return statement.strip().rstrip(";").rstrip()


def _quote(identifier: str) -> str:
    """A double-quoted SQL identifier (quotes inside are doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def _tag(text: str) -> str:
    """A client tag: X-Trino-Client-Tags is a comma-separated list, so no commas or blanks."""
    return re.sub(r"[^A-Za-z0-9_.:=-]", "_", text)[:200]


def _finished(cursor: _Cursor) -> bool:
    """Whether the last page Trino sent says the query finished (it then has no nextUri)."""
    return (cursor.stats or {}).get("state") == "FINISHED"


def _stop_reason(ctx: JobContext) -> JobStopped:
    """The JobStopped the context raises (it knows why the job stops)."""
    try:
        ctx.check()
    except JobStopped as stopped:
        return stopped
    return JobStopped("cancelled")
