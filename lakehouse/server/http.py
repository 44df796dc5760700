"""The sidecar HTTP app: /metrics (Prometheus), /healthz (liveness), /readyz (readiness)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from lakehouse.server.health import HealthMonitor


def build_http_app(monitor: HealthMonitor) -> web.Application:
    """The aiohttp application serving the three endpoints."""

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive; dependencies belong to /readyz.
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        r = monitor.readiness
        body = {
            "status": "ready" if r.ready else "not_ready",
            "checks": r.checks,
            "timestamp": r.checked_at.isoformat().replace("+00:00", "Z"),
        }
        return web.json_response(body, status=200 if r.ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
