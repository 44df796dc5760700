"""lakehouse.client.arrow: ReadRows streams to pyarrow, pyarrow to ingest requests.

The ReadRows streams here are synthesized in the documented wire format (rows.proto); the
read_table tests go through a real gRPC server (a small TableService that streams them) and
the generated stubs. A test against the lakehouse server itself lives with the ReadRows tests.
"""

from __future__ import annotations

import datetime
import decimal
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import json_format, struct_pb2

from lakehouse.client.arrow import (
    DEFAULT_MAX_BATCH_BYTES,
    ReadRowsStreamError,
    append_rows_requests,
    read_rows_batches_async,
    read_rows_reader,
    read_rows_request,
    read_rows_to_arrow,
    read_rows_to_arrow_async,
    read_table,
    read_table_async,
    write_rows_request,
)
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2,
    rows_pb2,
    table_service_pb2,
    table_service_pb2_grpc,
)

Response = table_service_pb2.ReadRowsResponse
UTC = datetime.UTC
MIB = 1024 * 1024


# --- wire helpers: what the server sends -----------------------------------------------------


def schema_message(schema: pa.Schema, snapshot_id: int | None = 7) -> Response:
    response = Response(
        arrow_schema=rows_pb2.ArrowSchema(serialized_schema=schema.serialize().to_pybytes())
    )
    if snapshot_id is not None:
        response.snapshot_id = snapshot_id
    return response


def batch_message(batch: pa.RecordBatch, snapshot_id: int | None = 7) -> Response:
    response = Response(
        arrow_record_batch=rows_pb2.ArrowRecordBatch(
            serialized_record_batch=batch.serialize().to_pybytes(), row_count=batch.num_rows
        )
    )
    if snapshot_id is not None:
        response.snapshot_id = snapshot_id
    return response


def arrow_stream(table: pa.Table, max_chunksize: int | None = None) -> list[Response]:
    batches = table.to_batches(max_chunksize=max_chunksize)
    return [schema_message(table.schema), *(batch_message(b) for b in batches)]


def json_message(*rows: dict[str, Any]) -> Response:
    structs = [json_format.ParseDict(row, struct_pb2.Struct()) for row in rows]
    return Response(json_rows=rows_pb2.JsonRows(rows=structs))


async def aiter_of(responses: Iterable[Response]) -> AsyncIterator[Response]:
    for response in responses:
        yield response


def many_types_table(rows: int = 50) -> pa.Table:
    """A table of most types an Iceberg table maps to, nested ones included, with nulls."""

    def maybe(i: int, value: Any) -> Any:
        return None if i % 7 == 3 else value

    paris = datetime.timezone(datetime.timedelta(hours=1))
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("small", pa.int32()),
            pa.field("flag", pa.bool_()),
            pa.field("ratio", pa.float32()),
            pa.field("amount", pa.float64()),
            pa.field("price", pa.decimal128(38, 10)),
            pa.field("cents", pa.decimal128(9, 2)),
            pa.field("name", pa.string()),
            pa.field("big_text", pa.large_string()),
            pa.field("blob", pa.binary()),
            pa.field("uuid", pa.binary(16)),
            pa.field("day", pa.date32()),
            pa.field("clock", pa.time64("us")),
            pa.field("ts", pa.timestamp("us")),
            pa.field("ts_utc", pa.timestamp("us", tz="UTC")),
            pa.field("ts_ns_paris", pa.timestamp("ns", tz="+01:00")),
            pa.field("tags", pa.list_(pa.string())),
            pa.field(
                "address",
                pa.struct(
                    [
                        pa.field("city", pa.string()),
                        pa.field("zip", pa.int32()),
                        pa.field("lines", pa.list_(pa.string())),
                    ]
                ),
            ),
            pa.field("attrs", pa.map_(pa.string(), pa.int64())),
            pa.field("points", pa.list_(pa.struct([("x", pa.float64()), ("y", pa.float64())]))),
        ],
        metadata={b"origin": b"test"},
    )
    base = datetime.datetime(2024, 3, 1, 12, 30, tzinfo=UTC)
    data = {
        "id": list(range(rows)),
        "small": [maybe(i, i - 25) for i in range(rows)],
        "flag": [maybe(i, i % 2 == 0) for i in range(rows)],
        "ratio": [maybe(i, i / 4) for i in range(rows)],
        "amount": [maybe(i, i * 1.5) for i in range(rows)],
        "price": [maybe(i, decimal.Decimal(f"{i}.0123456789")) for i in range(rows)],
        "cents": [maybe(i, decimal.Decimal(f"-{i}.25")) for i in range(rows)],
        "name": [maybe(i, f"name-{i}-ü") for i in range(rows)],
        "big_text": [maybe(i, "x" * i) for i in range(rows)],
        "blob": [maybe(i, bytes([i % 256]) * 3) for i in range(rows)],
        "uuid": [maybe(i, i.to_bytes(16, "big")) for i in range(rows)],
        "day": [
            maybe(i, datetime.date(2024, 1, 1) + datetime.timedelta(days=i)) for i in range(rows)
        ],
        "clock": [maybe(i, datetime.time(i % 24, i % 60, 1, 5)) for i in range(rows)],
        "ts": [maybe(i, datetime.datetime(2024, 1, 1, 0, 0, i % 60)) for i in range(rows)],
        "ts_utc": [maybe(i, base + datetime.timedelta(minutes=i)) for i in range(rows)],
        "ts_ns_paris": [
            maybe(i, datetime.datetime(2024, 6, 1, 8, 0, i % 60, tzinfo=paris)) for i in range(rows)
        ],
        "tags": [
            maybe(i, [f"t{j}" if j != 1 else None for j in range(i % 4)]) for i in range(rows)
        ],
        "address": [
            maybe(i, {"city": maybe(i + 1, f"c{i}"), "zip": i, "lines": [f"l{i}"] * (i % 3)})
            for i in range(rows)
        ],
        "attrs": [maybe(i, [(f"k{j}", j) for j in range(i % 3)]) for i in range(rows)],
        "points": [maybe(i, [{"x": float(i), "y": None}]) for i in range(rows)],
    }
    return pa.table(data, schema=schema)


# --- reading: sync -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_read_rows_round_trips_many_types(chunk: int | None) -> None:
    table = many_types_table()
    result = read_rows_to_arrow(arrow_stream(table, max_chunksize=chunk))
    assert result.schema.equals(table.schema, check_metadata=True)
    assert result.equals(table)
    assert result.to_pylist() == table.to_pylist()


def test_read_rows_reader_is_lazy() -> None:
    table = pa.table({"n": list(range(10))})
    consumed: list[int] = []

    def responses() -> Iterator[Response]:
        for i, response in enumerate(arrow_stream(table, max_chunksize=2)):
            consumed.append(i)
            yield response

    reader = read_rows_reader(responses())
    assert reader.schema == table.schema
    assert consumed == [0]  # only the schema message so far
    assert reader.read_next_batch().to_pydict() == {"n": [0, 1]}
    assert consumed == [0, 1]
    assert reader.read_all().to_pydict() == {"n": list(range(2, 10))}


def test_empty_result_keeps_the_schema() -> None:
    schema = many_types_table().schema
    result = read_rows_to_arrow([schema_message(schema)])
    assert result.num_rows == 0
    assert result.schema.equals(schema, check_metadata=True)


def test_messages_without_payload_and_empty_batches_are_skipped() -> None:
    table = pa.table({"n": pa.array([1, 2], pa.int64())})
    stream = [
        Response(snapshot_id=3),
        schema_message(table.schema),
        Response(snapshot_id=3),
        batch_message(pa.RecordBatch.from_pylist([], schema=table.schema)),
        *arrow_stream(table)[1:],
    ]
    assert read_rows_to_arrow(stream).equals(table)


def test_a_stream_without_messages_is_an_error() -> None:
    with pytest.raises(ReadRowsStreamError, match="without an Arrow schema"):
        read_rows_to_arrow([])
    with pytest.raises(ReadRowsStreamError, match="after 1 message"):
        read_rows_to_arrow([Response(snapshot_id=1)])


def test_a_batch_before_the_schema_is_an_error() -> None:
    table = pa.table({"n": [1]})
    with pytest.raises(ReadRowsStreamError, match="before the Arrow schema"):
        read_rows_to_arrow(arrow_stream(table)[1:])


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (schema_message(pa.schema([("n", pa.int64())])), "second Arrow schema"),
        (json_message({"n": 1}), "JSON rows in an ARROW stream"),
        (
            Response(arrow_record_batch=rows_pb2.ArrowRecordBatch(serialized_record_batch=b"junk")),
            "not an Arrow record batch",
        ),
        (
            Response(
                arrow_record_batch=rows_pb2.ArrowRecordBatch(
                    serialized_record_batch=pa.record_batch({"n": [1, 2]}).serialize().to_pybytes(),
                    row_count=5,
                )
            ),
            "row_count=5 but its batch holds 2 rows",
        ),
    ],
)
def test_bad_messages_after_the_schema_are_errors(extra: Response, match: str) -> None:
    stream = [*arrow_stream(pa.table({"n": [1, 2]})), extra]
    with pytest.raises(ReadRowsStreamError, match=match):
        read_rows_to_arrow(stream)


def test_a_corrupt_schema_is_an_error() -> None:
    bad = Response(arrow_schema=rows_pb2.ArrowSchema(serialized_schema=b"\x00\x01junk"))
    with pytest.raises(ReadRowsStreamError, match="not an Arrow schema"):
        read_rows_to_arrow([bad])


class FakeCall:
    """Iterates like a grpc call and records cancel(), as the real call object does."""

    def __init__(self, responses: list[Response]) -> None:
        self._responses = iter(responses)
        self.cancelled = False

    def __iter__(self) -> FakeCall:
        return self

    def __next__(self) -> Response:
        return next(self._responses)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def test_a_bad_stream_cancels_the_call() -> None:
    call = FakeCall([*arrow_stream(pa.table({"n": [1]})), json_message({"n": 2})])
    with pytest.raises(ReadRowsStreamError):
        read_rows_to_arrow(call)
    assert call.cancelled
    call = FakeCall(arrow_stream(pa.table({"n": [1]}))[1:])
    with pytest.raises(ReadRowsStreamError):
        read_rows_reader(call)
    assert call.cancelled


def test_errors_of_the_call_itself_pass_through() -> None:
    class Boom(Exception):
        pass

    def responses() -> Iterator[Response]:
        yield from arrow_stream(pa.table({"n": [1]}))
        raise Boom

    reader = read_rows_reader(responses())
    with pytest.raises(Boom):
        reader.read_all()


def test_json_rows_become_a_table() -> None:
    stream = [
        json_message({"id": "1", "name": "a", "amount": 1.5}, {"id": "2", "name": None}),
        Response(snapshot_id=4),
        json_message({"id": "3", "nested": {"x": [1, 2]}, "amount": 2}),
    ]
    result = read_rows_to_arrow(stream)
    # A Struct is a map and keeps no order: the columns come sorted, numbers as doubles.
    assert result.column_names == ["amount", "id", "name", "nested"]
    assert result.to_pylist() == [
        {"id": "1", "name": "a", "amount": 1.5, "nested": None},
        {"id": "2", "name": None, "amount": None, "nested": None},
        {"id": "3", "name": None, "amount": 2.0, "nested": {"x": [1.0, 2.0]}},
    ]
    assert result.schema.field("amount").type == pa.float64()


def test_json_with_no_rows_is_an_empty_table() -> None:
    result = read_rows_to_arrow([json_message()])
    assert result.num_rows == 0
    assert result.num_columns == 0


def test_arrow_in_a_json_stream_is_an_error() -> None:
    stream = [json_message({"n": 1}), schema_message(pa.schema([("n", pa.int64())]))]
    with pytest.raises(ReadRowsStreamError, match="Arrow data in a JSON stream"):
        read_rows_to_arrow(stream)


# --- reading: async ------------------------------------------------------------------------


async def test_async_round_trip_and_batches() -> None:
    table = many_types_table()
    result = await read_rows_to_arrow_async(aiter_of(arrow_stream(table, max_chunksize=10)))
    assert result.equals(table)
    assert result.schema.equals(table.schema, check_metadata=True)
    batches = [b async for b in read_rows_batches_async(aiter_of(arrow_stream(table, 10)))]
    assert [b.num_rows for b in batches] == [10] * 5
    assert pa.Table.from_batches(batches).equals(table)


async def test_async_empty_json_and_errors() -> None:
    schema = pa.schema([("n", pa.int64())])
    empty = await read_rows_to_arrow_async(aiter_of([schema_message(schema)]))
    assert empty.num_rows == 0
    assert empty.schema == schema
    assert [b async for b in read_rows_batches_async(aiter_of([schema_message(schema)]))] == []

    rows = await read_rows_to_arrow_async(aiter_of([json_message({"a": 1}), json_message()]))
    assert rows.to_pylist() == [{"a": 1.0}]
    json_batches = [b async for b in read_rows_batches_async(aiter_of([json_message({"a": 1})]))]
    assert pa.Table.from_batches(json_batches).to_pylist() == [{"a": 1.0}]

    with pytest.raises(ReadRowsStreamError, match="without an Arrow schema"):
        await read_rows_to_arrow_async(aiter_of([]))
    mixed = [schema_message(schema), json_message({"n": 1})]
    with pytest.raises(ReadRowsStreamError, match="JSON rows in an ARROW stream"):
        await read_rows_to_arrow_async(aiter_of(mixed))


# --- read_rows_request / read_table through a real gRPC server --------------------------------


def test_read_rows_request_fields() -> None:
    when = datetime.datetime(2024, 5, 1, tzinfo=UTC)
    request = read_rows_request(
        "sales", "orders", columns=["id", "address.city"], row_filter="id > 1", row_limit=5
    )
    assert list(request.columns.paths) == ["id", "address.city"]
    assert (request.row_filter, request.row_limit) == ("id > 1", 5)
    assert request.format == rows_pb2.ROW_FORMAT_ARROW
    assert request.WhichOneof("version") is None
    assert not read_rows_request("s", "t").HasField("columns")
    assert read_rows_request("s", "t", snapshot_id=0).WhichOneof("version") == "snapshot_id"
    timed = read_rows_request("s", "t", as_of_time=when)
    assert timed.as_of_time.ToDatetime(tzinfo=UTC) == when
    assert read_rows_request("s", "t", ref="audit").ref == "audit"
    with pytest.raises(ValueError, match="not both"):
        read_rows_request("s", "t", snapshot_id=1, as_of_time=when)
    with pytest.raises(ValueError, match="not a string"):
        read_rows_request("s", "t", columns="id")


class StreamingTableService(table_service_pb2_grpc.TableServiceServicer):
    """Streams a fixed table in the ReadRows wire format and records the requests."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.requests: list[table_service_pb2.ReadRowsRequest] = []
        self.metadata: list[dict[str, str | bytes]] = []

    def ReadRows(
        self, request: table_service_pb2.ReadRowsRequest, context: grpc.ServicerContext
    ) -> Iterator[Response]:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if request.table == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such table")
        table = self.table
        if request.columns.paths:
            table = table.select(list(request.columns.paths))
        yield from arrow_stream(table, max_chunksize=16)


@pytest.fixture
def table_server() -> Iterator[tuple[StreamingTableService, str]]:
    service = StreamingTableService(many_types_table(100))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    table_service_pb2_grpc.add_TableServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()


def test_read_table_over_grpc(table_server: tuple[StreamingTableService, str]) -> None:
    service, address = table_server
    with grpc.insecure_channel(address) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        # One plain ReadRows (this fake serves no read sessions: see test_arrow_server.py).
        everything = read_table(stub, "sales", "orders", timeout=10, max_streams=1)
        some = read_table(
            stub,
            "sales",
            "orders",
            columns=["id", "address"],
            row_filter="id > 3",
            snapshot_id=42,
            row_limit=10,
            metadata=[("x-team", "billing")],
        )
        with pytest.raises(grpc.RpcError) as info:
            read_table(stub, "sales", "missing", max_streams=1)
    assert everything.equals(service.table)
    assert some.equals(service.table.select(["id", "address"]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    request = service.requests[1]
    assert (request.namespace, request.table, request.row_filter) == ("sales", "orders", "id > 3")
    assert (request.snapshot_id, request.row_limit) == (42, 10)
    assert list(request.columns.paths) == ["id", "address"]
    assert service.metadata[1]["x-team"] == "billing"


async def test_read_table_async_over_grpc(
    table_server: tuple[StreamingTableService, str],
) -> None:
    service, address = table_server
    async with grpc.aio.insecure_channel(address) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        result = await read_table_async(
            stub, "sales", "orders", columns=["id"], timeout=10, max_streams=1
        )
        batches = [
            b async for b in read_rows_batches_async(stub.ReadRows(read_rows_request("s", "t")))
        ]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read_table_async(stub, "sales", "missing", max_streams=1)
    assert result.equals(service.table.select(["id"]))
    assert pa.Table.from_batches(batches).equals(service.table)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- writing: AppendRows -------------------------------------------------------------------


def decode_append(
    requests: Iterable[ingest_service_pb2.AppendRowsRequest],
) -> list[pa.RecordBatch]:
    """What the server does with a stream: keep the last schema, read each request's rows."""
    schema: pa.Schema | None = None
    batches = []
    for request in requests:
        if request.HasField("arrow_schema"):
            schema = pa.ipc.read_schema(pa.py_buffer(request.arrow_schema.serialized_schema))
        if not request.HasField("arrow_record_batch"):
            continue
        data = request.arrow_record_batch.serialized_record_batch
        if pa.ipc.read_message(pa.py_buffer(data)).type == "schema":  # a complete IPC stream
            stream_batches = list(pa.ipc.open_stream(pa.py_buffer(data)))
            assert len(stream_batches) == 1
            batch = stream_batches[0]
        else:
            assert schema is not None, "a record batch message before any schema"
            batch = pa.ipc.read_record_batch(pa.py_buffer(data), schema)
        assert request.arrow_record_batch.row_count == batch.num_rows
        batches.append(batch)
    return batches


def wide_table(rows: int) -> pa.Table:
    """10 columns of mixed types and widths, with nulls."""
    ids = pa.array(range(rows), pa.int64())
    return pa.table(
        {
            "id": ids,
            "user": pa.array([f"user-{i % 977}" for i in range(rows)]),
            "amount": pa.array([i * 0.25 if i % 11 else None for i in range(rows)]),
            "qty": pa.array([i % 100 for i in range(rows)], pa.int32()),
            "ok": pa.array([i % 3 == 0 for i in range(rows)]),
            "ts": pa.array(
                [1_700_000_000_000_000 + i for i in range(rows)], pa.timestamp("us", tz="UTC")
            ),
            "price": pa.array(
                [decimal.Decimal(i) / 100 for i in range(rows)], pa.decimal128(18, 2)
            ),
            "note": pa.array(["n" * (i % 40) if i % 5 else None for i in range(rows)]),
            "tags": pa.array([["a", "b"][: i % 3] for i in range(rows)], pa.list_(pa.string())),
            "region": pa.array(["eu", "us", "apac"][i % 3] for i in range(rows)),
        }
    )


def test_append_chunks_a_big_table_under_the_budget() -> None:
    table = wide_table(100_000)
    requests = list(
        append_rows_requests(
            "sales", "orders", table, writer_id="w-1", start_offset=1000, max_batch_bytes=MIB
        )
    )
    assert len(requests) > 2
    sizes = [len(r.arrow_record_batch.serialized_record_batch) for r in requests]
    assert max(sizes) < MIB
    first, rest = requests[0], requests[1:]
    assert (first.namespace, first.table, first.writer_id) == ("sales", "orders", "w-1")
    assert first.HasField("arrow_schema")
    assert all(not r.namespace and not r.table and not r.writer_id for r in rest)
    assert all(not r.HasField("arrow_schema") for r in rest)
    offsets = [r.offset for r in requests]
    counts = [r.arrow_record_batch.row_count for r in requests]
    assert offsets[0] == 1000
    assert all(offsets[i + 1] == offsets[i] + counts[i] for i in range(len(requests) - 1))
    assert offsets[-1] + counts[-1] == 1000 + table.num_rows
    rebuilt = pa.Table.from_batches(decode_append(requests))
    assert rebuilt.equals(table)
    assert rebuilt.schema.equals(table.schema, check_metadata=True)


@pytest.mark.parametrize("form", ["chunked_table", "reader", "batches", "batch"])
def test_append_accepts_tables_readers_and_batches(form: str) -> None:
    table = wide_table(3000)
    data: Any = {
        "chunked_table": pa.concat_tables([table.slice(0, 1000), table.slice(1000)]),
        "reader": pa.RecordBatchReader.from_batches(table.schema, table.to_batches(700)),
        "batches": iter(table.to_batches(700)),
        "batch": table.combine_chunks().to_batches()[0],
    }[form]
    requests = list(append_rows_requests("s", "t", data, max_batch_bytes=64 * 1024))
    assert all(not r.HasField("offset") for r in requests)  # no writer: no offsets
    assert all(len(r.arrow_record_batch.serialized_record_batch) <= 64 * 1024 for r in requests)
    assert pa.Table.from_batches(decode_append(requests)).equals(table)


def test_append_with_a_writer_counts_from_zero() -> None:
    requests = list(append_rows_requests("s", "t", wide_table(10), writer_id="w"))
    assert len(requests) == 1
    assert requests[0].HasField("offset")
    assert requests[0].offset == 0


def test_a_row_bigger_than_the_budget_goes_alone() -> None:
    table = pa.table({"id": [1, 2, 3], "blob": [b"x" * 5000, b"y" * 10, b"z" * 5000]})
    requests = list(append_rows_requests("s", "t", table, max_batch_bytes=1000))
    assert [r.arrow_record_batch.row_count for r in requests] == [1, 1, 1]
    assert pa.Table.from_batches(decode_append(requests)).equals(table)


def test_the_default_budget_keeps_a_big_batch_under_4_mib() -> None:
    # The figure: a 64k-row, 10-column batch is ~7 MB.
    table = wide_table(65_536).combine_chunks()
    requests = list(append_rows_requests("s", "t", table))
    assert len(requests) >= 2
    assert all(
        len(r.arrow_record_batch.serialized_record_batch) <= DEFAULT_MAX_BATCH_BYTES
        for r in requests
    )
    assert pa.Table.from_batches(decode_append(requests)).equals(table)


def test_empty_data() -> None:
    schema = pa.schema([("n", pa.int64())])
    (only,) = append_rows_requests("s", "t", schema.empty_table(), writer_id="w")
    assert (only.namespace, only.table, only.writer_id) == ("s", "t", "w")
    assert pa.ipc.read_schema(pa.py_buffer(only.arrow_schema.serialized_schema)) == schema
    assert only.WhichOneof("rows") is None
    assert not only.HasField("offset")
    assert list(append_rows_requests("s", "t", [])) == []
    zero_rows = pa.RecordBatch.from_pylist([], schema=schema)
    batch = pa.record_batch({"n": [1]}, schema=schema)
    requests = list(append_rows_requests("s", "t", [zero_rows, batch, zero_rows]))
    assert len(requests) == 1
    assert requests[0].arrow_record_batch.row_count == 1


def test_a_schema_change_resends_the_schema() -> None:
    one = pa.record_batch({"n": [1, 2]})
    two = pa.record_batch({"n": [3], "extra": ["x"]})
    requests = list(append_rows_requests("s", "t", [one, one, two, two]))
    assert [r.HasField("arrow_schema") for r in requests] == [True, False, True, False]
    assert [b.num_columns for b in decode_append(requests)] == [1, 1, 2, 2]


def test_dictionary_columns_go_as_ipc_streams() -> None:
    table = pa.table(
        {
            "id": list(range(2000)),
            "region": pa.array(["eu", "us", "apac"] * 666 + ["eu", "us"]).dictionary_encode(),
        }
    )
    requests = list(append_rows_requests("s", "t", table, max_batch_bytes=4096))
    assert len(requests) > 1
    assert not any(r.HasField("arrow_schema") for r in requests)
    assert all(len(r.arrow_record_batch.serialized_record_batch) <= 4096 for r in requests)
    assert pa.Table.from_batches(decode_append(requests)).equals(table)


def test_append_argument_errors() -> None:
    table = pa.table({"n": [1]})
    with pytest.raises(ValueError, match="needs a writer_id"):
        list(append_rows_requests("s", "t", table, start_offset=0))
    with pytest.raises(ValueError, match=">= 0"):
        list(append_rows_requests("s", "t", table, writer_id="w", start_offset=-1))
    with pytest.raises(ValueError, match="max_batch_bytes"):
        list(append_rows_requests("s", "t", table, max_batch_bytes=0))


def test_append_passes_the_invalid_row_policy() -> None:
    requests = append_rows_requests(
        "s",
        "t",
        pa.table({"n": [1]}),
        invalid_row_policy=ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER,
    )
    assert next(requests).invalid_row_policy == ingest_pb2.INVALID_ROW_POLICY_DEAD_LETTER


def test_append_sets_the_write_mode_on_the_first_request_only() -> None:
    table = pa.table({"n": list(range(100))})
    requests = list(
        append_rows_requests(
            "s",
            "t",
            table,
            writer_id="w",
            max_batch_bytes=256,
            write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
            overwrite_filter="n >= 0",
        )
    )
    assert len(requests) > 1
    first, *later = requests
    assert (first.write_mode, first.overwrite_filter) == (
        ingest_pb2.WRITE_MODE_OVERWRITE,
        "n >= 0",
    )
    # Later requests may only repeat them: leaving them unset is the smallest message.
    assert all(r.write_mode == ingest_pb2.WRITE_MODE_UNSPECIFIED for r in later)
    assert all(r.overwrite_filter == "" for r in later)
    (empty,) = append_rows_requests(
        "s",
        "t",
        table.schema.empty_table(),
        write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
        overwrite_filter="n > 5",
    )
    assert (empty.write_mode, empty.overwrite_filter) == (
        ingest_pb2.WRITE_MODE_OVERWRITE,
        "n > 5",
    )


def test_append_reads_its_input_lazily() -> None:
    produced = threading.Event()

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"n": [1]})
        produced.set()
        yield pa.record_batch({"n": [2]})

    requests = append_rows_requests("s", "t", batches())
    next(requests)
    assert not produced.is_set()
    next(requests)
    assert produced.is_set()


# --- writing: WriteRows --------------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        many_types_table(),
        pa.concat_tables([many_types_table(5), many_types_table(5)]),
        many_types_table().schema.empty_table(),
        pa.table({"region": pa.array(["eu", "us", "eu"]).dictionary_encode()}),
    ],
    ids=["many_types", "chunked", "empty", "dictionary"],
)
def test_write_rows_request_round_trips(table: pa.Table) -> None:
    request = write_rows_request(
        "sales",
        "orders",
        table,
        request_id="req-1",
        invalid_row_policy=ingest_pb2.INVALID_ROW_POLICY_REJECT,
    )
    assert (request.namespace, request.table, request.request_id) == ("sales", "orders", "req-1")
    assert request.invalid_row_policy == ingest_pb2.INVALID_ROW_POLICY_REJECT
    assert request.arrow_record_batch.row_count == table.num_rows
    assert not request.HasField("arrow_schema")  # a complete IPC stream carries its schema
    data = request.arrow_record_batch.serialized_record_batch
    rebuilt = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    assert rebuilt.equals(table)
    assert rebuilt.schema.equals(table.schema, check_metadata=True)


def test_write_rows_request_takes_a_record_batch() -> None:
    batch = pa.record_batch({"n": [1, 2, 3]})
    request = write_rows_request("s", "t", batch)
    data = request.arrow_record_batch.serialized_record_batch
    assert pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_batches() == [batch]


def test_write_rows_request_carries_the_write_mode() -> None:
    batch = pa.record_batch({"n": [1]})
    assert write_rows_request("s", "t", batch).write_mode == ingest_pb2.WRITE_MODE_UNSPECIFIED
    request = write_rows_request(
        "s",
        "t",
        batch,
        write_mode=ingest_pb2.WRITE_MODE_OVERWRITE,
        overwrite_filter="n = 1",
    )
    assert (request.write_mode, request.overwrite_filter) == (
        ingest_pb2.WRITE_MODE_OVERWRITE,
        "n = 1",
    )
