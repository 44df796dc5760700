"""``AsyncLakehouse`` against a real ``lakehouse serve``: the sync client's flows on grpc.aio,
and ``decode_error`` on the raw refusals of the generated stubs (sync and aio)."""

from __future__ import annotations

import asyncio
import decimal
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pytest

from fixtures.net import free_port
from fixtures.serve_process import ServeProcess, serve_process
from lakehouse.client import AsyncLakehouse, Lakehouse
from lakehouse.client.errors import LakehouseError, decode_error
from lakehouse.client.jobs import JobState
from lakehouse.client.retry import RetryPolicy
from lakehouse.v1 import schema_pb2, table_service_pb2_grpc
from lakehouse.v1 import table_service_pb2 as pb

ORDERS = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("region", pa.string()),
        pa.field("amount", pa.decimal128(12, 2)),
    ]
)


def orders(ids: range) -> pa.Table:
    return pa.table(
        {
            "id": list(ids),
            "region": ["eu" if i % 2 else "us" for i in ids],
            "amount": [decimal.Decimal(i) for i in ids],
        },
        schema=ORDERS,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(tmp_path_factory.mktemp("high-level-async"), {}) as process:
        yield process


async def test_the_async_client_creates_writes_appends_reads_and_runs_sql(
    server: ServeProcess,
) -> None:
    ns = f"a{uuid.uuid4().hex[:8]}"
    async with AsyncLakehouse(server.target) as lh:
        assert (await lh.create_namespace(ns)).name == ns
        assert (await lh.create_namespace(ns, exist_ok=True)).name == ns
        table = (ns, "orders")
        await lh.create_table(table, ORDERS, identifier_fields=["id"])
        assert await lh.schema(table) == ORDERS

        first = await lh.write(table, orders(range(0, 4)), request_id="r-1")
        assert not first.already_written
        assert (await lh.write(table, orders(range(0, 4)), request_id="r-1")).already_written
        assert await lh.append(table, orders(range(4, 6)), writer_id="w") == 2
        # the same rows again from offset 0: already in, nothing is written twice
        assert await lh.append(table, orders(range(4, 6)), writer_id="w", start_offset=0) == 2
        upsert = pa.table({"id": [0], "region": ["xx"], "amount": [decimal.Decimal(9)]}, ORDERS)
        await lh.write(table, upsert, mode="upsert")

        rows = await lh.read(table, filter="region = 'xx' OR id >= 4")
        assert sorted(rows.column("id").to_pylist()) == [0, 4, 5]

        job = await lh.wait(await lh.sql(f"SELECT count(*) AS n FROM {ns}.orders"), timeout=120)
        assert job.state is JobState.SUCCEEDED
        assert lh.preview(job).to_pylist() == [{"n": 6}]

        with pytest.raises(LakehouseError) as missing:
            await lh.read((ns, "nope"))
        assert missing.value.reason == "TABLE_NOT_FOUND"
        assert missing.value.metadata.get("table") == "nope"


async def test_the_async_client_waits_for_a_server_that_is_not_up_yet(tmp_path: Path) -> None:
    port = free_port()
    server = ServeProcess(tmp_path / "late", {"LAKEHOUSE_GRPC_PORT": str(port)})
    refusals: list[LakehouseError] = []
    started: list[asyncio.Task[None]] = []

    def start_on_first_refusal(error: LakehouseError, attempt: int, delay: float) -> None:
        refusals.append(error)
        if attempt == 1:  # the server starts while the client backs off and retries
            started.append(asyncio.get_running_loop().create_task(asyncio.to_thread(server.start)))

    policy = RetryPolicy(max_attempts=200, initial_backoff=0.1, max_backoff=0.2)
    try:
        async with AsyncLakehouse(
            f"127.0.0.1:{port}", retry=policy, on_retry=start_on_first_refusal
        ) as lh:
            namespace = await lh.create_namespace("late", exist_ok=True)
        await started[0]
    finally:
        server.kill()
    assert namespace.name == "late"
    assert refusals[0].code == grpc.StatusCode.UNAVAILABLE
    assert len(refusals) >= 1


async def test_decode_error_reads_aio_refusals(server: ServeProcess) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.GetTable(pb.GetTableRequest(namespace="no", table="such"))
        error = decode_error(raw.value)
        assert (error.code, error.reason, error.domain) == (
            grpc.StatusCode.NOT_FOUND,
            "NAMESPACE_NOT_FOUND",
            "lakehouse.v1",
        )
        bad = pb.CreateTableRequest(
            namespace="x", table="t", schema=schema_pb2.Schema(fields=[schema_pb2.Field(name="x")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.CreateTable(bad)
        error = decode_error(invalid.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.violated_fields == ["schema.fields[0].type"]
        assert error.reason == "INVALID_SCHEMA"
        assert error.status is not None
        assert "LakehouseError(code=INVALID_ARGUMENT" in repr(error)


def test_decode_error_reads_sync_refusals_and_connection_failures(server: ServeProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.CreateNamespace(pb.CreateNamespaceRequest(name="bad name!"))
        error = decode_error(raw.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.violated_fields == ["name"]
        assert error.field_violations[0].description
    # Nothing listens: the client's own UNAVAILABLE, with no status trailer and no reason.
    with grpc.insecure_channel(f"127.0.0.1:{free_port()}") as nowhere:
        stub = table_service_pb2_grpc.TableServiceStub(nowhere)
        with pytest.raises(grpc.RpcError) as down:
            stub.ListNamespaces(pb.ListNamespacesRequest(), timeout=5)
    error = decode_error(down.value)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert (error.reason, error.status, error.retry_delay) == ("", None, None)


def test_the_package_exports_both_clients() -> None:
    assert Lakehouse.__name__ == "Lakehouse"
    assert AsyncLakehouse.__name__ == "AsyncLakehouse"


async def test_the_async_client_spreads_calls_over_its_channels(tmp_path: Path) -> None:
    with serve_process(tmp_path / "spread", {}) as process:
        async with AsyncLakehouse(process.target, channels=2) as lh:
            await lh.create_namespace("spread")
            await lh.create_table("spread.t", ORDERS)
            await asyncio.gather(*(lh.get_table("spread.t") for _ in range(4)))
        assert len(process.peers("GetTable")) == 2, process.logs()
