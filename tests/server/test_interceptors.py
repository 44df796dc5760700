"""The interceptor chain: error mapping, one JSON log line per RPC, request ids."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import grpc
import pytest

from fixtures.grpc_errors import rpc_error_details
from lakehouse.domain.errors import Unavailable
from lakehouse.logs import JsonFormatter
from lakehouse.server.app import LakehouseServer
from lakehouse.v1 import table_service_pb2 as pb

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)


@pytest.fixture
def rpc_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="lakehouse")
    return caplog


def rpc_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(r))
        for r in caplog.records
        if r.name == "lakehouse.rpc" and r.getMessage() == "rpc"
    ]


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
    (line,) = [entry for entry in rpc_lines(rpc_log) if entry["method"] == "GetNamespace"]
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
    lines = rpc_lines(rpc_log)
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
