"""PostgreSQL connections fail fast: timeouts and keepalives, on a real server."""

from __future__ import annotations

from typing import Any

import sqlalchemy
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from lakehouse.adapters import job_store as job_store_module
from lakehouse.adapters.iceberg import catalog_properties


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
    engine = job_store_module._make_engine(make_url(postgres_url), busy_timeout_seconds=1)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
            params = conn.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
        assert params["keepalives_idle"] == "10"
        assert params["connect_timeout"] == "5"
    finally:
        engine.dispose()
