"""do_put in every write mode: a packed WriteRowsRequest whose rows are the stream's batches.

A real server on both backends, pyarrow's Flight client, and the table read back through
pyiceberg on the same catalog (a reader nobody here wrote): each mode replaces what WriteRows
replaces, in one commit, with WriteRows' request ids, errors and bounds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2
from server.test_flight import off_loop, start_server, started
from server.test_flight_limits import WaitingSource, waiting_server

from fixtures.iceberg import direct_catalog
from fixtures.net import LOOPBACK
from lakehouse.core.ingest_requests import IngestRequests, QueuedRows
from lakehouse.server.app import LakehouseServer
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2_grpc,
    rows_pb2,
    schema_pb2,
    table_service_pb2_grpc,
)
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import table_service_pb2 as tpb

__all__ = ["start_server", "started"]  # fixtures, used by name

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
DATE = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_DATE)
APPEND = ingest_pb2.WRITE_MODE_APPEND
OVERWRITE = ingest_pb2.WRITE_MODE_OVERWRITE
PARTITIONS = ingest_pb2.WRITE_MODE_OVERWRITE_PARTITIONS
UPSERT = ingest_pb2.WRITE_MODE_UPSERT
DAY1, DAY2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
EVENTS = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("day", pa.date32(), nullable=False),
    ]
)
USERS = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])


def write_command(table: str, mode: int = APPEND, **fields: Any) -> bytes:
    """A do_put command: a WriteRowsRequest on ``rc.<table>``, packed in an Any."""
    packed = any_pb2.Any()
    packed.Pack(ipb.WriteRowsRequest(namespace="rc", table=table, write_mode=mode, **fields))
    return packed.SerializeToString()


def put_write(
    client: flight.FlightClient,
    command: bytes,
    data: pa.Table,
    options: flight.FlightCallOptions | None = None,
) -> ipb.WriteRowsResponse:
    """do_put of ``data`` one row per batch (so a stream of several); its one answer."""
    writer, reader = client.do_put(
        flight.FlightDescriptor.for_command(command), data.schema, options=options
    )
    answers = []
    with writer:
        for batch in data.to_batches(max_chunksize=1):
            writer.write_batch(batch)
        writer.done_writing()
        while (answer := reader.read()) is not None:
            answers.append(ipb.WriteRowsResponse.FromString(answer.to_pybytes()))
    assert len(answers) == 1, answers
    return answers[0]


async def create_tables(server: Any) -> None:
    """``rc.users`` (key ``id``), ``rc.events`` (partitioned by ``day``) and ``rc.plain``."""
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        await stub.CreateNamespace(tpb.CreateNamespaceRequest(name="rc"))
        fields = [
            schema_pb2.Field(name="id", type=LONG, required=True),
            schema_pb2.Field(name="name", type=STRING),
        ]
        keyed = schema_pb2.Schema(fields=fields, identifier_field_names=["id"])
        await stub.CreateTable(tpb.CreateTableRequest(namespace="rc", table="users", schema=keyed))
        plain = schema_pb2.Schema(fields=fields)
        await stub.CreateTable(tpb.CreateTableRequest(namespace="rc", table="plain", schema=plain))
        daily = schema_pb2.Schema(
            fields=[*fields, schema_pb2.Field(name="day", type=DATE, required=True)]
        )
        by_day = schema_pb2.PartitionSpec(
            fields=[schema_pb2.PartitionField(source_column="day", transform="identity")]
        )
        await stub.CreateTable(
            tpb.CreateTableRequest(
                namespace="rc", table="events", schema=daily, partition_spec=by_day
            )
        )


def events(*rows: tuple[int, str, dt.date]) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "name": n, "day": d} for i, n, d in rows], schema=EVENTS)


def users(*rows: tuple[int, str]) -> pa.Table:
    return pa.Table.from_pylist([{"id": i, "name": n} for i, n in rows], schema=USERS)


def table_rows(server: Any, table: str) -> list[tuple[Any, ...]]:
    """The table's rows as pyiceberg reads them from the catalog, sorted by id."""
    loaded = direct_catalog(server.settings).load_table(("rc", table))
    found = loaded.scan().to_arrow().to_pylist()
    return sorted(tuple(row.values()) for row in found)


def snapshots(server: Any, table: str) -> int:
    return len(direct_catalog(server.settings).load_table(("rc", table)).snapshots())


def connect(server: Any) -> flight.FlightClient:
    return flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")


async def test_each_write_mode_is_one_commit_of_the_whole_stream(started: Any) -> None:
    await create_tables(started)
    client = connect(started)

    async def write(table: str, data: pa.Table, mode: int, **fields: Any) -> Any:
        before = snapshots(started, table)
        command = write_command(table, mode, **fields)
        answer = await off_loop(lambda: put_write(client, command, data))
        assert snapshots(started, table) == before + 1  # the batches are one commit
        assert answer.result.snapshot_id
        return answer.result

    first = events((1, "a", DAY1), (2, "b", DAY1), (3, "c", DAY2))
    appended = await write("events", first, APPEND)
    assert (appended.rows_written, appended.rows_deleted) == (3, 0)
    # The daily reload: DAY1's rows are replaced by the stream's, DAY2's stay.
    reloaded = await write("events", events((7, "g", DAY1), (8, "h", DAY1)), PARTITIONS)
    assert (reloaded.rows_written, reloaded.rows_deleted) == (2, 2)
    assert table_rows(started, "events") == [(3, "c", DAY2), (7, "g", DAY1), (8, "h", DAY1)]

    await write("plain", users((1, "a"), (2, "b"), (3, "c")), APPEND)
    replaced = await write("plain", users((10, "j")), OVERWRITE, overwrite_filter="id < 3")
    assert (replaced.rows_written, replaced.rows_deleted) == (1, 2)
    assert table_rows(started, "plain") == [(3, "c"), (10, "j")]

    await write("users", users((1, "a"), (2, "b")), APPEND)
    upserted = await write("users", users((1, "A"), (3, "c")), UPSERT)
    assert (upserted.rows_written, upserted.rows_updated) == (2, 1)
    # A change stream: the change-type column deletes a key.
    changes = pa.table(
        {
            "id": pa.array([2, 4], pa.int64()),
            "name": pa.array([None, "d"], pa.string()),
            "_change_type": pa.array(["DELETE", "UPSERT"]),
        }
    )
    await write("users", changes, UPSERT)
    assert table_rows(started, "users") == [(1, "A"), (3, "c"), (4, "d")]


async def test_a_request_id_retried_gets_the_first_answer_on_either_port(started: Any) -> None:
    await create_tables(started)
    client = connect(started)
    await off_loop(lambda: put_write(client, write_command("events"), events((1, "a", DAY1))))
    command = write_command("events", PARTITIONS, request_id="reload-2024-01-01")
    reload = events((5, "e", DAY1), (6, "f", DAY1))
    first = await off_loop(lambda: put_write(client, command, reload))
    again = await off_loop(lambda: put_write(client, command, reload))
    assert not first.result.already_written
    assert again.result.already_written
    assert again.result.snapshot_id == first.result.snapshot_id
    # The same id on the gRPC port is the same write.
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{started.grpc_port}") as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        request = ipb.WriteRowsRequest(
            namespace="rc",
            table="events",
            write_mode=PARTITIONS,
            request_id="reload-2024-01-01",
            arrow_record_batch=rows_pb2.ArrowRecordBatch(
                serialized_record_batch=reload.to_batches()[0].serialize().to_pybytes()
            ),
            arrow_schema=rows_pb2.ArrowSchema(serialized_schema=EVENTS.serialize().to_pybytes()),
        )
        over_grpc = await ingest.WriteRows(request)
    assert over_grpc.result.already_written
    assert table_rows(started, "events") == [(5, "e", DAY1), (6, "f", DAY1)]
    assert snapshots(started, "events") == 2


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_bad_commands_and_rows_are_clear_errors_and_change_nothing(started: Any) -> None:
    await create_tables(started)
    client = connect(started)
    await off_loop(lambda: put_write(client, write_command("users"), users((1, "a"))))
    other = any_pb2.Any()
    other.Pack(tpb.GetTableRequest(namespace="rc", table="users"))
    rows = users((2, "b"))
    cases: list[tuple[bytes, pa.Table, type[Exception], str]] = [
        (other.SerializeToString(), rows, pa.ArrowInvalid, "[MALFORMED_REQUEST] descriptor.cmd"),
        (write_command(""), rows, pa.ArrowInvalid, "table"),
        (
            write_command("users", json_rows=rows_pb2.JsonRows()),
            rows,
            pa.ArrowInvalid,
            "json_rows",
        ),
        (
            write_command("users", arrow_schema=rows_pb2.ArrowSchema(serialized_schema=b"x")),
            rows,
            pa.ArrowInvalid,
            "arrow_schema",
        ),
        (write_command("users", 99), rows, pa.ArrowInvalid, "write_mode"),
        (write_command("users", OVERWRITE), rows, pa.ArrowInvalid, "overwrite_filter"),
        (
            write_command("users", OVERWRITE, overwrite_filter="nope = 1"),
            rows,
            pa.ArrowInvalid,
            "[INVALID_ROW_FILTER] overwrite_filter",
        ),
        (write_command("plain", UPSERT), rows, pa.ArrowInvalid, "identifier"),
        (write_command("users", request_id="x" * 200), rows, pa.ArrowInvalid, "request_id"),
        (
            write_command("users", UPSERT),
            pa.table({"id": pa.array(["one"]), "name": pa.array(["b"])}),
            pa.ArrowInvalid,
            "id",
        ),
        (write_command("nowhere"), rows, KeyError, "TABLE_NOT_FOUND"),
    ]
    for command, data, kind, text in cases:
        with pytest.raises(kind) as caught:
            await off_loop(lambda command=command, data=data: put_write(client, command, data))
        assert text in str(caught.value), str(caught.value)
    assert table_rows(started, "users") == [(1, "a")]
    assert snapshots(started, "users") == 1


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_stream_past_one_requests_limits_is_refused_and_changes_nothing(
    start_server: Callable[..., Any],
) -> None:
    """The stream is bounded as one WriteRows request: refused once it passes the limits,
    while it is still being sent, with nothing written."""
    server = await start_server(
        ingest={"max_request_bytes": 1024 * 1024, "max_request_rows": 50_000}
    )
    await create_tables(server)
    client = connect(server)
    await off_loop(lambda: put_write(client, write_command("users"), users((1, "a"))))
    command = write_command("users", UPSERT, request_id="too-big")
    wide = pa.table(
        {
            "id": pa.array(range(20_000), pa.int64()),
            "name": pa.array(["x" * 100] * 20_000, pa.string()),
        }
    )  # ~2.2 MB of buffers: over 1 MiB counted twice (a copy for casts), in 20 batches

    def send(data: pa.Table) -> None:
        writer, reader = client.do_put(flight.FlightDescriptor.for_command(command), data.schema)
        with writer:
            for batch in data.to_batches(max_chunksize=1000):
                writer.write_batch(batch)
            writer.done_writing()
            reader.read()

    with pytest.raises(pa.ArrowInvalid, match=r"\[REQUEST_TOO_LARGE\] batches"):
        await off_loop(lambda: send(wide))
    many = pa.table({"id": pa.array(range(60_000), pa.int64())})
    with pytest.raises(pa.ArrowInvalid, match=r"\[TOO_MANY_ROWS\] batches"):
        await off_loop(lambda: send(many))
    assert table_rows(server, "users") == [(1, "a")]
    assert snapshots(server, "users") == 1
    # Within the limits, the same request id writes (it was not spent by the refusals).
    answer = await off_loop(lambda: put_write(client, command, wide.slice(0, 100)))
    assert answer.result.rows_written == 100 and not answer.result.already_written


class SlowWrite(IngestRequests):
    """The core's ingest, where a write waits ``delay`` seconds before it is queued (as a
    full write buffer or a commit handed off to another replica makes it wait); ``settled``
    is set once the write committed or failed."""

    def __init__(self, server: LakehouseServer, delay: float) -> None:
        super().__init__(server.ingest, server.tables)
        self._delay = delay
        self.settled = asyncio.Event()

    async def enqueue(self, *args: Any, **kwargs: Any) -> QueuedRows:
        try:
            await asyncio.sleep(self._delay)
            queued = await super().enqueue(*args, **kwargs)
        except BaseException:
            self.settled.set()
            raise
        queued.future.add_done_callback(lambda _: self.settled.set())
        return queued


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_a_write_past_the_stream_limit_times_out_and_its_retry_is_exact(
    started: Any,
) -> None:
    """Past the stream limit (1 s) the call ends with SERVER_DEADLINE and the write is left to
    finish or fail on its own; the same request sent again then answers the commit or makes
    it: the row is in the table once."""
    await create_tables(started)
    requests = SlowWrite(started, 1.5)
    slow = waiting_server(started, WaitingSource(), 1.0, requests=requests, stream_seconds=1.0)
    command = write_command("users", UPSERT, request_id="slow-upsert")
    try:
        client = flight.connect(f"grpc://{LOOPBACK}:{slow.port}")
        with pytest.raises(flight.FlightTimedOutError, match=r"\[SERVER_DEADLINE\].*request_id"):
            await off_loop(lambda: put_write(client, command, users((1, "a"))))
        client.close()
    finally:
        await slow.stop(5.0)
    await asyncio.wait_for(requests.settled.wait(), 30)
    committed = snapshots(started, "users") == 1
    again = await off_loop(lambda: put_write(connect(started), command, users((1, "a"))))
    assert again.result.already_written == committed
    third = await off_loop(lambda: put_write(connect(started), command, users((1, "a"))))
    assert third.result.already_written
    assert table_rows(started, "users") == [(1, "a")]
    assert snapshots(started, "users") == 1
