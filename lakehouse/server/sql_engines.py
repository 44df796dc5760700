"""The SQL engines of SQL jobs by name, as pyiceberg keys its catalogs by type.

``SQL_ENGINES`` maps an engine's name (a spec's ``SQL_ENGINE_<NAME>``) to the factory that
plugs it into the process: its settings, the catalog, the serving pool (checks run when a
job is created) and the jobs' pool (statements run there). The wiring builds them all once
with ``load_sql_engines``; core looks a spec's engine up by name
(``lakehouse.core.sql_engines.engine_for``) and never names one. An engine the configuration
leaves off (Trino without ``trino.endpoint``) is there all the same and refuses every
statement with ``ENGINE_NOT_CONFIGURED``, naming the setting that turns it on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyiceberg.catalog import Catalog

from lakehouse.adapters.duckdb import engine, statements
from lakehouse.adapters.iceberg.catalog import IcebergCatalog
from lakehouse.adapters.resilience import Resilience
from lakehouse.adapters.trino.engine import TrinoEngine
from lakehouse.blocking import BlockingPool
from lakehouse.config import JobsSettings, Settings
from lakehouse.core.ports import SqlEnginePort
from lakehouse.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from lakehouse.domain.job_context import JobContext
from lakehouse.domain.sql_result import SqlOutcome

#: The ``ErrorInfo`` reason of a statement for an engine this process has not configured.
NOT_CONFIGURED = "ENGINE_NOT_CONFIGURED"


@dataclass(frozen=True)
class SqlEngineSetup:
    """What an engine factory may use: the settings and the process's shared parts.

    Attributes:
        settings: The service's settings.
        catalog: The lakehouse's catalog.
        pool: The pool that serves RPCs (statement checks run there, at CreateJob).
        job_pool: The jobs' own pool (statements run there).
        temp_dir: Where an embedded engine may spill.
        resilience: The process's circuit breakers.
    """

    settings: Settings
    catalog: IcebergCatalog
    pool: BlockingPool
    job_pool: BlockingPool
    temp_dir: Path
    resilience: Resilience


class DuckDbSqlEngine:
    """The embedded DuckDB engine (``lakehouse.adapters.duckdb``), in the process's pools."""

    def __init__(
        self,
        catalog: IcebergCatalog,
        settings: JobsSettings,
        *,
        pool: BlockingPool,
        job_pool: BlockingPool,
        temp_dir: Path,
    ) -> None:
        self._catalog = catalog
        self._settings = settings
        self._pool = pool
        self._job_pool = job_pool
        self._temp_dir = temp_dir

    async def check_statement(self, statement: str, *, default_namespace: str) -> None:
        """DuckDB's parser and the allowed shapes, then the tables named must exist."""
        names = await self._pool.run(
            functools.partial(
                statements.check_statement,
                statement,
                default_namespace=default_namespace,
            )
        )
        # DuckDB's parser knows no catalog; the tables are confirmed here so that a statement
        # naming a table that does not exist creates no job (Trino's EXPLAIN does both).
        for name in names:
            try:
                await self._catalog.load_table(name.namespace, name.table)
            except NotFound:
                if not name.may_be_cte:
                    raise

    async def run_statement(
        self,
        *,
        statement: str,
        default_namespace: str,
        preview_limit: int,
        destination: tuple[str, str] | None,
        ctx: JobContext,
        preview_max_bytes: int,
    ) -> SqlOutcome:
        """Runs the statement on the pyiceberg catalog, in the jobs' pool."""

        def work(c: Catalog) -> SqlOutcome:
            return engine.run_statement(
                c,
                statement=statement,
                default_namespace=default_namespace,
                preview_limit=preview_limit,
                destination=destination,
                ctx=ctx,
                memory_limit_mb=self._settings.duckdb_memory_limit_mb,
                threads=self._settings.duckdb_threads,
                temp_dir=self._temp_dir,
                temp_limit_mb=self._settings.duckdb_temp_limit_mb,
                preview_max_bytes=preview_max_bytes,
            )

        return await self._catalog.run_on_catalog(work, pool=self._job_pool)


class TrinoSqlEngine:
    """A Trino cluster (``lakehouse.adapters.trino``), its blocking calls in the process's pools."""

    def __init__(self, trino: TrinoEngine, *, pool: BlockingPool, job_pool: BlockingPool) -> None:
        self._trino = trino
        self._pool = pool
        self._job_pool = job_pool

    async def check_statement(self, statement: str, *, default_namespace: str) -> None:
        """Trino's ``EXPLAIN (TYPE VALIDATE)``: names, types and access, as if it ran."""
        await self._pool.run(
            functools.partial(
                self._trino.check_statement,
                statement,
                default_namespace=default_namespace,
            )
        )

    async def run_statement(
        self,
        *,
        statement: str,
        default_namespace: str,
        preview_limit: int,
        destination: tuple[str, str] | None,
        ctx: JobContext,
        preview_max_bytes: int,
    ) -> SqlOutcome:
        """Runs the statement on Trino, waiting in the jobs' pool."""
        trino = self._trino
        return await self._job_pool.run(
            lambda: trino.run_statement(
                statement=statement,
                default_namespace=default_namespace,
                preview_limit=preview_limit,
                destination=destination,
                ctx=ctx,
                preview_max_bytes=preview_max_bytes,
            )
        )


class UnconfiguredSqlEngine:
    """An engine the configuration leaves off: every statement is refused, naming the setting.

    Args:
        label: The engine's name as people write it ("Trino").
        setting: The setting that turns it on ("trino.endpoint").
    """

    def __init__(self, label: str, setting: str) -> None:
        self._label = label
        self._setting = setting

    async def check_statement(self, statement: str, *, default_namespace: str) -> None:
        """Refuses: a job for this engine could never run.

        Raises:
            InvalidArgument: Always, on field ``sql.engine`` (reason ``ENGINE_NOT_CONFIGURED``).
        """
        raise InvalidArgument.field(
            "sql.engine",
            f"the {self._label} engine is not configured on this service ({self._setting})",
            reason=NOT_CONFIGURED,
        )

    async def run_statement(
        self,
        *,
        statement: str,
        default_namespace: str,
        preview_limit: int,
        destination: tuple[str, str] | None,
        ctx: JobContext,
        preview_max_bytes: int,
    ) -> SqlOutcome:
        """Refuses: the job was created when the engine was on, or by another replica.

        Raises:
            FailedPrecondition: Always (reason ``ENGINE_NOT_CONFIGURED``).
        """
        raise FailedPrecondition(
            f"the {self._label} engine is not configured ({self._setting})",
            reason=NOT_CONFIGURED,
        )


def _duckdb(setup: SqlEngineSetup) -> SqlEnginePort:
    return DuckDbSqlEngine(
        setup.catalog,
        setup.settings.jobs,
        pool=setup.pool,
        job_pool=setup.job_pool,
        temp_dir=setup.temp_dir,
    )


def _trino(setup: SqlEngineSetup) -> SqlEnginePort:
    if not setup.settings.trino.endpoint:
        return UnconfiguredSqlEngine("Trino", "trino.endpoint")
    trino = TrinoEngine(setup.settings.trino, setup.resilience)
    return TrinoSqlEngine(trino, pool=setup.pool, job_pool=setup.job_pool)


#: Each engine's factory by name: ``SQL_ENGINE_<NAME>`` in a job's spec names it.
SQL_ENGINES: dict[str, Callable[[SqlEngineSetup], SqlEnginePort]] = {
    "DUCKDB": _duckdb,
    "TRINO": _trino,
}


def load_sql_engines(setup: SqlEngineSetup) -> dict[str, SqlEnginePort]:
    """Every engine of ``SQL_ENGINES``, made once for the process.

    Raises:
        ValueError: An engine's settings cannot work (see ``TrinoEngine``).
    """
    return {name: factory(setup) for name, factory in SQL_ENGINES.items()}
