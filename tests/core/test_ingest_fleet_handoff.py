"""Hand-offs between two in-process replicas: a real catalog, a real PostgreSQL fleet store.

Each test has an owner replica (holding the table's commit lease) and a replica that hands its
files to it, with a failure put between the replica and the database at the port: the
database did what was asked, the replica was not told (a lost acknowledgement).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pyarrow as pa
import pytest
import pytest_asyncio
import sqlalchemy
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder
from pyiceberg.types import LongType, NestedField, StringType

from fixtures.iceberg import direct_catalog
from fixtures.ingest_fleet import end_connections, open_batches, sql
from fixtures.net import free_port
from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.iceberg.ingest_files import dump_data_files
from lakehouse.adapters.ingest_fleet_listener import APPLICATION_NAME, FleetListener
from lakehouse.adapters.ingest_fleet_store import IngestFleetStore
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.blocking import BlockingPool
from lakehouse.core.ingest import Ingest
from lakehouse.core.ingest_fleet import Fleet
from lakehouse.core.ports import IngestFleetPort
from lakehouse.domain.errors import Unavailable
from lakehouse.domain.ingest import BatchResolution, BatchStatus, PendingBatch

SCHEMA = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "v", StringType()))
ARROW = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.string())])
TABLE = ("fleet", "t")


def rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {"id": list(range(start, start + count)), "v": [f"r{i}" for i in range(count)]},
        schema=ARROW,
    )


class LostSubmitAck(IngestFleetStore):
    """Stores the first handed batch, then answers as if the database could not be reached."""

    def __init__(self, store: JobStore, pool: BlockingPool) -> None:
        super().__init__(store, pool)
        self.lost: list[str] = []

    async def submit(self, table: tuple[str, str], branch: str, batch: PendingBatch) -> None:
        await super().submit(table, branch, batch)
        if not self.lost:
            self.lost.append(batch.batch_id)
            raise Unavailable("connection lost before the commit was acknowledged")


class Replica:
    """One replica's ingest; ``listen_url``: with a hand-off listener on that database."""

    def __init__(
        self,
        settings: Any,
        jobs_url: str,
        name: str,
        store: type[Any],
        *,
        listen_url: str | None = None,
        **ingest: Any,
    ) -> None:
        self.pool = BlockingPool(4)
        self.jobs = JobStore(jobs_url)
        self.store: IngestFleetPort = store(self.jobs, self.pool)
        self.catalog = IcebergCatalog(settings, self.pool)
        self.fleet = Fleet(self.store, name)
        self.listener: FleetListener | None = None
        if listen_url is not None:
            self.listen(listen_url)
        self.ingest = Ingest(
            self.catalog, settings.ingest.model_copy(update=ingest), fleet=self.fleet
        )

    def listen(self, url: str) -> None:
        """Starts a hand-off listener on ``url``, as the server does."""
        signals = self.fleet.signals
        self.listener = FleetListener(
            url, signals.batch_pending, signals.batch_resolved, signals.listener_state
        )
        self.listener.start(asyncio.get_running_loop())

    async def close(self) -> None:
        await self.ingest.close(timeout=5)
        if self.listener is not None:
            await asyncio.to_thread(self.listener.close)
        await self.catalog.close()
        self.pool.close()
        self.jobs.close()


@pytest_asyncio.fixture
async def jobs_url(postgres_jobs_url: str) -> AsyncIterator[str]:
    yield postgres_jobs_url
    engine = sqlalchemy.create_engine(postgres_jobs_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM lakehouse_ingest_batches"))
        conn.execute(sqlalchemy.text("DELETE FROM lakehouse_ingest_leases"))
    engine.dispose()


async def settled(jobs_url: str, timeout: float = 10.0) -> None:
    """Waits until no handed batch is open (the owner claimed and resolved them all)."""
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(open_batches, jobs_url):
        assert time.monotonic() < deadline, "handed batches still open"
        await asyncio.sleep(0.05)


def table_ids(settings: Any) -> list[int]:
    table = direct_catalog(settings).load_table(TABLE)
    return sorted(table.scan().to_arrow().column("id").to_pylist())


async def owning(owner: Replica) -> None:
    """Creates the table, and ``owner`` takes its commit lease with a first write (0-9)."""
    await owner.catalog.create_namespace(TABLE[0], {})
    await owner.catalog.create_table(*TABLE, SCHEMA, PartitionSpec(), SortOrder(), {})
    await owner.ingest.write(*TABLE, rows(0, 10))


@contextlib.asynccontextmanager
async def owner_and_replica(
    settings: Any,
    jobs_url: str,
    store: type[Any],
    owner_store: type[Any] = IngestFleetStore,
    **kw: Any,
) -> AsyncIterator[tuple[Replica, Replica]]:
    """An owner of the table (see ``owning``), and a replica handing through ``store``.

    ``kw``: ``Replica``'s options for both.
    """
    owner = Replica(settings, jobs_url, "owner", owner_store, **kw)
    replica = Replica(settings, jobs_url, "replica", store, **kw)
    try:
        await owning(owner)
        yield owner, replica
    finally:
        await replica.close()
        await owner.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_hand_off_whose_acknowledgement_was_lost_is_written_once(
    backend: Any, jobs_url: str
) -> None:
    async with owner_and_replica(backend, jobs_url, LostSubmitAck) as (owner, replica):
        # The batch is stored, but the replica is told it was not: the owner may commit it.
        written = await replica.ingest.write(*TABLE, rows(100, 10))
        assert written.rows_written == 10
        assert isinstance(replica.store, LostSubmitAck) and replica.store.lost
        await settled(jobs_url)
        await owner.ingest.write(*TABLE, rows(200, 10))  # the owner's next window
        ids = table_ids(backend)  # every data file the table lists can be read
        assert [i for i, n in Counter(ids).items() if n > 1] == []
        assert ids == [*range(0, 10), *range(100, 110), *range(200, 210)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_cancelled_caller_in_a_handed_group_fails_nobody_else(
    backend: Any, jobs_url: str
) -> None:
    async with owner_and_replica(backend, jobs_url, IngestFleetStore) as (_owner, replica):
        await replica.ingest.write(*TABLE, rows(10, 10))  # the replica's committer is up
        # One group: a write with an offset gap whose caller went away, and another write.
        gap, other = await asyncio.gather(
            replica.ingest.enqueue(*TABLE, rows(500, 5), writer_id="w", offset=1000),
            replica.ingest.enqueue(*TABLE, rows(20, 10), request_id="other"),
        )
        gap.cancel()  # what awaiting it does when the caller's RPC is cancelled
        written = await asyncio.wait_for(other, 10)
        assert (written.rows_written, written.already_written) == (10, False)
        assert table_ids(backend) == list(range(30))


class SpecChangesBeforeSubmit(IngestFleetStore):
    """Partitions the table by ``v`` after the first batch was staged, before it is handed."""

    settings: Any
    changed: list[bool]

    async def submit(self, table: tuple[str, str], branch: str, batch: PendingBatch) -> None:
        if not self.changed:
            self.changed.append(True)

            def partition() -> None:
                loaded = direct_catalog(self.settings).load_table(table)
                with loaded.update_spec() as spec:
                    spec.add_identity("v")

            await asyncio.to_thread(partition)
        await super().submit(table, branch, batch)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_files_staged_before_a_partition_change_are_staged_again(
    backend: Any, jobs_url: str
) -> None:
    SpecChangesBeforeSubmit.settings, SpecChangesBeforeSubmit.changed = backend, []
    async with owner_and_replica(backend, jobs_url, SpecChangesBeforeSubmit) as (_owner, replica):
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 20)
        assert written.rows_written == 10
        assert SpecChangesBeforeSubmit.changed
        table = direct_catalog(backend).load_table(TABLE)
        # Each data file is listed under the partition spec it was written with.
        for task in table.scan().plan_files():
            spec = table.specs()[task.file.spec_id]
            assert len(task.file.partition) == len(spec.fields), task.file.file_path
        assert table_ids(backend) == [*range(0, 10), *range(100, 110)]
        only = table.scan(row_filter="v == 'r3'").to_arrow().column("id").to_pylist()
        assert sorted(only) == [3, 103]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_handed_file_outside_the_table_is_refused(backend: Any, jobs_url: str) -> None:
    owner = Replica(backend, jobs_url, "owner", IngestFleetStore)
    try:
        await owner.catalog.create_namespace(TABLE[0], {})
        for name in (TABLE[1], "other"):
            await owner.catalog.create_table(
                TABLE[0], name, SCHEMA, PartitionSpec(), SortOrder(), {}
            )
        await owner.ingest.write(TABLE[0], "other", rows(900, 5))
        await owner.ingest.write(*TABLE, rows(0, 10))  # takes the table's commit lease
        other = direct_catalog(backend).load_table((TABLE[0], "other"))
        foreign = [task.file for task in other.scan().plan_files()]
        # A batch row nobody's replica wrote: another table's file, as a database row.
        batch = PendingBatch("foreign", (), dump_data_files(foreign, 0), 5)
        await owner.store.submit(TABLE, "main", batch)
        await settled(jobs_url)
        await owner.ingest.write(*TABLE, rows(10, 10))
        resolution = await owner.store.resolution("foreign")
        assert resolution is not None and resolution.status is BatchStatus.REJECTED
        assert table_ids(backend) == list(range(20))
    finally:
        await owner.close()


class CancelledOnce(IngestFleetStore):
    """The first look for a resolution ends in a CancelledError that is not the caller's
    (a cancelled future inside a library, as a closed thread pool's)."""

    def __init__(self, store: JobStore, pool: BlockingPool) -> None:
        super().__init__(store, pool)
        self.raised: list[bool] = []

    async def resolution(self, batch_id: str) -> BatchResolution | None:
        if not self.raised:
            self.raised.append(True)
            raise asyncio.CancelledError()
        return await super().resolution(batch_id)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_stray_cancellation_fails_one_hand_off_not_the_committer(
    backend: Any, jobs_url: str
) -> None:
    async with owner_and_replica(backend, jobs_url, CancelledOnce) as (_owner, replica):
        with pytest.raises(Unavailable):
            await asyncio.wait_for(replica.ingest.write(*TABLE, rows(10, 10), request_id="a"), 10)
        # The replica's committer lives on: the resend is answered (written once).
        again = await asyncio.wait_for(
            replica.ingest.write(*TABLE, rows(10, 10), request_id="a"), 10
        )
        assert again.rows_written == 10
        await settled(jobs_url)
        assert table_ids(backend) == list(range(20))


class ResolveLostOnce(IngestFleetStore):
    """The first resolution of a batch is not recorded (the owner's database link broke after
    its commit), and meanwhile a batch that must be refused (``foreign``) is handed too."""

    foreign: list[PendingBatch]

    async def resolve(self, epoch: int, resolutions: Sequence[BatchResolution]) -> None:
        if resolutions and self.foreign:
            await self.submit(TABLE, "main", self.foreign.pop())
            raise Unavailable("connection lost")
        await super().resolve(epoch, resolutions)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_refused_files_do_not_send_back_a_batch_already_committed(
    backend: Any, jobs_url: str
) -> None:
    owner = Replica(backend, jobs_url, "owner", ResolveLostOnce)
    replica = Replica(backend, jobs_url, "replica", IngestFleetStore)
    ResolveLostOnce.foreign = []
    try:
        await owning(owner)
        await owner.catalog.create_table(
            TABLE[0], "other", SCHEMA, PartitionSpec(), SortOrder(), {}
        )
        await owner.ingest.write(TABLE[0], "other", rows(900, 5))
        other = direct_catalog(backend).load_table((TABLE[0], "other"))
        foreign = [task.file for task in other.scan().plan_files()]
        ResolveLostOnce.foreign = [PendingBatch("foreign", (), dump_data_files(foreign, 0), 5)]
        # Committed, not recorded; the next window holds it (committed) and the foreign one.
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 20)
        assert written.rows_written == 10
        assert not ResolveLostOnce.foreign
        await settled(jobs_url)
        assert table_ids(backend) == [*range(0, 10), *range(100, 110)]
    finally:
        await replica.close()
        await owner.close()


class Counting(IngestFleetStore):
    """Counts the calls of each method (each is one transaction on the database)."""

    def __init__(self, store: JobStore, pool: BlockingPool) -> None:
        super().__init__(store, pool)
        self.calls: Counter[str] = Counter()

    async def acquire(
        self, table: tuple[str, str], branch: str, owner: str, ttl_seconds: float
    ) -> int | None:
        self.calls["acquire"] += 1
        return await super().acquire(table, branch, owner, ttl_seconds)

    async def claim(
        self, table: tuple[str, str], branch: str, epoch: int, limit: int
    ) -> list[PendingBatch]:
        self.calls["claim"] += 1
        return await super().claim(table, branch, epoch, limit)

    async def resolution(self, batch_id: str) -> BatchResolution | None:
        self.calls["resolution"] += 1
        return await super().resolution(batch_id)


#: A safety poll of a minute: within a test only a notification makes anyone look.
QUIET = {"handoff_safety_poll_ms": 60_000.0, "handoff_timeout_seconds": 120.0}


async def listening(*replicas: Replica) -> None:
    for r in replicas:
        await until(lambda r=r: r.fleet.signals.listening, 10, "listening")


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_notifications_wake_the_owner_and_the_replica_instead_of_polls(
    backend: Any, jobs_url: str
) -> None:
    async with owner_and_replica(
        backend, jobs_url, Counting, Counting, listen_url=jobs_url, **QUIET
    ) as (owner, replica):
        await listening(owner, replica)
        await owner.ingest.write(*TABLE, rows(10, 10))  # its first claim under the lease
        assert isinstance(owner.store, Counting) and isinstance(replica.store, Counting)
        claims = owner.store.calls["claim"]
        await asyncio.sleep(0.5)  # idle: 25 claims at the 20 ms hand-off poll
        assert owner.store.calls["claim"] == claims
        for i in range(5):
            written = await asyncio.wait_for(
                replica.ingest.write(*TABLE, rows(100 + 10 * i, 10)), 10
            )
            assert written.rows_written == 10
        # One claim per handed batch (woken by it), one look per resolution (woken by it).
        assert owner.store.calls["claim"] - claims <= 5
        assert replica.store.calls["resolution"] == 5
        assert table_ids(backend) == [*range(0, 20), *range(100, 150)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_lost_listening_connection_means_polling_then_listening_again(
    backend: Any, jobs_url: str
) -> None:
    async with owner_and_replica(
        backend, jobs_url, IngestFleetStore, listen_url=jobs_url, **QUIET
    ) as (owner, replica):
        await listening(owner, replica)
        # The database ends the listening connections (a failover, an idle-session killer).
        assert end_connections(jobs_url, APPLICATION_NAME) == 2
        await until(lambda: not replica.fleet.signals.listening, 10, "the loss noticed")
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 10)
        assert written.rows_written == 10
        await listening(owner, replica)  # reconnected after a backoff
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(200, 10)), 10)
        assert written.rows_written == 10
        assert table_ids(backend) == [*range(0, 10), *range(100, 110), *range(200, 210)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_closed_listener_means_polling_again(backend: Any, jobs_url: str) -> None:
    async with owner_and_replica(
        backend, jobs_url, IngestFleetStore, listen_url=jobs_url, **QUIET
    ) as (owner, replica):
        await listening(owner, replica)
        assert replica.listener is not None
        await asyncio.to_thread(replica.listener.close)  # as at shutdown, ingest still draining
        replica.listener = None
        assert not replica.fleet.signals.listening
        # The owner's resolution is not heard any more: the replica reads it at the hand-off
        # poll (20 ms), not at the safety poll (a minute here).
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 10)
        assert written.rows_written == 10


class ResolveFailsOnce(IngestFleetStore):
    """The first resolution is not recorded (the database link broke after the commit)."""

    failed = False

    async def resolve(self, epoch: int, resolutions: Sequence[BatchResolution]) -> None:
        if resolutions and not self.failed:
            self.failed = True
            raise Unavailable("connection lost")
        await super().resolve(epoch, resolutions)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_batch_left_claimed_is_claimed_again_in_the_next_window(
    backend: Any, jobs_url: str
) -> None:
    async with owner_and_replica(
        backend, jobs_url, IngestFleetStore, ResolveFailsOnce, listen_url=jobs_url, **QUIET
    ) as (owner, replica):
        await listening(owner, replica)
        # Committed, not recorded: nobody notifies it, so the owner looks again at once
        # rather than at the safety poll (a minute here).
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 10)
        assert written.rows_written == 10
        assert isinstance(owner.store, ResolveFailsOnce) and owner.store.failed
        await settled(jobs_url)
        assert table_ids(backend) == [*range(0, 10), *range(100, 110)]


class ClaimsFailWhileDown(Counting):
    """Claims fail while ``down`` (the database went away), and are counted."""

    down = False

    async def claim(
        self, table: tuple[str, str], branch: str, epoch: int, limit: int
    ) -> list[PendingBatch]:
        if self.down:
            self.calls["failed_claim"] += 1
            raise Unavailable("the job store cannot be reached")
        return await super().claim(table, branch, epoch, limit)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_owner_backs_off_its_claims_while_the_database_fails_them(
    backend: Any, jobs_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Without a listener an idle owner looks for handed batches every hand-off poll (20 ms);
    # a claim the database fails waits twice as long each time, up to the safety poll (1 s).
    async with owner_and_replica(backend, jobs_url, IngestFleetStore, ClaimsFailWhileDown) as (
        owner,
        replica,
    ):
        store = owner.store
        assert isinstance(store, ClaimsFailWhileDown)
        await until(lambda: store.calls["claim"] > 0, 10, "the owner claims")
        caplog.set_level("DEBUG", logger="lakehouse.core.ingest")
        store.down = True
        await asyncio.sleep(1.0)
        failed = store.calls["failed_claim"]
        assert 2 <= failed <= 10, f"{failed} claims failed in 1 s"
        warnings = [
            r
            for r in caplog.records
            if r.levelname == "WARNING" and r.getMessage() == "cannot claim handed ingest batches"
        ]
        assert len(warnings) == 1
        store.down = False
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 10)
        assert written.rows_written == 10
        await settled(jobs_url)
        assert table_ids(backend) == [*range(0, 10), *range(100, 110)]


class PrunedBeforeRead(IngestFleetStore):
    """A resolved batch's row is deleted before its replica reads it (pruned: it paused)."""

    url = ""

    async def resolution(self, batch_id: str) -> BatchResolution | None:
        await asyncio.to_thread(
            sql,
            self.url,
            f"DELETE FROM lakehouse_ingest_batches WHERE batch_id = '{batch_id}' "
            "AND status NOT IN (0, 1)",
        )
        return await super().resolution(batch_id)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_batch_whose_answer_was_pruned_but_committed_is_answered_committed(
    backend: Any, jobs_url: str
) -> None:
    PrunedBeforeRead.url = jobs_url
    async with owner_and_replica(backend, jobs_url, PrunedBeforeRead) as (_owner, replica):
        # Gone from the database, yet in the table: the write is acknowledged, not failed.
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 10)
        assert written.rows_written == 10
        assert table_ids(backend) == [*range(0, 10), *range(100, 110)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_without_a_listener_hand_offs_poll(backend: Any, jobs_url: str) -> None:
    # A listener that cannot connect (nothing listens on the port) stays down: polls only.
    unreachable = sqlalchemy.make_url(jobs_url).set(port=free_port())
    url = unreachable.render_as_string(hide_password=False)
    async with owner_and_replica(backend, jobs_url, IngestFleetStore) as (_owner, replica):
        replica.listen(url)
        written = await asyncio.wait_for(replica.ingest.write(*TABLE, rows(100, 10)), 10)
        assert written.rows_written == 10
        assert not replica.fleet.signals.listening
        assert table_ids(backend) == [*range(0, 10), *range(100, 110)]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_busy_single_owner_pays_no_lease_query_per_commit(
    backend: Any, jobs_url: str
) -> None:
    lease = 3.0
    owner = Replica(
        backend,
        jobs_url,
        "owner",
        Counting,
        listen_url=jobs_url,
        commit_lease_seconds=lease,
        commit_delay_ms=0.0,
        **QUIET,
    )
    try:
        await listening(owner)
        await owning(owner)
        assert isinstance(owner.store, Counting)
        held = lease_row(jobs_url)
        before = Counter(owner.store.calls)
        started = time.monotonic()
        writes = 0
        while time.monotonic() - started < lease * 1.5:  # commits for longer than a TTL
            await owner.ingest.write(*TABLE, rows(100 + 10 * writes, 10))
            writes += 1
        elapsed = time.monotonic() - started
        calls = owner.store.calls - before
        # Renewed each time a third of the TTL had passed, never per commit (one commit per
        # write); kept throughout; nothing handed to it: no claim.
        renewals = elapsed / (lease / 3)
        assert renewals - 1 <= calls["acquire"] <= renewals + 1
        assert writes > 3 * calls["acquire"]
        assert calls["claim"] == 0 and set(calls) == {"acquire"}
        assert lease_row(jobs_url) == held
        snapshots = direct_catalog(backend).load_table(TABLE).metadata.snapshots
        assert len(snapshots) == writes + 1
    finally:
        await owner.close()


def lease_row(jobs_url: str) -> tuple[str, int]:
    """The table's lease: its owner and epoch."""
    (row,) = sql(jobs_url, "SELECT owner, epoch FROM lakehouse_ingest_leases")
    return str(row.owner), int(row.epoch)


async def take_lease(jobs_url: str, store: IngestFleetPort, owner: str) -> None:
    """Expires the table's lease (as if its owner had stalled for a TTL) and takes it."""
    sql(jobs_url, "UPDATE lakehouse_ingest_leases SET expires_us = 0")
    assert await store.acquire(TABLE, "main", owner, 600) is not None


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_owner_whose_lease_was_taken_stops_committing(backend: Any, jobs_url: str) -> None:
    lease = 3.0
    owner = Replica(
        backend,
        jobs_url,
        "owner",
        IngestFleetStore,
        commit_lease_seconds=lease,
        handoff_timeout_seconds=1.0,
    )
    try:
        await owning(owner)
        await take_lease(jobs_url, owner.store, "other")  # a replica that never commits
        await asyncio.sleep(lease / 3)  # the owner's next look at its lease is due
        with pytest.raises(Unavailable) as failed:
            await owner.ingest.write(*TABLE, rows(100, 10), request_id="r")
        # It renewed, failed to, and handed the batch over instead of committing it.
        assert failed.value.reason == "COMMIT_OWNER_UNAVAILABLE"
        assert open_batches(jobs_url) == 0  # withdrawn
        assert table_ids(backend) == list(range(10))
        await owner.store.release(TABLE, "main", "other")
        # Its own again: the resend is written, once.
        written = await owner.ingest.write(*TABLE, rows(100, 10), request_id="r")
        assert (written.rows_written, written.already_written) == (10, False)
        assert table_ids(backend) == [*range(10), *range(100, 110)]
    finally:
        await owner.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_owner_prunes_old_resolutions_and_idle_leases(backend: Any, jobs_url: str) -> None:
    owner = Replica(
        backend,
        jobs_url,
        "owner",
        IngestFleetStore,
        handoff_retention_seconds=1.0,
        handoff_timeout_seconds=1.0,
    )
    try:
        await owning(owner)
        # A dropped table's lease, released; a resolution its replica never read.
        gone = ("fleet", "dropped")
        assert await owner.store.acquire(gone, "main", "other", 10) is not None
        await owner.store.release(gone, "main", "other")
        await owner.store.submit(gone, "main", PendingBatch("unread", (), b"", 0))
        await owner.store.claim(gone, "main", 1, 10)
        await owner.store.resolve(1, [BatchResolution("unread", BatchStatus.COMMITTED, 7)])
        await asyncio.sleep(1.1)  # older than the retention; a pass is due
        await owner.ingest.write(*TABLE, rows(10, 10))  # the owner's window prunes
        # The pass runs after the window has acknowledged its writes, so it is waited for.
        await until(
            lambda: sql(jobs_url, "SELECT batch_id FROM lakehouse_ingest_batches") == [],
            10,
            "the unread resolution pruned",
        )
        leases = sql(jobs_url, "SELECT table_name, owner FROM lakehouse_ingest_leases")
        assert [tuple(r) for r in leases] == [("t", "owner")]
        assert table_ids(backend) == list(range(20))
    finally:
        await owner.close()
