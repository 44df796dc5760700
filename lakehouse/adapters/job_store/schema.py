"""The job tables as this release reads and writes them (SQLAlchemy Core).

Every table is prefixed ``lakehouse_`` to stay clear of pyiceberg's ``iceberg_*`` tables in
the same database. These definitions serve queries; the tables are created and upgraded by
``migrations``, which spells each version out as it was released.
"""

from __future__ import annotations

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
    true,
)

from lakehouse.domain.jobs import ACTIVE_STATES

_metadata = MetaData()

#: One row per job. Enums are the int values of the proto enums; spec, result and error are
#: serialized protobuf messages the store never parses.
jobs_table = Table(
    "lakehouse_jobs",
    _metadata,
    Column("id", String, primary_key=True),
    Column("kind", Integer, nullable=False),
    Column("namespace", String, nullable=False),
    # "table" is a reserved word in SQL; the record calls it ``table``.
    Column("table_name", String, nullable=False),
    Column("state", Integer, nullable=False),
    Column("spec", LargeBinary, nullable=False),
    # NULL when the job was created without one: NULLs never collide in a unique index, on
    # SQLite and PostgreSQL alike, so a plain unique index does what a partial one would.
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
    # Who created the job (schema 3); empty for the scheduler's jobs and older ones, which
    # no per-principal limit counts.
    Column("principal", String, nullable=False, server_default=""),
)
_jobs = jobs_table.c

Index("lakehouse_jobs_claim_ix", _jobs.state, _jobs.next_attempt_us)
Index("lakehouse_jobs_list_ix", _jobs.create_time_us, _jobs.id)
Index("lakehouse_jobs_request_id_uq", _jobs.request_id, unique=True)
# Serves latest() and claim()'s same-table check; its first three columns are the table key.
Index(
    "lakehouse_jobs_table_ix", _jobs.kind, _jobs.namespace, _jobs.table_name, _jobs.create_time_us
)
# Serve the per-principal and per-namespace limits (unfinished jobs at CreateJob, running
# ones at claim).
Index("lakehouse_jobs_principal_ix", _jobs.principal, _jobs.state)
Index("lakehouse_jobs_namespace_ix", _jobs.namespace, _jobs.state)
# At most one queued or running scheduled job per (kind, table): the scheduler of every
# replica may enqueue at once, and the database decides which one wins.
ACTIVE_SCHEDULED = and_(_jobs.scheduled == true(), _jobs.state.in_(ACTIVE_STATES))
Index(
    "lakehouse_jobs_scheduled_uq",
    _jobs.kind,
    _jobs.namespace,
    _jobs.table_name,
    unique=True,
    sqlite_where=ACTIVE_SCHEDULED,
    postgresql_where=ACTIVE_SCHEDULED,
)
