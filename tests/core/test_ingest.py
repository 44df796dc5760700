"""Ingest core on a real catalog: group commit, exactly-once offsets, request ids, replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pyarrow as pa
import pytest
import pytest_asyncio
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

from fixtures.iceberg import direct_catalog
from fixtures.net import LOOPBACK, free_port
from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.iceberg.expiry import expire_snapshots
from lakehouse.adapters.job_store.store import JobStore
from lakehouse.adapters.request_id_store import RequestIdStore
from lakehouse.blocking import BlockingPool
from lakehouse.core.ingest import Ingest
from lakehouse.domain.errors import InvalidArgument, NotFound, OutOfRange, Unavailable

SCHEMA = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "v", StringType()))
ARROW = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.string())])


def rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {"id": list(range(start, start + count)), "v": [f"r{i}" for i in range(count)]},
        schema=ARROW,
    )


class Replica:
    """One process's worth of ingest machinery on a shared catalog."""

    def __init__(self, settings: Any, ledger: RequestIdStore | None = None) -> None:
        self.pool = BlockingPool(4)
        self.catalog = IcebergCatalog(settings, self.pool)
        self.ingest = Ingest(self.catalog, settings.ingest, request_ids=ledger)

    async def close(self) -> None:
        await self.ingest.close()
        await self.catalog.close()
        self.pool.close()


@pytest_asyncio.fixture
async def replica(backend: Any) -> AsyncIterator[Replica]:
    r = Replica(backend)
    await r.catalog.create_namespace("ing", {})
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.table.sorting import SortOrder

    await r.catalog.create_table("ing", "t", SCHEMA, PartitionSpec(), SortOrder(), {})
    yield r
    await r.close()


def table_ids(settings: Any) -> list[int]:
    table = direct_catalog(settings).load_table(("ing", "t"))
    return sorted(table.scan().to_arrow().column("id").to_pylist())


def snapshot_count(settings: Any) -> int:
    return len(direct_catalog(settings).load_table(("ing", "t")).snapshots())


async def test_group_commit_makes_few_snapshots(replica: Replica, backend: Any) -> None:
    results = await asyncio.gather(
        *(replica.ingest.write("ing", "t", rows(i * 10, 10)) for i in range(50))
    )
    assert all(r.rows_written == 10 for r in results)
    assert table_ids(backend) == list(range(500))
    # 50 writes inside the 100 ms window: one commit (two if the first left early)
    assert snapshot_count(backend) <= 2
    assert len({r.snapshot_id for r in results}) == snapshot_count(backend)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_exactly_once_with_offsets(replica: Replica, backend: Any) -> None:
    w = replica.ingest
    first = await w.write("ing", "t", rows(0, 100), writer_id="w1", offset=0)
    assert (first.rows_written, first.already_written, first.offset) == (100, False, 0)
    again = await w.write("ing", "t", rows(0, 100), writer_id="w1", offset=0)
    assert again.already_written and again.rows_written == 100
    overlap = await w.write("ing", "t", rows(50, 100), writer_id="w1", offset=50)
    assert (overlap.rows_written, overlap.already_written) == (50, False)
    with pytest.raises(OutOfRange) as gap:
        await w.write("ing", "t", rows(1000, 5), writer_id="w1", offset=1000)
    assert gap.value.metadata["next_offset"] == "150"
    appended = await w.write("ing", "t", rows(150, 10), writer_id="w1")  # no offset: appends
    assert appended.offset == 150
    assert table_ids(backend) == list(range(160))
    position = await w.get_writer("ing", "t", "w1")
    assert position.next_offset == 160
    assert position.last_snapshot_id == appended.snapshot_id
    with pytest.raises(NotFound):
        await w.get_writer("ing", "t", "never")


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_request_id_writes_once(replica: Replica, backend: Any) -> None:
    one = await replica.ingest.write("ing", "t", rows(0, 7), request_id="req-1")
    two = await replica.ingest.write("ing", "t", rows(0, 7), request_id="req-1")
    assert (one.rows_written, one.already_written) == (7, False)
    assert (two.rows_written, two.already_written) == (7, True)
    both = await asyncio.gather(
        replica.ingest.write("ing", "t", rows(100, 3), request_id="req-2"),
        replica.ingest.write("ing", "t", rows(100, 3), request_id="req-2"),
    )
    assert sorted(r.already_written for r in both) == [False, True]
    assert table_ids(backend) == [*range(7), 100, 101, 102]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_bad_ids_and_offsets(replica: Replica) -> None:
    for kwargs, field in (
        ({"writer_id": "a/b"}, "writer_id"),
        ({"writer_id": "x" * 129}, "writer_id"),
        ({"request_id": "has space"}, "request_id"),
        ({"offset": 3}, "offset"),
        ({"writer_id": "w", "offset": -1}, "offset"),
    ):
        with pytest.raises(InvalidArgument) as exc:
            await replica.ingest.write("ing", "t", rows(0, 1), **kwargs)
        assert exc.value.violations[0].field == field


async def test_two_replicas_same_writer_each_row_lands_once(backend: Any) -> None:
    a, b = Replica(backend), Replica(backend)
    try:
        await a.catalog.create_namespace("ing", {})
        from pyiceberg.partitioning import PartitionSpec
        from pyiceberg.table.sorting import SortOrder

        await a.catalog.create_table("ing", "t", SCHEMA, PartitionSpec(), SortOrder(), {})
        # both replicas receive every request of one writer (a client retrying elsewhere)
        batches = [(i * 20, rows(i * 20, 20)) for i in range(15)]
        for offset, data in batches:
            await asyncio.gather(
                a.ingest.write("ing", "t", data, writer_id="dup", offset=offset),
                b.ingest.write("ing", "t", data, writer_id="dup", offset=offset),
            )
        assert table_ids(backend) == list(range(300))
        # and plain concurrent appends from both never lose a commit
        await asyncio.gather(
            *(a.ingest.write("ing", "t", rows(1000 + i * 5, 5)) for i in range(10)),
            *(b.ingest.write("ing", "t", rows(2000 + i * 5, 5)) for i in range(10)),
        )
        ids = table_ids(backend)
        assert len(ids) == 400
        assert len(set(ids)) == 400
    finally:
        await a.close()
        await b.close()


# -- request ids past snapshot expiry -----------------------------------------------------------


@pytest.fixture
def ledger(backend: Any) -> Iterator[RequestIdStore]:
    """The request-id ledger in the job store's database, as the server sets it up."""
    store = JobStore(backend.jobs_database_uri)
    store.migrate()
    yield RequestIdStore(store)
    store.close()


@pytest.fixture
def down_ledger() -> Iterator[RequestIdStore]:
    """A ledger whose database does not answer (nothing listens on its port)."""
    store = JobStore(f"postgresql+psycopg2://u:p@{LOOPBACK}:{free_port()}/db")
    yield RequestIdStore(store)
    store.close()


async def started(settings: Any, ledger: RequestIdStore | None) -> Replica:
    r = Replica(settings, ledger)
    await r.catalog.create_namespace("ing", {})
    from pyiceberg.partitioning import PartitionSpec
    from pyiceberg.table.sorting import SortOrder

    await r.catalog.create_table("ing", "t", SCHEMA, PartitionSpec(), SortOrder(), {})
    return r


def expire_to_newest(settings: Any, ledger: RequestIdStore | None) -> int:
    """Expires every snapshot but the current one; returns how many were expired."""
    table = direct_catalog(settings).load_table(("ing", "t"))
    window_ms = int(settings.ingest.request_id_window_seconds * 1000)
    result = expire_snapshots(
        table, older_than_ms=None, retain_last=1, request_ids=ledger, request_id_window_ms=window_ms
    )
    return len(result.snapshots_expired)


async def test_a_request_id_outlives_the_expiry_of_its_snapshot(
    backend: Any, ledger: RequestIdStore
) -> None:
    r = await started(backend, ledger)
    try:
        first = await r.ingest.write("ing", "t", rows(0, 4), request_id="req-1")
        await r.ingest.write("ing", "t", rows(10, 2), request_id="req-2")
        for i in range(3):
            await r.ingest.write("ing", "t", rows(100 + i, 1))
        # Expired by something that does not copy ids (an older release, another tool): the
        # record made right after each commit is what remembers them.
        assert expire_to_newest(backend, None) == 4
        assert snapshot_count(backend) == 1

        again = await r.ingest.write("ing", "t", rows(0, 4), request_id="req-1")
        both = await asyncio.gather(
            r.ingest.write("ing", "t", rows(10, 2), request_id="req-2"),
            r.ingest.write("ing", "t", rows(50, 1), request_id="req-3"),
        )

        assert (again.already_written, again.rows_written) == (True, first.rows_written)
        assert [(b.already_written, b.rows_written) for b in both] == [(True, 2), (False, 1)]
        assert table_ids(backend) == [0, 1, 2, 3, 10, 11, 50, 100, 101, 102]
    finally:
        await r.close()


async def test_an_unrecorded_id_is_acked_then_copied_by_expiry(
    backend: Any, ledger: RequestIdStore, down_ledger: RequestIdStore
) -> None:
    from lakehouse import metrics

    unrecorded = metrics.REQUEST_IDS_UNRECORDED._value.get()
    r = await started(backend, down_ledger)
    try:
        one = await r.ingest.write("ing", "t", rows(0, 3), request_id="req-1")
        two = await r.ingest.write("ing", "t", rows(0, 3), request_id="req-1")
        assert (one.already_written, two.already_written) == (False, True)  # by the summary
        assert metrics.REQUEST_IDS_UNRECORDED._value.get() == unrecorded + 1
        await r.ingest.write("ing", "t", rows(10, 1))

        with pytest.raises(Unavailable):  # it cannot copy the ids: it expires nothing
            expire_to_newest(backend, down_ledger)
        assert snapshot_count(backend) == 2

        assert expire_to_newest(backend, ledger) == 1  # the copy covers the missed record
    finally:
        await r.close()
    r = Replica(backend, ledger)
    try:
        three = await r.ingest.write("ing", "t", rows(0, 3), request_id="req-1")
        assert (three.already_written, three.rows_written) == (True, 3)
        assert table_ids(backend) == [0, 1, 2, 10]
    finally:
        await r.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_id_that_cannot_be_checked_is_unavailable_not_written_twice(
    backend: Any, down_ledger: RequestIdStore
) -> None:
    r = await started(backend, down_ledger)
    try:
        await r.ingest.write("ing", "t", rows(0, 3), request_id="req-1")
        await r.ingest.write("ing", "t", rows(10, 1))
        # With the whole window retained the summaries decide, and the ledger is not asked.
        fresh = await r.ingest.write("ing", "t", rows(20, 1), request_id="req-2")
        assert not fresh.already_written
        expire_to_newest(backend, None)  # the lineage is now cut inside the window

        with pytest.raises(Unavailable) as err:
            await r.ingest.write("ing", "t", rows(0, 3), request_id="req-1")
        plain = await r.ingest.write("ing", "t", rows(30, 1))  # no id: nothing to check

        assert err.value.reason == "REQUEST_ID_STORE_UNAVAILABLE"
        assert not plain.already_written
        assert table_ids(backend) == [0, 1, 2, 10, 20, 30]
    finally:
        await r.close()


async def test_ids_older_than_the_window_are_pruned_and_written_again(backend: Any) -> None:
    from lakehouse.adapters.object_store import object_store_for
    from lakehouse.core.maintenance_scheduler import MaintenanceScheduler
    from lakehouse.server.job_runtime import JobRuntime

    settings = backend.model_copy(
        update={"ingest": backend.ingest.model_copy(update={"request_id_window_seconds": 1.0})}
    )
    pool = BlockingPool(2)
    runtime = JobRuntime(
        settings,
        IcebergCatalog(settings, pool),
        object_store_for(settings.warehouse, settings.s3),
        pool,
        slots=0,
        scheduler=False,
    )
    await pool.run(runtime.store.migrate)
    ledger = runtime.request_ids
    r = await started(settings, ledger)
    try:
        await r.ingest.write("ing", "t", rows(0, 2), request_id="req-1")
        await r.ingest.write("ing", "t", rows(10, 1))
        expire_to_newest(settings, ledger)
        table_uuid = str(direct_catalog(settings).load_table(("ing", "t")).metadata.table_uuid)
        assert list(ledger.find(table_uuid, ["req-1"], since_ms=0)) == ["req-1"]
        await asyncio.sleep(1.2)  # past the window

        scheduler = MaintenanceScheduler(
            r.catalog,
            runtime.jobs,
            runtime.store,
            pool,
            interval_seconds=0,
            request_ids=ledger,
            request_id_window_seconds=1.0,
        )
        await scheduler.run_once()
        assert ledger.find(table_uuid, ["req-1"], since_ms=0) == {}

        again = await r.ingest.write("ing", "t", rows(0, 2), request_id="req-1")
        assert not again.already_written
        assert table_ids(settings) == [0, 0, 1, 1, 10]
    finally:
        await r.close()
        await runtime.stop(1)
        pool.close()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_an_id_rolled_back_with_its_rows_is_written_again_after_expiry(
    backend: Any, ledger: RequestIdStore
) -> None:
    r = await started(backend, ledger)
    try:
        await r.ingest.write("ing", "t", rows(0, 1))
        base = direct_catalog(backend).load_table(("ing", "t"))
        base_id = base.metadata.current_snapshot_id
        assert base_id is not None
        await r.ingest.write("ing", "t", rows(10, 2), request_id="req-1")
        base.refresh().manage_snapshots().rollback_to_snapshot(base_id).commit()
        await r.ingest.write("ing", "t", rows(20, 1))
        assert expire_to_newest(backend, ledger) == 2  # the base and the rolled-back one

        again = await r.ingest.write("ing", "t", rows(10, 2), request_id="req-1")

        assert not again.already_written
        assert table_ids(backend) == [0, 10, 11, 20]
    finally:
        await r.close()


async def test_ingest_commits_merge_manifests_once_a_table_has_enough(
    replica: Replica, backend: Any
) -> None:
    """Each commit adds a manifest: past ``commit.manifest.min-count-to-merge`` they are merged
    into one, so the manifest list stays short; every row is still there once, and every
    commit is an append (a change feed reads it as inserts)."""
    table = direct_catalog(backend).load_table(("ing", "t"))
    with table.transaction() as tx:
        tx.set_properties({"commit.manifest.min-count-to-merge": "3"})
    for i in range(8):
        await replica.ingest.write("ing", "t", rows(i * 10, 2))
    table = table.refresh()
    assert len(table.snapshots()) == 8
    assert all(
        s.summary is not None and s.summary.operation.value == "append" for s in table.snapshots()
    )
    assert len(table.current_snapshot().manifests(table.io)) < 3
    assert table_ids(backend) == sorted(i * 10 + k for i in range(8) for k in range(2))
    # The change log of every commit, merging ones included, is its own two rows inserted.
    from pyiceberg.expressions import AlwaysTrue

    from lakehouse.adapters.iceberg.changes_scan import changelog_batches

    for i, snapshot in enumerate(table.snapshots()):
        log = pa.Table.from_batches(
            list(changelog_batches(table, [snapshot], AlwaysTrue(), table.schema()))
        )
        assert sorted(log.column("id").to_pylist()) == [i * 10, i * 10 + 1]
