"""The sidecar HTTP app: /metrics (Prometheus), /healthz (liveness), /readyz (readiness).

All three answer anyone by default: probes and scrapers rarely carry credentials, and the port
belongs on an internal network. With authentication on, ``auth.public_metrics`` and
``auth.public_probes`` set to false make them ask for the credential a gRPC call carries
(``Authorization: Bearer`` with an API key or a JWT, any role); a request without a valid
one gets ``401`` with ``WWW-Authenticate: Bearer`` and no hint of what was wrong, and the
reason goes to the server log, as for gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from lakehouse.config import AuthSettings
from lakehouse.server.credentials import Authenticator, CredentialError
from lakehouse.server.health import HealthMonitor

log = logging.getLogger("lakehouse.auth")

METRICS_PATH = "/metrics"
PROBE_PATHS = ("/healthz", "/readyz")


def guarded_paths(settings: AuthSettings) -> frozenset[str]:
    """The sidecar paths that need credentials under ``settings`` (when auth is on)."""
    paths: set[str] = set()
    if not settings.public_metrics:
        paths.add(METRICS_PATH)
    if not settings.public_probes:
        paths.update(PROBE_PATHS)
    return frozenset(paths)


def build_http_app(
    monitor: HealthMonitor,
    *,
    authenticator: Authenticator | None = None,
    auth: AuthSettings | None = None,
) -> web.Application:
    """The aiohttp application serving the three endpoints.

    Args:
        monitor: The readiness /readyz reports.
        authenticator: Checks the credentials of guarded paths; without it, or when it is
            not enabled, every path is public.
        auth: Which paths are public (``auth.public_metrics``, ``auth.public_probes``).
    """

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

    middlewares: list[Middleware] = []
    guarded = guarded_paths(auth) if auth is not None else frozenset()
    if authenticator is not None and authenticator.enabled and guarded:
        middlewares.append(_require_credentials(authenticator, guarded))
    app = web.Application(middlewares=middlewares)
    app.router.add_get(METRICS_PATH, metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _require_credentials(authenticator: Authenticator, guarded: Collection[str]) -> Middleware:
    """A middleware letting through to ``guarded`` paths only requests with a valid bearer."""

    @web.middleware
    async def require_credentials(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The route aiohttp matched, not the raw path: "/metrics/" or "/%6detrics" must not
        # reach a guarded handler around the check. Unknown paths have no resource (404).
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in guarded:
            try:
                authenticator.authenticate(_metadata(request.headers.items()), _no_certificate)
            except CredentialError as exc:
                log.info(
                    "authentication failed",
                    extra={
                        "path": resource.canonical,
                        "reason": exc.detail,
                        "peer": request.remote,
                    },
                )
                raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"}) from None
        return await handler(request)

    return require_credentials


def _metadata(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """HTTP headers as gRPC metadata: lower-case names (HTTP's are case-insensitive)."""
    return [(name.lower(), value) for name, value in headers]


def _no_certificate() -> Mapping[str, Iterable[bytes]]:
    """The sidecar asks for no client certificate: only bearer credentials count there."""
    return {}
