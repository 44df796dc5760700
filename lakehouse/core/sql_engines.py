"""The SQL engine port of SQL jobs, and how a job's spec names the engine that runs it.

Core never names a concrete engine: the wiring hands it every engine by name (see
``lakehouse.adapters.sql_engines``), and a spec's ``engine`` picks one with ``engine_for``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from lakehouse.adapters.sql_result import SqlOutcome
from lakehouse.core.job_context import JobContext
from lakehouse.errors import FailedPrecondition
from lakehouse.v1 import job_pb2

#: The engine of a spec that names none (``SQL_ENGINE_UNSPECIFIED``).
DEFAULT_ENGINE = "DUCKDB"


class SqlEnginePort(Protocol):
    """An engine that checks and runs one SQL statement over the lakehouse's tables."""

    async def check_statement(self, statement: str, *, default_namespace: str) -> None:
        """Checks ``statement`` without running it, so that a bad one creates no job.

        Args:
            statement: The SQL text, in the engine's dialect.
            default_namespace: The namespace of table names written without one ("" for
                none).

        Raises:
            InvalidArgument: The statement cannot run (fields named relative to the spec,
                ``sql.statement``), or the engine is not configured (``sql.engine``).
            NotFound: A table or namespace the statement names does not exist.
            Unavailable: The engine or the catalog cannot be reached.
        """
        ...

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
        """Runs ``statement`` to its end, for one attempt of a SQL job.

        Args:
            statement: The SQL text, in the engine's dialect.
            default_namespace: The namespace of table names written without one ("" for
                none).
            preview_limit: The most result rows to keep for the preview.
            destination: ``(namespace, table)`` of a new table to write the result into.
            ctx: The running job: stop requests, progress and the job id.
            preview_max_bytes: About the most bytes the preview may hold.

        Returns:
            Row count, preview and the snapshot committed (when the engine knows it).

        Raises:
            JobStopped: The job was asked to stop.
            FailedPrecondition: The engine is not configured (``ENGINE_NOT_CONFIGURED``).
            LakehouseError: The statement failed (the engine's errors, mapped).
        """
        ...


def engine_name(engine: job_pb2.SqlEngine.ValueType) -> str:
    """The registry name of a spec's engine: ``SQL_ENGINE_TRINO`` is ``TRINO``.

    Raises:
        FailedPrecondition: ``engine`` is no value of the enum (a spec the checks let through
            would not have it).
    """
    if engine == job_pb2.SQL_ENGINE_UNSPECIFIED:
        return DEFAULT_ENGINE
    try:
        return job_pb2.SqlEngine.Name(engine).removeprefix("SQL_ENGINE_")
    except ValueError:
        raise FailedPrecondition(f"unknown SQL engine {engine}") from None


def engine_for(
    engines: Mapping[str, SqlEnginePort], engine: job_pb2.SqlEngine.ValueType
) -> SqlEnginePort:
    """The engine a spec's ``engine`` names, from the engines the wiring made.

    Raises:
        FailedPrecondition: No such engine in this process (reason ``ENGINE_NOT_CONFIGURED``).
    """
    name = engine_name(engine)
    found = engines.get(name)
    if found is None:
        raise FailedPrecondition(
            f"the SQL engine {name} is not available in this process",
            reason="ENGINE_NOT_CONFIGURED",
        )
    return found
