"""Services registered through the WrappingRegistrar: every handler in our layers, once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from fixtures.net import LOOPBACK
from lakehouse.server.interceptors import (
    InterceptorChain,
    MethodInterceptor,
    ObservabilityInterceptor,
    RequestDecodingInterceptor,
)
from lakehouse.server.wrapped_handlers import WrappingRegistrar

SERVICE = "grpc.health.v1.Health"


async def _serve(layers: list[MethodInterceptor]) -> AsyncIterator[Any]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(
        servicer, WrappingRegistrar(server, InterceptorChain(layers)).server
    )
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            yield health_pb2_grpc.HealthStub(channel)
    finally:
        await server.stop(None)


@pytest_asyncio.fixture
async def observed() -> AsyncIterator[Any]:
    async for stub in _serve([ObservabilityInterceptor(), RequestDecodingInterceptor()]):
        yield stub


@pytest_asyncio.fixture
async def decoding_only() -> AsyncIterator[Any]:
    async for stub in _serve([RequestDecodingInterceptor()]):
        yield stub


def _handled(code: str) -> float:
    labels = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Check"}
    value = REGISTRY.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": code})
    return value or 0.0


async def test_calls_of_a_registered_service_go_through_the_layers(
    observed: Any,
) -> None:
    ok, not_found = _handled("OK"), _handled("NotFound")

    answer = await observed.Check(health_pb2.HealthCheckRequest(service=""))
    try:
        await observed.Check(health_pb2.HealthCheckRequest(service="nope"))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND

    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert _handled("OK") == ok + 1  # counted by the observability layer
    assert _handled("NotFound") == not_found + 1


async def test_a_chain_whose_outer_layer_hands_back_an_awaitable_is_still_awaited(
    decoding_only: Any,
) -> None:
    # The decoding layer returns the servicer's coroutine without one of its own: gRPC would
    # run such a handler in a thread and try to send the coroutine object.
    answer = await decoding_only.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)

    assert answer.status == health_pb2.HealthCheckResponse.SERVING
