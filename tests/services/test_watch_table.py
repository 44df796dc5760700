"""WatchTable over the wire: resumable, in commit order, from any writer (both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pyarrow as pa
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from fixtures.grpc_errors import rpc_error_details
from fixtures.iceberg import direct_catalog
from fixtures.net import LOOPBACK
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc, rows_pb2, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
#: Bounds each wait for an event; a commit from another writer is polled about every second.
EVENT_TIMEOUT = 20.0


@pytest_asyncio.fixture
async def ingest(channel: grpc.aio.Channel, table_stub: Any) -> AsyncIterator[Any]:
    await table_stub.CreateNamespace(tpb.CreateNamespaceRequest(name="w"))
    await table_stub.CreateTable(
        tpb.CreateTableRequest(
            namespace="w",
            table="t",
            schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
        )
    )
    yield ingest_service_pb2_grpc.IngestServiceStub(channel)


def rows(*ids: int) -> rows_pb2.JsonRows:
    out = []
    for i in ids:
        s = struct_pb2.Struct()
        s.update({"id": i})
        out.append(s)
    return rows_pb2.JsonRows(rows=out)


async def write(ingest: Any, *ids: int) -> int:
    reply = await ingest.WriteRows(
        ipb.WriteRowsRequest(namespace="w", table="t", json_rows=rows(*ids))
    )
    snapshot_id: int = reply.result.snapshot_id
    return snapshot_id


class Watcher:
    """A WatchTable call read in the background, its events in a queue."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for event in self.call:
            await self.events.put(event)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.events.get(), EVENT_TIMEOUT)

    async def accepted(self) -> bool:
        """Waits for the response headers: whether the server accepted the watch (it checked
        the table and the cursor), or refused it (its status came alone)."""
        headers = await asyncio.wait_for(self.call.initial_metadata(), EVENT_TIMEOUT)
        return ("lakehouse-watch", "accepted") in tuple(headers or ())

    async def close(self) -> None:
        self.call.cancel()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await self.task


def watch(table_stub: Any, after: int | None = None) -> Watcher:
    request = tpb.WatchTableRequest(namespace="w", table="t")
    if after is not None:
        request.after_snapshot_id = after
    return Watcher(table_stub.WatchTable(request))


async def test_a_watch_resumes_from_its_cursor_and_follows_new_commits(
    ingest: Any, table_stub: Any
) -> None:
    first = await write(ingest, 1)
    second = await write(ingest, 2)
    third = await write(ingest, 3)

    watcher = watch(table_stub, after=first)
    try:
        got = [(await watcher.next()).snapshot for _ in range(2)]
        assert [s.snapshot_id for s in got] == [second, third]
        assert got[1].parent_snapshot_id == second
        fourth = await write(ingest, 4)
        assert (await watcher.next()).snapshot.snapshot_id == fourth
        assert watcher.events.empty()
    finally:
        await watcher.close()


async def test_from_now_events_carry_writer_offsets_and_other_writers_commits(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    await write(ingest, 1)
    watcher = watch(table_stub)
    try:
        assert await watcher.accepted()  # it has taken the current snapshot as its cursor

        async def stream() -> AsyncIterator[ipb.AppendRowsRequest]:
            yield ipb.AppendRowsRequest(
                namespace="w", table="t", writer_id="feed", offset=0, json_rows=rows(10, 11)
            )

        acks = [a async for a in ingest.AppendRows(stream())]
        event = await watcher.next()
        assert event.snapshot.snapshot_id == acks[0].result.snapshot_id
        assert dict(event.writer_offsets) == {"feed": 2}

        # A commit this service did not make (another engine on the same catalog) arrives too.
        table = direct_catalog(backend).load_table(("w", "t"))
        table.append(pa.table({"id": pa.array([99], pa.int64())}))
        other = await watcher.next()
        assert other.snapshot.snapshot_id == table.current_snapshot().snapshot_id  # type: ignore[union-attr]
        assert other.snapshot.operation == "append"
    finally:
        await watcher.close()


async def test_headers_say_a_watch_was_accepted_before_any_event(
    ingest: Any, table_stub: Any
) -> None:
    """A quiet table sends nothing for a long time: the headers are how a client knows its
    watch is running, and a refused watch ends without them being followed by anything."""
    await write(ingest, 1)
    watcher = watch(table_stub)
    try:
        assert await watcher.accepted()
        assert watcher.events.empty()
    finally:
        await watcher.close()
    refused = Watcher(table_stub.WatchTable(tpb.WatchTableRequest(namespace="w", table="nope")))
    assert not await refused.accepted()
    assert (await _ended_with(refused)).code == grpc.StatusCode.NOT_FOUND


async def _watch_once_there_is_room(stub: Any) -> Watcher:
    """A watch, retried while the server still counts a watcher that just hung up."""
    deadline = asyncio.get_running_loop().time() + EVENT_TIMEOUT
    while True:
        watcher = watch(stub)
        if await watcher.accepted():
            return watcher
        assert (await _ended_with(watcher)).code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert asyncio.get_running_loop().time() < deadline, "the first watcher never left"
        await asyncio.sleep(0.05)


async def _ended_with(watcher: Watcher) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(watcher.task, EVENT_TIMEOUT)
    return rpc_error_details(caught.value)


async def test_a_lost_cursor_and_a_dropped_table_end_the_watch(
    ingest: Any, table_stub: Any, backend: Any
) -> None:
    first = await write(ingest, 1)
    second = await write(ingest, 2)
    await table_stub.RollbackTable(
        tpb.RollbackTableRequest(namespace="w", table="t", snapshot_id=first)
    )
    await write(ingest, 3)
    off = await _ended_with(watch(table_stub, after=second))
    assert (off.code, off.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CURSOR_NOT_IN_LINEAGE")
    unknown = await _ended_with(watch(table_stub, after=123))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CURSOR_EXPIRED")

    watcher = watch(table_stub)
    assert await watcher.accepted()
    await table_stub.DeleteTable(tpb.DeleteTableRequest(namespace="w", table="t"))
    dropped = await _ended_with(watcher)
    assert dropped.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_watchers_are_bounded_per_process(backend: Any) -> None:
    from lakehouse.server.app import LakehouseServer

    server = LakehouseServer(backend.model_copy(update={"max_watchers": 1}))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            stub = table_service_pb2_grpc.TableServiceStub(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            await stub.CreateNamespace(tpb.CreateNamespaceRequest(name="w"))
            await stub.CreateTable(
                tpb.CreateTableRequest(
                    namespace="w",
                    table="t",
                    schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="id", type=LONG)]),
                )
            )
            await write(ingest, 1)
            first = watch(stub)
            assert await first.accepted()
            refused = await _ended_with(watch(stub))
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "WATCHERS_EXHAUSTED",
            )
            await first.close()
            again = await _watch_once_there_is_room(stub)  # the first one's slot is free again
            new = await write(ingest, 2)
            assert (await again.next()).snapshot.snapshot_id == new
            await again.close()
    finally:
        await asyncio.wait_for(server.stop(), 30)


async def test_events_carry_the_rows_they_changed(ingest: Any, table_stub: Any) -> None:
    first = await write(ingest, 1, 2)
    request = tpb.WatchTableRequest(
        namespace="w", table="t", after_snapshot_id=first, include_rows=True
    )
    watcher = Watcher(table_stub.WatchTable(request))
    try:
        appended = await write(ingest, 3, 4)
        await table_stub.DeleteRows(
            tpb.DeleteRowsRequest(namespace="w", table="t", row_filter="id = 1")
        )
        # Messages: event, schema, batches... for each snapshot, in commit order.
        events: list[Any] = []
        rows: list[list[dict[str, Any]]] = []
        schema: pa.Schema | None = None
        while sum(len(r) for r in rows) < 3:  # 2 rows appended, 1 deleted
            message = await watcher.next()
            if message.HasField("snapshot"):
                events.append(message.snapshot)
                rows.append([])
            elif message.HasField("arrow_schema"):
                schema = pa.ipc.read_schema(pa.py_buffer(message.arrow_schema.serialized_schema))
            else:
                batch = pa.ipc.read_record_batch(
                    pa.py_buffer(message.arrow_record_batch.serialized_record_batch), schema
                )
                rows[-1].extend(batch.to_pylist())

        assert events[0].snapshot_id == appended
        assert sorted(r["id"] for r in rows[0]) == [3, 4]
        assert rows[1] == [
            {
                "id": 1,
                "_change_type": "DELETE",
                "_change_ordinal": 0,
                "_commit_snapshot_id": events[1].snapshot_id,
            }
        ]
    finally:
        await watcher.close()
