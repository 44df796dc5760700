"""The SQL engine registry, and the SQL engine port's behaviour on every engine.

The behaviour tests run the same assertions on each engine the registry makes: DuckDB on
the embedded default (SQLite catalog, local warehouse) and Trino against the FAKE Trino
coordinator of ``fixtures.fake_trino`` (scripted to answer what Trino would for the same
table), so the engines cannot drift apart behind the port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fixtures.fake_trino import TABLE_NOT_FOUND, FakeTrino, Rows
from fixtures.iceberg import direct_catalog
from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.resilience import Resilience
from lakehouse.blocking import BlockingPool
from lakehouse.config import Settings, TrinoSettings
from lakehouse.core.ports import SqlEnginePort
from lakehouse.core.sql_engines import engine_for, engine_name
from lakehouse.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from lakehouse.domain.job_context import JobContext
from lakehouse.server.sql_engines import SQL_ENGINES, SqlEngineSetup, load_sql_engines
from lakehouse.v1 import job_pb2

QUERY = "SELECT id FROM sales.orders ORDER BY id"
MISSING = "SELECT id FROM sales.nope"


def _engines(settings: Settings, pool: BlockingPool) -> dict[str, SqlEnginePort]:
    return load_sql_engines(
        SqlEngineSetup(
            settings=settings,
            catalog=IcebergCatalog(settings, pool),
            pool=pool,
            job_pool=pool,
            temp_dir=settings.data_dir / "tmp" / "sql",
            resilience=Resilience(settings.resilience),
        )
    )


@pytest.fixture
def pool() -> Iterator[BlockingPool]:
    """A small pool for the engines' blocking work."""
    pool = BlockingPool(2)
    yield pool
    pool.close()


@pytest.fixture
def fake_trino() -> Iterator[FakeTrino]:
    """A FAKE Trino coordinator answering for the same table as the DuckDB engine reads."""
    with FakeTrino() as fake:
        fake.script(QUERY, Rows([("id", "bigint")], [[1], [2], [3]]))
        fake.script(MISSING, TABLE_NOT_FOUND)
        yield fake


@pytest.fixture(params=sorted(SQL_ENGINES))
async def engine(
    request: pytest.FixtureRequest,
    local_settings: Settings,
    fake_trino: FakeTrino,
    pool: BlockingPool,
) -> AsyncIterator[SqlEnginePort]:
    """Each engine of the registry, with table ``sales.orders`` holding ids 1, 2, 3."""
    Path(local_settings.data_dir).mkdir(parents=True, exist_ok=True)
    catalog = direct_catalog(local_settings)
    catalog.create_namespace("sales")
    catalog.create_table(("sales", "orders"), pa.schema([("id", pa.int64())])).append(
        pa.table({"id": pa.array([1, 2, 3], pa.int64())})
    )
    trino = TrinoSettings(
        endpoint=fake_trino.url, catalog="iceberg", user="u", request_timeout_seconds=5
    )
    settings = local_settings.model_copy(update={"trino": trino})
    yield _engines(settings, pool)[request.param]


async def _run(engine: SqlEnginePort, statement: str, ctx: JobContext) -> Any:
    return await engine.run_statement(
        statement=statement,
        default_namespace="",
        preview_limit=2,
        destination=None,
        ctx=ctx,
        preview_max_bytes=1024 * 1024,
    )


def test_every_engine_of_the_contract_has_a_factory() -> None:
    named = {engine_name(value) for value in job_pb2.SqlEngine.values()}
    assert named == set(SQL_ENGINES)
    assert engine_name(job_pb2.SQL_ENGINE_UNSPECIFIED) == "DUCKDB"
    assert engine_name(job_pb2.SQL_ENGINE_TRINO) == "TRINO"


async def test_a_spec_picks_its_engine_by_name(
    local_settings: Settings, pool: BlockingPool
) -> None:
    engines = _engines(local_settings, pool)
    assert engine_for(engines, job_pb2.SQL_ENGINE_UNSPECIFIED) is engines["DUCKDB"]
    assert engine_for(engines, job_pb2.SQL_ENGINE_DUCKDB) is engines["DUCKDB"]
    assert engine_for(engines, job_pb2.SQL_ENGINE_TRINO) is engines["TRINO"]
    with pytest.raises(FailedPrecondition) as missing:
        engine_for({}, job_pb2.SQL_ENGINE_TRINO)
    assert missing.value.reason == "ENGINE_NOT_CONFIGURED"


async def test_an_engine_left_off_refuses_every_statement(
    local_settings: Settings, pool: BlockingPool
) -> None:
    trino = _engines(local_settings, pool)["TRINO"]  # no trino.endpoint
    with pytest.raises(InvalidArgument) as checked:
        await trino.check_statement("SELECT 1", default_namespace="")
    assert checked.value.reason == "ENGINE_NOT_CONFIGURED"
    assert [v.field for v in checked.value.violations] == ["sql.engine"]
    with pytest.raises(FailedPrecondition) as ran:
        await _run(trino, "SELECT 1", JobContext("job-1"))
    assert ran.value.reason == "ENGINE_NOT_CONFIGURED"


async def test_a_query_gives_its_row_count_and_a_preview(engine: SqlEnginePort) -> None:
    outcome = await _run(engine, QUERY, JobContext("job-1"))
    assert outcome.rows_affected == 3
    assert outcome.truncated
    assert outcome.preview.column("id").to_pylist() == [1, 2]


async def test_a_valid_statement_passes_its_check(engine: SqlEnginePort) -> None:
    await engine.check_statement(QUERY, default_namespace="")


async def test_a_missing_table_fails_the_check_with_not_found(engine: SqlEnginePort) -> None:
    with pytest.raises(NotFound) as missing:
        await engine.check_statement(MISSING, default_namespace="")
    assert missing.value.reason == "TABLE_NOT_FOUND"
