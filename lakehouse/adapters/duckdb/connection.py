"""The DuckDB connection a SQL job runs on: in memory, and able to reach nothing outside itself.

Only lakehouse tables are reachable: DuckDB runs with external access disabled (no files, no
URLs, no ``ATTACH``), extension auto-install and auto-load off, Python replacement scans off
(a statement must not read the worker's Python variables), and its configuration is locked
(by the engine) before the statement runs. These settings are the guarantee; the statement
checks in ``statements`` give clear messages and reject a bad statement before a job exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import duckdb


def connect(
    *, memory_limit_mb: int, threads: int, temp_dir: Path | None, temp_limit_mb: int = 0
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that can reach nothing outside itself (configuration not yet locked).

    The caller locks the configuration once the lakehouse tables are registered; setting up
    schemas and the search path needs it unlocked.
    """
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "python_enable_replacements": False,
        "memory_limit": f"{max(memory_limit_mb, 16)}MB",
        "threads": max(threads, 1),
    }
    if temp_dir is not None:
        config["temp_directory"] = str(temp_dir)
        # DuckDB's default is 90% of the free disk: one sort filled the data folder.
        config["max_temp_directory_size"] = f"{max(temp_limit_mb, 1)}MB"
    con = duckdb.connect(":memory:", config=config)
    try:
        # Timestamps with time zone come out in UTC, the only zone Iceberg stores.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
    except BaseException:
        con.close()
        raise
    return con


def interrupter(con: duckdb.DuckDBPyConnection) -> Callable[[], None]:
    """A callback that interrupts what ``con`` runs (for ``JobContext.on_stop``); never raises."""

    def interrupt() -> None:
        # Runs in the thread that stops the job; the connection may be closing already.
        with contextlib.suppress(duckdb.Error, RuntimeError):
            con.interrupt()

    return interrupt
