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

import statistics
import time

from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import BenchContext, Result, Scenario, closed_loop

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


#: Every scenario, in the order they run (and appear in the results).
SCENARIOS: list[Scenario] = [
    startup_seconds,
    idle_rss_mb,
    health_check_qps,
]
