"""Command-line interface: ``lakehouse serve``, ``worker``, ``config`` and ``health``.

Flags override the environment and the config file. An invalid configuration prints one line
to stderr and exits with status 2 before any port is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lakehouse.config import CONFIG_FILE_ENV, ConfigError, Settings, load_settings, masked
from lakehouse.logs import configure_logging

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
        help="exit 0 if the server's gRPC health is SERVING (for container health checks)",
    )
    health.add_argument("--target", help="HOST:PORT to check (default 127.0.0.1:<grpc port>)")
    health.add_argument("--service", default="", help="a service name; empty means overall")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    flat = {
        "grpc_host": args.grpc_host,
        "grpc_port": args.grpc_port,
        "http_host": args.http_host,
        "http_port": args.http_port,
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
        target = args.target or f"127.0.0.1:{settings.grpc_port}"
        return _health(target, args.service, args.timeout)
    if args.command == "worker" and settings.jobs.workers < 1:
        print("lakehouse: jobs.workers must be at least 1 for a worker process", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings) if args.command == "serve" else _work(settings))
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    return 0


async def _serve(settings: Settings) -> None:
    from lakehouse.memory import tune_allocator
    from lakehouse.server.app import LakehouseServer

    tune_allocator()
    server = LakehouseServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()


async def _work(settings: Settings) -> None:
    from lakehouse.memory import tune_allocator
    from lakehouse.server.worker_app import WorkerProcess

    tune_allocator()
    worker = WorkerProcess(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    await stop.wait()
    await worker.stop()


def _health(target: str, service: str, timeout: float) -> int:
    """One grpc.health.v1 Check: prints the status, exit 0 only for SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types lack Check
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
