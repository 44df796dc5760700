"""The systemd units, without a running systemd (none runs here).

- ``systemd-analyze verify`` accepts both units, and ``systemd-analyze security --offline``
  scores their sandbox at an exposure of at most 2.5;
- the units agree with the service: entry points, stop budget versus the shutdown settings,
  the config-error exit status, the state directory, credential names;
- started exactly as the unit's ``ExecStart=`` (with the unit's environment, an environment
  file and a credentials directory), ``lakehouse serve`` and ``lakehouse worker`` send
  ``READY=1`` only once they serve, ``WATCHDOG=1`` while they run and ``STOPPING=1`` on
  SIGTERM, then exit 0: the notify socket is a real unix datagram socket bound by the test;
- sd_notify itself (path and abstract sockets, failures) and systemd credentials in the
  configuration;
- ``systemd/lakehouse.env.example`` lists every setting with its default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel

from fixtures.net import LOOPBACK, free_port
from fixtures.subprocess_coverage import coverage_env
from lakehouse.cli import EXIT_CONFIG
from lakehouse.config import (
    ConfigError,
    Settings,
    file_setting_names,
    load_settings,
    masked,
    secret_setting_names,
)
from lakehouse.server.systemd import Notifier

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "systemd"
UNITS = {"lakehouse.service": "serve", "lakehouse-worker.service": "worker"}
ENV_EXAMPLE = SYSTEMD_DIR / "lakehouse.env.example"
BARE_METAL_DOC = ROOT / "docs" / "deploy" / "bare-metal.md"
LAKEHOUSE = Path(sys.executable).parent / "lakehouse"
INSTALLED_LAKEHOUSE = "/opt/lakehouse/bin/lakehouse"
MAX_EXPOSURE = 2.5
#: systemd's default PATH for system services.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT_SECONDS = 60.0
GRACE_SECONDS = 2.0


# -- unit files ------------------------------------------------------------------------------


def unit_entries(unit: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}`` of a unit file (comments dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (SYSTEMD_DIR / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(unit: str) -> dict[str, list[str]]:
    return unit_entries(unit)["Service"]


def one(unit: str, key: str) -> str:
    values = service(unit)[key]
    assert len(values) == 1, f"{unit}: {key} given {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span such as ``30s``, ``1min 30s`` or ``90``, in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is missing: run tests/tools/install-system-deps.sh (Debian's "
            "systemd package)",
            pytrace=False,
        )
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    found = re.match(r"systemd (\d+)", version.stdout)
    if found is None or int(found.group(1)) < 250:  # --offline and --recursive-errors
        pytest.fail(f"systemd-analyze 250 or later is needed, not {version.stdout[:40]!r}")
    return path


def unit_for_this_host(unit: str, directory: Path) -> Path:
    """A copy of the unit whose ExecStart runs this venv's ``lakehouse`` (verify checks that
    the program exists; /opt/lakehouse is the production venv, absent here)."""
    text = (SYSTEMD_DIR / unit).read_text()
    assert f"ExecStart={INSTALLED_LAKEHOUSE} " in text
    copy = directory / unit
    copy.write_text(text.replace(f"ExecStart={INSTALLED_LAKEHOUSE} ", f"ExecStart={LAKEHOUSE} "))
    return copy


@pytest.mark.parametrize("unit", list(UNITS))
def test_systemd_analyze_verify_accepts_the_unit(unit: str, tmp_path: Path) -> None:
    copy = unit_for_this_host(unit, tmp_path)
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", "--recursive-errors=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("unit", list(UNITS))
def test_sandbox_exposure_is_at_most_2_5(unit: str) -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(SYSTEMD_DIR / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SYSTEMD_DIR,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout
    # The bare-metal page quotes the score: it must be the one systemd gives today.
    quoted = re.search(r"--offline=yes` scores both (\d+(?:\.\d+)?)", BARE_METAL_DOC.read_text())
    assert quoted, "docs/deploy/bare-metal.md no longer quotes the exposure score"
    assert float(quoted.group(1)) == exposure, f"the doc says {quoted.group(1)}, systemd {exposure}"


@pytest.mark.parametrize(("unit", "command"), list(UNITS.items()))
def test_unit_runs_the_container_entry_point_and_fits_the_shutdown_settings(
    unit: str, command: str
) -> None:
    svc = service(unit)
    # `systemctl reload`: both re-read their TLS and key files on SIGHUP.
    assert one(unit, "ExecReload") == "kill -HUP $MAINPID"
    # The container's ENTRYPOINT ["lakehouse"] with CMD serve/worker, from /opt/lakehouse.
    assert one(unit, "ExecStart") == f"{INSTALLED_LAKEHOUSE} {command}"
    assert (one(unit, "Type"), one(unit, "NotifyAccess")) == ("notify", "main")
    assert (one(unit, "KillSignal"), one(unit, "Restart")) == ("SIGTERM", "on-failure")
    # A configuration error (exit 2) is not restarted in a loop.
    assert one(unit, "RestartPreventExitStatus") == str(EXIT_CONFIG)
    # SIGKILL only after the drain and the grace period, with a margin for closing adapters.
    defaults = Settings.model_fields
    budget = defaults["shutdown_drain_seconds"].default + defaults["shutdown_grace_seconds"].default
    assert seconds(one(unit, "TimeoutStopSec")) >= budget + 5
    assert seconds(one(unit, "WatchdogSec")) >= 10  # pings come from the event loop
    assert svc["EnvironmentFile"][0] == "/etc/lakehouse/lakehouse.env"
    # The data dir is the state directory: the only place the sandbox lets the service write.
    env = unit_environment(unit)
    assert one(unit, "StateDirectory") == "lakehouse"
    assert env["LAKEHOUSE_DATA_DIR"] == "/var/lib/lakehouse"
    assert (one(unit, "DynamicUser"), one(unit, "User")) == ("yes", "lakehouse")
    # Only real settings (an unknown LAKEHOUSE_* variable would stop the service).
    assert {k for k in env if k.startswith("LAKEHOUSE_")} <= set(leaf_settings())


@pytest.mark.parametrize("unit", list(UNITS))
def test_the_units_credential_examples_name_settings(unit: str) -> None:
    text = (SYSTEMD_DIR / unit).read_text()
    examples = re.findall(r"^#?LoadCredential=([^:\s]+):(\S+)$", text, re.MULTILINE)
    assert examples
    for name, source in examples:
        assert name in secret_setting_names() + file_setting_names()
        assert source == f"/etc/lakehouse/credentials/{name}"


def unit_environment(unit: str) -> dict[str, str]:
    """The unit's ``Environment=`` assignments (space-separated, shell-like quoting)."""
    env: dict[str, str] = {}
    for value in service(unit).get("Environment", []):
        for assignment in shlex.split(value):
            key, _, val = assignment.partition("=")
            env[key] = val
    return env


def parse_environment_file(text: str) -> dict[str, str]:
    """The assignments of an ``EnvironmentFile=`` (comments, blank lines, quoted values)."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


# -- the example environment file ------------------------------------------------------------


def leaf_settings(model: type[BaseModel] = Settings, prefix: str = "LAKEHOUSE_") -> dict[str, Any]:
    """``{LAKEHOUSE_NAME: default}`` for every setting."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= leaf_settings(annotation, f"{prefix}{name.upper()}__")
        else:
            out[f"{prefix}{name.upper()}"] = field.get_default(call_default_factory=True)
    return out


def env_text(value: Any) -> str:
    """A default as the example file writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | dict):
        return "'" + json.dumps(list(value) if isinstance(value, tuple) else value) + "'"
    return str(value)


def test_env_example_lists_every_setting_with_its_default_and_meaning() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    settings = leaf_settings()
    unit_env = unit_environment("lakehouse.service")
    for name, default in settings.items():
        expected = unit_env.get(name, env_text(default))  # the units' own values win
        entry = f"#{name}={expected}"
        assert entry in lines, f"{ENV_EXAMPLE.name} lacks the line {entry!r}"
        before = lines[lines.index(entry) - 1]
        assert before.startswith("# ") and len(before) > 10, f"{name} has no comment above it"
    mentioned = set(re.findall(r"\bLAKEHOUSE_[A-Z0-9_]+", ENV_EXAMPLE.read_text()))
    assert mentioned <= set(settings), "names that are no setting"
    assert parse_environment_file(ENV_EXAMPLE.read_text()) == {}  # everything commented


def test_env_example_secrets_point_at_their_credentials() -> None:
    text = ENV_EXAMPLE.read_text()
    for name in secret_setting_names():
        assert f"Secret (credential {name})" in text


def test_env_example_values_are_accepted_when_uncommented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every line with a value, uncommented, parses as an EnvironmentFile and is valid config.
    text = "\n".join(
        line[1:]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"#LAKEHOUSE_\w+=.", line)
    )
    env = parse_environment_file(text)
    assert len(env) > 30
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.data_dir == Path("/var/lib/lakehouse")
    assert settings.grpc_port == 50051
    assert settings.jobs.import_prefixes == ()


# -- credentials ($CREDENTIALS_DIRECTORY) ----------------------------------------------------


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty credentials directory, named by ``$CREDENTIALS_DIRECTORY``."""
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_credentials_are_named_after_secret_and_file_settings() -> None:
    secrets, files = secret_setting_names(), file_setting_names()
    assert {
        "catalog.uri",
        "catalog.credential",
        "catalog.token",
        "jobs.database_uri",
        "s3.access_key_id",
        "s3.secret_access_key",
        "trino.access_token",
        "trino.password",
    } <= set(secrets)
    assert "trino.ca_file" in files
    masked_defaults = json.dumps(masked(Settings()))
    for name in secrets + files:
        section, _, field = name.partition(".")
        assert section and field and "." not in field, name
        assert f'"{field}"' in masked_defaults  # as `lakehouse config` prints it
    assert not set(secrets) & set(files)


def test_credentials_set_secret_settings_and_stay_masked(credentials: Path) -> None:
    (credentials / "s3.secret_access_key").write_text("cred-s3-secret\n")
    (credentials / "catalog.uri").write_text("postgresql+psycopg2://u:cred-pw@db/x")
    s = load_settings()
    assert s.s3.secret_access_key is not None
    assert s.s3.secret_access_key.get_secret_value() == "cred-s3-secret"
    assert s.catalog_uri == "postgresql+psycopg2://u:cred-pw@db/x"
    text = json.dumps(masked(s))
    assert "cred-s3-secret" not in text and "cred-pw" not in text


def test_a_file_setting_credential_gives_its_path(credentials: Path) -> None:
    # A DynamicUser service cannot read /etc/lakehouse/...; systemd's copy it can.
    (credentials / "trino.ca_file").write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings().trino.ca_file == credentials / "trino.ca_file"


def test_environment_wins_over_a_credential(
    credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (credentials / "trino.password").write_text("from-credential")
    monkeypatch.setenv("LAKEHOUSE_TRINO__PASSWORD", "from-env")
    password = load_settings().trino.password
    assert password is not None and password.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("files", "env", "expected"),
    [
        ({"s3.secret_acess_key": "x"}, {}, "(did you mean s3.secret_access_key?)"),
        ({"catalog-uri": "x"}, {}, "unknown credential 'catalog-uri'"),
        ({"s3.endpoint_url": "x"}, {}, "unknown credential 's3.endpoint_url'"),
        (
            {"s3.secret_access_key": "x"},
            {"LAKEHOUSE_S3__SECRET_ACCESS_KEY_FILE": "SELF"},
            "set both by LAKEHOUSE_S3__SECRET_ACCESS_KEY_FILE and by the systemd credential",
        ),
    ],
)
def test_bad_credentials_are_one_clear_line(
    files: dict[str, str],
    env: dict[str, str],
    expected: str,
    credentials: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in files.items():
        (credentials / name).write_text(value)
    for key, value in env.items():
        monkeypatch.setenv(
            key, str(credentials / "s3.secret_access_key") if value == "SELF" else value
        )
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_an_unreadable_credentials_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY: cannot read"):
        load_settings()


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakehouse_cmd.lakehouse", *args],
        env={"PATH": SERVICE_PATH, "HOME": str(cwd), **coverage_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_cli_config_masks_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "s3.access_key_id").write_text("AKIA-from-credential\n")
    (creds / "jobs.database_uri").write_text("postgresql+psycopg2://j:job-pw@db/jobs\n")
    proc = cli(["config"], {"CREDENTIALS_DIRECTORY": str(creds)}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["s3"]["access_key_id"] == "**********"
    assert data["jobs"]["database_uri"] == "**********"
    assert "AKIA-from-credential" not in proc.stdout and "job-pw" not in proc.stdout


def test_cli_refuses_an_unknown_credential_before_binding(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "catalog-uri").write_text("sqlite:///x.db")
    proc = cli(
        ["serve", "--data-dir", str(tmp_path / "data")],
        {"CREDENTIALS_DIRECTORY": str(creds)},
        tmp_path,
    )
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown credential 'catalog-uri'" in proc.stderr
    assert not (tmp_path / "data").exists()


# -- sd_notify -------------------------------------------------------------------------------


@contextlib.contextmanager
def notify_socket(abstract: bool = False) -> Iterator[tuple[socket.socket, str]]:
    """A bound unix datagram socket and its ``$NOTIFY_SOCKET`` spelling.

    The path lives in a short temporary folder: unix socket paths are limited to 107 bytes,
    which pytest's tmp_path can exceed.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    folder = None
    try:
        if abstract:
            name = f"lakehouse-test-{uuid.uuid4().hex}"
            sock.bind(b"\0" + name.encode())
            address = "@" + name
        else:
            folder = tempfile.mkdtemp(prefix="sdn-")
            address = os.path.join(folder, "notify")
            sock.bind(address)
        yield sock, address
    finally:
        sock.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def receive(sock: socket.socket, timeout: float = 5.0) -> dict[str, str]:
    """One datagram as ``{KEY: VALUE}``."""
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    assert data.endswith("\n"), data
    return dict(line.split("=", 1) for line in data.splitlines())


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.stopping("down") is False
    assert notifier.watchdog_seconds is None


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_reaches_path_and_abstract_sockets(abstract: bool) -> None:
    with notify_socket(abstract) as (sock, address):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
        assert notifier.ready("serving gRPC on port 1") is True
        assert receive(sock) == {"READY": "1", "STATUS": "serving gRPC on port 1"}
        assert notifier.stopping("draining") is True
        assert receive(sock) == {"STOPPING": "1", "STATUS": "draining"}


@pytest.mark.parametrize(
    "address", ["/nonexistent/notify", "@lakehouse-nobody-listens", "vsock:2:1"]
)
def test_a_failing_notify_socket_is_logged_once_and_never_raises(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lakehouse")
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.ready("up") is False
    assert notifier.notify(WATCHDOG=1) is False
    assert notifier.stopping("down") is False
    warnings = [r for r in caplog.records if r.getMessage() == "cannot notify the service manager"]
    assert len(warnings) == 1


def test_a_socket_that_goes_away_does_not_crash(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="lakehouse")
    with notify_socket() as (sock, address):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
        assert notifier.ready("up")
        receive(sock)
    # The manager is gone (socket closed, its folder removed): later calls fail quietly.
    assert notifier.stopping("down") is False
    assert notifier.notify(WATCHDOG=1) is False
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_timeout_follows_sd_watchdog_enabled(
    env: dict[str, str], expected: float | None
) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", **env}, pid=4242)
    assert notifier.watchdog_seconds == expected


async def test_watchdog_pings_while_the_block_runs_and_stops_after() -> None:
    with notify_socket() as (sock, address):
        notifier = Notifier.from_environment(
            {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"}  # pings every 50 ms
        )
        async with notifier.watchdog():
            await asyncio.sleep(0.3)
        sock.setblocking(False)
        pings = 0
        with contextlib.suppress(BlockingIOError):
            while sock.recv(4096) == b"WATCHDOG=1\n":
                pings += 1
        assert pings >= 3
        await asyncio.sleep(0.15)
        with pytest.raises(BlockingIOError):  # the task was cancelled with the block
            sock.recv(4096)


# -- the processes, started as the units start them ------------------------------------------


class UnitProcess:
    """The unit's ExecStart as a child process, with the environment systemd would give it."""

    def __init__(self, unit: str, workdir: Path, notify_address: str, env_file: str) -> None:
        self.unit = unit
        self.workdir = workdir
        argv = shlex.split(one(unit, "ExecStart"))
        assert argv[0] == INSTALLED_LAKEHOUSE
        self.argv = [str(LAKEHOUSE), *argv[1:]]
        # Environment= first, then the EnvironmentFile= (which overrides it), as systemd does.
        (workdir / "lakehouse.env").write_text(env_file)
        self.env = {
            "PATH": SERVICE_PATH,
            "HOME": str(workdir),
            **unit_environment(unit),
            **parse_environment_file(env_file),
            "NOTIFY_SOCKET": notify_address,
            "WATCHDOG_USEC": "1000000",
            "CREDENTIALS_DIRECTORY": str(workdir / "credentials"),
            **coverage_env(),
        }
        if "PYTHONPATH" in os.environ:  # e.g. a patched checkout under test
            self.env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self.stdout = workdir / f"{unit}.stdout.log"
        self.stderr = workdir / f"{unit}.stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,  # WorkingDirectory= is the state directory
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return self.proc

    def log_entry(self, msg: str) -> dict[str, Any]:
        for line in self.stdout.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("msg") == msg:
                    return entry
        raise AssertionError(f"no {msg!r} log line\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in (self.stdout, self.stderr)
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)


def wait_message(
    sock: socket.socket, process: UnitProcess, key: str, timeout: float
) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Receives until a message with ``key`` arrives; returns it and all messages before it."""
    assert process.proc is not None
    deadline = time.monotonic() + timeout
    seen: list[dict[str, str]] = []
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            if process.proc.poll() is not None and key != "STOPPING":
                raise AssertionError(
                    f"exited with {process.proc.returncode} before {key}=1\n{process.logs()}"
                ) from None
            continue
        message = dict(line.split("=", 1) for line in data.splitlines())
        if key in message:
            return message, seen
        seen.append(message)
    raise AssertionError(f"no {key}=1 within {timeout:g}s\n{process.logs()}")


def unit_env_file(workdir: Path) -> str:
    return "\n".join(
        [
            "# as /etc/lakehouse/lakehouse.env would hold them, for a test",
            f"LAKEHOUSE_DATA_DIR={workdir / 'data'}",
            f"LAKEHOUSE_GRPC_HOST={LOOPBACK}",
            "LAKEHOUSE_GRPC_PORT=0",
            f"LAKEHOUSE_HTTP_HOST={LOOPBACK}",
            "LAKEHOUSE_HTTP_PORT=0",
            "LAKEHOUSE_SHUTDOWN_DRAIN_SECONDS=0",
            f"LAKEHOUSE_SHUTDOWN_GRACE_SECONDS={GRACE_SECONDS:g}",
            "LAKEHOUSE_JOBS__POLL_INTERVAL_SECONDS=0.2",
            "AWS_EC2_METADATA_DISABLED=true",
            "",
        ]
    )


@pytest.fixture
def unit_workdir(tmp_path: Path) -> Path:
    """The state directory stand-in, with a credential naming the catalog (so the test can
    tell it was read: the catalog file appears where only the credential says)."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "catalog.uri").write_text(f"sqlite:///{tmp_path / 'from-credential.db'}\n")
    return tmp_path


def sigterm_and_wait_stopping(sock: socket.socket, process: UnitProcess) -> dict[str, str]:
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    stopping, _ = wait_message(sock, process, "STOPPING", timeout=10)
    assert process.proc.wait(timeout=GRACE_SECONDS + 10) == 0, process.logs()
    return stopping


def test_serve_notifies_ready_when_serving_and_stopping_on_sigterm(unit_workdir: Path) -> None:
    with notify_socket() as (sock, address):
        process = UnitProcess(
            "lakehouse.service", unit_workdir, address, unit_env_file(unit_workdir)
        )
        try:
            process.start()
            ready, before = wait_message(sock, process, "READY", START_TIMEOUT_SECONDS)
            # READY=1 promises a serving port: health answers SERVING right away, no retry.
            port = int(process.log_entry("serving")["grpc_port"])
            with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert ready["STATUS"].startswith(f"serving gRPC on port {port}")
            assert "dependencies ready" in ready["STATUS"]
            assert (unit_workdir / "from-credential.db").exists()  # the credential was used
            assert not (unit_workdir / "data" / "catalog.db").exists()
            # The watchdog pinged from the start, and keeps pinging (every 0.5 s here).
            assert {"WATCHDOG": "1"} in before
            wait_message(sock, process, "WATCHDOG", timeout=3)
            stopping = sigterm_and_wait_stopping(sock, process)
            assert stopping["STATUS"].startswith("draining")
        finally:
            process.kill()


def test_serve_is_ready_while_the_catalog_is_down_and_says_so(tmp_path: Path) -> None:
    """READY=1 means the process is up, not that its dependencies are: held back, systemd
    would time the start out and restart the service over an outage a restart cannot fix.
    STATUS says it waits for them, and gRPC health reports NOT_SERVING to load balancers."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    # The catalog's password as a credential (catalog.password), its URI in the env file:
    # PostgreSQL on a port where nothing listens.
    (creds / "catalog.password").write_text("not-a-password\n")
    dead_catalog = f"postgresql+psycopg2://lakehouse@{LOOPBACK}:{free_port()}/lakehouse"
    env_file = unit_env_file(tmp_path) + f"LAKEHOUSE_CATALOG__URI={dead_catalog}\n"
    with notify_socket() as (sock, address):
        process = UnitProcess("lakehouse.service", tmp_path, address, env_file)
        try:
            process.start()
            ready, _ = wait_message(sock, process, "READY", START_TIMEOUT_SECONDS)
            port = int(process.log_entry("serving")["grpc_port"])
            assert ready["STATUS"].startswith(f"serving gRPC on port {port}")
            assert "waiting for dependencies" in ready["STATUS"], ready
            with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert "not-a-password" not in process.logs()
            stopping = sigterm_and_wait_stopping(sock, process)
            assert stopping["STATUS"].startswith("draining")
        finally:
            process.kill()


def test_worker_notifies_ready_and_stopping_over_an_abstract_socket(unit_workdir: Path) -> None:
    with notify_socket(abstract=True) as (sock, address):
        process = UnitProcess(
            "lakehouse-worker.service", unit_workdir, address, unit_env_file(unit_workdir)
        )
        assert process.env["LAKEHOUSE_HTTP_PORT"] == "0"  # the env file overrides the unit's 9181
        try:
            process.start()
            ready, _ = wait_message(sock, process, "READY", START_TIMEOUT_SECONDS)
            port = int(process.log_entry("worker started")["http_port"])
            assert f"HTTP on port {port}" in ready["STATUS"]
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/readyz", timeout=5) as reply:
                assert reply.status == 200
                assert json.load(reply)["status"] == "ready"
            assert (unit_workdir / "from-credential.db").exists()
            # ExecReload's SIGHUP re-reads files; it must not end the worker.
            assert process.proc is not None
            process.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert process.proc.poll() is None, process.logs()
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=5) as reply:
                assert reply.status == 200
            sigterm_and_wait_stopping(sock, process)
        finally:
            process.kill()
