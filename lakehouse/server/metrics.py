"""Prometheus metrics, named like go-grpc-prometheus so existing dashboards work unchanged."""

from __future__ import annotations

import time

import grpc
from prometheus_client import Counter, Gauge, Histogram

GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# The grpc_server_* series of calls are in lakehouse.server.call_metrics.
DEPENDENCY_UP = Gauge(
    "lakehouse_dependency_up",
    "Whether the last health check of a backing service succeeded (1) or failed (0).",
    ("dependency",),
)
DEPENDENCY_CHECK_SECONDS = Histogram(
    "lakehouse_dependency_check_seconds",
    "Duration of backing-service health checks.",
    ("dependency",),
)
_STARTED_AT = time.time()
UPTIME = Gauge("lakehouse_uptime_seconds", "Seconds since the process started.")
UPTIME.set_function(lambda: time.time() - _STARTED_AT)
BUILD_INFO = Gauge(
    "lakehouse_build_info", "Build information; the value is always 1.", ("version",)
)

# The Arrow Flight port (docs/flight.md). Its calls are counted like gRPC ones, under their
# own names: Flight methods are not lakehouse.v1 RPCs, and dashboards of the gRPC port must
# not change when Flight is turned on.
_FLIGHT_LABELS = ("flight_method",)
FLIGHT_STARTED = Counter(
    "lakehouse_flight_server_started_total",
    "Arrow Flight calls started on the server.",
    _FLIGHT_LABELS,
)
FLIGHT_HANDLED = Counter(
    "lakehouse_flight_server_handled_total",
    "Arrow Flight calls completed on the server, by gRPC code (Go's spelling).",
    (*_FLIGHT_LABELS, "grpc_code"),
)
FLIGHT_HANDLING_SECONDS = Histogram(
    "lakehouse_flight_server_handling_seconds",
    "Duration of Arrow Flight calls on the server.",
    _FLIGHT_LABELS,
)
FLIGHT_BYTES_SENT = Counter(
    "lakehouse_flight_server_sent_bytes_total",
    "Arrow record batch bytes (in memory) sent by do_get.",
    _FLIGHT_LABELS,
)
FLIGHT_BYTES_RECEIVED = Counter(
    "lakehouse_flight_server_received_bytes_total",
    "Arrow record batch bytes (in memory) received by do_put.",
    _FLIGHT_LABELS,
)
FLIGHT_BATCHES_SENT = Counter(
    "lakehouse_flight_server_sent_batches_total",
    "Arrow record batches sent by do_get.",
    _FLIGHT_LABELS,
)
FLIGHT_BATCHES_RECEIVED = Counter(
    "lakehouse_flight_server_received_batches_total",
    "Arrow record batches received by do_put.",
    _FLIGHT_LABELS,
)
