"""The request-id ledger: WriteRows request ids remembered past snapshot expiry.

A committed request id lives first in the summary of the snapshot that committed it
(``lakehouse.adapters.iceberg.ingest``); that is the atomic record. Snapshot expiry may drop
that snapshot long before the dedup window ends, so the ids are also kept here, in the job
store's database (table ``lakehouse_request_ids``, created by the job store's migration 2):
written after each ingest commit that holds request ids, copied again by expiry from the
snapshots it is about to remove, read when a table's retained snapshots no longer cover the
window, and pruned once older than the window.

Rows are keyed by the Iceberg table's uuid, stable across renames and new for a table
created again under the same name. It is blocking (SQLAlchemy Core): run it in a thread pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    MetaData,
    String,
    Table,
    delete,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from lakehouse.adapters.job_store.store import JobStore
from lakehouse.domain.errors import Unavailable
from lakehouse.domain.ingest import RecordedRequest

#: The reason of the ``Unavailable`` raised when the ledger cannot be read or written. No
#: breaker carries it: the job store's own breaker has already been told by then.
UNAVAILABLE_REASON: Final = "REQUEST_ID_STORE_UNAVAILABLE"
# Rows per statement: SQLite allows 32766 bound parameters, five per row here.
_CHUNK: Final = 1000

_metadata = MetaData()
request_ids_table = Table(
    "lakehouse_request_ids",
    _metadata,
    Column("table_uuid", String(36), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("rows_written", BigInteger, nullable=False),
    Column("snapshot_id", BigInteger, nullable=False),
    Column("committed_ms", BigInteger, nullable=False),
)
_c = request_ids_table.c
Index("lakehouse_request_ids_committed_ix", _c.committed_ms)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class RequestIdStore:
    """Request ids in the job store's database, through the job store's connections.

    Every method raises ``Unavailable`` (reason ``REQUEST_ID_STORE_UNAVAILABLE``) when the
    database cannot be reached, the job store's breaker is open, or the table is missing (the
    database has not been migrated to schema 2 yet).

    Args:
        store: The job store whose database, pool and breaker are used.
    """

    def __init__(self, store: JobStore) -> None:
        self._store = store

    @contextlib.contextmanager
    def _connection(self, *, write: bool) -> Iterator[Connection]:
        """A job-store connection (a transaction when writing); any failure is Unavailable."""
        try:
            with self._store.writing() if write else self._store.reading() as conn:
                yield conn
        except (Unavailable, SQLAlchemyError) as exc:
            detail = exc.message if isinstance(exc, Unavailable) else type(exc).__name__
            raise Unavailable(
                f"the request-id store is unavailable: {detail}", reason=UNAVAILABLE_REASON
            ) from exc

    def record(self, table_uuid: str, requests: Sequence[RecordedRequest]) -> None:
        """Upserts ``requests`` in one transaction; a newer commit of an id replaces an older.

        Idempotent: expiry records again what ingest recorded already.

        Raises:
            Unavailable: The ledger cannot be written.
        """
        if not requests:
            return
        with self._connection(write=True) as conn:
            for chunk in _chunks(requests):
                conn.execute(self._upsert(conn, table_uuid, chunk))

    @staticmethod
    def _upsert(conn: Connection, table_uuid: str, requests: Sequence[RecordedRequest]) -> Any:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(request_ids_table).values(
            [
                {
                    "table_uuid": table_uuid,
                    "request_id": r.request_id,
                    "rows_written": r.rows,
                    "snapshot_id": r.snapshot_id,
                    "committed_ms": r.committed_ms,
                }
                for r in requests
            ]
        )
        new = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=[_c.table_uuid, _c.request_id],
            set_={
                "rows_written": new.rows_written,
                "snapshot_id": new.snapshot_id,
                "committed_ms": new.committed_ms,
            },
            where=new.committed_ms > _c.committed_ms,
        )

    def find(
        self, table_uuid: str, request_ids: Collection[str], *, since_ms: int
    ) -> dict[str, RecordedRequest]:
        """The ids among ``request_ids`` committed to the table at ``since_ms`` or later.

        Raises:
            Unavailable: The ledger cannot be read.
        """
        wanted = sorted(set(request_ids))
        found: dict[str, RecordedRequest] = {}
        with self._connection(write=False) as conn:
            for chunk in _chunks(wanted):
                stmt = select(request_ids_table).where(
                    _c.table_uuid == table_uuid,
                    _c.request_id.in_(chunk),
                    _c.committed_ms >= since_ms,
                )
                for row in conn.execute(stmt).mappings():
                    found[str(row["request_id"])] = RecordedRequest(
                        str(row["request_id"]),
                        int(row["rows_written"]),
                        int(row["snapshot_id"]),
                        int(row["committed_ms"]),
                    )
        return found

    def forget_snapshots(self, table_uuid: str, snapshot_ids: Collection[int]) -> None:
        """Deletes the ids committed by these snapshots (rolled back, now being expired).

        Raises:
            Unavailable: The ledger cannot be written.
        """
        if not snapshot_ids:
            return
        with self._connection(write=True) as conn:
            for chunk in _chunks(sorted(snapshot_ids)):
                conn.execute(
                    delete(request_ids_table).where(
                        _c.table_uuid == table_uuid, _c.snapshot_id.in_(chunk)
                    )
                )

    def prune(self, *, before_ms: int, limit: int = 5000) -> int:
        """Deletes up to ``limit`` ids committed before ``before_ms`` (out of every window).

        Returns:
            How many were deleted; ``limit`` means more may remain.

        Raises:
            Unavailable: The ledger cannot be written.
        """
        oldest = (
            select(_c.table_uuid, _c.request_id)
            .where(_c.committed_ms < before_ms)
            .order_by(_c.committed_ms)
            .limit(limit)
        )
        stmt = delete(request_ids_table).where(tuple_(_c.table_uuid, _c.request_id).in_(oldest))
        with self._connection(write=True) as conn:
            deleted = conn.execute(stmt).rowcount
        return int(deleted)
