"""Arrow bombs against a real ``lakehouse serve`` process.

Issue 13: an Arrow IPC record batch whose null-type column claims 3e8 rows (a couple of
hundred bytes on the wire) was committed and took the server to 7.1 GB; a 49 KB
zstd-compressed batch that decodes to 1.6 GB did the same; at 1e9 rows the answer was
INTERNAL (ArrowMemoryError). Now the size of a request is read from its Arrow headers and
charged to the write buffers before anything is decoded: each bomb is refused
(INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never INTERNAL), nothing is committed, the server's
peak RSS grows by less than ``RSS_GROWTH_BOUND``, and Health answers throughout.

The server's address space is capped (``cap_address_space``) so that running these tests
against code without the fix fails in the server rather than exhausting a shared machine.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.arrow_ipc import ForgedBatch, zstd_zeros
from fixtures.grpc_errors import rpc_error_details
from fixtures.process_memory import MIB, HealthProbe, cap_address_space, peak_rss
from fixtures.serve_process import ServeProcess, serve_process, settings_env
from lakehouse.v1 import ingest_service_pb2 as ipb
from lakehouse.v1 import ingest_service_pb2_grpc, rows_pb2, schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as tpb

NS, TABLE = "bombs", "events"
#: What one refused bomb may add to the server's peak RSS (the old code added gigabytes).
RSS_GROWTH_BOUND = 500 * MIB
#: Address space the server may grow by before its allocations fail (see the module doc).
ADDRESS_SPACE_HEADROOM = 6 * 1024 * MIB
CALL_TIMEOUT = 120.0
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}

LONG = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_LONG)
STRING = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_STRING)
DOUBLE = schema_pb2.DataType(primitive=schema_pb2.PRIMITIVE_TYPE_DOUBLE)


def null_column(rows: int) -> tuple[bytes, pa.Schema]:
    """An honest pyarrow batch: one null-type column of ``rows`` rows, no buffers at all."""
    batch = pa.record_batch([pa.nulls(rows)], names=["note"])
    return batch.serialize().to_pybytes(), batch.schema


def zstd_doubles(nbytes: int, frame_bytes: int = 8 * MIB) -> tuple[bytes, pa.Schema]:
    """A zstd-compressed double column that really decompresses to ``nbytes`` of zeros."""
    template = pa.record_batch([pa.array([0.0], pa.float64())], names=["amount"])
    forged = ForgedBatch.of(template, "zstd")
    rows = nbytes // 8
    forged.set_rows(rows).set_node(0, length=rows, nulls=0).set_body(
        [b"", zstd_zeros(nbytes, frame_bytes)]
    )
    return forged.message(), template.schema


def zstd_string(nbytes: int) -> tuple[bytes, pa.Schema]:
    """One row whose string value really decompresses to ``nbytes`` zero bytes."""
    template = pa.record_batch([pa.array(["x"], pa.large_string())], names=["note"])
    forged = ForgedBatch.of(template, "zstd")
    offsets = (-1).to_bytes(8, "little", signed=True) + struct.pack("<qq", 0, nbytes)
    forged.set_body([b"", offsets, zstd_zeros(nbytes)])
    return forged.message(), template.schema


BOMBS = {
    "null_column_3e8_rows": lambda: null_column(300_000_000),
    "zstd_1_6_GB": lambda: zstd_doubles(200 * 8 * MIB),
    "null_column_1e9_rows": lambda: null_column(1_000_000_000),
}


@pytest.fixture
def server(local_settings: Any, tmp_path: Path) -> Iterator[ServeProcess]:
    with serve_process(tmp_path / "server", settings_env(local_settings)) as server:
        with grpc.insecure_channel(server.target) as channel:
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            tables.CreateNamespace(tpb.CreateNamespaceRequest(name=NS), timeout=CALL_TIMEOUT)
            fields = [
                schema_pb2.Field(name="id", type=LONG),
                schema_pb2.Field(name="note", type=STRING),
                schema_pb2.Field(name="amount", type=DOUBLE),
            ]
            tables.CreateTable(
                tpb.CreateTableRequest(
                    namespace=NS, table=TABLE, schema=schema_pb2.Schema(fields=fields)
                ),
                timeout=CALL_TIMEOUT,
            )
        cap_address_space(server.pid, ADDRESS_SPACE_HEADROOM)
        yield server


def snapshot_count(server: ServeProcess) -> int:
    with grpc.insecure_channel(server.target) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        got = tables.GetTable(tpb.GetTableRequest(namespace=NS, table=TABLE), timeout=30)
    return int(got.table.stats.snapshot_count)


def assert_refused(error: grpc.RpcError | Any) -> None:
    details = rpc_error_details(error)
    assert details.code in REFUSED, details
    assert details.reason, details
    if details.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert details.violated_fields, details


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_write_rows_bomb_is_refused_before_it_is_decoded(server: ServeProcess, bomb: str) -> None:
    payload, schema = BOMBS[bomb]()
    assert len(payload) < 64 * 1024  # a few bytes on the wire...
    request = ipb.WriteRowsRequest(
        namespace=NS,
        table=TABLE,
        arrow_schema=rows_pb2.ArrowSchema(serialized_schema=schema.serialize().to_pybytes()),
        arrow_record_batch=rows_pb2.ArrowRecordBatch(serialized_record_batch=payload),
    )
    before = peak_rss(server.pid)
    with grpc.insecure_channel(server.target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        with HealthProbe(lambda timeout: server.health(timeout)).running() as probe:
            for _ in range(3):  # ...sent a few times, in case one slipped through
                with pytest.raises(grpc.RpcError) as refused:
                    ingest.WriteRows(request, timeout=CALL_TIMEOUT)
                assert_refused(refused.value)
    growth = peak_rss(server.pid) - before
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth // MIB} MiB"
    assert probe.failures == [] and probe.answers > 0
    assert snapshot_count(server) == 0
    assert server.proc is not None and server.proc.poll() is None


def test_append_rows_bomb_is_refused_in_its_acknowledgement(server: ServeProcess) -> None:
    payload, schema = null_column(300_000_000)
    first = ipb.AppendRowsRequest(
        namespace=NS,
        table=TABLE,
        arrow_schema=rows_pb2.ArrowSchema(serialized_schema=schema.serialize().to_pybytes()),
        arrow_record_batch=rows_pb2.ArrowRecordBatch(serialized_record_batch=payload),
    )
    bomb, zipped = zstd_doubles(200 * 8 * MIB)
    second = ipb.AppendRowsRequest(
        arrow_schema=rows_pb2.ArrowSchema(serialized_schema=zipped.serialize().to_pybytes()),
        arrow_record_batch=rows_pb2.ArrowRecordBatch(serialized_record_batch=bomb),
    )
    before = peak_rss(server.pid)
    with grpc.insecure_channel(server.target) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        acks = list(ingest.AppendRows(iter([first, second]), timeout=CALL_TIMEOUT))
    assert len(acks) == 2
    for ack in acks:
        assert ack.WhichOneof("response") == "error", ack
        assert ack.error.code in {c.value[0] for c in REFUSED}, ack.error
    growth = peak_rss(server.pid) - before
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth // MIB} MiB"
    assert snapshot_count(server) == 0


# -- in-process: each refusal's reason, and the shared budget ----------------------------------


async def _in_process(backend: Any, ingest: Any = None) -> Any:
    from lakehouse.config import IngestSettings
    from lakehouse.server.app import LakehouseServer

    settings = backend.model_copy(update={"ingest": ingest or IngestSettings()})
    server = LakehouseServer(settings)
    await server.start()
    return server


async def _make_table(channel: grpc.aio.Channel) -> None:
    tables = table_service_pb2_grpc.TableServiceStub(channel)
    await tables.CreateNamespace(tpb.CreateNamespaceRequest(name=NS))
    fields = [
        schema_pb2.Field(name="id", type=LONG),
        schema_pb2.Field(name="note", type=STRING),
        schema_pb2.Field(name="amount", type=DOUBLE),
    ]
    await tables.CreateTable(
        tpb.CreateTableRequest(namespace=NS, table=TABLE, schema=schema_pb2.Schema(fields=fields))
    )


def _write(payload: bytes, schema: pa.Schema) -> ipb.WriteRowsRequest:
    return ipb.WriteRowsRequest(
        namespace=NS,
        table=TABLE,
        arrow_schema=rows_pb2.ArrowSchema(serialized_schema=schema.serialize().to_pybytes()),
        arrow_record_batch=rows_pb2.ArrowRecordBatch(serialized_record_batch=payload),
    )


def _lie_buffer_outside_body() -> tuple[bytes, pa.Schema]:
    template = pa.record_batch([pa.array([1.0, 2.0], pa.float64())], names=["amount"])
    forged = ForgedBatch.of(template)
    offset, length = forged.buffers()[1]
    forged.set_buffer(1, offset, length + 1024)
    return forged.message(), template.schema


def _lie_rows_without_bytes() -> tuple[bytes, pa.Schema]:
    template = pa.record_batch([pa.array([1.0, 2.0], pa.float64())], names=["amount"])
    forged = ForgedBatch.of(template).set_rows(1000).set_node(0, length=1000)
    return forged.message(), template.schema


def _lie_compression_prefix() -> tuple[bytes, pa.Schema]:
    template = pa.record_batch([pa.array([1.0, 2.0], pa.float64())], names=["amount"])
    forged = ForgedBatch.of(template, "zstd")
    offset, _ = forged.buffers()[1]
    body = bytearray(forged.body)
    body[offset : offset + 8] = (2**40).to_bytes(8, "little")  # a terabyte from 2 doubles
    forged.body = bytes(body)
    return forged.message(), template.schema


@pytest.mark.parametrize(
    ("make", "reason", "field"),
    [
        (lambda: null_column(1_000_001), "TOO_MANY_ROWS", "arrow_record_batch"),
        (lambda: zstd_string(512 * MIB), "REQUEST_TOO_LARGE", "arrow_record_batch"),
        (_lie_buffer_outside_body, "INVALID_ROWS", "arrow_record_batch"),
        (_lie_rows_without_bytes, "INVALID_ROWS", "arrow_record_batch"),
        (_lie_compression_prefix, "INVALID_ROWS", "arrow_record_batch"),
    ],
    ids=["too_many_rows", "too_large", "buffer_outside_body", "rows_without_bytes", "prefix"],
)
async def test_each_lie_is_invalid_argument_with_its_reason(
    backend: Any, make: Any, reason: str, field: str
) -> None:
    server = await _in_process(backend)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            await _make_table(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ingest.WriteRows(_write(*make()))
            details = rpc_error_details(refused.value)
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert details.reason == reason, details
            assert any(f.startswith(field) for f in details.violated_fields), details
            tables = table_service_pb2_grpc.TableServiceStub(channel)
            got = await tables.GetTable(tpb.GetTableRequest(namespace=NS, table=TABLE))
            assert got.table.stats.snapshot_count == 0
    finally:
        await server.stop()


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_concurrent_requests_share_the_buffer_budget_while_decoding(backend: Any) -> None:
    """Decoding is charged before it starts: requests that together exceed the buffers wait
    (bounded) and then get RESOURCE_EXHAUSTED with RetryInfo, never INTERNAL."""
    from lakehouse.config import IngestSettings

    ingest_settings = IngestSettings(
        commit_delay_ms=2000,  # the first stays buffered while the others arrive
        buffer_bytes=16 * MIB,
        table_buffer_bytes=16 * MIB,
        buffer_wait_seconds=0.5,
        max_request_bytes=12 * MIB,
    )
    server = await _in_process(backend, ingest_settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            await _make_table(channel)
            ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
            payload, schema = zstd_doubles(2 * MIB, frame_bytes=MIB)  # charged about 11 MiB
            calls = [ingest.WriteRows(_write(payload, schema)) for _ in range(6)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await server.stop()
    refused = [rpc_error_details(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    written = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(refused) + len(written) == len(calls), outcomes
    assert refused, "six 11 MiB charges cannot all fit a 16 MiB buffer"
    for details in refused:
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert details.reason == "WRITE_BUFFER_FULL", details
        assert details.retry_delay_seconds, details
    assert written
