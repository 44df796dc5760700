"""The job store's schema versions, and the migration that takes a database from each to the next.

Each step keeps meaning what it meant when it was released: it spells its tables out or uses
explicit DDL, never the current definitions of ``schema``. ``migrate`` runs the steps a
database lacks, recording the version in ``lakehouse_jobs_schema``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    func,
    insert,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Connection

from lakehouse.domain.errors import FailedPrecondition
from lakehouse.domain.jobs import ACTIVE_STATES

#: The schema version this code writes; ``migrate`` brings older databases up to it.
SCHEMA_VERSION: Final = 5

# Serializes concurrent migrate() calls on PostgreSQL (a constant pg_advisory_xact_lock key).
_MIGRATION_LOCK_KEY: Final = 0x6C616B656A6F6273  # "lakejobs"

_metadata = MetaData()

#: One row (id 1) holding the schema version, so later releases know what to migrate.
schema_table = Table(
    "lakehouse_jobs_schema",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
)


def _create_v1(conn: Connection) -> None:
    """Version 1: the jobs table and its indexes, spelled out as they were then.

    Later versions use explicit DDL (``ALTER TABLE ...``), not ``jobs_table`` as it is now,
    so that each step keeps meaning what it meant when it was released.
    """
    frozen = MetaData()
    table = Table(
        "lakehouse_jobs",
        frozen,
        Column("id", String, primary_key=True),
        Column("kind", Integer, nullable=False),
        Column("namespace", String, nullable=False),
        Column("table_name", String, nullable=False),
        Column("state", Integer, nullable=False),
        Column("spec", LargeBinary, nullable=False),
        Column("request_id", String, nullable=True),
        Column("spec_digest", String, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("max_attempts", Integer, nullable=False),
        Column("cancel_requested", Boolean, nullable=False),
        Column("worker", String, nullable=False),
        Column("create_time_us", BigInteger, nullable=False),
        Column("start_time_us", BigInteger, nullable=True),
        Column("end_time_us", BigInteger, nullable=True),
        Column("update_time_us", BigInteger, nullable=False),
        Column("lease_expires_us", BigInteger, nullable=True),
        Column("next_attempt_us", BigInteger, nullable=False),
        Column("progress_fraction", Double, nullable=False),
        Column("progress_message", String, nullable=False),
        Column("result", LargeBinary, nullable=True),
        Column("error", LargeBinary, nullable=True),
        Column("scheduled", Boolean, nullable=False),
        Column("version", BigInteger, nullable=False),
    )
    c = table.c
    Index("lakehouse_jobs_claim_ix", c.state, c.next_attempt_us)
    Index("lakehouse_jobs_list_ix", c.create_time_us, c.id)
    Index("lakehouse_jobs_request_id_uq", c.request_id, unique=True)
    Index("lakehouse_jobs_table_ix", c.kind, c.namespace, c.table_name, c.create_time_us)
    active = and_(c.scheduled == true(), c.state.in_(ACTIVE_STATES))
    Index(
        "lakehouse_jobs_scheduled_uq",
        c.kind,
        c.namespace,
        c.table_name,
        unique=True,
        sqlite_where=active,
        postgresql_where=active,
    )
    table.create(conn, checkfirst=True)


def _create_v2(conn: Connection) -> None:
    """Version 2: ``lakehouse_request_ids``, ingest's request ids past snapshot expiry.

    The table is spelled out here as it was in version 2 (not imported from
    ``request_id_store``), for the reason given in ``_create_v1``.
    """
    frozen = MetaData()
    table = Table(
        "lakehouse_request_ids",
        frozen,
        Column("table_uuid", String(36), primary_key=True),
        Column("request_id", String(128), primary_key=True),
        Column("rows_written", BigInteger, nullable=False),
        Column("snapshot_id", BigInteger, nullable=False),
        Column("committed_ms", BigInteger, nullable=False),
    )
    Index("lakehouse_request_ids_committed_ix", table.c.committed_ms)
    table.create(conn, checkfirst=True)


def _add_principal_v3(conn: Connection) -> None:
    """Version 3: who created each job; indexes for the per-principal and namespace limits."""
    conn.execute(
        text("ALTER TABLE lakehouse_jobs ADD COLUMN principal VARCHAR NOT NULL DEFAULT ''")
    )
    conn.execute(
        text("CREATE INDEX lakehouse_jobs_principal_ix ON lakehouse_jobs (principal, state)")
    )
    conn.execute(
        text("CREATE INDEX lakehouse_jobs_namespace_ix ON lakehouse_jobs (namespace, state)")
    )


def _create_ingest_fleet_v4(conn: Connection) -> None:
    """Version 4: the ingest commit leases and the batches handed to a table's commit owner.

    Spelled out here as they were in version 4 (see ``_create_v1``); they are used by
    ``lakehouse.adapters.ingest_fleet_store``.
    """
    frozen = MetaData()
    Table(
        "lakehouse_ingest_leases",
        frozen,
        Column("namespace", String, primary_key=True),
        Column("table_name", String, primary_key=True),
        Column("branch", String, primary_key=True),
        Column("owner", String, nullable=False),
        Column("epoch", BigInteger, nullable=False),
        Column("expires_us", BigInteger, nullable=False),
    ).create(conn, checkfirst=True)
    batches = Table(
        "lakehouse_ingest_batches",
        frozen,
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
    c = batches.c
    Index("lakehouse_ingest_batches_table_ix", c.namespace, c.table_name, c.branch, c.status)
    Index("lakehouse_ingest_batches_resolved_ix", c.resolved_us)
    batches.create(conn, checkfirst=True)


def _create_signing_key_v5(conn: Connection) -> None:
    """Version 5: the service's signing key, one row generated by the first replica to need it.

    Spelled out as it was in version 5 (see ``_create_v1``); used by
    ``lakehouse.adapters.signing_key_store``.
    """
    frozen = MetaData()
    Table(
        "lakehouse_signing_key",
        frozen,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("key", String, nullable=False),
        Column("created_us", BigInteger, nullable=False),
    ).create(conn, checkfirst=True)


# _MIGRATIONS[n] takes a database from schema version n to n + 1.
_MIGRATIONS: Final[tuple[Callable[[Connection], None], ...]] = (
    _create_v1,
    _create_v2,
    _add_principal_v3,
    _create_ingest_fleet_v4,
    _create_signing_key_v5,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


def migrate(conn: Connection, *, postgres: bool) -> None:
    """Brings the job tables up to ``SCHEMA_VERSION`` in the caller's writing transaction.

    Concurrent runs are serialized (SQLite's write lock, taken by the caller's ``BEGIN
    IMMEDIATE``; a PostgreSQL advisory lock here), and DDL is transactional on both databases,
    so a crash leaves the previous version intact.

    Args:
        conn: A writing transaction on the job store's database.
        postgres: True on PostgreSQL, where the advisory lock is taken.

    Raises:
        FailedPrecondition: The database was migrated by a newer release
            (reason ``JOB_STORE_SCHEMA_TOO_NEW``); run that release or newer.
    """
    if postgres:
        conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
    schema_table.create(conn, checkfirst=True)
    current = _schema_version(conn)
    if current > SCHEMA_VERSION:
        raise FailedPrecondition(
            f"the job store schema is version {current}, newer than this release's "
            f"{SCHEMA_VERSION}; upgrade the service",
            reason="JOB_STORE_SCHEMA_TOO_NEW",
        )
    for step in _MIGRATIONS[current:]:
        step(conn)
    _set_schema_version(conn, current)


def _schema_version(conn: Connection) -> int:
    stmt = select(schema_table.c.version).where(schema_table.c.id == 1)
    version = conn.execute(stmt).scalar_one_or_none()
    return 0 if version is None else int(version)


def _set_schema_version(conn: Connection, previous: int) -> None:
    if previous == 0:
        conn.execute(insert(schema_table).values(id=1, version=SCHEMA_VERSION))
    elif previous != SCHEMA_VERSION:
        stmt = update(schema_table).where(schema_table.c.id == 1)
        conn.execute(stmt.values(version=SCHEMA_VERSION))
