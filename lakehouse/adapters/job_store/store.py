"""The job store: JobService's jobs in a SQL database (SQLite or PostgreSQL).

Jobs live in a database rather than in a process so that any server replica or
``lakehouse worker`` process can answer for, and run, any job. By default the database is
the SQLite file of pyiceberg's SQL catalog, so every table here is prefixed ``lakehouse_``
to stay clear of pyiceberg's ``iceberg_*`` tables. The same database also holds the
request-id ledger of ingest (``lakehouse.adapters.request_id_store``), which shares this
store's engine, breaker and migrations.

The store is synchronous (SQLAlchemy Core); callers run it in a thread pool. It is
thread-safe: one ``JobStore`` (one connection pool) serves every thread of a process.

Concurrency is the database's job, not the process's:

* PostgreSQL: every change locks the rows it reads (``SELECT ... FOR UPDATE``); ``claim``
  skips rows other workers are claiming (``SKIP LOCKED``) and takes a transaction-scoped
  advisory lock per (kind, table) so that two workers cannot start two maintenance jobs on
  one table at once.
* SQLite: every change runs in ``BEGIN IMMEDIATE``, which takes the database's write lock
  up front, so read-then-write transactions are serialized. pysqlite's own transaction
  handling would defer ``BEGIN`` past the reads (and so let two workers claim one job); the
  engine is set up to emit the ``BEGIN`` itself, as the SQLAlchemy SQLite documentation
  ("Serializable isolation / Savepoints / Transactional DDL") recommends.

Times are integer microseconds since the Unix epoch (UTC). Every method that depends on
"now" takes it as ``now_us``, so the caller (and tests) own the clock.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from google.rpc import code_pb2, error_details_pb2, status_pb2
from sqlalchemy import and_, delete, exists, func, insert, or_, select, text, true, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect, Select

from lakehouse.adapters.job_store.engines import SQLITE_BEGIN_OPTION, make_engine, parse_url
from lakehouse.adapters.job_store.migrations import migrate
from lakehouse.adapters.job_store.schema import ACTIVE_SCHEDULED, jobs_table
from lakehouse.adapters.resilience import CircuitBreaker, guarded
from lakehouse.domain.errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from lakehouse.domain.jobs import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    KIND_NAMES,
    KIND_SQL,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATES,
    Claim,
    JobRecord,
    LeaseLost,
)

_SQL_KIND: Final[int] = KIND_SQL

#: The ``ErrorInfo.reason`` of a job failed because its worker died on the last attempt.
LEASE_EXPIRED_REASON: Final = "JOB_LEASE_EXPIRED"
LEASE_EXPIRED_MESSAGE: Final = (
    "the worker running the job stopped responding (lease expired) on its last attempt"
)

_MICROS_PER_SECOND: Final = 1_000_000
# create() retries after losing an insert race; the next round finds the winner's job.
_CREATE_ROUNDS: Final = 3
# claim() looks at this many due jobs at most per call, bounding one transaction's work.
_CLAIM_CANDIDATES: Final = 64
_UNAVAILABLE_REASON: Final = "JOB_STORE_UNAVAILABLE"
#: The ``ErrorInfo.reason`` of a CreateJob past the principal's unfinished-job limit.
QUOTA_REASON: Final = "JOB_QUOTA_EXCEEDED"
# Jobs take seconds to minutes: a refused caller may look again after this.
_QUOTA_RETRY_SECONDS: Final = 30.0
# The jobs table's columns, as the queries below name them.
_jobs = jobs_table.c


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _record(row: Mapping[Any, Any]) -> JobRecord:
    """A record from a row (or from the values just written, keyed by column name)."""
    return JobRecord(
        id=str(row["id"]),
        kind=int(row["kind"]),
        namespace=str(row["namespace"]),
        table=str(row["table_name"]),
        state=int(row["state"]),
        spec=bytes(row["spec"]),
        request_id=row["request_id"] or "",
        spec_digest=str(row["spec_digest"]),
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        cancel_requested=bool(row["cancel_requested"]),
        worker=str(row["worker"]),
        create_time_us=int(row["create_time_us"]),
        start_time_us=_optional_int(row["start_time_us"]),
        end_time_us=_optional_int(row["end_time_us"]),
        update_time_us=int(row["update_time_us"]),
        lease_expires_us=_optional_int(row["lease_expires_us"]),
        next_attempt_us=int(row["next_attempt_us"]),
        progress_fraction=float(row["progress_fraction"]),
        progress_message=str(row["progress_message"]),
        result=_optional_bytes(row["result"]),
        error=_optional_bytes(row["error"]),
        scheduled=bool(row["scheduled"]),
        version=int(row["version"]),
        principal=str(row.get("principal") or ""),
    )


def lease_expired_status(worker: str) -> bytes:
    """The serialized ``google.rpc.Status`` stored on a job whose last attempt's worker died.

    UNAVAILABLE, because the failure was the infrastructure's, not the job's input; the
    ``ErrorInfo`` lets clients tell it apart from the job's own errors.
    """
    info = error_details_pb2.ErrorInfo(
        reason=LEASE_EXPIRED_REASON, domain=ERROR_DOMAIN, metadata={"worker": worker}
    )
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=LEASE_EXPIRED_MESSAGE)
    status.details.add().Pack(info)
    data: bytes = status.SerializeToString()
    return data


def _micros(seconds: float) -> int:
    return round(seconds * _MICROS_PER_SECOND)


def _table_lock_key(kind: int, namespace: str, table: str) -> int:
    """A stable signed 64-bit advisory lock key for one (kind, table) on PostgreSQL.

    A hash collision only makes two unrelated tables wait for each other for one claim.
    """
    name = f"lakehouse_jobs\0{kind}\0{namespace}\0{table}".encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big", signed=True)


def _principal_lock_key(principal: str) -> int:
    """A stable signed 64-bit advisory lock key for one principal's jobs on PostgreSQL."""
    name = f"lakehouse_jobs_principal\0{principal}".encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big", signed=True)


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})


def _brief(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc)
    return text_.strip().splitlines()[0][:200] if text_.strip() else type(exc).__name__


class JobStore:
    """Jobs in a SQL database, shared by every server replica and worker process.

    Thread-safe; blocking (run it in a thread pool). Call ``migrate`` once at start-up before
    anything else. Every method raises ``Unavailable`` (reason ``JOB_STORE_UNAVAILABLE``)
    when the database cannot be reached, a query times out, or SQLite stays locked past the
    busy timeout; its message never holds the URL or password.

    Args:
        url: A SQLAlchemy URL: ``sqlite:////abs/path/catalog.db`` (the catalog's own file is
            fine: the tables are prefixed ``lakehouse_jobs``) or
            ``postgresql+psycopg2://user:password@host/db``.
        busy_timeout_seconds: SQLite only: how long a writer waits for the database lock held
            by another connection or process before giving up with ``Unavailable``.
        breaker: The job store's circuit breaker: while it is open, every method but
            ``check`` raises ``CircuitOpen`` at once. None: no breaker.
        on_ended: Called with each job this store moves to a final state (SUCCEEDED,
            FAILED, CANCELLED), once the change is committed: the hook for metrics.
        on_lease_expired: Called with each job a claim found with an expired lease (taken
            over, or ended because it must not run again) and the worker that held it, once
            the change is committed.

    Raises:
        ValueError: The URL is malformed, names another database than SQLite or
            PostgreSQL, or a driver that is not installed.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_seconds: float = 10.0,
        breaker: CircuitBreaker | None = None,
        on_ended: Callable[[JobRecord], None] | None = None,
        on_lease_expired: Callable[[JobRecord, str], None] | None = None,
    ) -> None:
        self._breaker = breaker
        self._on_ended = on_ended or _ignore
        self._on_lease_expired = on_lease_expired or _ignore_expiry
        parsed = parse_url(url)
        self._url = parsed
        self._engine = make_engine(parsed, busy_timeout_seconds)
        # Writing transactions take SQLite's write lock up front (ignored on PostgreSQL).
        self._writer = self._engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        self._postgres = parsed.get_backend_name() == "postgresql"
        secrets = {url, parsed.render_as_string(hide_password=False), parsed.password or ""}
        self._secrets = sorted((s for s in secrets if s), key=len, reverse=True)

    # -- plumbing ----------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> Unavailable:
        detail = _brief(exc)
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return Unavailable(f"job store unavailable: {detail}", reason=_UNAVAILABLE_REASON)

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Turns connectivity failures into ``Unavailable``; lets everything else through."""
        try:
            yield
        except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
            raise self._unavailable(exc) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise self._unavailable(exc) from exc
            raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads (a deferred transaction, rolled back at the end)."""
        with guarded(self._breaker), self._translated(), self._engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A writing transaction, committed unless the block raises."""
        with guarded(self._breaker), self._translated(), self._writer.begin() as conn:
            yield conn

    @property
    def shared(self) -> bool:
        """Whether the database can be shared by replicas on several machines (PostgreSQL)."""
        return self._postgres

    def reading(self) -> contextlib.AbstractContextManager[Connection]:
        """A read connection for other tables of this database (the request-id ledger).

        Same breaker and error translation as the job methods.

        Raises:
            CircuitOpen: The job store's breaker is open.
            Unavailable: The database cannot be reached.
        """
        return self._reading()

    def writing(self) -> contextlib.AbstractContextManager[Connection]:
        """A writing transaction for other tables of this database (the request-id ledger).

        Raises:
            CircuitOpen: The job store's breaker is open.
            Unavailable: The database cannot be reached.
        """
        return self._writing()

    @staticmethod
    def _locked(conn: Connection, job_id: str) -> RowMapping:
        """The job's row, locked until the transaction ends (SQLite: by BEGIN IMMEDIATE)."""
        stmt = select(jobs_table).where(_jobs.id == job_id).with_for_update()
        row = conn.execute(stmt).mappings().first()
        if row is None:
            raise _not_found(job_id)
        return row

    @staticmethod
    def _owned(conn: Connection, job_id: str, worker: str, attempt: int) -> RowMapping:
        """The job's locked row if ``worker`` runs ``attempt`` of it; else ``LeaseLost``."""
        stmt = select(jobs_table).where(_jobs.id == job_id).with_for_update()
        row = conn.execute(stmt).mappings().first()
        if (
            row is None
            or row["state"] != RUNNING
            or row["worker"] != worker
            or row["attempts"] != attempt
        ):
            raise LeaseLost(job_id, worker, attempt)
        return row

    @staticmethod
    def _apply(
        conn: Connection, row: RowMapping, values: dict[str, Any], *, visible: bool = True
    ) -> JobRecord:
        """Writes ``values`` to the locked ``row``; returns the job as written.

        ``visible`` changes bump ``version`` (what WatchJob looks at). The update is also
        conditioned on the version read, so a locking bug would fail loudly here instead of
        silently letting two writers both win.
        """
        if visible:
            values = {**values, "version": row["version"] + 1}
        stmt = (
            update(jobs_table)
            .where(_jobs.id == row["id"], _jobs.version == row["version"])
            .values(values)
        )
        if conn.execute(stmt).rowcount != 1:
            raise RuntimeError(f"job {row['id']} changed under a row lock")
        return _record({**row, **values})

    # -- lifecycle ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Creates or upgrades the job tables; idempotent and safe to run concurrently.

        Every process runs it at start-up. Concurrent runs are serialized (SQLite's write
        lock; a PostgreSQL advisory lock) and DDL is transactional on both databases, so a
        crash leaves the previous version intact. For a SQLite file, its folder is created.

        Raises:
            FailedPrecondition: The database was migrated by a newer release
                (reason ``JOB_STORE_SCHEMA_TOO_NEW``); run that release or newer.
            Unavailable: The database cannot be reached.
        """
        self._make_sqlite_folder()
        with self._writing() as conn:
            migrate(conn, postgres=self._postgres)

    def _make_sqlite_folder(self) -> None:
        database = self._url.database
        if self._postgres or not database or database == ":memory:":
            return
        if database.startswith("file:"):  # a URI filename; SQLite resolves it
            return
        Path(database).parent.mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """Runs a trivial query: the readiness probe of the job store.

        It bypasses the breaker, which it is meant to close once the database answers again
        (see ``lakehouse.server.health``).

        Raises:
            Unavailable: The database cannot be reached.
        """
        with self._translated(), self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        """Closes the pooled connections. The store reconnects if used again."""
        self._engine.dispose()

    # -- client operations -----------------------------------------------------------------

    def create(
        self,
        *,
        job_id: str,
        kind: int,
        namespace: str,
        table: str,
        spec: bytes,
        spec_digest: str,
        request_id: str,
        max_attempts: int,
        now_us: int,
        scheduled: bool = False,
        principal: str = "",
        max_unfinished: int = 0,
        max_unfinished_in_namespace: int = 0,
    ) -> tuple[JobRecord, bool]:
        """Creates a QUEUED job, due at once, unless an equivalent one exists.

        Args:
            job_id: The new job's id (the caller makes it unique, e.g. a UUID).
            kind: A job kind (``lakehouse.domain.jobs.KIND_*``).
            namespace: The table's namespace; empty if the job has no table.
            table: The table; empty if the job has no table.
            spec: The serialized ``JobSpec``.
            spec_digest: A digest of the spec that tells a retry from a reuse of
                ``request_id``.
            request_id: The client's idempotency key; empty for none.
            max_attempts: Attempts allowed for retryable failures.
            now_us: The current time.
            scheduled: True for the maintenance scheduler's jobs: at most one of them per
                (kind, table) is queued or running.
            principal: Who creates the job; empty for none (the scheduler).
            max_unfinished: The most QUEUED or RUNNING jobs ``principal`` may have, this
                one included; 0 (or an empty principal) for no limit.
            max_unfinished_in_namespace: The most QUEUED or RUNNING jobs created by
                principals (not the scheduler) that ``namespace`` may have; 0 for no limit.

        Returns:
            ``(job, True)`` for a new job. ``(existing, False)`` when a job with this
            ``request_id`` and the same ``spec_digest`` exists (a retry), or, with
            ``scheduled``, when a scheduled job of this kind is queued or running on the
            table already.

        Raises:
            AlreadyExists: A job with this ``request_id`` has a different spec (reason
                ``REQUEST_ID_REUSED``), or a job with ``job_id`` exists (reason
                ``JOB_ALREADY_EXISTS``; the caller's ids are not unique).
            ResourceExhausted: ``principal`` (or ``namespace``) has as many unfinished jobs
                as it may already (reason ``JOB_QUOTA_EXCEEDED``).
            Unavailable: The database cannot be reached.
        """
        values = {
            "principal": principal,
            "id": job_id,
            "kind": kind,
            "namespace": namespace,
            "table_name": table,
            "state": QUEUED,
            "spec": spec,
            "request_id": request_id or None,
            "spec_digest": spec_digest,
            "attempts": 0,
            "max_attempts": max_attempts,
            "cancel_requested": False,
            "worker": "",
            "create_time_us": now_us,
            "start_time_us": None,
            "end_time_us": None,
            "update_time_us": now_us,
            "lease_expires_us": None,
            "next_attempt_us": now_us,
            "progress_fraction": 0.0,
            "progress_message": "",
            "result": None,
            "error": None,
            "scheduled": scheduled,
            "version": 1,
        }
        # The pre-check answers almost always. Two creates racing past it both insert; the
        # unique indexes make one fail, and its next round finds the winner's job.
        for _ in range(_CREATE_ROUNDS):
            try:
                with self._writing() as conn:
                    existing = self._equivalent(conn, values)
                    if existing is not None:
                        return existing, False
                    if principal and max_unfinished > 0:
                        self._check_quota(conn, "principal", principal, max_unfinished)
                    if principal and namespace and max_unfinished_in_namespace > 0:
                        self._check_quota(conn, "namespace", namespace, max_unfinished_in_namespace)
                    conn.execute(insert(jobs_table).values(values))
                    return _record(values), True
            except IntegrityError:
                continue
        raise AlreadyExists(
            f"job {job_id} exists already", reason="JOB_ALREADY_EXISTS", metadata={"job_id": job_id}
        )

    def _check_quota(self, conn: Connection, column: str, value: str, limit: int) -> None:
        """Refuses a job past the limit of unfinished jobs of one principal or namespace.

        On PostgreSQL an advisory lock per principal (or namespace) makes concurrent creates
        count in turn (SQLite's BEGIN IMMEDIATE already does). The scheduler's jobs (no
        principal) are not counted.
        """
        if self._postgres:
            key = _principal_lock_key(f"{column}\0{value}")
            conn.execute(select(func.pg_advisory_xact_lock(key)))
        unfinished = conn.execute(
            select(func.count())
            .select_from(jobs_table)
            .where(
                jobs_table.c[column] == value,
                _jobs.principal != "",
                _jobs.state.in_(ACTIVE_STATES),
            )
        ).scalar_one()
        if int(unfinished) >= limit:
            who = value if column == "principal" else f"namespace {value}"
            raise ResourceExhausted(
                f"{who} has {unfinished} unfinished jobs, as many as it may have queued or "
                "running; wait for some to finish or cancel some",
                reason=QUOTA_REASON,
                metadata={column: value, "limit": str(limit)},
                retry_after_seconds=_QUOTA_RETRY_SECONDS,
            )

    @staticmethod
    def _equivalent(conn: Connection, new: Mapping[str, Any]) -> JobRecord | None:
        """The existing job that makes creating ``new`` unnecessary, if any.

        Raises:
            AlreadyExists: ``new``'s request id belongs to a job with another spec.
        """
        request_id = new["request_id"]
        if request_id is not None:
            stmt = select(jobs_table).where(_jobs.request_id == request_id)
            row = conn.execute(stmt).mappings().first()
            if row is not None:
                if row["spec_digest"] != new["spec_digest"]:
                    raise AlreadyExists(
                        "request_id was already used for a job with a different spec",
                        reason="REQUEST_ID_REUSED",
                        metadata={"request_id": request_id, "job_id": str(row["id"])},
                    )
                return _record(row)
        if new["scheduled"]:
            stmt = select(jobs_table).where(
                ACTIVE_SCHEDULED,
                _jobs.kind == new["kind"],
                _jobs.namespace == new["namespace"],
                _jobs.table_name == new["table_name"],
            )
            row = conn.execute(stmt).mappings().first()
            if row is not None:
                return _record(row)
        return None

    def find_by_request_id(self, request_id: str) -> JobRecord | None:
        """The job created with ``request_id``, or None.

        Raises:
            Unavailable: The database cannot be reached.
        """
        with self._reading() as conn:
            stmt = select(jobs_table).where(_jobs.request_id == request_id)
            row = conn.execute(stmt).mappings().first()
        return None if row is None else _record(row)

    def get(self, job_id: str) -> JobRecord:
        """The job as it is now.

        Raises:
            NotFound: No such job (reason ``JOB_NOT_FOUND``).
            Unavailable: The database cannot be reached.
        """
        with self._reading() as conn:
            stmt = select(jobs_table).where(_jobs.id == job_id)
            row = conn.execute(stmt).mappings().first()
        if row is None:
            raise _not_found(job_id)
        return _record(row)

    def list(
        self,
        *,
        states: Sequence[int],
        kinds: Sequence[int],
        namespace: str,
        table: str,
        limit: int,
        after: tuple[int, str] | None,
    ) -> builtins.list[JobRecord]:
        """One page of jobs, newest first by ``(create_time_us, id)``.

        Paging is by key, not offset, so pages neither skip nor repeat jobs while new ones
        arrive. Filters combine with AND; an empty one matches anything.

        Args:
            states: Only jobs in one of these states.
            kinds: Only jobs of one of these kinds.
            namespace: Only jobs on tables of this namespace.
            table: Only jobs on tables of this name.
            limit: The page size (the caller clamps it).
            after: ``(create_time_us, id)`` of the previous page's last job; None for the
                first page.

        Raises:
            Unavailable: The database cannot be reached.
        """
        stmt = select(jobs_table)
        if states:
            stmt = stmt.where(_jobs.state.in_(builtins.list(states)))
        if kinds:
            stmt = stmt.where(_jobs.kind.in_(builtins.list(kinds)))
        if namespace:
            stmt = stmt.where(_jobs.namespace == namespace)
        if table:
            stmt = stmt.where(_jobs.table_name == table)
        if after is not None:
            time_us, job_id = after
            stmt = stmt.where(
                or_(
                    _jobs.create_time_us < time_us,
                    and_(_jobs.create_time_us == time_us, _jobs.id < job_id),
                )
            )
        stmt = stmt.order_by(_jobs.create_time_us.desc(), _jobs.id.desc()).limit(limit)
        with self._reading() as conn:
            return [_record(row) for row in conn.execute(stmt).mappings()]

    def cancel(self, job_id: str, *, now_us: int) -> JobRecord:
        """Cancels a job: a QUEUED one at once, a RUNNING one at its next safe point.

        A RUNNING job only gets ``cancel_requested``; its worker sees it in the next
        heartbeat and finishes it as CANCELLED (or SUCCEEDED, if it was done first).

        Returns:
            The job after the call; unchanged if it was CANCELLED or cancel was requested
            already.

        Raises:
            NotFound: No such job (reason ``JOB_NOT_FOUND``).
            FailedPrecondition: The job SUCCEEDED or FAILED (reason ``JOB_ALREADY_FINISHED``).
            Unavailable: The database cannot be reached.
        """
        with self._writing() as conn:
            row = self._locked(conn, job_id)
            state = row["state"]
            if state == QUEUED:
                ended = self._apply(
                    conn, row, {"state": CANCELLED, "end_time_us": now_us, "update_time_us": now_us}
                )
            elif state == RUNNING and not row["cancel_requested"]:
                return self._apply(conn, row, {"cancel_requested": True, "update_time_us": now_us})
            elif state in (RUNNING, CANCELLED):
                return _record(row)
            else:
                raise FailedPrecondition(
                    f"job {job_id} has finished already",
                    reason="JOB_ALREADY_FINISHED",
                    metadata={"job_id": job_id},
                )
        self._on_ended(ended)
        return ended

    def delete(self, job_id: str) -> None:
        """Deletes a finished job's record (its request id becomes free again).

        Raises:
            NotFound: No such job (reason ``JOB_NOT_FOUND``).
            FailedPrecondition: The job is QUEUED or RUNNING (reason ``JOB_NOT_FINISHED``).
            Unavailable: The database cannot be reached.
        """
        with self._writing() as conn:
            row = self._locked(conn, job_id)
            if row["state"] not in TERMINAL_STATES:
                raise FailedPrecondition(
                    f"job {job_id} has not finished; cancel it first",
                    reason="JOB_NOT_FINISHED",
                    metadata={"job_id": job_id},
                )
            conn.execute(delete(jobs_table).where(_jobs.id == job_id))

    # -- worker operations -----------------------------------------------------------------

    def claim(
        self,
        *,
        worker: str,
        lease_seconds: float,
        now_us: int,
        kinds: Sequence[int] | None = None,
        max_running_per_principal: int = 0,
        max_running_per_namespace: int = 0,
    ) -> Claim | None:
        """Takes the oldest due job for ``worker``, or None if there is none.

        Due jobs are QUEUED ones past ``next_attempt_us`` and RUNNING ones whose lease
        expired (their worker died). On the way, an expired job that asked to be cancelled
        becomes CANCELLED, and one that was on its last attempt becomes FAILED (a
        ``JOB_LEASE_EXPIRED`` status), instead of running again. A maintenance job (any kind
        but SQL) waits while another job of its kind runs on the same table with a live
        lease: two compactions of one table would only conflict.

        The claimed job is RUNNING under ``worker`` with a new lease, ``attempts`` one
        higher and its progress reset. No two workers ever own one job.

        Args:
            worker: The claiming worker's identity (host and process id).
            lease_seconds: How long the job is the worker's without a heartbeat.
            now_us: The current time.
            kinds: Only jobs of these kinds; None or empty means any kind.
            max_running_per_principal: Jobs of one principal that may run at once (live
                leases, across every worker); a job of a principal at the limit is skipped
                so that other principals' jobs are claimed. 0: no limit. Jobs without a
                principal (the scheduler's) are not limited.
            max_running_per_namespace: The same, per namespace of the job's table.

        Raises:
            Unavailable: The database cannot be reached.
        """
        lease_us = _micros(lease_seconds)
        limits = _Limits(max_running_per_principal, max_running_per_namespace)
        after: tuple[int, str] | None = None
        claimed: Claim | None = None
        expired: list[JobRecord] = []
        with self._writing() as conn:
            for _ in range(_CLAIM_CANDIDATES):
                candidate = self._next_candidate(now_us, kinds, after, limits)
                row = conn.execute(candidate).mappings().first()
                if row is None:
                    break
                after = (int(row["create_time_us"]), str(row["id"]))
                ended = self._end_expired(conn, row, now_us)
                if ended is not None:
                    expired.append(ended)
                    continue
                if not self._may_start(conn, row, now_us) or not self._within_limits(
                    conn, row, now_us, limits
                ):
                    continue
                values = {
                    "state": RUNNING,
                    "attempts": row["attempts"] + 1,
                    "worker": worker,
                    "start_time_us": now_us,
                    "lease_expires_us": now_us + lease_us,
                    "update_time_us": now_us,
                    "progress_fraction": 0.0,
                    "progress_message": "",
                }
                lost_by = str(row["worker"]) if row["state"] == RUNNING else ""
                claimed = Claim(job=self._apply(conn, row, values), lease_lost_by=lost_by)
                break
        for job in expired:
            self._on_lease_expired(job, job.worker)
            self._on_ended(job)
        if claimed is not None and claimed.lease_lost_by:
            self._on_lease_expired(claimed.job, claimed.lease_lost_by)
        return claimed

    @staticmethod
    def _next_candidate(
        now_us: int,
        kinds: Sequence[int] | None,
        after: tuple[int, str] | None,
        limits: _Limits | None = None,
    ) -> Select[Any]:
        """The next due job by age after ``after``, locked, skipping others' locked rows.

        Maintenance jobs blocked by a running sibling are left out here, so that a backlog
        on one table does not use up the candidates of a claim; jobs that will only be ended
        (cancelled or out of attempts) are never blocked.
        """
        due = or_(
            and_(_jobs.state == QUEUED, _jobs.next_attempt_us <= now_us),
            and_(_jobs.state == RUNNING, _jobs.lease_expires_us <= now_us),
        )
        ending = and_(
            _jobs.state == RUNNING,
            or_(_jobs.cancel_requested == true(), _jobs.attempts >= _jobs.max_attempts),
        )
        startable = or_(_jobs.kind == _SQL_KIND, ~_sibling_running(now_us))
        if limits is not None:
            # Jobs of a principal (or namespace) at its running limit are passed over here,
            # so that its backlog does not use up the claim's candidates.
            startable = and_(startable, *_under_limits(now_us, limits))
        stmt = select(jobs_table).where(due, or_(ending, startable))
        if kinds:
            stmt = stmt.where(_jobs.kind.in_(builtins.list(kinds)))
        if after is not None:
            time_us, job_id = after
            stmt = stmt.where(
                or_(
                    _jobs.create_time_us > time_us,
                    and_(_jobs.create_time_us == time_us, _jobs.id > job_id),
                )
            )
        stmt = stmt.order_by(_jobs.create_time_us, _jobs.id).limit(1)
        return stmt.with_for_update(skip_locked=True)

    def _end_expired(self, conn: Connection, row: RowMapping, now_us: int) -> JobRecord | None:
        """Ends an expired RUNNING job that must not run again; the job if it did."""
        if row["state"] != RUNNING:
            return None
        ended = {"end_time_us": now_us, "update_time_us": now_us, "lease_expires_us": None}
        if row["cancel_requested"]:
            return self._apply(conn, row, {**ended, "state": CANCELLED})
        if row["attempts"] >= row["max_attempts"]:
            error = lease_expired_status(str(row["worker"]))
            return self._apply(conn, row, {**ended, "state": FAILED, "error": error})
        return None

    def _may_start(self, conn: Connection, row: RowMapping, now_us: int) -> bool:
        """False while another job of the same kind runs on the same table (not for SQL).

        The candidate query already filtered on this, but two PostgreSQL workers could each
        pick a different job of one table at once; the advisory lock makes them take turns,
        and the recheck (a fresh statement, so it sees the other's commit) decides.
        """
        if row["kind"] == _SQL_KIND:
            return True
        if self._postgres:
            key = _table_lock_key(row["kind"], row["namespace"], row["table_name"])
            locked = conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar_one()
            if not locked:
                return False
        sibling = select(jobs_table.c.id).where(
            _jobs.id == row["id"], _sibling_running(now_us)
        )  # correlated on the candidate's own row
        return conn.execute(sibling).first() is None

    def _within_limits(
        self, conn: Connection, row: RowMapping, now_us: int, limits: _Limits
    ) -> bool:
        """False while the job's principal or namespace runs as many jobs as it may.

        The candidate query filtered on this already; as in ``_may_start``, PostgreSQL
        workers claiming at once take turns on an advisory lock and recheck with a fresh
        statement, so two of them cannot both start a principal's last allowed job.
        """
        checks = _under_limits(now_us, limits)
        if not checks:
            return True
        if self._postgres and limits.per_principal and row["principal"]:
            key = _principal_lock_key(str(row["principal"]))
            if not conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar_one():
                return False
        if self._postgres and limits.per_namespace and row["namespace"]:
            key = _principal_lock_key(f"namespace\0{row['namespace']}")
            if not conn.execute(select(func.pg_try_advisory_xact_lock(key))).scalar_one():
                return False
        fresh = select(jobs_table.c.id).where(_jobs.id == row["id"], *checks)
        return conn.execute(fresh).first() is not None

    def heartbeat(
        self,
        job_id: str,
        *,
        worker: str,
        attempt: int,
        lease_seconds: float,
        now_us: int,
        progress: tuple[float, str] | None,
    ) -> bool:
        """Extends the worker's lease and records progress; returns ``cancel_requested``.

        Progress that did not change is not a visible change (``version`` stays), so
        watchers are not woken by heartbeats alone.

        Args:
            job_id: The job.
            worker: The worker that claimed it.
            attempt: The claimed attempt (``Claim.job.attempts``).
            lease_seconds: The new lease, from now.
            now_us: The current time.
            progress: ``(fraction, message)``, or None to leave it.

        Raises:
            LeaseLost: The worker no longer owns this attempt; stop without committing.
            Unavailable: The database cannot be reached.
        """
        with self._writing() as conn:
            row = self._owned(conn, job_id, worker, attempt)
            values: dict[str, Any] = {"lease_expires_us": now_us + _micros(lease_seconds)}
            changed = progress is not None and progress != (
                row["progress_fraction"],
                row["progress_message"],
            )
            if progress is not None and changed:
                values |= {
                    "progress_fraction": progress[0],
                    "progress_message": progress[1],
                    "update_time_us": now_us,
                }
            self._apply(conn, row, values, visible=changed)
            return bool(row["cancel_requested"])

    def finish(
        self,
        job_id: str,
        *,
        worker: str,
        attempt: int,
        state: int,
        now_us: int,
        result: bytes | None = None,
        error: bytes | None = None,
    ) -> JobRecord:
        """Ends the worker's attempt and the job: SUCCEEDED, FAILED or CANCELLED.

        ``result`` and ``error`` replace the stored ones (so a success clears the error of an
        earlier failed attempt). The lease is released; a success sets progress to 1.

        Raises:
            ValueError: ``state`` is not terminal.
            LeaseLost: The worker no longer owns this attempt; its outcome is discarded.
            Unavailable: The database cannot be reached.
        """
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish needs a terminal state, not {state}")
        with self._writing() as conn:
            row = self._owned(conn, job_id, worker, attempt)
            values: dict[str, Any] = {
                "state": state,
                "end_time_us": now_us,
                "update_time_us": now_us,
                "lease_expires_us": None,
                "result": result,
                "error": error,
            }
            if state == SUCCEEDED:
                values["progress_fraction"] = 1.0
            ended = self._apply(conn, row, values)
        self._on_ended(ended)
        return ended

    def retry_later(
        self,
        job_id: str,
        *,
        worker: str,
        attempt: int,
        now_us: int,
        delay_seconds: float,
        error: bytes,
    ) -> JobRecord:
        """Queues the job again after a retryable failure of the worker's attempt.

        It becomes due ``delay_seconds`` from now and keeps ``error`` (the failed attempt's
        serialized ``google.rpc.Status``). If cancel was requested meanwhile, it becomes
        CANCELLED instead. The caller decides whether attempts remain (``attempts <
        max_attempts``); when none do, it calls ``finish`` with FAILED.

        Raises:
            LeaseLost: The worker no longer owns this attempt.
            Unavailable: The database cannot be reached.
        """
        with self._writing() as conn:
            row = self._owned(conn, job_id, worker, attempt)
            values: dict[str, Any] = {
                "update_time_us": now_us,
                "lease_expires_us": None,
                "error": error,
            }
            if row["cancel_requested"]:
                values |= {"state": CANCELLED, "end_time_us": now_us}
            else:
                values |= {"state": QUEUED, "next_attempt_us": now_us + _micros(delay_seconds)}
            job = self._apply(conn, row, values)
        if job.finished:
            self._on_ended(job)
        return job

    # -- scheduler and metrics -------------------------------------------------------------

    def queue_depth(self, *, now_us: int) -> dict[int, int]:
        """Jobs waiting for a worker now (QUEUED and due), per kind, for a gauge.

        Jobs backing off before a retry are not counted: they wait for time, not workers.
        Every kind is present, with 0 when none wait, so a gauge drops back to 0.

        Raises:
            Unavailable: The database cannot be reached.
        """
        depth = {kind: 0 for kind in KIND_NAMES}
        stmt = (
            select(_jobs.kind, func.count())
            .where(_jobs.state == QUEUED, _jobs.next_attempt_us <= now_us)
            .group_by(_jobs.kind)
        )
        with self._reading() as conn:
            for kind, count in conn.execute(stmt):
                depth[int(kind)] = int(count)
        return depth

    def latest(self, *, kind: int, namespace: str, table: str) -> JobRecord | None:
        """The newest job of ``kind`` on the table, in any state; None if there is none.

        Raises:
            Unavailable: The database cannot be reached.
        """
        stmt = (
            select(jobs_table)
            .where(_jobs.kind == kind, _jobs.namespace == namespace, _jobs.table_name == table)
            .order_by(_jobs.create_time_us.desc(), _jobs.id.desc())
            .limit(1)
        )
        with self._reading() as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else _record(row)

    def purge_finished(self, *, ended_before_us: int, limit: int = 1000) -> int:
        """Deletes up to ``limit`` finished jobs that ended before ``ended_before_us``.

        Run by the scheduler with the configured retention, so the table does not grow
        forever; a small limit per call keeps each transaction short.

        Returns:
            How many jobs were deleted.

        Raises:
            Unavailable: The database cannot be reached.
        """
        old = (
            select(_jobs.id)
            .where(_jobs.state.in_(sorted(TERMINAL_STATES)), _jobs.end_time_us < ended_before_us)
            .order_by(_jobs.end_time_us)
            .limit(limit)
        )
        with self._writing() as conn:
            ids = [row[0] for row in conn.execute(old)]
            if ids:
                conn.execute(delete(jobs_table).where(_jobs.id.in_(ids)))
        return len(ids)


def _ignore(job: JobRecord) -> None:
    pass


def _ignore_expiry(job: JobRecord, worker: str) -> None:
    pass


@dataclass(frozen=True)
class _Limits:
    """Running-job limits of a claim; 0 means none."""

    per_principal: int
    per_namespace: int


def _running_like(now_us: int, column: str) -> ScalarSelect[int]:
    """How many other jobs with the candidate's ``column`` value run with a live lease.

    Correlated with the enclosing query's ``lakehouse_jobs`` row.
    """
    other = jobs_table.alias(f"lakehouse_jobs_same_{column}")
    return (
        select(func.count())
        .select_from(other)
        .where(
            other.c[column] == _jobs[column],
            other.c.state == RUNNING,
            other.c.lease_expires_us > now_us,
            other.c.id != _jobs.id,
        )
        .scalar_subquery()
    )


def _under_limits(now_us: int, limits: _Limits) -> list[ColumnElement[bool]]:
    """Conditions a job must meet to start under ``limits`` (none when there are none)."""
    conditions: list[ColumnElement[bool]] = []
    if limits.per_principal > 0:
        conditions.append(
            or_(
                _jobs.principal == "",
                _running_like(now_us, "principal") < limits.per_principal,
            )
        )
    if limits.per_namespace > 0:
        conditions.append(
            or_(
                _jobs.namespace == "",
                _running_like(now_us, "namespace") < limits.per_namespace,
            )
        )
    return conditions


def _sibling_running(now_us: int) -> ColumnElement[bool]:
    """True for a job when another job of its kind runs on its table with a live lease.

    Correlated with the enclosing query's ``lakehouse_jobs`` row.
    """
    other = jobs_table.alias("lakehouse_jobs_sibling")
    return exists().where(
        other.c.kind == _jobs.kind,
        other.c.namespace == _jobs.namespace,
        other.c.table_name == _jobs.table_name,
        other.c.state == RUNNING,
        other.c.lease_expires_us > now_us,
        other.c.id != _jobs.id,
    )
