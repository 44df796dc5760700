"""OpenTelemetry tracing: real spans only when an OTLP endpoint is configured.

Without an exporter the API's no-op tracer stays in place: it still carries an incoming W3C
``traceparent`` through the call (so log lines show the caller's trace id) but records
nothing, which keeps the cost of an RPC at its floor.
"""

from __future__ import annotations

from opentelemetry import trace

from lakehouse.config import TracingSettings

_configured = False


def configure_tracing(settings: TracingSettings) -> None:
    """Installs an exporting tracer provider once per process, if an endpoint is configured."""
    global _configured
    if _configured or not settings.otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    )
    trace.set_tracer_provider(provider)
    _configured = True
