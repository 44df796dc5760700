"""Tracing export: with ``tracing.otlp_endpoint`` set, a server's spans reach the collector.

The server is a real ``lakehouse serve`` process (an exporting tracer provider is installed
once per process, so it cannot be the test's own process) whose real OTLP exporter sends over
gRPC to a collector on 127.0.0.1. The collector is a small receiver of OpenTelemetry's OTLP
``TraceService`` (the generated service of ``opentelemetry-proto``) that keeps what it gets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from fixtures.net import LOOPBACK
from fixtures.serve_process import serve_process, settings_env
from lakehouse.v1 import table_service_pb2 as pb
from lakehouse.v1 import table_service_pb2_grpc

if TYPE_CHECKING:
    from lakehouse.config import Settings

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
SERVICE_NAME = "lakehouse-tracing-test"
EXPORT_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str
    parent_span_id: str
    service_name: str
    attributes: dict[str, str]


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ExportedSpan] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self._spans.append(
                            ExportedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                service_name=resource.get("service.name", ""),
                                attributes={a.key: a.value.string_value for a in span.attributes},
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ExportedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, method: str, timeout: float) -> ExportedSpan:
        """The first span of the RPC named ``method``, once the server has exported it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for span in self.spans():
                if span.name.endswith(f"/{method}"):
                    return span
            time.sleep(0.1)
        raise AssertionError(f"no span of {method} exported; got {self.spans()}")


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(grace=None)


def test_spans_are_exported_to_the_otlp_endpoint_with_the_callers_trace(
    local_settings: Settings, collector: tuple[Collector, int], tmp_path: Path
) -> None:
    receiver, port = collector
    env = {
        **settings_env(local_settings),
        "LAKEHOUSE_TRACING__OTLP_ENDPOINT": f"http://{LOOPBACK}:{port}",
        "LAKEHOUSE_TRACING__SERVICE_NAME": SERVICE_NAME,
        # The SDK's batch processor exports every 5 s by default; sooner keeps the test short.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    traceparent = f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"
    with (
        serve_process(tmp_path / "server", env) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        tables = table_service_pb2_grpc.TableServiceStub(channel)
        tables.CreateNamespace(
            pb.CreateNamespaceRequest(name="traced"),
            metadata=(("traceparent", traceparent),),
            timeout=30,
        )
        span = receiver.wait_for("CreateNamespace", EXPORT_WAIT_SECONDS)

    # The call's span continues the caller's trace, under the caller's span, and says which
    # service and method it was.
    assert span.name == "/lakehouse.v1.TableService/CreateNamespace"
    assert span.trace_id == CALLER_TRACE_ID
    assert span.parent_span_id == CALLER_SPAN_ID
    assert span.service_name == SERVICE_NAME
    assert span.attributes.get("rpc.service") == "lakehouse.v1.TableService"
    assert span.attributes.get("rpc.method") == "CreateNamespace"
