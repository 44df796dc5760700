"""The floor of an RPC here: a bare ``grpc.aio`` server with only the health servicer.

No interceptors, no logging, no metrics, no other services: what one unary call costs
Python's gRPC server on this machine. The bench starts it in a child process, like the
lakehouse server, and calls it with the same client and concurrency as ``health_check_qps``,
so that scenario (and ``get_table_qps``) are ratios against it measured in the same run:

    python -m bench.bare_health

prints ``{"port": N, "pid": P}`` on its first line once it listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def serve() -> None:
    """Serves Health on a free port of 127.0.0.1 until killed."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
