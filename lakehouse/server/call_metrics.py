"""The ``grpc_server_*`` series, kept as plain numbers per method and rendered at scrape time.

Every call updates seven of them (started, received, sent, in flight up and down, handled,
the latency histogram). As ``prometheus_client`` children that is seven locked updates with
their checks, ~2.7 us a call; here it is a few attribute updates on one record per method
(~0.3 us). They run on the event loop only, which is also where ``/metrics`` is rendered
(the sidecar HTTP app), so nothing is read half-updated; a scrape from another thread reads
copies of the dictionaries it walks.

Names, help texts, labels, buckets and the ``_created`` samples are those the
``prometheus_client`` metrics gave (go-grpc-prometheus's names, so dashboards and alerts work
unchanged).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

import grpc
from prometheus_client import REGISTRY, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from lakehouse.server.metrics import GO_CODE_NAMES

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
#: Upper bounds of the latency histogram's buckets (``le``), the last one ``+Inf``.
BUCKETS: tuple[float, ...] = tuple(Histogram.DEFAULT_BUCKETS)
_BUCKET_NAMES = tuple(floatToGoString(b) for b in BUCKETS)  # type: ignore[no-untyped-call]


class MethodMetrics:
    """The series of one method (gRPC type, service, method), updated by its calls."""

    __slots__ = (
        "buckets",
        "created",
        "grpc_type",
        "handled",
        "in_flight",
        "method",
        "received",
        "seconds_sum",
        "sent",
        "service",
        "started",
    )

    def __init__(self, grpc_type: str, service: str, method: str) -> None:
        self.grpc_type = grpc_type
        self.service = service
        self.method = method
        self.created = time.time()
        self.started = 0
        self.received = 0
        self.sent = 0
        self.in_flight = 0
        #: Calls ended, by status code: (count, when the first ended).
        self.handled: dict[grpc.StatusCode, list[float]] = {}
        #: Calls per latency bucket (not cumulative: summed at scrape time).
        self.buckets = [0] * len(BUCKETS)
        self.seconds_sum = 0.0

    def ended(self, code: grpc.StatusCode, seconds: float) -> None:
        """Counts a call that ended with ``code`` after ``seconds``."""
        self.in_flight -= 1
        entry = self.handled.get(code)
        if entry is None:
            self.handled[code] = [1, time.time()]
        else:
            entry[0] += 1
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.seconds_sum += seconds


class GrpcServerMetrics(Collector):
    """Every method's :class:`MethodMetrics`, as the ``grpc_server_*`` metric families."""

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str, str], MethodMetrics] = {}

    def method(self, grpc_type: str, service: str, method: str) -> MethodMetrics:
        """The record of a method, the same one each time (counts add up)."""
        key = (grpc_type, service, method)
        found = self._methods.get(key)
        if found is None:
            found = self._methods[key] = MethodMetrics(grpc_type, service, method)
        return found

    def collect(self) -> Iterator[Metric]:
        """The families, from the records as they are now."""
        methods = list(self._methods.values())
        started = CounterMetricFamily(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels=_LABELS,
        )
        handled = CounterMetricFamily(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=(*_LABELS, "grpc_code"),
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels=_LABELS,
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            labels=_LABELS,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            labels=_LABELS,
        )
        in_flight = GaugeMetricFamily(
            "lakehouse_grpc_server_in_flight_requests",
            "Number of RPCs currently being handled.",
            labels=("grpc_service", "grpc_method"),
        )
        for m in methods:
            labels = [m.grpc_type, m.service, m.method]
            started.add_metric(labels, m.started, created=m.created)
            received.add_metric(labels, m.received, created=m.created)
            sent.add_metric(labels, m.sent, created=m.created)
            for code, (count, first) in list(m.handled.items()):
                handled.add_metric(
                    [*labels, GO_CODE_NAMES.get(code, "Unknown")], count, created=first
                )
            cumulative, buckets = 0, []
            for name, count in zip(_BUCKET_NAMES, list(m.buckets), strict=True):
                cumulative += count
                buckets.append((name, float(cumulative)))
            seconds.add_metric(labels, buckets, m.seconds_sum)
            seconds.samples.append(
                Sample(
                    "grpc_server_handling_seconds_created",
                    dict(zip(_LABELS, labels, strict=True)),
                    m.created,
                )
            )
        in_flight_by_method: dict[tuple[str, str], int] = {}
        for m in methods:  # one series per service and method, whatever its type
            key = (m.service, m.method)
            in_flight_by_method[key] = in_flight_by_method.get(key, 0) + m.in_flight
        for (service, method), value in in_flight_by_method.items():
            in_flight.add_metric([service, method], value)
        yield from (started, handled, seconds, received, sent, in_flight)


#: The process's gRPC server series, registered with the default registry (``/metrics``).
GRPC_SERVER = GrpcServerMetrics()
REGISTRY.register(GRPC_SERVER)
