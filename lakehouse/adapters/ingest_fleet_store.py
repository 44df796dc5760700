"""Ingest commit ownership and hand-offs in the job store's shared database.

Two tables, created by the job store's migration 4:

- ``lakehouse_ingest_leases``: one row per table branch that a replica commits for. The owner
  renews its lease while it commits; another replica takes it once it has expired (the owner
  died) or was released (the owner drained), and the epoch goes up by one at each change of
  owner.
- ``lakehouse_ingest_batches``: data files a replica wrote and handed to the owner, with the
  requests they hold. The owner claims pending batches with its epoch, commits them, and
  resolves them (committed with the snapshot id, rejected for re-planning, or failed with the
  error); a resolution counts only under the epoch that claimed the batch, so an owner that
  lost its lease while paused cannot overrule the next one. The replica that handed a batch
  reads its resolution and deletes the row; resolutions left unread (their replica died) and
  leases released or expired for longer than a retention are deleted by ``prune``.

Submitting a batch notifies ``PENDING_CHANNEL`` (payload: the table branch as JSON) and
resolving it notifies ``RESOLVED_CHANNEL`` (payload: the batch id), in the statement that
changes the row, so the notification costs no round trip and is sent only if the transaction
commits. ``lakehouse.adapters.ingest_fleet_listener`` receives them, so that owners and
submitters wait for them instead of polling.

Blocking SQLAlchemy Core behind the job store's connections and breaker, run in the given
pool; only PostgreSQL is used (a database replicas on several machines share).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    cast,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from lakehouse.adapters.job_store.store import JobStore
from lakehouse.blocking import BlockingPool
from lakehouse.domain import errors
from lakehouse.domain.ingest import (
    LOST_BATCH_REASON,
    BatchEntry,
    BatchResolution,
    BatchStatus,
    PendingBatch,
)

#: The reason of the ``Unavailable`` raised when the database cannot be reached.
UNAVAILABLE_REASON: Final = "INGEST_FLEET_STORE_UNAVAILABLE"

PENDING, CLAIMED = BatchStatus.PENDING, BatchStatus.CLAIMED
FAILED = BatchStatus.FAILED

T = TypeVar("T")
#: Notified when a batch is handed to a table branch's owner; payload ``[ns, table, branch]``.
PENDING_CHANNEL: Final = "lakehouse_ingest_pending"
#: Notified when an owner resolves a batch; payload the batch id.
RESOLVED_CHANNEL: Final = "lakehouse_ingest_resolved"

_metadata = MetaData()
leases_table = Table(
    "lakehouse_ingest_leases",
    _metadata,
    Column("namespace", String, primary_key=True),
    Column("table_name", String, primary_key=True),
    Column("branch", String, primary_key=True),
    Column("owner", String, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
)
batches_table = Table(
    "lakehouse_ingest_batches",
    _metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("namespace", String, nullable=False),
    Column("table_name", String, nullable=False),
    Column("branch", String, nullable=False),
    Column("status", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("entries", LargeBinary, nullable=False),
    Column("files", LargeBinary, nullable=False),
    Column("rows_count", BigInteger, nullable=False),
    Column("snapshot_id", BigInteger, nullable=True),
    Column("error", LargeBinary, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("resolved_us", BigInteger, nullable=True),
)
_leases, _batches = leases_table.c, batches_table.c

# The errors a resolution may carry, by name; anything else comes back as Unavailable.
_ERRORS: Final[dict[str, type[errors.LakehouseError]]] = {
    cls.__name__: cls
    for cls in (
        errors.Unavailable,
        errors.Conflict,
        errors.NotFound,
        errors.FailedPrecondition,
        errors.OutOfRange,
        errors.CommitStateUnknown,
    )
}


#: The database's clock in microseconds. Leases expire by it, not by the replicas' clocks: a
#: replica whose clock ran ahead would take a live lease (and purge resolutions early). An
#: expression, so that statements use it without a round trip of their own.
_DB_NOW: Final = cast(
    func.floor(func.extract("epoch", func.clock_timestamp()) * 1_000_000), BigInteger
)


def pending_payload(table: tuple[str, str], branch: str) -> str:
    """The payload of a ``PENDING_CHANNEL`` notification."""
    return json.dumps([table[0], table[1], branch])


def parse_pending(payload: str) -> tuple[tuple[str, str], str]:
    """The table branch of a ``PENDING_CHANNEL`` payload.

    Raises:
        ValueError: Not a payload of ``pending_payload``.
    """
    namespace, table, branch = json.loads(payload)
    return (str(namespace), str(table)), str(branch)


def _entries_json(entries: Sequence[BatchEntry]) -> bytes:
    return json.dumps(
        [[e.request_id, e.rows, e.writer_id, e.start, e.end] for e in entries]
    ).encode()


def _entries(raw: bytes) -> tuple[BatchEntry, ...]:
    return tuple(BatchEntry(*values) for values in json.loads(raw))


def _error_json(error: errors.LakehouseError) -> bytes:
    name = type(error).__name__ if type(error).__name__ in _ERRORS else "Unavailable"
    return json.dumps([name, error.message, error.reason, error.metadata]).encode()


def _error(raw: bytes) -> errors.LakehouseError:
    name, message, reason, metadata = json.loads(raw)
    return _ERRORS.get(name, errors.Unavailable)(message, reason=reason, metadata=metadata)


class IngestFleetStore:
    """Commit leases and handed batches, through the job store's connections.

    Every method raises ``Unavailable`` (reason ``INGEST_FLEET_STORE_UNAVAILABLE``) when the
    database cannot be reached or the job store's breaker is open.

    Args:
        store: The job store whose database, pool and breaker are used.
        pool: The thread pool the blocking calls run in.
        notify: Whether submitting and resolving send their notifications.
    """

    def __init__(self, store: JobStore, pool: BlockingPool, *, notify: bool = True) -> None:
        self._store = store
        self._pool = pool
        self._notify = notify

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._store.writing() as conn:
                yield conn
        except (errors.Unavailable, SQLAlchemyError) as exc:
            detail = exc.message if isinstance(exc, errors.Unavailable) else type(exc).__name__
            raise errors.Unavailable(
                f"the ingest commit coordination is unavailable: {detail}",
                reason=UNAVAILABLE_REASON,
            ) from exc

    async def _run(self, fn: Callable[[Connection], T]) -> T:
        def work() -> T:
            with self._connection() as conn:
                return fn(conn)

        return await self._pool.run(work)

    async def acquire(
        self, table: tuple[str, str], branch: str, owner: str, ttl_seconds: float
    ) -> int | None:
        """Takes or renews the commit lease of a table branch; its epoch, or None if held.

        Raises:
            Unavailable: The database cannot be reached.
        """

        def work(conn: Connection) -> int | None:
            # The database's clock, read where each value is computed (clock_timestamp moves
            # within a statement: the epoch and the expiry may differ by microseconds, which
            # nothing relies on).
            now = select(_DB_NOW).scalar_subquery()
            ttl_us = int(ttl_seconds * 1_000_000)
            stmt = postgresql.insert(leases_table).values(
                namespace=table[0],
                table_name=table[1],
                branch=branch,
                owner=owner,
                # Not 1: a lease row pruned and made again must not hand out epochs that a
                # paused owner of the old row may still hold (see prune).
                epoch=now,
                expires_us=now + ttl_us,
            )
            new = stmt.excluded
            same = _leases.owner == new.owner
            upsert = stmt.on_conflict_do_update(
                index_elements=[_leases.namespace, _leases.table_name, _leases.branch],
                set_={
                    "owner": new.owner,
                    # A new owner fences the old one's resolutions off (see resolve).
                    "epoch": _leases.epoch + (~same).cast(Integer),
                    "expires_us": new.expires_us,
                },
                where=same | (_leases.expires_us < new.expires_us - ttl_us),
            ).returning(_leases.epoch)
            epoch = conn.execute(upsert).scalar_one_or_none()
            return None if epoch is None else int(epoch)

        return await self._run(work)

    async def release(self, table: tuple[str, str], branch: str, owner: str) -> None:
        """Gives the lease up at once (a draining owner), if ``owner`` still holds it."""

        def work(conn: Connection) -> None:
            conn.execute(
                update(leases_table)
                .where(
                    _leases.namespace == table[0],
                    _leases.table_name == table[1],
                    _leases.branch == branch,
                    _leases.owner == owner,
                )
                # Expired now, not at 0: prune deletes it once released for long.
                .values(expires_us=_DB_NOW - 1)
            )

        await self._run(work)

    async def submit(self, table: tuple[str, str], branch: str, batch: PendingBatch) -> None:
        """Hands a batch to the table branch's owner (PENDING).

        Raises:
            Unavailable: The database cannot be reached (the batch may not be stored).
        """

        def work(conn: Connection) -> None:
            conn.execute(
                batches_table.insert()
                .values(
                    batch_id=batch.batch_id,
                    namespace=table[0],
                    table_name=table[1],
                    branch=branch,
                    status=PENDING,
                    epoch=0,
                    entries=_entries_json(batch.entries),
                    files=batch.files,
                    rows_count=batch.rows,
                    created_us=_DB_NOW,
                )
                .returning(
                    func.pg_notify(PENDING_CHANNEL, pending_payload(table, branch))
                    if self._notify
                    else _batches.batch_id
                )
            )

        await self._run(work)

    async def claim(
        self, table: tuple[str, str], branch: str, epoch: int, limit: int
    ) -> list[PendingBatch]:
        """Claims, under ``epoch``, the batches not resolved yet, oldest first.

        Batches claimed under an older epoch (an owner that died or lost its lease) are
        claimed again.
        """

        def work(conn: Connection) -> list[PendingBatch]:
            wanted = (
                select(_batches.batch_id)
                .where(
                    _batches.namespace == table[0],
                    _batches.table_name == table[1],
                    _batches.branch == branch,
                    _batches.status.in_((PENDING, CLAIMED)),
                    _batches.epoch <= epoch,
                )
                .order_by(_batches.created_us, _batches.batch_id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            found = conn.execute(
                update(batches_table)
                .where(_batches.batch_id.in_(wanted.scalar_subquery()))
                .values(status=CLAIMED, epoch=epoch)
                .returning(
                    _batches.batch_id,
                    _batches.entries,
                    _batches.files,
                    _batches.rows_count,
                    _batches.created_us,
                )
            ).all()
            rows = sorted(found, key=lambda r: (r.created_us, r.batch_id))
            return [
                PendingBatch(r.batch_id, _entries(r.entries), bytes(r.files), int(r.rows_count))
                for r in rows
            ]

        return await self._run(work)

    async def resolve(self, epoch: int, resolutions: Sequence[BatchResolution]) -> None:
        """Records what the owner did; ignored for batches no longer claimed under ``epoch``."""
        if not resolutions:
            return

        def work(conn: Connection) -> None:
            for r in resolutions:
                conn.execute(
                    update(batches_table)
                    .where(
                        _batches.batch_id == r.batch_id,
                        _batches.status == CLAIMED,
                        _batches.epoch == epoch,
                    )
                    .values(
                        status=r.status,
                        snapshot_id=r.snapshot_id,
                        error=_error_json(r.error) if r.error is not None else None,
                        resolved_us=_DB_NOW,
                    )
                    .returning(
                        func.pg_notify(RESOLVED_CHANNEL, _batches.batch_id)
                        if self._notify
                        else _batches.batch_id
                    )
                )

        await self._run(work)

    async def resolution(self, batch_id: str) -> BatchResolution | None:
        """The batch's resolution (and its row is deleted), or None while it is open.

        A batch that is gone counts as FAILED (it was withdrawn or pruned).
        """

        def work(conn: Connection) -> BatchResolution | None:
            # One statement when it is resolved (what a notified submitter finds).
            row = conn.execute(
                delete(batches_table)
                .where(_batches.batch_id == batch_id, _batches.status.not_in((PENDING, CLAIMED)))
                .returning(_batches.status, _batches.snapshot_id, _batches.error)
            ).one_or_none()
            if row is None:
                still_open = conn.execute(
                    select(_batches.batch_id).where(_batches.batch_id == batch_id)
                ).one_or_none()
                if still_open is not None:
                    return None
                return BatchResolution(
                    batch_id,
                    FAILED,
                    error=errors.Unavailable("the handed batch is gone", reason=LOST_BATCH_REASON),
                )
            return BatchResolution(
                batch_id,
                BatchStatus(int(row.status)),
                None if row.snapshot_id is None else int(row.snapshot_id),
                _error(row.error) if row.error is not None else None,
            )

        return await self._run(work)

    async def withdraw(self, batch_id: str) -> bool:
        """Takes a batch back if no owner claimed it yet; whether it was taken back."""

        def work(conn: Connection) -> bool:
            done = conn.execute(
                delete(batches_table).where(
                    and_(_batches.batch_id == batch_id, _batches.status == PENDING)
                )
            )
            return bool(done.rowcount)

        return await self._run(work)

    async def prune(self, retention_seconds: float, limit: int) -> int:
        """Deletes what nobody needs any more; how many rows went (at most ``limit`` each).

        Resolutions older than ``retention_seconds`` (their replica died before reading
        them), and leases released or expired for longer than that whose table branch has
        no batch left (a dropped table, or one no longer written). A lease made again later
        starts at an epoch above any of the deleted row's (see ``acquire``).

        Raises:
            Unavailable: The database cannot be reached.
        """

        def work(conn: Connection) -> int:
            before = _DB_NOW - int(retention_seconds * 1_000_000)
            old = (
                select(_batches.batch_id)
                .where(_batches.resolved_us < before)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            batches = conn.execute(
                delete(batches_table).where(_batches.batch_id.in_(old.scalar_subquery()))
            ).rowcount
            left = select(_batches.batch_id).where(
                _batches.namespace == _leases.namespace,
                _batches.table_name == _leases.table_name,
                _batches.branch == _leases.branch,
            )
            stale = (
                select(leases_table.c.namespace, _leases.table_name, _leases.branch)
                .where(_leases.expires_us < before, ~left.exists())
                .limit(limit)
                .with_for_update(skip_locked=True)
                .cte("stale")
            )
            leases = conn.execute(
                delete(leases_table).where(
                    _leases.namespace == stale.c.namespace,
                    _leases.table_name == stale.c.table_name,
                    _leases.branch == stale.c.branch,
                    # Still stale once locked: not taken meanwhile.
                    _leases.expires_us < before,
                )
            ).rowcount
            return int(batches) + int(leases)

        return await self._run(work)
