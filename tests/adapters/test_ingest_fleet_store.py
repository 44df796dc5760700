"""The ingest commit leases and handed batches on a real PostgreSQL (the shared database)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import sqlalchemy

from lakehouse.adapters.ingest_fleet_store import IngestFleetStore
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.blocking import BlockingPool
from lakehouse.domain.errors import Conflict
from lakehouse.domain.ingest import BatchEntry, BatchResolution, BatchStatus, PendingBatch

TABLE = ("sales", "orders")


@pytest.fixture
def fleet(postgres_jobs_url: str) -> Iterator[IngestFleetStore]:
    store = JobStore(postgres_jobs_url)
    store.migrate()
    pool = BlockingPool(2)
    try:
        yield IngestFleetStore(store, pool)
    finally:
        pool.close()
        store.close()


def batch(batch_id: str) -> PendingBatch:
    entries = (BatchEntry("r1", 3, "w", 0, 3), BatchEntry("", 2, "", None, None))
    return PendingBatch(batch_id, entries, b"files", 5)


def test_one_owner_at_a_time_and_a_new_epoch_after_expiry(fleet: IngestFleetStore) -> None:
    async def scenario() -> None:
        first = await fleet.acquire(TABLE, "main", "a", 0.2)
        assert first is not None
        assert await fleet.acquire(TABLE, "main", "b", 0.2) is None  # held by a
        assert await fleet.acquire(TABLE, "main", "a", 0.2) == first  # renewed, same epoch
        await asyncio.sleep(0.3)
        assert await fleet.acquire(TABLE, "main", "b", 10) == first + 1  # expired: b's now
        assert await fleet.acquire(TABLE, "main", "a", 10) is None
        await fleet.release(TABLE, "main", "b")
        assert await fleet.acquire(TABLE, "main", "a", 10) == first + 2  # released: at once
        assert await fleet.acquire(TABLE, "dev", "b", 10) is not None  # branches lease apart

    asyncio.run(scenario())


def test_a_batch_is_claimed_resolved_and_read_once(fleet: IngestFleetStore) -> None:
    async def scenario() -> None:
        await fleet.submit(TABLE, "main", batch("b1"))
        await fleet.submit(TABLE, "main", batch("b2"))
        assert await fleet.resolution("b1") is None
        claimed = await fleet.claim(TABLE, "main", 1, 10)
        assert [b.batch_id for b in claimed] == ["b1", "b2"]
        assert claimed[0] == batch("b1")
        assert not await fleet.withdraw("b1")  # claimed: no longer taken back
        # A new owner claims again what the old one left; the old one's word no longer counts.
        assert [b.batch_id for b in await fleet.claim(TABLE, "main", 2, 10)] == ["b1", "b2"]
        await fleet.resolve(1, [BatchResolution("b1", BatchStatus.REJECTED)])
        assert await fleet.resolution("b1") is None
        error = Conflict("no", reason="COMMIT_CONFLICT", metadata={"k": "v"})
        await fleet.resolve(
            2,
            [
                BatchResolution("b1", BatchStatus.COMMITTED, 42),
                BatchResolution("b2", BatchStatus.FAILED, error=error),
            ],
        )
        assert await fleet.resolution("b1") == BatchResolution("b1", BatchStatus.COMMITTED, 42)
        failed = await fleet.resolution("b2")
        assert failed is not None and isinstance(failed.error, Conflict)
        assert (failed.error.reason, failed.error.metadata) == ("COMMIT_CONFLICT", {"k": "v"})
        gone = await fleet.resolution("b1")  # read once: the row is gone
        assert gone is not None and gone.status is BatchStatus.FAILED
        await fleet.submit(TABLE, "main", batch("b3"))
        assert await fleet.withdraw("b3")
        assert await fleet.claim(TABLE, "main", 2, 10) == []

    asyncio.run(scenario())


def test_resolutions_nobody_reads_are_deleted_after_an_hour(
    fleet: IngestFleetStore, postgres_jobs_url: str
) -> None:
    async def scenario() -> None:
        await fleet.submit(TABLE, "main", batch("orphan"))
        await fleet.claim(TABLE, "main", 5, 10)
        await fleet.resolve(5, [BatchResolution("orphan", BatchStatus.COMMITTED, 1)])
        engine = sqlalchemy.create_engine(postgres_jobs_url)
        with engine.begin() as conn:  # resolved an hour and a second ago
            conn.execute(
                sqlalchemy.text(
                    "UPDATE lakehouse_ingest_batches SET resolved_us = resolved_us - 3601000000"
                )
            )
        engine.dispose()
        await fleet.submit(TABLE, "main", batch("next"))
        await fleet.claim(TABLE, "main", 5, 10)
        await fleet.resolve(5, [BatchResolution("next", BatchStatus.COMMITTED, 2)])
        gone = await fleet.resolution("orphan")
        assert gone is not None and gone.error is not None
        assert gone.error.reason == "INGEST_BATCH_LOST"
        assert await fleet.resolution("next") == BatchResolution("next", BatchStatus.COMMITTED, 2)

    asyncio.run(scenario())


def test_a_replica_whose_clock_runs_ahead_does_not_take_a_live_lease(
    fleet: IngestFleetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        epoch = await fleet.acquire(TABLE, "skew", "a", 10)
        assert epoch is not None
        # Replica b's machine clock is an hour ahead (no NTP): the lease's expiry is the
        # database's clock, so a's lease, renewed a moment ago, is still a's.
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)
        assert await fleet.acquire(TABLE, "skew", "b", 10) is None
        monkeypatch.setattr(time, "time", real)
        epoch = await fleet.acquire(TABLE, "skew", "a", 10)
        assert epoch is not None

    asyncio.run(scenario())
