"""The interceptor chain: error mapping, one JSON log line per RPC, request ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from fixtures.grpc_errors import rpc_error_details
from fixtures.net import LOOPBACK
from fixtures.rpc_log import logged_rpc_lines, rpc_lines
from lakehouse.config import Settings
from lakehouse.domain.errors import Unavailable
from lakehouse.logs import JsonLineHandler, direct_handler
from lakehouse.server.app import LakehouseServer
from lakehouse.v1 import table_service_pb2 as pb
from lakehouse.v1 import table_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)


@pytest.fixture
def rpc_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="lakehouse")
    return caplog


async def test_unexpected_exception_is_internal_with_request_id_and_no_leak(
    server: LakehouseServer, table_stub: Any, rpc_log: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    async def boom(name: str) -> None:
        raise RuntimeError("secret internals: /srv/db password=hunter2")

    monkeypatch.setattr(server.tables, "get_namespace", boom)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.GetNamespace(
            pb.GetNamespaceRequest(name="x"), metadata=(("x-request-id", "req-123"),)
        )
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.INTERNAL
    assert details.reason == "INTERNAL"
    assert details.metadata["request_id"] == "req-123"
    assert "req-123" in details.message
    assert "hunter2" not in details.message

    errors = [r for r in rpc_log.records if r.getMessage() == "unexpected exception"]
    assert errors and errors[0].exc_info is not None  # the traceback is logged, server-side
    lines = await logged_rpc_lines(rpc_log, 1)
    (line,) = [entry for entry in lines if entry["method"] == "GetNamespace"]
    assert line["code"] == "INTERNAL"
    assert line["request_id"] == "req-123"
    assert line["level"] == "ERROR"


async def test_one_log_line_per_rpc_with_the_fields_operators_need(
    table_stub: Any, rpc_log: pytest.LogCaptureFixture
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    await table_stub.CreateNamespace(
        pb.CreateNamespaceRequest(name="logs"), metadata=(("traceparent", traceparent),)
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await table_stub.GetNamespace(pb.GetNamespaceRequest(name="nope"))
    lines = await logged_rpc_lines(rpc_log, 2)
    assert [(x["method"], x["code"]) for x in lines] == [
        ("CreateNamespace", "OK"),
        ("GetNamespace", "NOT_FOUND"),
    ]
    for entry in lines:
        assert entry["service"] == "lakehouse.v1.TableService"
        assert entry["grpc_type"] == "unary"
        assert entry["duration_ms"] >= 0
        assert entry["peer"].startswith("ipv4:127.0.0.1")
        assert len(entry["request_id"]) == 32
    # OpenTelemetry's interceptor carries the caller's W3C trace context into the log line
    assert lines[0]["trace_id"] == trace_id
    assert lines[1]["trace_id"] == ""
    assert "does not exist" in lines[1]["error"]


async def test_backend_failure_is_unavailable_with_retry_info(
    server: LakehouseServer, table_stub: Any, monkeypatch: Any
) -> None:
    async def down(*_: Any) -> None:
        raise Unavailable("catalog unavailable: connection refused", reason="CATALOG_UNAVAILABLE")

    monkeypatch.setattr(server.tables, "list_namespaces", down)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await table_stub.ListNamespaces(pb.ListNamespacesRequest())
    details = rpc_error_details(exc.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE
    assert details.retry_delay_seconds == 1.0


async def test_shutdown_lets_in_flight_calls_finish(
    server: LakehouseServer, table_stub: Any, monkeypatch: Any
) -> None:
    await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="slow"))
    real = server.tables.get_namespace
    entered = asyncio.Event()

    async def slow(name: str) -> Any:
        entered.set()
        await asyncio.sleep(0.5)
        return await real(name)

    monkeypatch.setattr(server.tables, "get_namespace", slow)
    call = asyncio.ensure_future(table_stub.GetNamespace(pb.GetNamespaceRequest(name="slow")))
    await asyncio.wait_for(entered.wait(), 10)
    await server.stop(grace=5)
    reply = await asyncio.wait_for(call, 10)
    assert reply.namespace.name == "slow"


async def test_probes_are_access_logged_only_when_they_fail_or_when_asked(
    channel: grpc.aio.Channel, rpc_log: pytest.LogCaptureFixture
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    checks = _handled_checks()
    await health.Check(health_pb2.HealthCheckRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    await pb_grpc.TableServiceStub(channel).ListNamespaces(pb.ListNamespacesRequest())
    # the kubelet's probe every few seconds is no line; a failed probe and a real call are
    lines = await logged_rpc_lines(rpc_log, 2)
    assert sorted((x["method"], x["code"]) for x in lines) == [
        ("Check", "NOT_FOUND"),
        ("ListNamespaces", "OK"),
    ]
    assert _handled_checks() == checks + 1  # metrics still count every call


def _handled_checks() -> float:
    """``grpc_server_handled_total`` of successful Health/Check calls in this process."""
    labels = {
        "grpc_type": "unary",
        "grpc_service": "grpc.health.v1.Health",
        "grpc_method": "Check",
        "grpc_code": "OK",
    }
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


async def test_probe_lines_are_written_with_access_log_probes(
    backend: Settings, rpc_log: pytest.LogCaptureFixture
) -> None:
    server = LakehouseServer(backend.model_copy(update={"access_log_probes": True}))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await asyncio.wait_for(server.stop(1.0), 30)
    assert [(x["service"], x["method"], x["code"]) for x in rpc_lines(rpc_log)] == [
        ("grpc.health.v1.Health", "Check", "OK")
    ]


async def test_the_access_line_written_directly_is_the_line_logging_writes(
    table_stub: Any,
) -> None:
    """With only the JSON stdout handler, lines skip ``logging``'s records: same JSON."""
    stream = io.StringIO()
    handler = JsonLineHandler(stream)
    root, rpc = logging.getLogger(), logging.getLogger("lakehouse.rpc")
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]  # as configure_logging leaves it (pytest's capture aside)
    root.setLevel(logging.INFO)
    try:
        await table_stub.CreateNamespace(pb.CreateNamespaceRequest(name="access"))
        assert direct_handler(rpc, logging.INFO) is handler
        direct = await _two_calls(table_stub, stream)
        handler.addFilter(lambda record: True)  # any filter: records go through logging again
        assert direct_handler(rpc, logging.INFO) is None
        logged = await _two_calls(table_stub, stream)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    varying = {"ts", "duration_ms", "peer", "request_id"}
    for ours, theirs in zip(direct, logged, strict=True):
        assert list(ours) == list(theirs)  # the same keys in the same order
        assert {k: v for k, v in ours.items() if k not in varying} == {
            k: v for k, v in theirs.items() if k not in varying
        }
    assert [(x["method"], x["code"], x["level"]) for x in direct] == [
        ("GetNamespace", "OK", "INFO"),
        ("GetNamespace", "NOT_FOUND", "INFO"),
    ]
    assert "does not exist" in direct[1]["error"]


async def _two_calls(table_stub: Any, stream: io.StringIO) -> list[dict[str, Any]]:
    """The access lines of a successful and a failed call, read from ``stream``."""
    stream.seek(0)
    stream.truncate()
    await table_stub.GetNamespace(pb.GetNamespaceRequest(name="access"))
    with pytest.raises(grpc.aio.AioRpcError):
        await table_stub.GetNamespace(pb.GetNamespaceRequest(name="access_missing"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [x for x in lines if x.get("msg") == "rpc"]
