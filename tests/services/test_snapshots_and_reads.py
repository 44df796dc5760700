"""Snapshots, rollback, time travel and ReadRows over real tables written by pyiceberg."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import field_mask_pb2, json_format
from google.protobuf.timestamp_pb2 import Timestamp

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import append
from lakehouse.v1 import rows_pb2, schema_pb2
from lakehouse.v1 import table_service_pb2 as pb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
DOUBLE = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_DOUBLE)
TSTZ = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_TIMESTAMPTZ)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("region", pa.string()),
        pa.field("amount", pa.float64()),
        pa.field("note", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("price", pa.decimal128(10, 2)),
        pa.field("tags", pa.list_(pa.string())),
    ]
)


def rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table(
        {
            "id": ids,
            "region": ["eu" if i % 2 else "us" for i in ids],
            "amount": [float(i) for i in ids],
            "note": [None if i % 3 == 0 else f"n{i}" for i in ids],
            "ts": [dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i) for i in ids],
            "price": [decimal.Decimal(i) / 100 for i in ids],
            "tags": [["a", str(i)] for i in ids],
        },
        schema=ARROW_SCHEMA,
    )


async def make_table(stub: Any) -> Any:
    await stub.CreateNamespace(pb.CreateNamespaceRequest(name="r"))
    schema = schema_pb2.Schema(
        fields=[
            schema_pb2.Field(name="id", type=LONG, required=True),
            schema_pb2.Field(name="region", type=STRING),
            schema_pb2.Field(name="amount", type=DOUBLE),
            schema_pb2.Field(name="note", type=STRING),
            schema_pb2.Field(name="ts", type=TSTZ),
            schema_pb2.Field(
                name="price",
                type=schema_pb2.DataType(decimal=schema_pb2.DecimalType(precision=10, scale=2)),
            ),
            schema_pb2.Field(
                name="tags", type=schema_pb2.DataType(list=schema_pb2.ListType(element=STRING))
            ),
        ]
    )
    return (
        await stub.CreateTable(pb.CreateTableRequest(namespace="r", table="t", schema=schema))
    ).table


async def read_arrow(stub: Any, **kwargs: Any) -> tuple[pa.Table, list[Any]]:
    responses = [
        r async for r in stub.ReadRows(pb.ReadRowsRequest(namespace="r", table="t", **kwargs))
    ]
    assert responses[0].WhichOneof("payload") == "arrow_schema"
    schema = pa.ipc.read_schema(pa.py_buffer(responses[0].arrow_schema.serialized_schema))
    batches = [
        pa.ipc.read_record_batch(pa.py_buffer(r.arrow_record_batch.serialized_record_batch), schema)
        for r in responses[1:]
    ]
    return pa.Table.from_batches(batches, schema=schema), responses


async def test_snapshots_time_travel_and_rollback(table_stub: Any, backend: Any) -> None:
    await make_table(table_stub)
    empty, _ = await read_arrow(table_stub)
    assert empty.num_rows == 0

    for start in (0, 100, 200):
        append(backend, "r", "t", rows(start, 100))
    page1 = await table_stub.ListSnapshots(
        pb.ListSnapshotsRequest(namespace="r", table="t", page_size=2)
    )
    page2 = await table_stub.ListSnapshots(
        pb.ListSnapshotsRequest(namespace="r", table="t", page_token=page1.next_page_token)
    )
    assert page2.next_page_token == ""
    snaps = list(page1.snapshots) + list(page2.snapshots)
    assert len(snaps) == 3
    newest, middle, oldest = snaps
    assert newest.parent_snapshot_id == middle.snapshot_id
    assert middle.parent_snapshot_id == oldest.snapshot_id
    assert not oldest.HasField("parent_snapshot_id")
    assert newest.operation == "append"
    assert newest.summary["added-records"] == "100"
    assert newest.summary["total-records"] == "300"
    assert newest.summary["added-data-files"] == "1"

    got = await table_stub.GetSnapshot(
        pb.GetSnapshotRequest(namespace="r", table="t", snapshot_id=middle.snapshot_id)
    )
    assert got.snapshot == middle

    table = (await table_stub.GetTable(pb.GetTableRequest(namespace="r", table="t"))).table
    assert table.current_snapshot_id == newest.snapshot_id
    assert table.stats.row_count == 300
    assert table.stats.file_count == 3
    assert table.stats.total_bytes > 0
    assert table.stats.snapshot_count == 3

    by_id, _ = await read_arrow(table_stub, snapshot_id=middle.snapshot_id)
    assert by_id.num_rows == 200
    as_of = Timestamp()
    as_of.FromMilliseconds(middle.commit_time.ToMilliseconds())
    by_time, responses = await read_arrow(table_stub, as_of_time=as_of)
    assert by_time.num_rows == 200
    assert responses[0].snapshot_id == middle.snapshot_id

    rolled = (
        await table_stub.RollbackTable(
            pb.RollbackTableRequest(
                namespace="r", table="t", snapshot_id=oldest.snapshot_id, expected_etag=table.etag
            )
        )
    ).table
    assert rolled.current_snapshot_id == oldest.snapshot_id
    assert rolled.stats.row_count == 100
    current, _ = await read_arrow(table_stub)
    assert sorted(current.column("id").to_pylist()) == list(range(100))
    # data files stay: the newer snapshot is still readable by id
    still, _ = await read_arrow(table_stub, snapshot_id=newest.snapshot_id)
    assert still.num_rows == 300

    # now "newest" is no ancestor of the current snapshot
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RollbackTable(
            pb.RollbackTableRequest(namespace="r", table="t", snapshot_id=newest.snapshot_id)
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RollbackTable(
            pb.RollbackTableRequest(namespace="r", table="t", snapshot_id=12345)
        )
    assert rpc_error_details(exc.value).reason == "SNAPSHOT_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RollbackTable(
            pb.RollbackTableRequest(
                namespace="r", table="t", snapshot_id=oldest.snapshot_id, expected_etag=table.etag
            )
        )
    assert rpc_error_details(exc.value).reason == "ETAG_MISMATCH"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RollbackTable(pb.RollbackTableRequest(namespace="r", table="t"))
    assert rpc_error_details(exc.value).violated_fields == ["target"]


async def test_read_rows_arrow_with_projection_filter_and_limit(
    table_stub: Any, backend: Any
) -> None:
    await make_table(table_stub)
    append(backend, "r", "t", rows(0, 1000))
    append(backend, "r", "t", rows(1000, 1000))

    full, _ = await read_arrow(table_stub)
    assert full.num_rows == 2000
    expected = pa.concat_tables([rows(0, 1000), rows(1000, 1000)])
    assert full.sort_by("id").to_pylist() == expected.to_pylist()

    filtered, _ = await read_arrow(
        table_stub,
        columns=field_mask_pb2.FieldMask(paths=["id", "note"]),
        row_filter="amount >= 1500 AND region = 'eu' AND note IS NOT NULL",
    )
    assert filtered.column_names == ["id", "note"]
    want = [i for i in range(1500, 2000) if i % 2 and i % 3]
    assert sorted(filtered.column("id").to_pylist()) == want

    limited, _ = await read_arrow(table_stub, row_limit=7)
    assert limited.num_rows == 7

    inlist, _ = await read_arrow(table_stub, row_filter="id IN (3, 5, 1999)")
    assert sorted(inlist.column("id").to_pylist()) == [3, 5, 1999]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_read_rows_json_for_grpcurl(table_stub: Any, backend: Any) -> None:
    await make_table(table_stub)
    append(backend, "r", "t", rows(0, 3))
    responses = [
        r
        async for r in table_stub.ReadRows(
            pb.ReadRowsRequest(
                namespace="r", table="t", format=rows_pb2.ROW_FORMAT_JSON, row_filter="id = 1"
            )
        )
    ]
    payload = [json_format.MessageToDict(s) for r in responses for s in r.json_rows.rows]
    assert payload == [
        {
            "id": 1.0,
            "region": "eu",
            "amount": 1.0,
            "note": "n1",
            "ts": "2024-01-01T01:00:00+00:00",
            "price": "0.01",
            "tags": ["a", "1"],
        }
    ]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_messages_stay_under_the_byte_budget(table_stub: Any, backend: Any) -> None:
    await make_table(table_stub)
    append(backend, "r", "t", rows(0, 50_000))
    table, responses = await read_arrow(table_stub)
    assert table.num_rows == 50_000
    sizes = [r.ByteSize() for r in responses]
    assert max(sizes) < 2 * 1024 * 1024 + 64 * 1024
    assert len(responses) > 2  # the one file was cut into several messages


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_cancelled_reader_stops_the_scan(table_stub: Any, backend: Any, server: Any) -> None:
    await make_table(table_stub)
    for start in range(0, 40_000, 10_000):
        append(backend, "r", "t", rows(start, 10_000))
    call = table_stub.ReadRows(pb.ReadRowsRequest(namespace="r", table="t"))
    await call.read()  # the schema
    await call.read()  # one batch
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    # the server is fine and the next read is complete
    again, _ = await read_arrow(table_stub)
    assert again.num_rows == 40_000


BAD_READS = {
    "row_filter": pb.ReadRowsRequest(namespace="r", table="t", row_filter="amount >"),
    "row_filter ": pb.ReadRowsRequest(namespace="r", table="t", row_filter="nope = 1"),
    "columns.paths[1]": pb.ReadRowsRequest(
        namespace="r", table="t", columns=field_mask_pb2.FieldMask(paths=["id", "ghost"])
    ),
    "row_limit": pb.ReadRowsRequest(namespace="r", table="t", row_limit=-1),
    "table": pb.ReadRowsRequest(namespace="r", table="../x"),
}


@pytest.mark.parametrize("backend", ["local"], indirect=True)
@pytest.mark.parametrize("field", list(BAD_READS))
async def test_bad_reads_are_invalid_argument(table_stub: Any, field: str) -> None:
    await make_table(table_stub)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in table_stub.ReadRows(BAD_READS[field]):
            pass
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details.message
    assert details.violated_fields == [field.strip()]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_unknown_snapshot_and_too_early_time_are_not_found(
    table_stub: Any, backend: Any
) -> None:
    await make_table(table_stub)
    append(backend, "r", "t", rows(0, 10))
    early = Timestamp()
    early.FromMilliseconds(1000)
    for request in (
        pb.ReadRowsRequest(namespace="r", table="t", snapshot_id=42),
        pb.ReadRowsRequest(namespace="r", table="t", as_of_time=early),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in table_stub.ReadRows(request):
                pass
        assert rpc_error_details(exc.value).reason == "SNAPSHOT_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.GetSnapshot(pb.GetSnapshotRequest(namespace="r", table="t", snapshot_id=1))
    assert rpc_error_details(exc.value).reason == "SNAPSHOT_NOT_FOUND"


async def test_register_table_from_its_metadata_file(table_stub: Any, backend: Any) -> None:
    created = await make_table(table_stub)
    append(backend, "r", "t", rows(0, 10))
    table = (await table_stub.GetTable(pb.GetTableRequest(namespace="r", table="t"))).table
    await table_stub.DeleteTable(pb.DeleteTableRequest(namespace="r", table="t"))
    registered = (
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(
                namespace="r", table="t", metadata_location=table.metadata_location
            )
        )
    ).table
    assert registered.id == created.id
    assert registered.stats.row_count == 10
    back, _ = await read_arrow(table_stub)
    assert back.num_rows == 10
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(
                namespace="r", table="t", metadata_location=table.metadata_location
            )
        )
    assert rpc_error_details(exc.value).reason == "TABLE_ALREADY_EXISTS"
    # The same files under a second name: purging either would delete the other's files.
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(
                namespace="r", table="twin", metadata_location=table.metadata_location
            )
        )
    details = rpc_error_details(exc.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "LOCATION_IN_USE",
    )
    assert "r.t" in details.message
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.GetTable(pb.GetTableRequest(namespace="r", table="twin"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    missing = table.metadata_location.replace(".metadata.json", "-gone.metadata.json")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.RegisterTable(
            pb.RegisterTableRequest(namespace="r", table="u", metadata_location=missing)
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    # Refused before any file system is asked: not metadata, a query or fragment a file system
    # would cut off, a scheme with no credentials here, and names no bucket can have (a file
    # system would look those up as hosts, and answer UNAVAILABLE seconds later).
    for location in (
        "/etc/passwd",
        "file:///etc/passwd#.metadata.json",
        "https://example.invalid/t.metadata.json",
        "s3://../../x.metadata.json",
        "s3://Bad_Bucket/x.metadata.json",
        "s3a://a/x.metadata.json",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await table_stub.RegisterTable(
                pb.RegisterTableRequest(namespace="r", table="u", metadata_location=location),
                timeout=5,
            )
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, location
        assert "metadata_location" in (exc.value.details() or ""), location


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_compressed_arrow_reads_back_identical_and_smaller(
    table_stub: Any, backend: Any
) -> None:
    from lakehouse.client.arrow import read_table_async

    await make_table(table_stub)
    append(backend, "r", "t", rows(0, 20_000))
    plain, plain_responses = await read_arrow(table_stub)
    for compression in (rows_pb2.ARROW_COMPRESSION_ZSTD, rows_pb2.ARROW_COMPRESSION_LZ4_FRAME):
        packed, responses = await read_arrow(table_stub, arrow_compression=compression)
        assert packed.equals(plain)
        assert sum(r.ByteSize() for r in responses) < sum(r.ByteSize() for r in plain_responses)
        helper = await read_table_async(table_stub, "r", "t", compression=compression)
        assert helper.sort_by("id").equals(plain.sort_by("id"))


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_unknown_enum_values_are_invalid(table_stub: Any) -> None:
    await make_table(table_stub)
    for request, field in (
        (pb.ReadRowsRequest(namespace="r", table="t", format=9), "format"),  # type: ignore[arg-type]
        (
            pb.ReadRowsRequest(namespace="r", table="t", arrow_compression=42),  # type: ignore[arg-type]
            "arrow_compression",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in table_stub.ReadRows(request):
                pass
        assert rpc_error_details(exc.value).violated_fields == [field]


async def test_a_data_file_deleted_behind_the_tables_back_is_a_damaged_table(
    table_stub: Any, backend: Any
) -> None:
    # Not UNAVAILABLE: the object store answers, and no retry brings the file back.
    await make_table(table_stub)
    table = append(backend, "r", "t", rows(0, 10))
    (data_file,) = [task.file.file_path for task in table.scan().plan_files()]
    table.io.delete(data_file)

    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await read_arrow(table_stub)
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert details.reason == "TABLE_FILE_MISSING"
    assert "r.t" in details.message
