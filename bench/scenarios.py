"""The benchmark scenarios: one function each, registered in ``SCENARIOS`` at the bottom.

A scenario takes the :class:`~bench.harness.BenchContext` and returns one
:class:`~bench.harness.Result` whose ``name`` is the function's name; ``async def`` scenarios
run in their own event loop. To compare against a limit measured in the same run, take it from
``ctx.result_of("other_scenario")`` (run on demand if it has not run yet), and set
``limit_name``, ``limit_value`` and ``goal_ratio``: the harness computes ``ratio``.

Durations come from ``ctx.seconds(full, quick)`` / ``ctx.count(full, quick)`` so that
``--quick`` (CI) stays under two minutes in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError

from bench.harness import BenchContext, HarnessError, Result, Scenario, ServerProcess, closed_loop
from lakehouse.adapters.iceberg import catalog_properties
from lakehouse.client.arrow import read_rows_request, read_rows_to_arrow_async
from lakehouse.config import Settings
from lakehouse.v1 import table_service_pb2, table_service_pb2_grpc

#: Concurrent client streams of every "qps" scenario (the issues' "16 concurrent streams").
CONCURRENCY = 16


async def health_check_qps(ctx: BenchContext) -> Result:
    """grpc.health.v1.Health/Check from 16 concurrent streams: the floor an RPC costs here.

    Later qps scenarios (``get_table_qps``...) use this value as their limit.
    """
    server = ctx.shared_server()
    duration, warmup = ctx.seconds(10, 3), ctx.seconds(2, 1)
    async with ctx.aio_channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        cpu0, client0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        stats = await closed_loop(
            lambda: stub.Check(request, timeout=5),
            concurrency=CONCURRENCY,
            duration=duration,
            warmup=warmup,
        )
        stats.require_success("Health/Check")
        wall = time.perf_counter() - wall0
        server_cores = (server.cpu_seconds() - cpu0) / wall
        client_cores = (time.process_time() - client0) / wall
    return Result(
        "health_check_qps",
        stats.per_second,
        "calls/s",
        notes=(
            f"{stats.notes(CONCURRENCY)}; CPU used: server {server_cores:.2f} cores, "
            f"bench client {client_cores:.2f} cores (one grpc.aio channel)"
        ),
    )


def startup_seconds(ctx: BenchContext) -> Result:
    """Seconds from spawning `lakehouse serve` to Health/Check answering SERVING.

    Each try is a fresh process (on the embedded default also a fresh, empty data dir); the
    value is the median. Polled every 10 ms, so that is the resolution.
    """
    tries = ctx.count(5, 2)
    serving: list[float] = []
    port_open: list[float] = []
    for _ in range(tries):
        with ctx.spawn_server("startup") as server:
            assert server.serving_seconds is not None and server.port_open_seconds is not None
            serving.append(server.serving_seconds)
            port_open.append(server.port_open_seconds)
    return Result(
        "startup_seconds",
        statistics.median(serving),
        "s",
        notes=(
            f"median of {tries} fresh processes (min {min(serving):.2f}, max {max(serving):.2f}); "
            f"gRPC port open after {statistics.median(port_open):.2f}s (median)"
        ),
        better="lower",
    )


def idle_rss_mb(ctx: BenchContext) -> Result:
    """Resident memory (VmRSS) of a fresh server that is SERVING and has idled a few seconds."""
    idle = ctx.seconds(5, 2)
    with ctx.spawn_server("idle") as server:
        time.sleep(idle)
        rss, hwm = server.rss_kib() / 1024, server.hwm_kib() / 1024
    return Result(
        "idle_rss_mb",
        rss,
        "MiB",
        notes=f"VmRSS {idle:.0f}s after SERVING, no calls made; peak so far (VmHWM) {hwm:.1f} MiB",
        better="lower",
    )


# --- the read table: written once per run with pyiceberg, read through the service ----------

#: Namespace of the tables the bench writes.
BENCH_NAMESPACE = "bench"
#: Client channel options of the read scenarios ("just in case": messages are ~2 MiB).
READ_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
_MIB = 1024 * 1024


@dataclass
class BenchTable:
    """The table the read scenarios share: where it is and what it holds."""

    namespace: str
    name: str
    rows: int
    files: int
    parquet_bytes: int
    setup_seconds: float
    catalog: Catalog  # a pyiceberg catalog on the shared server's catalog, in the bench process

    def describe(self) -> str:
        """Rows, columns, files and size, for a result's notes."""
        return (
            f"{self.rows:,} rows x 10 cols in {self.files} files "
            f"({self.parquet_bytes / _MIB:.0f} MiB parquet)"
        )


def _rows(start: int, count: int) -> pa.Table:
    """``count`` rows of the read table from row ``start``: ints, floats, strings, a timestamp,
    a bool (pseudo-random, seeded by ``start``; pyarrow only, no numpy)."""

    def uniform(scale: float, seed: int) -> Any:
        return pc.multiply(pc.random(count, initializer=start * 16 + seed), scale)

    def ints(scale: int, seed: int, type_: pa.DataType | None = None) -> Any:
        return pc.cast(pc.floor(uniform(scale, seed)), type_ or pa.int64())

    ids = pa.array(range(start, start + count), pa.int64())
    customers = ints(100_000, 1)
    regions = pa.array(["eu-west", "eu-central", "us-east", "us-west", "apac", "latam"])
    categories = pa.array([f"category-{i:02d}" for i in range(40)])
    return pa.table(
        {
            "id": ids,
            "customer_id": customers,
            "quantity": ints(50, 2),
            "amount": pc.round(uniform(1000.0, 3), 2),
            "discount": uniform(0.3, 4),
            "region": pc.take(regions, ints(len(regions), 5, pa.int32())),
            "category": pc.take(categories, ints(len(categories), 6, pa.int32())),
            "note": pc.binary_join_element_wise(
                "order ", pc.cast(ids, pa.string()), " by ", pc.cast(customers, pa.string()), ""
            ),
            "event_time": pc.cast(
                pc.add(pc.multiply(ids, 1_000), 1_700_000_000_000_000), pa.timestamp("us")
            ),
            "active": pc.less(pc.random(count, initializer=start * 16 + 7), 0.7),
        }
    )


def open_catalog(ctx: BenchContext) -> Catalog:
    """A pyiceberg catalog on the shared server's catalog and warehouse, in the bench process."""
    settings = Settings(data_dir=ctx.shared_server().data_dir, **ctx.backend.settings)
    return load_catalog(settings.catalog.name, **catalog_properties(settings))


def bench_table(ctx: BenchContext) -> BenchTable:
    """The read table (1,000,000 rows; 200,000 with --quick), written on first use.

    There is no ingest API yet: it is appended with pyiceberg straight into the catalog the
    shared server uses, in 10 appends (10 data files, 10 snapshots). Not measured.
    """
    cached = ctx.fixtures.get("bench_table")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    started = time.perf_counter()
    rows, appends = ctx.count(1_000_000, 200_000), 10
    name = f"rows_{rows // 1000}k"
    catalog = open_catalog(ctx)
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(BENCH_NAMESPACE)
    identifier = (BENCH_NAMESPACE, name)
    if catalog.table_exists(identifier):
        catalog.drop_table(identifier)
    table = catalog.create_table(identifier, schema=_rows(0, 1).schema)
    step = rows // appends
    for start in range(0, rows, step):
        table.append(_rows(start, min(step, rows - start)))
    table = catalog.load_table(identifier)
    tasks = list(table.scan().plan_files())
    found = sum(t.file.record_count for t in tasks)
    if found != rows:
        raise HarnessError(f"the read table holds {found} rows, not {rows}")
    result = BenchTable(
        BENCH_NAMESPACE,
        name,
        rows,
        len(tasks),
        sum(t.file.file_size_in_bytes for t in tasks),
        time.perf_counter() - started,
        catalog,
    )
    ctx.fixtures["bench_table"] = result
    return result


async def get_table_qps(ctx: BenchContext) -> Result:
    """GetTable from 16 concurrent streams, against the RPC floor (health_check_qps)."""

    floor = ctx.result_of("health_check_qps")  # runs it first if it has not run yet
    table = bench_table(ctx)
    server = ctx.shared_server()
    request = table_service_pb2.GetTableRequest(namespace=table.namespace, table=table.name)
    async with ctx.aio_channel() as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        await stub.GetTable(request, timeout=30)  # set-up check: the table is there
        cpu0, client0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        stats = await closed_loop(
            lambda: stub.GetTable(request, timeout=5),
            concurrency=CONCURRENCY,
            duration=ctx.seconds(10, 3),
            warmup=ctx.seconds(2, 1),
        )
        stats.require_success("GetTable")
        wall = time.perf_counter() - wall0
        server_cores = (server.cpu_seconds() - cpu0) / wall
        client_cores = (time.process_time() - client0) / wall
    return Result(
        "get_table_qps",
        stats.per_second,
        "calls/s",
        limit_name="health_check_qps",
        limit_value=floor.value,
        goal_ratio=0.5,
        notes=(
            f"{stats.notes(CONCURRENCY)}; CPU used: server {server_cores:.2f} cores, "
            f"bench client {client_cores:.2f} cores; table of {table.files} snapshots"
        ),
    )


async def _read_all(stub: Any, table: BenchTable, compression: int = 0) -> pa.Table:
    """The whole table through ReadRows (ARROW), decoded into a pyarrow table."""

    request = read_rows_request(table.namespace, table.name, compression=compression)  # type: ignore[arg-type]
    return await read_rows_to_arrow_async(stub.ReadRows(request, timeout=300))


async def read_rows_arrow(ctx: BenchContext) -> Result:
    """ReadRows ARROW of the whole read table, against a direct in-process pyiceberg scan."""
    return await _read_rows_against_direct(ctx, "read_rows_arrow", 0)


async def read_rows_arrow_zstd(ctx: BenchContext) -> Result:
    """The same with ``arrow_compression = ZSTD`` (for networks slower than loopback)."""
    from lakehouse.v1 import rows_pb2

    return await _read_rows_against_direct(
        ctx, "read_rows_arrow_zstd", rows_pb2.ARROW_COMPRESSION_ZSTD
    )


async def _read_rows_against_direct(ctx: BenchContext, name: str, compression: int) -> Result:
    table = bench_table(ctx)
    tries = ctx.count(3, 1)
    identifier = (table.namespace, table.name)
    ours: list[float] = []
    direct: list[float] = []
    ours_bytes = direct_bytes = 0
    async with ctx.aio_channel_with(READ_CHANNEL_OPTIONS) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        # Warm-up, not measured: the server loads the table's metadata, both sides open files.

        await read_rows_to_arrow_async(
            stub.ReadRows(read_rows_request(*identifier, row_limit=1000), timeout=60)
        )
        table.catalog.load_table(identifier).scan(limit=1000).to_arrow()
        for _ in range(tries):  # interleaved, so that drifts hit both alike
            t0 = time.perf_counter()
            got = await _read_all(stub, table, compression)
            ours.append(time.perf_counter() - t0)
            if got.num_rows != table.rows:
                raise HarnessError(f"ReadRows returned {got.num_rows} rows, not {table.rows}")
            ours_bytes = got.nbytes
            del got
            t0 = time.perf_counter()
            ref = table.catalog.load_table(identifier).scan().to_arrow()
            direct.append(time.perf_counter() - t0)
            if ref.num_rows != table.rows:
                raise HarnessError(f"direct scan returned {ref.num_rows} rows, not {table.rows}")
            direct_bytes = ref.nbytes
            del ref
    best, best_direct = min(ours), min(direct)
    return Result(
        name,
        table.rows / best,
        "rows/s",
        limit_name="direct pyiceberg scan().to_arrow()",
        limit_value=table.rows / best_direct,
        goal_ratio=0.7,
        notes=(
            f"{ours_bytes / _MIB / best:.0f} MiB/s decoded Arrow ({best:.2f}s, best of {tries}); "
            f"direct {direct_bytes / _MIB / best_direct:.0f} MiB/s ({best_direct:.2f}s); "
            f"{table.describe()}, {ours_bytes / _MIB:.0f} MiB as Arrow"
        ),
    )


class _RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, server: ServerProcess, interval: float = 0.05) -> None:
        self._server = server
        self._interval = interval
        self._stop = threading.Event()
        self.peak_kib = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, self._server.rss_kib())
            except (OSError, HarnessError):
                return
            self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


#: The bound read_rows_peak_rss_mb is held to: the fresh server's RSS before the read plus this.
READ_RSS_ALLOWANCE_MIB = 256


async def read_rows_peak_rss_mb(ctx: BenchContext) -> Result:
    """Peak RSS of a fresh server while one slow client streams the read table (ARROW)."""

    table = bench_table(ctx)
    pause = ctx.seconds(0.02, 0.005)
    bound = ctx.seconds(20, 5)
    with ctx.spawn_server("read-rss", share_data_dir=True) as server:
        await asyncio.sleep(1.0)  # let start-up garbage settle
        baseline_kib, baseline_hwm_kib = server.rss_kib(), server.hwm_kib()
        messages = payload = rows = 0
        finished = False
        with _RssSampler(server) as sampler:
            async with ctx.aio_channel_with(READ_CHANNEL_OPTIONS, server.target) as channel:
                stub = table_service_pb2_grpc.TableServiceStub(channel)
                call = stub.ReadRows(read_rows_request(table.namespace, table.name), timeout=120)
                started = time.perf_counter()
                try:
                    while time.perf_counter() - started < bound:
                        message = await call.read()
                        if not isinstance(message, table_service_pb2.ReadRowsResponse):
                            finished = True  # grpc.aio.EOF
                            break
                        messages += 1
                        payload += message.ByteSize()
                        rows += message.arrow_record_batch.row_count
                        await asyncio.sleep(pause)
                finally:
                    if not finished:
                        call.cancel()
                elapsed = time.perf_counter() - started
            await asyncio.sleep(0.2)  # one more sample after the stream
        peak_kib = max(server.hwm_kib(), sampler.peak_kib)
    if finished and rows != table.rows:
        raise HarnessError(f"the slow read got {rows} rows, not {table.rows}")
    baseline, peak = baseline_kib / 1024, peak_kib / 1024
    limit = baseline + READ_RSS_ALLOWANCE_MIB
    how = "whole stream" if finished else f"cancelled after {bound:.0f}s"
    return Result(
        "read_rows_peak_rss_mb",
        peak,
        "MiB",
        limit_name=f"RSS before + {READ_RSS_ALLOWANCE_MIB} MiB",
        limit_value=limit,
        goal_ratio=1.0,
        better="lower",
        notes=(
            f"VmHWM {peak:.0f} MiB, RSS before {baseline:.0f} MiB "
            f"(HWM {baseline_hwm_kib / 1024:.0f}), growth {peak - baseline:.0f} MiB; "
            f"slow client ({pause * 1000:.0f} ms per message): "
            f"{messages} messages, {payload / _MIB:.0f} MiB, {rows:,} rows in {elapsed:.1f}s "
            f"({how}); {sampler.samples} RSS samples, max {sampler.peak_kib / 1024:.0f} MiB; "
            f"{table.describe()}"
        ),
    )


#: Every scenario, in the order they run (and appear in the results).
SCENARIOS: list[Scenario] = [
    startup_seconds,
    idle_rss_mb,
    health_check_qps,
    get_table_qps,
    read_rows_arrow,
    read_rows_arrow_zstd,
    read_rows_peak_rss_mb,
]
