"""The ingest commit leases and handed batches on a real PostgreSQL (the shared database)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import sqlalchemy

from fixtures.ingest_fleet import sql as run_sql
from lakehouse.adapters.ingest_fleet_store import (
    PENDING_CHANNEL,
    RESOLVED_CHANNEL,
    IngestFleetStore,
)
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


def test_old_resolutions_and_idle_leases_are_pruned_in_bounded_passes(
    fleet: IngestFleetStore, postgres_jobs_url: str
) -> None:
    def sql(statement: str) -> list[Any]:
        return run_sql(postgres_jobs_url, statement)

    async def scenario() -> None:
        sql("DELETE FROM lakehouse_ingest_batches")
        sql("DELETE FROM lakehouse_ingest_leases")
        for name in ("old1", "old2", "old3", "recent", "open"):
            await fleet.submit(TABLE, "main", batch(name))
        await fleet.claim(TABLE, "main", 5, 10)
        resolved = [BatchResolution(n, BatchStatus.COMMITTED, 1) for n in ("old1", "old2")]
        resolved += [BatchResolution(n, BatchStatus.COMMITTED, 2) for n in ("old3", "recent")]
        await fleet.resolve(5, resolved)
        # Resolved an hour and a second ago (their replicas died before reading them).
        sql(
            "UPDATE lakehouse_ingest_batches SET resolved_us = resolved_us - 3601000000 "
            "WHERE batch_id LIKE 'old%'"
        )
        # Leases: a dropped table's, released an hour ago; another's, expired an hour ago;
        # one released a moment ago; one held.
        epochs = {}
        for table, owner in (("dropped", "a"), ("idle", "b"), ("released", "c"), ("held", "d")):
            epochs[table] = await fleet.acquire(("sales", table), "main", owner, 10)
        for table, owner in (("dropped", "a"), ("released", "c")):
            await fleet.release(("sales", table), "main", owner)
        sql(
            "UPDATE lakehouse_ingest_leases SET expires_us = expires_us - 3611000000 "
            "WHERE table_name IN ('dropped', 'idle')"
        )

        assert await fleet.prune(3600, 2) == 4  # two of each kind at most
        assert await fleet.prune(3600, 2) == 1
        assert await fleet.prune(3600, 2) == 0
        leases = sql("SELECT table_name FROM lakehouse_ingest_leases ORDER BY 1")
        assert [r.table_name for r in leases] == ["held", "released"]
        # A resolution within the retention is still read by its replica; pruned ones are
        # gone (an owner no longer knows them: lost).
        assert await fleet.resolution("recent") == BatchResolution(
            "recent", BatchStatus.COMMITTED, 2
        )
        gone = await fleet.resolution("old1")
        assert gone is not None and gone.error is not None
        assert gone.error.reason == "INGEST_BATCH_LOST"
        assert await fleet.resolution("open") is None  # open batches are never pruned
        # A pruned lease made again fences off any epoch of the old row.
        again = await fleet.acquire(("sales", "dropped"), "main", "e", 10)
        assert again is not None and again > (epochs["dropped"] or 0)

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


def notifications(url: str, work: Callable[[], None]) -> list[str]:
    """The channels notified while ``work`` ran, as a listener on ``url`` receives them."""
    dsn = sqlalchemy.make_url(url).set(drivername="postgresql")
    listening: Any = psycopg2.connect(dsn.render_as_string(hide_password=False))
    try:
        listening.autocommit = True
        with listening.cursor() as cur:
            cur.execute(f"LISTEN {PENDING_CHANNEL}; LISTEN {RESOLVED_CHANNEL}")
        work()
        with listening.cursor() as cur:
            cur.execute("SELECT 1")  # delivers what was sent meanwhile
        return [n.channel for n in listening.notifies]
    finally:
        listening.close()


@pytest.mark.parametrize("notify", [True, False])
def test_hand_offs_notify_unless_turned_off(postgres_jobs_url: str, notify: bool) -> None:
    store = JobStore(postgres_jobs_url)
    pool = BlockingPool(2)
    fleet = IngestFleetStore(store, pool, notify=notify)

    async def hand_off() -> None:
        await fleet.submit(TABLE, "main", batch("notified"))
        claimed = await fleet.claim(TABLE, "main", 1, 10)
        await fleet.resolve(1, [BatchResolution(claimed[0].batch_id, BatchStatus.COMMITTED, 7)])
        await fleet.resolution("notified")

    try:
        sent = notifications(postgres_jobs_url, lambda: asyncio.run(hand_off()))
    finally:
        pool.close()
        store.close()
    assert sent == ([PENDING_CHANNEL, RESOLVED_CHANNEL] if notify else [])
