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
  cancel), so a cancelled job does not leave a query burning the cluster (``running_query``).
* **Findability.** Every query carries ``source=lakehouse``, client tags and client info
  naming the job, so an operator can find it in Trino's UI and resource groups can select it.

Calls go through Trino's circuit breaker (``lakehouse.adapters.resilience``): only a Trino
that cannot be reached counts against it, not a query Trino failed. Validations are retried
(they change nothing) within the call's deadline, which also caps each HTTP request's timeout;
statements are not: a job's attempts are the job worker's business.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, cast

import pyarrow as pa
import trino.constants
import trino.dbapi
import trino.exceptions
from trino.auth import Authentication, BasicAuthentication, JWTAuthentication

from lakehouse.adapters.resilience import TRINO, Resilience
from lakehouse.adapters.trino.client import Connection, Cursor, PinnedCaSession
from lakehouse.adapters.trino.results import plan_column, preview_table, row_bytes
from lakehouse.adapters.trino.running_query import RunningQuery
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
from lakehouse.domain.sql_result import SqlOutcome

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
                cursor = cast(Cursor, connection.cursor())
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
            query = RunningQuery(ctx)
            cursor = cast(Cursor, connection.cursor(stats_callback=query.on_stats))
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
    ) -> Connection:
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
            Connection,
            trino.dbapi.Connection(
                host=self._base_url,
                user=settings.user,
                source=SOURCE,
                catalog=settings.catalog,
                schema=schema or None,
                auth=auth,
                # The client ignores `verify` when given a session; the session carries it.
                http_session=PinnedCaSession(self._ca_file) if self._ca_file else None,
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
        cursor: Cursor,
        sql: str,
        preview_limit: int,
        ctx: JobContext,
        preview_max_bytes: int = 1024 * 1024,
    ) -> SqlOutcome:
        cursor.execute(sql)
        if cursor.update_type is not None:
            return self._write_outcome(cursor, ctx)
        ctx.check()  # a stop during execute() cancelled the query and ended its wait early
        columns = [plan_column(str(c[0]), str(c[1])) for c in cursor.description or []]
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
                size = row_bytes(row)
                if size > room_bytes:
                    room_bytes = 0
                    break
                room_bytes -= size
                kept.append(row)
        ctx.check()
        return SqlOutcome(
            rows_affected=total, preview=preview_table(columns, kept), truncated=total > len(kept)
        )

    def _write_outcome(self, cursor: Cursor, ctx: JobContext) -> SqlOutcome:
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

    def _outcome_unknown(self, cursor: Cursor, why: str) -> CommitStateUnknown:
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


def _unreachable(error: Unavailable) -> bool:
    """Whether Trino itself could not be reached (what its breaker counts and retries).

    A query Trino ran and failed (out of resources, a connector's storage down) carries
    Trino's error name; it says nothing about other queries, which may well succeed.
    """
    return "trino_error_name" not in error.metadata


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


def _finished(cursor: Cursor) -> bool:
    """Whether the last page Trino sent says the query finished (it then has no nextUri)."""
    return (cursor.stats or {}).get("state") == "FINISHED"


def _stop_reason(ctx: JobContext) -> JobStopped:
    """The JobStopped the context raises (it knows why the job stops)."""
    try:
        ctx.check()
    except JobStopped as stopped:
        return stopped
    return JobStopped("cancelled")
