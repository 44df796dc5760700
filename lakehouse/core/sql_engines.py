"""How a SQL job's spec names the engine that runs it.

Core never names a concrete engine: the wiring hands it every engine by name (see
``lakehouse.server.sql_engines``) as ``SqlEnginePort``s (``lakehouse.core.ports``), and a
spec's ``engine`` picks one with ``engine_for``.
"""

from __future__ import annotations

from collections.abc import Mapping

from lakehouse.core.ports import SqlEnginePort
from lakehouse.domain.errors import FailedPrecondition
from lakehouse.domain.job_specs import SQL_ENGINE_NAMES, SQL_ENGINE_UNSPECIFIED

#: The engine of a spec that names none (``SQL_ENGINE_UNSPECIFIED``).
DEFAULT_ENGINE = "DUCKDB"


def engine_name(engine: int) -> str:
    """The registry name of a spec's engine: ``SQL_ENGINE_TRINO`` is ``TRINO``.

    Raises:
        FailedPrecondition: ``engine`` is no value of the enum (a spec the checks let through
            would not have it).
    """
    if engine == SQL_ENGINE_UNSPECIFIED:
        return DEFAULT_ENGINE
    try:
        return SQL_ENGINE_NAMES[engine]
    except KeyError:
        raise FailedPrecondition(f"unknown SQL engine {engine}") from None


def engine_for(engines: Mapping[str, SqlEnginePort], engine: int) -> SqlEnginePort:
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
