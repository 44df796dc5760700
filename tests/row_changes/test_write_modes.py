"""Write modes over the wire: OVERWRITE, OVERWRITE_PARTITIONS and UPSERT (with change streams).

Each test runs a real server on both backends and checks the table's rows afterwards as a
user would: through ReadRows, through pyiceberg on the same catalog, and through pyiceberg's
``StaticTable`` from the metadata file alone in another process (a reader nobody here wrote).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families

from fixtures.duckdb15 import duckdb15_python, iceberg_ids
from fixtures.grpc_errors import rpc_error_details
from fixtures.http import http_get
from fixtures.iceberg import direct_catalog
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.v1 import ingest_pb2, ingest_service_pb2_grpc, rows_pb2, schema_pb2
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import table_service_pb2 as tpb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
DATE = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_DATE)

UPSERT = ingest_pb2.WRITE_MODE_UPSERT
OVERWRITE = ingest_pb2.WRITE_MODE_OVERWRITE
PARTITIONS = ingest_pb2.WRITE_MODE_OVERWRITE_PARTITIONS

STATIC_READER = textwrap.dedent(
    """
    import json, sys
    from pyiceberg.table import StaticTable
    location, props = sys.argv[1], json.loads(sys.argv[2])
    rows = StaticTable.from_metadata(location, properties=props).scan().to_arrow().to_pylist()
    print(json.dumps(sorted(rows, key=lambda r: r["id"]), default=str))
    """
)


def json_rows(*rows: dict[str, Any]) -> rows_pb2.JsonRows:
    structs = []
    for row in rows:
        s = struct_pb2.Struct()
        s.update(row)
        structs.append(s)
    return rows_pb2.JsonRows(rows=structs)


@pytest_asyncio.fixture
async def ingest(channel: grpc.aio.Channel, table_stub: Any) -> AsyncIterator[Any]:
    """The ingest stub, with namespace ``rc`` holding ``users`` (key ``id``), ``events``
    (partitioned by ``day``) and ``plain`` (no key, not partitioned)."""
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="rc"))
    fields = [
        schema_pb2.Field(name="id", type=LONG, required=True),
        schema_pb2.Field(name="name", type=STRING),
    ]
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="rc",
            table="users",
            schema=schema_pb2.Schema(fields=fields, identifier_field_names=["id"]),
        )
    )
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="rc", table="plain", schema=schema_pb2.Schema(fields=fields)
        )
    )
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="rc",
            table="events",
            schema=schema_pb2.Schema(
                fields=[*fields, schema_pb2.Field(name="day", type=DATE, required=True)]
            ),
            partition_spec=schema_pb2.PartitionSpec(
                fields=[schema_pb2.PartitionField(source_column="day", transform="identity")]
            ),
        )
    )
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


async def write(ingest: Any, table: str, *rows: dict[str, Any], **fields: Any) -> Any:
    reply = await ingest.WriteRows(
        ipb.WriteRowsRequest(namespace="rc", table=table, json_rows=json_rows(*rows), **fields)
    )
    return reply.result


def rows_of(backend: Any, table: str) -> list[dict[str, Any]]:
    loaded = direct_catalog(backend).load_table(("rc", table))
    rows = loaded.scan().to_arrow().to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def names(backend: Any, table: str) -> dict[int, str | None]:
    return {r["id"]: r["name"] for r in rows_of(backend, table)}


def snapshot_count(backend: Any, table: str) -> int:
    return len(direct_catalog(backend).load_table(("rc", table)).snapshots())


def static_rows(backend: Any, table: str) -> list[dict[str, Any]]:
    """The rows pyiceberg's StaticTable reads from the current metadata file, in a new process."""
    location = direct_catalog(backend).load_table(("rc", table)).metadata_location
    props = {
        k: v
        for k, v in catalog_properties(backend).items()
        if k.startswith("s3.") or k == "warehouse"
    }
    proc = subprocess.run(
        [sys.executable, "-c", STATIC_READER, location, json.dumps(props)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


async def refused(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return rpc_error_details(caught.value)


# -- UPSERT -------------------------------------------------------------------------------------


async def test_upsert_replaces_rows_by_key_and_inserts_the_others(
    ingest: Any, backend: Any
) -> None:
    await write(ingest, "users", *({"id": i, "name": f"v{i}"} for i in range(6)))
    await write(ingest, "users", *({"id": i, "name": f"v{i}"} for i in range(6, 10)))
    before = snapshot_count(backend, "users")

    result = await write(
        ingest,
        "users",
        {"id": 2, "name": "two"},
        {"id": 7, "name": "seven"},
        {"id": 42, "name": "new"},
        write_mode=UPSERT,
    )

    expected = {i: f"v{i}" for i in range(10)} | {2: "two", 7: "seven", 42: "new"}
    assert names(backend, "users") == expected
    assert (result.rows_written, result.rows_updated, result.rows_deleted) == (3, 2, 0)
    assert result.files_rewritten == 2  # one file of each earlier write held a key
    assert snapshot_count(backend, "users") == before + 1  # one commit
    assert {r["id"]: r["name"] for r in static_rows(backend, "users")} == expected


async def test_a_change_stream_mirrors_a_table_by_key(ingest: Any, backend: Any) -> None:
    await write(ingest, "users", *({"id": i, "name": "old"} for i in range(5)))

    result = await write(
        ingest,
        "users",
        # Out of order on purpose: the highest sequence number of each key wins.
        {"id": 1, "name": "b", "_change_sequence_number": 12},
        {"id": 1, "name": "a", "_change_sequence_number": 11},
        {"id": 3, "_change_type": "DELETE", "_change_sequence_number": 20},
        {"id": 4, "name": "gone", "_change_sequence_number": 30},
        {"id": 4, "_change_type": "DELETE", "_change_sequence_number": 31},
        {"id": 9, "_change_type": "DELETE", "_change_sequence_number": 1},  # no such key: fine
        {"id": 8, "name": "ins", "_change_type": "UPSERT", "_change_sequence_number": 5},
        write_mode=UPSERT,
    )

    assert names(backend, "users") == {0: "old", 1: "b", 2: "old", 8: "ins"}
    assert result.rows_written == 2  # the newest changes of keys 1 and 8
    assert result.rows_updated == 1  # key 1
    assert result.rows_deleted == 2  # keys 3 and 4


async def test_upsert_refuses_bad_change_rows_and_changes_nothing(
    ingest: Any, backend: Any
) -> None:
    await write(ingest, "users", {"id": 1, "name": "a"})
    before = rows_of(backend, "users")

    duplicated = await refused(
        write(ingest, "users", {"id": 5, "name": "x"}, {"id": 5, "name": "y"}, write_mode=UPSERT)
    )
    assert duplicated.code == grpc.StatusCode.INVALID_ARGUMENT
    assert duplicated.reason == "INVALID_ROWS"
    assert duplicated.field_violations[0][0] == "rows[1].id"

    bad_type = await refused(
        write(ingest, "users", {"id": 1, "_change_type": "MERGE"}, write_mode=UPSERT)
    )
    assert bad_type.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_type.field_violations[0][0] == "rows[0]._change_type"

    no_key = await refused(write(ingest, "plain", {"id": 1, "name": "a"}, write_mode=UPSERT))
    assert no_key.code == grpc.StatusCode.FAILED_PRECONDITION
    assert no_key.reason == "NO_IDENTIFIER_FIELDS"

    missing_key = await refused(write(ingest, "users", {"name": "no id"}, write_mode=UPSERT))
    assert missing_key.code == grpc.StatusCode.INVALID_ARGUMENT

    assert rows_of(backend, "users") == before


async def test_an_upsert_stream_with_a_writer_is_exactly_once(ingest: Any, backend: Any) -> None:
    await write(ingest, "users", *({"id": i, "name": "old"} for i in range(3)))

    def request(offset: int, first: bool = False, **row: Any) -> ipb.AppendRowsRequest:
        extra: dict[str, Any] = (
            {"namespace": "rc", "table": "users", "writer_id": "cdc-1", "write_mode": UPSERT}
            if first
            else {}
        )
        return ipb.AppendRowsRequest(offset=offset, json_rows=json_rows(row), **extra)

    async def stream(*requests: ipb.AppendRowsRequest) -> list[Any]:
        async def gen() -> AsyncIterator[ipb.AppendRowsRequest]:
            for r in requests:
                yield r

        return [r async for r in ingest.AppendRows(gen())]

    first = await stream(
        request(0, True, id=0, name="new0"),
        request(1, id=1, _change_type="DELETE"),
    )
    assert [r.WhichOneof("response") for r in first] == ["result", "result"]
    # A reconnecting writer resends from an older offset: nothing is applied twice.
    again = await stream(
        request(1, True, id=1, _change_type="DELETE"),
        request(2, id=2, name="new2"),
    )
    assert again[0].result.already_written
    assert not again[1].result.already_written
    assert names(backend, "users") == {0: "new0", 2: "new2"}
    writer = await ingest.GetWriter(
        ipb.GetWriterRequest(namespace="rc", table="users", writer_id="cdc-1")
    )
    assert writer.writer.next_offset == 3


# -- OVERWRITE --------------------------------------------------------------------------------


async def test_overwrite_replaces_the_rows_the_filter_matches(ingest: Any, backend: Any) -> None:
    await write(ingest, "plain", *({"id": i, "name": "a" if i < 5 else "b"} for i in range(10)))

    result = await write(
        ingest,
        "plain",
        {"id": 100, "name": "b"},
        write_mode=OVERWRITE,
        overwrite_filter="name = 'b'",
    )

    assert names(backend, "plain") == {0: "a", 1: "a", 2: "a", 3: "a", 4: "a", 100: "b"}
    assert (result.rows_written, result.rows_deleted) == (1, 5)

    # No rows: deletes what matches.
    emptied = await write(ingest, "plain", write_mode=OVERWRITE, overwrite_filter="id >= 3")
    assert emptied.rows_deleted == 3
    assert names(backend, "plain") == {0: "a", 1: "a", 2: "a"}
    assert [r["id"] for r in static_rows(backend, "plain")] == [0, 1, 2]


async def test_overwrite_refuses_a_missing_or_bad_filter_and_changes_nothing(
    ingest: Any, backend: Any
) -> None:
    await write(ingest, "plain", {"id": 1, "name": "a"})
    before = rows_of(backend, "plain")
    for fields, field in (
        ({"write_mode": OVERWRITE}, "overwrite_filter"),
        ({"write_mode": OVERWRITE, "overwrite_filter": "nope = 1"}, "overwrite_filter"),
        ({"overwrite_filter": "id = 1"}, "overwrite_filter"),  # a filter while appending
        ({"write_mode": 99}, "write_mode"),
    ):
        err = await refused(write(ingest, "plain", {"id": 2, "name": "b"}, **fields))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert err.field_violations[0][0] == field, fields
    assert rows_of(backend, "plain") == before


# -- OVERWRITE_PARTITIONS -----------------------------------------------------------------------


def day_rows(day: str, ids: range, name: str) -> list[dict[str, Any]]:
    return [{"id": i, "name": name, "day": day} for i in ids]


async def test_reloading_a_day_replaces_it_and_is_idempotent(ingest: Any, backend: Any) -> None:
    await write(ingest, "events", *day_rows("2026-01-01", range(0, 5), "first"))
    await write(ingest, "events", *day_rows("2026-01-02", range(5, 10), "first"))

    reload = day_rows("2026-01-02", range(20, 23), "reloaded")
    for _ in range(2):  # the daily job ran twice
        result = await write(ingest, "events", *reload, write_mode=PARTITIONS)

    rows = rows_of(backend, "events")
    assert [(r["id"], r["name"]) for r in rows] == [(i, "first") for i in range(5)] + [
        (i, "reloaded") for i in range(20, 23)
    ]
    assert (result.rows_written, result.rows_deleted, result.files_removed) == (3, 3, 1)
    assert len(static_rows(backend, "events")) == 8


async def test_overwrite_partitions_needs_a_partitioned_table(ingest: Any, backend: Any) -> None:
    err = await refused(write(ingest, "plain", {"id": 1}, write_mode=PARTITIONS))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "TABLE_NOT_PARTITIONED"


async def test_an_overwrite_stream_commits_once_when_the_client_half_closes(
    ingest: Any, backend: Any
) -> None:
    await write(ingest, "events", *day_rows("2026-01-03", range(0, 4), "old"))
    before = snapshot_count(backend, "events")
    go_on = asyncio.Event()

    async def requests() -> AsyncIterator[ipb.AppendRowsRequest]:
        yield ipb.AppendRowsRequest(
            namespace="rc",
            table="events",
            write_mode=PARTITIONS,
            json_rows=json_rows(*day_rows("2026-01-03", range(10, 12), "new")),
        )
        yield ipb.AppendRowsRequest(
            json_rows=json_rows(*day_rows("2026-01-03", range(12, 14), "new"))
        )
        await go_on.wait()

    call = ingest.AppendRows(requests())
    reader = asyncio.ensure_future(_responses(call))
    # Both requests sent, the stream still open: the table has not changed.
    await asyncio.sleep(0.5)
    assert snapshot_count(backend, "events") == before
    assert [r["id"] for r in rows_of(backend, "events")] == [0, 1, 2, 3]
    go_on.set()
    responses = await asyncio.wait_for(reader, 60)

    assert [r.result.rows_written for r in responses] == [2, 2]
    assert responses[0].result.snapshot_id == responses[1].result.snapshot_id != 0
    assert responses[1].result.rows_deleted == 4
    assert snapshot_count(backend, "events") == before + 1
    assert [r["id"] for r in rows_of(backend, "events")] == [10, 11, 12, 13]


async def test_an_overwrite_stream_that_fails_changes_nothing(ingest: Any, backend: Any) -> None:
    await write(ingest, "events", *day_rows("2026-01-04", range(0, 3), "old"))
    before = rows_of(backend, "events")

    async def requests() -> AsyncIterator[ipb.AppendRowsRequest]:
        yield ipb.AppendRowsRequest(
            namespace="rc",
            table="events",
            write_mode=PARTITIONS,
            json_rows=json_rows(*day_rows("2026-01-04", range(10, 12), "new")),
        )
        yield ipb.AppendRowsRequest(json_rows=json_rows({"id": "not a number", "day": "x"}))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _responses(ingest.AppendRows(requests()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rows_of(backend, "events") == before

    # A cancelled stream changes nothing either.
    call = ingest.AppendRows(_one_then_wait(day_rows("2026-01-04", range(20, 22), "new")))
    await asyncio.sleep(0.3)
    call.cancel()
    await asyncio.sleep(0.3)
    assert rows_of(backend, "events") == before


async def _responses(call: Any) -> list[Any]:
    return [r async for r in call]


async def _one_then_wait(rows: list[dict[str, Any]]) -> AsyncIterator[ipb.AppendRowsRequest]:
    yield ipb.AppendRowsRequest(
        namespace="rc", table="events", write_mode=PARTITIONS, json_rows=json_rows(*rows)
    )
    await asyncio.Event().wait()


# -- Metrics ----------------------------------------------------------------------------------


def _row_change_samples(text: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("lakehouse_row_change") and sample.name.endswith("_total"):
                label = next(iter(sample.labels.values()), "")
                found[(sample.name, label)] = sample.value
    return found


async def test_row_changes_are_counted_in_the_metrics(
    ingest: Any, backend: Any, http_url: str
) -> None:
    await write(ingest, "users", *({"id": i, "name": "a"} for i in range(4)))
    before = _row_change_samples((await http_get(f"{http_url}/metrics")).text)

    await write(
        ingest, "users", {"id": 1, "name": "b"}, {"id": 9, "name": "new"}, write_mode=UPSERT
    )
    await write(ingest, "users", write_mode=UPSERT)  # nothing: not counted
    after = _row_change_samples((await http_get(f"{http_url}/metrics")).text)

    def delta(name: str, label: str) -> float:
        return after.get((name, label), 0.0) - before.get((name, label), 0.0)

    assert delta("lakehouse_row_changes_total", "upsert") == 1
    assert delta("lakehouse_row_change_rows_total", "updated") == 1
    assert delta("lakehouse_row_change_rows_total", "deleted") == 0
    assert delta("lakehouse_row_change_files_total", "rewritten") == 1


# -- Concurrency --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def other_replica(server: Any, backend: Any) -> AsyncIterator[Any]:
    """The ingest stub of a second server on the same catalog and warehouse (a replica)."""
    from lakehouse.server.app import LakehouseServer

    replica = LakehouseServer(backend)
    await replica.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as channel:
            yield ingest_service_pb2_grpc.IngestServiceStub(channel)
    finally:
        await asyncio.wait_for(replica.stop(), 30)


async def test_upserts_racing_appends_lose_and_resurrect_nothing(
    ingest: Any, other_replica: Any, backend: Any
) -> None:
    """Another replica appends new keys while a change stream keeps rewriting the same files.

    The two replicas' commits race; each commit of the upserts that lost a race is planned
    again on the table as it is then. At the end every acknowledged append is there exactly
    once, every key the stream deleted is gone, and every other key has its newest value.
    """
    await write(ingest, "users", *({"id": i, "name": "v0"} for i in range(20)))
    appended: list[int] = []
    rounds = 6

    async def appender(start: int) -> None:
        for n in range(rounds * 2):
            key = start + n
            await write(other_replica, "users", {"id": key, "name": "appended"})
            appended.append(key)

    async def changes() -> None:
        for round_ in range(1, rounds + 1):
            await write(
                ingest,
                "users",
                *({"id": i, "name": f"v{round_}"} for i in range(0, 20, 2)),
                *({"id": i, "_change_type": "DELETE"} for i in range(1, 20, 4)),
                write_mode=UPSERT,
            )

    await asyncio.wait_for(asyncio.gather(appender(1000), appender(2000), changes()), timeout=120)

    rows = rows_of(backend, "users")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a key is there twice"
    got = {r["id"]: r["name"] for r in rows}
    expected = {i: f"v{rounds}" for i in range(0, 20, 2)}
    expected |= {i: "v0" for i in range(3, 20, 4)}  # odd keys the stream never deleted
    expected |= {key: "appended" for key in appended}
    assert got == expected


async def test_a_retried_row_change_with_its_request_id_changes_nothing_again(
    ingest: Any, backend: Any
) -> None:
    await write(ingest, "plain", *({"id": i, "name": "a"} for i in range(4)))
    first = await write(
        ingest,
        "plain",
        {"id": 10, "name": "b"},
        write_mode=OVERWRITE,
        overwrite_filter="name = 'a'",
        request_id="reload-1",
    )
    assert (first.rows_written, first.rows_deleted, first.already_written) == (1, 4, False)
    # Rows the retry's filter would match arrive in between: the retry must not delete them.
    await write(ingest, "plain", {"id": 20, "name": "a"})

    again = await write(
        ingest,
        "plain",
        {"id": 10, "name": "b"},
        write_mode=OVERWRITE,
        overwrite_filter="name = 'a'",
        request_id="reload-1",
    )

    assert again.already_written
    assert again.rows_deleted == 0
    assert names(backend, "plain") == {10: "b", 20: "a"}


# -- Readers nobody here wrote -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_duckdb_reads_the_result_of_every_write_mode(ingest: Any, backend: Any) -> None:
    """DuckDB 1.5.5's own ``iceberg_scan`` (its own venv, ``fixtures.duckdb15``) reads each
    table after an upsert, an overwrite and a partition reload exactly as pyiceberg does."""
    python = await asyncio.to_thread(duckdb15_python)
    await write(ingest, "users", *({"id": i, "name": "a"} for i in range(6)))
    await write(
        ingest,
        "users",
        {"id": 2, "name": "b"},
        {"id": 3, "_change_type": "DELETE"},
        {"id": 9, "name": "new"},
        write_mode=UPSERT,
    )
    await write(ingest, "plain", *({"id": i, "name": "a" if i < 3 else "b"} for i in range(6)))
    await write(
        ingest,
        "plain",
        {"id": 50, "name": "b"},
        write_mode=OVERWRITE,
        overwrite_filter="name = 'b'",
    )
    await write(ingest, "events", *day_rows("2026-02-01", range(0, 4), "old"))
    await write(ingest, "events", *day_rows("2026-02-02", range(4, 8), "old"))
    await write(
        ingest, "events", *day_rows("2026-02-02", range(20, 22), "new"), write_mode=PARTITIONS
    )

    for table, expected in (
        ("users", [0, 1, 2, 4, 5, 9]),
        ("plain", [0, 1, 2, 50]),
        ("events", [0, 1, 2, 3, 20, 21]),
    ):
        location = direct_catalog(backend).load_table(("rc", table)).metadata_location
        assert [r["id"] for r in rows_of(backend, table)] == expected
        assert await asyncio.to_thread(iceberg_ids, python, location, backend) == expected
