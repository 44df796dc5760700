"""`lakehouse serve` as a real process: JSON logs, health, SIGTERM -> graceful exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures.net import free_port
from fixtures.subprocess_coverage import coverage_env

LAKEHOUSE = Path(sys.executable).parent / "lakehouse"


def wait_serving(port: int, deadline: float) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError("server did not become SERVING in time")


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS": "1",
        "LAKEHOUSE_SHUTDOWN_GRACE_SECONDS": "5",
        **coverage_env(),
    }
    argv = [
        str(LAKEHOUSE), "serve",
        "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--http-host", "127.0.0.1", "--http-port", str(http_port),
        "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_serving(grpc_port, time.monotonic() + 60)
        assert (tmp_path / "data" / "catalog.db").exists()
        proc.send_signal(signal.SIGTERM)
        # health turns NOT_SERVING during the drain, before the port closes
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    messages = [entry["msg"] for entry in lines]
    assert "serving" in messages
    assert messages.index("shutting down") < messages.index("stopped")
    assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in lines)
