"""TLS and mTLS on the gRPC port, HTTPS on the sidecar, certificate reload, TLS config.

Every certificate is made at test time by :mod:`fixtures.certs`. Servers run on 127.0.0.1:
in-process ``LakehouseServer``s, and one real ``lakehouse serve`` process for SIGHUP. Which
certificate a port serves is read the way an operator would check it: a TLS handshake with
Python's ``ssl`` (ALPN h2 for gRPC) and the peer certificate's serial number.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures.certs import Issued, TestCA
from fixtures.net import LOOPBACK
from fixtures.serve_process import LAKEHOUSE, serve_process, settings_env
from lakehouse.config import AuthSettings, ConfigError, Settings, TlsSettings, load_settings
from lakehouse.server.app import LakehouseServer
from lakehouse.server.credentials import new_api_key
from lakehouse.server.tls import CertificateError, ServerTls, load_key_pair
from lakehouse.server.worker_app import WorkerProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
#: How long a rotated certificate may take to show (the watch polls every 0.1 s in tests).
ROTATION_TIMEOUT_SECONDS = 10.0


@dataclasses.dataclass
class Pki:
    """A CA with server and client certificates, another CA, and their files in ``dir``."""

    dir: Path
    ca: TestCA
    ca_file: Path
    server: Issued
    client: Issued
    other_ca: TestCA
    other_ca_file: Path
    stranger: Issued  # a client certificate from the other CA

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    @property
    def stranger_cert(self) -> Path:
        return self.dir / "stranger.crt"

    @property
    def stranger_key(self) -> Path:
        return self.dir / "stranger.key"

    def rotate(self, name: str = "server", ca: TestCA | None = None) -> Issued:
        """Replaces ``name.crt``/``name.key`` with a new pair (new serial), as cert-manager does."""
        issued = (ca or self.ca).issue(f"lakehouse-{name}-rotated", server=True)
        issued.write(self.dir, name)
        return issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    ca, other_ca = TestCA("lakehouse test CA"), TestCA("some other CA")
    server = ca.issue("lakehouse-server", server=True)
    client = ca.issue("etl-job", client=True)
    stranger = other_ca.issue("etl-job", client=True)
    server.write(directory, "server")
    server.write(directory, "http")
    client.write(directory, "client")
    stranger.write(directory, "stranger")
    return Pki(
        directory,
        ca,
        ca.write(directory, "ca"),
        server,
        client,
        other_ca,
        other_ca.write(directory, "other-ca"),
        stranger,
    )


def tls_settings(pki: Pki, *, mtls: bool = False, **extra: Any) -> TlsSettings:
    return TlsSettings(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        client_ca_file=pki.ca_file if mtls else None,
        require_client_cert=mtls,
        **extra,
    )


@contextlib.asynccontextmanager
async def running(settings: Settings, tls: TlsSettings) -> AsyncIterator[LakehouseServer]:
    server = LakehouseServer(settings.model_copy(update={"tls": tls}))
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), 30)


def credentials(trust: TestCA, client: Issued | None = None) -> grpc.ChannelCredentials:
    """Channel credentials trusting ``trust``, presenting ``client``'s certificate if given."""
    return grpc.ssl_channel_credentials(
        trust.cert_pem,
        client.key_pem if client else None,
        client.cert_pem if client else None,
    )


async def check(port: int, creds: grpc.ChannelCredentials | None, timeout: float = 5) -> int:
    target = f"{LOOPBACK}:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if creds is None
        else grpc.aio.secure_channel(target, creds)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
    return int(reply.status)


def served_serial(port: int, ca: TestCA | list[TestCA], client: Pki | None = None) -> int:
    """The serial number of the certificate a new TLS connection to ``port`` is shown.

    ``ca`` is the CA (or CAs) to trust; with ``client``, its client certificate is presented
    (for an mTLS port).
    """
    cas = ca if isinstance(ca, list) else [ca]
    context = ssl.create_default_context(cadata=b"".join(c.cert_pem for c in cas).decode())
    context.set_alpn_protocols(["h2", "http/1.1"])  # gRPC needs h2; the sidecar speaks 1.1
    if client is not None:
        context.load_cert_chain(client.client_cert, client.client_key)
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


async def wait_serial(
    port: int, ca: TestCA | list[TestCA], serial: int, client: Pki | None = None
) -> None:
    deadline = time.monotonic() + ROTATION_TIMEOUT_SECONDS
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(served_serial, port, ca, client)
        if last == serial:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} still serves serial {last}, not {serial}")


async def run_grpcurl(
    grpcurl_bin: Path, flags: list[str], target: str, *call: str
) -> tuple[int, str]:
    """Runs grpcurl; returns (exit status, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(grpcurl_bin),
        # grpcurl retries a refused handshake until the connect timeout: keep it short.
        "-connect-timeout",
        "3",
        "-max-time",
        "10",
        *flags,
        target,
        *call,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


# -- TLS and mTLS on the gRPC port -----------------------------------------------------------


async def test_tls_port_serves_clients_trusting_the_ca_only(
    local_settings: Settings, pki: Pki
) -> None:
    async with running(local_settings, tls_settings(pki)) as server:
        assert server.tls.mode == "tls"
        assert await check(server.grpc_port, credentials(pki.ca)) == SERVING
        with pytest.raises(grpc.aio.AioRpcError) as plaintext:
            await check(server.grpc_port, None)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as untrusted:
            await check(server.grpc_port, credentials(pki.other_ca))
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
        served = await asyncio.to_thread(served_serial, server.grpc_port, pki.ca)
        assert served == pki.server.serial


async def test_mtls_port_requires_a_client_certificate_from_the_ca(
    local_settings: Settings, pki: Pki
) -> None:
    async with running(local_settings, tls_settings(pki, mtls=True)) as server:
        assert server.tls.mode == "mtls"
        port = server.grpc_port
        assert await check(port, credentials(pki.ca, pki.client)) == SERVING
        for creds in (credentials(pki.ca), credentials(pki.ca, pki.stranger)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await check(port, creds)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_client_identity_is_in_the_auth_context(pki: Pki) -> None:
    """The contract lakehouse.server.auth builds on: CN and SANs of the verified client."""

    async def who(_: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        auth = context.auth_context()
        return json.dumps(
            {
                "cn": [v.decode() for v in auth.get("x509_common_name", [])],
                "san": [v.decode() for v in auth.get("x509_subject_alternative_name", [])],
            }
        ).encode()

    tls = ServerTls(tls_settings(pki, mtls=True))
    tls.load()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Identity", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            )
        ]
    )
    assert tls.grpc_credentials is not None
    port = server.add_secure_port(f"{LOOPBACK}:0", tls.grpc_credentials)
    await server.start()
    try:
        async with grpc.aio.secure_channel(
            f"{LOOPBACK}:{port}", credentials(pki.ca, pki.client)
        ) as channel:
            reply = await channel.unary_unary("/test.Identity/Who")(b"", timeout=5)
    finally:
        await server.stop(0)
    assert json.loads(reply) == {"cn": ["etl-job"], "san": ["localhost", LOOPBACK]}


async def test_grpcurl_with_cacert_and_client_certificates(
    local_settings: Settings, pki: Pki, grpcurl: Path
) -> None:
    ca = ["-cacert", str(pki.ca_file)]
    client = ["-cert", str(pki.client_cert), "-key", str(pki.client_key)]
    async with running(local_settings, tls_settings(pki)) as server:
        target = f"{LOOPBACK}:{server.grpc_port}"
        status, out = await run_grpcurl(grpcurl, ca, target, "grpc.health.v1.Health/Check")
        assert (status, json.loads(out)) == (0, {"status": "SERVING"})
        status, out = await run_grpcurl(grpcurl, ca, target, "list")
        assert status == 0, out
        assert "lakehouse.v1.TableService" in out.split()
        status, out = await run_grpcurl(grpcurl, ["-plaintext"], target, "list")
        assert status != 0
        assert "Failed to dial target host" in out

    async with running(local_settings, tls_settings(pki, mtls=True)) as server:
        target = f"{LOOPBACK}:{server.grpc_port}"
        status, out = await run_grpcurl(grpcurl, ca + client, target, "grpc.health.v1.Health/Check")
        assert (status, json.loads(out)) == (0, {"status": "SERVING"})
        status, out = await run_grpcurl(grpcurl, ca + client, target, "list")
        assert status == 0, out
        assert "grpc.health.v1.Health" in out.split()
        status, out = await run_grpcurl(grpcurl, ca, target, "list")
        assert status != 0, "no client certificate must be refused"
        assert "Failed to dial target host" in out
        stranger = ["-cert", str(pki.stranger_cert), "-key", str(pki.stranger_key)]
        status, out = await run_grpcurl(grpcurl, ca + stranger, target, "list")
        assert status != 0, "a client certificate from another CA must be refused"
        assert "Failed to dial target host" in out


# -- Reload ------------------------------------------------------------------------------------


async def test_rotated_files_are_served_to_new_connections_and_old_ones_keep_working(
    local_settings: Settings, pki: Pki
) -> None:
    """The new pair comes from another CA (a CA rotation): a channel that trusts only the old
    CA can keep working only on its existing connection, which proves it was kept."""
    tls = tls_settings(
        pki,
        reload_interval_seconds=0.1,
        http_cert_file=pki.dir / "http.crt",
        http_key_file=pki.dir / "http.key",
    )
    async with (
        running(local_settings, tls) as server,
        grpc.aio.secure_channel(f"{LOOPBACK}:{server.grpc_port}", credentials(pki.ca)) as old,
    ):
        health = health_pb2_grpc.HealthStub(old)
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING

        rotated = pki.rotate("server", ca=pki.other_ca)
        rotated_http = pki.rotate("http", ca=pki.other_ca)
        both = [pki.ca, pki.other_ca]
        await wait_serial(server.grpc_port, both, rotated.serial)
        await wait_serial(server.http_port, both, rotated_http.serial)

        assert await check(server.grpc_port, credentials(pki.other_ca)) == SERVING
        with pytest.raises(grpc.aio.AioRpcError):
            await check(server.grpc_port, credentials(pki.ca))  # new connection: new cert
        for _ in range(3):
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == SERVING
        assert old.get_state() == grpc.ChannelConnectivity.READY


async def test_a_bad_new_pair_is_refused_and_the_old_one_stays(
    local_settings: Settings, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    tls = tls_settings(pki, reload_interval_seconds=0)
    async with running(local_settings, tls) as server:
        port = server.grpc_port
        new = pki.ca.issue("lakehouse-server-2", server=True)
        other = pki.ca.issue("lakehouse-server-3", server=True)
        # A key that does not match, then an unreadable key: both refused, old pair served.
        pki.server_cert.write_bytes(new.cert_pem)
        pki.server_key.write_bytes(other.key_pem)
        with caplog.at_level(logging.ERROR, logger="lakehouse.server.tls"):
            assert await server.tls.reload() is False
            pki.server_key.unlink()
            assert await server.tls.reload() is False
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert [r.__dict__["port"] for r in refusals] == ["grpc", "grpc"]
        assert "KEY_VALUES_MISMATCH" in refusals[0].__dict__["error"]
        assert "cannot read" in refusals[1].__dict__["error"]
        assert await asyncio.to_thread(served_serial, port, pki.ca) == pki.server.serial
        assert await check(port, credentials(pki.ca)) == SERVING

        pki.server_key.write_bytes(new.key_pem)  # the rotation completes
        assert await server.tls.reload() is True
        assert await asyncio.to_thread(served_serial, port, pki.ca) == new.serial


def test_sighup_reloads_a_real_server_process(
    local_settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    env = {
        **settings_env(local_settings),
        "LAKEHOUSE_TLS__CERT_FILE": str(pki.server_cert),
        "LAKEHOUSE_TLS__KEY_FILE": str(pki.server_key),
        "LAKEHOUSE_TLS__CLIENT_CA_FILE": str(pki.ca_file),
        "LAKEHOUSE_TLS__REQUIRE_CLIENT_CERT": "true",
        "LAKEHOUSE_TLS__RELOAD_INTERVAL_SECONDS": "0",  # SIGHUP only
    }
    creds = credentials(pki.ca, pki.client)
    with serve_process(tmp_path / "server", env, credentials=creds) as server:
        port = server.grpc_port
        assert served_serial(port, pki.ca, pki) == pki.server.serial
        with grpc.secure_channel(server.target, creds) as old:
            health = health_pb2_grpc.HealthStub(old)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING

            rotated = pki.rotate()
            time.sleep(0.3)  # the watch is off: nothing changes without the signal
            assert served_serial(port, pki.ca, pki) == pki.server.serial
            os.kill(server.pid, signal.SIGHUP)
            asyncio.run(wait_serial(port, pki.ca, rotated.serial, pki))

            assert server.proc is not None and server.proc.poll() is None  # HUP did not kill it
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
            assert server.health() == SERVING  # a new connection, on the new certificate

        # `lakehouse health` as an exec probe would run it, with mTLS flags.
        probe = subprocess.run(
            [
                str(LAKEHOUSE),
                "health",
                "--target",
                server.target,
                "--cacert",
                str(pki.ca_file),
                "--cert",
                str(pki.client_cert),
                "--key",
                str(pki.client_key),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING"), probe.stderr
    lines = [json.loads(line) for line in server.stdout_path.read_text().splitlines()]
    reloads = [line for line in lines if line.get("msg") == "reloading TLS certificates"]
    assert [line["trigger"] for line in reloads] == ["signal"]
    assert {line.get("grpc_tls") for line in lines if line.get("msg") == "serving"} == {"mtls"}


# -- lakehouse health against TLS ports -------------------------------------------------------


async def test_health_command_speaks_tls_and_mtls(
    local_settings: Settings, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakehouse.cli import run

    async def health(*flags: str) -> int:
        return await asyncio.to_thread(
            run, ["health", "--target", target, "--timeout", "3", *flags]
        )

    cacert = ["--cacert", str(pki.ca_file)]
    async with running(local_settings, tls_settings(pki)) as server:
        target = f"{LOOPBACK}:{server.grpc_port}"
        assert await health(*cacert) == 0
        assert await health(*cacert, "--server-name", "localhost") == 0
        assert await health(*cacert, "--server-name", "elsewhere.example") == 1
        assert await health() == 1  # plaintext against a TLS port
        assert await health("--cacert", str(pki.other_ca_file)) == 1
        # --tls trusts gRPC's default roots, which this variable replaces.
        monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(pki.ca_file))
        assert await health("--tls") == 0

    client = ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    async with running(local_settings, tls_settings(pki, mtls=True)) as server:
        target = f"{LOOPBACK}:{server.grpc_port}"
        assert await health(*cacert, *client) == 0
        assert await health(*cacert) == 1
        assert await health(*cacert, "--cert", str(pki.client_cert)) == 2  # no --key
        assert await health(*cacert, "--cert", str(pki.client_cert), "--key", "/nope") == 2


# -- The sidecar over HTTPS ------------------------------------------------------------------


async def test_sidecar_serves_https_when_configured(local_settings: Settings, pki: Pki) -> None:
    tls = TlsSettings(http_cert_file=pki.dir / "http.crt", http_key_file=pki.dir / "http.key")
    async with running(local_settings, tls) as server:
        assert server.tls.mode == "plaintext"  # the gRPC port is independent
        assert await check(server.grpc_port, None) == SERVING

        def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, Any]:
            with urllib.request.urlopen(url, timeout=5, context=context) as resp:
                return resp.status, json.loads(resp.read())

        trusting = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
        url = f"https://{LOOPBACK}:{server.http_port}/healthz"
        assert await asyncio.to_thread(get, url, trusting) == (200, {"status": "ok"})
        with pytest.raises(ConnectionError):  # the TLS server hangs up on plain HTTP
            await asyncio.to_thread(get, url.replace("https", "http"))
        untrusting = ssl.create_default_context(cadata=pki.other_ca.cert_pem.decode())
        with pytest.raises(urllib.error.URLError) as unverified:
            await asyncio.to_thread(get, url, untrusting)
        assert isinstance(unverified.value.reason, ssl.SSLCertVerificationError)


async def test_a_worker_sidecar_gets_the_same_tls_and_credentials(
    local_settings: Settings, pki: Pki
) -> None:
    """``lakehouse worker`` reads the same settings: its probes and scrapes work the same way."""
    plain, entry = new_api_key("scraper", "viewer")
    settings = local_settings.model_copy(
        update={
            "tls": TlsSettings(
                http_cert_file=pki.dir / "http.crt", http_key_file=pki.dir / "http.key"
            ),
            "auth": AuthSettings(api_keys=(entry,), public_metrics=False),
        }
    )
    worker = WorkerProcess(settings)
    await worker.start()
    try:
        trusting = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())

        def get(path: str, authorization: str | None = None) -> int:
            request = urllib.request.Request(f"https://{LOOPBACK}:{worker.http_port}{path}")
            if authorization:
                request.add_header("Authorization", authorization)
            try:
                with urllib.request.urlopen(request, timeout=5, context=trusting) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await asyncio.to_thread(get, "/healthz") == 200
        assert await asyncio.to_thread(get, "/metrics") == 401
        assert await asyncio.to_thread(get, "/metrics", f"Bearer {plain}") == 200
        with pytest.raises(ConnectionError):  # no plain HTTP beside it
            await asyncio.to_thread(
                urllib.request.urlopen, f"http://{LOOPBACK}:{worker.http_port}/healthz", None, 5
            )
    finally:
        await asyncio.wait_for(worker.stop(), 30)


# -- Configuration and start-up --------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LAKEHOUSE_TLS__CERT_FILE": "/c.pem"}, "tls.cert_file and tls.key_file go together"),
        ({"LAKEHOUSE_TLS__KEY_FILE": "/k.pem"}, "tls.cert_file and tls.key_file go together"),
        ({"LAKEHOUSE_TLS__HTTP_CERT_FILE": "/c.pem"}, "tls.http_cert_file and tls.http_key_file"),
        (
            {
                "LAKEHOUSE_TLS__CERT_FILE": "/c.pem",
                "LAKEHOUSE_TLS__KEY_FILE": "/k.pem",
                "LAKEHOUSE_TLS__REQUIRE_CLIENT_CERT": "true",
            },
            "tls.require_client_cert needs tls.client_ca_file",
        ),
        (
            {
                "LAKEHOUSE_TLS__CERT_FILE": "/c.pem",
                "LAKEHOUSE_TLS__KEY_FILE": "/k.pem",
                "LAKEHOUSE_TLS__CLIENT_CA_FILE": "/ca.pem",
            },
            "tls.client_ca_file needs tls.require_client_cert=true",
        ),
        ({"LAKEHOUSE_TLS__RELOAD_INTERVAL_SECONDS": "-1"}, "tls.reload_interval_seconds"),
    ],
)
def test_inconsistent_tls_settings_are_config_errors(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_file_settings_are_paths_not_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LAKEHOUSE_TLS__CERT_FILE`` names the setting ``tls.cert_file``, while
    ``LAKEHOUSE_S3__SECRET_ACCESS_KEY_FILE`` still reads ``s3.secret_access_key`` from a file."""
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    monkeypatch.setenv("LAKEHOUSE_TLS__CERT_FILE", "/etc/lakehouse/tls/tls.crt")
    monkeypatch.setenv("LAKEHOUSE_TLS__KEY_FILE", "/etc/lakehouse/tls/tls.key")
    monkeypatch.setenv("LAKEHOUSE_TRINO__CA_FILE", "/etc/ssl/trino-ca.pem")
    monkeypatch.setenv("LAKEHOUSE_S3__SECRET_ACCESS_KEY_FILE", str(secret))
    settings = load_settings()
    assert settings.tls.cert_file == Path("/etc/lakehouse/tls/tls.crt")
    assert settings.tls.key_file == Path("/etc/lakehouse/tls/tls.key")
    assert settings.trino.ca_file == Path("/etc/ssl/trino-ca.pem")
    assert settings.s3.secret_access_key is not None
    assert settings.s3.secret_access_key.get_secret_value() == "s3cr3t"


def test_cert_without_key_exits_2_before_binding(tmp_path: Path, pki: Pki) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lakehouse_cmd.lakehouse", "serve", "--data-dir", str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "LAKEHOUSE_TLS__CERT_FILE": str(pki.server_cert)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "tls.cert_file and tls.key_file go together" in proc.stderr
    assert not (tmp_path / "catalog.db").exists()


async def test_unusable_files_stop_the_start(local_settings: Settings, pki: Pki) -> None:
    other = pki.ca.issue("other", server=True)
    other.write(pki.dir, "other")
    encrypted = pki.dir / "encrypted.key"
    key = serialization.load_pem_private_key(pki.server.key_pem, password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    cases = {
        "cannot read": TlsSettings(cert_file=pki.dir / "missing.crt", key_file=pki.server_key),
        "KEY_VALUES_MISMATCH": TlsSettings(
            cert_file=pki.server_cert, key_file=pki.dir / "other.key"
        ),
        "is encrypted": TlsSettings(cert_file=pki.server_cert, key_file=encrypted),
        "no PEM private key": TlsSettings(cert_file=pki.server_cert, key_file=pki.ca_file),
        "no PEM certificate": TlsSettings(cert_file=pki.server_key, key_file=pki.server_key),
        "not a PEM CA bundle": TlsSettings(
            cert_file=pki.server_cert,
            key_file=pki.server_key,
            client_ca_file=pki.server_key,
            require_client_cert=True,
        ),
    }
    for expected, tls in cases.items():
        server = LakehouseServer(local_settings.model_copy(update={"tls": tls}))
        with pytest.raises(CertificateError, match=expected):
            await server.start()
        await server.stop(0)
    assert load_key_pair(pki.server_cert, pki.server_key).fingerprint.count(":") == 31
