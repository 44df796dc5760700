"""The ``lakehouse`` command: flags over the config file, ``health`` on a host whose gRPC port
has TLS (it asks the sidecar's /healthz), and start-up failures as exit statuses.

``serve`` and ``worker`` run as real child processes (they configure logging and bind ports);
``config`` and ``health`` run in-process, as ``lakehouse.cli.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fixtures.certs import TestCA
from fixtures.net import LOOPBACK
from fixtures.serve_process import LAKEHOUSE
from fixtures.subprocess_coverage import coverage_env
from lakehouse.cli import EXIT_CONFIG, run
from lakehouse.config import CONFIG_FILE_ENV, Settings, TlsSettings
from lakehouse.server.app import LakehouseServer

START_FAILURE_TIMEOUT_SECONDS = 60


# -- flags over the config file ----------------------------------------------------------------


def test_flags_override_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lakehouse.yaml"
    config.write_text(
        "grpc_port: 7000\nlog_level: WARNING\ncatalog:\n  warehouse: file:///from/the/file\n"
    )
    monkeypatch.setenv(CONFIG_FILE_ENV, "")  # --config sets it; restored after the test
    argv = [
        "config",
        "--config", str(config),
        "--grpc-port", "7001",
        "--warehouse", "file:///from/the/flag",
        "--catalog-uri", f"sqlite:///{tmp_path}/flag.db",
    ]  # fmt: skip
    assert run(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["grpc_port"] == 7001  # the flag wins over the file
    assert shown["log_level"] == "WARNING"  # from the file
    assert shown["catalog"]["warehouse"] == "file:///from/the/flag"
    assert shown["catalog"]["uri"] == "**********"  # set (a URI may hold a password): masked


def test_a_worker_without_workers_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run(["worker", "--workers", "0", "--data-dir", str(tmp_path)])
    assert status == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err == "lakehouse: jobs.workers must be at least 1 for a worker process\n"
    assert not (tmp_path / "catalog.db").exists()


# -- start-up failures of `lakehouse serve` ------------------------------------------------------


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAKEHOUSE), "serve"],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "LAKEHOUSE_DATA_DIR": str(tmp_path / "data"),
            "LAKEHOUSE_GRPC_HOST": LOOPBACK,
            "LAKEHOUSE_GRPC_PORT": "0",
            "LAKEHOUSE_HTTP_HOST": LOOPBACK,
            "LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS": "0",
            **coverage_env(),
            **env,
        },
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_FAILURE_TIMEOUT_SECONDS,
    )


@pytest.mark.parametrize(
    ("setting", "named"),
    [("LAKEHOUSE_GRPC_PORT", "gRPC port"), ("LAKEHOUSE_HTTP_PORT", "sidecar HTTP port")],
)
def test_a_taken_port_exits_2_with_one_line(tmp_path: Path, setting: str, named: str) -> None:
    """A port another process listens on: one line naming the port and how to move it, no
    traceback, exit 2 (systemd's RestartPreventExitStatus: restarting would not free it)."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(tmp_path, **{"LAKEHOUSE_HTTP_PORT": "0", setting: str(port)})
    assert done.returncode == 2, done.stderr
    flag = "--" + setting.removeprefix("LAKEHOUSE_").lower().replace("_", "-")
    assert done.stderr.splitlines() == [
        f"lakehouse: the {named} {port} on {LOOPBACK} is in use by another process; "
        f"stop it, or choose another port with {setting} or {flag}"
    ]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert "serving" not in [line["msg"] for line in lines]


def test_an_unusable_api_keys_file_exits_2_with_one_line(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys.yaml"
    keys.write_text("- name: [not, a, name]\n  role: nobody\n")
    done = serve(tmp_path, LAKEHOUSE_HTTP_PORT="0", LAKEHOUSE_AUTH__API_KEYS_FILE=str(keys))
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    # One line naming the setting and the file; the server never said it was serving.
    assert done.stderr.startswith(f"lakehouse: auth.api_keys_file: {keys}: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert '"serving"' not in done.stdout


# -- `lakehouse health` on a host whose gRPC port has TLS ----------------------------------------


@contextlib.asynccontextmanager
async def tls_server(
    settings: Settings, tmp_path: Path, *, https_sidecar: bool
) -> AsyncIterator[tuple[LakehouseServer, TlsSettings]]:
    cert, key = TestCA().issue("lakehouse-server", server=True).write(tmp_path / "pki", "server")
    tls = TlsSettings(
        cert_file=cert,
        key_file=key,
        http_cert_file=cert if https_sidecar else None,
        http_key_file=key if https_sidecar else None,
    )
    server = LakehouseServer(settings.model_copy(update={"tls": tls}))
    await server.start()
    try:
        yield server, tls
    finally:
        await asyncio.wait_for(server.stop(), 30)


def health_env(monkeypatch: pytest.MonkeyPatch, tls: TlsSettings, http_port: int) -> None:
    """This host's settings, as `lakehouse health` in the server's container reads them."""
    monkeypatch.setenv("LAKEHOUSE_HTTP_HOST", "0.0.0.0")  # checked on this host's loopback
    monkeypatch.setenv("LAKEHOUSE_HTTP_PORT", str(http_port))
    monkeypatch.setenv("LAKEHOUSE_TLS__CERT_FILE", str(tls.cert_file))
    monkeypatch.setenv("LAKEHOUSE_TLS__KEY_FILE", str(tls.key_file))
    if tls.http_cert_file is not None:
        monkeypatch.setenv("LAKEHOUSE_TLS__HTTP_CERT_FILE", str(tls.http_cert_file))
        monkeypatch.setenv("LAKEHOUSE_TLS__HTTP_KEY_FILE", str(tls.http_key_file))


@pytest.mark.parametrize("https_sidecar", [False, True], ids=["http", "https"])
async def test_health_asks_the_sidecar_when_the_grpc_port_has_tls(
    local_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    https_sidecar: bool,
) -> None:
    scheme = "https" if https_sidecar else "http"
    async with tls_server(local_settings, tmp_path, https_sidecar=https_sidecar) as (server, tls):
        health_env(monkeypatch, tls, server.http_port)
        url = f"{scheme}://{LOOPBACK}:{server.http_port}/healthz"
        assert await asyncio.to_thread(run, ["health", "--timeout", "10"]) == 0
        assert capsys.readouterr().out == f"{url}: alive\n"

    # The server is gone: unhealthy, and the reason is said.
    assert await asyncio.to_thread(run, ["health", "--timeout", "10"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{url}: "), err
