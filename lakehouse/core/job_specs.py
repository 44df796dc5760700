"""Checking a job spec before a job is created, and what a spec says about its job.

Everything that can be known wrong at ``CreateJob`` time is refused there, so a bad request
creates no job: names, numbers, durations, source URIs, a SQL statement the engine cannot
parse, a table that does not exist. What can only fail while running (a file that turns out
corrupt, a commit conflict) fails the job instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from lakehouse.config import JobsSettings
from lakehouse.domain import job_specs as js
from lakehouse.domain.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from lakehouse.domain.import_uris import check_source_uris
from lakehouse.domain.jobs import KIND_NAMES
from lakehouse.domain.names import check_identifier
from lakehouse.domain.refs import check_branch
from lakehouse.domain.row_filter import parse_row_filter_off_loop
from lakehouse.domain.tables import TableInfo

#: Longest SQL statement accepted (a statement is code, not data).
MAX_STATEMENT_BYTES = 1024 * 1024
DEFAULT_PREVIEW_ROWS = 100
MAX_PREVIEW_ROWS = 10_000
DEFAULT_ORPHAN_AGE_SECONDS = 3 * 24 * 3600
MIN_ORPHAN_AGE_SECONDS = 3600
DEFAULT_EXPIRE_AGE_SECONDS = 5 * 24 * 3600
MAX_REQUEST_ID_LENGTH = 128
#: The request field a SQL job's statement errors are reported against.
STATEMENT_FIELD = "spec.sql.statement"

LoadTable = Callable[[str, str], Awaitable[TableInfo]]
LoadNamespace = Callable[[str], Awaitable[object]]
#: Refuses a new table in a namespace that may hold no more (raises QuotaExceeded).
CheckNewTable = Callable[[str], Awaitable[None]]
#: Checks a SQL spec with its engine: parses the statement and confirms the tables it names
#: exist. Raises InvalidArgument (fields relative to the spec) or NotFound.
CheckSql = Callable[[js.SqlJobSpec], Awaitable[None]]


class _SecondsNanos(Protocol):
    """A duration or timestamp as seconds and nanos (the domain's, or a request's)."""

    @property
    def seconds(self) -> int: ...

    @property
    def nanos(self) -> int: ...


@dataclass(frozen=True)
class SpecSummary:
    """What the job store indexes of a checked spec.

    Attributes:
        kind: The ``JobKind`` value.
        namespace: The namespace of the table the job works on ("" when none).
        table: The table the job works on ("" when none).
        digest: A digest of the spec, to tell a retried CreateJob from a reused request id.
    """

    kind: int
    namespace: str
    table: str
    digest: str


@contextmanager
def under_spec() -> Iterator[None]:
    """Re-raises adapters' InvalidArgument errors with fields named from the request's root.

    Adapters name fields relative to the spec (``sql.statement``); clients see the request
    field (``spec.sql.statement``).
    """
    try:
        yield
    except InvalidArgument as exc:
        if not exc.violations or all(v.field.startswith("spec.") for v in exc.violations):
            raise
        violations = [
            FieldViolation(
                v.field if v.field.startswith("spec.") else f"spec.{v.field}", v.description
            )
            for v in exc.violations
        ]
        message = exc.message
        for old, new in zip(exc.violations, violations, strict=True):
            if message.startswith(f"{old.field}:"):
                message = new.field + message[len(old.field) :]
                break
        raise InvalidArgument(
            message, violations=violations, reason=exc.reason, metadata=exc.metadata
        ) from None


def spec_digest(encoded: bytes) -> str:
    """A stable digest of a spec, from its stored (deterministic) bytes (``JobCodec``)."""
    return hashlib.sha256(encoded).hexdigest()


def check_request_id(request_id: str) -> None:
    """Checks CreateJob's optional request id: 1 to 128 printable ASCII characters."""
    if not request_id:
        return
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument.field(
            "request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} characters"
        )
    if not all(c.isascii() and c.isprintable() for c in request_id):
        raise InvalidArgument.field("request_id", "must be printable ASCII")


def duration_seconds(field: str, value: _SecondsNanos) -> float:
    """A Duration as seconds, refusing negative and malformed ones."""
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument.field(field, "must not be negative")
    if value.nanos >= 1_000_000_000 or value.seconds > 100 * 365 * 24 * 3600:
        raise InvalidArgument.field(field, "is out of range")
    return value.seconds + value.nanos / 1e9


def timestamp_to_ms(field: str, value: _SecondsNanos) -> int:
    """A Timestamp as epoch milliseconds, refusing values outside years 1970 to 9999."""
    if value.seconds < 0 or value.seconds > 253_402_300_799 or not 0 <= value.nanos < 10**9:
        raise InvalidArgument.field(field, "must be a time between 1970 and 9999")
    return value.seconds * 1000 + value.nanos // 1_000_000


def job_timeout_seconds(spec: js.JobSpec, settings: JobsSettings) -> float:
    """The wall-clock limit of one attempt of the job: the spec's, or the configured default.

    Raises:
        InvalidArgument: On field ``spec.timeout``: malformed, zero or negative, or above
            ``jobs.max_timeout_seconds``.
    """
    if spec.timeout is None:
        return settings.timeout_seconds
    seconds = duration_seconds("spec.timeout", spec.timeout)
    if seconds <= 0:
        raise InvalidArgument.field("spec.timeout", "must be positive (or unset for the default)")
    if seconds > settings.max_timeout_seconds:
        raise InvalidArgument.field(
            "spec.timeout",
            f"must be at most {settings.max_timeout_seconds:g}s (jobs.max_timeout_seconds)",
        )
    return seconds


def preview_rows(requested: int) -> int:
    """The effective preview size: 0 means the default, above the maximum is clamped."""
    if requested < 0:
        raise InvalidArgument.field("sql.preview_row_limit", "must not be negative")
    return min(requested or DEFAULT_PREVIEW_ROWS, MAX_PREVIEW_ROWS)


class SpecChecker:
    """Checks specs against the catalog, the SQL engines and the import allow-list."""

    def __init__(
        self,
        load_table: LoadTable,
        check_sql: CheckSql,
        *,
        load_namespace: LoadNamespace,
        import_prefixes: tuple[str, ...],
        check_new_table: CheckNewTable | None = None,
    ) -> None:
        self._load_table = load_table
        self._check_new_table = check_new_table
        self._load_namespace = load_namespace
        self._check_sql = check_sql
        self._import_prefixes = import_prefixes

    async def check(self, spec: js.JobSpec, digest: str) -> SpecSummary:
        """Checks ``spec`` completely; returns what the store indexes (with ``digest``).

        Raises:
            InvalidArgument: A field is malformed (named in the error).
            NotFound: The table (or the SQL statement's table) does not exist.
            AlreadyExists: A SQL job's destination table exists.
            QuotaExceeded: A SQL job's destination namespace holds as many tables as allowed.
        """
        body = spec.body
        which = spec.field
        if body is None or which is None:
            raise InvalidArgument.field(
                "spec.kind", f"set exactly one of {', '.join(KIND_NAMES.values())}"
            )
        kind = spec.kind
        if isinstance(body, js.SqlJobSpec):
            namespace, table = await self._check_sql_spec(body)
            return SpecSummary(kind, namespace, table, digest)
        namespace = check_identifier(f"spec.{which}.namespace", body.namespace)
        table = check_identifier(f"spec.{which}.table", body.table)
        if isinstance(body, js.CompactTableSpec):
            self._check_compact_numbers(body)
            check_branch("spec.compact_table.branch", body.branch)
        elif isinstance(body, js.ExpireSnapshotsSpec):
            self._check_expire(body)
        elif isinstance(body, js.RemoveOrphanFilesSpec):
            self._check_orphans(body)
        else:
            self._check_import(body)
        info = await self._load_table(namespace, table)
        if isinstance(body, js.CompactTableSpec) and body.row_filter:
            await parse_row_filter_off_loop(
                body.row_filter, info.schema, field="spec.compact_table.row_filter"
            )
        return SpecSummary(kind, namespace, table, digest)

    async def _check_sql_spec(self, sql: js.SqlJobSpec) -> tuple[str, str]:
        statement = sql.statement.strip()
        if not statement:
            raise InvalidArgument.field(STATEMENT_FIELD, "must not be empty")
        if len(sql.statement.encode()) > MAX_STATEMENT_BYTES:
            raise InvalidArgument.field(
                STATEMENT_FIELD, f"must be at most {MAX_STATEMENT_BYTES} bytes"
            )
        if sql.engine not in js.SQL_ENGINES:
            raise InvalidArgument.field("spec.sql.engine", f"unknown engine {sql.engine}")
        if sql.preview_format not in js.ROW_FORMATS:
            raise InvalidArgument.field(
                "spec.sql.preview_format", f"unknown format {sql.preview_format}"
            )
        preview_rows(sql.preview_row_limit)
        if sql.default_namespace:
            check_identifier("spec.sql.default_namespace", sql.default_namespace)
        namespace = table = ""
        if sql.destination_table or sql.destination_namespace:
            table = check_identifier("spec.sql.destination_table", sql.destination_table)
            namespace = sql.destination_namespace or sql.default_namespace
            if not namespace:
                raise InvalidArgument.field(
                    "spec.sql.destination_namespace",
                    "is required with destination_table when default_namespace is empty",
                )
            check_identifier("spec.sql.destination_namespace", namespace)
        try:
            with under_spec():
                await self._check_sql(sql)
        except NotFound as exc:
            # NOT_FOUND carries no BadRequest; ErrorInfo says which field named the table.
            raise NotFound(
                f"{STATEMENT_FIELD}: {exc.message}",
                reason=exc.reason,
                metadata={**exc.metadata, "field": STATEMENT_FIELD},
            ) from None
        if table:
            await self._load_namespace(namespace)
            try:
                await self._load_table(namespace, table)
            except NotFound:
                pass
            else:
                raise AlreadyExists(
                    f"destination table {namespace}.{table} exists already; "
                    "a SQL job writes its result into a new table",
                    reason="TABLE_ALREADY_EXISTS",
                    metadata={"namespace": namespace, "table": table},
                )
            if self._check_new_table is not None:
                await self._check_new_table(namespace)
        return namespace, table

    @staticmethod
    def _check_compact_numbers(spec: js.CompactTableSpec) -> None:
        for name in ("target_file_size_bytes", "small_file_size_bytes", "min_input_files"):
            if getattr(spec, name) < 0:
                raise InvalidArgument.field(f"spec.compact_table.{name}", "must not be negative")
        if spec.min_input_files == 1:
            raise InvalidArgument.field(
                "spec.compact_table.min_input_files", "must be at least 2 (or 0 for the default)"
            )

    @staticmethod
    def _check_expire(spec: js.ExpireSnapshotsSpec) -> None:
        if spec.older_than is not None:
            timestamp_to_ms("spec.expire_snapshots.older_than", spec.older_than)
        if spec.max_snapshot_age is not None:
            duration_seconds("spec.expire_snapshots.max_snapshot_age", spec.max_snapshot_age)
        if spec.retain_last < 0:
            raise InvalidArgument.field("spec.expire_snapshots.retain_last", "must not be negative")

    @staticmethod
    def _check_orphans(spec: js.RemoveOrphanFilesSpec) -> None:
        if spec.min_file_age is not None:
            age = duration_seconds("spec.remove_orphan_files.min_file_age", spec.min_file_age)
            if age < MIN_ORPHAN_AGE_SECONDS:
                raise InvalidArgument.field(
                    "spec.remove_orphan_files.min_file_age",
                    "must be at least 1h, so that files of writes in progress are kept",
                )

    def _check_import(self, spec: js.ImportFilesSpec) -> None:
        if spec.format not in js.FILE_FORMATS:
            raise InvalidArgument.field("spec.import_files.format", f"unknown format {spec.format}")
        with under_spec():
            check_source_uris(spec.source_prefix, list(spec.source_uris), self._import_prefixes)
