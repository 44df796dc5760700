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
import collections
import concurrent.futures
import contextlib
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError
from pyiceberg.table import Table

from bench.backends import Backend, _test_fixtures, moto_process, start_backend
from bench.harness import (
    LOOPBACK,
    ROOT,
    BenchContext,
    HarnessError,
    LoadStats,
    Result,
    Scenario,
    ServerProcess,
    closed_loop,
    process_cpu_seconds,
)
from bench.load import MIX, LoadReport, MixedLoad
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.client.arrow import (
    append_rows_requests,
    read_rows_request,
    read_rows_to_arrow_async,
    read_table_async,
    write_rows_request,
)
from lakehouse.client.high_level_async import AsyncLakehouse
from lakehouse.client.parallel_reads import DEFAULT_STREAMS
from lakehouse.config import Settings
from lakehouse.v1 import (
    ingest_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    table_service_pb2,
    table_service_pb2_grpc,
)

#: Concurrent client streams of every "qps" scenario (the issues' "16 concurrent streams").
CONCURRENCY = 16


@dataclass(frozen=True)
class _Qps:
    """One closed-loop run of a unary call, with the CPU both sides used."""

    stats: LoadStats
    server_cores: float
    client_cores: float

    @property
    def server_ms_per_call(self) -> float:
        """Server CPU time per call, in milliseconds."""
        return self.server_cores / max(self.stats.per_second, 1e-9) * 1000

    def notes(self) -> str:
        return (
            f"{self.stats.notes(CONCURRENCY)}; CPU used: server {self.server_cores:.2f} cores "
            f"({self.server_ms_per_call:.3f} ms per call), bench client "
            f"{self.client_cores:.2f} cores (one grpc.aio channel)"
        )


async def _qps(
    ctx: BenchContext,
    call: Callable[[], Awaitable[Any]],
    server_cpu_seconds: Callable[[], float],
    what: str,
) -> _Qps:
    """``call`` from ``CONCURRENCY`` coroutines back to back, with the qps durations."""
    cpu0, client0, wall0 = server_cpu_seconds(), time.process_time(), time.perf_counter()
    stats = await closed_loop(
        call, concurrency=CONCURRENCY, duration=ctx.seconds(10, 3), warmup=ctx.seconds(2, 1)
    )
    stats.require_success(what)
    wall = time.perf_counter() - wall0
    return _Qps(
        stats,
        (server_cpu_seconds() - cpu0) / wall,
        (time.process_time() - client0) / wall,
    )


@contextlib.contextmanager
def _child_server(module: str, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """``python -m module args`` in a child process: it and the JSON of its first line.

    The child prints one JSON object (its port...) once it listens; it is killed at the end.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        if not first:
            raise HarnessError(f"{module} did not start")
        yield proc, json.loads(first)
    finally:
        proc.kill()
        proc.wait(timeout=30)


@contextlib.contextmanager
def _bare_health_server() -> Iterator[tuple[str, int]]:
    """``bench.bare_health`` in a child process: its target and process id."""
    with _child_server("bench.bare_health") as (proc, started):
        yield f"127.0.0.1:{started['port']}", proc.pid


async def bare_health_qps(ctx: BenchContext) -> Result:
    """Health/Check on a bare grpc.aio server (health servicer only): the floor of an RPC.

    Same client, concurrency and durations as ``health_check_qps``, which (with
    ``get_table_qps``) takes this as its limit.
    """
    request = health_pb2.HealthCheckRequest(service="")
    with _bare_health_server() as (target, pid):
        async with ctx.aio_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(request, timeout=30)  # connected and serving
            run = await _qps(
                ctx,
                lambda: stub.Check(request, timeout=5),
                lambda: process_cpu_seconds(pid),
                "Health/Check (bare)",
            )
    return Result("bare_health_qps", run.stats.per_second, "calls/s", notes=run.notes())


async def health_check_qps(ctx: BenchContext) -> Result:
    """grpc.health.v1.Health/Check from 16 concurrent streams, against the bare floor.

    What every call pays here (the interceptor chain, the access log, metrics) above the bare
    ``grpc.aio`` health server; health is public and exempt from the rate limit, so auth and
    the rate limit pass it through.
    """
    floor = ctx.result_of("bare_health_qps")  # runs it first if it has not run yet
    server = ctx.shared_server()
    request = health_pb2.HealthCheckRequest(service="")
    async with ctx.aio_channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        run = await _qps(
            ctx, lambda: stub.Check(request, timeout=5), server.cpu_seconds, "Health/Check"
        )
    return Result(
        "health_check_qps",
        run.stats.per_second,
        "calls/s",
        limit_name="bare_health_qps",
        limit_value=floor.value,
        goal_ratio=0.85,
        notes=run.notes(),
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
#: Channels of a read session's streams: each its own connection (see the client's own).
SESSION_CHANNEL_OPTIONS = [*READ_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
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

    It is appended with pyiceberg straight into the catalog the shared server uses (not
    through IngestService, so that read figures do not depend on ingest), in 10 appends
    (10 data files, 10 snapshots). Not measured.
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
    """GetTable from 16 concurrent streams, against the RPC floor (bare_health_qps)."""

    floor = ctx.result_of("bare_health_qps")  # runs it first if it has not run yet
    table = bench_table(ctx)
    server = ctx.shared_server()
    request = table_service_pb2.GetTableRequest(namespace=table.namespace, table=table.name)
    async with ctx.aio_channel() as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        await stub.GetTable(request, timeout=30)  # set-up check: the table is there
        run = await _qps(
            ctx, lambda: stub.GetTable(request, timeout=5), server.cpu_seconds, "GetTable"
        )
    return Result(
        "get_table_qps",
        run.stats.per_second,
        "calls/s",
        limit_name="bare_health_qps",
        limit_value=floor.value,
        goal_ratio=0.6,
        notes=f"{run.notes()}; table of {table.files} snapshots",
    )


async def read_rows_arrow(ctx: BenchContext) -> Result:
    """The whole read table as ``read_table_async`` reads it by default (a read session, its
    streams at once over as many channels), against a direct in-process pyiceberg scan."""
    return await _read_rows_against_direct(ctx, "read_rows_arrow", 0, DEFAULT_STREAMS)


async def read_rows_arrow_single_stream(ctx: BenchContext) -> Result:
    """One plain ReadRows ARROW of the whole read table, against the same direct scan."""
    return await _read_rows_against_direct(ctx, "read_rows_arrow_single_stream", 0, 1)


async def read_rows_arrow_zstd(ctx: BenchContext) -> Result:
    """The same with ``arrow_compression = ZSTD`` (for networks slower than loopback)."""
    from lakehouse.v1 import rows_pb2

    return await _read_rows_against_direct(
        ctx, "read_rows_arrow_zstd", rows_pb2.ARROW_COMPRESSION_ZSTD, DEFAULT_STREAMS
    )


async def _read_rows_against_direct(
    ctx: BenchContext, name: str, compression: int, streams: int
) -> Result:
    table = bench_table(ctx)
    tries = ctx.count(3, 1)
    identifier = (table.namespace, table.name)
    # One channel per stream, each its own connection, as the client's Lakehouse.read opens.
    channels = [ctx.aio_channel_with(SESSION_CHANNEL_OPTIONS) for _ in range(streams)]
    try:
        stubs = [table_service_pb2_grpc.TableServiceStub(c) for c in channels]
        # Warm-up, not measured: the server loads the table's metadata, both sides open files.
        await read_rows_to_arrow_async(
            stubs[0].ReadRows(read_rows_request(*identifier, row_limit=1000), timeout=60)
        )
        table.catalog.load_table(identifier).scan(limit=1000).to_arrow()

        def read() -> Awaitable[pa.Table]:
            return read_table_async(
                stubs,
                table.namespace,
                table.name,
                compression=compression,  # type: ignore[arg-type]
                max_streams=streams,
                timeout=300,
            )

        tried = await _against_direct(table, tries, read, "ReadRows")
    finally:
        for channel in channels:
            await channel.close()
    how = f"; {streams} stream(s) over as many channels"
    return _read_result(name, table, *tried, 0.8 if streams > 1 else 0.7, how)


def _read_result(
    name: str,
    table: BenchTable,
    ours: list[float],
    direct: list[float],
    ours_bytes: int,
    direct_bytes: int,
    goal: float,
    how: str,
) -> Result:
    """A whole-table read's result against the direct scan: the best try of each side."""
    best, best_direct = min(ours), min(direct)
    return Result(
        name,
        table.rows / best,
        "rows/s",
        limit_name="direct pyiceberg scan().to_arrow()",
        limit_value=table.rows / best_direct,
        goal_ratio=goal,
        notes=(
            f"{ours_bytes / _MIB / best:.0f} MiB/s decoded Arrow ({best:.2f}s, best of "
            f"{len(ours)}{how}); direct {direct_bytes / _MIB / best_direct:.0f} MiB/s "
            f"({best_direct:.2f}s); {table.describe()}, {ours_bytes / _MIB:.0f} MiB as Arrow"
        ),
    )


async def _against_direct(
    table: BenchTable, tries: int, read: Callable[[], Awaitable[pa.Table]], what: str
) -> tuple[list[float], list[float], int, int]:
    """``tries`` reads of the whole table each way, interleaved so that drifts hit both alike:
    our seconds, the direct scan's, and the decoded bytes of each (row counts checked)."""
    ours: list[float] = []
    direct: list[float] = []
    ours_bytes = direct_bytes = 0
    for _ in range(tries):
        t0 = time.perf_counter()
        got = await read()
        ours.append(time.perf_counter() - t0)
        if got.num_rows != table.rows:
            raise HarnessError(f"{what} returned {got.num_rows} rows, not {table.rows}")
        ours_bytes = got.nbytes
        del got
        seconds, direct_bytes = _direct_scan(table)
        direct.append(seconds)
    return ours, direct, ours_bytes, direct_bytes


def _direct_scan(table: BenchTable) -> tuple[float, int]:
    """Seconds and decoded bytes of a direct in-process pyiceberg scan of the whole table."""
    t0 = time.perf_counter()
    ref = table.catalog.load_table((table.namespace, table.name)).scan().to_arrow()
    seconds = time.perf_counter() - t0
    if ref.num_rows != table.rows:
        raise HarnessError(f"direct scan returned {ref.num_rows} rows, not {table.rows}")
    return seconds, ref.nbytes


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


# --- ingest: AppendRows / WriteRows against direct pyiceberg appends ---------------------------

#: Rows of one ingest batch (10 columns of the read table's schema: ~9.3 MiB as Arrow).
INGEST_BATCH_ROWS = 100_000
#: The helper's byte budget of one serialized batch: above one 100k-row batch, so each goes
#: whole, as one request (the helper's default, 4 MiB, would slice each into three).
INGEST_MAX_BATCH_BYTES = 32 * _MIB
#: Client channel options of the ingest scenarios: a 100k-row request is ~9.8 MB, over gRPC's
#: default 4 MiB; the server accepts up to LAKEHOUSE_MAX_MESSAGE_BYTES (64 MiB by default).
INGEST_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * _MIB),
    ("grpc.max_receive_message_length", 64 * _MIB),
]
#: The server's default per-table buffer cap (LAKEHOUSE_INGEST__TABLE_BUFFER_BYTES).
TABLE_BUFFER_MIB = 256
#: What one commit may hold on top of the buffer: the concatenated copy of up to commit_bytes
#: (128 MiB) of buffered Arrow, plus Parquet encoding buffers and gRPC receive buffers.
COMMIT_ALLOWANCE_MIB = 256
#: Concurrent clients of write_rows_small.
SMALL_WRITERS = 32
#: Rows per WriteRows request of write_rows_small.
SMALL_ROWS = 100


def _catalog_of(server: ServerProcess, backend: Backend) -> Catalog:
    """A pyiceberg catalog on ``server``'s catalog and warehouse, in the bench process."""
    settings = Settings(data_dir=server.data_dir, **backend.settings)
    return load_catalog(settings.catalog.name, **catalog_properties(settings))


def _fresh_table(catalog: Catalog, name: str) -> tuple[str, str]:
    """Creates ``bench.<name>`` (dropped first if there) with the read table's schema."""
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(BENCH_NAMESPACE)
    identifier = (BENCH_NAMESPACE, name)
    if catalog.table_exists(identifier):
        catalog.drop_table(identifier)
    catalog.create_table(identifier, schema=_rows(0, 1).schema)
    return identifier


def _table_rows_and_snapshots(catalog: Catalog, identifier: tuple[str, str]) -> tuple[int, int]:
    """The row count (from the data files of the current snapshot) and the snapshot count."""
    table = catalog.load_table(identifier)
    if table.current_snapshot() is None:
        return 0, 0
    rows = sum(task.file.record_count for task in table.scan().plan_files())
    return rows, len(table.metadata.snapshots)


def _ingest_batches(ctx: BenchContext, count: int) -> list[pa.RecordBatch]:
    """``count`` distinct 100k-row batches (made once per run and kept in the fixtures)."""
    batches: list[pa.RecordBatch] = ctx.fixtures.setdefault("ingest_batches", [])
    while len(batches) < count:
        start = len(batches) * INGEST_BATCH_ROWS
        batches.append(_rows(start, INGEST_BATCH_ROWS).combine_chunks().to_batches()[0])
    return batches[:count]


async def _append_stream(stub: Any, requests: Any, timeout: float = 600) -> tuple[int, int]:
    """Sends one AppendRows stream; returns (rows acknowledged, responses). Errors raise."""
    rows = responses = 0
    call = stub.AppendRows(requests, timeout=timeout)
    async for response in call:
        responses += 1
        if response.HasField("error"):
            call.cancel()
            raise HarnessError(
                f"AppendRows request {responses} failed: code {response.error.code}, "
                f"{response.error.message[:200]}"
            )
        rows += response.result.rows_written
    return rows, responses


@contextlib.contextmanager
def _s3_server(ctx: BenchContext) -> Iterator[tuple[ServerProcess, Backend, str]]:
    """A server whose warehouse is on S3 (moto): the shared one on ``postgres_s3``; on
    ``embedded`` a fresh one with its SQLite catalog and a moto S3 this starts (a child
    process, as postgres_s3's). Yields the server, its backend and a description."""
    if ctx.backend.name == "postgres_s3":
        yield ctx.shared_server(), ctx.backend, "shared server, PostgreSQL catalog + moto S3"
        return
    fixtures = _test_fixtures()
    with moto_process() as endpoint:
        bucket = fixtures.s3.create_bucket(endpoint, "lakehouse-bench-ingest")
        backend = Backend(
            "embedded+s3",
            settings={
                "catalog": {"warehouse": f"s3://{bucket}/wh"},
                "s3": fixtures.s3.s3_settings(endpoint),
            },
        )
        with ctx.spawn_server("s3", backend=backend) as server:
            yield server, backend, "fresh server, SQLite catalog + moto S3 started for this"


async def _append_rows_bulk(
    ctx: BenchContext, name: str, server: ServerProcess, backend: Backend, where: str
) -> Result:
    """AppendRows of 100k-row batches on one stream, against direct pyiceberg appends of the
    same batches into another table of the same catalog (one ``append`` per batch)."""
    batches = _ingest_batches(ctx, ctx.count(20, 4))
    rows = sum(b.num_rows for b in batches)
    arrow_bytes = sum(b.nbytes for b in batches)
    catalog = _catalog_of(server, backend)
    ours = _fresh_table(catalog, f"{name}_ours")
    direct = _fresh_table(catalog, f"{name}_direct")
    warm_ours = _fresh_table(catalog, f"{name}_warmup")
    warm_direct = _fresh_table(catalog, f"{name}_warmup_direct")
    requests = list(append_rows_requests(*ours, batches, max_batch_bytes=INGEST_MAX_BATCH_BYTES))
    if len(requests) != len(batches):
        raise HarnessError(f"{len(batches)} batches became {len(requests)} requests")
    wire_bytes = sum(r.ByteSize() for r in requests)
    small = pa.Table.from_batches([batches[0].slice(0, 1000)])
    async with ctx.aio_channel_with(INGEST_CHANNEL_OPTIONS, server.target) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        # Warm-up on other tables, not measured: code paths, connections, imports on both sides.
        await _append_stream(stub, iter(append_rows_requests(*warm_ours, small)))
        catalog.load_table(warm_direct).append(small)
        cpu0, client0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        acked, responses = await _append_stream(stub, iter(requests))
        seconds = time.perf_counter() - wall0
        server_cores = (server.cpu_seconds() - cpu0) / seconds
        client_cores = (time.process_time() - client0) / seconds
    if acked != rows or responses != len(requests):
        raise HarnessError(f"AppendRows acknowledged {acked} rows in {responses} responses")
    table = catalog.load_table(direct)
    t0 = time.perf_counter()
    for batch in batches:
        table.append(pa.Table.from_batches([batch]))
    direct_seconds = time.perf_counter() - t0
    found, snapshots = _table_rows_and_snapshots(catalog, ours)
    found_direct, _ = _table_rows_and_snapshots(catalog, direct)
    if found != rows or found_direct != rows:
        raise HarnessError(f"the tables hold {found} and {found_direct} rows, not {rows}")
    return Result(
        name,
        rows / seconds,
        "rows/s",
        limit_name="direct pyiceberg append per 100k batch",
        limit_value=rows / direct_seconds,
        goal_ratio=0.8,
        notes=(
            f"{arrow_bytes / _MIB / seconds:.0f} MiB/s Arrow "
            f"({wire_bytes / 1e6 / seconds:.0f} MB/s on the wire); {rows:,} rows x 10 cols in "
            f"{len(requests)} requests of 100k rows "
            f"(one stream, kept whole: max_batch_bytes 32 MiB, client max_send 64 MiB), "
            f"{seconds:.2f}s from first send to last ack, {snapshots} commits (row count "
            f"checked); direct {arrow_bytes / _MIB / direct_seconds:.0f} MiB/s, "
            f"{direct_seconds:.2f}s, {len(batches)} appends; CPU: server {server_cores:.2f} "
            f"cores, client {client_cores:.2f}; {where}; ingest settings default"
        ),
    )


async def append_rows_bulk_local(ctx: BenchContext) -> Result:
    """AppendRows of 100k-row Arrow batches to local disk, against direct pyiceberg appends."""
    where = "shared server, " + (
        "local warehouse" if ctx.backend.name == "embedded" else "its warehouse is on S3 here"
    )
    return await _append_rows_bulk(
        ctx, "append_rows_bulk_local", ctx.shared_server(), ctx.backend, where
    )


async def append_rows_bulk_s3(ctx: BenchContext) -> Result:
    """AppendRows of 100k-row Arrow batches to moto S3, against direct pyiceberg appends."""
    with _s3_server(ctx) as (server, backend, where):
        return await _append_rows_bulk(ctx, "append_rows_bulk_s3", server, backend, where)


async def write_rows_small(ctx: BenchContext) -> Result:
    """32 clients sending 100-row WriteRows back to back, against direct 100-row appends."""
    server = ctx.shared_server()
    catalog = _catalog_of(server, ctx.backend)
    ours = _fresh_table(catalog, "write_rows_small_ours")
    direct = _fresh_table(catalog, "write_rows_small_direct")
    duration = ctx.seconds(20, 5)
    tables = [_rows(i * SMALL_ROWS, SMALL_ROWS) for i in range(64)]
    requests = [write_rows_request(*ours, t) for t in tables]
    channels = [ctx.aio_channel_with(INGEST_CHANNEL_OPTIONS, server.target) for _ in range(2)]
    try:
        stubs = [ingest_service_pb2_grpc.IngestServiceStub(c) for c in channels]
        await stubs[0].WriteRows(requests[0], timeout=30)  # warm-up: the committer starts
        _, snapshots0 = _table_rows_and_snapshots(catalog, ours)
        pairs = itertools.cycle([(stub, req) for req in requests for stub in stubs])

        def call() -> Any:
            stub, request = next(pairs)
            return stub.WriteRows(request, timeout=30)

        cpu0, client0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        stats = await closed_loop(call, concurrency=SMALL_WRITERS, duration=duration, warmup=0)
        wall = time.perf_counter() - wall0
        server_cores = (server.cpu_seconds() - cpu0) / wall
        client_cores = (time.process_time() - client0) / wall
    finally:
        for channel in channels:
            await channel.close()
    stats.require_success("WriteRows")
    found, snapshots1 = _table_rows_and_snapshots(catalog, ours)
    ok_calls = stats.calls - stats.errors
    if found != (ok_calls + 1) * SMALL_ROWS:
        raise HarnessError(f"the table holds {found} rows, not {(ok_calls + 1) * SMALL_ROWS}")
    commits = snapshots1 - snapshots0
    # The direct baseline: one pyiceberg append (one commit) per 100-row batch, same duration.
    table = catalog.load_table(direct)
    direct_commits = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        table.append(tables[direct_commits % len(tables)])
        direct_commits += 1
    direct_seconds = time.perf_counter() - t0
    direct_rate = direct_commits * SMALL_ROWS / direct_seconds
    return Result(
        "write_rows_small",
        stats.per_second * SMALL_ROWS,
        "rows/s",
        limit_name="direct pyiceberg append per 100 rows",
        limit_value=direct_rate,
        goal_ratio=50.0,
        notes=(
            f"ack latency p50 {stats.percentile_ms(50):.1f} ms, p99 {stats.percentile_ms(99):.1f} "
            f"ms; {SMALL_WRITERS} clients (coroutines on 2 channels), {stats.calls} calls of "
            f"{SMALL_ROWS} rows in {stats.seconds:.1f}s, {stats.errors} errors"
            + (f" (e.g. {stats.error_examples[0]})" if stats.error_examples else "")
            + f"; {commits} commits ({ok_calls / max(commits, 1):.0f} requests per commit), "
            f"row count checked; no request_id; CPU: server {server_cores:.2f} cores "
            f"({server_cores * wall / max(stats.calls, 1) * 1000:.2f} ms per call), client "
            f"{client_cores:.2f}; direct: {direct_commits} commits in {direct_seconds:.1f}s "
            f"({direct_commits / direct_seconds:.1f}/s); ingest settings default"
        ),
    )


async def ingest_peak_rss_mb(ctx: BenchContext) -> Result:
    """Peak RSS of a fresh server while one client streams 2 GB of Arrow via AppendRows."""
    target_bytes = ctx.count(2_000_000_000, 300_000_000)
    distinct = _ingest_batches(ctx, 4)
    with ctx.spawn_server("ingest-rss") as server:
        catalog = _catalog_of(server, ctx.backend)
        identifier = _fresh_table(catalog, "ingest_rss")
        prebuilt = list(
            append_rows_requests(*identifier, distinct, max_batch_bytes=INGEST_MAX_BATCH_BYTES)
        )
        per_request = statistics.mean(r.ByteSize() for r in prebuilt)
        count = math.ceil(target_bytes / per_request)

        def requests() -> Iterator[Any]:
            # The same few messages again and again (the client holds ~40 MB, not 2 GB);
            # without a writer_id the service takes repeated rows as they come.
            yield prebuilt[0]
            for i in range(count - 1):
                yield prebuilt[1 + i % (len(prebuilt) - 1)]

        rows = count * INGEST_BATCH_ROWS  # every prebuilt request holds one whole batch
        await asyncio.sleep(1.0)  # let start-up garbage settle
        baseline_kib, baseline_hwm_kib = server.rss_kib(), server.hwm_kib()
        with _RssSampler(server) as sampler:
            async with ctx.aio_channel_with(INGEST_CHANNEL_OPTIONS, server.target) as channel:
                stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
                t0 = time.perf_counter()
                acked, _ = await _append_stream(stub, requests())
                seconds = time.perf_counter() - t0
            await asyncio.sleep(0.2)  # one more sample after the stream
        peak_kib = max(server.hwm_kib(), sampler.peak_kib)
        found, snapshots = _table_rows_and_snapshots(catalog, identifier)
    if acked != rows or found != rows:
        raise HarnessError(f"acknowledged {acked} rows, the table holds {found}, sent {rows}")
    baseline, peak = baseline_kib / 1024, peak_kib / 1024
    limit = baseline + TABLE_BUFFER_MIB + COMMIT_ALLOWANCE_MIB
    sent = count * per_request
    return Result(
        "ingest_peak_rss_mb",
        peak,
        "MiB",
        limit_name=f"RSS before + {TABLE_BUFFER_MIB} MiB table buffer + "
        f"{COMMIT_ALLOWANCE_MIB} MiB commit",
        limit_value=limit,
        goal_ratio=1.0,
        better="lower",
        notes=(
            f"VmHWM {peak:.0f} MiB, RSS before {baseline:.0f} MiB "
            f"(HWM {baseline_hwm_kib / 1024:.0f}), growth {peak - baseline:.0f} MiB; one stream "
            f"of {count} requests, {sent / 1e9:.2f} GB on the wire, {rows:,} rows in "
            f"{seconds:.1f}s ({sent / 1e6 / seconds:.0f} MB/s), {snapshots} commits, row count "
            f"checked; {sampler.samples} RSS samples, max {sampler.peak_kib / 1024:.0f} MiB; "
            f"bound: table_buffer_bytes (default 256 MiB) + an allowance for one commit "
            f"(concatenated copy of up to commit_bytes 128 MiB + Parquet/gRPC buffers); "
            f"ingest settings default"
        ),
    )


#: Small files of the job_compaction table, and rows in each.
COMPACTION_FILES = 1000
COMPACTION_ROWS_PER_FILE = 200


def _small_files_table(catalog: Catalog, name: str, files: int) -> tuple[str, str]:
    """A table made of ``files`` small Parquet files, registered in one commit (add_files)."""
    identifier = _fresh_table(catalog, name)
    table = catalog.load_table(identifier)
    paths = []
    for i in range(files):
        path = f"{table.location()}/data/small-{i:05d}.parquet"
        with table.io.new_output(path).create(overwrite=True) as out:
            pq.write_table(_rows(i * COMPACTION_ROWS_PER_FILE, COMPACTION_ROWS_PER_FILE), out)
        paths.append(path)
    table.add_files(paths)
    return identifier


def _rows_and_checksum(catalog: Catalog, identifier: tuple[str, str]) -> tuple[int, int, int]:
    """Row count, sum of ids and data file count of the table's current snapshot."""
    table = catalog.load_table(identifier)
    data = table.scan(selected_fields=("id",)).to_arrow()
    files = len(list(table.scan().plan_files()))
    return data.num_rows, int(pc.sum(data["id"]).as_py() or 0), files


async def job_compaction(ctx: BenchContext) -> Result:
    """A compact_table job on a table of 1,000 small files, against a direct pyiceberg rewrite."""
    server = ctx.shared_server()
    catalog = _catalog_of(server, ctx.backend)
    files = ctx.count(COMPACTION_FILES, 100)
    ours = _small_files_table(catalog, "job_compaction_ours", files)
    direct = _small_files_table(catalog, "job_compaction_direct", files)
    before = _rows_and_checksum(catalog, ours)
    async with ctx.aio_channel_with([], server.target) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        t0 = time.perf_counter()
        created = await stub.CreateJob(
            job_service_pb2.CreateJobRequest(
                spec=job_pb2.JobSpec(
                    compact_table=job_pb2.CompactTableJobSpec(namespace=ours[0], table=ours[1])
                )
            ),
            timeout=30,
        )
        job = created.job
        async for update in stub.WatchJob(
            job_service_pb2.WatchJobRequest(job_id=job.id), timeout=600
        ):
            job = update.job
        seconds = time.perf_counter() - t0
    if job.state != job_pb2.JOB_STATE_SUCCEEDED:
        raise HarnessError(f"compaction job ended {job.state}: {job.error.message}")
    after = _rows_and_checksum(catalog, ours)
    if after[:2] != before[:2]:
        raise HarnessError(f"compaction changed the rows: {before[:2]} -> {after[:2]}")
    # The direct baseline: what a user would script with pyiceberg alone: read everything,
    # overwrite it as new files, one commit.
    table = catalog.load_table(direct)
    t0 = time.perf_counter()
    table.overwrite(table.scan().to_arrow())
    direct_seconds = time.perf_counter() - t0
    result = job.result.compact_table
    return Result(
        "job_compaction",
        seconds,
        "s",
        limit_name="direct pyiceberg read-all and overwrite",
        limit_value=direct_seconds,
        goal_ratio=2.0,
        better="lower",
        notes=(
            f"{before[2]} files of {COMPACTION_ROWS_PER_FILE} rows -> {after[2]} "
            f"({result.files_before} rewritten, {result.files_after} written, "
            f"{result.bytes_before / 1e6:.1f} MB -> {result.bytes_after / 1e6:.1f} MB); rows and "
            f"id checksum equal before and after ({before[0]} rows); seconds from CreateJob to "
            f"the WatchJob stream's end (queueing and commit included)"
        ),
    )


# --- load_mixed: 64 clients, mixed reads, writes and jobs, on a fresh server ----------------

#: Clients of load_mixed: coroutines over LOAD_CHANNELS channels; LOAD_JOB_CLIENTS of them run
#: jobs back to back, the others pick from ``bench.load.MIX``.
LOAD_CLIENTS = 64
LOAD_JOB_CLIENTS = 4
LOAD_CHANNELS = 4
#: Tables written by load_mixed (WriteRows, AppendRows; compacted and counted by jobs).
LOAD_WRITE_TABLES = 3
#: Rows of load_mixed's read table (one file), and the filter of its reads (~10% of it).
LOAD_READ_ROWS = 10_000
LOAD_READ_FILTER = "customer_id < 10000"
#: How much the server's RSS may grow from the end of the warm-up to the end of the run.
LOAD_RSS_ALLOWANCE_MIB = 64


def _load_report(ctx: BenchContext) -> LoadReport:
    """load_mixed's report (runs it first if it has not run yet)."""
    ctx.result_of("load_mixed")
    report: LoadReport = ctx.fixtures["load_mixed"]
    return report


async def load_mixed(ctx: BenchContext) -> Result:
    """64 clients for 60 s: mixed reads, writes and jobs on a fresh server; calls/s of all.

    Unexpected errors and the RSS after warm-up are in the notes, and have their own rows
    with goals: ``load_mixed_errors`` and ``load_mixed_rss_mb``.
    """
    warmup, window = ctx.seconds(10, 2), ctx.seconds(60, 8)
    with ctx.spawn_server("load") as server:
        catalog = _catalog_of(server, ctx.backend)
        read = _fresh_table(catalog, "load_mixed_read")
        data = _rows(0, LOAD_READ_ROWS)
        catalog.load_table(read).append(data)
        filter_rows = int(pc.sum(pc.less(data["customer_id"], 10_000)).as_py())
        writes = [_fresh_table(catalog, f"load_mixed_w{i}")[1] for i in range(LOAD_WRITE_TABLES)]
        load = MixedLoad(
            target=server.target,
            namespace=BENCH_NAMESPACE,
            read_table=read[1],
            read_filter=LOAD_READ_FILTER,
            read_filter_rows=filter_rows,
            write_tables=writes,
            batches=[_rows(i * SMALL_ROWS, SMALL_ROWS) for i in range(16)],
            channel_options=READ_CHANNEL_OPTIONS,
        )
        report = await load.run(
            clients=LOAD_CLIENTS,
            job_clients=LOAD_JOB_CLIENTS,
            channels=LOAD_CHANNELS,
            warmup=warmup,
            window=window,
            rss_kib=server.rss_kib,
            cpu_seconds=server.cpu_seconds,
            rss_interval=ctx.seconds(1.0, 0.5),
            rss_edge=ctx.seconds(5.0, 2.0),
        )
        counts = {t: _table_rows_and_snapshots(catalog, (BENCH_NAMESPACE, t)) for t in writes}
    ctx.fixtures["load_mixed"] = report
    rows_check = []
    for t in writes:
        found, snapshots = counts[t]
        acked, unknown = report.acked_rows[t], report.unknown_rows[t]
        if not acked <= found <= acked + unknown:
            raise HarnessError(
                f"{BENCH_NAMESPACE}.{t} holds {found} rows, {acked} were acknowledged"
                + (f" and {unknown} are unknown (calls that failed)" if unknown else "")
            )
        rows_check.append(
            f"{t} {found:,} in {snapshots} snapshots" + (f" ({unknown} unknown)" if unknown else "")
        )
    methods = report.by_method()
    per_method = []
    for name, m in methods.items():
        if name.startswith("job "):
            continue
        text = (
            f"{name} {m.calls:,} ({m.calls / window:.1f}/s, p50 {m.percentile_ms(50):.0f} ms, "
            f"p99 {m.percentile_ms(99):.0f} ms"
        )
        if m.codes:
            text += ", errors " + " ".join(f"{c} {n}" for c, n in m.codes.most_common())
        per_method.append(text + ")")
    jobs = ", ".join(f"{k} {n}" for k, n in sorted(report.jobs.items())) or "none"
    job_times = "; ".join(
        f"{kind} p50 {statistics.median(ts):.1f}s"
        for kind, ts in sorted(report.job_seconds.items())
    )
    expected = report.expected_errors()
    unexpected = report.unexpected(warmup=False)
    mix = ", ".join(f"{n} {w}%" for n, w in MIX)
    notes = (
        f"{unexpected} unexpected errors ({report.unexpected(warmup=True)} in the warm-up)"
        + (f", e.g. {report.unexpected_examples[0]}" if report.unexpected_examples else "")
        + "; expected errors (retried): "
        + (" ".join(f"{c} {n}" for c, n in expected.most_common()) or "none")
        + f"; {LOAD_CLIENTS} clients on {LOAD_CHANNELS} channels, one connection each "
        f"({LOAD_JOB_CLIENTS} running "
        f"jobs back to back, the others: {mix}), {window:.0f}s after a {warmup:.0f}s warm-up; "
        f"by method: {'; '.join(per_method)}; jobs (whole run): {jobs}"
        + (f" ({job_times} from CreateJob to the end)" if job_times else "")
        + f"; rows acknowledged = rows found: {', '.join(rows_check)}; server RSS "
        f"{report.rss_start_kib / 1024:.0f} MiB after warm-up, {report.rss_end_kib / 1024:.0f} "
        f"at the end, max {report.rss_max_kib / 1024:.0f}; CPU: server "
        f"{report.server_cores:.2f} cores, bench client {report.client_cores:.2f}; fresh server"
    )
    return Result("load_mixed", report.ok_per_second, "calls/s", notes=notes)


def load_mixed_errors(ctx: BenchContext) -> Result:
    """load_mixed's unexpected errors (goal: none), against the calls it made."""
    report = _load_report(ctx)
    calls = [c for c in report.calls if c.rpc]
    errors = report.unexpected(warmup=False) + report.unexpected(warmup=True)
    by_code = collections.Counter(c.code for c in report.calls if not c.expected)
    return Result(
        "load_mixed_errors",
        errors,
        "errors",
        limit_name="calls made (warm-up included)",
        limit_value=len(calls),
        goal_ratio=0.0,
        better="lower",
        notes=(
            "unexpected: any error but ABORTED and RESOURCE_EXHAUSTED with RetryInfo, a wrong "
            "result, a job that did not succeed (but for ABORTED); "
            + (" ".join(f"{c} {n}" for c, n in by_code.most_common()) or "none")
            + "".join(f"; {e}" for e in report.unexpected_examples)
        ),
    )


def load_mixed_rss_mb(ctx: BenchContext) -> Result:
    """The server's RSS at the end of load_mixed, against its RSS after warm-up + 64 MiB."""
    report = _load_report(ctx)
    start, end = report.rss_start_kib / 1024, report.rss_end_kib / 1024
    step = max(1, len(report.rss_kib) // 8)
    series = ", ".join(f"{t:.0f}s {k / 1024:.0f}" for t, k in report.rss_kib[::step])
    return Result(
        "load_mixed_rss_mb",
        end,
        "MiB",
        limit_name=f"RSS after warm-up + {LOAD_RSS_ALLOWANCE_MIB} MiB",
        limit_value=start + LOAD_RSS_ALLOWANCE_MIB,
        goal_ratio=1.0,
        better="lower",
        notes=(
            f"VmRSS {start:.0f} MiB at the end of the warm-up, {end:.0f} MiB at the end "
            f"(growth {end - start:+.0f} MiB), max {report.rss_max_kib / 1024:.0f} MiB; medians "
            f"of the samples of the window's first and last {report.rss_edge:.0f}s; samples "
            f"(s into the window, MiB): {series}"
        ),
    )


# --- row-level changes: DeleteRows and WriteRows' write modes against pyiceberg's own -------

#: Rows and data files of the tables of the row-change scenarios (one file per append).
CHANGE_ROWS = 2_000_000
CHANGE_FILES = 20
#: delete_rows' filter: ``customer_id`` is uniform over [0, 100,000), so this is 1% of the
#: rows, in every file (a GDPR-like delete: no partition or min/max pruning can help).
DELETE_FILTER = "customer_id < 1000"
DELETE_CUSTOMERS = 1000
#: upsert_rows: keys sent (half already in the table, spread over every file; half new).
UPSERT_KEYS = 20_000
#: The ``quantity`` of every row a change writes: the table's own are in [0, 50), so the
#: written rows can be counted afterwards (and pyiceberg's upsert sees every matched row as
#: changed, as it must to replace it).
CHANGED_QUANTITY = -1
#: Tries of each row-change scenario (fresh tables each; 1 with --quick): best of these.
CHANGE_TRIES = 3


def _change_batches(ctx: BenchContext, rows: int, files: int) -> list[pa.Table]:
    """``files`` slices of ``rows`` rows of the read table's columns, made once per run."""
    key = f"change_batches_{rows}_{files}"
    cached: list[pa.Table] | None = ctx.fixtures.get(key)
    if cached is None:
        step = rows // files
        cached = [_rows(i * step, step) for i in range(files)]
        ctx.fixtures[key] = cached
    return cached


def _keyed(data: pa.Table) -> pa.Table:
    """``data`` with ``id`` required (an identifier field must be), in the schema upserts use."""
    schema = data.schema.set(0, pa.field("id", pa.int64(), nullable=False))
    return data.cast(schema)


def _daily(data: pa.Table, rows_per_day: int) -> pa.Table:
    """``data`` with an ``event_date`` column: day ``id // rows_per_day`` from 2023-12-01.

    The tables of overwrite_partitions are partitioned by identity on it, not by ``day(
    event_time)``: pyiceberg 0.12's ``dynamic_partition_overwrite``, the reference, refuses
    every transform but identity.
    """
    days = pc.add(pc.divide(data["id"], rows_per_day), 19_692)  # 19,692: 2023-12-01
    return data.append_column("event_date", pc.cast(pc.cast(days, pa.int32()), pa.date32()))


def _changed(data: pa.Table) -> pa.Table:
    """``data`` with every ``quantity`` set to CHANGED_QUANTITY (the written rows' mark)."""
    index = data.schema.get_field_index("quantity")
    marked = pa.array([CHANGED_QUANTITY] * data.num_rows, pa.int64())
    return data.set_column(index, data.schema.field(index), marked)


def _change_table(
    catalog: Catalog,
    name: str,
    batches: list[pa.Table],
    *,
    identifier_field: str | None = None,
    partition_column: str | None = None,
) -> tuple[str, str]:
    """``bench.<name>`` (dropped first if there) holding ``batches``, one data file each.

    The appends are one transaction (one catalog commit, one snapshot per batch): set-up,
    not measured, and the same on both sides of a scenario.
    """
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(BENCH_NAMESPACE)
    identifier = (BENCH_NAMESPACE, name)
    if catalog.table_exists(identifier):
        catalog.purge_table(identifier)  # its files too: each try writes a table anew
    table = catalog.create_table(identifier, schema=batches[0].schema)
    if identifier_field is not None:
        with table.update_schema() as update:
            update.set_identifier_fields(identifier_field)
    if partition_column is not None:
        with table.update_spec() as spec:
            spec.add_identity(partition_column)
    with table.transaction() as tx:
        for batch in batches:
            tx.append(batch)
    return identifier


def _count_rows(catalog: Catalog, identifier: tuple[str, str], row_filter: str = "true") -> int:
    """The rows of the table's current snapshot that ``row_filter`` matches (read, not planned)."""
    table = catalog.load_table(identifier)
    return int(table.scan(row_filter=row_filter, selected_fields=("id",)).to_arrow().num_rows)


def _files_since(catalog: Catalog, identifier: tuple[str, str], since: int | None) -> str:
    """Data files removed and added, and snapshots made, after snapshot ``since``: a note."""
    table = catalog.load_table(identifier)
    removed = added = snapshots = 0
    snapshot = table.current_snapshot()
    while snapshot is not None and snapshot.snapshot_id != since:
        summary = snapshot.summary
        if summary is not None:
            removed += int(summary.get("deleted-data-files", "0") or 0)
            added += int(summary.get("added-data-files", "0") or 0)
        snapshots += 1
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return f"{removed} data files removed, {added} added, {snapshots} snapshots"


def _current_snapshot_id(catalog: Catalog, identifier: tuple[str, str]) -> int | None:
    snapshot = catalog.load_table(identifier).current_snapshot()
    return snapshot.snapshot_id if snapshot is not None else None


@dataclass
class _ChangeTry:
    """One try of a row-change scenario: each side's seconds, and what our side answered."""

    seconds: float
    direct_seconds: float
    server_cores: float
    response: Any
    files: str
    direct_files: str


async def _change_tries(
    ctx: BenchContext,
    name: str,
    build: Callable[[str], tuple[str, str]],
    ours: Callable[[tuple[str, str]], Awaitable[Any]],
    direct: Callable[[Table], object],
    check: Callable[[tuple[str, str]], None],
) -> tuple[_ChangeTry, _ChangeTry, int]:
    """Runs a row-change scenario's tries; returns the best try of each side and the count.

    Each try builds two identical fresh tables with ``build`` (not measured), makes the change
    on one through the service (``ours``, after a GetTable that leaves its metadata cached
    in the server, as a client checking an etag would) and on the other with pyiceberg in this
    process (``direct``), then ``check``\\ s both. Tries alternate the sides, so drifts of a
    shared machine hit both alike: best of 3, 1 with --quick.
    """
    server = ctx.shared_server()
    catalog = _catalog_of(server, ctx.backend)
    tries: list[_ChangeTry] = []
    async with ctx.aio_channel_with(INGEST_CHANNEL_OPTIONS, server.target) as channel:
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        for _ in range(ctx.count(CHANGE_TRIES, 1)):
            mine, theirs = build(f"{name}_ours"), build(f"{name}_direct")
            base, direct_base = (_current_snapshot_id(catalog, t) for t in (mine, theirs))
            await tables.GetTable(
                table_service_pb2.GetTableRequest(namespace=mine[0], table=mine[1]), timeout=30
            )
            cpu0, t0 = server.cpu_seconds(), time.perf_counter()
            response = await ours(mine)
            seconds = time.perf_counter() - t0
            cores = (server.cpu_seconds() - cpu0) / seconds
            table = catalog.load_table(theirs)
            t0 = time.perf_counter()
            direct(table)
            direct_seconds = time.perf_counter() - t0
            check(mine)
            check(theirs)
            tries.append(
                _ChangeTry(
                    seconds,
                    direct_seconds,
                    cores,
                    response,
                    _files_since(catalog, mine, base),
                    _files_since(catalog, theirs, direct_base),
                )
            )
    best = min(tries, key=lambda t: t.seconds)
    best_direct = min(tries, key=lambda t: t.direct_seconds)
    return best, best_direct, len(tries)


def _tries_note(best: _ChangeTry, best_direct: _ChangeTry, count: int) -> str:
    """Both sides' best times and what each committed, for a row-change result's notes."""
    return (
        f"ours {best.seconds:.2f}s ({best.files}; server CPU {best.server_cores:.2f} cores), "
        f"direct {best_direct.direct_seconds:.2f}s ({best_direct.direct_files}); best of "
        f"{count} (tries alternate the sides, on fresh tables); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end (the server's share "
        "of a busy machine sets these figures)"
    )


async def delete_rows(ctx: BenchContext) -> Result:
    """DeleteRows of 1% of a 2M-row, 20-file table, against pyiceberg's ``Table.delete``."""
    catalog = _catalog_of(ctx.shared_server(), ctx.backend)
    rows, files = ctx.count(CHANGE_ROWS, 100_000), ctx.count(CHANGE_FILES, 10)
    batches = _change_batches(ctx, rows, files)
    doomed = sum(int(pc.sum(pc.less(b["customer_id"], DELETE_CUSTOMERS)).as_py()) for b in batches)
    async with ctx.aio_channel_with([], ctx.shared_server().target) as channel:
        stub = table_service_pb2_grpc.TableServiceStub(channel)
        # Warm-up on tables of their own, not measured: code paths and imports on both sides.
        warm = [batches[0].slice(0, 1000)]
        await stub.DeleteRows(
            _delete_request(_change_table(catalog, "delete_rows_warmup", warm)), timeout=60
        )
        catalog.load_table(_change_table(catalog, "delete_rows_warmup_direct", warm)).delete(
            DELETE_FILTER
        )

        async def ours(identifier: tuple[str, str]) -> Any:
            response = await stub.DeleteRows(_delete_request(identifier), timeout=1800)
            if response.rows_deleted != doomed:
                raise HarnessError(f"DeleteRows deleted {response.rows_deleted} rows, not {doomed}")
            return response

        def check(identifier: tuple[str, str]) -> None:
            left = _count_rows(catalog, identifier)
            matching = _count_rows(catalog, identifier, DELETE_FILTER)
            if left != rows - doomed or matching:
                raise HarnessError(
                    f"{'.'.join(identifier)} holds {left} rows ({matching} matching), "
                    f"not {rows - doomed}"
                )

        best, best_direct, count = await _change_tries(
            ctx,
            "delete_rows",
            lambda name: _change_table(catalog, name, batches),
            ours,
            lambda table: table.delete(DELETE_FILTER),
            check,
        )
    response = best.response
    return Result(
        "delete_rows",
        doomed / best.seconds,
        "rows/s",
        limit_name="direct pyiceberg Table.delete, same filter",
        limit_value=doomed / best_direct.direct_seconds,
        goal_ratio=1.0,
        notes=(
            f"{doomed:,} of {rows:,} rows ({DELETE_FILTER!r}, in every one of {files} files): "
            f"{response.files_rewritten} files rewritten, {response.files_removed} removed; "
            f"{_tries_note(best, best_direct, count)}; rows deleted, left and still matching "
            "checked on both sides"
        ),
    )


def _delete_request(identifier: tuple[str, str]) -> table_service_pb2.DeleteRowsRequest:
    return table_service_pb2.DeleteRowsRequest(
        namespace=identifier[0], table=identifier[1], row_filter=DELETE_FILTER
    )


def _write_request(
    identifier: tuple[str, str], data: pa.Table, mode: int
) -> ingest_service_pb2.WriteRowsRequest:
    """One WriteRows request holding ``data``, in write mode ``mode``."""
    request = write_rows_request(*identifier, data)
    request.write_mode = mode  # type: ignore[assignment]
    return request


async def upsert_rows(ctx: BenchContext) -> Result:
    """WriteRows UPSERT of 20k keys (half new) into a 2M-row table, against ``Table.upsert``."""
    catalog = _catalog_of(ctx.shared_server(), ctx.backend)
    rows, files = ctx.count(CHANGE_ROWS, 100_000), ctx.count(CHANGE_FILES, 10)
    keys = ctx.count(UPSERT_KEYS, 2_000)
    batches = [_keyed(b) for b in _change_batches(ctx, rows, files)]
    # Half the keys are rows of the table, evenly spread (so in every file), half are new.
    existing = list(range(0, rows, rows // (keys // 2)))[: keys // 2]
    fresh = list(range(rows, rows + keys - len(existing)))
    changes = _changed(_rows(rows, keys))
    changes = _keyed(changes.set_column(0, "id", pa.array(existing + fresh, pa.int64())))
    mode = ingest_pb2.WRITE_MODE_UPSERT

    def build(name: str) -> tuple[str, str]:
        return _change_table(catalog, name, batches, identifier_field="id")

    async with ctx.aio_channel_with(INGEST_CHANNEL_OPTIONS, ctx.shared_server().target) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        # Warm-up on tables of their own, not measured (as delete_rows').
        warm = [batches[0].slice(0, 1000)]
        warm_changes = _changed(warm[0].slice(0, 10))
        await stub.WriteRows(
            _write_request(build("upsert_rows_warmup"), warm_changes, mode), timeout=60
        )
        catalog.load_table(build("upsert_rows_warmup_direct")).upsert(warm_changes)

        async def ours(identifier: tuple[str, str]) -> Any:
            response = await stub.WriteRows(_write_request(identifier, changes, mode), timeout=1800)
            result = response.result
            if result.rows_written != keys or result.rows_updated != len(existing):
                raise HarnessError(
                    f"UPSERT wrote {result.rows_written} rows, updated {result.rows_updated}; "
                    f"sent {keys}, {len(existing)} of them existing keys"
                )
            return result

        def direct(table: Table) -> None:
            outcome = table.upsert(changes)
            if outcome.rows_updated != len(existing) or outcome.rows_inserted != len(fresh):
                raise HarnessError(
                    f"Table.upsert updated {outcome.rows_updated}, inserted {outcome.rows_inserted}"
                )

        def check(identifier: tuple[str, str]) -> None:
            found = _count_rows(catalog, identifier)
            marked = _count_rows(catalog, identifier, f"quantity = {CHANGED_QUANTITY}")
            if found != rows + len(fresh) or marked != keys:
                raise HarnessError(
                    f"{'.'.join(identifier)} holds {found} rows ({marked} upserted), "
                    f"not {rows + len(fresh)} ({keys})"
                )

        best, best_direct, count = await _change_tries(
            ctx, "upsert_rows", build, ours, direct, check
        )
    result = best.response
    return Result(
        "upsert_rows",
        keys / best.seconds,
        "rows/s",
        limit_name="direct pyiceberg Table.upsert, same rows",
        limit_value=keys / best_direct.direct_seconds,
        goal_ratio=1.0,
        notes=(
            f"{keys:,} keys ({len(existing):,} updated, spread over all {files} files; "
            f"{len(fresh):,} new) into {rows:,} rows, one WriteRows: {result.files_rewritten} "
            f"files rewritten, {result.files_removed} removed; "
            f"{_tries_note(best, best_direct, count)}; rows and upserted rows checked on both "
            "sides"
        ),
    )


async def overwrite_partitions(ctx: BenchContext) -> Result:
    """The client's ``write`` in OVERWRITE_PARTITIONS mode (its default bulk path: the Flight
    port's do_put) of one day of a table partitioned by day, against pyiceberg's
    ``dynamic_partition_overwrite``."""
    return await _overwrite_partitions(ctx, "overwrite_partitions", over_flight=True)


async def overwrite_partitions_grpc(ctx: BenchContext) -> Result:
    """overwrite_partitions through one unary gRPC WriteRows (the rows in one message)."""
    return await _overwrite_partitions(ctx, "overwrite_partitions_grpc", over_flight=False)


async def _overwrite_partitions(ctx: BenchContext, name: str, *, over_flight: bool) -> Result:
    server = ctx.shared_server()
    catalog = _catalog_of(server, ctx.backend)
    rows, days = ctx.count(CHANGE_ROWS, 100_000), ctx.count(CHANGE_FILES, 10)
    per_day = rows // days
    batches = [_daily(b, per_day) for b in _change_batches(ctx, rows, days)]
    reload = _changed(batches[days // 2])
    mode = ingest_pb2.WRITE_MODE_OVERWRITE_PARTITIONS

    def build(table: str) -> tuple[str, str]:
        return _change_table(catalog, table, batches, partition_column="event_date")

    flight = f"{LOOPBACK}:{server.flight_port}"
    async with (
        ctx.aio_channel_with(INGEST_CHANNEL_OPTIONS, server.target) as channel,
        AsyncLakehouse(server.target, flight=flight, timeout=1800) as client,
    ):
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)

        async def write(identifier: tuple[str, str], data: pa.Table) -> Any:
            if over_flight:
                return await client.write(identifier, data, mode="overwrite_partitions")
            response = await stub.WriteRows(_write_request(identifier, data, mode), timeout=1800)
            return response.result

        # Warm-up on tables of their own, not measured (as delete_rows').
        warm = [batches[0].slice(0, 1000)]
        warm_ours = _change_table(catalog, f"{name}_warmup", warm, partition_column="event_date")
        warm_direct = _change_table(
            catalog, f"{name}_warmup_direct", warm, partition_column="event_date"
        )
        await write(warm_ours, _changed(warm[0]))
        catalog.load_table(warm_direct).dynamic_partition_overwrite(_changed(warm[0]))

        async def ours(identifier: tuple[str, str]) -> Any:
            result = await write(identifier, reload)
            if result.rows_written != per_day or result.rows_deleted != per_day:
                raise HarnessError(
                    f"OVERWRITE_PARTITIONS wrote {result.rows_written} rows and deleted "
                    f"{result.rows_deleted}, not {per_day} and {per_day}"
                )
            return result

        def check(identifier: tuple[str, str]) -> None:
            found = _count_rows(catalog, identifier)
            marked = _count_rows(catalog, identifier, f"quantity = {CHANGED_QUANTITY}")
            if found != rows or marked != per_day:
                raise HarnessError(
                    f"{'.'.join(identifier)} holds {found} rows ({marked} reloaded), "
                    f"not {rows} ({per_day})"
                )

        best, best_direct, count = await _change_tries(
            ctx,
            name,
            build,
            ours,
            lambda table: table.dynamic_partition_overwrite(reload),
            check,
        )
        if over_flight and not client._flight.usable:
            raise HarnessError(f"{name}: the client fell back to WriteRows (no Flight port?)")
    result = best.response
    path = (
        "the client's write, over the Flight port (do_put of a packed WriteRowsRequest)"
        if over_flight
        else "one unary gRPC WriteRows"
    )
    return Result(
        name,
        per_day / best.seconds,
        "rows/s",
        limit_name="direct pyiceberg dynamic_partition_overwrite, same rows",
        limit_value=per_day / best_direct.direct_seconds,
        goal_ratio=0.8,
        notes=(
            f"one day of {days} reloaded ({per_day:,} of {rows:,} rows, {path}, partitioned by "
            f"identity(event_date)): {result.files_removed} files removed, "
            f"{result.files_rewritten} rewritten; {_tries_note(best, best_direct, count)}; "
            "rows and reloaded rows checked on both sides"
        ),
    )


# --- peers: a minimal Arrow Flight server over pyiceberg ----------------------------------


@contextlib.contextmanager
def _flight_peer(server: ServerProcess, backend: Backend) -> Iterator[Any]:
    """``bench.flight_peer`` in a child process on the server's catalog; a connected client."""
    import pyarrow.flight as flight

    settings = json.dumps(backend.settings)
    args = ("--data-dir", str(server.data_dir), "--settings-json", settings)
    with _child_server("bench.flight_peer", *args) as (_, started):
        client = flight.FlightClient(f"grpc://127.0.0.1:{int(started['port'])}")
        try:
            yield client
        finally:
            client.close()


def append_rows_vs_flight(ctx: BenchContext) -> Result:
    """Our Flight port's do_put (flight_append) against the same batches through today's
    Flight do_put peer (bench/flight_peer.py: pyiceberg append per batch, no auth, no
    exactly-once); append_rows_bulk_local is the gRPC AppendRows figure."""
    ours = ctx.result_of("flight_append")
    import pyarrow.flight as flight

    server = ctx.shared_server()
    catalog = _catalog_of(server, ctx.backend)
    batches = _ingest_batches(ctx, ctx.count(20, 4))
    rows = sum(b.num_rows for b in batches)
    peer_table = _fresh_table(catalog, "append_rows_vs_flight_peer")
    warm_table = _fresh_table(catalog, "append_rows_vs_flight_warmup")
    with _flight_peer(server, ctx.backend) as client:

        def put(identifier: tuple[str, str], data: list[pa.RecordBatch]) -> None:
            descriptor = flight.FlightDescriptor.for_path(*identifier)
            writer, _ = client.do_put(descriptor, data[0].schema)
            for batch in data:
                writer.write_batch(batch)
            writer.done_writing()
            writer.close()  # returns once the peer has committed every batch

        put(warm_table, [batches[0].slice(0, 1000)])
        t0 = time.perf_counter()
        put(peer_table, batches)
        seconds = time.perf_counter() - t0
    found, snapshots = _table_rows_and_snapshots(catalog, peer_table)
    if found != rows:
        raise HarnessError(f"the Flight peer's table holds {found} rows, not {rows}")
    return Result(
        "append_rows_vs_flight",
        ours.value,
        "rows/s",
        limit_name="Arrow Flight do_put peer, pyiceberg append per batch",
        limit_value=rows / seconds,
        goal_ratio=1.0,
        notes=(
            f"ours: flight_append of this run (our Flight port); peer: {rows:,} rows in "
            f"{len(batches)} batches on one do_put stream, {seconds:.2f}s to the last commit, "
            f"{snapshots} commits (row count checked)"
        ),
    )


def read_rows_vs_flight(ctx: BenchContext) -> Result:
    """Our Flight port's read (flight_read) against a do_get of the same table from today's
    Flight peer (bench/flight_peer.py); read_rows_arrow is the gRPC ReadRows figure."""
    ours = ctx.result_of("flight_read")
    import pyarrow.flight as flight

    table = bench_table(ctx)
    server = ctx.shared_server()
    tries = ctx.count(3, 1)
    ticket = flight.Ticket(f"{table.namespace}.{table.name}".encode())
    times = []
    with _flight_peer(server, ctx.backend) as client:
        client.do_get(ticket).read_all()  # warm-up: metadata, connections
        for _ in range(tries):
            t0 = time.perf_counter()
            got = client.do_get(ticket).read_all()
            times.append(time.perf_counter() - t0)
            if got.num_rows != table.rows:
                raise HarnessError(f"the Flight peer returned {got.num_rows} rows")
            del got
    best = min(times)
    return Result(
        "read_rows_vs_flight",
        ours.value,
        "rows/s",
        limit_name="Arrow Flight do_get peer (pyiceberg scan batch reader)",
        limit_value=table.rows / best,
        goal_ratio=1.0,
        notes=(
            f"ours: flight_read of this run (our Flight port); peer: {table.rows:,} rows, best "
            f"of {tries} "
            f"do_get reads decoded into a pa.Table ({best:.2f}s)"
        ),
    )


# --- our Arrow Flight port ------------------------------------------------------------------


#: Parallel do_get readers of flight_read (the read session's cap: one endpoint each). Two,
#: one per core of the bench machine: 4 took 0.53-0.75 s there against 0.50 s for 2.
FLIGHT_READ_STREAMS = 2


async def flight_read(ctx: BenchContext) -> Result:
    """A read session over Flight, as any Flight client reads one: get_flight_info on an
    Any-packed CreateReadSessionRequest, then one do_get per endpoint, all at once (a thread
    and a connection each), against a direct in-process pyiceberg scan (interleaved, best of
    each)."""
    import pyarrow.flight as flight
    from google.protobuf import any_pb2

    from lakehouse.v1 import table_service_pb2 as pb

    table = bench_table(ctx)
    packed = any_pb2.Any()
    packed.Pack(
        pb.CreateReadSessionRequest(
            namespace=table.namespace, table=table.name, max_streams=FLIGHT_READ_STREAMS
        )
    )
    descriptor = flight.FlightDescriptor.for_command(packed.SerializeToString())
    location = f"grpc://{LOOPBACK}:{ctx.shared_server().flight_port}"
    clients = [flight.connect(location) for _ in range(FLIGHT_READ_STREAMS)]
    endpoints: list[int] = []
    planned: list[float] = []  # seconds of each get_flight_info (the session's planning)

    def read_all() -> pa.Table:
        t0 = time.perf_counter()
        info = clients[0].get_flight_info(descriptor)
        planned.append(time.perf_counter() - t0)
        endpoints.append(len(info.endpoints))
        with concurrent.futures.ThreadPoolExecutor(len(info.endpoints)) as pool:
            parts = pool.map(
                lambda pair: pair[0].do_get(pair[1].ticket).read_all(),
                zip(itertools.cycle(clients), info.endpoints),
            )
            return pa.concat_tables(list(parts))

    try:
        tried = await _flight_against_direct(table, tries=ctx.count(3, 1), read_all=read_all)
    finally:
        for client in clients:
            client.close()
    return _read_result(
        "flight_read",
        table,
        *tried,
        0.9,
        f", get_flight_info included: {min(planned) * 1000:.0f}-{max(planned) * 1000:.0f} ms; "
        f"a session of {max(endpoints)} endpoints read at once",
    )


async def flight_read_single_endpoint(ctx: BenchContext) -> Result:
    """get_flight_info on a ReadRowsRequest (one endpoint) + its do_get, against a direct
    in-process pyiceberg scan (interleaved, best of each): one Flight stream's ceiling."""
    import pyarrow.flight as flight

    from lakehouse.v1 import table_service_pb2 as pb

    table = bench_table(ctx)
    command = pb.ReadRowsRequest(namespace=table.namespace, table=table.name).SerializeToString()
    descriptor = flight.FlightDescriptor.for_command(command)
    client = flight.connect(f"grpc://{LOOPBACK}:{ctx.shared_server().flight_port}")

    def read_all() -> pa.Table:
        info = client.get_flight_info(descriptor)
        return pa.concat_tables(client.do_get(e.ticket).read_all() for e in info.endpoints)

    try:
        tried = await _flight_against_direct(table, tries=ctx.count(3, 1), read_all=read_all)
    finally:
        client.close()
    return _read_result(
        "flight_read_single_endpoint", table, *tried, 0.7, ", get_flight_info included"
    )


async def _flight_against_direct(
    table: BenchTable, *, tries: int, read_all: Callable[[], pa.Table]
) -> tuple[list[float], list[float], int, int]:
    """A warm-up of each side (metadata, connections, files), then ``_against_direct``."""
    read_all()
    table.catalog.load_table((table.namespace, table.name)).scan(limit=1000).to_arrow()
    return await _against_direct(table, tries, lambda: asyncio.to_thread(read_all), "do_get")


def flight_append(ctx: BenchContext) -> Result:
    """do_put of the ingest batches (one stream, a writer with offsets, every acknowledgement
    read) on the server's Flight port, against direct pyiceberg appends of the same batches."""
    import pyarrow.flight as flight

    from lakehouse.v1 import ingest_service_pb2 as ipb

    server = ctx.shared_server()
    catalog = _catalog_of(server, ctx.backend)
    batches = _ingest_batches(ctx, ctx.count(20, 4))
    rows = sum(b.num_rows for b in batches)
    ours = _fresh_table(catalog, "flight_append_ours")
    direct = _fresh_table(catalog, "flight_append_direct")
    warm = _fresh_table(catalog, "flight_append_warmup")
    warm_direct = _fresh_table(catalog, "flight_append_warmup_direct")
    client = flight.connect(f"grpc://{LOOPBACK}:{server.flight_port}")

    def put(identifier: tuple[str, str], data: list[pa.RecordBatch]) -> int:
        command = ipb.AppendRowsRequest(
            namespace=identifier[0], table=identifier[1], writer_id="bench", offset=0
        )
        descriptor = flight.FlightDescriptor.for_command(command.SerializeToString())
        writer, acks = client.do_put(descriptor, data[0].schema)
        written = 0
        with writer:
            for batch in data:
                writer.write_batch(batch)
            writer.done_writing()
            while (ack := acks.read()) is not None:
                written += ipb.AppendRowsResponse.FromString(ack.to_pybytes()).result.rows_written
        return written

    try:
        put(warm, [batches[0].slice(0, 1000)])
        catalog.load_table(warm_direct).append(pa.Table.from_batches([batches[0].slice(0, 1000)]))
        cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
        acked = put(ours, batches)
        seconds = time.perf_counter() - wall0
        server_cores = (server.cpu_seconds() - cpu0) / seconds
    finally:
        client.close()
    table = catalog.load_table(direct)
    t0 = time.perf_counter()
    for batch in batches:
        table.append(pa.Table.from_batches([batch]))
    direct_seconds = time.perf_counter() - t0
    found, snapshots = _table_rows_and_snapshots(catalog, ours)
    if acked != rows or found != rows:
        raise HarnessError(f"do_put acknowledged {acked} rows, the table holds {found}, not {rows}")
    return Result(
        "flight_append",
        rows / seconds,
        "rows/s",
        limit_name="direct pyiceberg append per 100k batch",
        limit_value=rows / direct_seconds,
        goal_ratio=1.0,
        notes=(
            f"{rows:,} rows x 10 cols in {len(batches)} batches on one do_put, {seconds:.2f}s "
            f"from first batch to last acknowledgement, {snapshots} commits (group commit; row "
            f"count checked); direct {direct_seconds:.2f}s, {len(batches)} appends; server "
            f"{server_cores:.2f} cores"
        ),
    )


# --- WatchTable: commit to event ------------------------------------------------------------

#: Writes a watch-latency scenario makes, and the pause between two (so that a watcher on
#: another replica has gone back to idle polling between most of them, as in real use).
WATCH_PAUSE_SECONDS = 0.3


async def _watch_latencies(
    ctx: BenchContext, writer: ServerProcess, watcher: ServerProcess, name: str
) -> tuple[list[float], int]:
    """Latencies (seconds) from each WriteRows acknowledgement to the WatchTable event of its
    snapshot on ``watcher``, and how many events arrived before their write's ack (counted as
    0: the event beat the ack). One 100-row write at a time, ``WATCH_PAUSE_SECONDS`` apart."""
    catalog = _catalog_of(writer, ctx.backend)
    identifier = _fresh_table(catalog, name)
    writes = ctx.count(60, 15)
    arrived: dict[int, float] = {}
    everything_arrived = asyncio.Event()
    acked: dict[int, float] = {}
    async with (
        ctx.aio_channel(watcher.target) as watch_channel,
        ctx.aio_channel(writer.target) as write_channel,
    ):
        tables = table_service_pb2_grpc.TableServiceStub(watch_channel)
        ingest = ingest_service_pb2_grpc.IngestServiceStub(write_channel)
        # The cursor is the table's current snapshot, so the watch misses nothing written next.
        first = await ingest.WriteRows(write_rows_request(*identifier, _rows(0, SMALL_ROWS)))
        stream = tables.WatchTable(
            table_service_pb2.WatchTableRequest(
                namespace=identifier[0],
                table=identifier[1],
                after_snapshot_id=first.result.snapshot_id,
            ),
            timeout=writes * (WATCH_PAUSE_SECONDS + 5) + 60,
        )

        async def watch() -> None:
            async for event in stream:
                arrived[event.snapshot.snapshot_id] = time.perf_counter()
                if len(arrived) == writes:
                    everything_arrived.set()
                    return

        watching = asyncio.create_task(watch())
        try:
            for i in range(writes):
                await asyncio.sleep(WATCH_PAUSE_SECONDS)
                request = write_rows_request(*identifier, _rows((i + 1) * SMALL_ROWS, SMALL_ROWS))
                response = await ingest.WriteRows(request, timeout=30)
                acked[response.result.snapshot_id] = time.perf_counter()
            await asyncio.wait_for(everything_arrived.wait(), 30)
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
    if set(arrived) != set(acked):
        raise HarnessError(
            f"WatchTable sent {sorted(set(arrived) - set(acked))} beyond the writes and missed "
            f"{sorted(set(acked) - set(arrived))}"
        )
    gaps = [arrived[s] - acked[s] for s in acked]
    return [max(0.0, g) for g in gaps], sum(g < 0 for g in gaps)


def _watch_result(
    name: str, latencies: list[float], early: int, goal_ms: float, where: str
) -> Result:
    ms = sorted(1000 * s for s in latencies)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)]
    return Result(
        name,
        p50,
        "ms",
        limit_name=f"the issue's bound on commit-to-event p50 ({where})",
        limit_value=goal_ms,
        goal_ratio=1.0,
        notes=(
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms over {len(ms)} single "
            f"100-row WriteRows {WATCH_PAUSE_SECONDS} s apart, each from its ack to its event; "
            f"{early} events arrived before their write's ack (counted as 0 ms); {where}"
        ),
        better="lower",
    )


async def watch_latency(ctx: BenchContext) -> Result:
    """WriteRows ack → WatchTable event on the same server (its commits wake its watchers)."""
    server = ctx.shared_server()
    latencies, early = await _watch_latencies(ctx, server, server, "watch_latency")
    return _watch_result(
        "watch_latency", latencies, early, 50.0, "writer and watcher on one server"
    )


async def watch_latency_replica(ctx: BenchContext) -> Result:
    """WriteRows ack on one server → WatchTable event on another replica of the same catalog
    (which learns of the commit by polling the table's metadata location)."""
    writer = ctx.shared_server()
    with ctx.spawn_server("replica", share_data_dir=True) as watcher:
        latencies, early = await _watch_latencies(ctx, writer, watcher, "watch_latency_replica")
    return _watch_result(
        "watch_latency_replica", latencies, early, 1000.0, "watcher on a second replica"
    )


#: Replica counts and client counts of ingest_scale_out.
SCALE_OUT_REPLICAS = (1, 2, 3)
SCALE_OUT_CLIENTS = (24, 72)


def _metric_sum(server: ServerProcess, name: str) -> float:
    """The sum of a metric's samples on ``server``'s /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


@contextlib.contextmanager
def _postgres_s3(ctx: BenchContext) -> Iterator[Backend]:
    """The run's backend on ``postgres_s3``; else a PostgreSQL and a moto S3 started for this."""
    if ctx.backend.name == "postgres_s3":
        yield ctx.backend
        return
    with start_backend("postgres_s3") as backend:
        yield backend


@dataclass
class _ScaleOutRun:
    replicas: int
    clients: int
    rows_per_second: float
    p50_ms: float
    p99_ms: float
    conflicts: int
    errors: int
    commits: int
    rows: int
    cpu_shares: list[float]
    """Each replica's CPU seconds per second of the run (the owner's first)."""


async def _scale_out_run(
    ctx: BenchContext,
    servers: list[ServerProcess],
    catalog: Catalog,
    replicas: int,
    clients: int,
) -> _ScaleOutRun:
    """``clients`` closed-loop WriteRows clients spread evenly over the first ``replicas``."""
    used = servers[:replicas]
    identifier = _fresh_table(catalog, f"scale_out_{replicas}x{clients}")
    tables = [_rows(i * SMALL_ROWS, SMALL_ROWS) for i in range(64)]
    requests = [write_rows_request(*identifier, t) for t in tables]
    channels = [ctx.aio_channel_with(INGEST_CHANNEL_OPTIONS, s.target) for s in used]
    conflicts0 = sum(_metric_sum(s, "lakehouse_ingest_commit_conflicts_total") for s in used)
    try:
        stubs = [ingest_service_pb2_grpc.IngestServiceStub(c) for c in channels]
        for stub in stubs:  # warm-up: each replica's committer starts, one takes the lease
            await stub.WriteRows(requests[0], timeout=60)
        _, snapshots0 = _table_rows_and_snapshots(catalog, identifier)
        turn = itertools.count()

        def call() -> Any:
            # Calls go round the replicas: the clients are spread evenly over them.
            i = next(turn)
            return stubs[i % replicas].WriteRows(requests[i % len(requests)], timeout=60)

        cpu0, wall0 = [s.cpu_seconds() for s in used], time.perf_counter()
        stats = await closed_loop(call, concurrency=clients, duration=ctx.seconds(20, 4), warmup=0)
        wall = time.perf_counter() - wall0
        cpu = [(s.cpu_seconds() - c0) / wall for s, c0 in zip(used, cpu0, strict=True)]
        owned = [_metric_sum(s, "lakehouse_ingest_commit_owned_branches") for s in used]
        # The owner first (with 1 replica, or when no lease is held, the order stays).
        cpu = [c for _, c in sorted(zip(owned, cpu, strict=True), key=lambda p: -p[0])]
    finally:
        for channel in channels:
            await channel.close()
    conflicts = (
        sum(_metric_sum(s, "lakehouse_ingest_commit_conflicts_total") for s in used) - conflicts0
    )
    found, snapshots1 = _table_rows_and_snapshots(catalog, identifier)
    ok_calls = stats.calls - stats.errors
    expected = (ok_calls + replicas) * SMALL_ROWS
    # Errors are not acknowledged: their rows may or may not be in (never more than once).
    if not expected <= found <= expected + stats.errors * SMALL_ROWS:
        raise HarnessError(
            f"{replicas} replicas, {clients} clients: the table holds {found} rows, "
            f"acknowledged {expected}"
        )
    return _ScaleOutRun(
        replicas,
        clients,
        stats.per_second * SMALL_ROWS,
        stats.percentile_ms(50),
        stats.percentile_ms(99),
        int(conflicts),
        stats.errors,
        snapshots1 - snapshots0,
        found,
        cpu,
    )


async def ingest_scale_out(ctx: BenchContext) -> Result:
    """1, 2 and 3 replicas on one table (PostgreSQL + S3), 24 and 72 clients of 100-row
    WriteRows spread over them: 3 replicas' rows/s against one replica's."""
    runs: list[_ScaleOutRun] = []
    with _postgres_s3(ctx) as backend, contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(ctx.spawn_server(f"scale-out-{i}", backend=backend))
            for i in range(max(SCALE_OUT_REPLICAS))
        ]
        catalog = _catalog_of(servers[0], backend)
        for clients in SCALE_OUT_CLIENTS:
            for replicas in SCALE_OUT_REPLICAS:
                runs.append(await _scale_out_run(ctx, servers, catalog, replicas, clients))
    by = {(r.replicas, r.clients): r for r in runs}
    one, three = by[(1, SCALE_OUT_CLIENTS[0])], by[(3, SCALE_OUT_CLIENTS[0])]
    many = SCALE_OUT_CLIENTS[1]
    many_ratio = by[(3, many)].rows_per_second / max(by[(1, many)].rows_per_second, 1.0)
    table = "; ".join(
        f"{r.replicas} replicas x {r.clients} clients: {r.rows_per_second:,.0f} rows/s, "
        f"p50 {r.p50_ms:.0f} ms, "
        f"p99 {r.p99_ms:.0f} ms, {r.conflicts} conflicts, {r.errors} errors, {r.commits} "
        f"commits, {r.rows} rows checked, server CPU (cores, owner first) "
        + "/".join(f"{c:.2f}" for c in r.cpu_shares)
        for r in runs
    )
    return Result(
        "ingest_scale_out",
        three.rows_per_second,
        "rows/s",
        limit_name=f"one replica, {SCALE_OUT_CLIENTS[0]} clients",
        limit_value=one.rows_per_second,
        goal_ratio=1.0,
        notes=(
            f"{table}; 3 vs 1 replica at {many} clients: {many_ratio:.2f}x; "
            f"real lakehouse serve processes on PostgreSQL + moto S3 ({backend.notes}), "
            f"{os.cpu_count()} cores; every table's rows checked against the acknowledged calls"
        ),
    )


#: Every scenario, in the order they run (and appear in the results).
SCENARIOS: list[Scenario] = [
    startup_seconds,
    idle_rss_mb,
    bare_health_qps,
    health_check_qps,
    get_table_qps,
    read_rows_arrow,
    read_rows_arrow_single_stream,
    read_rows_arrow_zstd,
    read_rows_peak_rss_mb,
    append_rows_bulk_local,
    append_rows_bulk_s3,
    write_rows_small,
    ingest_peak_rss_mb,
    append_rows_vs_flight,
    read_rows_vs_flight,
    flight_read,
    flight_read_single_endpoint,
    flight_append,
    job_compaction,
    delete_rows,
    upsert_rows,
    overwrite_partitions,
    overwrite_partitions_grpc,
    watch_latency,
    watch_latency_replica,
    ingest_scale_out,
    load_mixed,
    load_mixed_errors,
    load_mixed_rss_mb,
]
