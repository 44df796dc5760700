"""Shared table revalidations never answer a call with metadata older than the call.

Calls for one table share the catalog query that revalidates the cached metadata; one that
comes in while a query is under way must not take that query's answer, which may predate a
commit the caller saw acknowledged on another replica. The first query is held (after it read
the location) so that the commit lands in between, deterministically.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder
from pyiceberg.types import LongType, NestedField
from sqlalchemy import make_url

from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings
from lakehouse.domain.changes import SetProperties
from lakehouse.domain.errors import NotFound
from lakehouse.domain.tables import TableInfo

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)
WAIT_SECONDS = 10.0


@pytest_asyncio.fixture
async def replicas(backend: Settings) -> AsyncIterator[tuple[IcebergCatalog, IcebergCatalog]]:
    """Two catalogs on one backend, as two replicas of the service."""
    pools = [BlockingPool(4), BlockingPool(4)]
    catalogs = (IcebergCatalog(backend, pools[0]), IcebergCatalog(backend, pools[1]))
    try:
        yield catalogs
    finally:
        for catalog in catalogs:
            await catalog.close()
        for pool in pools:
            pool.close()


async def cached_table(writer: IcebergCatalog, reader: IcebergCatalog) -> TableInfo:
    """``ns.t``, created by ``writer`` and in ``reader``'s cache."""
    await writer.create_namespace("ns", {})
    schema = Schema(NestedField(1, "id", LongType(), required=True))
    created = await writer.create_table("ns", "t", schema, PartitionSpec(), SortOrder(), {})
    assert (await reader.load_table("ns", "t")).metadata_location == created.metadata_location
    return created


async def test_a_call_after_an_acknowledged_commit_sees_it_while_an_older_query_runs(
    replicas: tuple[IcebergCatalog, IcebergCatalog], monkeypatch: Any
) -> None:
    writer, reader = replicas
    before = await cached_table(writer, reader)
    monkeypatch.setattr(reader, "_loop_locations", None)  # the pool's path, as on PostgreSQL

    location_read, release = threading.Event(), threading.Event()
    query = reader._current_location

    def held_once(*args: Any) -> str | None:
        location = query(*args)
        if not location_read.is_set():
            location_read.set()
            release.wait(WAIT_SECONDS)
        return location

    monkeypatch.setattr(reader, "_current_location", held_once)
    first = asyncio.ensure_future(reader.load_table("ns", "t"))
    assert await asyncio.to_thread(location_read.wait, WAIT_SECONDS)
    # committed and acknowledged on the other replica after the first query read the location
    after = await writer.update_table("ns", "t", [SetProperties({"user.k": "v"})], "")
    second = asyncio.ensure_future(reader.load_table("ns", "t"))
    await asyncio.sleep(0.05)  # the second call is waiting by now, behind the held query
    release.set()

    assert (await asyncio.wait_for(first, WAIT_SECONDS)).metadata_location in {
        before.metadata_location,
        after.metadata_location,
    }  # it began before the commit: either answer is right
    seen = await asyncio.wait_for(second, WAIT_SECONDS)
    assert seen.metadata_location == after.metadata_location
    assert seen.properties["user.k"] == "v"


async def test_calls_that_arrive_together_share_one_query_after_the_running_one(
    replicas: tuple[IcebergCatalog, IcebergCatalog], monkeypatch: Any
) -> None:
    await cached_table(*replicas)
    reader = replicas[1]
    monkeypatch.setattr(reader, "_loop_locations", None)  # the pool's path, as on PostgreSQL

    started, release = threading.Event(), threading.Event()
    queries = 0
    query = reader._current_location

    def counted(*args: Any) -> str | None:
        nonlocal queries
        queries += 1
        if queries == 1:
            started.set()
            release.wait(WAIT_SECONDS)
        return query(*args)

    monkeypatch.setattr(reader, "_current_location", counted)
    first = asyncio.ensure_future(reader.load_table("ns", "t"))
    assert await asyncio.to_thread(started.wait, WAIT_SECONDS)
    later = [asyncio.ensure_future(reader.load_table("ns", "t")) for _ in range(20)]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), WAIT_SECONDS)
    assert queries == 2  # 21 calls: the one under way, and one for the twenty behind it


# -- SQLite: revalidated on the event loop -------------------------------------------------------


def pool_queries(catalog: IcebergCatalog, monkeypatch: Any) -> list[tuple[str, str]]:
    """The tables revalidated through the pool from now on (the list grows as they are)."""
    seen: list[tuple[str, str]] = []
    query = catalog._current_location

    def counted(c: Any, namespace: str, name: str) -> str | None:
        seen.append((namespace, name))
        return query(c, namespace, name)

    monkeypatch.setattr(catalog, "_current_location", counted)
    return seen


async def test_sqlite_revalidates_on_the_loop_and_sees_another_replicas_commit_at_once(
    replicas: tuple[IcebergCatalog, IcebergCatalog], monkeypatch: Any
) -> None:
    writer, reader = replicas
    before = await cached_table(writer, reader)
    queries = pool_queries(reader, monkeypatch)

    for _ in range(3):
        assert (await reader.load_table("ns", "t")).metadata_location == before.metadata_location
    assert queries == []  # unchanged: answered on the loop, no thread hop

    after = await writer.update_table("ns", "t", [SetProperties({"user.k": "v"})], "")
    seen = await reader.load_table("ns", "t")

    assert seen.metadata_location == after.metadata_location
    assert seen.properties["user.k"] == "v"
    assert queries == [("ns", "t")]  # changed: loaded the usual way
    await writer.drop_table("ns", "t")
    with pytest.raises(NotFound):
        await reader.load_table("ns", "t")


async def test_a_locked_sqlite_catalog_is_waited_for_in_the_pool_not_on_the_loop(
    replicas: tuple[IcebergCatalog, IcebergCatalog], backend: Settings, monkeypatch: Any
) -> None:
    writer, reader = replicas
    before = await cached_table(writer, reader)
    queries = pool_queries(reader, monkeypatch)
    # pyiceberg's own file is in rollback-journal mode here (no job store switched it to WAL):
    # a writer's exclusive lock keeps every reader out.
    database = make_url(backend.catalog_uri).database
    assert database is not None
    locker = sqlite3.connect(database, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        loading = asyncio.ensure_future(reader.load_table("ns", "t"))

        async def sent_to_the_pool() -> None:
            while not queries:  # the loop runs on meanwhile: nothing waits on it
                await asyncio.sleep(0.01)

        await asyncio.wait_for(sent_to_the_pool(), WAIT_SECONDS)
        assert not loading.done()  # where it waits for the lock
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert (await asyncio.wait_for(loading, WAIT_SECONDS)).metadata_location == (
        before.metadata_location
    )
    assert (await reader.load_table("ns", "t")).metadata_location == before.metadata_location
    assert queries == [("ns", "t")]  # unlocked: on the loop again
    assert reader._loop_locations is not None
    connection = reader._loop_locations._connection
    assert connection is not None
    assert connection.execute("PRAGMA busy_timeout").fetchone() == (0,)
    assert connection.execute("PRAGMA query_only").fetchone() == (1,)
