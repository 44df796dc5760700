"""CatalogPort: one behaviour suite, run on every real implementation.

The pattern of pyiceberg's ``tests/catalog/test_catalog_behaviors.py``: the tests are written
against the port only, and the ``catalog`` fixture gives each real backend in turn through the
shared ``backend`` settings: ``[local]`` is ``IcebergCatalog`` over a SQLite catalog and a
warehouse folder under tmp_path, ``[postgres_s3]`` the same class over a fresh PostgreSQL
database and an ``s3://`` warehouse in a fresh moto bucket. ``open_catalog`` opens another
catalog on the same backend, as another replica of the service would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pyarrow as pa
import pytest
import pytest_asyncio
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import DataScan
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import LongType, NestedField, StringType

from fixtures.memory_ledger import MemoryLedger
from fixtures.ports import protocol_mismatches
from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.iceberg.session_plans import PlanCache
from lakehouse.blocking import BlockingPool
from lakehouse.core.ports import CatalogPort
from lakehouse.domain.changes import AddColumn, DropColumn, SetProperties, TableChange
from lakehouse.domain.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    LakehouseError,
    NotFound,
)
from lakehouse.domain.ingest import WRITERS_SUMMARY_KEY, AppendPlan, IngestState
from lakehouse.domain.read_sessions import StreamShare
from lakehouse.domain.refs import RefKind
from lakehouse.domain.tables import OpenScan, ScanRequest, TableInfo

IMPLEMENTATIONS = [IcebergCatalog]

SCHEMA = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "v", StringType()))
ARROW = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.string())])
WINDOW_MS = 60 * 60 * 1000
#: ``id == 4``. pyiceberg's predicate classes take (term, literal) at run time, which their
#: pydantic-style signatures do not tell mypy.
ID_IS_4: BooleanExpression = EqualTo("id", 4)  # type: ignore[call-arg, arg-type]  # the request-id window: an hour

#: Opens one more catalog on the test's backend (another replica); closed after the test.
OpenCatalog = Callable[[], CatalogPort]


@pytest_asyncio.fixture
async def open_catalog(backend: Any) -> AsyncIterator[OpenCatalog]:
    opened: list[tuple[IcebergCatalog, BlockingPool]] = []

    def open_one() -> CatalogPort:
        pool = BlockingPool(4)
        catalog = IcebergCatalog(backend, pool)
        opened.append((catalog, pool))
        return catalog

    try:
        yield open_one
    finally:
        for catalog, pool in opened:
            await catalog.close()
            pool.close()


@pytest.fixture
def catalog(open_catalog: OpenCatalog) -> CatalogPort:
    return open_catalog()


@pytest_asyncio.fixture
async def table(catalog: CatalogPort) -> TableInfo:
    """``ns.t``: an empty, unpartitioned table with SCHEMA."""
    await catalog.create_namespace("ns", {})
    return await create(catalog, "ns", "t")


async def create(catalog: CatalogPort, namespace: str, name: str, **props: str) -> TableInfo:
    return await catalog.create_table(namespace, name, SCHEMA, PartitionSpec(), SortOrder(), props)


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({"id": ids, "v": [f"r{i}" for i in ids]}, schema=ARROW)


def now_ms() -> int:
    return int(time.time() * 1000)


class Writer:
    """A caller of planned_append: one writer with offsets, as ingest plans its commits.

    ``plan`` appends the rows after the writer's committed offset, so however often it is
    called (once per attempt) the table gets each offset exactly once.
    """

    def __init__(self, writer_id: str = "w1") -> None:
        self.writer_id = writer_id
        self.states: list[IngestState] = []

    def plan_upto(self, end: int, request_ids: dict[str, int] | None = None) -> Any:
        def plan(state: IngestState) -> AppendPlan:
            self.states.append(state)
            start = state.writers.get(self.writer_id, (0, 0))[0]
            if start >= end:
                return AppendPlan(None)
            return AppendPlan(
                rows(start, end - start),
                writers={**state.writers, self.writer_id: (end, now_ms())},
                commit_writers=[self.writer_id],
                request_ids=dict(request_ids or {}),
            )

        return plan


async def append(
    catalog: CatalogPort, end: int, writer: Writer | None = None, namespace: str = "ns"
) -> int:
    """Appends rows up to offset ``end`` of ``writer`` to ``ns.t``; returns the snapshot id."""
    outcome = await catalog.planned_append(
        namespace,
        "t",
        (writer or Writer()).plan_upto(end),
        request_id_window_ms=WINDOW_MS,
        max_attempts=5,
    )
    assert outcome.snapshot_id is not None
    return outcome.snapshot_id


def scan_request(
    *,
    columns: tuple[str, ...] = (),
    row_filter: BooleanExpression | None = None,
    snapshot_id: int | None = None,
    as_of_ms: int | None = None,
    limit: int | None = None,
) -> ScanRequest:
    return ScanRequest(columns, row_filter or AlwaysTrue(), snapshot_id, as_of_ms, limit)


async def read_all(catalog: CatalogPort, scan: OpenScan) -> pa.Table:
    batches = []
    try:
        while (batch := await catalog.next_batch(scan)) is not None:
            batches.append(batch)
    finally:
        await catalog.close_scan(scan)
    return pa.Table.from_batches(batches, schema=scan.schema)


async def read_ids(catalog: CatalogPort, request: ScanRequest | None = None) -> list[int]:
    scan = await catalog.open_scan("ns", "t", request or scan_request())
    ids: list[int] = (await read_all(catalog, scan)).column("id").to_pylist()
    return sorted(ids)


async def raises(error: type[LakehouseError], reason: str, call: Awaitable[Any]) -> LakehouseError:
    with pytest.raises(error) as err:
        await call
    assert err.value.reason == reason, err.value
    return err.value


# -- conformance -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_the_implementation_has_every_method_of_the_port(cls: type) -> None:
    assert protocol_mismatches(CatalogPort, cls) == []


def _statically_conforms(catalog: IcebergCatalog) -> CatalogPort:
    """Never called: mypy checks that the implementation is assignable to the port."""
    return catalog


# -- namespaces --------------------------------------------------------------------------------


async def test_create_load_list_and_drop_a_namespace(catalog: CatalogPort) -> None:
    assert await catalog.create_namespace("sales", {"owner": "ana"}) == {"owner": "ana"}
    await catalog.create_namespace("ops", {})

    assert await catalog.namespace_properties("sales") == {"owner": "ana"}
    assert await catalog.namespace_properties("ops") == {}
    assert sorted(await catalog.list_namespaces()) == ["ops", "sales"]
    assert await catalog.namespaces_with_properties(["sales", "ops"]) == [
        ("sales", {"owner": "ana"}),
        ("ops", {}),
    ]

    await catalog.drop_namespace("ops")
    assert await catalog.list_namespaces() == ["sales"]
    await raises(NotFound, "NAMESPACE_NOT_FOUND", catalog.namespace_properties("ops"))


async def test_a_namespace_name_is_taken_once(catalog: CatalogPort) -> None:
    await catalog.create_namespace("sales", {"owner": "ana"})
    await raises(
        AlreadyExists, "NAMESPACE_ALREADY_EXISTS", catalog.create_namespace("sales", {"x": "y"})
    )
    assert await catalog.namespace_properties("sales") == {"owner": "ana"}  # unchanged


async def test_missing_namespaces_are_not_found(catalog: CatalogPort) -> None:
    for call in (
        catalog.namespace_properties("nope"),
        catalog.drop_namespace("nope"),
        catalog.list_tables("nope"),
        catalog.update_namespace_properties("nope", set(), {"a": "b"}),
        create(catalog, "nope", "t"),
    ):
        await raises(NotFound, "NAMESPACE_NOT_FOUND", call)
    assert await catalog.list_namespaces() == []  # creating a table made no namespace


async def test_update_namespace_properties_reports_what_changed(catalog: CatalogPort) -> None:
    await catalog.create_namespace("sales", {"owner": "ana", "tier": "gold"})

    props, updated, removed, missing = await catalog.update_namespace_properties(
        "sales", {"tier", "never-set"}, {"owner": "bo", "team": "x"}
    )

    assert props == {"owner": "bo", "team": "x"}
    assert sorted(updated) == ["owner", "team"]
    assert (removed, missing) == (["tier"], ["never-set"])
    assert await catalog.namespace_properties("sales") == props


async def test_the_location_property_is_for_operators_only(catalog: CatalogPort) -> None:
    with pytest.raises(InvalidArgument) as err:
        await catalog.create_namespace("sales", {"location": "file:///elsewhere"})
    assert err.value.reason == "INVALID_PROPERTY"
    assert await catalog.list_namespaces() == []


async def test_a_namespace_with_tables_cannot_be_dropped(
    table: TableInfo, catalog: CatalogPort
) -> None:
    await raises(FailedPrecondition, "NAMESPACE_NOT_EMPTY", catalog.drop_namespace("ns"))
    await catalog.drop_table("ns", "t")
    await catalog.drop_namespace("ns")
    assert await catalog.list_namespaces() == []


# -- tables: create, load, list, rename, drop, register --------------------------------------


async def test_create_then_load_a_table(catalog: CatalogPort) -> None:
    await catalog.create_namespace("ns", {})
    created = await create(catalog, "ns", "t", owner="ana")

    assert (created.namespace, created.name) == ("ns", "t")
    assert created.schema.as_struct() == SCHEMA.as_struct()
    assert created.properties["owner"] == "ana"
    assert created.current_snapshot_id is None
    assert created.stats.row_count == 0 and created.stats.snapshot_count == 0
    assert created.format_version == 2
    assert created.uuid and created.metadata_location.startswith(created.location)
    assert catalog.owns_location(created.location)

    loaded = await catalog.load_table("ns", "t")
    assert (loaded.uuid, loaded.metadata_location) == (created.uuid, created.metadata_location)
    assert loaded.schema.as_struct() == SCHEMA.as_struct()
    assert await catalog.list_tables("ns") == ["t"]


async def test_a_table_keeps_its_partition_spec_sort_order_and_properties(
    catalog: CatalogPort,
) -> None:
    await catalog.create_namespace("ns", {})
    spec = PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="v")
    )
    order = SortOrder(SortField(source_id=1, transform=IdentityTransform()))

    await catalog.create_table("ns", "p", SCHEMA, spec, order, {"owner": "ana"})
    loaded = await catalog.load_table("ns", "p")

    assert [(f.name, str(f.transform)) for f in loaded.partition_spec.fields] == [("v", "identity")]
    (key,) = loaded.sort_order.fields
    assert loaded.schema.find_column_name(key.source_id) == "id"
    assert loaded.properties["owner"] == "ana"


async def test_a_table_name_is_taken_once(table: TableInfo, catalog: CatalogPort) -> None:
    await raises(AlreadyExists, "TABLE_ALREADY_EXISTS", create(catalog, "ns", "t"))
    assert (await catalog.load_table("ns", "t")).uuid == table.uuid


async def test_missing_tables_are_not_found(catalog: CatalogPort) -> None:
    await catalog.create_namespace("ns", {})
    for call in (
        catalog.load_table("ns", "nope"),
        catalog.load_table("ns", "nope", max_age=60),
        catalog.list_snapshots("ns", "nope"),
        catalog.drop_table("ns", "nope"),
        catalog.rename_table("ns", "nope", "ns", "other"),
        catalog.update_table("ns", "nope", [SetProperties({"user.a": "b"})], ""),
        catalog.open_scan("ns", "nope", scan_request()),
        catalog.planned_append(
            "ns", "nope", Writer().plan_upto(1), request_id_window_ms=WINDOW_MS, max_attempts=1
        ),
        catalog.writer_position("ns", "nope", "w1", request_id_window_ms=WINDOW_MS),
        catalog.rollback("ns", "nope", snapshot_id=1, as_of_ms=None, expected_etag=""),
    ):
        await raises(NotFound, "TABLE_NOT_FOUND", call)


async def test_list_tables_of_each_namespace(catalog: CatalogPort) -> None:
    await catalog.create_namespace("a", {})
    await catalog.create_namespace("b", {})
    for name in ("t2", "t1"):
        await create(catalog, "a", name)
    await create(catalog, "b", "t3")

    assert sorted(await catalog.list_tables("a")) == ["t1", "t2"]
    assert await catalog.list_tables("b") == ["t3"]


async def test_rename_moves_the_same_table(table: TableInfo, catalog: CatalogPort) -> None:
    await append(catalog, 3)
    await catalog.create_namespace("other", {})

    renamed = await catalog.rename_table("ns", "t", "other", "t2")

    assert (renamed.namespace, renamed.name, renamed.uuid) == ("other", "t2", table.uuid)
    await raises(NotFound, "TABLE_NOT_FOUND", catalog.load_table("ns", "t"))
    loaded = await catalog.load_table("other", "t2")
    assert (loaded.uuid, loaded.stats.row_count) == (table.uuid, 3)
    assert await catalog.list_tables("ns") == []
    assert await catalog.list_tables("other") == ["t2"]


async def test_rename_refuses_a_taken_name_and_a_missing_namespace(
    table: TableInfo, catalog: CatalogPort
) -> None:
    other = await create(catalog, "ns", "taken")

    err = await raises(
        AlreadyExists, "TABLE_ALREADY_EXISTS", catalog.rename_table("ns", "t", "ns", "taken")
    )
    assert err.metadata == {"namespace": "ns", "table": "taken"}  # names the target
    await raises(NotFound, "NAMESPACE_NOT_FOUND", catalog.rename_table("ns", "t", "nowhere", "t"))
    err = await raises(NotFound, "TABLE_NOT_FOUND", catalog.rename_table("ns", "x", "ns", "y"))
    assert err.metadata == {"namespace": "ns", "table": "x"}  # names the source
    assert (await catalog.load_table("ns", "t")).uuid == table.uuid
    assert (await catalog.load_table("ns", "taken")).uuid == other.uuid


async def test_drop_leaves_the_files_so_the_table_can_be_registered_again(
    table: TableInfo, catalog: CatalogPort
) -> None:
    await append(catalog, 4)
    before = await catalog.load_table("ns", "t")

    await catalog.drop_table("ns", "t")

    await raises(NotFound, "TABLE_NOT_FOUND", catalog.load_table("ns", "t"))
    assert await catalog.list_tables("ns") == []
    registered = await catalog.register_table("ns", "t", before.metadata_location)
    assert (registered.uuid, registered.current_snapshot_id) == (
        table.uuid,
        before.current_snapshot_id,
    )
    assert await read_ids(catalog) == [0, 1, 2, 3]


async def test_register_refuses_a_taken_name(table: TableInfo, catalog: CatalogPort) -> None:
    await create(catalog, "ns", "u")
    await raises(
        AlreadyExists,
        "TABLE_ALREADY_EXISTS",
        catalog.register_table("ns", "u", table.metadata_location),
    )


async def test_register_refuses_what_is_not_table_metadata_in_the_warehouse(
    table: TableInfo, catalog: CatalogPort
) -> None:
    inside = table.location.rstrip("/") + "/metadata/never-written.metadata.json"
    await raises(NotFound, "METADATA_NOT_FOUND", catalog.register_table("ns", "u", inside))
    for outside in ("file:///tmp/elsewhere/v1.metadata.json", "s3://elsewhere/v1.metadata.json"):
        await raises(
            InvalidArgument,
            "LOCATION_OUTSIDE_WAREHOUSE",
            catalog.register_table("ns", "u", outside),
        )
    assert await catalog.list_tables("ns") == ["t"]  # nothing half-registered


async def test_a_cached_load_reflects_the_catalogs_own_commits(
    table: TableInfo, catalog: CatalogPort
) -> None:
    assert (await catalog.load_table("ns", "t", max_age=60)).current_snapshot_id is None
    snapshot_id = await append(catalog, 1)
    updated = await catalog.update_table("ns", "t", [SetProperties({"user.k": "v"})], "")

    cached = await catalog.load_table("ns", "t", max_age=60)

    assert cached.current_snapshot_id == snapshot_id
    assert cached.metadata_location == updated.metadata_location


async def test_a_table_created_again_under_a_dropped_name_is_another_table(
    table: TableInfo, catalog: CatalogPort
) -> None:
    await append(catalog, 2)
    await catalog.drop_table("ns", "t")

    again = await create(catalog, "ns", "t")

    assert again.uuid != table.uuid
    assert again.location != table.location  # the old table's files stay its own
    assert await read_ids(catalog) == []


async def test_another_replica_sees_every_change_at_once(
    table: TableInfo, catalog: CatalogPort, open_catalog: OpenCatalog
) -> None:
    replica = open_catalog()
    assert (await replica.load_table("ns", "t")).current_snapshot_id is None  # now cached

    snapshot_id = await append(catalog, 2)
    assert (await replica.load_table("ns", "t")).current_snapshot_id == snapshot_id
    await catalog.update_table("ns", "t", [SetProperties({"user.k": "v"})], "")
    assert (await replica.load_table("ns", "t")).properties["user.k"] == "v"
    await catalog.drop_table("ns", "t")
    await raises(NotFound, "TABLE_NOT_FOUND", replica.load_table("ns", "t"))


# -- update_table and etags --------------------------------------------------------------------


async def test_update_applies_changes_in_one_commit_and_moves_the_etag(
    table: TableInfo, catalog: CatalogPort
) -> None:
    changes: list[TableChange] = [
        SetProperties({"owner": "ana"}),
        AddColumn(parent="", name="extra", type=StringType(), required=False, doc="more"),
    ]

    updated = await catalog.update_table("ns", "t", changes, table.metadata_location)

    assert updated.properties["owner"] == "ana"
    assert [f.name for f in updated.schema.fields] == ["id", "v", "extra"]
    assert updated.metadata_location != table.metadata_location  # the etag moved
    assert (await catalog.load_table("ns", "t")).metadata_location == updated.metadata_location


async def test_a_stale_etag_is_a_conflict_and_changes_nothing(
    table: TableInfo, catalog: CatalogPort, open_catalog: OpenCatalog
) -> None:
    await open_catalog().update_table("ns", "t", [SetProperties({"user.by": "replica"})], "")
    current = await catalog.load_table("ns", "t")

    await raises(
        Conflict,
        "ETAG_MISMATCH",
        catalog.update_table(
            "ns", "t", [SetProperties({"user.by": "me"})], table.metadata_location
        ),
    )
    assert (await catalog.load_table("ns", "t")).properties["user.by"] == "replica"
    # The current etag works; no etag means no condition.
    done = await catalog.update_table(
        "ns", "t", [SetProperties({"user.by": "me"})], current.metadata_location
    )
    assert done.properties["user.by"] == "me"
    await catalog.update_table("ns", "t", [SetProperties({"user.by": "anyone"})], "")


async def test_an_etag_goes_stale_when_rows_are_appended(
    table: TableInfo, catalog: CatalogPort
) -> None:
    await append(catalog, 1)
    await raises(
        Conflict,
        "ETAG_MISMATCH",
        catalog.update_table("ns", "t", [SetProperties({"user.a": "b"})], table.metadata_location),
    )


async def test_an_incompatible_change_applies_nothing(
    table: TableInfo, catalog: CatalogPort
) -> None:
    changes: list[TableChange] = [SetProperties({"user.a": "b"}), DropColumn("no_such_column")]

    err = await raises(
        InvalidArgument, "INCOMPATIBLE_CHANGE", catalog.update_table("ns", "t", changes, "")
    )

    assert isinstance(err, InvalidArgument)
    assert err.violations[0].field.startswith("changes[1]")
    after = await catalog.load_table("ns", "t")
    assert after.metadata_location == table.metadata_location
    assert "user.a" not in after.properties


# -- planned_append: exactly-once state ------------------------------------------------------


async def test_planned_append_commits_the_plan_and_its_writer_state(
    table: TableInfo, catalog: CatalogPort
) -> None:
    writer = Writer()
    first = await catalog.planned_append(
        "ns", "t", writer.plan_upto(3), request_id_window_ms=WINDOW_MS, max_attempts=3
    )

    assert (first.attempts, first.conflicts) == (1, 0)
    assert first.plan.data is not None and first.plan.data.num_rows == 3
    assert writer.states[0].snapshot_id is None and writer.states[0].writers == {}
    assert first.snapshot_id is not None
    assert (await catalog.load_table("ns", "t")).current_snapshot_id == first.snapshot_id

    second = await catalog.planned_append(
        "ns", "t", writer.plan_upto(5), request_id_window_ms=WINDOW_MS, max_attempts=3
    )
    assert writer.states[1].snapshot_id == first.snapshot_id
    assert writer.states[1].writers["w1"][0] == 3  # the plan sees what was committed
    assert await read_ids(catalog) == [0, 1, 2, 3, 4]

    position = await catalog.writer_position("ns", "t", "w1", request_id_window_ms=WINDOW_MS)
    assert position is not None
    assert position[:2] == (5, second.snapshot_id)
    assert 0 < position[2] <= now_ms()  # when it last committed
    unknown = await catalog.writer_position("ns", "t", "w2", request_id_window_ms=WINDOW_MS)
    assert unknown is None


async def test_a_plan_with_nothing_to_append_commits_nothing(
    table: TableInfo, catalog: CatalogPort
) -> None:
    snapshot_id = await append(catalog, 2)
    writer = Writer()

    outcome = await catalog.planned_append(
        "ns", "t", writer.plan_upto(2), request_id_window_ms=WINDOW_MS, max_attempts=3
    )

    assert outcome.plan.data is None
    assert outcome.snapshot_id == snapshot_id  # the state it planned on
    assert len(await catalog.list_snapshots("ns", "t")) == 1


async def test_request_ids_are_remembered_by_the_table_and_recorded_in_the_ledger(
    table: TableInfo, catalog: CatalogPort
) -> None:
    ledger = MemoryLedger()
    writer = Writer()
    outcome = await catalog.planned_append(
        "ns",
        "t",
        writer.plan_upto(2, request_ids={"req-1": 2}),
        request_id_window_ms=WINDOW_MS,
        max_attempts=3,
        ledger=ledger,
        request_ids=["req-1"],
    )

    assert outcome.unrecorded is None
    (recorded,) = ledger.recorded(table.uuid)
    assert (recorded.request_id, recorded.rows, recorded.snapshot_id) == (
        "req-1",
        2,
        outcome.snapshot_id,
    )
    await catalog.planned_append(
        "ns", "t", writer.plan_upto(3), request_id_window_ms=WINDOW_MS, max_attempts=3
    )
    assert writer.states[-1].request_ids == {"req-1": 2}  # the next plan sees it


async def test_concurrent_replicas_append_each_offset_exactly_once(
    table: TableInfo, open_catalog: OpenCatalog
) -> None:
    replicas = [open_catalog() for _ in range(3)]
    writer = Writer()

    outcomes = await asyncio.gather(
        *(
            r.planned_append(
                "ns", "t", writer.plan_upto(10), request_id_window_ms=WINDOW_MS, max_attempts=10
            )
            for r in replicas
        )
    )

    committed = [o for o in outcomes if o.plan.data is not None]
    assert len(committed) == 1  # the others re-planned on the winner's state: nothing left
    assert all(o.attempts == o.conflicts + 1 for o in outcomes)
    assert await read_ids(replicas[0]) == list(range(10))


async def test_planned_append_gives_up_with_a_conflict_after_max_attempts(
    table: TableInfo, catalog: CatalogPort, open_catalog: OpenCatalog
) -> None:
    replica, other, mine = open_catalog(), Writer("other"), Writer("mine")
    loop = asyncio.get_running_loop()
    planned = 0

    def plan(state: IngestState) -> AppendPlan:
        # Another replica commits while this plan is being made, every time.
        nonlocal planned
        planned += 1
        asyncio.run_coroutine_threadsafe(append(replica, planned, other), loop).result(30)
        decided: AppendPlan = mine.plan_upto(5)(state)
        return decided

    await raises(
        Conflict,
        "COMMIT_CONFLICT",
        catalog.planned_append("ns", "t", plan, request_id_window_ms=WINDOW_MS, max_attempts=2),
    )

    assert planned == 2  # planned again on fresh state after the first conflict
    assert await read_ids(catalog) == [0, 1]  # the other writer's rows; none of mine
    assert await catalog.writer_position("ns", "t", "mine", request_id_window_ms=WINDOW_MS) is None


# -- snapshots and rollback --------------------------------------------------------------------


async def test_list_snapshots_lists_every_commit_with_its_parent(
    table: TableInfo, catalog: CatalogPort
) -> None:
    assert await catalog.list_snapshots("ns", "t") == []
    first = await append(catalog, 2)
    second = await append(catalog, 5)

    snapshots = {s.snapshot_id: s for s in await catalog.list_snapshots("ns", "t")}

    assert set(snapshots) == {first, second}
    assert snapshots[first].parent_snapshot_id is None
    assert snapshots[second].parent_snapshot_id == first
    assert snapshots[second].timestamp_ms >= snapshots[first].timestamp_ms
    assert snapshots[second].sequence_number > snapshots[first].sequence_number
    assert {s.operation for s in snapshots.values()} == {"append"}
    assert snapshots[second].summary["added-records"] == "3"
    info = await catalog.load_table("ns", "t")
    assert (info.current_snapshot_id, info.stats.row_count, info.stats.snapshot_count) == (
        second,
        5,
        2,
    )


async def test_current_snapshot_is_the_head_of_a_branch(
    table: TableInfo, catalog: CatalogPort
) -> None:
    assert await catalog.current_snapshot("ns", "t") is None
    first = await append(catalog, 2)
    await catalog.create_ref("ns", "t", "audit", RefKind.BRANCH, first)
    await catalog.create_ref("ns", "t", "v1", RefKind.TAG, first)
    before = now_ms()
    second = await append(catalog, 5)

    head = await catalog.current_snapshot("ns", "t")

    assert head is not None
    assert (head.snapshot_id, head.parent_snapshot_id) == (second, first)
    assert before - 1000 <= head.timestamp_ms <= now_ms()
    assert head.summary["added-records"] == "3"
    assert WRITERS_SUMMARY_KEY in head.summary  # what the scheduler looks for
    assert head == {s.snapshot_id: s for s in await catalog.list_snapshots("ns", "t")}[second]
    audit = await catalog.current_snapshot("ns", "t", "audit")
    assert audit is not None and audit.snapshot_id == first
    await raises(NotFound, "REF_NOT_FOUND", catalog.current_snapshot("ns", "t", "nope"))
    await raises(FailedPrecondition, "NOT_A_BRANCH", catalog.current_snapshot("ns", "t", "v1"))
    await raises(NotFound, "TABLE_NOT_FOUND", catalog.current_snapshot("ns", "missing"))


async def test_rollback_to_a_snapshot_by_id_and_as_of_a_time(
    table: TableInfo, catalog: CatalogPort
) -> None:
    first = await append(catalog, 2)
    second = await append(catalog, 4)
    await append(catalog, 6)
    by_id = {s.snapshot_id: s for s in await catalog.list_snapshots("ns", "t")}

    # As of a time: the newest ancestor committed at that instant or before.
    back = await catalog.rollback(
        "ns", "t", snapshot_id=None, as_of_ms=by_id[second].timestamp_ms, expected_etag=""
    )
    assert back.current_snapshot_id == second
    assert await read_ids(catalog) == [0, 1, 2, 3]

    etag = back.metadata_location
    again = await catalog.rollback("ns", "t", snapshot_id=first, as_of_ms=None, expected_etag=etag)
    assert again.current_snapshot_id == first
    assert await read_ids(catalog) == [0, 1]
    # Rolled back, not forgotten: every snapshot is still listed.
    assert len(await catalog.list_snapshots("ns", "t")) == 3


async def test_rollback_errors(table: TableInfo, catalog: CatalogPort) -> None:
    first = await append(catalog, 2)
    etag = (await catalog.load_table("ns", "t")).metadata_location
    await append(catalog, 3)
    snapshots = {s.snapshot_id: s for s in await catalog.list_snapshots("ns", "t")}
    before_first = snapshots[first].timestamp_ms - 1

    await raises(
        NotFound,
        "SNAPSHOT_NOT_FOUND",
        catalog.rollback("ns", "t", snapshot_id=12345, as_of_ms=None, expected_etag=""),
    )
    await raises(
        NotFound,
        "SNAPSHOT_NOT_FOUND",
        catalog.rollback(
            "ns",
            "t",
            snapshot_id=None,
            as_of_ms=before_first,
            expected_etag="",
        ),
    )
    await raises(
        Conflict,
        "ETAG_MISMATCH",
        catalog.rollback("ns", "t", snapshot_id=first, as_of_ms=None, expected_etag=etag),
    )
    assert (await catalog.load_table("ns", "t")).stats.row_count == 3  # nothing moved


async def test_rollback_only_to_an_ancestor(table: TableInfo, catalog: CatalogPort) -> None:
    first = await append(catalog, 1)
    second = await append(catalog, 2)
    await catalog.rollback("ns", "t", snapshot_id=first, as_of_ms=None, expected_etag="")

    with pytest.raises(InvalidArgument) as err:
        await catalog.rollback("ns", "t", snapshot_id=second, as_of_ms=None, expected_etag="")

    assert err.value.violations[0].field == "snapshot_id"
    assert (await catalog.load_table("ns", "t")).current_snapshot_id == first


# -- scans -------------------------------------------------------------------------------------


async def test_a_scan_of_an_empty_table_has_a_schema_and_no_rows(
    table: TableInfo, catalog: CatalogPort
) -> None:
    scan = await catalog.open_scan("ns", "t", scan_request())

    assert scan.snapshot_id is None
    assert scan.schema.names == ["id", "v"]
    assert await catalog.next_batch(scan) is None
    await catalog.close_scan(scan)


async def test_open_scan_next_batch_close_scan_round_trip(
    table: TableInfo, catalog: CatalogPort
) -> None:
    await append(catalog, 3)
    current = await append(catalog, 6)

    scan = await catalog.open_scan("ns", "t", scan_request())
    assert scan.snapshot_id == current
    read = await read_all(catalog, scan)

    assert sorted(read.column("id").to_pylist()) == list(range(6))
    assert read.schema.names == ["id", "v"]
    assert sorted(read.column("v").to_pylist()) == sorted(f"r{i}" for i in range(6))


async def test_an_open_scan_is_read_and_closed_on_a_thread_of_its_own(
    table: TableInfo, catalog: CatalogPort
) -> None:
    """The blocking pair (next_batch_sync, close_scan_sync), as a transport thread uses it
    (Flight's do_get): the same rows as next_batch, then nothing once closed, twice."""
    await append(catalog, 3)
    await append(catalog, 6)
    scan = await catalog.open_scan("ns", "t", scan_request())

    def read_on_thread() -> pa.Table:
        batches = []
        while (batch := catalog.next_batch_sync(scan)) is not None:
            batches.append(batch)
        catalog.close_scan_sync(scan)
        assert catalog.next_batch_sync(scan) is None
        catalog.close_scan_sync(scan)  # closing twice is harmless
        return pa.Table.from_batches(batches, schema=scan.schema)

    read = await asyncio.to_thread(read_on_thread)
    assert sorted(read.column("id").to_pylist()) == list(range(6))
    assert sorted(read.column("v").to_pylist()) == sorted(f"r{i}" for i in range(6))


async def test_scans_project_filter_limit_and_travel_in_time(
    table: TableInfo, catalog: CatalogPort
) -> None:
    first = await append(catalog, 3)
    await append(catalog, 6)
    first_ms = {s.snapshot_id: s for s in await catalog.list_snapshots("ns", "t")}[
        first
    ].timestamp_ms

    projected = await catalog.open_scan("ns", "t", scan_request(columns=("v",)))
    assert (await read_all(catalog, projected)).schema.names == ["v"]
    assert await read_ids(catalog, scan_request(row_filter=ID_IS_4)) == [4]
    # The limit is a hint the reader may apply per data file: the caller (core) trims the
    # rest, and relies on getting at least the rows it asked for, from the table.
    limited = await catalog.open_scan("ns", "t", scan_request(limit=2))
    limited_ids = (await read_all(catalog, limited)).column("id").to_pylist()
    assert 2 <= len(limited_ids) <= 6 and set(limited_ids) <= set(range(6))
    assert await read_ids(catalog, scan_request(snapshot_id=first)) == [0, 1, 2]
    old = await catalog.open_scan("ns", "t", scan_request(as_of_ms=first_ms))
    assert old.snapshot_id == first
    assert (await read_all(catalog, old)).num_rows == 3


async def test_scan_errors(table: TableInfo, catalog: CatalogPort) -> None:
    first = await append(catalog, 1)
    first_ms = (await catalog.list_snapshots("ns", "t"))[0].timestamp_ms
    await raises(
        NotFound, "SNAPSHOT_NOT_FOUND", catalog.open_scan("ns", "t", scan_request(snapshot_id=7))
    )
    await raises(
        NotFound,
        "SNAPSHOT_NOT_FOUND",
        catalog.open_scan("ns", "t", scan_request(as_of_ms=first_ms - 1)),
    )
    with pytest.raises(InvalidArgument):
        await catalog.open_scan("ns", "t", scan_request(columns=("no_such_column",)))
    assert await read_ids(catalog, scan_request(snapshot_id=first)) == [0]


async def test_a_closed_scan_yields_nothing_more(table: TableInfo, catalog: CatalogPort) -> None:
    await append(catalog, 3)
    scan = await catalog.open_scan("ns", "t", scan_request())

    await catalog.close_scan(scan)

    assert await catalog.next_batch(scan) is None
    await catalog.close_scan(scan)  # closing twice is harmless


async def test_an_open_scan_keeps_reading_the_snapshot_it_opened(
    table: TableInfo, catalog: CatalogPort
) -> None:
    first = await append(catalog, 3)
    scan = await catalog.open_scan("ns", "t", scan_request())
    await append(catalog, 6)

    assert scan.snapshot_id == first
    assert (await read_all(catalog, scan)).num_rows == 3


# -- run_on_catalog and owns_location ----------------------------------------------------------


async def test_run_on_catalog_runs_pyiceberg_work_and_translates_its_errors(
    table: TableInfo, catalog: CatalogPort
) -> None:
    pool = BlockingPool(1, name="test-jobs")
    try:

        def names(c: Catalog) -> list[str]:
            return [".".join(i) for i in c.list_tables("ns")]

        assert await catalog.run_on_catalog(names, "ns", pool=pool) == ["ns.t"]
        err = await raises(
            NotFound,
            "TABLE_NOT_FOUND",
            catalog.run_on_catalog(lambda c: c.load_table(("ns", "gone")), "ns", "gone", pool=pool),
        )
        assert err.metadata == {"namespace": "ns", "table": "gone"}
    finally:
        pool.close()


async def test_owns_only_locations_inside_its_warehouse(
    table: TableInfo, catalog: CatalogPort
) -> None:
    assert catalog.owns_location(table.location)
    assert catalog.owns_location(table.location.rstrip("/") + "/data/part-0.parquet")
    for elsewhere in ("file:///etc/passwd", "s3://another-bucket/warehouse/t", "/tmp", ""):
        assert not catalog.owns_location(elsewhere), elsewhere


# -- read sessions -----------------------------------------------------------------------------


async def test_a_read_session_plan_splits_the_pinned_snapshot_into_shares(
    table: TableInfo, catalog: CatalogPort
) -> None:
    empty = await catalog.plan_read_session("ns", "t", scan_request(), 4)
    assert empty.snapshot_id is None and len(empty.streams) == 1
    for end in (2, 4, 6, 8):  # four data files
        pinned = await append(catalog, end)
    plan = await catalog.plan_read_session("ns", "t", scan_request(), 3)
    assert plan.snapshot_id == pinned
    assert plan.schema.names == ["id", "v"]
    assert len(plan.streams) == 3
    assert sum(s.rows for s in plan.streams) == 8
    await append(catalog, 10)  # after the session: not seen by its streams

    shares = []
    for index in range(3):
        request = scan_request(snapshot_id=pinned)
        shared = ScanRequest(**{**request.__dict__, "share": StreamShare(index, 3)})
        shares.append(await read_ids(catalog, shared))
    assert sorted(i for share in shares for i in share) == list(range(8))
    assert [len(share) for share in shares] == [s.rows for s in plan.streams]
    assert len((await catalog.plan_read_session("ns", "t", scan_request(), 100)).streams) == 5


async def test_the_streams_of_a_session_arriving_together_at_another_replica_plan_once(
    table: TableInfo,
    catalog: CatalogPort,
    open_catalog: OpenCatalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica that did not create the session plans it once for all its streams at once.

    Each planning of the replica is counted around pyiceberg's real planner; the first one
    waits until every stream has reached the replica's plan cache, so that all of them miss
    it together (a bounded wait: it only makes the race certain).
    """
    streams = 3  # below the replica's 4 worker threads
    for end in (2, 4, 6, 8):  # four data files
        pinned = await append(catalog, end)
    plan = await catalog.plan_read_session("ns", "t", scan_request(), streams)
    assert (plan.snapshot_id, len(plan.streams)) == (pinned, streams)
    replica = open_catalog()
    arrived = threading.Condition()
    counts = {"arrived": 0, "planned": 0}
    real_tasks, real_plan_files = PlanCache.tasks, DataScan.plan_files

    def arrive(cache: PlanCache, key: Any, planner: Any, *, keep: bool = True) -> Any:
        with arrived:
            counts["arrived"] += 1
            arrived.notify_all()
        return real_tasks(cache, key, planner, keep=keep)

    def plan_files(scan: DataScan) -> Any:
        with arrived:
            counts["planned"] += 1
            arrived.wait_for(lambda: counts["arrived"] >= streams, timeout=10)
        return real_plan_files(scan)

    monkeypatch.setattr(PlanCache, "tasks", arrive)
    monkeypatch.setattr(DataScan, "plan_files", plan_files)

    async def read_stream(index: int) -> list[int]:
        request = scan_request(snapshot_id=pinned)
        shared = ScanRequest(**{**request.__dict__, "share": StreamShare(index, streams)})
        return await read_ids(replica, shared)

    shares = await asyncio.gather(*(read_stream(i) for i in range(streams)))

    assert counts == {"arrived": streams, "planned": 1}
    assert sorted(i for share in shares for i in share) == list(range(8))
