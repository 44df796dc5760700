"""Health: gRPC health protocol (Check, Watch), /healthz, /readyz, and dependency failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures.grpc_errors import rpc_error_details
from fixtures.net import free_port
from lakehouse.config import Settings
from lakehouse.server.app import LakehouseServer
from lakehouse.server.health import LIVENESS_SERVICE
from lakehouse.v1 import table_service_pb2 as pb
from lakehouse.v1 import table_service_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def test_serving_on_every_backend(channel: grpc.aio.Channel, http_url: str) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lakehouse.v1.TableService", LIVENESS_SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND

    status, body = await get_json(f"{http_url}/readyz")
    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"] == {"catalog": "ok", "object_store": "ok", "job_store": "ok"}
    assert body["timestamp"].endswith("Z")
    status, body = await get_json(f"{http_url}/healthz")
    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_watch_sees_graceful_shutdown(server: LakehouseServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await asyncio.wait_for(watch.read(), 10)
        assert first.status == SERVING
        stopping = asyncio.create_task(server.stop(grace=2))
        second = await asyncio.wait_for(watch.read(), 10)
        assert second.status == NOT_SERVING
        await asyncio.wait_for(stopping, 30)


def dead_catalog_settings(tmp_path: Path, user: str, **overrides: Any) -> Settings:
    """A server on 127.0.0.1 whose PostgreSQL catalog is a port nobody listens on."""
    dead = f"postgresql+psycopg2://{user}@127.0.0.1:{free_port()}/nothing"
    values: dict[str, Any] = {
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "data_dir": tmp_path,
        "catalog": {"uri": dead},
    }
    return Settings(**(values | overrides))


async def test_dead_catalog_means_not_ready_and_unavailable(tmp_path: Path) -> None:
    settings = dead_catalog_settings(
        tmp_path, "nobody:secret", health_check_interval_seconds=0.5, shutdown_drain_seconds=0
    )
    server = LakehouseServer(settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == NOT_SERVING

            status, body = await get_json(f"http://127.0.0.1:{server.http_port}/readyz")
            assert status == 503
            assert body["status"] == "not_ready"
            assert body["checks"]["catalog"].startswith("error:")
            assert "secret" not in body["checks"]["catalog"]
            assert body["checks"]["object_store"] == "ok"

            stub = table_service_pb2_grpc.TableServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.CreateNamespace(pb.CreateNamespaceRequest(name="x"), timeout=30)
            details = rpc_error_details(exc.value)
            assert details.code == grpc.StatusCode.UNAVAILABLE
            assert details.reason == "CATALOG_UNAVAILABLE"
            assert details.retry_delay_seconds is not None and details.retry_delay_seconds > 0
            assert "secret" not in details.message
    finally:
        await server.stop()


async def test_liveness_follows_the_process_not_the_dependencies(tmp_path: Path) -> None:
    """The name Kubernetes' liveness probe asks for: SERVING through a catalog outage (a
    restart would fix nothing), NOT_SERVING once shutdown begins."""
    settings = dead_catalog_settings(
        tmp_path, "nobody", health_check_interval_seconds=0.2, shutdown_drain_seconds=1
    )
    server = LakehouseServer(settings)
    await server.start()
    stopping = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            liveness = health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE)
            watch = health.Watch(liveness)
            assert (await asyncio.wait_for(watch.read(), 10)).status == SERVING
            await asyncio.sleep(0.5)  # a few failed dependency checks later
            overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert overall.status == NOT_SERVING
            assert (await health.Check(liveness)).status == SERVING
            stopping = asyncio.create_task(server.stop(grace=1))
            assert (await asyncio.wait_for(watch.read(), 10)).status == NOT_SERVING
            watch.cancel()
    finally:
        await (stopping if stopping is not None else server.stop())
