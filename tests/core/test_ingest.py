"""Ingest core on a real catalog: group commit, exactly-once offsets, request ids, replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa
import pytest
import pytest_asyncio
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType

from fixtures.iceberg import direct_catalog
from lakehouse.adapters.blocking import BlockingPool
from lakehouse.adapters.iceberg import IcebergCatalog
from lakehouse.core.ingest import Ingest
from lakehouse.errors import InvalidArgument, NotFound, OutOfRange

SCHEMA = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "v", StringType()))
ARROW = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.string())])


def rows(start: int, count: int) -> pa.Table:
    return pa.table(
        {"id": list(range(start, start + count)), "v": [f"r{i}" for i in range(count)]},
        schema=ARROW,
    )


class Replica:
    """One process's worth of ingest machinery on a shared catalog."""

    def __init__(self, settings: Any) -> None:
        self.pool = BlockingPool(4)
        self.catalog = IcebergCatalog(settings, self.pool)
        self.ingest = Ingest(self.catalog, settings.ingest)

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
