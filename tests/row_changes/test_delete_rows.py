"""DeleteRows semantics through the real server, on SQLite + local disk and PostgreSQL + S3.

Issue 15, "Semantics that must hold": the rows deleted are exactly those the filter matches
(a row for which it is NULL is kept, as in SQL), across files and partitions; the answer
counts what was done; a file with no match is left as it is; bad input and a stale etag
change nothing; a delete that matches nothing commits nothing; a request id deletes once,
even after its snapshot expired. Every expectation is computed from the rows' ids alone
(``fixtures.row_tables.row``), and checked with ReadRows and with pyiceberg on the catalog.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pyarrow as pa
import pytest
import pytest_asyncio

from fixtures.grpc_errors import rpc_error_details
from fixtures.row_tables import (
    LONG,
    NS,
    Row,
    create_table,
    delete,
    expected_after,
    expire_all_but_the_last_snapshot,
    ids_by_file,
    live_files,
    load,
    read_ids,
    row,
    rows,
    write,
)
from lakehouse.client.arrow import write_rows_request
from lakehouse.v1 import ingest_service_pb2_grpc, schema_pb2
from lakehouse.v1 import table_service_pb2 as tpb

#: Three WriteRows calls of 40 rows: 9 files partitioned by ``part``, 12 by ``day(ts)``.
BATCHES = [range(0, 40), range(40, 80), range(80, 120)]
ALL_IDS = list(range(120))


def _and(*values: bool | None) -> bool | None:
    """SQL's AND over TRUE/FALSE/NULL (None)."""
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _or(*values: bool | None) -> bool | None:
    """SQL's OR over TRUE/FALSE/NULL (None)."""
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


def _cmp(value: Any, test: Callable[[Any], bool]) -> bool | None:
    """A comparison with a column value: NULL when the value is NULL."""
    return None if value is None else test(value)


#: Filters applied one after the other to one table, each with its meaning in SQL's
#: three-valued logic (None: NULL, which keeps the row).
STEPS: list[tuple[str, Callable[[Row], bool | None]]] = [
    (
        "amount >= 50 AND amount < 70",
        lambda r: _and(_cmp(r["amount"], lambda a: a >= 50), _cmp(r["amount"], lambda a: a < 70)),
    ),
    ("NOT (amount < 100)", lambda r: _cmp(r["amount"], lambda a: not a < 100)),
    (
        "note != 'n8' AND id < 30",
        lambda r: _and(_cmp(r["note"], lambda n: n != "n8"), r["id"] < 30),
    ),
    (
        "part = 'b' OR ts < TIMESTAMP '2024-01-02'",
        lambda r: _or(r["part"] == "b", r["ts"].day == 1),
    ),
    ("amount IS NULL AND id > 40", lambda r: r["amount"] is None and r["id"] > 40),
    (
        "id IN (31, 32, 33, 34) OR note LIKE 'n4%'",
        lambda r: _or(r["id"] in (31, 32, 33, 34), _cmp(r["note"], lambda n: n.startswith("n4"))),
    ),
]


@pytest_asyncio.fixture
async def ingest_stub(channel: grpc.aio.Channel) -> AsyncIterator[Any]:
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


async def filled(table_stub: Any, ingest_stub: Any, name: str, partitioning: str) -> None:
    """Creates ``rc.<name>`` and writes ``BATCHES`` into it, one commit each."""
    await create_table(table_stub, name, partitioning)
    for ids in BATCHES:
        await write(ingest_stub, name, ids)


def static_ids(table: Any) -> list[int]:
    """The ids pyiceberg reads from the table's current snapshot."""
    return sorted(table.scan().to_arrow().column("id").to_pylist())


async def etag_of(table_stub: Any, name: str) -> str:
    etag: str = (
        await table_stub.GetTable(tpb.GetTableRequest(namespace=NS, table=name))
    ).table.etag
    return etag


@pytest.mark.parametrize("partitioning", ["identity", "day"])
async def test_deletes_exactly_the_matching_rows_and_rewrites_only_their_files(
    table_stub: Any, ingest_stub: Any, backend: Any, partitioning: str
) -> None:
    await filled(table_stub, ingest_stub, "t", partitioning)
    before = load(backend, "t")
    assert len(live_files(before)) == {"identity": 9, "day": 12}[partitioning]
    expected = ALL_IDS
    for row_filter, matches in STEPS:
        held = ids_by_file(load(backend, "t"))
        hit = {
            path: [i for i in ids if i not in expected_after(ids, matches)]
            for path, ids in held.items()
        }
        untouched = {path for path, gone in hit.items() if not gone}
        expected = expected_after(expected, matches)

        reply = await delete(table_stub, "t", row_filter)

        after = load(backend, "t")
        assert await read_ids(table_stub, "t") == expected, row_filter
        assert reply.rows_deleted == sum(len(gone) for gone in hit.values()), row_filter
        assert reply.files_removed == sum(
            1 for path, gone in hit.items() if gone and len(gone) == len(held[path])
        ), row_filter
        assert reply.files_rewritten == sum(
            1 for path, gone in hit.items() if gone and len(gone) < len(held[path])
        ), row_filter
        assert not reply.already_applied
        snapshot = after.current_snapshot()
        assert snapshot is not None and reply.snapshot_id == snapshot.snapshot_id
        assert reply.etag == after.metadata_location == await etag_of(table_stub, "t")
        # A file without a matching row is still live under the same path; none with one is.
        assert untouched <= live_files(after), row_filter
        assert not (set(hit) - untouched) & live_files(after), row_filter
    assert expected  # the steps leave some rows, so "kept" was really checked
    # One snapshot per delete, on top of the three appends.
    assert len(load(backend, "t").metadata.snapshots) == len(BATCHES) + len(STEPS)


async def test_true_deletes_every_row_removing_every_file(
    table_stub: Any, ingest_stub: Any, backend: Any
) -> None:
    await filled(table_stub, ingest_stub, "t", "identity")
    files = len(live_files(load(backend, "t")))

    reply = await delete(table_stub, "t", "true")

    assert (reply.rows_deleted, reply.files_removed, reply.files_rewritten) == (120, files, 0)
    assert reply.snapshot_id != 0
    assert await read_ids(table_stub, "t") == []
    assert live_files(load(backend, "t")) == set()


@pytest.mark.parametrize(
    ("row_filter", "reason"),
    [
        ("", "INVALID_ROW_FILTER"),
        ("   ", "INVALID_ROW_FILTER"),
        ("missing = 1", "INVALID_ROW_FILTER"),
        ("id = 'x'", "INVALID_ROW_FILTER"),
        ("amount >", "INVALID_ROW_FILTER"),
    ],
)
@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_bad_filter_is_invalid_argument_and_changes_nothing(
    table_stub: Any, ingest_stub: Any, backend: Any, row_filter: str, reason: str
) -> None:
    await filled(table_stub, ingest_stub, "t", "identity")
    etag = await etag_of(table_stub, "t")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(table_stub, "t", row_filter)

    details = rpc_error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == reason
    assert details.violated_fields == ["row_filter"]
    assert await etag_of(table_stub, "t") == etag
    assert await read_ids(table_stub, "t") == ALL_IDS


async def test_unknown_column_on_both_backends_changes_nothing(
    table_stub: Any, ingest_stub: Any, backend: Any
) -> None:
    await filled(table_stub, ingest_stub, "t", "day")
    etag = await etag_of(table_stub, "t")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(table_stub, "t", "id < 10 OR nope = 1")

    details = rpc_error_details(caught.value)
    assert (details.code, details.violated_fields) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["row_filter"],
    )
    assert await etag_of(table_stub, "t") == etag
    assert len(load(backend, "t").metadata.snapshots) == len(BATCHES)


async def test_a_stale_etag_is_aborted_and_changes_nothing(
    table_stub: Any, ingest_stub: Any, backend: Any
) -> None:
    await filled(table_stub, ingest_stub, "t", "identity")
    stale = await etag_of(table_stub, "t")
    await write(ingest_stub, "t", [500])
    current = await etag_of(table_stub, "t")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await delete(table_stub, "t", "id < 60", expected_etag=stale)

    details = rpc_error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert details.metadata.get("current_etag") == current
    assert await etag_of(table_stub, "t") == current
    assert await read_ids(table_stub, "t") == [*ALL_IDS, 500]

    # The current etag works, and the answer's etag is the next one's.
    reply = await delete(table_stub, "t", "id < 60", expected_etag=current)
    assert reply.rows_deleted == 60
    again = await delete(table_stub, "t", "id = 500", expected_etag=reply.etag)
    assert again.rows_deleted == 1
    assert await read_ids(table_stub, "t") == list(range(60, 120))


async def test_a_delete_matching_nothing_commits_nothing(
    table_stub: Any, ingest_stub: Any, backend: Any
) -> None:
    await filled(table_stub, ingest_stub, "t", "day")
    etag = await etag_of(table_stub, "t")
    snapshots = len(load(backend, "t").metadata.snapshots)

    # Pruned by statistics (id), by partition (ts), and read without a match (NULL amount).
    for row_filter in ["id > 1000", "ts > TIMESTAMP '2030-01-01'", "amount = 5", "false"]:
        reply = await delete(table_stub, "t", row_filter, request_id=f"none-{len(row_filter)}")
        assert (reply.rows_deleted, reply.files_rewritten, reply.files_removed) == (0, 0, 0)
        assert reply.snapshot_id == 0 and not reply.already_applied
        assert reply.etag == etag

    assert len(load(backend, "t").metadata.snapshots) == snapshots
    assert await etag_of(table_stub, "t") == etag


async def test_the_same_request_id_deletes_once_even_when_new_rows_match(
    table_stub: Any, ingest_stub: Any, backend: Any
) -> None:
    await filled(table_stub, ingest_stub, "t", "identity")
    first = await delete(table_stub, "t", "id < 10", request_id="gdpr-1")
    await write(ingest_stub, "t", range(-5, 0))  # rows the same filter matches

    second = await delete(table_stub, "t", "id < 10", request_id="gdpr-1")

    assert (first.rows_deleted, first.already_applied) == (10, False)
    assert (second.rows_deleted, second.already_applied) == (10, True)
    assert (second.files_rewritten, second.files_removed, second.snapshot_id) == (0, 0, 0)
    assert await read_ids(table_stub, "t") == [*range(-5, 0), *range(10, 120)]
    # Another request id is another delete.
    third = await delete(table_stub, "t", "id < 10", request_id="gdpr-2")
    assert (third.rows_deleted, third.already_applied) == (5, False)
    assert await read_ids(table_stub, "t") == list(range(10, 120))


async def test_a_request_id_outlives_its_snapshot_through_the_ledger(
    table_stub: Any, ingest_stub: Any, channel: grpc.aio.Channel, backend: Any
) -> None:
    await filled(table_stub, ingest_stub, "t", "none")
    first = await delete(table_stub, "t", "id >= 100", request_id="gdpr-old")
    for i in range(3):
        await write(ingest_stub, "t", [1000 + i])
    await write(ingest_stub, "t", [200])  # matches the filter again
    await expire_all_but_the_last_snapshot(channel, "t")
    table = load(backend, "t")
    assert len(table.metadata.snapshots) == 1  # the delete's snapshot is gone

    again = await delete(table_stub, "t", "id >= 100", request_id="gdpr-old")

    assert first.rows_deleted == 20
    assert (again.already_applied, again.rows_deleted) == (True, 20)
    assert await read_ids(table_stub, "t") == [*range(100), 200, 1000, 1001, 1002]


async def test_deletes_after_schema_and_partition_evolution(
    table_stub: Any, ingest_stub: Any, backend: Any
) -> None:
    """Files written before a column was added or renamed, or under an older partition spec,
    are matched by field id: a missing column is NULL in them."""
    await create_table(table_stub, "t", "identity")
    await write(ingest_stub, "t", range(40))
    await table_stub.UpdateTable(
        tpb.UpdateTableRequest(
            namespace=NS,
            table="t",
            changes=[
                tpb.TableChange(
                    add_column=tpb.AddColumn(field=schema_pb2.Field(name="extra", type=LONG))
                ),
                tpb.TableChange(rename_column=tpb.RenameColumn(column="amount", new_name="price")),
                tpb.TableChange(
                    add_partition_field=tpb.AddPartitionField(
                        field=schema_pb2.PartitionField(source_column="ts", transform="day")
                    )
                ),
            ],
        )
    )
    newer = rows(range(40, 80)).rename_columns(["id", "part", "ts", "price", "note"])
    newer = newer.append_column("extra", pa.array(range(40, 80), pa.int64()))
    await ingest_stub.WriteRows(write_rows_request(NS, "t", newer))

    def full(i: int) -> Row:
        r = row(i)
        return {**r, "price": r["amount"], "extra": i if i >= 40 else None}

    steps: list[tuple[str, Callable[[Row], bool | None]]] = [
        ("extra IS NULL AND id < 10", lambda r: r["extra"] is None and r["id"] < 10),
        ("price >= 70", lambda r: _cmp(r["price"], lambda p: p >= 70)),
        ("extra = 45 OR extra < 0", lambda r: _cmp(r["extra"], lambda e: e == 45 or e < 0)),
        (
            "part = 'a' AND ts < TIMESTAMP '2024-01-02'",
            lambda r: r["part"] == "a" and r["ts"].day == 1,
        ),
    ]
    expected = list(range(80))
    for row_filter, matches in steps:
        gone = [i for i in expected if matches(full(i)) is True]
        expected = [i for i in expected if i not in gone]

        reply = await delete(table_stub, "t", row_filter)

        assert reply.rows_deleted == len(gone), row_filter
        assert await read_ids(table_stub, "t") == expected, row_filter
    assert static_ids(load(backend, "t")) == expected


async def test_a_delete_on_a_table_without_rows_commits_nothing(
    table_stub: Any, backend: Any
) -> None:
    etag = await create_table(table_stub, "t", "day")

    reply = await delete(table_stub, "t", "true", request_id="empty")

    assert (reply.rows_deleted, reply.snapshot_id, reply.already_applied) == (0, 0, False)
    assert reply.etag == etag == await etag_of(table_stub, "t")
    assert load(backend, "t").metadata.snapshots == []


@pytest.mark.parametrize(
    ("row_filter", "matches"),
    [
        (
            "amount NOT IN (1, 2, 3)",
            lambda r: _cmp(r["amount"], lambda a: a not in (1, 2, 3)),
        ),
        (
            "NOT (note IN ('n1', 'n2'))",
            lambda r: _cmp(r["note"], lambda n: n not in ("n1", "n2")),
        ),
        (
            "NOT (amount IN (1, 2) OR id > 100)",
            lambda r: _and(_cmp(r["amount"], lambda a: a not in (1, 2)), r["id"] <= 100),
        ),
        ("amount IN (5, 6, 7)", lambda r: _cmp(r["amount"], lambda a: a in (5, 6, 7))),
        ("note NOT LIKE 'n1%'", lambda r: _cmp(r["note"], lambda n: not n.startswith("n1"))),
        ("NOT (amount = 4)", lambda r: _cmp(r["amount"], lambda a: a != 4)),
    ],
)
async def test_a_null_in_an_in_list_comparison_keeps_the_row(
    table_stub: Any,
    ingest_stub: Any,
    backend: Any,
    row_filter: str,
    matches: Callable[[Row], bool | None],
) -> None:
    """``NULL NOT IN (...)`` is NULL in SQL, also under NOT: the row stays (Arrow's is_in
    answers false for a null, which NOT would turn into a match)."""
    await filled(table_stub, ingest_stub, "t", "identity")
    expected = expected_after(ALL_IDS, matches)

    reply = await delete(table_stub, "t", row_filter)

    assert await read_ids(table_stub, "t") == expected
    assert reply.rows_deleted == len(ALL_IDS) - len(expected)
