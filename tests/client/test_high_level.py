"""The high-level ``Lakehouse`` client against a real ``lakehouse serve`` (embedded default).

Schemas round-trip through the server, writes are retry-safe, appends exactly once and
resumable, SQL jobs are waited for and previewed, refusals come back decoded, and retries
happen when the server is really down or really rate-limits (no mocks).
"""

from __future__ import annotations

import decimal
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest

from fixtures.net import free_port
from fixtures.serve_process import ServeProcess, serve_process
from lakehouse.client.errors import LakehouseError
from lakehouse.client.high_level import Lakehouse
from lakehouse.client.jobs import JobState
from lakehouse.client.retry import RetryPolicy
from lakehouse.client.schema import schema_to_arrow
from lakehouse.v1 import job_service_pb2 as jpb
from lakehouse.v1 import schema_pb2

#: Every type the contract carries, in the canonical Arrow spelling: it comes back equal.
EVERY_TYPE = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False, metadata={b"doc": b"the order id"}),
        pa.field("flag", pa.bool_()),
        pa.field("small", pa.int32()),
        pa.field("ratio", pa.float32()),
        pa.field("score", pa.float64()),
        pa.field("day", pa.date32()),
        pa.field("at", pa.time64("us")),
        pa.field("local_ts", pa.timestamp("us")),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("name", pa.string()),
        pa.field("key", pa.uuid()),
        pa.field("blob", pa.binary()),
        pa.field("hash", pa.binary(16)),
        pa.field("amount", pa.decimal128(12, 2)),
        pa.field("tags", pa.list_(pa.field("item", pa.string(), nullable=False))),
        pa.field(
            "attrs",
            pa.map_(pa.field("key", pa.string(), False), pa.field("value", pa.int64())),
        ),
        pa.field(
            "address",
            pa.struct(
                [pa.field("city", pa.string(), nullable=False), pa.field("zip", pa.string())]
            ),
        ),
    ]
)
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
            "amount": [decimal.Decimal(i) / 4 for i in ids],
        },
        schema=ORDERS,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(tmp_path_factory.mktemp("high-level"), {}) as process:
        yield process


@pytest.fixture
def lh(server: ServeProcess) -> Iterator[Lakehouse]:
    with Lakehouse(server.target, timeout=60) as client:
        yield client


def fresh_namespace(lh: Lakehouse) -> str:
    name = f"n{uuid.uuid4().hex[:8]}"
    lh.create_namespace(name)
    return name


def test_a_pyarrow_schema_round_trips_through_the_server(lh: Lakehouse) -> None:
    ns = fresh_namespace(lh)
    created = lh.create_table(f"{ns}.every", EVERY_TYPE, identifier_fields=["id"])
    assert list(created.schema.identifier_field_names) == ["id"]
    assert lh.schema(f"{ns}.every") == EVERY_TYPE
    assert lh.schema(f"{ns}.every").field("id").metadata == {b"doc": b"the order id"}
    # and the type names the server fills in
    by_name = {f.name: f.type_name for f in lh.get_table((ns, "every")).schema.fields}
    assert by_name["amount"] == "decimal(12,2)"
    assert by_name["tags"] == "list<string not null>"
    assert by_name["address"] == "struct<city:string not null,zip:string>"


def test_write_append_read_and_sql(lh: Lakehouse) -> None:
    ns = fresh_namespace(lh)
    table = f"{ns}.orders"
    lh.create_table(table, ORDERS, partition_by={"region": "identity"}, sort_by=["-id"])
    # create_table(exist_ok) is idempotent and returns the table as it is
    assert lh.create_table(table, ORDERS, exist_ok=True).schema.fields[0].name == "id"

    first = lh.write(table, orders(range(0, 3)), request_id="load-1")
    again = lh.write(table, orders(range(0, 3)), request_id="load-1")
    assert (first.rows_written, first.already_written) == (3, False)
    assert again.already_written
    assert again.snapshot_id == first.snapshot_id

    # exactly once: offsets count the writer's rows; re-sending from offset 0 skips what is in
    assert lh.append(table, orders(range(3, 8)), writer_id="w1") == 5
    assert lh.append(table, orders(range(3, 10)), writer_id="w1", start_offset=0) == 7
    assert lh.writer_offset(table, "w1") == 7

    got = lh.read(table, columns=["id", "amount"], filter="id >= 2")
    assert sorted(got.column("id").to_pylist()) == list(range(2, 10))
    assert got.column_names == ["id", "amount"]
    assert lh.read(table, limit=4).num_rows == 4

    job = lh.sql(f"SELECT region, count(*) AS n FROM {table} GROUP BY region ORDER BY region")
    assert "JobState." in repr(job)
    done = lh.wait(job, timeout=120)
    assert done.state is JobState.SUCCEEDED
    assert "state=<JobState.SUCCEEDED: 3>" in repr(done)
    assert done.rows_affected == 2
    preview = lh.preview(done)
    assert isinstance(preview, pa.Table)
    assert preview.to_pylist() == [{"region": "eu", "n": 5}, {"region": "us", "n": 5}]


def test_refusals_come_back_decoded(lh: Lakehouse) -> None:
    ns = fresh_namespace(lh)
    with pytest.raises(LakehouseError) as missing:
        lh.get_table(f"{ns}.nope")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert missing.value.reason == "TABLE_NOT_FOUND"
    assert missing.value.domain == "lakehouse.v1"

    bad = schema_pb2.Schema(
        fields=[
            schema_pb2.Field(name="id", type_name="long"),
            schema_pb2.Field(name="amount", type_name="decimal(40,2)"),
        ]
    )
    with pytest.raises(LakehouseError) as invalid:
        lh.create_table(f"{ns}.bad", bad)
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.violated_fields == ["schema.fields[1].type_name"]
    assert "1 to 38" in invalid.value.field_violations[0].description
    assert "INVALID_ARGUMENT INVALID_SCHEMA" in str(invalid.value)

    with pytest.raises(LakehouseError) as no_table:
        lh.sql(f"SELECT * FROM {ns}.no_such_table")
    assert no_table.value.reason == "TABLE_NOT_FOUND"

    failing = lh.sql("SELECT CAST('not a number' AS INTEGER) AS n")
    with pytest.raises(LakehouseError) as failed:
        lh.wait(failing, timeout=120)
    # the job's stored google.rpc.Status, decoded like a call's
    assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT, repr(failed.value)
    assert failed.value.reason
    assert lh.get_job(failing).state is JobState.FAILED


def test_a_call_waits_for_a_server_that_is_not_up_yet(tmp_path: Path) -> None:
    port = free_port()
    server = ServeProcess(tmp_path / "late", {"LAKEHOUSE_GRPC_PORT": str(port)})
    refusals: list[LakehouseError] = []

    def start_server_on_first_refusal(error: LakehouseError, attempt: int, delay: float) -> None:
        refusals.append(error)
        if attempt == 1:
            server.start()  # the client retries only once this returns: the server is up

    policy = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=0.5)
    try:
        with Lakehouse(
            f"127.0.0.1:{port}", retry=policy, on_retry=start_server_on_first_refusal
        ) as client:
            namespace = client.create_namespace("late", exist_ok=True)
    finally:
        server.kill()
    assert namespace.name == "late"
    assert refusals[0].code == grpc.StatusCode.UNAVAILABLE


def test_a_call_that_is_not_safe_to_repeat_is_not_retried(tmp_path: Path) -> None:
    port = free_port()
    attempts: list[int] = []
    with (
        Lakehouse(
            f"127.0.0.1:{port}",
            retry=RetryPolicy(max_attempts=5, initial_backoff=0.01),
            on_retry=lambda e, attempt, d: attempts.append(attempt),
        ) as client,
        pytest.raises(LakehouseError) as down,
    ):
        client.create_namespace("x")  # without exist_ok a repeat could hit ALREADY_EXISTS
    assert down.value.code == grpc.StatusCode.UNAVAILABLE
    assert attempts == []


def test_rate_limited_calls_wait_the_servers_retry_delay(tmp_path: Path) -> None:
    env = {"LAKEHOUSE_QUOTAS__CALLS_PER_SECOND": "2", "LAKEHOUSE_QUOTAS__BURST_CALLS": "1"}
    refusals: list[tuple[LakehouseError, float]] = []
    with (
        serve_process(tmp_path / "limited", env) as limited,
        Lakehouse(limited.target, on_retry=lambda e, a, d: refusals.append((e, d))) as client,
    ):
        # Back to back: the bucket holds one call, so the next ones are refused, then waited for.
        client.create_namespace("a")  # not retry-safe in general, but RATE_LIMITED is
        client.create_namespace("b")
        client.create_namespace("c")
    assert refusals, "the server did not rate-limit back-to-back calls"
    for error, delay in refusals:
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.reason == "RATE_LIMITED"
        assert error.retry_delay is not None
        assert delay == error.retry_delay  # the server's delay, not the client's backoff


def test_a_call_refused_by_an_overloaded_server_is_retried(tmp_path: Path) -> None:
    # The server handles one call at once; an open WatchJob stream holds that place, so a
    # CreateNamespace is refused SERVER_OVERLOADED (before anything ran). The first refusal
    # ends the stream; the client waits the server's delay and its retry goes through.
    env = {"LAKEHOUSE_MAX_CONCURRENT_CALLS": "1", "LAKEHOUSE_JOBS__WORKERS": "0"}
    refusals: list[LakehouseError] = []
    watches: list[Any] = []

    def on_retry(error: LakehouseError, attempt: int, delay: float) -> None:
        refusals.append(error)
        watches[0].cancel()

    with (
        serve_process(tmp_path / "overloaded", env) as server,
        Lakehouse(server.target, channels=1, on_retry=on_retry) as lh,
    ):
        job = lh.sql("SELECT 1")  # stays queued: no workers
        watches.append(lh.jobs.WatchJob(jpb.WatchJobRequest(job_id=job.id)))
        next(watches[0])  # the stream is open on the server: it holds the only place
        assert lh.create_namespace("after_overload").name == "after_overload"
    assert refusals, "the server did not refuse the call while its place was taken"
    assert all(e.reason == "SERVER_OVERLOADED" for e in refusals)
    assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refusals)
    assert all(e.retry_delay is not None and e.retry_delay > 0 for e in refusals)


def test_arrow_and_proto_schemas_agree_on_nullability() -> None:
    # No server: a required list element and map value survive the conversion both ways.
    from lakehouse.client.schema import schema_from_arrow

    proto = schema_from_arrow(EVERY_TYPE, identifier_fields=["id"])
    assert proto.fields[0].required
    assert proto.fields[14].type.list.element_required
    assert not proto.fields[15].type.map.value_required
    assert schema_to_arrow(proto) == EVERY_TYPE
    with pytest.raises(ValueError, match="uint64"):
        schema_from_arrow(pa.schema([pa.field("n", pa.uint64())]))


def test_time_travel_and_refs_read_old_rows(lh: Lakehouse) -> None:
    ns = fresh_namespace(lh)
    table = f"{ns}.t"
    lh.create_table(table, ORDERS)
    first = lh.write(table, orders(range(0, 2)))
    lh.write(table, orders(range(2, 5)))
    assert lh.read(table).num_rows == 5
    assert lh.read(table, snapshot_id=first.snapshot_id).num_rows == 2
    with pytest.raises(LakehouseError) as bad_ref:
        lh.read(table, ref="no-such-branch")
    assert bad_ref.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def test_threads_reading_at_once_share_one_pool_of_read_channels(server: ServeProcess) -> None:
    # The first reads open the channels past the pool's (read_streams - channels of them);
    # threads that read at once must not each open their own set, nor see a half-built one.
    threads, read_streams, channels = 8, 6, 2
    with Lakehouse(server.target, timeout=60, channels=channels, read_streams=read_streams) as lh:
        ns = fresh_namespace(lh)
        table = f"{ns}.orders"
        lh.create_table(table, ORDERS)
        lh.write(table, orders(range(0, 50)))
        start = threading.Barrier(threads)

        def read(_: int) -> list[int]:
            start.wait()
            return sorted(lh.read(table).column("id").to_pylist())

        # Threads switch every microsecond, not every 5 ms: a check-then-open race shows.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(read, range(threads)))
        finally:
            sys.setswitchinterval(switch)
        assert results == [list(range(50))] * threads
        assert len(lh._reads.opened) == read_streams - channels
