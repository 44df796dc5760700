"""PostgreSQL connections: they fail fast (timeouts, keepalives), and catalog.password goes
into the catalog URI for the catalog and the job store; on a real server."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from pydantic import SecretStr
from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy.engine import URL, make_url

from fixtures import postgres as pg
from fixtures.subprocess_coverage import coverage_env
from lakehouse.adapters.iceberg.catalog import catalog_properties
from lakehouse.adapters.job_store.engines import make_engine
from lakehouse.cli import EXIT_CONFIG
from lakehouse.config import Settings, load_settings, masked


def _show(url: str, setting: str, **connect_args: Any) -> str:
    engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql(f"SHOW {setting}").scalar())
    finally:
        engine.dispose()


def test_the_catalog_connects_with_a_statement_timeout_and_keepalives(
    postgres_s3_settings: Any,
) -> None:
    uri = catalog_properties(postgres_s3_settings)["uri"]
    query = make_url(uri).query
    assert query["connect_timeout"] == "5"
    assert (query["keepalives"], query["keepalives_idle"], query["tcp_user_timeout"]) == (
        "1",
        "10",
        "30000",
    )
    # The server applies it: a stuck catalog statement ends instead of holding a thread.
    assert _show(uri, "statement_timeout") == "30s"


def test_settings_in_the_url_win(postgres_s3_settings: Any) -> None:
    own = make_url(postgres_s3_settings.catalog_uri).update_query_dict(
        {"connect_timeout": "9", "options": "-c statement_timeout=5000"}
    )
    uri_secret = SecretStr(own.render_as_string(hide_password=False))
    settings = postgres_s3_settings.model_copy(
        update={"catalog": postgres_s3_settings.catalog.model_copy(update={"uri": uri_secret})}
    )
    uri = catalog_properties(settings)["uri"]
    assert make_url(uri).query["connect_timeout"] == "9"
    assert _show(uri, "statement_timeout") == "5s"


def test_the_job_store_has_keepalives_but_no_statement_timeout(postgres_url: str) -> None:
    # Its scheduler waits for an advisory lock on purpose.
    engine = make_engine(make_url(postgres_url), busy_timeout_seconds=1)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
            params = conn.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
        assert params["keepalives_idle"] == "10"
        assert params["connect_timeout"] == "5"
    finally:
        engine.dispose()


# -- catalog.password: the URI is configuration, only the password is a secret ---------------

#: Characters a URL would otherwise misread: userinfo and path separators, escapes, quotes.
SPECIAL_PASSWORD = "p@ss:w/rd %?#&=+'\"\\ü"


@pytest.fixture
def password_role(postgres_cluster: pg.PostgresCluster) -> Iterator[tuple[str, str]]:
    """A login role whose password is ``SPECIAL_PASSWORD`` (scram auth: a wrong one fails)
    and a fresh database it owns; yields (role, password-less URL of the database)."""
    role = f"lh_pw_{uuid.uuid4().hex[:8]}"
    database = postgres_cluster.create_database()
    admin = sqlalchemy.create_engine(postgres_cluster.url(), isolation_level="AUTOCOMMIT")
    # A literal (CREATE ROLE takes no bind parameter); "%%" as psycopg2 formats the text.
    quoted = SPECIAL_PASSWORD.replace("'", "''").replace("%", "%%")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{quoted}'", ())
            conn.exec_driver_sql(f'ALTER DATABASE "{database}" OWNER TO {role}')
        admin_url = make_url(postgres_cluster.url(database))
        url = URL.create(
            admin_url.drivername,
            username=role,
            host=admin_url.host,
            port=admin_url.port,
            database=database,
        )
        yield role, url.render_as_string(hide_password=False)
    finally:
        postgres_cluster.drop_database(database)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


def _current_user(url: str, connect: Any = None) -> str:
    engine = sqlalchemy.create_engine(url) if connect is None else connect(make_url(url))
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SELECT current_user").scalar())
    finally:
        engine.dispose()


def test_the_catalog_password_is_put_into_the_uri_for_catalog_and_job_store(
    password_role: tuple[str, str], tmp_path: Path
) -> None:
    role, uri = password_role
    assert make_url(uri).password is None
    settings = Settings(data_dir=tmp_path, catalog={"uri": uri, "password": SPECIAL_PASSWORD})
    # The catalog, through pyiceberg itself: it creates its tables and lists namespaces.
    catalog = SqlCatalog("lakehouse", **catalog_properties(settings))
    assert list(catalog.list_namespaces()) == []
    assert _current_user(catalog_properties(settings)["uri"]) == role
    # The job store lives in the catalog's database by default, and gets the password too.
    assert settings.jobs_database_uri == settings.catalog_uri
    store_engine = functools.partial(make_engine, busy_timeout_seconds=1)
    assert _current_user(settings.jobs_database_uri, store_engine) == role
    # The test can fail: PostgreSQL checks the password (scram), a wrong one is refused.
    wrong = Settings(data_dir=tmp_path, catalog={"uri": uri, "password": "not-it"})
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        _current_user(wrong.catalog_uri)


def test_the_catalog_password_comes_from_a_file_and_stays_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "catalog-password"
    secret.write_text(SPECIAL_PASSWORD + "\n")
    monkeypatch.setenv("LAKEHOUSE_CATALOG__URI", "postgresql+psycopg2://lakehouse@db:5432/lh")
    monkeypatch.setenv("LAKEHOUSE_CATALOG__PASSWORD_FILE", str(secret))
    settings = load_settings({"data_dir": tmp_path})
    assert make_url(settings.catalog_uri).password == SPECIAL_PASSWORD
    assert SPECIAL_PASSWORD not in json.dumps(masked(settings), ensure_ascii=False)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LAKEHOUSE_CATALOG__URI": "postgresql+psycopg2://lh:inline-pw@db/lh"},
            "catalog.uri already holds a password and catalog.password is set too",
        ),
        (
            {
                "LAKEHOUSE_CATALOG__TYPE": "rest",
                "LAKEHOUSE_CATALOG__URI": "https://rest-catalog:8181",
                "LAKEHOUSE_JOBS__DATABASE_URI": "postgresql+psycopg2://lh@db/jobs",
            },
            "catalog.password is for a sql catalog",
        ),
        ({}, "catalog.password needs catalog.uri"),
        ({"LAKEHOUSE_CATALOG__URI": "sqlite:////tmp/c.db"}, "not SQLite"),
        ({"LAKEHOUSE_CATALOG__URI": "postgresql+psycopg2://db:5432/lh"}, "needs a user name"),
        ({"LAKEHOUSE_CATALOG__URI": "db:5432 inline-pw"}, "catalog.uri is not a SQLAlchemy URL"),
    ],
)
def test_a_catalog_password_that_cannot_be_used_is_one_line_and_exit_2(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    full_env = {
        "PATH": "/usr/bin:/bin",
        "LAKEHOUSE_CATALOG__PASSWORD": "the-password",
        **coverage_env(),
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lakehouse_cmd.lakehouse", "config", "--data-dir", str(tmp_path)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CONFIG
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0
    assert message in proc.stderr
    # Neither the password nor a URI that may hold one is echoed.
    assert "the-password" not in proc.stderr and "inline-pw" not in proc.stderr
