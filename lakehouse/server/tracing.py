"""OpenTelemetry tracing: real spans only when an OTLP endpoint is configured.

Without an exporter no tracing runs on the call path at all: OpenTelemetry's server
interceptor is left out, and the log line takes the caller's trace id from its W3C
``traceparent`` header (what the API's no-op tracer would have carried), which keeps the cost
of an RPC at its floor.
"""

from __future__ import annotations

from opentelemetry import trace

from lakehouse.config import TracingSettings

_configured = False


def tracing_enabled(settings: TracingSettings) -> bool:
    """Whether spans are exported (an OTLP endpoint is configured)."""
    return bool(settings.otlp_endpoint)


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
