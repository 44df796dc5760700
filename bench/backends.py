"""The backing services a benchmark run puts under the server.

``embedded``: the default with no configuration (SQLite catalog + a local warehouse folder
under each server's ``--data-dir``).

``postgres_s3``: a throwaway PostgreSQL cluster (the test suite's ``tests/fixtures/postgres.py``,
reused as is: initdb as the ``postgres`` user, 127.0.0.1 on a free port, socket in a temporary
folder) and moto's S3 server (``ThreadedMotoServer``) in a *child process*, not a thread of the
bench process: the bench process generates the load, and a moto thread would compete with it
for the GIL. The bucket is created with boto3 through ``tests/fixtures/s3.py``.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("embedded", "postgres_s3")
START_TIMEOUT_SECONDS = 60.0


class BackendError(RuntimeError):
    """A backing service could not be started."""


@dataclass
class Backend:
    """What the server is configured with, as nested ``lakehouse.config.Settings`` values."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    """Nested overrides such as ``{"catalog": {"uri": ...}, "s3": {...}}`` (no data_dir)."""
    notes: str = ""

    def env(self) -> dict[str, str]:
        """The same as ``LAKEHOUSE_*`` environment variables (``__`` between nested fields)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}__{key.upper()}" if prefix else key.upper(), inner)
            elif value is not None:
                text = ("true" if value else "false") if isinstance(value, bool) else str(value)
                out[f"LAKEHOUSE_{prefix}"] = text

        walk("", self.settings)
        return out


def _test_fixtures() -> Any:
    """The test suite's helpers (``tests/fixtures``), importable without pytest."""
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    try:
        import fixtures.postgres
        import fixtures.s3
    except ImportError as exc:
        raise BackendError(f"cannot import the test fixtures from {tests_dir}: {exc}") from exc
    return fixtures


@contextlib.contextmanager
def start_backend(name: str) -> Iterator[Backend]:
    """Starts the backing services of ``name``; stops them and deletes their files on exit."""
    if name == "embedded":
        yield Backend("embedded", notes="SQLite catalog + local warehouse folder")
        return
    if name != "postgres_s3":
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    fixtures = _test_fixtures()
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(fixtures.postgres.running_cluster())
        except (FileNotFoundError, RuntimeError, subprocess.SubprocessError) as exc:
            raise BackendError(f"PostgreSQL did not start: {exc}") from exc
        database = cluster.create_database("lakehouse_bench")
        endpoint = stack.enter_context(moto_process())
        bucket = fixtures.s3.create_bucket(endpoint, "lakehouse-bench")
        yield Backend(
            "postgres_s3",
            settings={
                "catalog": {"uri": cluster.url(database), "warehouse": f"s3://{bucket}/wh"},
                "s3": fixtures.s3.s3_settings(endpoint),
            },
            notes=f"PostgreSQL on 127.0.0.1:{cluster.port}, moto S3 at {endpoint}",
        )


_MOTO_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
try:
    sys.stdin.read()  # until the parent closes stdin, or dies
finally:
    server.stop()
"""


@contextlib.contextmanager
def moto_process(timeout: float = START_TIMEOUT_SECONDS) -> Iterator[str]:
    """moto's S3 server in a child process on a free loopback port; yields its endpoint URL.

    The child exits when its stdin closes, so it cannot outlive the bench process.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _MOTO_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if proc.poll() is not None:
                raise BackendError(f"moto's S3 server exited with code {proc.returncode}")
            if remaining <= 0:
                raise BackendError(f"moto's S3 server did not start within {timeout:.0f}s")
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 64)
                if not chunk:
                    raise BackendError("moto's S3 server closed its output before its port")
                line += chunk
        yield f"http://127.0.0.1:{int(line.strip())}"
    finally:
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
