"""A Flight do_get's stream, read on the Flight thread: what it holds and when it lets go.

do_get opens its stream on the event loop, then reads the batches on the Flight thread that
sends them (no hop to the loop per batch). What a user checks: the read-ahead it holds
(``lakehouse_read_ahead_bytes``, as ``/metrics`` shows it) and its slot of the bound on
calls at once are given back when the client goes away mid-stream or the server shuts down,
and a data file that vanished after the plan fails the read with a clear error. Real
in-process servers on 127.0.0.1, tables written with pyiceberg on the same catalog,
pyarrow's Flight client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from prometheus_client import REGISTRY
from server.test_flight import off_loop, start_server

from fixtures.iceberg import append, direct_catalog
from fixtures.net import LOOPBACK
from lakehouse.config import Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.v1 import schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as pb

__all__ = ["start_server"]  # the Flight tests' server fixture, used here

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)

NS, TABLE = "reads", "wide"
#: Files and rows: 4 files of 64k rows of about 1 KiB each decode to 256 MiB in all, far more
#: than a stalled stream's window and read-ahead (KiBs on disk: the notes repeat).
FILES, ROWS_PER_FILE, NOTE_BYTES = 4, 65_536, 1_024
#: The longest a test waits for something it started (budget given back, a slot freed).
SETTLE_SECONDS = 30.0


async def wide_table(server: LakehouseServer, backend: Settings) -> None:
    """``NS.TABLE``: (id long, note string) in FILES data files, created through the API."""
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        await stub.CreateNamespace(pb.CreateNamespaceRequest(name=NS))
        long = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
        string = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
        fields = [
            schema_pb2.Field(name="id", type=long),
            schema_pb2.Field(name="note", type=string),
        ]
        await stub.CreateTable(
            pb.CreateTableRequest(
                namespace=NS, table=TABLE, schema=schema_pb2.Schema(fields=fields)
            )
        )
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("note", pa.large_string())])
    note = pa.array(["n" * NOTE_BYTES] * ROWS_PER_FILE, pa.large_string())
    for i in range(FILES):
        ids = pa.array(range(i * ROWS_PER_FILE, (i + 1) * ROWS_PER_FILE), pa.int64())
        await asyncio.to_thread(append, backend, NS, TABLE, pa.table([ids, note], schema=schema))


def ticket_of(client: flight.FlightClient) -> flight.Ticket:
    """The one endpoint's ticket of a plain read of the whole table."""
    command = pb.ReadRowsRequest(namespace=NS, table=TABLE).SerializeToString()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
    assert len(info.endpoints) == 1
    return info.endpoints[0].ticket


def read_ahead_bytes() -> float:
    """``lakehouse_read_ahead_bytes``, the gauge /metrics shows, from the process's registry
    (one gauge for every in-process server of the test process, and a stopped server serves
    no /metrics): a test compares it with its value before the test's reads."""
    value = REGISTRY.get_sample_value("lakehouse_read_ahead_bytes")
    assert value is not None
    return value


async def until(condition: Callable[[], bool]) -> None:
    """Waits (bounded) until ``condition`` holds."""
    async with asyncio.timeout(SETTLE_SECONDS):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_client_that_goes_away_mid_stream_gives_back_budget_and_slot(
    start_server: Callable[..., Any], backend: Settings
) -> None:
    """A client reads one batch, holds the stream (the server's read-ahead fills up and stays
    charged), then goes away: the read-ahead is given back and no slot stays taken; the next
    read returns every row."""
    server = await start_server(max_concurrent_calls=2)
    before = read_ahead_bytes()  # what other tests of this process left (nothing)
    await wide_table(server, backend)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    ticket = await off_loop(lambda: ticket_of(client))
    reader = await off_loop(lambda: client.do_get(ticket))
    first = await off_loop(reader.read_chunk)
    assert first.data.num_rows > 0
    # The stream is open and stalled: its read-ahead is charged, its slot is free.
    await until(lambda: read_ahead_bytes() > before)
    assert server.call_slots.in_use == 0
    reader.cancel()
    client.close()
    await until(lambda: read_ahead_bytes() == before)
    assert server.call_slots.in_use == 0

    again = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    table = await off_loop(lambda: again.do_get(ticket_of(again)).read_all())
    assert table.num_rows == FILES * ROWS_PER_FILE
    assert sorted(table.column("id").to_pylist()) == list(range(FILES * ROWS_PER_FILE))
    again.close()


async def test_a_data_file_gone_since_the_plan_fails_the_read_clearly(
    start_server: Callable[..., Any], backend: Settings
) -> None:
    """A data file deleted behind the table's back after get_flight_info: do_get ends with
    TABLE_FILE_MISSING naming the file (never INTERNAL), and holds no read-ahead after."""
    server = await start_server()
    before = read_ahead_bytes()  # what other tests of this process left (nothing)
    await wide_table(server, backend)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    ticket = await off_loop(lambda: ticket_of(client))
    table = await asyncio.to_thread(direct_catalog(backend).load_table, (NS, TABLE))
    files = sorted(task.file.file_path for task in table.scan().plan_files())
    assert len(files) == FILES
    gone = Path(urlparse(files[-1]).path)
    gone.unlink()
    with pytest.raises(pa.ArrowInvalid, match=r"\[TABLE_FILE_MISSING\]") as caught:
        await off_loop(lambda: client.do_get(ticket).read_all())
    assert gone.name in str(caught.value)
    await until(lambda: read_ahead_bytes() == before)
    assert server.call_slots.in_use == 0
    client.close()


async def test_a_stream_still_read_after_the_grace_period_ends_unavailable(
    start_server: Callable[..., Any], backend: Settings
) -> None:
    """Shutdown while a client reads a long stream slowly: after the grace period (0.5 s) the
    stream ends with UNAVAILABLE (SHUTTING_DOWN, so the client reads elsewhere), the server
    stops, and the stream's read-ahead is given back."""
    server = await start_server()
    before = read_ahead_bytes()  # what other tests of this process left (nothing)
    await wide_table(server, backend)
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")
    ticket = await off_loop(lambda: ticket_of(client))
    reader = await off_loop(lambda: client.do_get(ticket))
    await off_loop(reader.read_chunk)

    def read_slowly() -> int:
        """Rows read, one batch every 50 ms, until the stream ends (it must not end whole)."""
        rows = 0
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return rows
            rows += chunk.data.num_rows
            time.sleep(0.05)

    reading = asyncio.create_task(off_loop(read_slowly))
    await until(lambda: read_ahead_bytes() > before)
    stopping = asyncio.create_task(server.stop(grace=0.5))
    with pytest.raises(flight.FlightUnavailableError, match=r"\[SHUTTING_DOWN\]"):
        await asyncio.wait_for(reading, SETTLE_SECONDS)
    await asyncio.wait_for(stopping, SETTLE_SECONDS)
    assert not server.abandoned_calls
    await until(lambda: read_ahead_bytes() == before)
    client.close()
