"""Command-line interface: ``lakehouse serve``, ``worker``, ``config``, ``health``, ``api-key``.

Flags override the environment and the config file. An invalid configuration prints one line
to stderr and exits with status 2 before any port is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lakehouse.config import CONFIG_FILE_ENV, ConfigError, Settings, load_settings, masked
from lakehouse.logs import configure_logging
from lakehouse.server.ports import PortInUse

if TYPE_CHECKING:  # the server's modules load only for the commands that run it
    from lakehouse.server.health import HealthMonitor

EXIT_CONFIG = 2
log = logging.getLogger("lakehouse")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse",
        description="gRPC service for Apache Iceberg tables on S3-compatible storage.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, help=f"YAML/JSON/TOML config file (or ${CONFIG_FILE_ENV})"
    )
    common.add_argument("--grpc-host", help="gRPC bind address (LAKEHOUSE_GRPC_HOST)")
    common.add_argument("--grpc-port", type=int, help="gRPC port (LAKEHOUSE_GRPC_PORT)")
    common.add_argument("--http-host", help="sidecar HTTP bind address (LAKEHOUSE_HTTP_HOST)")
    common.add_argument("--http-port", type=int, help="sidecar HTTP port (LAKEHOUSE_HTTP_PORT)")
    common.add_argument(
        "--flight-port", type=int, help="Arrow Flight port; unset: none (LAKEHOUSE_FLIGHT_PORT)"
    )
    common.add_argument(
        "--data-dir", type=Path, help="embedded default's folder (LAKEHOUSE_DATA_DIR)"
    )
    common.add_argument("--catalog-uri", help="catalog URI (LAKEHOUSE_CATALOG__URI)")
    common.add_argument("--warehouse", help="warehouse location (LAKEHOUSE_CATALOG__WAREHOUSE)")
    common.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(LAKEHOUSE_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the server")
    worker = sub.add_parser(
        "worker", parents=[common], help="run job workers only (no gRPC; sidecar HTTP)"
    )
    worker.add_argument(
        "--workers", type=int, help="jobs run at once (LAKEHOUSE_JOBS__WORKERS; at least 1)"
    )
    sub.add_parser("config", parents=[common], help="print the effective config, secrets masked")
    health = sub.add_parser(
        "health",
        parents=[common],
        help="exit 0 if the local process is healthy (for container health checks)",
        description=(
            "Without --target, --service or a TLS flag, the check follows this host's "
            "settings: the sidecar's /healthz (HTTPS if it has TLS) when the container runs "
            "`lakehouse worker` (no gRPC port) or the gRPC port has TLS; otherwise one "
            "grpc.health.v1 Check on the local gRPC port, SERVING meaning healthy."
        ),
    )
    health.add_argument(
        "--target", help="HOST:PORT to check over gRPC (default the local gRPC port)"
    )
    health.add_argument("--service", help="a gRPC health service name; empty means overall")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.add_argument(
        "--tls", action="store_true", help="use TLS, trusting gRPC's bundled public CAs"
    )
    health.add_argument(
        "--cacert", type=Path, help="PEM CA bundle the server's certificate must chain to (TLS)"
    )
    health.add_argument("--cert", type=Path, help="PEM client certificate (mTLS; with --key)")
    health.add_argument("--key", type=Path, help="PEM private key of --cert")
    health.add_argument(
        "--server-name", help="name to verify the server's certificate against (TLS)"
    )
    api_key = sub.add_parser("api-key", help="manage API keys (see docs/security.md)")
    api_key_sub = api_key.add_subparsers(dest="api_key_command", required=True)
    create = api_key_sub.add_parser(
        "create",
        help="print a new API key once, and the config entry (its SHA-256) that accepts it",
    )
    create.add_argument("--name", required=True, help="the principal the key stands for")
    create.add_argument(
        "--role", required=True, choices=["viewer", "developer", "admin"], help="its role"
    )
    create.add_argument(
        "--namespaces", help="comma-separated namespaces it may touch (default: all)"
    )
    create.add_argument(
        "--json", action="store_true", help='print {"key": ..., "entry": {...}} as JSON'
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    flat = {
        "grpc_host": args.grpc_host,
        "grpc_port": args.grpc_port,
        "http_host": args.http_host,
        "http_port": args.http_port,
        "flight_port": args.flight_port,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
    }
    result: dict[str, Any] = {k: v for k, v in flat.items() if v is not None}
    if getattr(args, "workers", None) is not None:
        result["jobs"] = {"workers": args.workers}
    catalog = {"uri": args.catalog_uri, "warehouse": args.warehouse}
    if any(v is not None for v in catalog.values()):
        result["catalog"] = {k: v for k, v in catalog.items() if v is not None}
    return result


def run(argv: list[str]) -> int:
    """Runs the command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "api-key":  # needs no configuration: it only makes a key
        return _create_api_key(args)
    if args.config is not None:
        os.environ[CONFIG_FILE_ENV] = str(args.config)
    try:
        settings = load_settings(_overrides(args))
    except ConfigError as exc:
        print(f"lakehouse: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "config":
        print(json.dumps(masked(settings), indent=2, sort_keys=True))
        return 0
    if args.command == "health":
        if (args.cert is None) != (args.key is None):
            print("lakehouse: --cert and --key go together", file=sys.stderr)
            return EXIT_CONFIG
        tls = None
        if args.tls or any(f is not None for f in (args.cacert, args.cert, args.server_name)):
            tls = _ClientTls(args.cacert, args.cert, args.key, args.server_name)
        explicit = tls is not None or args.target is not None or args.service is not None
        if not explicit and (_container_command() == "worker" or settings.tls.grpc_enabled):
            return _http_health(settings, args.timeout)
        target = args.target or _local_address(settings.grpc_host, settings.grpc_port)
        return _health(target, args.service or "", args.timeout, tls)
    if args.command == "worker" and settings.jobs.workers < 1:
        print("lakehouse: jobs.workers must be at least 1 for a worker process", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings) if args.command == "serve" else _work(settings))
    except PortInUse as exc:  # a configuration problem, like the ones above: one line, 2
        print(f"lakehouse: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    except ConfigError as exc:  # found at start-up, e.g. a malformed auth key file
        print(f"lakehouse: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


class _Process(Protocol):
    """What ``serve`` and ``worker`` run: started, then stopped on a signal."""

    monitor: HealthMonitor

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def _serve(settings: Settings) -> None:
    """Runs the server until SIGTERM/SIGINT, telling systemd (``Type=notify``) about it.

    READY=1 goes out once ``start`` returned: the gRPC port accepts calls and health has been
    checked once. It is sent even when a dependency is down (STATUS says so): the process is
    up and reports NOT_SERVING to load balancers, whereas holding READY back would make
    systemd kill and restart it for an outage it cannot fix.
    """
    from lakehouse.memory import tune_allocator

    tune_allocator()  # before the server's modules allocate anything
    from lakehouse.server.app import LakehouseServer

    server = LakehouseServer(settings)
    await _run_until_signalled(
        server,
        ready=lambda: f"serving gRPC on port {server.grpc_port}, HTTP on port {server.http_port}",
        # Before the drain: systemd then waits TimeoutStopSec instead of treating the quiet
        # period as a hang.
        stopping="draining: health is NOT_SERVING, in-flight calls finish",
        # SIGHUP re-reads the TLS and key files (systemd's ExecReload=kill -HUP); its default
        # would kill us.
        on_sighup=server.request_reload,
    )
    if server.abandoned_calls:
        # Everything was stopped, flushed and closed; only threads waiting on stalled Flight
        # clients are left, and a normal exit would wait for them (see abandoned_calls).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _work(settings: Settings) -> None:
    """Runs job workers until SIGTERM/SIGINT, with the same systemd notifications as serve."""
    from lakehouse.memory import tune_allocator

    tune_allocator()
    from lakehouse.server.worker_app import WorkerProcess

    worker = WorkerProcess(settings)
    await _run_until_signalled(
        worker,
        ready=lambda: f"running {settings.jobs.workers} job slots, HTTP on port {worker.http_port}",
        stopping="stopping: running jobs get the grace period, then are requeued",
        on_sighup=worker.request_reload,
    )


async def _run_until_signalled(
    process: _Process,
    *,
    ready: Callable[[], str],
    stopping: str,
    on_sighup: Callable[[], None] | None = None,
) -> None:
    from lakehouse.server.systemd import Notifier

    notifier = Notifier.from_environment(os.environ)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_sighup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    async with notifier.watchdog():
        await process.start()
        notifier.ready(ready() + "; " + _dependencies(process.monitor.readiness.ready))
        await stop.wait()
        notifier.stopping(stopping)
        await process.stop()


def _dependencies(ready: bool) -> str:
    """The readiness part of the systemd status line."""
    return "dependencies ready" if ready else "waiting for dependencies (see /readyz)"


@dataclasses.dataclass(frozen=True)
class _ClientTls:
    """The ``health`` command's TLS flags."""

    cacert: Path | None
    cert: Path | None
    key: Path | None
    server_name: str | None


def _health(target: str, service: str, timeout: float, tls: _ClientTls | None = None) -> int:
    """One grpc.health.v1 Check: prints the status, exit 0 only for SERVING.

    With ``tls`` it speaks TLS (mTLS with a client certificate): an exec probe's way to check a
    TLS port, since Kubernetes' own gRPC probes only speak plaintext.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from lakehouse.server.tls import CertificateError, client_credentials

    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        try:
            credentials = client_credentials(tls.cacert, tls.cert, tls.key)
        except CertificateError as exc:
            print(f"lakehouse: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
        channel = grpc.secure_channel(target, credentials, options)
    try:
        with channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types lack Check
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        # The details say why a TLS handshake failed (unknown CA, name mismatch, no client cert).
        print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _container_command(cmdline: Path = Path("/proc/1/cmdline")) -> str | None:
    """The ``lakehouse`` command the container's main process runs (``serve``, ``worker``).

    In a container, PID 1 is the image's entry point (or an init such as tini in front of
    it), so this tells a worker container from a server one although both have the same
    settings and the same HEALTHCHECK. None outside a container or for anything else.
    """
    try:
        argv = [arg.decode(errors="replace") for arg in cmdline.read_bytes().split(b"\0")]
    except OSError:
        return None
    for i, arg in enumerate(argv[:-1]):
        if Path(arg).name == "lakehouse" or arg == "lakehouse_cmd.lakehouse":
            return argv[i + 1]
    return None


def _local_address(bind_host: str, port: int) -> str:
    """``HOST:PORT`` that reaches a port bound to ``bind_host`` from this host."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind_host, bind_host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_health(settings: Settings, timeout: float) -> int:
    """GET /healthz on the local sidecar port: exit 0 for 200.

    Over HTTPS the certificate is not verified when the address is a loopback one: the
    request never leaves this host, so nobody can sit in between, and the question is whether
    the process lives, not who it is. (The certificate names the service's DNS name, which
    127.0.0.1 is not, so verifying would fail every healthy check.)
    """
    import ipaddress
    import ssl
    import urllib.error
    import urllib.request

    address = _local_address(settings.http_host, settings.http_port)
    context = None
    if settings.tls.http_enabled:
        context = ssl.create_default_context()
        host = address.rpartition(":")[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    url = f"{'https' if context else 'http'}://{address}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"{url}: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{url}: HTTP {status}", file=sys.stderr)
        return 1
    print(f"{url}: alive")
    return 0


def _create_api_key(args: argparse.Namespace) -> int:
    """``lakehouse api-key create``: a fresh key, printed once, and its config entry.

    The key is 32 random bytes (URL-safe base64) behind an ``lh_`` prefix; only its SHA-256
    goes into the configuration, so the configuration can be shared and backed up like any
    other file, and a lost key is replaced, never recovered.
    """
    from pydantic import ValidationError

    from lakehouse.server.credentials import new_api_key

    namespaces = None
    if args.namespaces is not None:
        namespaces = [ns.strip() for ns in args.namespaces.split(",") if ns.strip()]
    try:
        key, entry = new_api_key(args.name, args.role, namespaces)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"lakehouse: {where}: {first['msg']}", file=sys.stderr)
        return EXIT_CONFIG
    data = entry.model_dump(exclude_none=True, mode="json")
    if args.json:
        print(json.dumps({"key": key, "entry": data}))
        return 0
    import yaml

    print(f"API key of {entry.name} (shown once: store it now; the service keeps only its hash):")
    print()
    print(f"  {key}")
    print()
    print("Add this entry to the list in auth.api_keys_file (YAML):")
    print()
    print(yaml.safe_dump([data], sort_keys=False, default_flow_style=None).rstrip())
    print()
    print("or to the JSON list in LAKEHOUSE_AUTH__API_KEYS:")
    print()
    print(f"  {json.dumps(data)}")
    return 0
