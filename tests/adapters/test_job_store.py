"""What only the JobStore adapter does, on real databases: SQLite (a file under tmp_path) and
PostgreSQL: its migrations, its hooks, its failures, and sharing the catalog's SQLite file.

What every implementation of JobStorePort does (create, list, cancel, claim, leases, retries,
purge, concurrency) is in tests/ports/test_job_store_behaviour.py, moved there from here.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from fixtures.job_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SECOND,
    SUCCEEDED,
    T0,
    claim,
    create,
    in_threads,
)
from fixtures.net import LOOPBACK, free_port
from lakehouse.adapters.job_store import migrations
from lakehouse.adapters.job_store.migrations import SCHEMA_VERSION
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.request_id_store import RequestIdStore
from lakehouse.domain.errors import FailedPrecondition, Unavailable
from lakehouse.domain.ingest import RecordedRequest
from lakehouse.domain.jobs import LeaseLost
from lakehouse.v1 import job_pb2

SQL = job_pb2.JOB_KIND_SQL
LEASE = 30.0


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database of each kind (for tests of migrate itself)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
    database_url: str = request.getfixturevalue("postgres_database_url")
    return database_url


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    """A migrated store without jobs, on each kind of database."""
    job_store = JobStore(store_url)
    job_store.migrate()
    yield job_store
    job_store.close()


def schema_versions(url: str) -> list[int]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT version FROM lakehouse_jobs_schema"))
            return [int(v) for (v,) in rows]
    finally:
        engine.dispose()


# -- migrate -----------------------------------------------------------------------------------


def test_migrate_twice_keeps_one_version_row(store: JobStore, store_url: str) -> None:
    create(store, "job-1")
    store.migrate()
    assert schema_versions(store_url) == [SCHEMA_VERSION]
    assert store.get("job-1").id == "job-1"


def test_concurrent_migrations_of_a_fresh_database(url: str) -> None:
    stores = [JobStore(url) for _ in range(2)]  # two processes starting at once
    try:
        in_threads(2, lambda i: stores[i].migrate())
        assert schema_versions(url) == [SCHEMA_VERSION]
        create(stores[0], "job-1")
        assert stores[1].get("job-1").state == QUEUED
    finally:
        for s in stores:
            s.close()


def test_migrate_refuses_a_newer_schema(url: str) -> None:
    store = JobStore(url)
    try:
        store.migrate()
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE lakehouse_jobs_schema SET version = 99"))
        engine.dispose()
        with pytest.raises(FailedPrecondition) as err:
            store.migrate()
        assert err.value.reason == "JOB_STORE_SCHEMA_TOO_NEW"
    finally:
        store.close()


def test_migrate_from_version_1_adds_the_request_id_table_and_keeps_jobs(url: str) -> None:
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # a database as the release with schema 1 left it
        migrations.schema_table.create(conn)
        migrations._MIGRATIONS[0](conn)
        conn.execute(sqlalchemy.text("INSERT INTO lakehouse_jobs_schema VALUES (1, 1)"))
        # A job as that release wrote it (no principal column yet).
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO lakehouse_jobs (id, kind, namespace, table_name, state, spec, "
                "request_id, spec_digest, attempts, max_attempts, cancel_requested, worker, "
                "create_time_us, update_time_us, next_attempt_us, progress_fraction, "
                "progress_message, scheduled, version) VALUES ('job-1', :kind, '', '', "
                ":state, :spec, NULL, 'digest', 0, 3, false, '', :t, :t, :t, 0, '', false, 1)"
            ),
            {"kind": SQL, "state": QUEUED, "spec": b"spec of job-1", "t": T0},
        )
    engine.dispose()
    store = JobStore(url)
    ledger = RequestIdStore(store)
    try:
        with pytest.raises(Unavailable) as err:  # not migrated yet: no table to read
            ledger.find("t-uuid", ["r1"], since_ms=0)
        assert err.value.reason == "REQUEST_ID_STORE_UNAVAILABLE"

        store.migrate()

        assert schema_versions(url) == [5] == [SCHEMA_VERSION]
        # Versions 4 and 5: the ingest commit leases and handed batches, the signing key: empty.
        with sqlalchemy.create_engine(url).connect() as conn:
            for table in (
                "lakehouse_ingest_leases",
                "lakehouse_ingest_batches",
                "lakehouse_signing_key",
            ):
                count = conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}"))
                assert count.scalar_one() == 0
        assert store.get("job-1").state == QUEUED
        assert store.get("job-1").principal == ""  # older jobs count against no caller
        recorded = RecordedRequest("r1", rows=3, snapshot_id=7, committed_ms=1000)
        ledger.record("t-uuid", [recorded])
        assert ledger.find("t-uuid", ["r1", "r2"], since_ms=0) == {"r1": recorded}
    finally:
        store.close()


def test_hooks_see_each_final_state_and_each_expired_lease_once(store_url: str) -> None:
    ended: list[tuple[str, int]] = []
    expired: list[tuple[str, str, int]] = []
    store = JobStore(
        store_url,
        on_ended=lambda job: ended.append((job.id, job.state)),
        on_lease_expired=lambda job, worker: expired.append((job.id, worker, job.state)),
    )
    store.migrate()
    try:
        # Cancelled while queued: ends at once, once.
        create(store, "queued")
        store.cancel("queued", now_us=T0 + 1)
        store.cancel("queued", now_us=T0 + 2)
        assert (ended, expired) == ([("queued", CANCELLED)], [])

        # A retry is no end; the success is, and a late second finish changes nothing.
        create(store, "retried", now_us=T0 + 3)
        claim(store, now_us=T0 + 4)
        store.retry_later(
            "retried", worker="w1", attempt=1, now_us=T0 + 5, delay_seconds=0, error=b""
        )
        claim(store, now_us=T0 + 6)
        store.finish("retried", worker="w1", attempt=2, state=SUCCEEDED, now_us=T0 + 7)
        with pytest.raises(LeaseLost):
            store.finish("retried", worker="w1", attempt=2, state=FAILED, now_us=T0 + 8)
        assert ended[1:] == [("retried", SUCCEEDED)]

        # Two expired leases: one taken over, then one ended on the last attempt.
        late = T0 + 100 * SECOND
        create(store, "lost", now_us=late, max_attempts=2)
        claim(store, worker="dead-1", now_us=late)
        assert claim(store, worker="w2", now_us=late + 31 * SECOND).lease_lost_by == "dead-1"
        assert store.claim(worker="w3", lease_seconds=LEASE, now_us=late + 62 * SECOND) is None
        assert expired == [("lost", "dead-1", RUNNING), ("lost", "w2", FAILED)]
        assert ended[2:] == [("lost", FAILED)]

        # Cancel of a running job ends it only when its worker hands it back.
        create(store, "running", now_us=late + 63 * SECOND)
        claim(store, now_us=late + 64 * SECOND)
        store.cancel("running", now_us=late + 65 * SECOND)
        assert len(ended) == 3
        store.retry_later(
            "running", worker="w1", attempt=1, now_us=late + 66 * SECOND, delay_seconds=0, error=b""
        )
        assert ended[3:] == [("running", CANCELLED)]
        assert len(expired) == 2
    finally:
        store.close()


# -- failures ----------------------------------------------------------------------------------


def test_unreachable_postgres_is_unavailable_without_the_password() -> None:
    password = "sup3r-secret-pw"
    url = f"postgresql+psycopg2://lakehouse:{password}@{LOOPBACK}:{free_port()}/lakehouse"
    store = JobStore(url)
    try:
        for call in (store.check, store.migrate, lambda: store.get("job-1")):
            with pytest.raises(Unavailable) as err:
                call()
            message = str(err.value)
            assert err.value.reason == "JOB_STORE_UNAVAILABLE"
            assert message.startswith("job store unavailable: ")
            assert password not in message and url not in message
    finally:
        store.close()


def test_a_malformed_url_is_rejected_without_repeating_it() -> None:
    with pytest.raises(ValueError) as err:
        JobStore("postgresql+psycopg2://user:pw-in-url@host:notaport/db")
    assert "pw-in-url" not in str(err.value)
    with pytest.raises(ValueError, match="sqlite and postgresql"):
        JobStore("mysql://user@host/db")
    with pytest.raises(ValueError, match="not installed") as missing:
        JobStore("postgresql+pg8000://user:pw-in-url@host/db")
    assert "pw-in-url" not in str(missing.value)


def test_a_locked_sqlite_database_is_unavailable_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    store = JobStore(f"sqlite:///{path}", busy_timeout_seconds=0.2)
    store.migrate()
    create(store, "job-1")
    other = sqlite3.connect(path, isolation_level=None)  # another process holding the lock
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(Unavailable) as err:
            create(store, "job-2")
        assert time.monotonic() - started >= 0.2
        assert "locked" in str(err.value)
        assert store.get("job-1").state == QUEUED  # WAL: readers are not blocked by the writer
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


def test_shares_the_catalog_file_with_pyiceberg(tmp_path: Path) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = SqlCatalog("lakehouse", uri=url, warehouse=(tmp_path / "warehouse").as_uri())
    catalog.create_namespace("sales")
    store = JobStore(url)
    try:
        store.migrate()
        create(store, "job-1")
        catalog.create_namespace("ops")
        assert sorted(catalog.list_namespaces()) == [("ops",), ("sales",)]
        assert store.get("job-1").state == QUEUED
    finally:
        store.close()
        catalog.engine.dispose()
    with sqlite3.connect(tmp_path / "catalog.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
